/**
 * One projection of the forward pass, Y (+)= X · Wᵀ (+ bias), whatever W's storage: the float
 * matmul (tiled f32/f16/bf16, SwiGLU in its epilogue), the int4 matmul, which may first gather
 * X's columns (GPTQ act-order), or the GGUF block matmul; the last two apply SwiGLU as a separate
 * pass over their stacked [gate; up] output. Where the chosen kernel has the prologue
 * (`linearFoldsNorm`), the RMSNorm before the projection runs inside it (src/kernels/rms-fold.ts).
 */
import type { ActivationFormat } from './activation.js';
import { linearGrid, packParams, shaderSource } from './shader.js';
import { type Dispatch, type DispatchBuilder } from '../gpu/dispatch.js';
import { matmul, matmulFoldsNorm, type GateActivation, type MatmulVariant } from './matmul.js';
import { matmulGguf, type GgufGpuWeight, type GgufVariant } from './matmul-gguf.js';
import { matmulQ4, q4FoldsNorm, type Q4GpuWeight, type Q4Variant } from './matmul-q4.js';
import type { RmsFold } from './rms-fold.js';
import type { GpuWeight } from './tiled.js';

/** A projection matrix on the GPU: float (tiled), int4, or GGUF blocks. */
export type MatrixWeight = GpuWeight | Q4GpuWeight | GgufGpuWeight;

export function isQ4Weight(w: MatrixWeight): w is Q4GpuWeight {
  return 'format' in w && typeof w.format === 'object';
}

export function isGgufWeight(w: MatrixWeight): w is GgufGpuWeight {
  return 'kind' in w && w.kind === 'gguf';
}

/** Quantized weights (int4, GGUF blocks): f32 activations, SwiGLU over a stacked [gate; up]. */
export function isStackedQuantWeight(w: MatrixWeight): w is Q4GpuWeight | GgufGpuWeight {
  return isQ4Weight(w) || isGgufWeight(w);
}

/**
 * Variants to force per projection shape (the tuner's KernelChoices); undefined keeps the
 * kernel's shape-based default.
 */
export interface LinearVariants {
  matmul(w: GpuWeight, m: number, xFormat?: ActivationFormat): MatmulVariant | undefined;
  matmulQ4(w: Q4GpuWeight, m: number): Q4Variant | undefined;
  matmulGguf(w: GgufGpuWeight, m: number): GgufVariant | undefined;
}

export interface Linear {
  /**
   * The SwiGLU projection (gate and up) is a float weight with fused 'swiglu' (tiles interleaved
   * for the epilogue) or an int4 or GGUF weight of [gate; up] stacked by rows.
   */
  weight: MatrixWeight;
  /** [rows] f32, when the projection has a bias ([gate bias; up bias] for SwiGLU). */
  bias?: GPUBuffer | undefined;
  /** int4 only, [cols] u32: X's columns are gathered through this permutation first. */
  perm?: GPUBuffer | undefined;
}

/** Scratch an int4 projection may need, sized for the plan's rows. */
export interface LinearScratch {
  /** [m, 2 · units] f32: the stacked gate/up output before SwiGLU. */
  gateUp?: GPUBuffer | undefined;
  /** [m, max cols] f32: X gathered through `perm`. */
  gathered?: GPUBuffer | undefined;
}

export interface LinearArgs {
  x: GPUBuffer;
  lin: Linear;
  /** [m, out] f32 (SwiGLU: [m, units]). */
  y: GPUBuffer;
  m: number;
  /** silu(gate) · up of the gate/up projection (with `gate` 'gelu-tanh': GeGLU). */
  swiglu?: boolean;
  /** The gate's activation when `swiglu` (default silu). */
  gate?: GateActivation;
  accumulate?: boolean;
  placeholder: GPUBuffer;
  /** Element type of x (float weights only; the int4 kernel reads f32). */
  xFormat?: ActivationFormat;
  scratch?: LinearScratch;
  /** Tuned variants by shape class (the kernel's shape-based default where a class has none). */
  choices?: LinearVariants | undefined;
  /**
   * RMSNorm X's rows in the matmul's prologue (x is then the raw f32 residual stream); only where
   * `linearFoldsNorm` holds.
   */
  norm?: RmsFold | undefined;
}

/**
 * Whether this projection folds the RMSNorm before it into its kernel (as chosen for its shape):
 * the float GEMM's one-row tile, with X in f32.
 */
export function linearFoldsNorm(
  ctx: DispatchBuilder['ctx'],
  a: Pick<LinearArgs, 'lin' | 'm' | 'xFormat' | 'choices'>,
): boolean {
  const w = a.lin.weight;
  if (isGgufWeight(w) || (a.xFormat ?? 'f32') !== 'f32') return false;
  if (!isQ4Weight(w))
    return (
      w.rows <= FOLD_MAX_ROWS && matmulFoldsNorm(ctx, a.m, a.choices?.matmul(w, a.m, a.xFormat), a.xFormat)
    );
  // matmul_q4's `_rms` variant exists (tested) but is not used: on lavapipe it made the int4 bench
  // model's decode step slower (GPU time of a profiled step, 8 alternating rounds: median 87.6 ms
  // folded vs 68.7 separate), its x_lane paying 4 scalar loads of the norm weight per 32 codes.
  return INT4_FOLD && !a.lin.perm && q4FoldsNorm(ctx, a.m, a.choices?.matmulQ4(w, a.m));
}

/** Whether int4 projections fold the norm (see linearFoldsNorm). */
const INT4_FOLD = false;

/**
 * Most weight rows a folded float projection has: every workgroup repeats the mean square and
 * loads the norm weight beside X, which pays only while the workgroups are few. Measured on
 * lavapipe (GPU time of a profiled decode step, alternating rounds): BabyLlama (qkv 256, gate/up
 * 704, LM head 105 rows) 2.47 ms folded vs 3.12 separate; the int4 bench model with only its bf16
 * LM head (32768 rows) folded, 73.4 vs 61.6 ms. Between those sizes it is not measured.
 */
const FOLD_MAX_ROWS = 2048;

/** Units (SwiGLU) or output rows of a projection. */
export function linearOutputs(lin: Linear, swiglu: boolean): number {
  const w = lin.weight;
  return swiglu && isStackedQuantWeight(w) ? w.rows / 2 : w.rows;
}

export function linear(b: DispatchBuilder, a: LinearArgs): Dispatch[] {
  const w = a.lin.weight;
  if (a.norm && !linearFoldsNorm(b.ctx, a))
    throw new RangeError(`${w.name}: this projection's kernel cannot fold the RMSNorm before it`);
  if (isGgufWeight(w)) return linearGguf(b, a, w);
  if (!isQ4Weight(w)) {
    if (a.lin.perm) throw new RangeError(`${w.name}: a column permutation applies to int4 weights only`);
    if (!!a.swiglu !== (w.fused === 'swiglu')) {
      throw new RangeError(`${w.name}: SwiGLU needs a weight with interleaved gate/up tiles`);
    }
    const x = { x: a.x, xFormat: a.xFormat };
    return matmul(b, {
      ...x,
      weight: w,
      bias: a.lin.bias,
      y: a.y,
      m: a.m,
      accumulate: a.accumulate,
      placeholder: a.placeholder,
      variant: a.choices?.matmul(w, a.m, a.xFormat),
      ...(a.gate ? { gate: a.gate } : {}),
      norm: a.norm,
    });
  }
  if ((a.xFormat ?? 'f32') !== 'f32')
    throw new RangeError(`${w.name}: the int4 matmul reads f32 activations`);
  const tuned = a.choices?.matmulQ4(w, a.m);
  const out: Dispatch[] = [];
  let x = a.x;
  if (a.lin.perm) {
    const gathered = a.scratch?.gathered;
    if (!gathered) throw new RangeError(`${w.name}: a permuted int4 projection needs gather scratch`);
    out.push(gatherCols(b, { perm: a.lin.perm, x, y: gathered, m: a.m, k: w.cols }));
    x = gathered;
  }
  if (!a.swiglu) {
    out.push(
      ...matmulQ4(b, {
        x,
        weight: w,
        bias: a.lin.bias,
        y: a.y,
        m: a.m,
        accumulate: a.accumulate,
        placeholder: a.placeholder,
        ...tuned,
        norm: a.norm,
      }),
    );
    return out;
  }
  if (a.accumulate) throw new RangeError(`${w.name}: a SwiGLU projection cannot accumulate`);
  const gateUp = a.scratch?.gateUp;
  if (!gateUp) throw new RangeError(`${w.name}: an int4 SwiGLU projection needs gate/up scratch`);
  if (w.rows % 2 !== 0) throw new RangeError(`${w.name}: ${w.rows} rows are not [gate; up]`);
  out.push(
    ...matmulQ4(b, {
      x,
      weight: w,
      bias: a.lin.bias,
      y: gateUp,
      m: a.m,
      placeholder: a.placeholder,
      ...tuned,
      norm: a.norm,
    }),
  );
  out.push(swigluStacked(b, { gateUp, out: a.y, m: a.m, width: w.rows / 2, gate: a.gate }));
  return out;
}

/** A projection with GGUF block weights: matmul_gguf, then SwiGLU over [gate; up] if asked. */
function linearGguf(b: DispatchBuilder, a: LinearArgs, w: GgufGpuWeight): Dispatch[] {
  if ((a.xFormat ?? 'f32') !== 'f32')
    throw new RangeError(`${w.name}: the GGUF matmul reads f32 activations`);
  if (a.lin.perm) throw new RangeError(`${w.name}: a column permutation applies to int4 weights only`);
  const common = {
    x: a.x,
    weight: w,
    bias: a.lin.bias,
    m: a.m,
    placeholder: a.placeholder,
    ...a.choices?.matmulGguf(w, a.m),
  };
  if (!a.swiglu) return matmulGguf(b, { ...common, y: a.y, accumulate: a.accumulate });
  if (a.accumulate) throw new RangeError(`${w.name}: a SwiGLU projection cannot accumulate`);
  const gateUp = a.scratch?.gateUp;
  if (!gateUp) throw new RangeError(`${w.name}: a GGUF SwiGLU projection needs gate/up scratch`);
  if (w.rows % 2 !== 0) throw new RangeError(`${w.name}: ${w.rows} rows are not [gate; up]`);
  return [
    ...matmulGguf(b, { ...common, y: gateUp }),
    swigluStacked(b, { gateUp, out: a.y, m: a.m, width: w.rows / 2, gate: a.gate }),
  ];
}

/**
 * out[r, j] = silu(gateUp[r, j]) · gateUp[r, width + j] (swiglu_stacked), or with gate 'gelu-tanh'
 * gelu_tanh(...) · ... (geglu_stacked); see shaders/swiglu_stacked.wgsl.
 */
export function swigluStacked(
  b: DispatchBuilder,
  a: { gateUp: GPUBuffer; out: GPUBuffer; m: number; width: number; gate?: GateActivation | undefined },
): Dispatch {
  const count = a.m * a.width;
  const { gridX, grid } = linearGrid(count);
  const gelu = a.gate === 'gelu-tanh';
  return b.make(
    gelu ? 'geglu_stacked' : 'swiglu_stacked',
    () => `const GELU: bool = ${gelu};\n${shaderSource('swiglu_stacked')}`,
    packParams([
      ['u32', count],
      ['u32', a.width],
      ['u32', gridX],
    ]),
    [a.gateUp, a.out],
    grid,
  );
}

/** y[r, j] = x[r, perm[j]]; see shaders/gather_cols.wgsl. */
export function gatherCols(
  b: DispatchBuilder,
  a: { perm: GPUBuffer; x: GPUBuffer; y: GPUBuffer; m: number; k: number },
): Dispatch {
  const count = a.m * a.k;
  const { gridX, grid } = linearGrid(count);
  return b.make(
    'gather_cols',
    () => shaderSource('gather_cols'),
    packParams([
      ['u32', count],
      ['u32', a.k],
      ['u32', gridX],
    ]),
    [a.perm, a.x, a.y],
    grid,
  );
}

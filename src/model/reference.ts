/**
 * The CPU reference: a plain float64 forward pass, written for clarity from the Hugging Face
 * transformers modeling code (modeling_llama.py and the files each architecture names) and built
 * from the per-kernel CPU twins. It reads the same declarations as the GPU engine (the
 * architecture's tensors and block recipe, src/model/arch/), so a new architecture is checked
 * against it without touching it. Tests compare the engine's logits and greedy ids with it. Slow
 * by design; use with tiny models.
 */
import { decodeToFloat32, f16BitsToF32, f32ToF16Bits } from '../io/dtype.js';
import type { Checkpoint } from '../io/safetensors-checkpoint.js';
import { attentionRef } from '../kernels/attention.ref.js';
import { embedRef } from '../kernels/embed.ref.js';
import { matmulRef } from '../kernels/matmul.ref.js';
import { rmsnormRef } from '../kernels/rmsnorm.ref.js';
import { ropeInvFreq, ropeRef } from '../kernels/rope.ref.js';
import { swigluRef } from '../kernels/swiglu.ref.js';
import { projectionRows, type BlockRecipe, type ProjectionTensors } from './architecture.js';
import { architectureOf } from './registry.js';
import type { ModelSpec } from './spec.js';
import { expectedTensors, modelTensors } from './tensors.js';
import { isQuantKv, type KvDtype, type KvQuantDtype } from '../kernels/kv-dtype.js';
import { kvRoundTrip } from '../kernels/kv-quant.ref.js';

type Tensor = Float64Array;

export interface ReferenceOptions {
  /**
   * 'f16' rounds K (after RoPE) and V to f16 (through f32, to nearest even) before attention, as
   * an f16 KV cache stores them; a compressed format (int8, int4, int2, gear4, gear2) replaces each
   * token row of a KV head by its quantize -> dequantize round trip (kv-quant.ref.ts); everything
   * else stays float64. Default 'f32': no rounding.
   */
  kvDtype?: KvDtype;
}

const roundF16 = (x: number): number => f16BitsToF32(f32ToF16Bits(x));

/** Every headDim-long row of `x` as a compressed KV cache gives it back. */
function roundTripRows(x: Tensor, headDim: number, dtype: KvQuantDtype): Tensor {
  const out = new Float64Array(x.length);
  for (let at = 0; at < x.length; at += headDim) {
    out.set(kvRoundTrip(x.subarray(at, at + headDim), dtype), at);
  }
  return out;
}

export class ReferenceModel {
  private constructor(
    readonly spec: ModelSpec,
    private readonly t: Map<string, Tensor>,
    private readonly opts: ReferenceOptions = {},
  ) {}

  static async load(spec: ModelSpec, ckpt: Checkpoint, opts: ReferenceOptions = {}): Promise<ReferenceModel> {
    const t = new Map<string, Tensor>();
    for (const name of expectedTensors(spec).keys()) {
      const info = ckpt.get(name);
      t.set(name, Float64Array.from(decodeToFloat32(info.dtype, await ckpt.readTensor(info))));
    }
    return new ReferenceModel(spec, t, opts);
  }

  /** The same weights with other options (no copy). */
  with(opts: ReferenceOptions): ReferenceModel {
    return new ReferenceModel(this.spec, this.t, opts);
  }

  private w(name: string): Tensor {
    const x = this.t.get(name);
    if (!x) throw new Error(`reference model: no tensor ${name}`);
    return x;
  }

  /** X·Wᵀ (+ bias) of a projection: [m, rows], its sources' outputs side by side. */
  private project(x: Tensor, m: number, p: ProjectionTensors): Tensor {
    const rows = projectionRows(p);
    const y = new Float64Array(m * rows);
    let at = 0;
    for (const s of p.sources) {
      const bias = p.bias ? this.w(`${s.prefix}.bias`) : undefined;
      const part = matmulRef(x, this.w(`${s.prefix}.weight`), m, s.rows, p.cols, bias);
      for (let i = 0; i < m; i++) y.set(part.subarray(i * s.rows, (i + 1) * s.rows), i * rows + at);
      at += s.rows;
    }
    return y;
  }

  /** Logits [tokens.length, vocab] for every position of `tokens` (a full causal pass). */
  forward(tokens: readonly number[]): Float64Array[] {
    const s = this.spec;
    checkBlock(architectureOf(s).block);
    const names = modelTensors(s);
    const m = tokens.length;
    const H = s.hiddenSize;
    const qDim = s.numHeads * s.headDim;
    const kvDim = s.numKvHeads * s.headDim;
    const positions = tokens.map((_, i) => i);
    const invFreq = ropeInvFreq(s.headDim, s.ropeTheta, s.ropeScaling);
    let x = embedRef(this.w(names.embed), H, tokens);
    for (const [l, L] of names.layers.entries()) {
      // Attention: RMSNorm, q/k/v, RoPE on q and k, causal GQA attention (within the layer's
      // sliding window, if any), o, residual.
      const xn = rmsnormRef(x, this.w(L.inputNorm), m, H, s.rmsNormEps);
      const qkv = this.project(xn, m, L.qkv);
      const width = qDim + 2 * kvDim;
      const q = ropeRef(columns(qkv, m, width, 0, qDim), positions, s.numHeads, s.headDim, invFreq);
      let k = ropeRef(columns(qkv, m, width, qDim, kvDim), positions, s.numKvHeads, s.headDim, invFreq);
      let v = columns(qkv, m, width, qDim + kvDim, kvDim);
      const kvDtype = this.opts.kvDtype ?? 'f32';
      if (kvDtype === 'f16') {
        k = k.map(roundF16);
        v = v.map(roundF16);
      } else if (isQuantKv(kvDtype)) {
        k = roundTripRows(k, s.headDim, kvDtype);
        v = roundTripRows(v, s.headDim, kvDtype);
      }
      const att = attentionRef(
        q,
        k,
        v,
        positions,
        s.numHeads,
        s.numKvHeads,
        s.headDim,
        1 / Math.sqrt(s.headDim),
        s.layerWindows[l] ?? 0,
      );
      const o = this.project(att, m, L.o);
      x = x.map((xi, i) => xi + (o[i] as number));
      // MLP: RMSNorm, silu(gate) · up, down, residual.
      const hn = rmsnormRef(x, this.w(L.postNorm), m, H, s.rmsNormEps);
      const I = s.intermediateSize;
      const gu = this.project(hn, m, L.gateUp);
      const act = swigluRef(columns(gu, m, 2 * I, 0, I), columns(gu, m, 2 * I, I, I));
      const down = this.project(act, m, L.down);
      x = x.map((xi, i) => xi + (down[i] as number));
    }
    const fin = rmsnormRef(x, this.w(names.finalNorm), m, H, s.rmsNormEps);
    const head = this.w(names.lmHead === null ? names.embed : `${names.lmHead}.weight`);
    const logits = matmulRef(fin, head, m, s.vocabSize, H);
    return positions.map((p) => logits.subarray(p * s.vocabSize, (p + 1) * s.vocabSize));
  }

  /** Greedy continuation: `steps` argmax ids after `prompt` (full recompute per token). */
  greedy(prompt: readonly number[], steps: number): number[] {
    const ids = [...prompt];
    const out: number[] = [];
    for (let i = 0; i < steps; i++) {
      const all = this.forward(ids);
      const last = all[all.length - 1] as Float64Array;
      let best = 0;
      for (let j = 1; j < last.length; j++) if ((last[j] as number) > (last[best] as number)) best = j;
      out.push(best);
      ids.push(best);
    }
    return out;
  }
}

/** Columns [from, from + n) of a row-major [m, width] matrix. */
function columns(y: Tensor, m: number, width: number, from: number, n: number): Tensor {
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++) out.set(y.subarray(i * width + from, i * width + from + n), i * n);
  return out;
}

/** The recipe this reference implements; a new recipe choice needs its case here first. */
function checkBlock(b: BlockRecipe): void {
  if (b.norm !== 'rmsnorm-pre' || b.positions !== 'rope' || b.mlp !== 'swiglu') {
    throw new Error(`reference model: block ${JSON.stringify(b)} is not implemented`);
  }
}

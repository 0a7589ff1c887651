/**
 * The lite search space (DESIGN-NOTES §6): per kernel and shape class, a few dozen candidates at
 * most, pruned by rules a variant must satisfy on this adapter (subgroup width, shader-f16,
 * workgroup memory, an even rows-per-thread for the SwiGLU epilogue). Candidate 0 is always the
 * default: the kernel's own shape-based choice, expressed as an empty override.
 *
 * The knobs, by kernel:
 * - float matmul: flat GEMV/GEMM (X rows per tile MT, output rows per thread R) or the register-
 *   blocked GEMM (rows of X per thread TM, down to 1 for decode; weight rows per thread TN; threads
 *   per workgroup), whose subgroup broadcast is the "subgroup vs workgroup-memory" choice;
 * - int4 matmul: MT, R, X through subgroups or staged (double-buffered) in workgroup memory of
 *   8/16/32 KiB (the K-tile), f32 or f16 dequant, threads per workgroup (subgroup path); at M = 1
 *   also the one-row kernel matmul_q4_gemv (rows per thread, threads, K slices per workgroup);
 * - GGUF block matmul: MT, R, threads per workgroup, and for the 16-byte formats X through
 *   subgroups or loaded per lane;
 * - split-K decode attention: tokens per split (the split-K factor).
 */
import type { GpuContext } from '../gpu/device.js';
import {
  gemmUsable,
  type GemmRowsOfX,
  type GemmRowsPerThread,
  type GemmWorkgroupSize,
  type MatmulVariant,
} from '../kernels/matmul.js';
import { q4SubgroupsUsable, type Q4GpuWeight, type Q4Variant } from '../kernels/matmul-q4.js';
import type { Q4Gemv } from '../kernels/matmul-q4-gemv.js';
import type { GgufVariant } from '../kernels/matmul-gguf.js';
import type { GpuWeight } from '../kernels/tiled.js';
import { contextBucket, type KernelChoice, type MClass } from './choices.js';

export function floatMatmulCandidates(ctx: GpuContext, w: GpuWeight, mClass: MClass): KernelChoice[] {
  const swiglu = w.fused === 'swiglu';
  const gemm = gemmUsable(ctx);
  const v: MatmulVariant[] = [{}];
  const flat = (mt: 1 | 4 | 8, rs: readonly (1 | 2 | 4)[]) => {
    for (const r of rs) if (!(swiglu && r === 1)) v.push({ path: 'flat', mt, r });
  };
  // `tm` undefined: the rows of X per tile follow the step's own M (the rule, pickGemmRowsOfX).
  const tiles = (
    tms: readonly (GemmRowsOfX | undefined)[],
    tns: readonly GemmRowsPerThread[],
    wgs: readonly GemmWorkgroupSize[] = [64],
  ) => {
    if (!gemm) return;
    for (const tm of tms)
      for (const tn of tns)
        for (const wg of wgs) v.push({ path: 'gemm', ...(tm === undefined ? {} : { tm }), tn, wg });
  };
  // Threads per GEMM workgroup: fewer threads make more, smaller workgroups (a CPU adapter
  // balances them over its cores; at M = 1, 16 threads beat 64 by up to 2x on lavapipe), more
  // threads suit GPUs with many lanes per core.
  switch (mClass) {
    case '1':
      flat(1, [1, 2, 4]);
      // One row of X per thread: no wasted multiply-adds, and each x value broadcast from a lane
      // serves TN weight rows (lavapipe: 1.4-2.3x over the flat GEMV at every decode shape).
      tiles([1], [2, 4], [16, 32, 64, 128]);
      break;
    case '2-4':
      flat(4, [1, 2, 4]);
      tiles([4], [2, 4, 8], [32, 64]);
      break;
    case '5-16':
      flat(8, [2, 4]);
      // 8 rows of X, or the rule's tile for the step (8 up to 8 rows, 16 above; timed at 16 rows,
      // where it is the 16-row tile): a 16-row tile for a 5-row step (a verifying step of 4
      // guesses) computes 11 rows for nothing: on lavapipe at M = 5 and 8 (Qwen2.5-0.5B's layers,
      // 4 weight rows per thread on 32 threads) it ran 1.1-1.2x slower than the 8-row tile on
      // q/k/v, o and down, 1.5-1.8x on gate/up.
      tiles([8, undefined], [4, 8], [16, 32, 64, 128]);
      break;
    case '17+':
      flat(8, [4]);
      tiles([8, 16], [4, 8], [16, 64]);
      break;
  }
  return v.map((variant) => ({ kernel: 'matmul', variant }));
}

export function q4MatmulCandidates(ctx: GpuContext, _w: Q4GpuWeight, mClass: MClass): KernelChoice[] {
  const sgOk = q4SubgroupsUsable(ctx);
  const f16 = ctx.device.features.has('shader-f16');
  const wgLimit = ctx.limits.maxComputeWorkgroupStorageSize;
  const v: Q4Variant[] = [{}];
  const mts: (1 | 4 | 8)[] = mClass === '1' ? [1] : [4, 8];
  const rs: (1 | 2 | 4)[] = mClass === '1' ? [1, 2, 4] : [2, 4];
  const staged = [8192, 16384, 32768].filter((b) => b <= wgLimit);
  for (const dequant of f16 ? (['f32', 'f16'] as const) : (['f32'] as const)) {
    for (const rowsPerGroup of mts) {
      for (const rowsPerThread of rs) {
        if (sgOk) v.push({ rowsPerGroup, rowsPerThread, subgroups: true, dequant });
        for (const workgroupBytes of mClass === '1' ? staged : staged.slice(1, 2))
          v.push({ rowsPerGroup, rowsPerThread, subgroups: false, workgroupBytes, dequant });
      }
    }
  }
  // Fewer or more threads per workgroup, on the subgroup path with f32 dequant (the float GEMM's
  // workgroup size won up to 2x on lavapipe; a GPU may want more lanes per workgroup).
  if (sgOk) {
    for (const rowsPerGroup of mts) {
      for (const rowsPerThread of rs) {
        for (const workgroupSize of [16, 32, 128] as const)
          v.push({ rowsPerGroup, rowsPerThread, subgroups: true, dequant: 'f32', workgroupSize });
      }
    }
  }
  if (mClass === '1') {
    // matmul_q4_gemv. With subgroup X, all of K per thread (the CPU adapter's shape: on lavapipe
    // at matmul_q4's speed, 8-16 threads well ahead of 32-64). K split in 4-16 slices of a
    // workgroup, X loaded directly: the GPU's shape (more threads than rows; not measured here).
    if (sgOk) for (const [tn, wg] of GEMV_SG) v.push({ gemv: { tn, wg }, subgroups: true });
    const threads = ctx.limits.maxComputeInvocationsPerWorkgroup;
    for (const [tn, wg, ks] of GEMV_SPLIT)
      if (wg <= threads) v.push({ gemv: { tn, wg, ks }, subgroups: false });
  }
  return v.map((variant) => ({ kernel: 'matmul_q4', variant }));
}

/** matmul_q4_gemv candidates: [rows per thread, threads] with subgroup X ... */
const GEMV_SG: readonly [Q4Gemv['tn'], Q4Gemv['wg']][] = [
  [2, 16],
  [4, 8],
  [4, 16],
  [8, 16],
];
/** ... and [rows per thread, threads, K slices] with X loaded directly. */
const GEMV_SPLIT: readonly [Q4Gemv['tn'], Q4Gemv['wg'], NonNullable<Q4Gemv['ks']>][] = [
  [1, 64, 4],
  [1, 128, 8],
  [2, 128, 8],
  [1, 256, 16],
];
/** Every GGUF format runs the same kernel, so the candidates depend on the adapter and M only. */
export function ggufMatmulCandidates(ctx: GpuContext, mClass: MClass): KernelChoice[] {
  const sgs = q4SubgroupsUsable(ctx) ? [true, false] : [false];
  const v: GgufVariant[] = [{}];
  const mts: (1 | 4 | 8)[] = mClass === '1' ? [1] : [4, 8];
  const rs: (1 | 2 | 4)[] = mClass === '1' ? [1, 2, 4] : [2, 4];
  for (const subgroups of sgs) {
    for (const rowsPerGroup of mts) {
      for (const rowsPerThread of rs) {
        // Fewer threads make more, smaller workgroups (what a CPU adapter balances over its cores,
        // as for the int4 kernel); more suit a GPU's wide cores. 64 is the kernel's default and
        // left out of the variant, as the int4 candidates do.
        for (const workgroupSize of [16, 32, 64, 128] as const) {
          if (subgroups === false && workgroupSize !== 64) continue;
          v.push({
            rowsPerGroup,
            rowsPerThread,
            ...(workgroupSize === 64 ? {} : { workgroupSize }),
            subgroups,
          });
        }
      }
    }
  }
  return v.map((variant) => ({ kernel: 'matmul_gguf', variant }));
}

/**
 * Tokens per split: multiples of the 16-token block, no longer than the context bucket; then the
 * lanes form (one invocation per row and KV head) where `lanes` says it serves the head shape.
 */
export function attentionCandidates(defaultChunk: number, maxContext: number, lanes = false): KernelChoice[] {
  const cap = Math.max(64, contextBucket(maxContext));
  const chunks = [
    defaultChunk,
    ...[64, 128, 256, 512, 1024, 2048].filter((c) => c <= cap && c !== defaultChunk),
  ];
  const split: KernelChoice[] = chunks.map((chunk) => ({ kernel: 'attention_decode', chunk }));
  return lanes ? [...split, lanesChoice(maxContext)] : split;
}

/** The lanes form's choice: its chunk is the context bucket, so the plan's partials hold one split. */
export function lanesChoice(maxContext: number): KernelChoice {
  return { kernel: 'attention_decode', chunk: contextBucket(maxContext), form: 'lanes' };
}

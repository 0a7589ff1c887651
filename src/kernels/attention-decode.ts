/**
 * Split-K decode attention over the paged KV cache (shaders/attention_split.wgsl, pass 1, and
 * shaders/attention_merge.wgsl, pass 2), in two variants:
 *   'two_pass'      exact: each split keeps its own max, the merge rescales (FlashDecoding).
 *   'async_softmax' FlashDecoding++'s unified max: every split subtracts the same `phi`, so the
 *                   merge is a plain sum; rows that leave the safe window are flagged on the GPU
 *                   and recomputed exactly by one more dispatch (a workgroup per row that exits
 *                   at once when its row is unflagged).
 * With one split (the plan's whole context in one chunk) both record a single dispatch,
 * 'attention_decode_single_pass': the exact pass 1 writes the normalised output itself, with no
 * merge and no fallback (on a CPU adapter each dispatch costs a fixed ~0.2 ms).
 * The general `attention` kernel stays the prefill path; this one is for a few rows over long
 * contexts, where one workgroup per (query head, row) leaves most of the GPU idle.
 */
import { storageUsage, type GpuContext } from '../gpu/device.js';
import { UnsupportedModelError } from '../errors.js';
import { MAX_GRID, packParams, shaderSource } from './shader.js';
import { type Dispatch, type DispatchBuilder } from '../gpu/dispatch.js';
import { checkKvDtype, kvPrefix, kvVariant, type KvDtype } from './kv-dtype.js';
import { attentionLanes } from './attention-lanes.js';

export type AttentionDecodeVariant = 'two_pass' | 'async_softmax';
/** How the work is cut: split-K workgroups, or one invocation per (row, KV head) (attention-lanes.ts). */
export type AttentionDecodeForm = 'split' | 'lanes';

/**
 * Query heads per KV head one workgroup serves: two blocks of 4, whose accumulators are named
 * registers in attention_split.wgsl (a GQA group of more would need a third).
 */
export const ATTENTION_DECODE_MAX_REP = 8;
/**
 * Steps of up to this many rows use split-K decode attention (batched decodes: one row per
 * sequence). Measured on lavapipe, BabyLlama, 16 decode rows at context 64: attention 22.5 ms per
 * step with the one-workgroup-per-(row, head) kernel, 13.6 ms split-K. Longer steps are prefill
 * chunks, which the general kernel serves with rows × heads workgroups already.
 */
export const ATTENTION_DECODE_MAX_ROWS = 32;
/** head_dim limit with up to 4 query heads per KV head (half of it with 5 to 8). */
export const ATTENTION_DECODE_MAX_HEAD_DIM = 256;
/**
 * Workgroup-memory capacities of attention_split.wgsl, in vec4s: q of a group, one tile's
 * probabilities. Query heads go in blocks of 4 (one vec4 lane each), the last block zero-padded.
 */
const Q_CAP = 256;
const P_CAP = 512;
const HEAD_BLOCK = 4;
/** attention_split.wgsl's workgroup size (and tiles are whole multiples of it). */
const WG = 64;
const BLOCK_TOKENS = 16;
/** Smallest chunk the chunk picker proposes: below this, the per-split overhead dominates. */
const MIN_CHUNK = 64;

/**
 * Shader modes (the `MODE` constant prefixed to both WGSL files). The merge has modes 0 and 1;
 * mode 2 is attention_split's exact fallback of the async chain (one workgroup per row, every KV
 * head, the whole context, straight into the output). The single pass is mode 0 with `direct` set
 * in the uniforms, so it shares the exact pass 1's compiled shader (Dawn and the driver's cache
 * dedupe identical code: on lavapipe a compile takes seconds).
 */
const MODE = { exact: 0, async: 1, fallback: 2 } as const;

/**
 * Pipeline labels (= cache keys) of each variant's dispatches over an f32 cache, in the order they
 * are recorded; see `attentionDecodeLabels` for an f16 cache.
 */
export const ATTENTION_DECODE_LABELS = {
  two_pass: ['attention_decode_two_pass', 'attention_merge_two_pass'],
  async_softmax: [
    'attention_decode_async_softmax',
    'attention_merge_async_softmax',
    'attention_decode_async_softmax_fallback',
  ],
} as const satisfies Record<AttentionDecodeVariant, readonly string[]>;

/** The one dispatch of either variant when the context fits one split (f32 cache label). */
export const ATTENTION_DECODE_SINGLE_PASS_LABEL = 'attention_decode_single_pass';

/**
 * The labels of ATTENTION_DECODE_LABELS for a `kvDtype` cache: pass 1 (attention_decode_*) reads
 * the cache and gets the format's suffix (`_kvf16`, `_kvint4`, ...); the merges read only the f32 partials, so they
 * keep their label and their one compiled pipeline.
 */
export function attentionDecodeLabels(
  variant: AttentionDecodeVariant,
  kvDtype: KvDtype,
  splits = 2,
): string[] {
  const labels = splits === 1 ? [ATTENTION_DECODE_SINGLE_PASS_LABEL] : ATTENTION_DECODE_LABELS[variant];
  return labels.map((l) => (l.startsWith('attention_decode_') ? kvVariant(l, kvDtype) : l));
}

/** Number of splits (pass-1 workgroups along x) for a context of up to `maxContext` tokens. */
export function decodeSplits(maxContext: number, chunk: number): number {
  return Math.max(1, Math.ceil(maxContext / chunk));
}

/**
 * A chunk size for a decode plan: at least MIN_CHUNK tokens (a multiple of the 16-token block),
 * and small enough that kvHeads · splits · rows reaches about `targetWorkgroups` when the context
 * allows. A short context gets one split. WebGPU cannot tell how many compute units there are, so
 * the target is a conservative over-decomposition (DESIGN-NOTES §2), for a tuner to refine.
 */
export function pickDecodeChunk(a: {
  maxContext: number;
  kvHeads: number;
  rows: number;
  targetWorkgroups?: number;
}): number {
  const target = a.targetWorkgroups ?? 64;
  const wantSplits = Math.max(1, Math.ceil(target / (a.kvHeads * a.rows)));
  let chunk = Math.ceil(a.maxContext / wantSplits / BLOCK_TOKENS) * BLOCK_TOKENS;
  chunk = Math.max(MIN_CHUNK, chunk);
  // The split grid must fit a dimension (only reachable with contexts of millions of tokens).
  while (decodeSplits(a.maxContext, chunk) > MAX_GRID) chunk *= 2;
  return chunk;
}

/** The shape a scratch is sized for; a call may use fewer rows, heads or splits. */
export interface AttentionDecodeShape {
  rows: number;
  heads: number;
  headDim: number;
  maxContext: number;
  chunk: number;
  /** The form the plan records (sizes nothing; default split-K). */
  form?: AttentionDecodeForm;
}

/**
 * Per-plan scratch of the decode kernels: the split partials and the async variant's per-row
 * overflow flags. Partials are consumed by the merge in the next dispatch, so one scratch can
 * serve every layer of a plan. Flags must be zero between calls: buffers start zeroed and the
 * async chain's last dispatch clears what it set. The owner calls destroy().
 */
export class AttentionDecodeScratch {
  readonly partials: GPUBuffer;
  readonly flags: GPUBuffer;
  readonly splits: number;

  constructor(
    private readonly ctx: GpuContext,
    readonly shape: AttentionDecodeShape,
  ) {
    this.splits = decodeSplits(shape.maxContext, shape.chunk);
    const usage = storageUsage();
    this.partials = ctx.createBuffer(
      'attention_decode.partials',
      AttentionDecodeScratch.partialBytes(shape.rows, shape.heads, shape.headDim, this.splits),
      usage,
    );
    this.flags = ctx.createBuffer('attention_decode.flags', 4 * shape.rows, usage);
  }

  /** Bytes of partials for these sizes: one (c, l) vec4 plus head_dim f32 per (row, head, split). */
  static partialBytes(rows: number, heads: number, headDim: number, splits: number): number {
    return rows * heads * splits * (headDim / 4 + 1) * 16;
  }

  destroy(): void {
    this.ctx.destroyBuffer(this.partials);
    this.ctx.destroyBuffer(this.flags);
  }
}

export interface AttentionDecodeArgs {
  /** [m] vec4<u32> (row-info.ts); every slot a row sees must be < maxContext. */
  rowInfo: GPUBuffer;
  /** u32 physical block ids */
  blockTable: GPUBuffer;
  /** [m, heads·headDim] f32 */
  q: GPUBuffer;
  /** [blocks][kvHeads][16][headDim] kvDtype */
  kCache: GPUBuffer;
  vCache: GPUBuffer;
  /** Element type of the cache (default f32; f16 needs shader-f16). */
  kvDtype?: KvDtype;
  /** [m, heads·headDim] f32 */
  out: GPUBuffer;
  m: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  scale: number;
  /**
   * Sliding window of this layer (ModelSpec.layerWindows): a row at position i sees keys
   * i - window < j <= i; 0 (the default) for full causal attention. The splits start at the
   * window's first block, so those past it are empty and keys before it are never read.
   */
  window?: number;
  /** > 0: scores soft-capped to softcap · tanh(score / softcap) (Gemma 2). */
  softcap?: number;
  /** Longest context the recorded dispatches serve: sizes the split grid. */
  maxContext: number;
  /** Tokens per split: a positive multiple of 16 (see pickDecodeChunk). */
  chunk: number;
  variant: AttentionDecodeVariant;
  /**
   * 'lanes': one invocation per (row, KV head) instead of split-K (attention-lanes.ts; exact, one
   * dispatch; `variant`, `phi` and the chunk's splits do not apply): where `supportsAttentionLanes`.
   */
  form?: AttentionDecodeForm;
  /** The unified max of 'async_softmax' (per model or layer, from calibration). */
  phi?: number;
  scratch: AttentionDecodeScratch;
}

/** Whether this kernel serves a model's attention shape (the checks `attentionDecode` makes). */
export function supportsAttentionDecode(heads: number, kvHeads: number, headDim: number): boolean {
  const nRep = heads / kvHeads;
  return (
    Number.isInteger(nRep) &&
    nRep >= 1 &&
    nRep <= ATTENTION_DECODE_MAX_REP &&
    headDim % 8 === 0 &&
    Math.ceil(nRep / HEAD_BLOCK) * headDim <= Q_CAP
  );
}

/**
 * Records one decode attention call: 2 dispatches for 'two_pass', 3 for 'async_softmax' (pass 1,
 * merge, then the exact fallback, which does nothing for unflagged rows), 1 for
 * either when maxContext fits one chunk (the exact single pass), 1 for the lanes form. They must run in order, all of
 * them, in one pass or consecutive ones.
 */
export function attentionDecode(b: DispatchBuilder, a: AttentionDecodeArgs): Dispatch[] {
  const nRep = a.heads / a.kvHeads;
  if (!Number.isInteger(nRep) || nRep < 1)
    throw new UnsupportedModelError(`attention: ${a.heads} heads is not a multiple of ${a.kvHeads} KV heads`);
  if (nRep > ATTENTION_DECODE_MAX_REP) {
    throw new UnsupportedModelError(
      `decode attention serves at most ${ATTENTION_DECODE_MAX_REP} query heads per KV head, got ${nRep} (${a.heads}/${a.kvHeads})`,
    );
  }
  const headBlocks = Math.ceil(nRep / HEAD_BLOCK);
  if (a.headDim % 8 !== 0 || headBlocks * a.headDim > Q_CAP) {
    throw new UnsupportedModelError(
      `decode attention needs head_dim a multiple of 8 and at most ${Q_CAP} (${Q_CAP / 2} with more than ${HEAD_BLOCK} query heads per KV head); got head_dim ${a.headDim} with ${nRep} heads per KV head`,
    );
  }
  if (!Number.isInteger(a.chunk) || a.chunk < BLOCK_TOKENS || a.chunk % BLOCK_TOKENS !== 0)
    throw new RangeError(`attentionDecode: chunk ${a.chunk} is not a positive multiple of ${BLOCK_TOKENS}`);
  const splits = decodeSplits(a.maxContext, a.chunk);
  if (splits > MAX_GRID || a.kvHeads > MAX_GRID || a.heads > MAX_GRID || a.m > MAX_GRID)
    throw new RangeError(`attentionDecode: grid ${splits}x${a.kvHeads}x${a.m} (heads ${a.heads}) too large`);
  const s = a.scratch;
  if (
    s.partials.size < AttentionDecodeScratch.partialBytes(a.m, a.heads, a.headDim, splits) ||
    s.flags.size < 4 * a.m
  ) {
    throw new RangeError(
      `attentionDecode: scratch made for ${JSON.stringify(s.shape)} is too small for m=${a.m} heads=${a.heads} headDim=${a.headDim} splits=${splits}`,
    );
  }
  const kv = a.kvDtype ?? 'f32';
  checkKvDtype(b.ctx, kv, a.headDim);
  if (a.form === 'lanes') return [attentionLanes(b, { ...a, kvDtype: kv, partials: s.partials, splits })];
  const isAsync = a.variant === 'async_softmax';
  if (isAsync && !Number.isFinite(a.phi))
    throw new RangeError('attentionDecode: the async_softmax variant needs a finite phi');
  // Tokens per tile: its probabilities for all head blocks must fit P_CAP; whole workgroups of
  // 64 threads so the score loop has no ragged pass except at the end of a chunk.
  const tile = Math.floor(P_CAP / headBlocks / WG) * WG;

  const splitParams = (direct: number): ArrayBuffer =>
    packParams([
      ['u32', a.heads],
      ['u32', a.kvHeads],
      ['u32', a.headDim],
      ['f32', a.scale],
      ['u32', a.chunk],
      ['u32', splits],
      ['u32', tile],
      ['f32', isAsync ? (a.phi as number) : 0],
      ['u32', a.window ?? 0],
      ['f32', a.softcap ?? 0],
      ['u32', direct],
    ]);
  const mergeParams = packParams([
    ['u32', a.heads],
    ['u32', a.headDim],
    ['u32', splits],
    ['u32', 0],
  ]);
  const splitBuffers = [a.rowInfo, a.blockTable, a.q, a.kCache, a.vCache, s.partials, s.flags, a.out];
  const mergeBuffers = [s.partials, a.out, s.flags];
  const pass1 = (
    label: string,
    mode: number,
    direct = 0,
    grid: readonly [number, number, number] = [splits, a.kvHeads, a.m],
  ): Dispatch =>
    b.make(label, () => withMode(mode, 'attention_split', kv), splitParams(direct), splitBuffers, grid);
  const merge = (label: string, mode: number, grid: readonly [number, number, number]): Dispatch =>
    b.make(label, () => withMode(mode, 'attention_merge', kv), mergeParams, mergeBuffers, grid);

  if (splits === 1) {
    // The single split's exact partial is the answer (same compiled shader as the exact pass 1).
    const [l] = attentionDecodeLabels(a.variant, kv, 1) as [string];
    return [pass1(l, MODE.exact, 1)];
  }
  if (!isAsync) {
    const [l1, l2] = attentionDecodeLabels('two_pass', kv) as [string, string];
    return [pass1(l1, MODE.exact), merge(l2, MODE.exact, [a.heads, a.m, 1])];
  }
  const [l1, l2, l3] = attentionDecodeLabels('async_softmax', kv) as [string, string, string];
  return [
    pass1(l1, MODE.async),
    merge(l2, MODE.async, [a.heads, a.m, 1]),
    // One workgroup per row: it alone takes the row's flag in this dispatch, so it may clear it.
    pass1(l3, MODE.fallback, 0, [1, 1, a.m]),
  ];
}

/**
 * A pass's WGSL: pass 1 opens with the KV fragment (whose `enable f16` must precede every
 * declaration), then the mode, then its flags fragment; the merge reads no KV and has no fragment.
 */
function withMode(mode: number, shader: 'attention_split' | 'attention_merge', kv: KvDtype): string {
  const modeLine = `const MODE: u32 = ${mode}u;\n`;
  if (shader === 'attention_merge') return modeLine + shaderSource(shader);
  const flags = mode === MODE.exact ? 'common/attention_flags_read' : 'common/attention_flags_write';
  return `${kvPrefix(kv, 'vec4')}\n${modeLine}${shaderSource(shader, flags, 'common/attention_rows')}`;
}

/**
 * What `createEngine` takes, and the checks that refuse a bad option by name before anything is
 * read or allocated.
 */
import { InvalidRequestError } from '../errors.js';
import type { ModelDir } from '../io/byte-source.js';
import type { TuneStore } from '../tuner/cache.js';
import { ADAPTER_CLASSES, type AdapterClass } from '../tuner/defaults.js';
import type { LoadProgress } from '../weights/loader.js';
import type { LoadQuantOptions } from '../weights/select.js';
import type { XgrammarModule } from './sampling/grammar.js';
import { KV_DTYPES } from '../kernels/kv-dtype.js';
import { checkSpeculative, type SpeculativeOptions } from './speculative.js';

export interface EngineOptions {
  /**
   * Loads xgrammar for constrained decoding, on the first request with a grammar (default: a
   * dynamic import of @mlc-ai/web-xgrammar, as a browser bundle has it; the Node entry passes its
   * own loader).
   */
  loadXgrammar?: () => Promise<XgrammarModule>;
  /** The model folder (Hugging Face layout). The Node entry also takes paths and Hub ids. */
  model: ModelDir;
  /** An existing device to run on (not destroyed by `dispose()`). */
  device?: GPUDevice;
  /**
   * Gives a new device after `device` is lost, so the engine can recover (see `recovering`);
   * without it a lost injected device ends the engine. Its devices are the caller's too.
   */
  recoverDevice?: () => Promise<GPUDevice>;
  /**
   * When the engine acquired its own device (no `device`) and it is lost, get a new one from `gpu`
   * and rebuild on it, reading the weights again from `model`: only for a model that reads no
   * network (the Node entry turns it on; default false).
   */
  recoverOnLoss?: boolean;
  /** The WebGPU entry point (default `navigator.gpu`). */
  gpu?: GPU;
  /** Referenced for the engine's lifetime (Dawn's instance in Node). */
  keepAlive?: unknown;
  /** Tokens of context (prompt + generated); default min(max_position_embeddings, 4096). */
  contextLength?: number;
  /** Prompt tokens per prefill step (bounds activation memory and the length of one submit). */
  prefillChunkTokens?: number;
  /**
   * GPU memory budget in bytes for weights + KV cache + activations + scratch: the planner
   * (engine/memory.ts) shrinks the KV pool, then the context, to fit, and refuses a model whose
   * weights leave no room for one KV block. `Engine.memoryPlan` says what it chose.
   */
  memoryLimitBytes?: number;
  /**
   * Caps on the adapter's limits for planning, as a smaller adapter would report them (a phone's
   * 128 MiB bindings); a device cannot be requested below WebGPU's defaults, so this is how such
   * an adapter is planned for on a larger one.
   */
  limits?: { maxStorageBufferBindingSize?: number; maxBufferSize?: number };
  /**
   * Decode attention's softmax: 'async' (default) is FlashDecoding++'s unified max, with phi per
   * layer calibrated on the first decode steps (which run the exact kernel meanwhile) and an
   * exact recompute of any row that leaves the safe window; 'two_pass' keeps the exact split-K
   * softmax always.
   */
  attentionSoftmax?: 'async' | 'two_pass';
  /**
   * Where non-greedy tokens are drawn: 'gpu' (default; temperature, top-k, top-p and the
   * repetition penalty run after the LM head and one id is read back) or 'cpu' (the logits row is
   * read back and src/engine/sampling/cpu.ts draws). Both draw from the same distribution.
   */
  sampling?: 'gpu' | 'cpu';
  /**
   * Storage of the normed activations that the q/k/v, gate/up and LM-head matmuls read: 'f32'
   * (default) or 'f16' (halves them; needs an adapter with shader-f16, refused otherwise).
   * Computation stays f32 either way.
   */
  activations?: 'f32' | 'f16';
  /**
   * 'q4' quantizes a float checkpoint's projections to int4 while loading (round-to-nearest,
   * `quantOptions`); 'none' (default) keeps them as stored. Int4 folders (Kiln, GPTQ, AWQ) load
   * as int4 either way.
   */
  quant?: 'none' | 'q4';
  quantOptions?: LoadQuantOptions;
  /**
   * Tokens of KV cache shared by all sequences (16-token blocks). Default: what 256 MiB of f32 K/V
   * holds (128 MiB with an f16 cache) or one full context as allocated (a sliding model's windows
   * count, not the blocks it releases) where that is more, at most one storage binding per layer.
   */
  kvCacheTokens?: number;
  /**
   * Element type of the KV cache: 'auto' (default) is f16 where the adapter has shader-f16 and f32
   * otherwise; 'f16' (refused without shader-f16) halves the cache's memory and the bytes attention
   * reads, each K/V value rounded once to f16 (11 significant bits); 'f32' stores them exactly.
   * Attention computes in f32 either way. Compressed (src/kernels/kv-dtype.ts; head_dim a multiple
   * of 4): 'int8', 'int4', 'int2' quantize each token row of a KV head on its own (asymmetric,
   * one f16 scale and min per row); 'gear4', 'gear2' add GEAR's sparse outliers (the 2 largest
   * |x| of each row kept to f16 precision). Every attention kernel reads them directly.
   */
  kvCache?: KvCacheOption;
  onProgress?: (p: LoadProgress) => void;
  /**
   * Kernel tuning (src/tuner): `true` or options to tune the model's kernels to this adapter. Cached
   * choices (from `store`) apply before the first request; classes not yet tuned are tuned in the
   * background for `budgetMs` of tuning time (default 5000), in short slices run only while no
   * request runs, and the engine switches to the winners when done (`engine.tuning` resolves
   * then). Default:
   * off in the library (the CLI, server and browser app turn it on with a persistent store).
   */
  tune?: boolean | EngineTuneOptions;
  /**
   * Which row of the per-adapter-class kernel defaults (src/tuner/defaults.ts) the untuned engine
   * runs: 'auto' (default) picks by the adapter ('cpu' for lavapipe / SwiftShader, 'gpu-discrete',
   * 'gpu-integrated', else 'generic', the kernels' own shape rules); naming a class forces its row.
   */
  kernelDefaults?: AdapterClass | 'auto';
  /**
   * RMSNorm before the qkv, gate/up and LM-head matmuls in one-row (decode) steps: 'fold' (default)
   * normalizes X in the matmul's prologue where the chosen kernel has one (the one-row GEMM tile,
   * matmul_q4 at one row on subgroups; one dispatch fewer each), 'separate' always runs rmsnorm
   * first. Same output up to f32 rounding of the mean square (src/kernels/rms-fold.ts).
   */
  normFold?: 'fold' | 'separate';
  /**
   * Decode steps kept in flight (1-3, default 2): a batch of decoding sequences submits its next
   * step before the previous step's ids are read back, the ids feeding the next embedding on the
   * GPU, so the readback's latency and the CPU's work on a step overlap the GPU's. 1 runs one
   * step at a time. The output is the same either way.
   */
  pipelineDepth?: number;
  /**
   * KV of sliding-window layers (Gemma 2/3, Mistral-style windows) where the windows are shorter
   * than the context: 'release' (default) keeps those layers in a pool of their own whose blocks
   * go back as the windows move past them (src/engine/kv/sliding-pool.ts), so the same memory
   * holds longer contexts or more sequences; prefix caching is then off for the model (a cached
   * prefix would lack the sliding layers' KV). 'keep' keeps every block in every layer, with
   * prefix caching.
   */
  slidingKv?: 'release' | 'keep';
  /**
   * Speculative decoding without a draft model, for requests without a grammar (those decode
   * plainly): each step verifies up to `maxDraft` guessed tokens of a sequence
   * (src/engine/speculative.ts: prompt n-gram 'lookup', recycled successors 'recycling', or
   * 'both') in the same forward pass and keeps those equal to the model's own choices (argmax, or
   * each row's own draw: the speculative-sampling rule, src/engine/schedule/verify.ts), so greedy
   * output is unchanged and sampled output keeps its distribution; logprobs are allowed (each
   * verified row gets its own). It switches itself off for a sequence whose guesses are rarely
   * accepted. Off by default.
   */
  speculative?: SpeculativeOptions;
}

export interface EngineTuneOptions {
  /** Tuning time (not waiting time) of the background run. */
  budgetMs?: number;
  /**
   * false: apply the cached choices only and tune nothing (what `kiln run` does: a one-shot run
   * has no idle time to tune in). Default true: tune the rest while no request runs.
   */
  background?: boolean;
  store?: TuneStore;
  warn?: (message: string) => void;
}

/** What `kvCache` accepts: 'auto' or a KV format. */
export const KV_CACHE_OPTIONS = ['auto', ...KV_DTYPES] as const;
export type KvCacheOption = (typeof KV_CACHE_OPTIONS)[number];

/** The enumerated options with their defaults filled in, checked. */
export interface EngineChoices {
  attentionSoftmax: 'async' | 'two_pass';
  sampling: 'gpu' | 'cpu';
  activations: 'f32' | 'f16';
  kvCache: KvCacheOption;
  quant: 'none' | 'q4';
  kernelDefaults: AdapterClass | 'auto';
  normFold: 'fold' | 'separate';
  slidingKv: 'release' | 'keep';
  speculative: Required<SpeculativeOptions> | null;
}

/** Checks every option that can be checked without the model or the adapter. */
export function checkOptions(opts: EngineOptions): EngineChoices {
  positiveInteger('contextLength', opts.contextLength);
  positiveInteger('prefillChunkTokens', opts.prefillChunkTokens);
  positiveInteger('memoryLimitBytes', opts.memoryLimitBytes);
  positiveInteger('limits.maxStorageBufferBindingSize', opts.limits?.maxStorageBufferBindingSize);
  positiveInteger('limits.maxBufferSize', opts.limits?.maxBufferSize);
  positiveInteger('kvCacheTokens', opts.kvCacheTokens);
  const d = opts.pipelineDepth;
  if (d !== undefined && !(Number.isInteger(d) && d >= 1 && d <= 3)) {
    throw new InvalidRequestError(`pipelineDepth must be 1, 2 or 3, got ${d}`);
  }
  return {
    attentionSoftmax: oneOf('attentionSoftmax', opts.attentionSoftmax, ['async', 'two_pass'] as const),
    sampling: oneOf('sampling', opts.sampling, ['gpu', 'cpu'] as const),
    activations: oneOf('activations', opts.activations, ['f32', 'f16'] as const),
    kvCache: oneOf('kvCache', opts.kvCache, KV_CACHE_OPTIONS),
    quant: oneOf('quant', opts.quant, ['none', 'q4'] as const),
    kernelDefaults: oneOf('kernelDefaults', opts.kernelDefaults, ['auto', ...ADAPTER_CLASSES] as const),
    normFold: oneOf('normFold', opts.normFold, ['fold', 'separate'] as const),
    slidingKv: oneOf('slidingKv', opts.slidingKv, ['release', 'keep'] as const),
    speculative: checkSpeculative(opts.speculative),
  };
}

/** An enumerated option: its value, or the first (default) choice; anything else names the field. */
function oneOf<T extends string>(field: string, v: T | undefined, choices: readonly [T, ...T[]]): T {
  if (v === undefined) return choices[0];
  if (!choices.includes(v)) {
    throw new InvalidRequestError(
      `${field} must be ${choices.map((c) => `'${c}'`).join(' or ')}, got ${String(v)}`,
    );
  }
  return v;
}

function positiveInteger(field: string, v: number | undefined): void {
  if (v !== undefined && !(Number.isSafeInteger(v) && v > 0)) {
    throw new InvalidRequestError(`${field} must be a positive integer, got ${v}`);
  }
}

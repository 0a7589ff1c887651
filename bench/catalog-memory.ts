/**
 * GPU memory of every catalog model loaded as int4 (`--quant q4`, the load-time default format),
 * from its config alone through the engine's own estimate (src/engine/memory.ts) over a
 * header-only checkpoint of the tensors config.json implies:
 *   npm run bench:memory [-- --context 4096] [--json]
 * KV cache: f16 for one sequence of `--context` tokens (capped at max_position_embeddings), prefill
 * chunk 256, as the engine's memory planner (planMemory) sizes it with `slidingKv: 'keep'`; for a
 * model with sliding-window layers shorter than the context, also the planner's KV with the
 * engine's default `slidingKv: 'release'` (those layers in their own pool of one sequence's
 * window: src/engine/kv/sliding-pool.ts), the bytes the engine allocates.
 */
import type { Checkpoint } from '../src/io/safetensors-checkpoint.js';
import type { TensorInfo } from '../src/io/safetensors.js';
import { CATALOG, type CatalogEntry } from '../src/model/catalog.js';
import { parseModelConfig } from '../src/model/config.js';
import { expectedTensors } from '../src/model/tensors.js';
import type { ModelSpec } from '../src/model/spec.js';
import { estimateMemory, planMemory } from '../src/engine/memory.js';
import { weightSourceFor } from '../src/weights/select.js';
import type { WeightSource } from '../src/weights/source.js';

/**
 * The config.json fields of each catalog model beyond the catalog's own (sizes the catalog does
 * not carry, and what each architecture's rules read), as its published config.json has them.
 * Values that change no size are not reproduced: longrope factors are 1, rms_norm_eps is 1e-5.
 */
const CONFIGS: Record<string, Record<string, unknown>> = {
  'HuggingFaceTB/SmolLM2-135M-Instruct': { vocab_size: 49152, intermediate_size: 1536, rope_theta: 100000 },
  'HuggingFaceTB/SmolLM2-360M-Instruct': { vocab_size: 49152, intermediate_size: 2560, rope_theta: 100000 },
  'HuggingFaceTB/SmolLM2-1.7B-Instruct': { vocab_size: 49152, intermediate_size: 8192, rope_theta: 130000 },
  'Qwen/Qwen2.5-0.5B-Instruct': { vocab_size: 151936, intermediate_size: 4864, rope_theta: 1e6 },
  'Qwen/Qwen2.5-1.5B-Instruct': { vocab_size: 151936, intermediate_size: 8960, rope_theta: 1e6 },
  'TinyLlama/TinyLlama-1.1B-Chat-v1.0': { vocab_size: 32000, intermediate_size: 5632 },
  'meta-llama/Llama-3.2-1B-Instruct': { vocab_size: 128256, intermediate_size: 8192, head_dim: 64 },
  'meta-llama/Llama-3.2-3B-Instruct': { vocab_size: 128256, intermediate_size: 8192, head_dim: 128 },
  'Qwen/Qwen3-0.6B': { vocab_size: 151936, intermediate_size: 3072, head_dim: 128, rope_theta: 1e6 },
  'Qwen/Qwen3-1.7B': { vocab_size: 151936, intermediate_size: 6144, head_dim: 128, rope_theta: 1e6 },
  'google/gemma-3-270m-it': {
    vocab_size: 262144,
    intermediate_size: 2048,
    head_dim: 256,
    hidden_activation: 'gelu_pytorch_tanh',
    query_pre_attn_scalar: 256,
    sliding_window: 512,
    rope_local_base_freq: 10000,
    rope_theta: 1e6,
  },
  'google/gemma-3-1b-it': {
    vocab_size: 262144,
    intermediate_size: 6912,
    head_dim: 256,
    hidden_activation: 'gelu_pytorch_tanh',
    query_pre_attn_scalar: 256,
    sliding_window: 512,
    rope_local_base_freq: 10000,
    rope_theta: 1e6,
  },
  'google/gemma-2-2b-it': {
    vocab_size: 256000,
    intermediate_size: 9216,
    head_dim: 256,
    hidden_activation: 'gelu_pytorch_tanh',
    query_pre_attn_scalar: 256,
    sliding_window: 4096,
    attn_logit_softcapping: 50,
    final_logit_softcapping: 30,
  },
  'microsoft/Phi-3.5-mini-instruct': {
    vocab_size: 32064,
    intermediate_size: 8192,
    original_max_position_embeddings: 4096,
    sliding_window: 262144,
    rope_scaling: { type: 'longrope', long_factor: ones(48), short_factor: ones(48) },
  },
  'microsoft/Phi-4-mini-instruct': {
    vocab_size: 200064,
    intermediate_size: 8192,
    partial_rotary_factor: 0.75,
    original_max_position_embeddings: 4096,
    sliding_window: 262144,
    rope_scaling: { type: 'longrope', long_factor: ones(48), short_factor: ones(48) },
  },
  'HuggingFaceTB/SmolLM3-3B': {
    vocab_size: 128256,
    intermediate_size: 11008,
    rope_theta: 5e6,
    no_rope_layers: Array.from({ length: 36 }, (_, i) => ((i + 1) % 4 === 0 ? 0 : 1)),
  },
};

function ones(n: number): number[] {
  return new Array<number>(n).fill(1);
}

const CLASSES: Record<string, string> = {
  llama: 'LlamaForCausalLM',
  mistral: 'MistralForCausalLM',
  qwen2: 'Qwen2ForCausalLM',
  qwen3: 'Qwen3ForCausalLM',
  gemma2: 'Gemma2ForCausalLM',
  gemma3_text: 'Gemma3ForCausalLM',
  phi3: 'Phi3ForCausalLM',
  smollm3: 'SmolLM3ForCausalLM',
};

/** The catalog entry's config.json: its own fields plus CONFIGS. */
export function catalogConfig(e: CatalogEntry): Record<string, unknown> {
  const extra = CONFIGS[e.id];
  if (!extra) throw new Error(`no config fields for ${e.id} in bench/catalog-memory.ts`);
  return {
    architectures: [CLASSES[e.architecture]],
    model_type: e.architecture,
    hidden_size: e.hiddenSize,
    num_hidden_layers: e.numLayers,
    num_attention_heads: e.numHeads,
    num_key_value_heads: e.numKvHeads,
    max_position_embeddings: e.contextLength,
    tie_word_embeddings: e.tieWordEmbeddings,
    rms_norm_eps: 1e-5,
    ...extra,
  };
}

/** A checkpoint of headers only: every tensor config.json implies, in `dtype`, no bytes. */
export function shapesOnly(spec: ModelSpec): Checkpoint {
  const tensors = new Map<string, TensorInfo>();
  for (const [name, shape] of expectedTensors(spec)) {
    const n = shape.reduce((a, b) => a * b, 1);
    tensors.set(name, { name, dtype: 'BF16', shape, byteLength: 2 * n, fileOffset: 0, file: 'shapes' });
  }
  const get = (name: string): TensorInfo => {
    const t = tensors.get(name);
    if (!t) throw new Error(`no tensor ${name}`);
    return t;
  };
  const none = (): never => {
    throw new Error('a shapes-only checkpoint has no data');
  };
  return {
    location: 'shapes',
    tensors,
    metadata: {},
    get,
    has: (n) => tensors.has(n),
    readTensor: none,
    readTensorChunks: none,
    close: async () => {},
  };
}

export interface MemoryRow {
  id: string;
  architecture: string;
  context: number;
  weightsBytes: number;
  kvBytes: number;
  activationBytes: number;
  totalBytes: number;
  /**
   * KV with the sliding layers' blocks released (the engine's default), where some window is
   * shorter than the context: the planner's bytes for both pools.
   */
  kvReleasedBytes?: number;
}

/** The engine's KV plan for one sequence of `tokens` f16 tokens, sliding pool or not. */
function plannedKv(
  spec: ModelSpec,
  ckpt: Checkpoint,
  source: WeightSource,
  tokens: number,
  slidingKv: 'release' | 'keep',
) {
  return planMemory({
    spec,
    ckpt,
    source,
    kvDtype: 'f16',
    requestedContext: tokens,
    prefillChunkTokens: 256,
    kvTokens: tokens,
    // Bindings large enough that nothing is cut: the plan for the model, not for an adapter.
    limits: { maxBufferSize: 2 ** 40, maxStorageBufferBindingSize: 2 ** 40 },
    slidingKv,
  });
}

export function catalogMemory(context: number): (MemoryRow | { id: string; error: string })[] {
  return CATALOG.map((e) => {
    try {
      const spec = parseModelConfig(catalogConfig(e));
      const tokens = Math.min(context, spec.maxPositionEmbeddings);
      const source = weightSourceFor(spec, e.id, 'q4');
      const ckpt = shapesOnly(spec);
      const m = estimateMemory(spec, ckpt, source, tokens, 'f16', 256);
      const kept = plannedKv(spec, ckpt, source, tokens, 'keep');
      const released = plannedKv(spec, ckpt, source, tokens, 'release');
      const row: MemoryRow = {
        id: e.id,
        architecture: e.architecture,
        context: tokens,
        weightsBytes: m.weights,
        kvBytes: kept.kvCache,
        activationBytes: m.activations,
        totalBytes: m.total - m.kvCache + kept.kvCache,
      };
      if (released.slidingKvBlocks > 0) row.kvReleasedBytes = released.kvCache;
      return row;
    } catch (err) {
      return { id: e.id, error: err instanceof Error ? err.message : String(err) };
    }
  });
}

const argv = process.argv;
if (argv[1]?.endsWith('catalog-memory.js')) {
  const i = argv.indexOf('--context');
  const context = i >= 0 ? Number(argv[i + 1]) : 4096;
  const rows = catalogMemory(context);
  if (argv.includes('--json')) process.stdout.write(JSON.stringify(rows, null, 2) + '\n');
  else {
    const gib = (b: number) => (b / 2 ** 30).toFixed(2);
    const mib = (b: number) => (b / 2 ** 20).toFixed(0);
    for (const r of rows) {
      if ('error' in r) process.stdout.write(`${r.id.padEnd(38)} ${r.error}\n`);
      else {
        const released =
          r.kvReleasedBytes === undefined ? '' : ` (sliding blocks released: ${mib(r.kvReleasedBytes)} MiB)`;
        process.stdout.write(
          `${r.id.padEnd(38)} ${r.architecture.padEnd(11)} int4 ${gib(r.totalBytes)} GiB = weights ${gib(r.weightsBytes)} + KV(${r.context}) ${mib(r.kvBytes)} MiB${released} + activations ${mib(r.activationBytes)} MiB\n`,
        );
      }
    }
  }
}

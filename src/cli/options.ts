/**
 * The options that several `kiln` commands share: integer and number parsers with the flag's name
 * in their errors, the model options (what to load and how) and the sampling options, as commander
 * definitions and as the typed values they parse to.
 */
import { InvalidArgumentError, Option, type Command } from 'commander';
import { ADAPTER_CLASSES, type AdapterClass } from '../tuner/defaults.js';
import { KV_CACHE_OPTIONS, type KvCacheOption } from '../engine/options.js';

export function intArg(name: string, min: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min)
      throw new InvalidArgumentError(`${name} must be an integer >= ${min}`);
    return n;
  };
}

export function numArg(name: string, ok: (n: number) => boolean, want: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || !ok(n)) throw new InvalidArgumentError(`${name} must be ${want}`);
    return n;
  };
}

export interface ModelFlags {
  model: string;
  context?: number;
  memoryLimit?: number;
  attention?: 'async' | 'two_pass';
  sampler?: 'gpu' | 'cpu';
  activations?: 'f32' | 'f16';
  kvCache?: KvCacheOption;
  quant?: 'none' | 'q4';
  groupSize?: number;
  quantSym?: boolean;
  quantLmHead?: boolean;
  quiet?: boolean;
  /** Decode steps in flight (1-3). */
  pipelineDepth?: number;
  /** Sliding-window layers' KV: released as the windows move on (default), or kept. */
  slidingKv?: 'release' | 'keep';
  /** Speculative decoding of greedy requests: where guesses come from, and how many per step. */
  speculative?: 'recycling' | 'lookup' | 'both';
  maxDraft?: number;
  chainDrafts?: boolean;
  /** Row of the per-adapter-class kernel defaults (default auto). */
  kernelDefaults?: AdapterClass | 'auto';
  /** false with --no-tune */
  tune: boolean;
  tuneBudget: number;
}

export interface SamplingFlags {
  maxTokens?: number;
  temperature: number;
  topK: number;
  topP: number;
  repetitionPenalty: number;
  seed?: number;
}

export function addModelOptions(cmd: Command): Command {
  return cmd
    .requiredOption(
      '-m, --model <model>',
      'model folder (Hugging Face layout), Hub id org/name[@rev], or catalog alias',
    )
    .option(
      '--context <tokens>',
      'context length (default: min(max_position_embeddings, 4096))',
      intArg('--context', 1),
    )
    .option(
      '--memory-limit <MiB>',
      'refuse models whose weights + KV cache + activations exceed this',
      intArg('--memory-limit', 1),
    )
    .addOption(
      new Option(
        '--attention <softmax>',
        'decode attention softmax: async (unified max, calibrated, exact fallback) or two_pass (always exact)',
      ).choices(['async', 'two_pass']),
    )
    .addOption(
      new Option(
        '--sampler <where>',
        'where non-greedy tokens are drawn: gpu (one id read back per token) or cpu (from the logits)',
      ).choices(['gpu', 'cpu']),
    )
    .addOption(
      new Option(
        '--activations <type>',
        'storage of the normed activations the matmuls read: f32, or f16 (needs shader-f16)',
      ).choices(['f32', 'f16']),
    )
    .addOption(
      new Option(
        '--kv-cache <type>',
        'KV cache format: auto (f16 where the adapter has shader-f16, else f32), f16, f32, or compressed: int8, int4, int2 (per-token groups), gear4, gear2 (plus GEAR outliers), int4lr, int2lr, gear4lr, gear2lr (plus GEAR low-rank error factors)',
      ).choices([...KV_CACHE_OPTIONS]),
    )
    .addOption(
      new Option(
        '--quant <type>',
        'quantize a float model while loading: q4 (int4 round-to-nearest; int4 folders load as int4 anyway)',
      ).choices(['none', 'q4']),
    )
    .addOption(
      new Option('--group-size <n>', 'int4 group size for --quant q4 (default 32)')
        .choices(['32', '64', '128'])
        .argParser(Number),
    )
    .option('--quant-sym', 'symmetric int4 for --quant q4 (default: asymmetric zero points)')
    .option('--quant-lm-head', 'quantize the LM head too with --quant q4')
    .addOption(
      new Option('--pipeline-depth <n>', 'decode steps kept in flight (1 = one at a time; default 2)')
        .choices(['1', '2', '3'])
        .argParser(Number),
    )
    .addOption(
      new Option(
        '--sliding-kv <mode>',
        "sliding-window layers' KV: release (default; their own pool, blocks freed as the windows move on, no prefix caching) or keep (every block, with prefix caching)",
      ).choices(['release', 'keep']),
    )
    .addOption(
      new Option(
        '--speculative <method>',
        'speculative decoding (greedy output unchanged, sampled output distributed the same): guesses from prompt n-gram lookup, recycled successors, or both',
      ).choices(['recycling', 'lookup', 'both']),
    )
    .option(
      '--max-draft <n>',
      'deepest guess verified per step with --speculative (1-16; default 12 with lookup, else 4)',
      intArg('--max-draft', 1),
    )
    .option('--chain-drafts', 'with --speculative: verify a chain of guesses per step, not a token tree')
    .addOption(
      new Option(
        '--kernel-defaults <class>',
        'row of the per-adapter-class kernel defaults the untuned kernels use (auto: by adapter)',
      ).choices(['auto', ...ADAPTER_CLASSES]),
    )
    .option('--no-tune', 'do not tune kernels to this adapter (cached choices are not used either)')
    .option(
      '--tune-budget <s>',
      'seconds of kernel tuning while idle (serve, chat; run, eval and bench use cached choices only and `kiln tune` tunes), cached per adapter',
      numArg('--tune-budget', (n) => n >= 0, 'a number of seconds >= 0'),
      5,
    )
    .option('-q, --quiet', 'no progress bar');
}

export function addSamplingOptions(cmd: Command, defaultMax?: number): Command {
  return cmd
    .option('-n, --max-tokens <n>', 'most tokens to generate', intArg('--max-tokens', 0), defaultMax)
    .option(
      '-t, --temperature <t>',
      'sampling temperature, 0 = greedy',
      numArg('--temperature', (n) => n >= 0, '>= 0'),
      0,
    )
    .option('--top-k <k>', 'keep the k most likely tokens (0 = off)', intArg('--top-k', 0), 0)
    .option(
      '--top-p <p>',
      'nucleus sampling mass (1 = off)',
      numArg('--top-p', (n) => n > 0 && n <= 1, 'in (0, 1]'),
      1,
    )
    .option(
      '--repetition-penalty <r>',
      'penalize tokens already in the context (1 = off)',
      numArg('--repetition-penalty', (n) => n > 0, '> 0'),
      1,
    )
    .option('--seed <s>', 'sampler seed', intArg('--seed', 0));
}

export function samplingOf(o: SamplingFlags) {
  return {
    ...(o.maxTokens !== undefined ? { maxTokens: o.maxTokens } : {}),
    temperature: o.temperature,
    topK: o.topK,
    topP: o.topP,
    repetitionPenalty: o.repetitionPenalty,
    ...(o.seed !== undefined ? { seed: o.seed } : {}),
  };
}

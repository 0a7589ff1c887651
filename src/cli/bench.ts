/**
 * `kiln bench`: `kernels` (bench/commands.ts) and `decode`, the aggregate decode rate at several
 * batch sizes (bench/decode-batches.ts), printed as a table or one JSON object.
 */
import { InvalidArgumentError, type Command } from 'commander';
import { cmdBenchKernels } from '../../bench/commands.js';
import { benchDecode } from '../../bench/decode-batches.js';
import { benchSpeculative, copyPrompt } from '../../bench/decode-speculative.js';
import { loadEngine } from './load.js';
import { addModelOptions, intArg, type ModelFlags } from './options.js';

type DecodeFlags = ModelFlags & {
  batch: string;
  promptTokens: number;
  tokens: number;
  rounds: number;
  copy?: boolean;
  json?: boolean;
};

async function cmdBenchDecode(o: DecodeFlags): Promise<void> {
  const batches = o.batch.split(',').map((b) => Number(b.trim()));
  if (batches.some((b) => !Number.isInteger(b) || b < 1)) {
    throw new InvalidArgumentError(`--batch ${o.batch}: expected positive integers separated by commas`);
  }
  if (o.copy && !o.speculative) throw new InvalidArgumentError('--copy is a --speculative task');
  if (o.speculative) return cmdBenchSpeculative(o, batches);
  const engine = await loadEngine(o, false);
  try {
    const rows = await benchDecode(engine, batches, o.promptTokens, o.tokens);
    const base = rows[0]?.decode_tokens_per_s_aggregate ?? 0;
    if (o.json) {
      process.stdout.write(
        JSON.stringify({
          model: engine.modelName,
          adapter: engine.adapter,
          weights: engine.weightFormat,
          rows,
        }) + '\n',
      );
      return;
    }
    process.stdout.write(
      'batch  aggregate tok/s  per request  vs first  wall ms/step  GPU ms/step  GPU busy\n',
    );
    for (const r of rows) {
      const ratio = base > 0 ? (r.decode_tokens_per_s_aggregate / base).toFixed(2) + 'x' : '-';
      const gpu = r.gpu_ms_per_step === null ? '-' : r.gpu_ms_per_step.toFixed(2);
      const busy = r.gpu_busy_ratio === null ? '-' : r.gpu_busy_ratio.toFixed(2);
      process.stdout.write(
        `${String(r.batch).padStart(5)}  ${r.decode_tokens_per_s_aggregate.toFixed(2).padStart(15)}  ${r.decode_tokens_per_s_per_request.toFixed(2).padStart(11)}  ${ratio.padStart(9)}  ${r.wall_ms_per_step.toFixed(2).padStart(12)}  ${gpu.padStart(11)}  ${busy.padStart(8)}\n`,
      );
    }
  } finally {
    engine.dispose();
  }
}

/**
 * `kiln bench decode --speculative`: a plain engine and a speculative one, loaded side by side
 * (twice the model's memory), their rounds alternated per batch size.
 */
async function cmdBenchSpeculative(o: DecodeFlags, batches: readonly number[]): Promise<void> {
  const { speculative: _s, maxDraft: _d, chainDrafts: _c, ...plainFlags } = o;
  const plain = await loadEngine(plainFlags, false);
  try {
    const spec = await loadEngine(o, false);
    try {
      const rows = [];
      for (const batch of batches) {
        // The copy task's text outlasts the tokens generated, so the continuation copies to the
        // end. One prompt for every request and round: both engines meet it in the prefix cache.
        const copy = o.copy ? await copyPrompt(plain, o.tokens + 16) : undefined;
        rows.push(
          await benchSpeculative(plain, spec, {
            batch,
            promptTokens: o.promptTokens,
            tokens: o.tokens,
            rounds: o.rounds,
            ...(copy ? { prompt: () => copy } : {}),
          }),
        );
      }
      if (o.json) {
        const head = { model: spec.modelName, adapter: spec.adapter, weights: spec.weightFormat };
        process.stdout.write(
          JSON.stringify({ ...head, speculative: o.speculative, task: o.copy ? 'copy' : 'ids', rows }) + '\n',
        );
        return;
      }
      process.stdout.write('batch  plain tok/s  speculative tok/s  speedup  accepted/step  drafted/step\n');
      for (const r of rows) {
        process.stdout.write(
          `${String(r.batch).padStart(5)}  ${r.plain_tokens_per_s.toFixed(2).padStart(11)}  ${r.speculative_tokens_per_s.toFixed(2).padStart(17)}  ${(r.speedup.toFixed(2) + 'x').padStart(7)}  ${r.accepted_per_verifying_step.toFixed(2).padStart(13)}  ${r.drafted_per_verifying_step.toFixed(2).padStart(12)}\n`,
        );
      }
    } finally {
      spec.dispose();
    }
  } finally {
    plain.dispose();
  }
}

/** `kiln bench` and its subcommands. */
export function addBenchCommand(program: Command): void {
  const bench = program.command('bench').description('benchmarks');
  bench
    .command('kernels')
    .description(
      'time every kernel at Llama-3.2-1B / Qwen2.5-0.5B layer shapes against the measured bandwidth, each checked against its CPU reference',
    )
    .option('--json <file>', 'write the JSON report to FILE (default: stdout)')
    .option('--quick', 'fewer shapes and repetitions')
    .option(
      '--only <suites>',
      'comma-separated suites to run: matmul, rmsnorm, argmax, matmul_q4, matmul_gguf, attention (stream_read always runs)',
    )
    .action((o: { json?: string; quick?: boolean; only?: string }) => cmdBenchKernels(o));

  addModelOptions(
    bench
      .command('decode')
      .description('aggregate decode tokens/s of a model at several batch sizes (continuous batching)'),
  )
    .option('--batch <sizes>', 'comma-separated batch sizes', '1,4,16')
    .option('--prompt-tokens <n>', 'prompt tokens per request', intArg('--prompt-tokens', 1), 16)
    .option('--tokens <n>', 'tokens generated per request', intArg('--tokens', 2), 32)
    .option(
      '--rounds <n>',
      'with --speculative: plain and speculative rounds alternated per batch size (medians reported)',
      intArg('--rounds', 1),
      3,
    )
    .option(
      '--copy',
      "with --speculative: a copy task, the prompt the model's greedy text from BOS (--tokens + 16 tokens), then BOS and its first 10 tokens again, so the greedy continuation is the text once more (--prompt-tokens unused)",
    )
    .option('--json', 'print one JSON object')
    .action((o: DecodeFlags) => cmdBenchDecode(o));
}

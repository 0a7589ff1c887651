/**
 * `kiln run`: one prompt streamed to stdout (or one JSON object with --json), or a JSONL file of
 * prompts run as one batch with --prompts-file.
 */
import { InvalidArgumentError, type Command } from 'commander';
import type { GenerateResult } from '../api/types.js';
import type { TuningStatus } from '../api/types.js';
import type { Engine } from '../engine/engine.js';
import { readPromptsFile, runBatch } from '../node/batch.js';
import { loadEngine } from './load.js';
import {
  addModelOptions,
  addSamplingOptions,
  samplingOf,
  type ModelFlags,
  type SamplingFlags,
} from './options.js';

/**
 * A line for a run whose kernels are not all tuned (a run uses cached choices and tunes nothing
 * itself, so it never slows its own steps): how many are, and the command that tunes the rest.
 * Null when everything is tuned or tuning is off.
 */
function tuningHint(t: TuningStatus, model: string): string | null {
  if (t.state === 'off' || t.leftClasses === 0) return null;
  const total = t.cachedClasses + t.tunedClasses + t.leftClasses;
  return `kernel tuning: ${t.cachedClasses + t.tunedClasses} of ${total} shape classes tuned for this adapter; \`kiln tune --model ${model}\` tunes the rest`;
}

async function cmdRun(o: ModelFlags & SamplingFlags & { prompt: string; json?: boolean }): Promise<void> {
  const engine = await loadEngine(o, false);
  try {
    const gen = engine.generate(o.prompt, samplingOf(o));
    if (!o.json) {
      for await (const t of gen) process.stdout.write(t.text);
      process.stdout.write('\n');
      const r = await gen.result();
      if (!o.quiet) {
        process.stderr.write(
          `[${r.promptTokenIds.length} prompt tokens, ${r.tokenIds.length} generated, finish ${r.finishReason}; ` +
            `prefill ${r.timings.prefillTokensPerS.toFixed(1)} tok/s, decode ${r.timings.decodeTokensPerS.toFixed(1)} tok/s]\n`,
        );
        const hint = tuningHint(engine.tuningStatus, o.model);
        if (hint) process.stderr.write(`[${hint}]\n`);
      }
      return;
    }
    const r = await gen.result();
    process.stdout.write(JSON.stringify(runJson(engine, r)) + '\n');
  } finally {
    engine.dispose();
  }
}

async function cmdRunBatch(
  o: ModelFlags & SamplingFlags & { promptsFile: string; json?: boolean },
): Promise<void> {
  const prompts = await readPromptsFile(o.promptsFile);
  const engine = await loadEngine(o, false);
  try {
    const { results, summary } = await runBatch(engine, prompts, samplingOf(o));
    results.forEach((r, i) => {
      if (o.json) process.stdout.write(JSON.stringify(runJson(engine, r)) + '\n');
      else process.stdout.write(`--- ${i + 1}/${results.length} (${r.finishReason})\n${r.text}\n`);
    });
    process.stdout.write(
      (o.json ? JSON.stringify({ summary }) : `summary ${JSON.stringify(summary)}`) + '\n',
    );
  } finally {
    engine.dispose();
  }
}

function runJson(engine: Engine, r: GenerateResult) {
  return {
    text: r.text,
    token_ids: r.tokenIds,
    prompt_token_ids: r.promptTokenIds,
    finish_reason: r.finishReason,
    timings: {
      load_ms: round(engine.loadMs),
      prefill_tokens_per_s: round(r.timings.prefillTokensPerS),
      decode_tokens_per_s: round(r.timings.decodeTokensPerS),
    },
    adapter: engine.adapter,
    kernel_defaults: engine.kernelDefaults.adapterClass,
    weights: engine.weightFormat,
    memory_plan: engine.memoryPlan,
    kv_cache_bytes: engine.kvCacheBytes,
    peak_sliding_blocks_per_sequence: engine.stats().peakSlidingBlocksPerSequence,
  };
}

function round(n: number): number {
  return Math.round(n * 100) / 100;
}

/** `kiln run`. */
export function addRunCommand(program: Command): void {
  addSamplingOptions(
    addModelOptions(program.command('run').description('generate text from a prompt, streamed to stdout')),
    256,
  )
    .option('-p, --prompt <text>', 'the prompt ("" = start from BOS)')
    .option(
      '--prompts-file <file>',
      'JSONL of {"prompt", "max_tokens"?, "temperature"?, "seed"?}: all run as one batch, results in input order',
    )
    .option('--json', 'print one JSON object with text, ids, finish reason, timings and adapter')
    .action((o: ModelFlags & SamplingFlags & { prompt?: string; promptsFile?: string; json?: boolean }) => {
      if ((o.prompt === undefined) === (o.promptsFile === undefined)) {
        throw new InvalidArgumentError('give exactly one of --prompt and --prompts-file');
      }
      return o.promptsFile !== undefined
        ? cmdRunBatch({ ...o, promptsFile: o.promptsFile })
        : cmdRun({ ...o, prompt: o.prompt as string });
    });
}

/**
 * `kiln bench decode`: aggregate decode throughput of a model at several batch sizes (continuous
 * batching): each size's requests submitted together, after a warm-up round of the same shapes.
 */
import type { GenerateOptions } from '../src/api/types.js';
import type { Engine } from '../src/engine/engine.js';
import { summarize } from '../src/node/batch.js';

const round = (x: number) => Math.round(x * 100) / 100;

export interface DecodeBenchRow {
  batch: number;
  prompt_tokens: number;
  tokens_per_request: number;
  decode_tokens_per_s_aggregate: number;
  decode_tokens_per_s_per_request: number;
  wall_s: number;
  /** Steps of the timed run (prefill chunks included), wall ms per step. */
  steps: number;
  wall_ms_per_step: number;
  /** GPU ms per step (timestamps around each step's forward pass); null without timestamp-query. */
  gpu_ms_per_step: number | null;
  /** gpu_ms_per_step / wall_ms_per_step: the share of a step the GPU is busy. */
  gpu_busy_ratio: number | null;
}

/**
 * Aggregate decode throughput at each batch size: `batch` requests with distinct prompts of
 * `promptTokens` ids, `tokens` greedy tokens each (EOS ignored), submitted together. A warm-up
 * round at each size compiles its step plans first.
 */
export async function benchDecode(
  engine: Engine,
  batches: readonly number[],
  promptTokens: number,
  tokens: number,
): Promise<DecodeBenchRow[]> {
  const rows: DecodeBenchRow[] = [];
  const prompt = (i: number) => [
    1,
    ...Array.from(
      { length: promptTokens - 1 },
      (_, j) => 3 + ((j * 37 + i * 101) % Math.max(1, engine.tokenizer.vocabSize - 3)),
    ),
  ];
  for (const b of batches) {
    const opts: GenerateOptions = { maxTokens: tokens, temperature: 0, ignoreEos: true };
    const ids = (k: number) => Array.from({ length: b }, (_, i) => prompt(k * 1000 + i));
    // Warm-up: the same shapes once (pipelines and plans), different prompts (no prefix hits).
    await Promise.all(ids(1).map((p) => engine.generate(p, { ...opts, maxTokens: 2 }).result()));
    const t0 = performance.now();
    const m = await engine.measureSteps(() =>
      Promise.all(ids(2).map((p) => engine.generate(p, opts).result())),
    );
    const results = m.result;
    const wall = (performance.now() - t0) / 1000;
    const wallPerStep = m.wallMs / Math.max(1, m.steps);
    const gpuPerStep = m.gpuMs !== null && m.stampedSteps > 0 ? m.gpuMs / m.stampedSteps : null;
    const s = summarize(engine, results, t0, wall);
    rows.push({
      batch: b,
      prompt_tokens: promptTokens,
      tokens_per_request: tokens,
      decode_tokens_per_s_aggregate: s.decode_tokens_per_s_aggregate,
      decode_tokens_per_s_per_request: round(s.decode_tokens_per_s_aggregate / b),
      wall_s: round(wall),
      steps: m.steps,
      wall_ms_per_step: round(wallPerStep),
      gpu_ms_per_step: gpuPerStep === null ? null : round(gpuPerStep),
      gpu_busy_ratio: gpuPerStep === null ? null : round(gpuPerStep / wallPerStep),
    });
  }
  return rows;
}

/**
 * Many prompts at once through the engine's continuous batching: `kiln run --prompts-file` (one
 * JSON line per prompt, in input order, then a summary). `kiln bench decode` (bench/) reuses the
 * summary.
 */
import { readFile } from 'node:fs/promises';
import { InvalidRequestError, KilnError } from '../errors.js';
import { describeValue, isJsonObject } from '../io/json.js';
import type { Engine } from '../engine/engine.js';
import type { GenerateOptions, GenerateResult } from '../api/types.js';

export interface BatchPrompt {
  prompt: string;
  max_tokens?: number;
  temperature?: number;
  seed?: number;
}

/** Parses a JSONL prompts file; every refusal names the line and the field. */
export function parsePromptsFile(text: string, file: string): BatchPrompt[] {
  const out: BatchPrompt[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '') return;
    const where = `${file} line ${i + 1}`;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch (e) {
      throw new InvalidRequestError(`${where} is not JSON: ${(e as Error).message}`);
    }
    if (!isJsonObject(v))
      throw new InvalidRequestError(`${where} is ${describeValue(v)}, expected an object`);
    if (typeof v.prompt !== 'string') {
      throw new InvalidRequestError(`${where}: "prompt" is ${describeValue(v.prompt)}, expected a string`);
    }
    const p: BatchPrompt = { prompt: v.prompt };
    const num = (field: 'max_tokens' | 'temperature' | 'seed', ok: (n: number) => boolean, want: string) => {
      const x = v[field];
      if (x === undefined) return;
      if (typeof x !== 'number' || !ok(x)) {
        throw new InvalidRequestError(`${where}: "${field}" is ${describeValue(x)}, expected ${want}`);
      }
      p[field] = x;
    };
    num('max_tokens', (n) => Number.isInteger(n) && n >= 0, 'an integer >= 0');
    num('temperature', (n) => n >= 0, 'a number >= 0');
    num('seed', (n) => Number.isInteger(n) && n >= 0, 'an integer >= 0');
    for (const k of Object.keys(v)) {
      if (!['prompt', 'max_tokens', 'temperature', 'seed'].includes(k)) {
        throw new InvalidRequestError(
          `${where}: unknown field "${k}" (prompt, max_tokens, temperature, seed)`,
        );
      }
    }
    out.push(p);
  });
  if (out.length === 0) throw new InvalidRequestError(`${file} holds no prompts`);
  return out;
}

export async function readPromptsFile(file: string): Promise<BatchPrompt[]> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    throw new KilnError(`cannot read the prompts file ${file}: ${(e as Error).message}`, { cause: e });
  }
  return parsePromptsFile(text, file);
}

const round = (n: number) => Math.round(n * 100) / 100;

export interface BatchSummary {
  requests: number;
  generated_tokens: number;
  wall_s: number;
  /** Generated tokens after each request's first, over the span from the first first-token to the last finish. */
  decode_tokens_per_s_aggregate: number;
  peak_kv_blocks: number;
  prefix_cache_hit_rate: number;
}

/**
 * Runs every prompt at once (the engine batches them) and returns the results in input order.
 * `defaults` fills what a line leaves out.
 */
export async function runBatch(
  engine: Engine,
  prompts: readonly BatchPrompt[],
  defaults: GenerateOptions,
): Promise<{ results: GenerateResult[]; summary: BatchSummary }> {
  const t0 = performance.now();
  const gens = prompts.map((p) =>
    engine.generate(p.prompt, {
      ...defaults,
      ...(p.max_tokens !== undefined ? { maxTokens: p.max_tokens } : {}),
      ...(p.temperature !== undefined ? { temperature: p.temperature } : {}),
      ...(p.seed !== undefined ? { seed: p.seed } : {}),
    }),
  );
  const results = await Promise.all(gens.map((g) => g.result()));
  const wall = (performance.now() - t0) / 1000;
  return { results, summary: summarize(engine, results, t0, wall) };
}

export function summarize(
  engine: Engine,
  results: readonly GenerateResult[],
  t0: number,
  wall: number,
): BatchSummary {
  const generated = results.reduce((a, r) => a + r.tokenIds.length, 0);
  // Every request was submitted at t0: its first token came prefillMs later, its end decodeMs after.
  const firsts = results.filter((r) => r.tokenIds.length > 0).map((r) => t0 + r.timings.prefillMs);
  const ends = results.map((r) => t0 + r.timings.prefillMs + r.timings.decodeMs);
  const decoded = results.reduce((a, r) => a + Math.max(0, r.tokenIds.length - 1), 0);
  const span = firsts.length > 0 ? (Math.max(...ends) - Math.min(...firsts)) / 1000 : 0;
  const s = engine.stats();
  return {
    requests: results.length,
    generated_tokens: generated,
    wall_s: round(wall),
    decode_tokens_per_s_aggregate: span > 0 ? round(decoded / span) : 0,
    peak_kv_blocks: s.peakBlocksUsed,
    prefix_cache_hit_rate: round(s.prefixCacheHitRate * 1e4) / 1e4,
  };
}

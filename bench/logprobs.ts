/**
 * What logprobs cost at decode: tokens/s of the same generation with logprobs off, with 5 and with
 * 20 alternatives, greedy and seeded sampling, in alternating runs on one warm engine (medians):
 *   npm run bench:logprobs -- [--model DIR | shape [--layers N]] [--tokens N] [--runs N]
 * --model runs a folder (BabyLlama converted by `kiln convert llama2c`); otherwise a synthetic
 * model at a real shape (bench/synthetic.ts; qwen2.5-0.5b has a 151,936-token vocabulary).
 * Prints one JSON line.
 */
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import type { GenerateOptions } from '../src/api/types.js';
import { createEngine } from '../src/node/index.js';
import { syntheticModel, SHAPES } from './synthetic.js';

function flag(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 ? (process.argv[i + 1] ?? fallback) : fallback;
}

const tokens = Number(flag('--tokens', '64'));
const runs = Number(flag('--runs', '5'));
const modelDir = flag('--model', '');
const shape = process.argv[2] && !process.argv[2].startsWith('--') ? process.argv[2] : 'smollm2-135m';
const layers = process.argv.includes('--layers') ? Number(flag('--layers', '0')) : undefined;
if (!modelDir && !SHAPES[shape]) throw new Error(`unknown shape ${shape}`);
const dir =
  modelDir ||
  (await syntheticModel(process.env.KILN_BENCH_DIR ?? join(tmpdir(), 'kiln-bench'), shape, 'BF16', layers));
const engine = await createEngine({ model: dir, contextLength: 512 });
const prompt = engine.encodePrompt('Once upon a time');

const modes: Record<string, GenerateOptions> = {
  greedy: { temperature: 0 },
  'greedy+logprobs5': { temperature: 0, logprobs: 5 },
  'greedy+logprobs20': { temperature: 0, logprobs: 20 },
  sampled: { temperature: 0.9, topP: 0.95, seed: 1 },
  'sampled+logprobs20': { temperature: 0.9, topP: 0.95, seed: 1, logprobs: 20 },
};
async function decodeRate(opts: GenerateOptions): Promise<number> {
  const r = await engine.generate(prompt, { ...opts, maxTokens: tokens, ignoreEos: true }).result();
  if (r.tokenIds.length !== tokens) throw new Error(`generated ${r.tokenIds.length} of ${tokens} tokens`);
  return r.timings.decodeTokensPerS;
}
// Warm-up: every stage's pipelines.
for (const o of Object.values(modes)) await decodeRate(o);
const rates: Record<string, number[]> = Object.fromEntries(Object.keys(modes).map((k) => [k, []]));
const ahead0 = engine.stats().aheadSteps;
const steps0 = engine.stats().steps;
for (let i = 0; i < runs; i++) {
  for (const [name, o] of Object.entries(modes)) rates[name]?.push(await decodeRate(o));
}
const median = (v: number[]) => [...v].sort((a, b) => a - b)[v.length >> 1] as number;
const med = Object.fromEntries(Object.entries(rates).map(([k, v]) => [k, Number(median(v).toFixed(1))]));
const ratio = (a: string, b: string) => Number(((med[a] as number) / (med[b] as number)).toFixed(3));
console.log(
  JSON.stringify({
    model: modelDir ? 'folder' : shape,
    vocab: engine.spec.vocabSize,
    adapter: engine.adapter.description,
    tokens,
    runs,
    decode_tokens_per_s_median: med,
    ratio_greedy_logprobs5: ratio('greedy+logprobs5', 'greedy'),
    ratio_greedy_logprobs20: ratio('greedy+logprobs20', 'greedy'),
    ratio_sampled_logprobs20: ratio('sampled+logprobs20', 'sampled'),
    // Every mode pipelines: steps that ran ahead of their ids, of all steps, over the timed runs.
    ahead_steps: engine.stats().aheadSteps - ahead0,
    steps: engine.stats().steps - steps0,
    rates,
    loadavg: loadavg().map((x) => Number(x.toFixed(2))),
  }),
);
engine.dispose();

/**
 * Constrained decoding's cost: decode tokens/s of the same greedy generation with and without a
 * JSON Schema, in alternating runs on one warm engine, and the grammar mask's CPU time per token
 * for a large vocabulary:
 *   npm run bench:structured -- [--model DIR | shape [--quant q4] [--layers N]] [--tokens N]
 *     [--runs N] [--mask-tokenizer DIR]
 * --model runs a folder (BabyLlama converted by `kiln convert llama2c`); otherwise a synthetic
 * model at a real shape (bench/synthetic.ts). --mask-tokenizer names a folder with tokenizer.json
 * (Qwen3's: 151,669 tokens) whose matcher is walked along a random valid path, timing each mask.
 * Prints one JSON line.
 */
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { GrammarSpec } from '../src/api/types.js';
import { GrammarCompiler } from '../src/engine/sampling/grammar.js';
import { KilnTokenizer } from '../src/io/tokenizer.js';
import { createEngine, loadXgrammarNode, openLocalModelDir } from '../src/node/index.js';
import { syntheticModel, SHAPES } from './synthetic.js';

function flag(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 ? (process.argv[i + 1] ?? fallback) : fallback;
}

const tokens = Number(flag('--tokens', '48'));
const runs = Number(flag('--runs', '3'));
const modelDir = flag('--model', '');
const shape = process.argv[2] && !process.argv[2].startsWith('--') ? process.argv[2] : 'smollm2-135m';
const quant = flag('--quant', 'none') as 'none' | 'q4';
const layers = process.argv.includes('--layers') ? Number(flag('--layers', '0')) : undefined;
if (!modelDir && !SHAPES[shape]) throw new Error(`unknown shape ${shape}`);
const dir =
  modelDir ||
  (await syntheticModel(process.env.KILN_BENCH_DIR ?? join(tmpdir(), 'kiln-bench'), shape, 'BF16', layers));
const engine = await createEngine({ model: dir, quant, contextLength: 512 });

// A list of at least 16 strings of 16 to 24 characters: long enough that both runs generate the
// full token count (no early end), and the mask changes with every token.
const grammar: GrammarSpec = {
  type: 'json_schema',
  schema: { type: 'array', items: { type: 'string', minLength: 16, maxLength: 24 }, minItems: 16 },
};
const prompt = engine.encodePrompt('Once upon a time');
async function decodeRate(constrained: boolean): Promise<{ tps: number; n: number }> {
  const r = await engine
    .generate(prompt, {
      maxTokens: tokens,
      temperature: 0,
      ignoreEos: true,
      ...(constrained ? { grammar } : {}),
    })
    .result();
  return { tps: r.timings.decodeTokensPerS, n: r.tokenIds.length };
}
// Warm-up: pipelines, the grammar compiler and its cache.
await decodeRate(false);
await decodeRate(true);
const plain: number[] = [];
const constrained: number[] = [];
const lengths: number[] = [];
for (let i = 0; i < runs; i++) {
  plain.push((await decodeRate(false)).tps);
  const c = await decodeRate(true);
  constrained.push(c.tps);
  lengths.push(c.n);
}
const median = (v: number[]) => [...v].sort((a, b) => a - b)[v.length >> 1] as number;

// Mask time per token for a large vocabulary, along a random valid path of a JSON Schema.
let mask: Record<string, number> | null = null;
const maskTok = flag('--mask-tokenizer', '');
if (maskTok) {
  const tok = await KilnTokenizer.load(openLocalModelDir(maskTok));
  const vocab = tok.vocabSize;
  const compiler = new GrammarCompiler(tok, vocab, tok.eosTokenIds, loadXgrammarNode);
  const schema = {
    type: 'object',
    properties: {
      name: { type: 'string' },
      age: { type: 'integer' },
      tags: { type: 'array', items: { enum: ['red', 'green', 'blue'] } },
      address: {
        type: 'object',
        properties: { city: { type: 'string' }, zip: { type: 'string' } },
        required: ['city', 'zip'],
      },
    },
    required: ['name', 'age', 'tags', 'address'],
    additionalProperties: false,
  };
  const t0 = performance.now();
  await compiler.compile({ type: 'json_schema', schema });
  const compileMs = performance.now() - t0;
  const times: number[] = [];
  let seed = 7;
  const rnd = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  for (let walk = 0; walk < 5; walk++) {
    const m = await compiler.matcher({ type: 'json_schema', schema });
    for (let step = 0; step < 200 && !m.terminated; step++) {
      const s = performance.now();
      const bits = await m.mask();
      times.push(performance.now() - s);
      const allowed: number[] = [];
      for (let i = 0; i < vocab; i++) if (((bits[i >> 5] as number) >>> (i & 31)) & 1) allowed.push(i);
      if (allowed.length === 0) break;
      // Short tokens half the time so the walk leaves strings and visits every part of the schema.
      const short = allowed.filter((i) => (tok.idToToken(i) ?? '').length <= 2);
      const pool = rnd() < 0.5 && short.length > 0 ? short : allowed;
      if (!m.accept(pool[Math.floor(rnd() * pool.length)] as number)) break;
    }
    m.dispose();
  }
  times.sort((a, b) => a - b);
  mask = {
    vocab,
    compile_ms: Math.round(compileMs),
    tokens: times.length,
    mean_ms: Number((times.reduce((a, b) => a + b, 0) / times.length).toFixed(3)),
    median_ms: Number(median(times).toFixed(3)),
    p90_ms: Number((times[Math.floor(times.length * 0.9)] as number).toFixed(3)),
    max_ms: Number((times[times.length - 1] as number).toFixed(3)),
  };
}
console.log(
  JSON.stringify({
    model: modelDir || `${shape}${layers ? ` (${layers} layers)` : ''}`,
    weights: engine.weightFormat,
    adapter: engine.adapter.description,
    tokens,
    runs,
    constrained_tokens: lengths,
    decode_tps_plain: plain.map((x) => Number(x.toFixed(1))),
    decode_tps_json_schema: constrained.map((x) => Number(x.toFixed(1))),
    ratio_of_medians: Number((median(constrained) / median(plain)).toFixed(3)),
    // Each constrained run over the plain run just before it: robust to load that drifts slowly.
    median_pair_ratio: Number(median(constrained.map((c, i) => c / (plain[i] as number))).toFixed(3)),
    // Constrained decode steps whose forward pass ran while the CPU computed their mask (the
    // adjusted burst of schedule/adjusted-burst.ts); 0 would mean they ran one at a time.
    adjusted_ahead_steps: engine.stats().adjustedAheadSteps,
    mask,
  }),
);
engine.dispose();

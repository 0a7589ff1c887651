/**
 * End-to-end prefill and decode speed on a synthetic model at a real shape:
 *   npm run bench:decode -- [shape] [--prompt-tokens N] [--tokens N] [--dtype bf16|f16|f32]
 * Prints one JSON line. "weights_gb_per_s" is the weight bytes read per decode step times steps
 * per second: decode is memory-bound, so this is the figure to compare with the adapter's bandwidth.
 */
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FloatDtype } from '../src/io/dtype.js';
import { createEngine } from '../src/node/index.js';
import { syntheticModel, SHAPES } from './synthetic.js';

function flag(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 ? (process.argv[i + 1] ?? fallback) : fallback;
}

const shape = process.argv[2] && !process.argv[2].startsWith('--') ? process.argv[2] : 'smollm2-135m';
if (!SHAPES[shape]) throw new Error(`unknown shape ${shape}`);
const promptTokens = Number(flag('--prompt-tokens', '64'));
const tokens = Number(flag('--tokens', '16'));
const dtype = flag('--dtype', 'bf16').toUpperCase() as FloatDtype;
const root = process.env.KILN_BENCH_DIR ?? join(tmpdir(), 'kiln-bench');

const dir = await syntheticModel(root, shape, dtype);
const t0 = performance.now();
const engine = await createEngine({ model: dir, contextLength: promptTokens + tokens + 16 });
const loadMs = performance.now() - t0;
const prompt = [1, ...Array.from({ length: promptTokens - 1 }, (_, i) => 3 + ((i * 37) % 256))];
const r = await engine.generate(prompt, { maxTokens: tokens, ignoreEos: true }).result();
const s = engine.spec;
const matrixParams =
  s.numLayers *
    (s.hiddenSize * (s.numHeads + 2 * s.numKvHeads) * s.headDim +
      s.numHeads * s.headDim * s.hiddenSize +
      3 * s.hiddenSize * s.intermediateSize) +
  s.vocabSize * s.hiddenSize;
const bytesPerParam = dtype === 'F32' ? 4 : 2;
console.log(
  JSON.stringify({
    bench: 'decode',
    shape,
    dtype: dtype.toLowerCase(),
    adapter: engine.adapter.description,
    prompt_tokens: promptTokens,
    generated: r.tokenIds.length,
    load_s: Math.round(loadMs) / 1000,
    prefill_tokens_per_s: Math.round(r.timings.prefillTokensPerS * 100) / 100,
    decode_tokens_per_s: Math.round(r.timings.decodeTokensPerS * 100) / 100,
    weights_gb_per_s:
      Math.round(((matrixParams * bytesPerParam * r.timings.decodeTokensPerS) / 1e9) * 1000) / 1000,
  }),
);
engine.dispose();
process.exit(0);

/**
 * End-to-end prefill and decode speed on a synthetic model at a real shape:
 *   npm run bench:decode -- [shape] [--prompt-tokens N] [--tokens N] [--dtype bf16|f16|f32]
 *     [--layers N] [--quant q4 [--quant-lm-head]] [--model DIR]
 * --layers keeps the shape's layer sizes with fewer layers; --quant q4 quantizes while loading;
 * --model runs a given folder (e.g. one written by `kiln quantize` from the synthetic model).
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

const layers = process.argv.includes('--layers') ? Number(flag('--layers', '0')) : undefined;
const quant = flag('--quant', 'none') as 'none' | 'q4';
const synthetic = await syntheticModel(root, shape, dtype, layers);
const dir = flag('--model', synthetic);
const t0 = performance.now();
const engine = await createEngine({
  model: dir,
  contextLength: promptTokens + tokens + 16,
  quant,
  quantOptions: { lmHead: process.argv.includes('--quant-lm-head') },
});
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
// int4 g32 with f16 scales and 4-bit zeros: 0.5 + 2/32 + 0.5/32 bytes per weight (embeddings are
// not read at decode beyond one row; the LM head stays in its float format unless quantized).
const int4 = engine.weightFormat !== 'float';
const floatBytes = dtype === 'F32' ? 4 : 2;
const layerParams = matrixParams - s.vocabSize * s.hiddenSize;
const q4Bytes = 0.5 + 2.5 / 32;
const headBytes = engine.weightFormat.includes('lm_head') ? q4Bytes : floatBytes;
const bytesPerStep = int4
  ? layerParams * q4Bytes + s.vocabSize * s.hiddenSize * headBytes
  : matrixParams * floatBytes;
console.log(
  JSON.stringify({
    bench: 'decode',
    shape,
    dtype: dtype.toLowerCase(),
    layers: s.numLayers,
    weights: engine.weightFormat,
    adapter: engine.adapter.description,
    prompt_tokens: promptTokens,
    generated: r.tokenIds.length,
    load_s: Math.round(loadMs) / 1000,
    prefill_tokens_per_s: Math.round(r.timings.prefillTokensPerS * 100) / 100,
    decode_tokens_per_s: Math.round(r.timings.decodeTokensPerS * 100) / 100,
    weights_gb_per_s: Math.round(((bytesPerStep * r.timings.decodeTokensPerS) / 1e9) * 1000) / 1000,
  }),
);
engine.dispose();
process.exit(0);

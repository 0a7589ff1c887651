/**
 * GGUF blocks against Kiln int4 at decode, on the same synthetic model, in one process:
 *   npm run bench:build && node dist/dev/bench/decode-gguf.js [--layers N] [--rounds N]
 *     [--tokens N] [--context N] [--file-type Q4_K_M|Q4_0]
 * Writes the synthetic Qwen2.5-0.5B-shaped model (bench/synthetic.ts) as a GGUF file typed the way
 * llama.cpp's Q4_K_M types it (Q4_K matrices; Q6_K for attn_v and ffn_down in the layers its
 * `use_more_bits` picks; where a row is not whole 256-element blocks, as Qwen's 896 columns, its
 * fallbacks Q5_0 for Q4_K and Q8_0 for Q6_K), with the embedding table, the tied LM head, kept
 * bf16 as the int4 model keeps it. Then alternates the two engines (GGUF file; the folder quantized
 * to int4 g32 at load) for several rounds: decode tokens/s (wall clock) and the GPU time of one
 * decode step (each dispatch timestamped on its own: `Engine.profileDecode`), and prints the
 * medians, their ratios and each format's kernel times. One JSON line at the end.
 * `--file-type Q4_0` types every layer matrix Q4_0 instead, as llama.cpp's Q4_0 files do (the
 * 4.5-bit format Kiln uploads as its own int4, exactly), the head kept bf16 as above.
 */
import { existsSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeToFloat32, encodeFromFloat32 } from '../src/io/dtype.js';
import type { GgufValue } from '../src/io/gguf.js';
import { ggufTypeByName } from '../src/io/gguf-types.js';
import { encodeGguf, gv, type GgufTensorToWrite } from '../src/io/gguf-writer.js';
import { openCheckpoint } from '../src/io/safetensors-checkpoint.js';
import { loadModelSpec } from '../src/model/config.js';
import { ggufHyperParameters, ggufTensorName } from '../src/model/gguf-config.js';
import { expectedTensors } from '../src/model/tensors.js';
import { openLocalModelDir } from '../src/node/fs-model-dir.js';
import { createEngine, type Engine } from '../src/node/index.js';
import { quantizeGguf } from '../src/quant/gguf-blocks.js';
import { syntheticModel } from './synthetic.js';

function flag(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 ? (process.argv[i + 1] ?? fallback) : fallback;
}

const layers = Number(flag('--layers', '4'));
const rounds = Number(flag('--rounds', '4'));
const tokens = Number(flag('--tokens', '24'));
const context = Number(flag('--context', '64'));
const fileType = flag('--file-type', 'Q4_K_M');
if (fileType !== 'Q4_K_M' && fileType !== 'Q4_0')
  throw new Error(`--file-type: Q4_K_M or Q4_0, not ${fileType}`);
const root = process.env.KILN_BENCH_DIR ?? join(tmpdir(), 'kiln-bench');

/** llama.cpp's Q4_K_M choice for a GGUF tensor of `cols` columns in layer `layer` of `n`. */
function q4km(name: string, cols: number, layer: number, n: number): string {
  // use_more_bits: the first and last eighth of the layers and every third one in between.
  const more = layer < n / 8 || layer >= (7 * n) / 8 || (layer - Math.floor(n / 8)) % 3 === 2;
  const want = /attn_v|ffn_down/.test(name) && more ? 'Q6_K' : 'Q4_K';
  if (cols % 256 === 0) return want;
  return want === 'Q6_K' ? 'Q8_0' : 'Q5_0';
}

async function writeGgufFile(dir: string): Promise<{ path: string; types: Record<string, number> }> {
  const path = join(dir, `${fileType.toLowerCase()}.gguf`);
  const model = openLocalModelDir(dir);
  const spec = await loadModelSpec(model);
  const types: Record<string, number> = {};
  const ckpt = await openCheckpoint(model);
  const tensors: GgufTensorToWrite[] = [];
  try {
    for (const name of expectedTensors(spec).keys()) {
      const info = ckpt.get(name);
      const g = ggufTensorName('qwen2', name);
      if (!g) throw new Error(`no GGUF name for ${name}`);
      const shape = [...info.shape];
      const values = decodeToFloat32(info.dtype, await ckpt.readTensor(info));
      const layer = Number(/^blk\.(\d+)\./.exec(g)?.[1] ?? -1);
      let type = 'BF16';
      let data: Uint8Array;
      if (shape.length === 2 && layer >= 0) {
        type = fileType === 'Q4_0' ? 'Q4_0' : q4km(g, shape[1] as number, layer, spec.numLayers);
        data = quantizeGguf(type, values);
      } else if (shape.length === 1) {
        type = 'F32';
        data = encodeFromFloat32('F32', values);
      } else {
        data = encodeFromFloat32('BF16', values);
      }
      types[type] = (types[type] ?? 0) + 1;
      const info2 = ggufTypeByName(type);
      if (!info2) throw new Error(type);
      tensors.push({ name: g, type: info2, dims: [...shape].reverse(), data });
    }
  } finally {
    await ckpt.close();
  }
  // A SentencePiece-style vocabulary of the model's size (the decode loop takes ids, not text).
  const pieces = Array.from({ length: spec.vocabSize }, (_, i) =>
    i === 0
      ? '<unk>'
      : i === 1
        ? '<s>'
        : i === 2
          ? '</s>'
          : i < 259
            ? `<0x${(i - 3).toString(16).toUpperCase().padStart(2, '0')}>`
            : `▁t${i}`,
  );
  const metadata: [string, GgufValue][] = [
    ['general.architecture', gv.str('qwen2')],
    ['general.name', gv.str(`kiln bench ${fileType.toLowerCase()}`)],
    ...ggufHyperParameters('qwen2', spec),
    ['tokenizer.ggml.model', gv.str('llama')],
    ['tokenizer.ggml.tokens', gv.strs(pieces)],
    ['tokenizer.ggml.scores', gv.f32s(pieces.map(() => 0))],
    ['tokenizer.ggml.token_type', gv.i32s(pieces.map((_, i) => (i === 0 ? 2 : i < 3 ? 3 : i < 259 ? 6 : 1)))],
    ['tokenizer.ggml.bos_token_id', gv.u32(1)],
    ['tokenizer.ggml.eos_token_id', gv.u32(2)],
    ['tokenizer.ggml.unknown_token_id', gv.u32(0)],
  ];
  if (!existsSync(path)) writeFileSync(path, encodeGguf({ metadata, tensors }));
  return { path, types };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2
    ? (s[s.length >> 1] as number)
    : ((s[s.length / 2 - 1] as number) + (s[s.length / 2] as number)) / 2;
};

const dir = await syntheticModel(root, 'qwen2.5-0.5b', 'BF16', layers);
const gguf = await writeGgufFile(dir);
const engines: [string, Engine][] = [
  ['gguf', await createEngine({ model: gguf.path, contextLength: context + tokens + 16 })],
  ['int4', await createEngine({ model: dir, contextLength: context + tokens + 16, quant: 'q4' })],
];
const prompt = [1, ...Array.from({ length: context - 1 }, (_, i) => 3 + ((i * 37) % 256))];
const res: Record<string, { tps: number[]; gpuMs: number[]; kernels: Map<string, number[]> }> = {};
const load = [loadavg()[0] as number];
// Warm-up: compile every pipeline and calibrate (one generation and one profile per engine).
for (const [, e] of engines) {
  await e.generate(prompt, { maxTokens: 4, ignoreEos: true }).result();
  await e.profileDecode(context);
}
for (let r = 0; r < rounds; r++) {
  // ABAB...: each round runs both, in alternating order.
  for (const [name, e] of r % 2 ? [...engines].reverse() : engines) {
    const slot = (res[name] ??= { tps: [], gpuMs: [], kernels: new Map() });
    const out = await e.generate(prompt, { maxTokens: tokens, ignoreEos: true }).result();
    slot.tps.push(out.timings.decodeTokensPerS);
    const prof = await e.profileDecode(context);
    slot.gpuMs.push(prof.reduce((a, p) => a + p.ms, 0));
    for (const p of prof) {
      const list = slot.kernels.get(p.label) ?? [];
      list.push(p.ms);
      slot.kernels.set(p.label, list);
    }
  }
  load.push(loadavg()[0] as number);
}
const summary = Object.fromEntries(
  Object.entries(res).map(([name, s]) => [
    name,
    {
      decode_tokens_per_s: s.tps.map((x) => Math.round(x * 100) / 100),
      step_gpu_ms: s.gpuMs.map((x) => Math.round(x * 1000) / 1000),
      median_tokens_per_s: Math.round(median(s.tps) * 100) / 100,
      median_step_gpu_ms: Math.round(median(s.gpuMs) * 1000) / 1000,
    },
  ]),
);
for (const [name, s] of Object.entries(res)) {
  process.stderr.write(`\n${name}: kernel GPU ms per decode step (median of ${rounds})\n`);
  const rows = [...s.kernels].map(([label, ms]) => [label, median(ms)] as const).sort((a, b) => b[1] - a[1]);
  for (const [label, ms] of rows)
    process.stderr.write(`  ${label.padEnd(40)} ${ms.toFixed(3).padStart(9)}\n`);
}
const g = res.gguf;
const q = res.int4;
console.log(
  JSON.stringify({
    bench: 'decode-gguf',
    shape: 'qwen2.5-0.5b',
    file_type: fileType,
    layers,
    context,
    tokens,
    rounds,
    gguf_types: gguf.types,
    weights: Object.fromEntries(engines.map(([n, e]) => [n, e.weightFormat])),
    ...summary,
    // > 1: GGUF faster.
    gguf_over_int4_tokens_per_s: g && q ? Math.round((median(g.tps) / median(q.tps)) * 1000) / 1000 : null,
    int4_over_gguf_step_gpu_ms: g && q ? Math.round((median(q.gpuMs) / median(g.gpuMs)) * 1000) / 1000 : null,
    load_average: load.map((x) => Math.round(x * 100) / 100),
  }),
);
for (const [, e] of engines) e.dispose();
process.exit(0);

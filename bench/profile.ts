/**
 * Where a decode step's GPU time goes, by kernel variant:
 *   npm run bench:profile -- (--model DIR | SHAPE) [--context N] [--dtype bf16|f16|f32]
 *     [--layers N] [--kv-cache FORMAT] [--rounds N] [--rows N]
 * (`--rows N`: a prefill chunk of N rows ending at the context instead of a decode step.)
 * Each dispatch runs in its own timestamped pass (GPU time, no submission overhead).
 */
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FloatDtype } from '../src/io/dtype.js';
import type { KvDtype } from '../src/kernels/kv-dtype.js';
import { createEngine } from '../src/node/index.js';
import { syntheticModel, SHAPES } from './synthetic.js';

function flag(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 ? (process.argv[i + 1] ?? fallback) : fallback;
}

const context = Number(flag('--context', '128'));
let dir = flag('--model', '');
if (!dir) {
  const shape = process.argv[2] && !process.argv[2].startsWith('--') ? process.argv[2] : 'smollm2-135m';
  if (!SHAPES[shape]) throw new Error(`unknown shape ${shape}`);
  const dtype = flag('--dtype', 'bf16').toUpperCase() as FloatDtype;
  const layers = flag('--layers', '');
  dir = await syntheticModel(
    process.env.KILN_BENCH_DIR ?? join(tmpdir(), 'kiln-bench'),
    shape,
    dtype,
    ...(layers ? [Number(layers)] : []),
  );
}
const kvCache = flag('--kv-cache', 'auto') as KvDtype | 'auto';
const engine = await createEngine({ model: dir, contextLength: Math.max(context, 64), kvCache });
// A short generation first: decode attention calibrates its async softmax on the first decode
// steps, so the profile shows the kernels a running engine uses.
await engine.generate([1], { maxTokens: 12, ignoreEos: true }).result();
// The first pass compiles pipelines and faults pages in; the second is the one reported.
const chunkRows = Number(flag('--rows', '1'));
await engine.profileDecode(context, chunkRows);
// --rounds N > 1: the median of N profiles per variant (shared machines).
const rounds = Number(flag('--rounds', '1'));
const all: Awaited<ReturnType<typeof engine.profileDecode>>[] = [];
for (let i = 0; i < rounds; i++) all.push(await engine.profileDecode(context, chunkRows));
const rows = (all[0] ?? []).map((r, i) => {
  const ms = all.map((a) => a[i]?.ms ?? 0).sort((x, y) => x - y);
  return { ...r, ms: ms[ms.length >> 1] ?? 0 };
});
const total = rows.reduce((a, r) => a + r.ms, 0);
console.log(
  `${chunkRows > 1 ? `${chunkRows}-row prefill chunk` : 'decode step'} at context ${context}, KV ${engine.kvCacheDtype}: ${total.toFixed(3)} ms GPU`,
);
for (const r of rows) {
  console.log(
    `${r.label.padEnd(28)} ${String(r.count).padStart(4)} x  ${r.ms.toFixed(3).padStart(9)} ms  ${((100 * r.ms) / total).toFixed(1).padStart(5)}%`,
  );
}
engine.dispose();
process.exit(0);

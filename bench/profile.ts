/**
 * Where a decode step's GPU time goes, by kernel variant:
 *   npm run bench:profile -- (--model DIR | SHAPE) [--context N] [--dtype bf16|f16|f32]
 * Each dispatch runs in its own timestamped pass (GPU time, no submission overhead).
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

const context = Number(flag('--context', '128'));
let dir = flag('--model', '');
if (!dir) {
  const shape = process.argv[2] && !process.argv[2].startsWith('--') ? process.argv[2] : 'smollm2-135m';
  if (!SHAPES[shape]) throw new Error(`unknown shape ${shape}`);
  const dtype = flag('--dtype', 'bf16').toUpperCase() as FloatDtype;
  dir = await syntheticModel(process.env.KILN_BENCH_DIR ?? join(tmpdir(), 'kiln-bench'), shape, dtype);
}
const engine = await createEngine({ model: dir, contextLength: Math.max(context, 64) });
// A short generation first: decode attention calibrates its async softmax on the first decode
// steps, so the profile shows the kernels a running engine uses.
await engine.generate([1], { maxTokens: 12, ignoreEos: true }).result();
// The first pass compiles pipelines and faults pages in; the second is the one reported.
await engine.profileDecode(context);
const rows = await engine.profileDecode(context);
const total = rows.reduce((a, r) => a + r.ms, 0);
console.log(`decode step at context ${context}: ${total.toFixed(3)} ms GPU`);
for (const r of rows) {
  console.log(
    `${r.label.padEnd(28)} ${String(r.count).padStart(4)} x  ${r.ms.toFixed(3).padStart(9)} ms  ${((100 * r.ms) / total).toFixed(1).padStart(5)}%`,
  );
}
engine.dispose();
process.exit(0);

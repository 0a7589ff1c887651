/**
 * matmul_q4 rows of `kiln bench kernels`: the int4 kernel at the benchmark models' layer shapes,
 * weights quantized (round-to-nearest) from seeded data, checked against the float64 product of
 * the dequantized weights, and timed against the same bandwidth figure as the float kernels.
 * Where the adapter has shader-f16, the Llama MLP shapes also get f16-dequant rows (variant label
 * ending in `_h`) next to f32-dequant rows at M = 1 and 16. At M = 1 the one-row kernel
 * matmul_q4_gemv adds rows for its CPU shape (4 rows per thread, 16 threads, subgroup X; where the
 * adapter has subgroups) and its GPU shape (K split in 8 slices of 128 threads). A shape's cases are
 * timed in 3 alternating rounds and each row reports its best median, as stream_read does.
 */
import { DispatchBuilder, type Dispatch } from '../src/gpu/dispatch.js';
import { matmulQ4, q4SubgroupsUsable, type Q4Dequant } from '../src/kernels/matmul-q4.js';
import type { Q4Gemv } from '../src/kernels/matmul-q4-gemv.js';
import { dequantize, quantizeRtn, type Q4Format } from '../src/quant/q4.js';
import { uploadQ4Weight } from '../src/weights/upload-q4.js';
import { checkedColumns, matmulError, type BenchContext } from './kernels.js';
import { randomF32 } from '../src/kernels/random.js';
import { BENCH_MODELS } from './shapes.js';

export async function matmulQ4Suite(b: BenchContext): Promise<void> {
  const ms = b.opts.quick ? [1] : [1, 4, 16];
  const formats: Q4Format[] = b.opts.quick
    ? [{ groupSize: 32, symmetric: true, scaleType: 'f16' }]
    : [
        { groupSize: 32, symmetric: true, scaleType: 'f16' },
        { groupSize: 128, symmetric: true, scaleType: 'f16' },
        { groupSize: 32, symmetric: false, scaleType: 'f16' },
      ];
  for (const model of BENCH_MODELS) {
    for (const lin of model.linears) {
      for (const format of formats) {
        const mark = b.mark;
        const values = randomF32(lin.n * lin.k, lin.n + lin.k, 0.05);
        const q = quantizeRtn(values, lin.n, lin.k, format);
        const seen = dequantize(q);
        const weight = uploadQ4Weight(b.ctx, 'bench', q);
        const part = weight.parts[0];
        const weightBytes =
          (part?.words.size ?? 0) + (part?.scales.size ?? 0) + (part?.zeros ? part.zeros.size : 0);
        for (const buf of [part?.words, part?.scales, part?.zeros]) if (buf) b.adopt(buf);
        const cases: { m: number; dequant: Q4Dequant; gemv?: Q4Gemv; subgroups?: boolean }[] = ms.map(
          (m) => ({
            m,
            dequant: 'f32',
          }),
        );
        if (q4SubgroupsUsable(b.ctx))
          cases.push({ m: 1, dequant: 'f32', gemv: { tn: 4, wg: 16 }, subgroups: true });
        cases.push({ m: 1, dequant: 'f32', gemv: { tn: 1, wg: 128, ks: 8 }, subgroups: false });
        // The f16 ("0x6400 magic") dequant next to the f32 one at M = 1 and 16 on the Llama MLP
        // shapes (the largest matrices), in the first format, where the adapter has shader-f16.
        if (
          b.ctx.adapter.shaderF16 &&
          model.name === 'llama-3.2-1b' &&
          (lin.name === 'gate_up_proj' || lin.name === 'down_proj') &&
          format === formats[0]
        ) {
          for (const m of [1, 16]) {
            if (!ms.includes(m)) cases.push({ m, dequant: 'f32' });
            cases.push({ m, dequant: 'f16' });
          }
        }
        const builder = new DispatchBuilder(b.ctx);
        const recorded = cases.map(({ m, dequant, gemv, subgroups }) => {
          const x = randomF32(m * lin.k, m + 3);
          const xb = b.upload(x);
          const y = b.buffer(m * lin.n * 4);
          const ph = b.buffer(16);
          const d = matmulQ4(builder, { x: xb, weight, y, m, placeholder: ph, dequant, gemv, subgroups });
          return { m, x, y, d, label: (d[0] as Dispatch).label };
        });
        // Alternating rounds, each case's best median: the same statistic as stream_read's (best of
        // three medians), so a round that lost a core to other work on a shared machine (which
        // doubles a median on 2 cores) cannot decide a case or its roofline fraction.
        const best = recorded.map(() => Infinity);
        for (let round = 0; round < 3; round++) {
          for (const [i, r] of recorded.entries())
            best[i] = Math.min(best[i] as number, await b.time(r.label, r.d));
        }
        for (const [i, { m, x, y, label }] of recorded.entries()) {
          // y holds this case's own result (no other case writes it).
          const t = best[i] as number;
          const out = await b.readF32(y, m * lin.n);
          const err = matmulError(out, x, seen, m, lin.n, lin.k, checkedColumns(m, lin.n, lin.k));
          b.add({
            kernel: 'matmul_q4',
            variant: label,
            shape: { model: model.name, layer: lin.name, m, n: lin.n, k: lin.k },
            ms: t,
            bytes: weightBytes + m * (lin.k + lin.n) * 4,
            flops: 2 * m * lin.n * lin.k,
            max_rel_err: err,
            // The weights the kernel sees are exactly `seen` (codes × scales); the remaining
            // error is f32 summation, bounded like the float kernels' plus one rounding per group
            // (the f16 dequant's codes q − z are exact, and it sums in f32 in the same order).
            ok: err <= (lin.k + lin.k / format.groupSize + 4) * 2 ** -24,
          });
        }
        builder.destroy();
        b.freeSince(mark);
      }
    }
  }
}

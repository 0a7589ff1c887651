/**
 * attention_decode rows of `kiln bench kernels`: split-K decode attention over a paged KV cache at
 * the benchmark models' head shapes and contexts 128, 1024 and 4096, in the exact two-pass variant
 * and the unified-max (async softmax) one, both checked against the float64 reference.
 */
import { attentionRef } from '../kernels/attention.ref.js';
import {
  AttentionDecodeScratch,
  attentionDecode,
  pickDecodeChunk,
  type AttentionDecodeVariant,
} from '../kernels/attention-decode.js';
import { DispatchBuilder, runDispatches } from '../kernels/dispatch.js';
import type { BenchContext } from './kernels.js';
import { randomF32 } from './random.js';
import { BENCH_MODELS } from './models.js';

const BLOCK = 16;

export async function attentionSuite(b: BenchContext): Promise<void> {
  // The quick run keeps the longest context: where split-K and the unified max matter most.
  const contexts = b.opts.quick ? [4096] : [128, 1024, 4096];
  for (const model of BENCH_MODELS) {
    const { heads, kvHeads, headDim } = model;
    const kvDim = kvHeads * headDim;
    for (const ctxLen of contexts) {
      const mark = b.mark;
      const blocks = Math.ceil(ctxLen / BLOCK);
      // Logical token t lives in physical block perm[t / 16]: a scattered (reversed) table.
      const table = Uint32Array.from({ length: blocks }, (_, i) => blocks - 1 - i);
      const k = randomF32(ctxLen * kvDim, ctxLen, 1);
      const v = randomF32(ctxLen * kvDim, ctxLen + 1, 1);
      const kPaged = new Float32Array(blocks * kvDim * BLOCK);
      const vPaged = new Float32Array(blocks * kvDim * BLOCK);
      for (let t = 0; t < ctxLen; t++) {
        const blk = table[Math.floor(t / BLOCK)] as number;
        for (let h = 0; h < kvHeads; h++) {
          const dst = ((blk * kvHeads + h) * BLOCK + (t % BLOCK)) * headDim;
          kPaged.set(k.subarray(t * kvDim + h * headDim, t * kvDim + (h + 1) * headDim), dst);
          vPaged.set(v.subarray(t * kvDim + h * headDim, t * kvDim + (h + 1) * headDim), dst);
        }
      }
      const q = randomF32(heads * headDim, ctxLen + 2, 1);
      const scale = 1 / Math.sqrt(headDim);
      const want = attentionRef(q, k, v, [ctxLen - 1], heads, kvHeads, headDim, scale);
      const bufs = {
        rowInfo: b.upload(Uint32Array.from([ctxLen - 1, 0])),
        blockTable: b.upload(table),
        q: b.upload(q),
        kCache: b.upload(kPaged),
        vCache: b.upload(vPaged),
        out: b.buffer(heads * headDim * 4),
      };
      // phi for the unified max: the scores' scale here is |q·k|·scale ≲ a few units; a real model
      // gets phi from calibration (the engine measures it), the benchmark from this bound.
      const phi = 0;
      const chunk = pickDecodeChunk({ maxContext: ctxLen, kvHeads, rows: 1 });
      const scratch = new AttentionDecodeScratch(b.ctx, {
        rows: 1,
        heads,
        headDim,
        maxContext: ctxLen,
        chunk,
      });
      const builder = new DispatchBuilder(b.ctx);
      const variants = ['two_pass', 'async_softmax'] as AttentionDecodeVariant[];
      const dispatches = variants.map((variant) =>
        attentionDecode(builder, {
          ...bufs,
          m: 1,
          heads,
          kvHeads,
          headDim,
          scale,
          maxContext: ctxLen,
          chunk,
          variant,
          phi,
          scratch,
        }),
      );
      // The two variants are compared with each other: time them in alternating rounds and keep
      // each one's best median, so drift on a shared machine cannot favour whichever ran second.
      const best = variants.map(() => Infinity);
      for (let round = 0; round < 3; round++) {
        for (let v = 0; v < variants.length; v++) {
          const t = await b.time(`attention_decode_${variants[v]}`, dispatches[v] ?? []);
          best[v] = Math.min(best[v] ?? Infinity, t);
        }
      }
      for (let v = 0; v < variants.length; v++) {
        const variant = variants[v] as AttentionDecodeVariant;
        // Correctness of this variant's result (each variant writes the whole output).
        runDispatches(b.ctx, dispatches[v] ?? []);
        const out = await b.readF32(bufs.out, heads * headDim);
        let err = 0;
        let scaleMax = 0;
        for (let i = 0; i < out.length; i++) {
          err = Math.max(err, Math.abs((out[i] as number) - (want[i] as number)));
          scaleMax = Math.max(scaleMax, Math.abs(want[i] as number));
        }
        const rel = err / (scaleMax || 1);
        b.add({
          kernel: 'attention_decode',
          variant,
          shape: { model: model.name, context: ctxLen, heads, kv_heads: kvHeads, head_dim: headDim, chunk },
          ms: best[v] as number,
          bytes: 2 * ctxLen * kvDim * 4 + 2 * heads * headDim * 4,
          flops: 4 * ctxLen * heads * headDim,
          max_rel_err: rel,
          // f32 scores, exponentials and sums over up to 4096 keys against float64, relative to
          // the output's magnitude: measured ≤ 7e-7; 1e-4 leaves room for other adapters' exp/div
          // precision (WGSL allows several ulp) without hiding a wrong merge (errors of O(1)).
          ok: rel <= 1e-4,
        });
      }
      builder.destroy();
      scratch.destroy();
      b.freeSince(mark);
    }
  }
}

/**
 * attention_decode rows of `kiln bench kernels`: split-K decode attention over a paged KV cache at
 * the benchmark models' head shapes and contexts 128, 1024 and 4096, in the exact two-pass variant
 * and the unified-max (async softmax) one, over an f32 cache and (where the adapter has shader-f16)
 * an f16 one (variants `*_kvf16`), each checked against the float64 reference of the K/V the cache
 * holds. Contexts past 512 add rows with Gemma 3's 512-token sliding window (shape `window`), timed
 * in the same rounds: the splits before the window read nothing, which is where a sliding layer's
 * decode attention saves its time. `single_pass` rows run the whole context in one split (one
 * dispatch, no merge: what the cpu row of the kernel defaults picks up to a 1024-token context).
 */
import { plainRowInfo } from '../src/kernels/row-info.js';
import { decodeToFloat32, encodeFromFloat32 } from '../src/io/dtype.js';
import { attentionRef } from '../src/kernels/attention.ref.js';
import {
  AttentionDecodeScratch,
  attentionDecode,
  attentionDecodeLabels,
  pickDecodeChunk,
  type AttentionDecodeVariant,
} from '../src/kernels/attention-decode.js';
import { DispatchBuilder, runDispatches } from '../src/gpu/dispatch.js';
import { kvElementBytes, type KvFloatDtype as KvDtype } from '../src/kernels/kv-dtype.js';
import type { BenchContext } from './kernels.js';
import { randomF32 } from '../src/kernels/random.js';
import { BENCH_MODELS } from './shapes.js';

const BLOCK = 16;
/** The sliding window of the windowed rows: Gemma 3's local layers. */
const WINDOW = 512;

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
      const kvDtypes: ('f32' | 'f16')[] = b.ctx.adapter.shaderF16 ? ['f32', 'f16'] : ['f32'];
      // An f16 cache holds every value rounded to f16: its reference is computed from those.
      const f16 = (x: Float32Array) => encodeFromFloat32('F16', x);
      const round16 = (x: Float32Array) => decodeToFloat32('F16', f16(x));
      const windows = ctxLen > WINDOW ? [0, WINDOW] : [0];
      const want = (kvDtype: KvDtype, window: number): Float64Array =>
        kvDtype === 'f32'
          ? attentionRef(q, k, v, [ctxLen - 1], heads, kvHeads, headDim, scale, window)
          : attentionRef(q, round16(k), round16(v), [ctxLen - 1], heads, kvHeads, headDim, scale, window);
      const caches = {
        f32: { kCache: b.upload(kPaged), vCache: b.upload(vPaged) },
        f16: kvDtypes.includes('f16')
          ? { kCache: b.upload(f16(kPaged)), vCache: b.upload(f16(vPaged)) }
          : { kCache: b.buffer(4), vCache: b.buffer(4) },
      };
      const bufs = {
        rowInfo: b.upload(plainRowInfo([ctxLen - 1])),
        blockTable: b.upload(table),
        q: b.upload(q),
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
      const oneSplit = Math.ceil(ctxLen / BLOCK) * BLOCK;
      const variants = windows.flatMap((window) =>
        kvDtypes.flatMap((kvDtype) =>
          (
            [
              ['two_pass', chunk],
              ['async_softmax', chunk],
              ['two_pass', oneSplit],
            ] as [AttentionDecodeVariant, number][]
          ).map(([softmax, ch]) => ({
            softmax,
            kvDtype,
            window,
            chunk: ch,
            // The pass-1 label (= pipeline) without its kernel prefix: two_pass, async_softmax_kvf16,
            // single_pass, ...
            name: (attentionDecodeLabels(softmax, kvDtype, ch === oneSplit ? 1 : 2)[0] as string).replace(
              'attention_decode_',
              '',
            ),
          })),
        ),
      );
      const dispatches = variants.map(({ softmax, kvDtype, window, chunk: ch }) =>
        attentionDecode(builder, {
          ...bufs,
          ...caches[kvDtype],
          kvDtype,
          m: 1,
          heads,
          kvHeads,
          headDim,
          scale,
          maxContext: ctxLen,
          chunk: ch,
          variant: softmax,
          phi,
          window,
          scratch,
        }),
      );
      // The variants are compared with each other: time them in alternating rounds and keep
      // each one's best median, so drift on a shared machine cannot favour whichever ran second.
      const best = variants.map(() => Infinity);
      for (let round = 0; round < 3; round++) {
        for (let v = 0; v < variants.length; v++) {
          const t = await b.time(`attention_decode_${variants[v]?.name}`, dispatches[v] ?? []);
          best[v] = Math.min(best[v] ?? Infinity, t);
        }
      }
      for (let v = 0; v < variants.length; v++) {
        const { name, kvDtype, window, chunk: ch } = variants[v] as (typeof variants)[number];
        // Correctness of this variant's result (each variant writes the whole output).
        runDispatches(b.ctx, dispatches[v] ?? []);
        const out = await b.readF32(bufs.out, heads * headDim);
        const ref = want(kvDtype, window);
        const keys = window > 0 ? Math.min(window, ctxLen) : ctxLen;
        let err = 0;
        let scaleMax = 0;
        for (let i = 0; i < out.length; i++) {
          err = Math.max(err, Math.abs((out[i] as number) - (ref[i] as number)));
          scaleMax = Math.max(scaleMax, Math.abs(ref[i] as number));
        }
        const rel = err / (scaleMax || 1);
        b.add({
          kernel: 'attention_decode',
          variant: name,
          shape: {
            model: model.name,
            context: ctxLen,
            ...(window > 0 ? { window } : {}),
            heads,
            kv_heads: kvHeads,
            head_dim: headDim,
            chunk: ch,
          },
          ms: best[v] as number,
          bytes: 2 * keys * kvDim * kvElementBytes(kvDtype) + 2 * heads * headDim * 4,
          flops: 4 * keys * heads * headDim,
          max_rel_err: rel,
          // f32 scores, exponentials and sums over up to 4096 keys against float64 (from the K/V the
          // cache holds, f16-rounded or not: the f32 arithmetic is the same), relative to
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

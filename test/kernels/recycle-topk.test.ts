/**
 * recycle_topk (Token Recycling's adjacency table, updated from logits on the GPU) against its CPU
 * twin at awkward vocabulary sizes, up to Qwen3's 151,669: the k best ids of each logit row land
 * in its input token's table row, ties go to the lower id, NaN and -inf never count, a row with
 * fewer counted values than k pads with RECYCLE_NONE, the last of two rows with the same input
 * token writes, and rows of other tokens (or a token past the table) are left alone, in both forms
 * (a workgroup per row, and recycle_topk_lanes' invocation per row). Ids are
 * compared exactly: the kernel only compares f32 values, as the twin does.
 */
import { describe, expect, test } from 'vitest';
import { packTreeShape, recycleDraft } from '../../src/kernels/recycle-draft.js';
import { RECYCLE_TREE } from '../../src/engine/token-tree.js';
import { recycleDraftRef } from '../../src/kernels/recycle-draft.ref.js';
import { RECYCLE_NONE, recycleTopk } from '../../src/kernels/recycle-topk.js';
import { recycleTopkRef } from '../../src/kernels/recycle-topk.ref.js';
import { randomF32, readU32, run, testGpu, upload } from '../helpers/gpu.js';

const SIZES = [1, 7, 129, 4097, 151669];

describe('recycle_topk', () => {
  for (const n of SIZES) {
    for (const k of [8, 3]) {
      test(`n=${n} k=${k}`, async () => {
        const c = await testGpu();
        // 6 step rows, 5 of them logit rows; their input tokens: two rows share token min(2, n-1)
        // (the later one writes), one token is n (no table row).
        const t2 = Math.min(2, n - 1);
        const stepIds = [0, t2, Math.min(5, n - 1), 77, t2, n];
        const logitRows = [0, 1, 2, 4, 5];
        const inputTokens = logitRows.map((r) => stepIds[r] as number);
        const rows = logitRows.length;
        const logits = randomF32(rows * n, n + k);
        if (n > 20) {
          // Row 0: ties at the top (the lower id first). Row 1: NaN and -inf sprinkled in, and a
          // +inf. Row 2 (token 5): only 4 finite values.
          logits[3] = 9;
          logits[n - 1] = 9;
          logits[11] = 9;
          for (let i = 0; i < n; i += 3) logits[n + i] = NaN;
          for (let i = 1; i < n; i += 5) logits[n + i] = -Infinity;
          logits[n + 4] = Infinity;
          for (let i = 0; i < n; i++) logits[2 * n + i] = i % (n >> 2) === 1 ? i : -Infinity;
        }
        const table = new Uint32Array(n * k).map((_, i) => (i * 2654435761) >>> 0);
        // Both forms: a workgroup per row, and one invocation per row (recycle_topk_lanes).
        for (const lanes of [false, true]) {
          const tableBuf = upload(c, table);
          run(c, (b) =>
            recycleTopk(b, {
              logits: upload(c, logits),
              ids: upload(c, Uint32Array.from(stepIds)),
              logitRows: upload(c, Uint32Array.from(logitRows)),
              table: tableBuf,
              rows,
              n,
              k,
              lanes,
            }),
          );
          const got = await readU32(c, tableBuf, n * k);
          const want = recycleTopkRef(table, logits, inputTokens, n, k);
          expect(Array.from(got)).toEqual(Array.from(want));
          if (n > 20) {
            expect(Array.from(got.subarray(0, 3))).toEqual([3, 11, n - 1]);
            // Token 5's row: the 4 finite values, largest first, then RECYCLE_NONE.
            const quarter = n >> 2;
            expect(Array.from(got.subarray(5 * k, 5 * k + k))).toEqual(
              [
                3 * quarter + 1,
                2 * quarter + 1,
                quarter + 1,
                1,
                RECYCLE_NONE,
                RECYCLE_NONE,
                RECYCLE_NONE,
                RECYCLE_NONE,
              ]
                .filter((x) => x < n || x === RECYCLE_NONE)
                .slice(0, k),
            );
          }
        }
      }, 120_000);
    }
  }
});

/**
 * recycle_draft: fills a tree shape through the table from each row's chosen id, exactly as its
 * twin, at awkward row counts and vocabulary sizes, for a chain and for recycling's 32-node tree;
 * a table whose rows partly hold RECYCLE_NONE (never written) ends paths there, and a chosen id
 * past the table gives none.
 */
describe('recycle_draft', () => {
  const shapes = {
    chain: { parents: [-1, 0, 1, 2, 3], ranks: [0, 0, 0, 0, 0] },
    tree: RECYCLE_TREE,
  };
  for (const [rows, n] of [
    [1, 1],
    [7, 7],
    [129, 129],
    [65, 4097],
    [3, 151669],
  ] as const) {
    for (const [name, shape] of Object.entries(shapes)) {
      test(`rows=${rows} n=${n} ${name}`, async () => {
        const c = await testGpu();
        const k = 8;
        const nodes = shape.parents.length;
        // Row t's candidates: seeded ids, every 5th row never written.
        const table = new Uint32Array(n * k).map((_, i) =>
          Math.floor(i / k) % 5 === 4 ? RECYCLE_NONE : ((i * 2654435761) >>> 0) % n,
        );
        const ids = Array.from({ length: rows }, (_, r) => (r === rows - 1 && rows > 1 ? n : (r * 7919) % n));
        const drafts = upload(c, new Uint32Array(rows * nodes));
        run(c, (b) =>
          recycleDraft(b, {
            ids: upload(c, Uint32Array.from(ids)),
            table: upload(c, table),
            drafts,
            shape: upload(c, packTreeShape(shape.parents, shape.ranks)),
            rows,
            n,
            k,
            nodes,
          }),
        );
        expect(Array.from(await readU32(c, drafts, rows * nodes))).toEqual(
          recycleDraftRef(ids, table, n, k, shape),
        );
      });
    }
  }
});

/**
 * Token-tree verification in one forward pass (speculative decoding, engine/schedule/verify.ts):
 * after a prompt, one step runs the prompt's last token and the nodes of a token tree, node i at
 * slot p + 1 + i and position p + depth, each seeing the committed slots and its ancestors only
 * (kernels/row-info.ts). Each node's logits must be the float64 reference's logits after the
 * prompt and the node's path, on the synthetic Llama model and on Gemma 3's (sliding-window
 * layers, q/k norms). With a wrong mask (every earlier node visible, as in a chain) they are not:
 * the mask is what makes the tree exact.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { ForwardModel, type StepInput } from '../../src/engine/forward/model.js';
import { runStep } from '../../src/engine/forward/step.js';
import { BLOCK_TOKENS, PagedKvCache } from '../../src/engine/kv/cache.js';
import { treeRows, type TokenTree } from '../../src/engine/token-tree.js';
import { openCheckpoint } from '../../src/io/safetensors-checkpoint.js';
import { ReferenceModel } from '../../src/model/reference.js';
import { openLocalModelDir } from '../../src/node/fs-model-dir.js';
import { floatSource } from '../../src/weights/float.js';
import { destroyWeights, loadWeights } from '../../src/weights/loader.js';
import { ARCH_CASES } from '../helpers/arch-cases.js';
import { writeTestModel, type TestModelOptions } from '../helpers/checkpoints.js';
import { expectClose, testGpu } from '../helpers/gpu.js';

/** The f32-arithmetic budget of test/model/models.test.ts (justified there). */
const LOGIT_ATOL = 1e-4;

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** 19 prompt tokens (past a 16-slot block), then a 7-node tree of 3 levels. */
const PROMPT = [1, ...Array.from({ length: 18 }, (_, i) => 3 + ((i * 29 + 5) % 90))];
const TREE: TokenTree = { tokens: [40, 41, 42, 43, 44, 45, 46], parents: [-1, -1, 0, 0, 1, 2, 4] };

const gemma3 = ARCH_CASES.find((c) => c.name.startsWith('Gemma 3'));
const CASES: [string, TestModelOptions][] = [
  ['Llama', { seed: 21 }],
  ...(gemma3 ? [['Gemma 3', gemma3.opts] as [string, TestModelOptions]] : []),
];

describe('token-tree rows in one forward pass', () => {
  test.each(CASES)(
    '%s: each node gets the logits of its path; a chain mask gives others',
    async (_, opts) => {
      const dir = mkdtempSync(join(tmpdir(), 'kiln-tree-'));
      dirs.push(dir);
      const spec = writeTestModel(dir, opts);
      const ckpt = await openCheckpoint(openLocalModelDir(dir));
      const ctx = await testGpu();
      const blocks = 4;
      try {
        const weights = await loadWeights(ctx, spec, ckpt, floatSource);
        const kv = await PagedKvCache.create(ctx, spec, blocks, 'f32');
        const fm = new ForwardModel(ctx, spec, weights, kv, 32, 0, 'f32', blocks * BLOCK_TOKENS);
        // Physical blocks in another order than logical ones.
        const table = [2, 0, 3, 1];
        const slot = (pos: number) =>
          (table[Math.floor(pos / BLOCK_TOKENS)] as number) * BLOCK_TOKENS + (pos % BLOCK_TOKENS);
        const p = PROMPT.length - 1;
        const prefill = Array.from({ length: p }, (_, i) => i);
        await runStep(
          fm,
          {
            tokens: PROMPT.slice(0, p),
            positions: prefill,
            slots: prefill.map(slot),
            blockTableOffsets: prefill.map(() => 0),
            blockTable: table,
            logitRows: [p - 1],
          },
          'logits',
        );
        const { depth, mask } = treeRows(TREE);
        const n = TREE.tokens.length;
        const verify = (masks: readonly number[]): StepInput => ({
          tokens: [PROMPT[p] as number, ...TREE.tokens],
          positions: [p, ...depth.map((d) => p + d)],
          slots: [slot(p), ...TREE.tokens.map((_, i) => slot(p + 1 + i))],
          blockTableOffsets: Array.from({ length: n + 1 }, () => 0),
          blockTable: table,
          logitRows: Array.from({ length: n + 1 }, (_, i) => i),
          tree: [undefined, ...masks.map((m) => ({ base: p + 1, mask: m }))],
        });
        const V = spec.vocabSize;
        const got = await runStep(fm, verify(mask), 'logits');
        // Making the two shapes' plans took time (what speculation's clock leaves out); the
        // second step of a shape makes none.
        const planned = fm.planningMs;
        expect(planned).toBeGreaterThan(0);
        // The same step with every earlier node visible (a chain's mask).
        const chain = await runStep(fm, verify(mask.map((_, i) => 2 ** (i + 1) - 1)), 'logits');
        expect(fm.planningMs).toBe(planned);
        fm.destroy();
        kv.destroy();
        destroyWeights(ctx, weights);
        const ref = await ReferenceModel.load(spec, ckpt);
        const path = (i: number): number[] => {
          const out: number[] = [];
          for (let at = i; at >= 0; at = TREE.parents[at] as number) out.unshift(TREE.tokens[at] as number);
          return out;
        };
        let wrong = 0;
        for (let r = 0; r <= n; r++) {
          const want = ref.forward([...PROMPT, ...(r === 0 ? [] : path(r - 1))]).at(-1) as Float64Array;
          expectClose(got.slice(r * V, (r + 1) * V), want, { atol: LOGIT_ATOL });
          const c = chain.slice(r * V, (r + 1) * V);
          wrong = Math.max(wrong, ...Array.from(want, (w, j) => Math.abs(w - (c[j] as number))));
        }
        // A modelling mistake moves logits by >= 1e-2 at these scales (models.test.ts).
        expect(wrong).toBeGreaterThan(1e-2);
      } finally {
        await ckpt.close();
      }
    },
    240_000,
  );
});

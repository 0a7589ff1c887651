/**
 * Speculative decoding under sampling keeps the output distribution (src/engine/schedule/verify.ts:
 * each row drawn with its own uniform, a guess accepted when it equals its row's draw). On
 * BabyLlama (a real trained model, 105-token vocabulary) with a prompt its continuation copies, so
 * guesses are both accepted and rejected often: 2000 seeded requests of 4 tokens each with and
 * without speculation, and a two-sample chi-square test of homogeneity on the 2nd, 3rd and 4th
 * tokens' distributions (the 2nd comes from a verifying step's first row, the 3rd and 4th from
 * rows after accepted guesses, or from the next step after a rejection).
 *
 * The two engines draw with disjoint seeds, so the samples are independent (with the same seed the
 * tokens coincide up to a sequence's first rejection: row i spends the uniform plain decoding
 * spends on that token). Here 2040 guesses drafted, 1888 accepted; chi-square 10.1, 12.8 and 14.7
 * on 7, 8 and 18 degrees of freedom (critical 24.5, 26.3, 42.4).
 *
 * Token trees (recycling, several candidates per level) get the same test on 1000 draws each of 6
 * tokens (here 2375 verifying steps, 9487 nodes drafted, 1281 accepted; chi-square 2.6, 0.8 and
 * 10.5 on 3, 6 and 10 degrees of freedom, critical 16.6, 22.7, 29.8).
 *
 * Significance: each test at alpha = 0.001 (six tests: at most 0.006 of falsely failing for a
 * correct rule). The test is not flaky: the seeds are fixed, the GPU sampler draws each row from
 * the request's seeded generator, so every run draws the same tokens and computes the same
 * statistic. That the counts can tell distributions apart is checked too: the 2nd token's
 * distribution against the 3rd's fails the same test.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import type { Engine } from '../../src/engine/engine.js';
import type { GenerateOptions } from '../../src/api/types.js';
import { convertLlama2cToFolder } from '../../src/node/convert.js';
import { createEngine } from '../../src/node/index.js';
import { sharedModel } from '../helpers/shared.js';

const DRAWS = 2000;
/** Requests in flight at once (batched, as a server would run them). */
const CONCURRENT = 250;
/** The upper 0.001 quantile of the standard normal (for Wilson–Hilferty below). */
const Z_999 = 3.0902;

let dir = '';
let plain: Engine;
let spec: Engine;
/** Recycling's token trees (several candidates per level, verified in one pass). */
let tree: Engine;
let prompt: number[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'kiln-spec-sampling-'));
  await convertLlama2cToFolder(sharedModel('babyllama-tok105', 'model5000.bin'), {
    outDir: dir,
    tokenizer: sharedModel('babyllama-tok105', 'tok105.model'),
  });
  const golden = (
    JSON.parse(readFileSync(sharedModel('babyllama-tok105', 'reference_greedy.json'), 'utf8')) as {
      greedy_ids_after_bos: number[];
    }
  ).greedy_ids_after_bos;
  // A story, then its opening again: the continuation tends to copy it, so lookup guesses well.
  prompt = [1, ...golden.slice(0, 60), ...golden.slice(0, 10)];
  plain = await createEngine({ model: dir });
  spec = await createEngine({ model: dir, speculative: { method: 'lookup', maxDraft: 4 } });
  tree = await createEngine({ model: dir, speculative: { method: 'recycling', maxDraft: 4 } });
}, 300_000);

afterAll(() => {
  plain?.dispose();
  spec?.dispose();
  tree?.dispose();
  rmSync(dir, { recursive: true, force: true });
});

async function draws(
  e: Engine,
  opts: GenerateOptions,
  firstSeed: number,
  p: readonly number[] = prompt,
  n = DRAWS,
): Promise<number[][]> {
  // The prompt's full KV blocks computed once, so every draw takes them from the prefix cache.
  await e.generate([...p], { maxTokens: 1, temperature: 0 }).result();
  const out: number[][] = [];
  for (let first = 0; first < n; first += CONCURRENT) {
    const seeds = Array.from({ length: Math.min(CONCURRENT, n - first) }, (_, i) => firstSeed + first + i);
    const got = await Promise.all(seeds.map((seed) => e.generate([...p], { ...opts, seed }).result()));
    out.push(...got.map((r) => r.tokenIds));
  }
  return out;
}

/**
 * Two-sample chi-square test of homogeneity over token ids: ids seen fewer than 10 times in both
 * samples together are pooled into one category, so every expected count is at least 5. Returns
 * the statistic and the critical value at alpha = 0.001 (Wilson–Hilferty's approximation of the
 * chi-square quantile, within 1% of it for the degrees of freedom seen here).
 */
function chiSquare(
  a: readonly number[],
  b: readonly number[],
): { stat: number; critical: number; df: number } {
  const count = (xs: readonly number[]) => {
    const m = new Map<number, number>();
    for (const x of xs) m.set(x, (m.get(x) ?? 0) + 1);
    return m;
  };
  const ca = count(a);
  const cb = count(b);
  const cells: [number, number][] = [];
  const rare: [number, number] = [0, 0];
  for (const id of new Set([...ca.keys(), ...cb.keys()])) {
    const x = ca.get(id) ?? 0;
    const y = cb.get(id) ?? 0;
    if (x + y >= 10) cells.push([x, y]);
    else {
      rare[0] += x;
      rare[1] += y;
    }
  }
  if (rare[0] + rare[1] > 0) cells.push(rare);
  const na = a.length;
  const nb = b.length;
  let stat = 0;
  for (const [x, y] of cells) {
    const ea = ((x + y) * na) / (na + nb);
    const eb = ((x + y) * nb) / (na + nb);
    stat += (x - ea) ** 2 / ea + (y - eb) ** 2 / eb;
  }
  const df = cells.length - 1;
  const h = 2 / (9 * df);
  return { stat, critical: df * (1 - h + Z_999 * Math.sqrt(h)) ** 3, df };
}

test('sampling: the same token distributions with and without speculation (chi-square, alpha 0.001)', async () => {
  const opts: GenerateOptions = {
    maxTokens: 4,
    temperature: 1.2,
    topK: 50,
    repetitionPenalty: 1.1,
    ignoreEos: true,
  };
  const before = spec.stats();
  const withSpec = await draws(spec, opts, 1);
  const after = spec.stats();
  const without = await draws(plain, opts, 1 + DRAWS);
  const drafted = after.draftedTokens - before.draftedTokens;
  const accepted = after.acceptedTokens - before.acceptedTokens;
  const tests = [1, 2, 3].map((k) =>
    chiSquare(
      withSpec.map((t) => t[k] as number),
      without.map((t) => t[k] as number),
    ),
  );
  const report = `drafted ${drafted}, accepted ${accepted}; ${tests
    .map(
      (r, k) =>
        `token ${k + 2}: chi-square ${r.stat.toFixed(1)} (df ${r.df}, critical ${r.critical.toFixed(1)})`,
    )
    .join('; ')}`;
  console.log(report);
  // Guesses were verified, and both accepted and rejected (both branches of the rule ran; with
  // these seeds 992 verifying steps, 1929 drafted, 1786 accepted: steps of 17-32 decoding
  // sequences verify nothing, their rows being all that split-K decode attention serves,
  // verify.ts guessShare).
  expect(after.speculativeSteps - before.speculativeSteps, report).toBeGreaterThan(DRAWS / 4);
  expect(accepted, report).toBeGreaterThan(drafted / 2);
  expect(drafted - accepted, report).toBeGreaterThan(50);
  for (const r of tests) {
    expect(r.df).toBeGreaterThan(1);
    expect(r.stat, report).toBeLessThan(r.critical);
  }
  // The test can tell distributions apart: the 2nd token against the 3rd differ by far.
  const shifted = chiSquare(
    withSpec.map((t) => t[1] as number),
    without.map((t) => t[2] as number),
  );
  expect(shifted.stat).toBeGreaterThan(shifted.critical);
  expect(spec.stats().blocksUsed).toBe(0);
}, 1_500_000);

test('sampling with token trees: the same token distributions (chi-square, alpha 0.001)', async () => {
  // Recycling's trees: a node's row is drawn after its path, and the path goes on to the child
  // equal to the draw (verify.ts), the repetition penalty counting the node's path. Greedy
  // decoding of the prompt first fills the table. 1000 draws each.
  const opts: GenerateOptions = {
    maxTokens: 6,
    temperature: 1.2,
    topK: 50,
    repetitionPenalty: 1.1,
    ignoreEos: true,
  };
  const n = DRAWS / 2;
  await tree.generate(prompt, { maxTokens: 60, temperature: 0, ignoreEos: true }).result();
  const before = tree.stats();
  const withTree = await draws(tree, opts, 1 + 2 * DRAWS, prompt, n);
  const after = tree.stats();
  const without = await draws(plain, opts, 1 + 3 * DRAWS, prompt, n);
  const steps = after.speculativeSteps - before.speculativeSteps;
  const drafted = after.draftedTokens - before.draftedTokens;
  const accepted = after.acceptedTokens - before.acceptedTokens;
  const tests = [1, 2, 3].map((k) =>
    chiSquare(
      withTree.map((t) => t[k] as number),
      without.map((t) => t[k] as number),
    ),
  );
  const report = `${steps} verifying steps, drafted ${drafted}, accepted ${accepted}; ${tests
    .map(
      (r, k) =>
        `token ${k + 2}: chi-square ${r.stat.toFixed(1)} (df ${r.df}, critical ${r.critical.toFixed(1)})`,
    )
    .join('; ')}`;
  console.log(report);
  // Trees were verified (a sequence's first verifying step is a chain of at most 4 here, its
  // later ones trees after a miss: over 3 nodes per step in all), and guesses both accepted and
  // rejected.
  expect(steps, report).toBeGreaterThan(DRAWS / 4);
  expect(drafted / steps, report).toBeGreaterThan(3);
  expect(accepted, report).toBeGreaterThan(200);
  for (const r of tests) {
    expect(r.df).toBeGreaterThan(1);
    expect(r.stat, report).toBeLessThan(r.critical);
  }
  expect(tree.stats().blocksUsed).toBe(0);
}, 1_500_000);

/**
 * RMSNorm folded into the following matmul (src/kernels/rms-fold.ts) end to end on BabyLlama (a
 * real trained model): its 200 golden greedy ids with the fold and with the separate rmsnorm, the
 * decode step's dispatches (one fewer per folded norm: qkv and gate/up in each of its 5 layers and
 * the LM head), and the option's validation.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { InvalidRequestError } from '../../src/errors.js';
import { convertLlama2cToFolder } from '../../src/node/convert.js';
import { createEngine } from '../../src/node/index.js';
import { sharedModel } from '../helpers/shared.js';

let dir = '';
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'kiln-normfold-'));
  await convertLlama2cToFolder(sharedModel('babyllama-tok105', 'model5000.bin'), {
    outDir: dir,
    tokenizer: sharedModel('babyllama-tok105', 'tok105.model'),
  });
}, 120_000);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('RMSNorm folded into the matmul prologue', () => {
  test('BabyLlama: the 200 golden greedy ids folded and separate; the fold saves 2 dispatches a layer + 1', async () => {
    const golden = (
      JSON.parse(readFileSync(sharedModel('babyllama-tok105', 'reference_greedy.json'), 'utf8')) as {
        greedy_ids_after_bos: number[];
      }
    ).greedy_ids_after_bos.slice(0, 200);
    expect(golden).toHaveLength(200);
    const counts: Record<string, number> = {};
    const folded: Record<string, number> = {};
    for (const normFold of ['fold', 'separate'] as const) {
      // The cpu row of the defaults picks the one-row GEMM tile at M = 1 (the kernel with the prologue).
      const engine = await createEngine({ model: dir, normFold, kernelDefaults: 'cpu' });
      try {
        const r = await engine.generate([1], { maxTokens: 200, temperature: 0, ignoreEos: true }).result();
        expect(r.tokenIds, normFold).toEqual(golden);
        const profile = await engine.profileDecode(64);
        counts[normFold] = profile.reduce((n, p) => n + p.count, 0);
        folded[normFold] = profile.filter((p) => p.label.endsWith('_rms')).reduce((n, p) => n + p.count, 0);
        // BabyLlama's 128-wide rows take rmsnorm_lanes when not folded (kernels/rmsnorm.ts).
        expect(
          profile.some((p) => p.label === 'rmsnorm' || p.label === 'rmsnorm_lanes'),
          normFold,
        ).toBe(normFold === 'separate');
      } finally {
        engine.dispose();
      }
    }
    const layers = 5;
    expect(folded.separate).toBe(0);
    expect(folded.fold).toBe(2 * layers + 1);
    expect(counts.separate! - counts.fold!).toBe(2 * layers + 1);
  }, 300_000);

  test('a bad normFold is an InvalidRequestError naming the field', async () => {
    const err = await createEngine({ model: dir, normFold: 'fused' as 'fold' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidRequestError);
    expect((err as Error).message).toBe("normFold must be 'fold' or 'separate', got fused");
  });
});

/**
 * Property-based fuzzing of every parser of untrusted model files (bench/fuzz/targets.ts), with
 * fixed seeds: random and mutated inputs must end in success or a Kiln error class, never a crash,
 * a hang (10 s per case) or a read past twice the file. A few hundred cases per parser here;
 * `npm run bench:fuzz` runs the long version.
 */
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { loadFuzzData } from '../../bench/fuzz/data.js';
import { runFuzz } from '../../bench/fuzz/run.js';
import { fileTargets } from '../../bench/fuzz/targets.js';
import { repoRoot } from '../helpers/shared.js';

const targets = fileTargets(loadFuzzData(join(repoRoot, '..', 'shared')));
/** Per target; the tokenizer's cases build a tokenizer each, so it gets fewer. */
const RUNS: Record<string, number> = { 'tokenizer_config.json + chat template': 150 };

describe('fuzzing the parsers (fixed seeds)', () => {
  for (const [i, target] of targets.entries()) {
    test(target.name, async () => {
      const r = await runFuzz(target, { seed: 0x4b1e + i, numRuns: RUNS[target.name] ?? 300 });
      // Both kinds of ending must occur, or the inputs are not reaching the parser's checks.
      expect(r.outcomes.ok ?? 0, JSON.stringify(r.outcomes)).toBeGreaterThan(0);
      expect(r.cases - (r.outcomes.ok ?? 0), JSON.stringify(r.outcomes)).toBeGreaterThan(0);
    });
  }
});

/**
 * The long fuzz run: every parser target (and, with --http, `kiln serve` on loopback over BabyLlama
 * converted from ../shared) for --runs cases each or --minutes per target, from --seed.
 *   npm run bench:fuzz -- [--runs N] [--minutes M] [--seed S] [--only NAME] [--http]
 * Prints one JSON line per target (cases, outcomes by Kiln error class, slowest case); a crash
 * prints fast-check's counterexample and seed and exits 1.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { convertLlama2cToFolder } from '../src/node/convert.js';
import { createEngine } from '../src/node/index.js';
import { startServer } from '../src/node/serve.js';
import { loadFuzzData } from './fuzz/data.js';
import { httpTarget } from './fuzz/http.js';
import { runFuzz } from './fuzz/run.js';
import type { FuzzTarget } from './fuzz/harness.js';
import { fileTargets } from './fuzz/targets.js';

function flag(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

// dist/dev/bench/fuzz.js or bench/fuzz.ts: the shared folder sits beside the repository.
const here = dirname(fileURLToPath(import.meta.url));
const repo = here.includes(`${join('dist', 'dev')}`) ? resolve(here, '../../..') : resolve(here, '..');
const shared = flag('--shared') ?? resolve(repo, '..', 'shared');
const minutes = flag('--minutes');
const runs = Number(flag('--runs') ?? (minutes ? 1e9 : 10_000));
const seed = Number(flag('--seed') ?? 1);
const only = flag('--only');

const targets: FuzzTarget[] = fileTargets(loadFuzzData(shared));
let cleanup = async (): Promise<void> => undefined;
if (process.argv.includes('--http')) {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-fuzz-'));
  await convertLlama2cToFolder(join(shared, 'models', 'babyllama-tok105', 'model5000.bin'), {
    outDir: dir,
    tokenizer: join(shared, 'models', 'babyllama-tok105', 'tok105.model'),
  });
  const engine = await createEngine({ model: dir });
  const server = await startServer({ engine, modelId: 'babyllama', port: 0 });
  targets.push(httpTarget(server.url, 'babyllama') as FuzzTarget);
  cleanup = async () => {
    await server.close(1000);
    engine.dispose();
    rmSync(dir, { recursive: true, force: true });
  };
}

let failed = false;
for (const target of targets) {
  if (only && !target.name.includes(only)) continue;
  try {
    const r = await runFuzz(target, {
      seed,
      numRuns: runs,
      // A valid request may generate up to the whole context (max_tokens null): seconds, not hangs.
      caseTimeoutMs: target.name.startsWith('HTTP') ? 60_000 : 10_000,
      ...(minutes ? { timeLimitMs: Number(minutes) * 60_000 } : {}),
    });
    console.log(JSON.stringify({ ...r, slowestMs: Math.round(r.slowestMs), wallMs: Math.round(r.wallMs) }));
  } catch (e) {
    failed = true;
    console.log(JSON.stringify({ target: target.name, seed, failure: (e as Error).message }));
  }
}
await cleanup();
process.exit(failed ? 1 : 0);

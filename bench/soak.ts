/**
 * The soak test of `kiln serve` (bench/soak/run.ts) from the command line:
 *   npm run bench:soak -- [--minutes M] [--concurrency C] [--model DIR] [--seed S] [--json FILE]
 * Without --model it serves BabyLlama, converted from ../shared into a temporary folder. Prints a
 * sample line every 10 s, then the report: a Markdown table and, with --json, the whole report.
 * Exits 1 if a request did not end, an unintended error occurred, or KV blocks stayed in use.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { convertLlama2cToFolder } from '../src/node/convert.js';
import { runSoak, type SoakReport } from './soak/run.js';

function flag(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const here = dirname(fileURLToPath(import.meta.url));
const repo = here.includes(join('dist', 'dev')) ? resolve(here, '../../..') : resolve(here, '..');
const shared = flag('--shared') ?? resolve(repo, '..', 'shared');
let model = flag('--model');
let tmp: string | undefined;
if (!model) {
  tmp = mkdtempSync(join(tmpdir(), 'kiln-soak-'));
  await convertLlama2cToFolder(join(shared, 'models', 'babyllama-tok105', 'model5000.bin'), {
    outDir: tmp,
    tokenizer: join(shared, 'models', 'babyllama-tok105', 'tok105.model'),
  });
  model = tmp;
}

const report: SoakReport = await runSoak({
  kiln: join(repo, 'bin', 'kiln.js'),
  model,
  durationMs: Number(flag('--minutes') ?? 2) * 60_000,
  concurrency: Number(flag('--concurrency') ?? 8),
  seed: Number(flag('--seed') ?? 1),
  log: (line) => console.error(line),
});
if (tmp) rmSync(tmp, { recursive: true, force: true });

console.log(markdown(report));
const out = flag('--json');
if (out) writeFileSync(out, JSON.stringify(report, null, 2));
process.exit(report.unfinished === 0 && report.unexpected === 0 && report.final.kv_blocks_used === 0 ? 0 : 1);

function markdown(r: SoakReport): string {
  const first = r.samples.find((s) => s.t_s >= r.duration_s * 0.2) ?? r.samples[0];
  const last = r.samples[r.samples.length - 1];
  const rows: [string, string][] = [
    ['duration, concurrency', `${r.duration_s} s, ${r.concurrency}`],
    ['requests (unfinished)', `${r.requests} (${r.unfinished})`],
    [
      'outcomes',
      Object.entries(r.outcomes)
        .map(([k, n]) => `${k} ${n}`)
        .join(', '),
    ],
    ['unintended errors', String(r.unexpected)],
    ['time to first token p50 / p99', `${r.ttft_ms.p50} / ${r.ttft_ms.p99} ms (${r.ttft_ms.n} streams)`],
    ['inter-token latency p50 / p99', `${r.itl_ms.p50} / ${r.itl_ms.p99} ms (${r.itl_ms.n} gaps)`],
    ['tokens streamed or returned', String(r.tokens)],
    [
      'RSS after warm-up -> end (slope)',
      `${first?.rss_mib} -> ${last?.rss_mib} MiB (${r.slopes_per_hour.rss_mib} MiB/h)`,
    ],
    [
      'JS heap after warm-up -> end (slope)',
      `${first?.heap_mib} -> ${last?.heap_mib} MiB (${r.slopes_per_hour.heap_mib} MiB/h)`,
    ],
    [
      'GPU buffers min / max (slope)',
      `${Math.min(...r.samples.map((s) => s.gpu_buffers))} / ${Math.max(...r.samples.map((s) => s.gpu_buffers))} (${r.slopes_per_hour.gpu_buffers}/h)`,
    ],
    [
      'KV blocks in use: peak sampled / at the end',
      `${Math.max(...r.samples.map((s) => s.kv_blocks_used))} / ${r.final.kv_blocks_used}`,
    ],
  ];
  return ['| soak | |', '|---|---|', ...rows.map(([a, b]) => `| ${a} | ${b} |`)].join('\n');
}

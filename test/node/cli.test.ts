/**
 * The `kiln` command end to end: the real CLI (bin/kiln.js over dist/, built by `npm test`) run as a
 * subprocess. The acceptance test converts the real llama2.c babyllama checkpoint and checks its
 * greedy output against the golden ids of a float64 reference; the rest covers streaming, the
 * catalog, help, hostile inputs (one clean `kiln:` line, no stack unless --verbose, no hang), pull
 * from a local Hub-layout server and offline use of the cache, and chat over piped stdin.
 */
import { spawn } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CATALOG } from '../../src/model/catalog.js';
import { encodeSafetensors, type TensorToWrite } from '../../src/io/safetensors-writer.js';
import type { SafetensorsDtype } from '../../src/io/dtype.js';
import { dawnGpu } from '../../src/node/dawn.js';
import { createEngine, openLocalModelDir } from '../../src/node/index.js';
import { KilnTokenizer } from '../../src/io/tokenizer.js';
import { writeTestModel } from '../helpers/checkpoints.js';
import { LocalHub, type RepoFile } from '../helpers/local-hub.js';
import { CONVERTED_FILES, repoRoot, sharedModel } from '../helpers/shared.js';

const KILN = join(repoRoot, 'bin', 'kiln.js');
const tmp = mkdtempSync(join(tmpdir(), 'kiln-cli-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

interface Reference {
  bos: number;
  greedy_ids_after_bos: number[];
  first_positions: { pos: number; input_token: number; logits_first8: number[]; top5: [number, number][] }[];
}
const BABY = 'babyllama-tok105';
const ref = JSON.parse(readFileSync(sharedModel(BABY, 'reference_greedy.json'), 'utf8')) as Reference;
const golden = ref.greedy_ids_after_bos;
const goldenText = readFileSync(sharedModel(BABY, 'greedy_t0_n256.runc.txt'), 'utf8');

interface Result {
  code: number | null;
  timedOut: boolean;
  stdout: string;
  /** stderr without Dawn's own "Warning: ..." lines (printed natively at adapter creation on lavapipe). */
  stderr: string;
  /** The non-empty lines of `stderr`. */
  lines: string[];
}

/** Runs `node bin/kiln.js ...args` from the repository root; kills it after `timeoutMs`. */
function kiln(
  args: string[],
  opts: {
    env?: Record<string, string>;
    input?: string;
    timeoutMs?: number;
    /** Close our end of stdout after the first chunk, as `| head -c 10` would. */
    closeStdoutEarly?: boolean;
  } = {},
): Promise<Result> {
  const env: Record<string, string | undefined> = {
    ...process.env,
    XDG_RUNTIME_DIR: '/tmp',
    XDG_CACHE_HOME: join(tmp, 'cache-default'),
    // Never the real Hub: nothing listens on port 9.
    HF_ENDPOINT: 'http://127.0.0.1:9',
    HF_TOKEN: undefined,
    // Mesa keeps its shader cache under XDG_CACHE_HOME too: pin it to where it lives for this process,
    // or every fresh cache folder would recompile every pipeline (~5 s a start on lavapipe).
    MESA_SHADER_CACHE_DIR:
      process.env.MESA_SHADER_CACHE_DIR ?? process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'),
    ...opts.env,
  };
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [KILN, ...args], { cwd: repoRoot, env, stdio: 'pipe' });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout.setEncoding('utf8').on('data', (s: string) => {
      stdout += s;
      if (opts.closeStdoutEarly) child.stdout.destroy();
    });
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, opts.timeoutMs ?? 60_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      const kept = stderr.split('\n').filter((l) => !l.startsWith('Warning: '));
      resolve({
        code,
        timedOut,
        stdout,
        stderr: kept.join('\n'),
        lines: kept.filter((l) => l.trim() !== ''),
      });
    });
    child.stdin.end(opts.input ?? '');
  });
}

/** A clean failure: non-zero exit, one `kiln:` line on stderr naming the problem, no stack. */
function expectCleanError(r: Result, ...patterns: (RegExp | string)[]): void {
  expect(r.timedOut, 'timed out').toBe(false);
  expect(r.code, r.stderr).not.toBe(0);
  expect(r.code).not.toBeNull();
  expect(r.lines, r.stderr).toHaveLength(1);
  const line = r.lines[0]!;
  expect(line).toMatch(/^kiln: /);
  expect(r.stderr).not.toMatch(/^\s+at /m);
  for (const p of patterns) {
    if (typeof p === 'string') expect(line).toContain(p);
    else expect(line).toMatch(p);
  }
}

/** With --verbose the same message comes first, then the stack. */
function expectVerboseError(r: Result, message: string): void {
  expect(r.timedOut).toBe(false);
  expect(r.code).not.toBe(0);
  expect(r.lines[0]).toBe(message);
  expect(r.stderr).toMatch(/^ {4}at /m);
}

let counter = 0;
function fresh(name: string): string {
  return join(tmp, `${name}-${counter++}`);
}

// ---- fixtures: the converted babyllama (via the CLI) and a tiny random test model ----

/** `kiln convert llama2c` of the babyllama checkpoint and its tokenizer into `out`. */
function convertBaby(out: string, ...extra: string[]): Promise<Result> {
  const model = sharedModel(BABY, 'model5000.bin');
  return kiln([
    'convert',
    'llama2c',
    model,
    '--tokenizer',
    sharedModel(BABY, 'tok105.model'),
    '--out',
    out,
    ...extra,
  ]);
}

let baby = '';
let convertResult: Result;
let tiny = '';

beforeAll(async () => {
  baby = join(tmp, 'babyllama');
  tiny = join(tmp, 'tiny');
  writeTestModel(tiny, { seed: 3 });
  convertResult = await convertBaby(baby);
});

interface RunJson {
  text: string;
  token_ids: number[];
  prompt_token_ids: number[];
  finish_reason: string;
  timings: { load_ms: number; prefill_tokens_per_s: number; decode_tokens_per_s: number };
  adapter: { vendor: string; description: string; features: string[] };
}

/** stdout must be exactly one JSON object (and a newline). */
function parseOneJson(stdout: string): RunJson {
  expect(stdout.endsWith('}\n')).toBe(true);
  expect(stdout.trimEnd().split('\n')).toHaveLength(1);
  return JSON.parse(stdout) as RunJson;
}

async function decodeWith(dir: string, ids: number[]): Promise<string> {
  return (await KilnTokenizer.load(openLocalModelDir(dir))).decode(ids);
}

describe('kiln convert llama2c + kiln run (acceptance: babyllama vs the float64 reference)', () => {
  it('converts model5000.bin and greedily reproduces the first 200 golden ids', async () => {
    expect(convertResult.code, convertResult.stderr).toBe(0);
    expect(convertResult.stdout).toBe('');
    expect(readdirSync(baby).sort()).toEqual([...CONVERTED_FILES].sort());
    expect(convertResult.stderr).toContain(`to ${baby}`);

    const r = await kiln(
      ['run', '--model', baby, '--prompt', '', '--max-tokens', '200', '--temperature', '0', '--json'],
      {
        timeoutMs: 110_000,
      },
    );
    expect(r.code, r.stderr).toBe(0);
    const out = parseOneJson(r.stdout);
    expect(out.prompt_token_ids).toEqual([ref.bos]);
    expect(out.token_ids).toEqual(golden.slice(0, 200));
    expect(out.finish_reason).toBe('length');
    // Decode check: the text is the start of what llama2.c's run.c printed for the same ids.
    expect(out.text.length).toBeGreaterThan(150);
    expect(goldenText.startsWith(out.text)).toBe(true);
    expect(out.text).toBe(await decodeWith(baby, golden.slice(0, 200)));
    for (const k of ['load_ms', 'prefill_tokens_per_s', 'decode_tokens_per_s'] as const) {
      expect(typeof out.timings[k]).toBe('number');
      expect(out.timings[k]).toBeGreaterThan(0);
    }
    expect(typeof out.adapter.vendor).toBe('string');
    expect(typeof out.adapter.description).toBe('string');
    expect(Array.isArray(out.adapter.features)).toBe(true);
  });

  it('decode attention: async softmax (calibrated phi), exact two-pass and the single pass give the golden ids', async () => {
    // The generic defaults split BabyLlama's 256-token context (4 splits of 64): the split-K chains.
    // The cpu row (this adapter's) runs it in one split: the single pass, whatever the softmax.
    for (const [mode, kernelDefaults] of [
      ['async', 'generic'],
      ['two_pass', 'generic'],
      ['async', 'auto'],
    ] as const) {
      const engine = await createEngine({ model: baby, attentionSoftmax: mode, kernelDefaults });
      try {
        const r = await engine.generate([1], { maxTokens: 200, temperature: 0 }).result();
        expect(r.tokenIds, `${mode} ${kernelDefaults}`).toEqual(golden.slice(0, 200));
        // The first 8 decode steps calibrate phi per layer (then the plan switches kernels).
        const phi = (engine as unknown as { forward: { attentionPhi: (number | null)[] } }).forward
          .attentionPhi;
        if (mode === 'async') {
          expect(phi.every((v) => typeof v === 'number' && Number.isFinite(v))).toBe(true);
        } else expect(phi.every((v) => v === null)).toBe(true);
      } finally {
        engine.dispose();
      }
    }
  });

  it('f16 activations keep the golden greedy ids; an adapter without shader-f16 refuses them', async () => {
    const engine = await createEngine({ model: baby, activations: 'f16' });
    try {
      // The normed activations are rounded once to f16 (2⁻¹¹ relative) before the q/k/v, gate/up and
      // LM-head matmuls; over the first 64 golden steps the f32 top-1/top-2 margin is at least 0.87
      // (see the logits test below), far above what that rounding moves a logit here.
      const r = await engine.generate([1], { maxTokens: 64, temperature: 0 }).result();
      expect(r.tokenIds).toEqual(golden.slice(0, 64));
    } finally {
      engine.dispose();
    }
    // A device created without shader-f16 (Dawn's adapter, no features requested).
    const gpu = dawnGpu();
    const adapter = await gpu.requestAdapter();
    const device = await adapter!.requestDevice();
    try {
      await expect(createEngine({ model: baby, device, activations: 'f16' })).rejects.toThrow(
        /activations 'f16' needs the shader-f16 feature/,
      );
    } finally {
      device.destroy();
    }
  });

  it('the logits of the first positions match the reference within 1e-3 (library)', async () => {
    // An f32 KV cache: 1e-3 bounds f32 arithmetic; the default f16 cache (with shader-f16) rounds
    // K/V to 11 bits and moves these logits by ~1e-3 (its golden ids: test/engine/kv-f16.test.ts).
    const engine = await createEngine({ model: baby, kvCache: 'f32' });
    try {
      const rows = await engine.logits([1, 3, 34]);
      expect(ref.first_positions.map((p) => p.input_token)).toEqual([1, 3, 34]);
      for (const p of ref.first_positions) {
        const row = rows[p.pos]!;
        p.logits_first8.forEach((v, i) =>
          expect(Math.abs(row[i]! - v), `pos ${p.pos} logit ${i}`).toBeLessThan(1e-3),
        );
        const top = [...row.keys()].sort((a, b) => row[b]! - row[a]!).slice(0, 5);
        expect(top).toEqual(p.top5.map(([id]) => id));
        for (const [id, v] of p.top5) expect(Math.abs(row[id]! - v)).toBeLessThan(1e-3);
      }
      // Teacher-forced over the first 64 golden steps: every argmax is the golden id, and the f32
      // top-1/top-2 margin never drops below 0.5 (measured minimum 0.87). That margin is what lets
      // the f16/bf16 conversions below keep the same 64 greedy ids.
      const ids = [1, ...golden.slice(0, 63)];
      const tf = await engine.logits(ids);
      let minMargin = Infinity;
      tf.forEach((row, t) => {
        const order = [...row.keys()].sort((a, b) => row[b]! - row[a]!);
        expect(order[0], `step ${t}`).toBe(golden[t]);
        minMargin = Math.min(minMargin, row[order[0]!]! - row[order[1]!]!);
      });
      expect(minMargin).toBeGreaterThan(0.5);
    } finally {
      engine.dispose();
    }
  });

  // Reduced precision: f16 rounds every weight to 11 significant bits (relative error <= 2^-11),
  // bf16 to 8 (<= 2^-8). Measured against the f32 conversion over the golden sequence, that moves
  // the logits by at most ~0.016 (f16) and ~0.13 (bf16). Over the first 64 steps the golden top-1 /
  // top-2 margin is >= 0.87 (asserted above to be > 0.5), so neither can flip an argmax there. Later
  // the margin falls to 0.041 (step 142: bf16 does pick another id there) and 0.002 (step 237), so
  // matching further would be luck, not correctness: the test asserts the first 64 ids.
  for (const dtype of ['f16', 'bf16'] as const) {
    it(`convert --dtype ${dtype} keeps the first 64 greedy ids`, async () => {
      const out = fresh(`baby-${dtype}`);
      const c = await convertBaby(out, '--dtype', dtype);
      expect(c.code, c.stderr).toBe(0);
      const config = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')) as { torch_dtype: string };
      expect(config.torch_dtype).toBe(dtype === 'f16' ? 'float16' : 'bfloat16');
      const r = await kiln(['run', '-m', out, '-p', '', '-n', '64', '--json']);
      expect(r.code, r.stderr).toBe(0);
      expect(parseOneJson(r.stdout).token_ids).toEqual(golden.slice(0, 64));
    });
  }
});

describe('kiln tune', () => {
  it('tunes, caches per adapter, and a second run finds everything in the cache', async () => {
    const env = { XDG_CACHE_HOME: fresh('tune-cache') };
    // --context 4: prefill chunks of 4 rows, so the classes are M = 1 and 2-4 (the test's time).
    const args = ['tune', '--model', baby, '--context', '4', '--budget-s', '600', '--json'];
    type Row = {
      kernel: string;
      shape_class: string;
      default_ms: number;
      best_ms: number;
      speedup: number;
      candidates_tried: number;
      best_variant: string;
    };
    // A run tunes nothing itself (it would slow its own steps): it says how far tuning is and
    // what finishes it, and tunes nothing however long its budget.
    const short = ['run', '--model', baby, '--context', '4', '--prompt', '', '--max-tokens', '3'];
    const untuned = await kiln([...short, '--temperature', '0', '--tune-budget', '600'], { env });
    expect(untuned.code, untuned.stderr).toBe(0);
    expect(untuned.stderr).toMatch(
      /\[kernel tuning: 0 of \d+ shape classes tuned for this adapter; `kiln tune --model \S+` tunes the rest\]/,
    );
    expect(existsSync(join(env.XDG_CACHE_HOME, 'kiln', 'tuning'))).toBe(false);
    // A forced row of the kernel defaults is what the report's defaults are.
    const forced = await kiln(
      [
        'tune',
        '--model',
        baby,
        '--context',
        '4',
        '--budget-s',
        '0.001',
        '--json',
        '--kernel-defaults',
        'generic',
      ],
      { env: { XDG_CACHE_HOME: fresh('tune-generic') } },
    );
    expect(forced.code, forced.stderr).toBe(0);
    expect((JSON.parse(forced.stdout) as { kernel_defaults: string }).kernel_defaults).toBe('generic');
    const first = await kiln(args, { env, timeoutMs: 600_000 });
    expect(first.code, first.stderr).toBe(0);
    expect(first.stdout.trimEnd().split('\n')).toHaveLength(1);
    const a = JSON.parse(first.stdout) as {
      adapter: string;
      kernel_defaults: string;
      budget_s: number;
      elapsed_s: number;
      classes: Row[];
      skipped: string[];
    };
    expect(a.adapter).toMatch(/\S/);
    expect(a.kernel_defaults).toMatch(/^(cpu|generic|gpu-discrete|gpu-integrated)$/);
    expect(a.budget_s).toBe(600);
    expect(a.skipped).toEqual([]);
    expect(a.classes.length).toBeGreaterThanOrEqual(10);
    for (const c of a.classes) {
      expect(Object.keys(c)).toEqual(
        expect.arrayContaining([
          'kernel',
          'shape_class',
          'default_ms',
          'best_ms',
          'speedup',
          'candidates_tried',
          'best_variant',
        ]),
      );
      expect(c.candidates_tried).toBeGreaterThan(0);
      expect(c.speedup).toBeCloseTo(c.default_ms / c.best_ms, 2);
    }
    const files = readdirSync(join(env.XDG_CACHE_HOME, 'kiln', 'tuning'));
    expect(files).toHaveLength(1);
    const second = await kiln(args, { env });
    expect(second.code, second.stderr).toBe(0);
    const b = JSON.parse(second.stdout) as { elapsed_s: number; classes: Row[] };
    expect(b.elapsed_s).toBeLessThan(1);
    expect(b.classes.map((c) => c.shape_class)).toEqual(a.classes.map((c) => c.shape_class));
    expect(b.classes.every((c) => c.candidates_tried === 0)).toBe(true);
    expect(b.classes.map((c) => c.best_variant)).toEqual(a.classes.map((c) => c.best_variant));
    // Everything tuned: no hint.
    const tuned = await kiln([...short, '--temperature', '0'], { env });
    expect(tuned.code, tuned.stderr).toBe(0);
    expect(tuned.stderr).toMatch(/prompt tokens/);
    expect(tuned.stderr).not.toMatch(/kernel tuning/);
    // kiln run picks the cached choices up and still produces the golden ids.
    const r = await kiln(
      ['run', '--model', baby, '--prompt', '', '--max-tokens', '64', '--temperature', '0', '--json'],
      { env },
    );
    expect(r.code, r.stderr).toBe(0);
    expect(parseOneJson(r.stdout).token_ids).toEqual(golden.slice(0, 64));
  }, 900_000);
});

describe('kiln bench decode', () => {
  it('--json reports per batch size wall ms, GPU ms per step and their ratio', async () => {
    const r = await kiln(
      [
        'bench',
        'decode',
        '--model',
        baby,
        '--batch',
        '1,2',
        '--tokens',
        '8',
        '--prompt-tokens',
        '4',
        '--json',
      ],
      { timeoutMs: 300_000 },
    );
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as {
      adapter: { timestampQuery: boolean };
      rows: {
        batch: number;
        steps: number;
        wall_ms_per_step: number;
        gpu_ms_per_step: number | null;
        gpu_busy_ratio: number | null;
      }[];
    };
    expect(out.rows.map((row) => row.batch)).toEqual([1, 2]);
    for (const row of out.rows) {
      expect(row.steps).toBeGreaterThan(0);
      expect(row.wall_ms_per_step).toBeGreaterThan(0);
      if (!out.adapter.timestampQuery) {
        expect(row.gpu_ms_per_step).toBeNull();
        continue;
      }
      expect(row.gpu_ms_per_step).toBeGreaterThan(0);
      expect(row.gpu_busy_ratio).toBeCloseTo((row.gpu_ms_per_step as number) / row.wall_ms_per_step, 1);
    }
  }, 300_000);
});

describe('kiln bench decode --speculative', () => {
  it('--json reports plain and speculative rates, their ratio and the accepted guesses per step', async () => {
    const args = [
      'bench',
      'decode',
      '--model',
      baby,
      '--batch',
      '1',
      '--tokens',
      '24',
      '--prompt-tokens',
      '4',
    ];
    const r = await kiln([...args, '--speculative', 'both', '--rounds', '2', '--json'], {
      timeoutMs: 300_000,
    });
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as {
      speculative: string;
      rows: {
        batch: number;
        rounds: number;
        plain_tokens_per_s: number;
        speculative_tokens_per_s: number;
        speedup: number;
        verifying_steps: number;
        drafted_per_verifying_step: number;
        accepted_per_verifying_step: number;
      }[];
    };
    expect(out.speculative).toBe('both');
    const row = out.rows[0];
    expect(row?.batch).toBe(1);
    expect(row?.rounds).toBe(2);
    expect(row?.plain_tokens_per_s).toBeGreaterThan(0);
    expect(row?.speculative_tokens_per_s).toBeGreaterThan(0);
    expect(row?.verifying_steps).toBeGreaterThan(0);
    expect(row?.drafted_per_verifying_step).toBeGreaterThanOrEqual(1);
    expect(row?.accepted_per_verifying_step).toBeLessThanOrEqual(row?.drafted_per_verifying_step as number);
    // The ratio reported is of the rates measured in the same run (a median of per-round ratios).
    expect(row?.speedup).toBeGreaterThan(0);
  }, 300_000);

  it('--copy: a prompt the continuation copies, where prompt lookup accepts most of its guesses', async () => {
    const args = ['bench', 'decode', '--model', baby, '--batch', '1', '--tokens', '24', '--copy'];
    const r = await kiln([...args, '--speculative', 'lookup', '--rounds', '1', '--json'], {
      timeoutMs: 300_000,
    });
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as {
      task: string;
      rows: { prompt_tokens: number; verifying_steps: number; accepted_per_verifying_step: number }[];
    };
    expect(out.task).toBe('copy');
    const row = out.rows[0];
    // BOS, 24 + 16 greedy tokens, then BOS and their first 10 again.
    expect(row?.prompt_tokens).toBe(1 + 40 + 1 + 10);
    expect(row?.verifying_steps).toBeGreaterThan(0);
    // The continuation is the prompt's text again, so every n-gram lookup finds its place and
    // nearly every guess holds (drafts grow 2, 3, 4 deep); the arbitrary-id prompts of the
    // default task accept well under one per step on this model.
    expect(row?.accepted_per_verifying_step).toBeGreaterThanOrEqual(2);
  }, 300_000);

  it('--copy without --speculative is refused', async () => {
    const r = await kiln(['bench', 'decode', '--model', baby, '--copy']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('--copy is a --speculative task');
  });
});

describe('kiln run / models / help', () => {
  it('eval --kv-cache int8 --generated: the quality cost against the same model with f16 KV', async () => {
    const r = await kiln([
      'eval',
      '--model',
      baby,
      '--kv-cache',
      'int8',
      '--generated',
      '64',
      '--json',
      '--quiet',
    ]);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout) as { tokens: number; kl_mean: number; top1_agreement: number };
    expect(j.tokens).toBe(63);
    // int8 rows move the logits a little (BabyLlama on 256 tokens: KL 5.5e-5, README), never
    // nothing: a KL of exactly 0 would mean both engines read the same cache.
    expect(j.kl_mean).toBeGreaterThan(0);
    expect(j.kl_mean).toBeLessThan(1e-2);
    expect(j.top1_agreement).toBeGreaterThan(0.9);
    const both = await kiln(['eval', '--model', baby, '--generated', '8', '--text', 'x.txt']);
    expect(both.code).not.toBe(0);
    expect(both.stderr).toMatch(/exactly one of --text FILE and --generated N/);
  });

  it('eval --rows-per-step 1: a cache written as decoding writes it still gets its low-rank factors', async () => {
    const kl = async (kvCache: string) => {
      const r = await kiln(
        ['eval', '--model', baby, '--kv-cache', kvCache, '--generated', '128'].concat([
          '--rows-per-step',
          '1',
          '--json',
          '--quiet',
        ]),
      );
      expect(r.code, r.stderr).toBe(0);
      return (JSON.parse(r.stdout) as { kl_mean: number }).kl_mean;
    };
    // One id a step: every block fills over 16 steps, and its factors come from the recent
    // window. Measured: int4 0.0127, int4lr 0.0087 (0.0085 in prefill chunks: the same factors,
    // read by the prefill kernel instead of split-K); without factors int4lr would be int4's.
    expect(await kl('int4lr')).toBeLessThan(0.8 * (await kl('int4')));
    const bad = await kiln(['eval', '--model', baby, '--generated', '8', '--rows-per-step', '0']);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/--rows-per-step must be a positive integer, got 0/);
  }, 120_000);

  it('without --json streams the text to stdout and a summary to stderr', async () => {
    // --no-tune: whether a tuning line follows depends on the cache (see "kiln tune" above).
    const r = await kiln(['run', '--model', baby, '--prompt', '', '--max-tokens', '30', '--no-tune']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe((await decodeWith(baby, golden.slice(0, 30))) + '\n');
    expect(goldenText.startsWith(r.stdout.trimEnd())).toBe(true);
    expect(r.lines).toHaveLength(1);
    expect(r.lines[0]).toMatch(
      /^\[1 prompt tokens, 30 generated, finish length; prefill [\d.]+ tok\/s, decode [\d.]+ tok\/s\]$/,
    );
    // --quiet drops the summary.
    const q = await kiln(['run', '--model', baby, '--prompt', 'Once', '--max-tokens', '5', '--quiet']);
    expect(q.code, q.stderr).toBe(0);
    expect(q.lines).toEqual([]);
    expect(q.stdout.endsWith('\n')).toBe(true);
  });

  it('stops quietly when the reader closes stdout (kiln run ... | head)', async () => {
    const r = await kiln(['run', '--model', baby, '--prompt', '', '--max-tokens', '200', '--quiet'], {
      closeStdoutEarly: true,
    });
    expect(r.timedOut).toBe(false);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.length).toBeGreaterThan(0);
    expect(goldenText.startsWith(r.stdout)).toBe(true);
    expect(r.lines).toEqual([]);
  });

  it('kiln models lists the catalog', async () => {
    const r = await kiln(['models']);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.trimEnd().split('\n');
    expect(lines).toHaveLength(CATALOG.length);
    CATALOG.forEach((e, i) => {
      expect(lines[i]).toContain(e.id);
      expect(lines[i]).toContain(e.aliases[0] ?? e.id);
    });
    const j = await kiln(['models', '--json']);
    expect(j.code).toBe(0);
    expect(JSON.parse(j.stdout)).toEqual(JSON.parse(JSON.stringify(CATALOG)));
  });

  it('--help and run --help exit 0; --version prints the version', async () => {
    const [top, run, version] = await Promise.all([
      kiln(['--help']),
      kiln(['run', '--help']),
      kiln(['--version']),
    ]);
    expect(top.code).toBe(0);
    expect(top.stdout).toContain('Usage: kiln');
    for (const cmd of ['run', 'chat', 'convert', 'models', 'pull']) expect(top.stdout).toContain(cmd);
    expect(run.code).toBe(0);
    expect(run.stdout).toContain('Usage: kiln run');
    for (const flag of [
      '--model',
      '--prompt',
      '--max-tokens',
      '--temperature',
      '--json',
      '--memory-limit',
      '--kv-cache',
    ]) {
      expect(run.stdout).toContain(flag);
    }
    expect(version.code).toBe(0);
    expect(version.stdout.trim()).toMatch(/^\d+\.\d+\.\d+$/);
  });
});

// ---- hostile inputs ----

/** Copies the tiny test model into a fresh folder and lets `mutate` break it. */
function variant(name: string, mutate: (dir: string) => void): string {
  const dir = fresh(name);
  cpSync(tiny, dir, { recursive: true });
  mutate(dir);
  return dir;
}

interface RawHeader {
  [name: string]: { dtype: string; shape: number[]; data_offsets: [number, number] };
}

/** Splits model.safetensors into its header object and data section. */
function readSafetensors(dir: string): { header: RawHeader; data: Buffer; file: string } {
  const file = join(dir, 'model.safetensors');
  const bytes = readFileSync(file);
  const len = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + len).toString('utf8')) as RawHeader;
  delete header.__metadata__;
  return { header, data: bytes.subarray(8 + len), file };
}

/** Writes a safetensors file with `header` (any JSON) and `data` verbatim. */
function writeRawSafetensors(file: string, header: unknown, data: Buffer): void {
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(file, Buffer.concat([len, json, data]));
}

function editConfig(dir: string, edit: (c: Record<string, unknown>) => void): void {
  const p = join(dir, 'config.json');
  const c = JSON.parse(readFileSync(p, 'utf8')) as Record<string, unknown>;
  edit(c);
  writeFileSync(p, JSON.stringify(c));
}

const TENSOR = 'model.layers.1.mlp.up_proj.weight';
const runArgs = (dir: string, ...more: string[]) => [
  'run',
  '--model',
  dir,
  '--prompt',
  'Once',
  '--max-tokens',
  '4',
  ...more,
];

describe('hostile inputs: one `kiln:` line naming the problem, no stack unless --verbose', () => {
  const safetensorsCases: { name: string; mutate: (dir: string) => void; want: (RegExp | string)[] }[] = [
    {
      name: 'a truncated safetensors file',
      mutate: (dir) => {
        const f = join(dir, 'model.safetensors');
        const b = readFileSync(f);
        writeFileSync(f, b.subarray(0, b.length >> 1));
      },
      want: ['model.safetensors', /run past the \d+-byte data section/, 'truncated?'],
    },
    {
      name: 'a header length beyond the end of the file',
      mutate: (dir) => {
        const f = join(dir, 'model.safetensors');
        const b = readFileSync(f);
        b.writeBigUInt64LE(BigInt(b.length + 1000));
        writeFileSync(f, b);
      },
      want: ['model.safetensors', /header length \d+ runs past the end of the \d+-byte file/],
    },
    {
      name: 'a header that is not JSON',
      mutate: (dir) => {
        const f = join(dir, 'model.safetensors');
        const b = readFileSync(f);
        b.write('{"model.embed', 8, 'utf8');
        b.fill(' ', 8 + 14, 8 + Number(b.readBigUInt64LE(0)));
        writeFileSync(f, b);
      },
      want: ['model.safetensors', 'header is not valid JSON'],
    },
    {
      name: 'an unknown dtype',
      mutate: (dir) => {
        const { header, data, file } = readSafetensors(dir);
        header[TENSOR]!.dtype = 'F8_E9M9';
        writeRawSafetensors(file, header, data);
      },
      want: ['model.safetensors', TENSOR, 'unknown dtype "F8_E9M9"'],
    },
    {
      name: 'a known dtype that is not a float weight',
      mutate: (dir) => {
        const { header, data, file } = readSafetensors(dir);
        header[TENSOR]!.dtype = 'I32';
        writeRawSafetensors(file, header, data);
      },
      want: [TENSOR, 'dtype I32', 'expected F32, F16 or BF16'],
    },
    {
      name: 'data offsets outside the data section',
      mutate: (dir) => {
        const { header, data, file } = readSafetensors(dir);
        const [b, e] = header[TENSOR]!.data_offsets;
        header[TENSOR]!.data_offsets = [b + data.length, e + data.length];
        writeRawSafetensors(file, header, data);
      },
      want: ['model.safetensors', TENSOR, /data_offsets \[\d+, \d+\] run past the \d+-byte data section/],
    },
    {
      name: 'a missing tensor',
      mutate: (dir) => {
        const { header, data, file } = readSafetensors(dir);
        const tensors: TensorToWrite[] = Object.entries(header)
          .filter(([n]) => n !== TENSOR)
          .map(([n, t]) => ({
            name: n,
            dtype: t.dtype as SafetensorsDtype,
            shape: t.shape,
            data: data.subarray(t.data_offsets[0], t.data_offsets[1]),
          }));
        writeFileSync(file, encodeSafetensors(tensors));
      },
      want: [`missing tensor ${TENSOR}`],
    },
    {
      name: 'an unsupported architecture',
      mutate: (dir) => editConfig(dir, (c) => (c.architectures = ['GPT2LMHeadModel'])),
      want: ['config.json', 'GPT2LMHeadModel', 'not supported'],
    },
    {
      name: 'num_attention_heads not divisible by num_key_value_heads',
      mutate: (dir) => editConfig(dir, (c) => (c.num_key_value_heads = 3)),
      want: ['config.json', 'num_key_value_heads (3)', 'num_attention_heads (4)'],
    },
  ];

  for (const c of safetensorsCases) {
    it(`${c.name}`, async () => {
      const dir = variant(c.name.replace(/\W+/g, '-'), c.mutate);
      expectCleanError(await kiln(runArgs(dir)), ...c.want);
    });
  }

  it('--verbose adds the stack to the same message', async () => {
    const dir = variant('verbose', safetensorsCases.find((c) => c.name === 'a missing tensor')!.mutate);
    const plain = await kiln(runArgs(dir));
    expectCleanError(plain, `missing tensor ${TENSOR}`);
    expectVerboseError(await kiln(runArgs(dir, '--verbose')), plain.lines[0]!);
    expectVerboseError(await kiln(['--verbose', ...runArgs(dir)]), plain.lines[0]!);
  });

  it('a prompt longer than the context (--context, and max_position_embeddings)', async () => {
    const prompt = 'Once upon a time there was a little girl.';
    const n = (await KilnTokenizer.load(openLocalModelDir(tiny))).encode(prompt).length;
    expect(n).toBeGreaterThan(16);
    const r = await kiln(['run', '--model', tiny, '--prompt', prompt, '--context', '8']);
    expectCleanError(r, `the prompt is ${n} tokens, longer than the context of 8 tokens`, '--context');
    const small = fresh('max16');
    writeTestModel(small, { maxPositions: 16, seed: 3 });
    expectCleanError(
      await kiln(['run', '--model', small, '--prompt', prompt]),
      `the prompt is ${n} tokens, longer than the context of 16 tokens`,
      'max_position_embeddings',
    );
  });

  it('a model bigger than --memory-limit', async () => {
    const r = await kiln(['run', '--model', baby, '--prompt', '', '--memory-limit', '1']);
    expectCleanError(r, /needs [\d.]+ MiB of GPU memory/, /weights [\d.]+ MiB/, 'memory limit of 1.00 MiB');
  });

  it('a folder that does not exist', async () => {
    const missing = join(tmp, 'no', 'such', 'model');
    const r = await kiln(runArgs(missing));
    expectCleanError(r, missing);
    expectVerboseError(await kiln(runArgs(missing, '--verbose')), r.lines[0]!);
  });

  it('bad flag values are usage errors', async () => {
    const cases: [string[], RegExp][] = [
      [['--temperature', '-1'], /--temperature must be >= 0/],
      [['--top-p', '2'], /--top-p must be in \(0, 1\]/],
      [['--max-tokens', 'lots'], /--max-tokens must be an integer/],
      [['--context', '0'], /--context must be an integer >= 1/],
      [
        ['--kv-cache', 'f8'],
        /--kv-cache .*Allowed choices are auto, f32, f16, int8, int4, int2, gear4, gear2/,
      ],
      [['--tune-budget', '-1'], /--tune-budget must be a number of seconds >= 0/],
    ];
    const results = await Promise.all(cases.map(([flags]) => kiln(runArgs(tiny, ...flags))));
    results.forEach((r, i) => {
      expect(r.timedOut).toBe(false);
      expect(r.code).not.toBe(0);
      expect(r.code).not.toBeNull();
      expect(r.stdout).toBe('');
      expect(r.lines).toHaveLength(1);
      expect(r.lines[0]).toMatch(/^error: option .* is invalid/);
      expect(r.lines[0]).toMatch(cases[i]![1]);
    });
    // A command's own check (not a flag parser) is printed too, as one usage line.
    const noPrompt = await kiln(['run', '--model', tiny]);
    expect(noPrompt.code).toBe(1);
    expect(noPrompt.lines).toEqual(['kiln: error: give exactly one of --prompt and --prompts-file']);
    const dtype = await kiln(['convert', 'llama2c', 'x.bin', '--out', fresh('x'), '--dtype', 'f8']);
    expect(dtype.code).not.toBe(0);
    expect(dtype.stderr).toMatch(/f8.*Allowed choices are f32, f16, bf16/);
  });

  it('convert llama2c: not a checkpoint, a missing file, a missing or mismatched tokenizer', async () => {
    const bad = join(tmp, 'not-a-checkpoint.bin');
    writeFileSync(bad, 'this is a text file, not a llama2.c checkpoint\n');
    const model = sharedModel(BABY, 'model5000.bin');
    const missing = join(tmp, 'missing.model');
    const [notOne, noFile, noTok, wrongTok] = await Promise.all([
      kiln(['convert', 'llama2c', bad, '--out', fresh('out')]),
      kiln(['convert', 'llama2c', join(tmp, 'missing.bin'), '--out', fresh('out')]),
      kiln(['convert', 'llama2c', model, '--tokenizer', missing, '--out', fresh('out')]),
      // stories260K has 512 tokens; tok105 has 105.
      kiln([
        'convert',
        'llama2c',
        sharedModel('stories260K', 'stories260K.bin'),
        '--tokenizer',
        sharedModel(BABY, 'tok105.model'),
        '--out',
        fresh('out'),
      ]),
    ]);
    expectCleanError(notOne, bad, 'not a plausible size');
    expectCleanError(noFile, 'missing.bin');
    expectCleanError(noTok, `cannot read the tokenizer ${missing}`);
    expectCleanError(wrongTok, 'tok105.model has 105 tokens', 'vocab_size is 512');
  });
});

// ---- a local server with the Hub's URL layout (LocalHub) ----

const COMMIT = 'c'.repeat(40);

/** A LocalHub serving the tiny model as org/name. */
async function hubWithTiny(): Promise<LocalHub> {
  const hub = new LocalHub();
  const files = new Map<string, RepoFile>();
  for (const f of readdirSync(tiny)) {
    files.set(f, { data: readFileSync(join(tiny, f)), lfs: f.endsWith('.safetensors') });
  }
  files.set('README.md', { data: Buffer.from('# not downloaded\n'), lfs: false });
  hub.repos.set('org/name', { files, commit: COMMIT });
  await hub.start();
  return hub;
}

describe('kiln pull and Hub ids', () => {
  it('pulls into XDG_CACHE_HOME, prints the folder, then runs offline from the cache', async () => {
    const hub = await hubWithTiny();
    const cache = fresh('xdg-cache');
    const env = { HF_ENDPOINT: hub.url, XDG_CACHE_HOME: cache };
    let p: Result;
    try {
      p = await kiln(['pull', 'org/name'], { env });
    } finally {
      await hub.stop();
    }
    expect(p.code, p.stderr).toBe(0);
    const dir = join(cache, 'kiln', 'models', 'org', 'name', COMMIT);
    expect(p.stdout).toBe(dir + '\n');
    for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'model.safetensors']) {
      expect(readFileSync(join(dir, f)).equals(readFileSync(join(tiny, f))), f).toBe(true);
    }
    expect(readdirSync(dir)).not.toContain('README.md');

    // The server is gone: the Hub id resolves from the cache alone.
    const args = ['--prompt', 'Once', '--max-tokens', '8', '--json'];
    const [offline, local] = await Promise.all([
      kiln(['run', '--model', 'org/name', ...args], { env }),
      kiln(['run', '--model', tiny, ...args]),
    ]);
    expect(offline.code, offline.stderr).toBe(0);
    expect(local.code, local.stderr).toBe(0);
    const o = parseOneJson(offline.stdout);
    expect(o.token_ids).toHaveLength(8);
    expect(o.token_ids).toEqual(parseOneJson(local.stdout).token_ids);
  });

  it('a Hub id the server does not have (404)', async () => {
    const hub = await hubWithTiny();
    try {
      const env = () => ({ HF_ENDPOINT: hub.url, XDG_CACHE_HOME: fresh('xdg') });
      expectCleanError(await kiln(runArgs('org/missing'), { env: env() }), 'org/missing', /not found/);
      expectCleanError(await kiln(['pull', 'org/missing'], { env: env() }), 'org/missing', /not found/);
    } finally {
      await hub.stop();
    }
  });
});

// ---- chat ----

const CHATML =
  "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}" +
  "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

describe('kiln chat', () => {
  it('answers each piped line, then exits 0 at EOF', async () => {
    const dir = variant('chatml', (d) => {
      const p = join(d, 'tokenizer_config.json');
      const c = JSON.parse(readFileSync(p, 'utf8')) as Record<string, unknown>;
      writeFileSync(p, JSON.stringify({ ...c, chat_template: CHATML }));
    });
    const turns = ['Hello there', 'Tell me a story'];
    const r = await kiln(['chat', '--model', dir, '--max-tokens', '12'], { input: turns.join('\n') + '\n' });
    expect(r.timedOut).toBe(false);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).not.toMatch(/^kiln: /m);

    // The same conversation through the library: each reply is greedy on the history so far.
    const engine = await createEngine({ model: dir });
    const replies: string[] = [];
    try {
      const history: { role: 'user' | 'assistant'; content: string }[] = [];
      for (const t of turns) {
        history.push({ role: 'user', content: t });
        const c = await engine.chat.completions.create({ messages: history, max_tokens: 12, temperature: 0 });
        const reply = c.choices[0]!.message.content ?? '';
        replies.push(reply);
        history.push({ role: 'assistant', content: reply });
      }
    } finally {
      engine.dispose();
    }
    expect(replies.every((x) => x.length > 0)).toBe(true);
    expect(r.stdout).toBe(replies.map((x) => x + '\n').join(''));
  });

  it('refuses a model without a chat template in one line', async () => {
    const r = await kiln(['chat', '--model', tiny], { input: 'Hello\n' });
    expectCleanError(r, tiny, 'no chat template', 'kiln run');
  });
});

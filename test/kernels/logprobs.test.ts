/**
 * The logprobs kernel against its float64 twin at vocabulary sizes 1, 7, 129, 4097 and 151669
 * (Qwen3's vocabulary): language-model-shaped, flat and tied rows (ties rank by id, lower first),
 * rows with -Infinity masked entries (a grammar mask: fewer allowed tokens than alternatives asked),
 * rows whose best tokens all fall to one GPU thread, skipped rows, rows asking no alternatives, and the special rows (+Infinity, all -Infinity, NaN,
 * -0 / +0) all in one dispatch per size.
 *
 * Ids, their order and counts must be equal (ranks are exact integer comparisons). Logprobs and the
 * log-sum-exp within tolerance(n, value): the kernel sums exp in f32, per thread over ceil(n / 256)
 * terms and then 16 + 16 rescaled partial sums, so ln Σ is off by at most about (ceil(n / 256) + 32)
 * ulp; WGSL's exp may add 3 + 2|x| ulp per term (64 covers the weighted terms here) and log 2^-21
 * absolute; the final subtraction rounds once at the result's magnitude (2^-22 relative covers it
 * and the rounding of v - M).
 */
import { describe, expect, test } from 'vitest';
import { DispatchBuilder, type Dispatch } from '../../src/gpu/dispatch.js';
import { GpuTimer } from '../../src/gpu/timer.js';
import { argmax } from '../../src/kernels/argmax.js';
import {
  logprobs,
  LOGPROBS_ROW_WORDS,
  packLogprobsWant,
  unpackLogprobs,
} from '../../src/kernels/logprobs.js';
import { logprobsRef } from '../../src/kernels/logprobs.ref.js';
import { Rng } from '../../src/engine/sampling/rng.js';
import { randomF32, readU32, run, testGpu, upload } from '../helpers/gpu.js';

const SIZES = [1, 7, 129, 4097, 151669];

const tolerance = (n: number, value: number) =>
  (Math.ceil(n / 256) + 96) * 2 ** -24 + 2 ** -21 + 2 ** -22 * Math.abs(value);

/** A bulk of roughly normal values and a few dozen tokens well above it, at random positions. */
function lmLogits(n: number, seed: number): Float32Array {
  const a = randomF32(n, seed, 1.5);
  const b = randomF32(n, seed + 1000, 1.5);
  const out = a.map((x, i) => x + (b[i] as number));
  const rng = new Rng(seed);
  for (let h = 0; h < Math.min(n, 24); h++) out[Math.floor(rng.next() * n)] = 20 + 6 * rng.next();
  return out;
}

/** Values on a grid of 0.25 (long runs of ties around every cut), with a -0 / +0 pair. */
function tiedLogits(n: number, seed: number): Float32Array {
  const out = randomF32(n, seed, 2).map((x) => Math.round(x * 4) / 4);
  if (n >= 4) {
    out.fill(0, 0, 4);
    out[1] = -0;
    out[3] = -0;
  }
  return out;
}

/** A grammar-masked row: about 1 in 40 tokens allowed (at least one), the rest -Infinity. */
function maskedLogits(n: number, seed: number): Float32Array {
  const out = lmLogits(n, seed);
  const rng = new Rng(seed + 5);
  for (let i = 0; i < n; i++) if (i !== n >> 1 && rng.next() > 1 / 40) out[i] = -Infinity;
  return out;
}

interface Row {
  name: string;
  logits: Float32Array;
  /** Alternatives asked; null: skipped. */
  want: number | null;
  chosen: number;
}

function rowsFor(n: number): Row[] {
  const rng = new Rng(n);
  const pick = () => Math.floor(rng.next() * n);
  const rows: Row[] = [
    { name: 'lm', logits: lmLogits(n, 1), want: 20, chosen: pick() },
    { name: 'lm, 5', logits: lmLogits(n, 2), want: 5, chosen: pick() },
    { name: 'flat', logits: randomF32(n, 3, 4), want: 20, chosen: pick() },
    { name: 'tied', logits: tiedLogits(n, 4), want: 20, chosen: pick() },
    { name: 'masked', logits: maskedLogits(n, 5), want: 20, chosen: n >> 1 },
    { name: 'skipped', logits: lmLogits(n, 6), want: null, chosen: 0 },
    { name: 'no alternatives', logits: lmLogits(n, 7), want: 0, chosen: pick() },
    { name: 'chosen outside', logits: lmLogits(n, 8), want: 3, chosen: n + 5 },
  ];
  const special = (name: string, f: (x: Float32Array) => void, chosen: number) => {
    const x = randomF32(n, 9 + rows.length, 3);
    f(x);
    rows.push({ name, logits: x, want: 20, chosen });
  };
  // The best tokens all in one thread's share of the row (ids 3, 259, 515, ...: the kernel's thread
  // 3), rising and tied: that thread's short list is refilled several times during the merge.
  special('one thread, rising', (x) => x.forEach((_, i) => i % 256 === 3 && (x[i] = 50 + i / 256)), 3);
  special('one thread, tied', (x) => x.forEach((_, i) => i % 256 === 3 && (x[i] = 50)), 3);
  special('all -Infinity', (x) => x.fill(-Infinity), 0);
  special('+Infinity', (x) => [0, n >> 1, n - 1].forEach((i) => (x[i] = Infinity)), n - 1);
  special('NaN', (x) => x.forEach((_, i) => i % 3 === 1 && (x[i] = NaN)), Math.min(1, n - 1));
  special('all NaN', (x) => x.fill(NaN), 0);
  return rows;
}

function expectClose(got: number, want: number, tol: number, what: string): void {
  if (Number.isNaN(want) || !Number.isFinite(want)) {
    expect(
      Object.is(got, want) || (Number.isNaN(got) && Number.isNaN(want)),
      `${what}: ${got} vs ${want}`,
    ).toBe(true);
    return;
  }
  expect(Math.abs(got - want), `${what}: ${got} vs ${want} (tolerance ${tol})`).toBeLessThanOrEqual(tol);
}

describe('logprobs', () => {
  for (const n of SIZES) {
    test(`n=${n}: matches its float64 twin on every kind of row, in one dispatch`, async () => {
      const c = await testGpu();
      const rows = rowsFor(n);
      const all = new Float32Array(rows.length * n);
      rows.forEach((r, i) => all.set(r.logits, i * n));
      const wants = rows.map((r) => r.want);
      const outBuf = upload(c, new Uint32Array(rows.length * LOGPROBS_ROW_WORDS).fill(0xdeadbeef));
      run(c, (b) =>
        logprobs(b, {
          logits: upload(c, all),
          want: upload(c, packLogprobsWant(wants)),
          ids: upload(c, Uint32Array.from(rows.map((r) => r.chosen))),
          out: outBuf,
          rows: rows.length,
          n,
        }),
      );
      const raw = await readU32(c, outBuf, rows.length * LOGPROBS_ROW_WORDS);
      const got = unpackLogprobs(raw.buffer as ArrayBuffer, wants);
      let worst = 0;
      rows.forEach((r, i) => {
        const g = got[i];
        if (r.want === null) {
          // Untouched.
          const words = raw.subarray(i * LOGPROBS_ROW_WORDS, (i + 1) * LOGPROBS_ROW_WORDS);
          expect(
            words.every((w) => w === 0xdeadbeef),
            r.name,
          ).toBe(true);
          expect(g).toBeNull();
          return;
        }
        if (!g) throw new Error('unreachable: a row that asked has a result');
        const want = logprobsRef(r.logits, r.want, r.chosen);
        const at = `n=${n} ${r.name}`;
        expect(g.id, at).toBe(r.chosen);
        expect(
          g.top.map((t) => t.id),
          `${at}: alternatives`,
        ).toEqual(want.top.map((t) => t.id));
        expectClose(g.lse, want.lse, tolerance(n, want.lse), `${at} lse`);
        expectClose(g.logprob, want.logprob, tolerance(n, want.logprob), `${at} chosen`);
        want.top.forEach((t, j) => {
          const gl = g.top[j]?.logprob as number;
          expectClose(gl, t.logprob, tolerance(n, t.logprob), `${at} alternative ${j}`);
          if (Number.isFinite(t.logprob)) worst = Math.max(worst, Math.abs(gl - t.logprob));
        });
      });
      console.log(`n=${n}: largest logprob difference from the float64 twin ${worst.toExponential(2)}`);
    });
  }

  test('the twin: logprobs of a row sum to 1, alternatives in rank order with ties by id', () => {
    const x = Float32Array.from([1, 3, -0, 3, 0, -Infinity, 2, NaN]);
    const r = logprobsRef(x, 20, 3);
    expect(r.top.map((t) => t.id)).toEqual([1, 3, 6, 0, 2, 4]);
    const total = r.top.reduce((a, t) => a + Math.exp(t.logprob), 0);
    expect(total).toBeCloseTo(1, 12);
    expect(r.logprob).toBeCloseTo(3 - Math.log(2 * Math.exp(3) + Math.exp(2) + Math.exp(1) + 2), 12);
    expect(logprobsRef(x, 2, 7).logprob).toBeNaN();
    const inf = logprobsRef(Float32Array.from([Infinity, 5, Infinity]), 3, 2);
    expect(inf.top).toEqual([
      { id: 0, logprob: -Math.log(2) },
      { id: 2, logprob: -Math.log(2) },
    ]);
    expect(inf.lse).toBe(Infinity);
    expect(logprobsRef(Float32Array.from([-Infinity, -Infinity]), 3, 0)).toEqual({
      lse: -Infinity,
      logprob: -Infinity,
      top: [],
    });
  });
});

test('timing at n=151669: logprobs (20 alternatives) vs argmax (GPU timestamps, median of 7)', async () => {
  const c = await testGpu();
  const n = 151669;
  const timer = new GpuTimer(c);
  const b = new DispatchBuilder(c);
  const ids = upload(c, new Uint32Array(1));
  const out = upload(c, new Uint32Array(LOGPROBS_ROW_WORDS));
  const groups: { label: string; dispatches: Dispatch[] }[] = [];
  for (const [name, x] of [
    ['lm', lmLogits(n, 3)],
    ['flat', randomF32(n, 4, 4)],
  ] as const) {
    const logits = upload(c, x);
    groups.push({ label: `argmax ${name}`, dispatches: [argmax(b, { logits, ids, rows: 1, n })] });
    for (const k of [0, 20]) {
      const want = upload(c, packLogprobsWant([k]));
      groups.push({
        label: `logprobs ${name} top ${k}`,
        dispatches: [logprobs(b, { logits, want, ids, out, rows: 1, n })],
      });
    }
  }
  await timer.time(groups);
  const runs: number[][] = groups.map(() => []);
  for (let r = 0; r < 7; r++) (await timer.time(groups)).forEach((ms, i) => runs[i]?.push(ms));
  const med = (a: number[]) => [...a].sort((x, y) => x - y)[a.length >> 1] as number;
  const base = med(runs[0] as number[]);
  const lines = groups.map((g, i) => {
    const ms = med(runs[i] as number[]);
    return `${g.label.padEnd(28)} median ${ms.toFixed(3)} ms ${(ms / base).toFixed(2)}x argmax(lm)`;
  });
  console.log(`[${timer.source}] ${c.adapter.description}\n${lines.join('\n')}`);
  timer.destroy();
  b.destroy();
});

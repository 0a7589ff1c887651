import { describe, expect, test } from 'vitest';
import type { GpuContext } from '../../src/gpu/device.js';
import { GpuTimer } from '../../src/gpu/timer.js';
import { argmax } from '../../src/kernels/argmax.js';
import { DispatchBuilder, type Dispatch } from '../../src/gpu/dispatch.js';
import {
  packPenaltyRows,
  packSampleParams,
  repetitionPenalty,
  sample,
  type PenaltyRow,
  type SampleRowParams,
} from '../../src/kernels/sample.js';
import {
  sampleRefPrepare,
  sampleRefProbabilities,
  type SampleRefDraws,
} from '../../src/kernels/sample.ref.js';
import { applyRepetitionPenalty } from '../../src/engine/sampling/cpu.js';
import { Rng } from '../../src/engine/sampling/rng.js';
import { randomF32, readF32, readU32, run, testGpu, upload } from '../helpers/gpu.js';

const SIZES = [1, 7, 129, 4097, 151936];
const TEMPERATURES = [0, 0.7, 1.5];
const TOP_K = [0, 1, 5, 50];
const TOP_P = [1, 0.9, 0.5];

/**
 * The kernel sums weights in f32 (about 1e-6 relative; see shaders/sample.wgsl), so it can only
 * disagree with the float64 twin when u·sum or the top-p target lies within that of a boundary
 * between two tokens. Draws closer than this to a boundary are redrawn, not compared loosely.
 */
const MARGIN = 1e-5;

/** u as the kernel sees it: rounded to f32, below 1. */
const f32u = (u: number) => Math.min(Math.fround(u), 1 - 2 ** -24);

/**
 * Logits shaped like a language model's: a bulk of roughly normal values (sum of three uniforms)
 * and a head of a few dozen tokens well above it, at random positions.
 */
function lmLogits(n: number, seed: number): Float32Array {
  const a = randomF32(n, seed, 1.5);
  const b = randomF32(n, seed + 1000, 1.5);
  const c = randomF32(n, seed + 2000, 1.5);
  const out = a.map((x, i) => x + (b[i] as number) + (c[i] as number));
  const rng = new Rng(seed);
  const head = Math.min(n, 24);
  for (let h = 0; h < head; h++) out[Math.floor(rng.next() * n)] = 20 + 6 * rng.next();
  return out;
}

/** Flat logits: every token within 8 of the top, so the kept set is most of the vocabulary. */
const flatLogits = (n: number, seed: number) => randomF32(n, seed, 4);

/** Logits on a grid of 0.25: long runs of equal values, around every top-k cut. */
const tiedLogits = (n: number, seed: number) => randomF32(n, seed, 4).map((x) => Math.round(x * 4) / 4);

interface Case {
  logits: Float32Array;
  params: SampleRowParams;
  ref: SampleRefDraws;
  /** 'exact': margin >= MARGIN, the ids must be equal; 'near': see chooseDraw. */
  check: 'exact' | 'near';
}

/**
 * A case with a deterministic draw whose margin is at least MARGIN: logits are regenerated (new
 * seed) while the top-p cut itself is that close to a boundary, then u is redrawn up to 20 times.
 * When neither gets there (a kept set of ~1e5 near-equal weights: each token's share of the sum is
 * below MARGIN, so f32 sums cannot tell neighbours apart, at the top-p cut or in the walk), the
 * case is checked as 'near': the GPU's id must be one that sums off by MARGIN can pick.
 */
function makeCase(
  gen: (seed: number) => Float32Array,
  seed: number,
  p: { temperature: number; topK: number; topP: number },
): Case {
  const params = { temperature: Math.fround(p.temperature), topK: p.topK, topP: Math.fround(p.topP) };
  let logits = gen(seed);
  let ref = sampleRefPrepare(logits, params);
  for (let s = 1; s < 4 && ref.cutMargin < MARGIN; s++) {
    logits = gen(seed + 7919 * s);
    ref = sampleRefPrepare(logits, params);
  }
  const rng = new Rng(seed);
  let u = f32u(rng.next());
  for (let i = 0; i < 20 && ref.cutMargin >= MARGIN; i++) {
    if (ref.draw(u).margin >= MARGIN) return { logits, params: { ...params, u }, ref, check: 'exact' };
    u = f32u(rng.next());
  }
  return { logits, params: { ...params, u }, ref, check: 'near' };
}

/** Runs the kernel over all cases in one dispatch (one row each). */
async function gpuSample(c: GpuContext, cases: readonly Case[], n: number): Promise<number[]> {
  const rows = cases.length;
  const all = new Float32Array(rows * n);
  cases.forEach((k, r) => all.set(k.logits, r * n));
  const ids = upload(c, new Uint32Array(rows).fill(0xdeadbeef));
  const params = upload(c, new Uint8Array(packSampleParams(cases.map((k) => k.params))));
  run(c, (b) => sample(b, { logits: upload(c, all), params, ids, rows, n }));
  return Array.from(await readU32(c, ids, rows));
}

function expectMatches(cases: readonly Case[], got: readonly number[]): { exact: number; near: number } {
  const bad: string[] = [];
  let near = 0;
  cases.forEach((k, r) => {
    const g = got[r] as number;
    const want = k.ref.draw(k.params.u);
    const ok = k.check === 'exact' ? g === want.id : k.ref.near(k.params.u, MARGIN).includes(g);
    if (k.check === 'near') near++;
    if (!ok && bad.length < 8) {
      const { temperature, topK, topP, u } = k.params;
      bad.push(
        `row ${r} (T ${temperature}, k ${topK}, p ${topP}, u ${u}, ${k.check}): got ${g}, want ${want.id}`,
      );
    }
  });
  if (bad.length) expect.fail(bad.join('\n'));
  return { exact: cases.length - near, near };
}

describe('sample', () => {
  for (const n of SIZES) {
    test(`n=${n}: every (temperature, top-k, top-p), three draws each, per-row params in one dispatch`, async () => {
      const c = await testGpu();
      const cases: Case[] = [];
      let seed = 1;
      // Each case has its own logits and u; all rows go through one dispatch.
      for (const temperature of TEMPERATURES)
        for (const topK of TOP_K)
          for (const topP of TOP_P)
            for (const gen of [lmLogits, lmLogits, flatLogits]) {
              cases.push(makeCase((s) => gen(n, s), seed++, { temperature, topK, topP }));
            }
      const { exact, near } = expectMatches(cases, await gpuSample(c, cases, n));
      console.log(`n=${n}: ${exact} draws compared exactly, ${near} within f32 resolution`);
      // Only huge flat kept sets are beyond f32's resolution.
      if (n < 151936) expect(near).toBe(0);
      expect(exact).toBeGreaterThan(cases.length / 2);
    });
  }

  for (const n of [4097, 151936]) {
    test(`n=${n}: ties around the top-k and top-p cuts (runs longer than the gather capacity)`, async () => {
      const c = await testGpu();
      const cases: Case[] = [];
      let seed = 100;
      for (const temperature of [0.7, 1.5])
        for (const topK of [5, 50, 300, 2000])
          // Not 0.9 or 0.5: with equal weights, p·count would land exactly on a prefix sum.
          for (const topP of [1, 0.9173, 0.3713])
            cases.push(makeCase((s) => tiedLogits(n, s), seed++, { temperature, topK, topP }));
      // Top-p over all candidates: the cut falls inside a run of equal weights.
      for (const topP of [0.9173, 0.3713])
        cases.push(makeCase((s) => tiedLogits(n, s), seed++, { temperature: 0.7, topK: 0, topP }));
      const { near } = expectMatches(cases, await gpuSample(c, cases, n));
      // Only top-p over all ~150k candidates can be too dense for f32 (the last two cases).
      expect(near).toBeLessThanOrEqual(n > 4097 ? 2 : 0);
    });
  }

  test('NaN, -Infinity, +Infinity, signed zeros', async () => {
    const c = await testGpu();
    const n = 129;
    const rows: Float32Array[] = [];
    const nan = new Float32Array(n).fill(NaN);
    rows.push(nan); // all NaN: 0
    rows.push(new Float32Array(n).fill(-Infinity)); // all -Infinity: the first
    rows.push(nan.map((_, i) => (i % 2 ? -Infinity : NaN))); // NaN and -Infinity: the first -Infinity
    const inf = lmLogits(n, 5);
    inf[40] = Infinity;
    inf[90] = Infinity;
    inf[10] = NaN;
    rows.push(inf); // +Infinity: its first index
    const zeros = new Float32Array(n).fill(-50);
    zeros[3] = -0;
    zeros[7] = 0;
    zeros[8] = -0;
    zeros[100] = 0;
    rows.push(zeros); // +0 and -0 tie: ranked by id
    for (let s = 0; s < 3; s++) {
      const x = lmLogits(n, 20 + s);
      for (let i = s; i < n; i += 3 + s) x[i] = i % 2 ? NaN : -Infinity;
      rows.push(x);
    }
    const cases: Case[] = [];
    for (const logits of rows)
      for (const p of [
        { temperature: 0.7, topK: 0, topP: 1 },
        { temperature: 1.5, topK: 2, topP: 1 },
        { temperature: 0.7, topK: 0, topP: 0.6 },
        { temperature: 0, topK: 0, topP: 1 },
        { temperature: 1.5, topK: 0, topP: 0 }, // top-p 0 keeps the top token
      ])
        cases.push(makeCase(() => logits, cases.length, p));
    const got = await gpuSample(c, cases, n);
    expect(expectMatches(cases, got).near).toBe(0);
    // The degenerate rows (5 params each), spelled out.
    expect(got.slice(0, 5)).toEqual([0, 0, 0, 0, 0]);
    expect(got.slice(5, 10)).toEqual([0, 0, 0, 0, 0]);
    expect(got.slice(10, 15)).toEqual([1, 1, 1, 1, 1]);
    expect(got.slice(15, 20)).toEqual([40, 40, 40, 40, 40]);
    expect([3, 7, 8, 100]).toContain(got[20]);
    expect([3, 7]).toContain(got[21]); // top-2 of the tied zeros: the two lowest ids
    expect(got[24]).toBe(3); // top-p 0: the first of the tied zeros
  });

  test('distribution: a grid of u reproduces the reference probabilities', async () => {
    const c = await testGpu();
    const logits = Float32Array.from([1.5, -0.5, 2.25, 2.25, NaN, 0.25, -Infinity, 1.75, -20]);
    const n = logits.length;
    const N = 4096;
    for (const p of [
      { temperature: 0.7, topK: 0, topP: 1 },
      { temperature: 0.7, topK: 4, topP: 0.95 },
      { temperature: 1.5, topK: 0, topP: 0.8 },
    ]) {
      const params = { temperature: Math.fround(p.temperature), topK: p.topK, topP: Math.fround(p.topP) };
      const ref = sampleRefPrepare(logits, params);
      // The grid is fixed; check once that no point lies within MARGIN of a boundary.
      const us = Array.from({ length: N }, (_, i) => (i + 0.5) / N);
      for (const u of us) expect(ref.draw(u).margin).toBeGreaterThanOrEqual(MARGIN);
      const cases: Case[] = us.map((u) => ({ logits, params: { ...params, u }, ref, check: 'exact' }));
      const got = await gpuSample(c, cases, n);
      expectMatches(cases, got);
      // Each token owns an interval of u of length = its probability, so N grid points hit it
      // within one of N·prob times.
      const prob = sampleRefProbabilities(logits, params);
      const counts = new Array<number>(n).fill(0);
      for (const id of got) counts[id] = (counts[id] as number) + 1;
      for (let i = 0; i < n; i++)
        expect(Math.abs((counts[i] as number) - N * (prob[i] as number))).toBeLessThanOrEqual(1);
    }
  });
});

describe('repetition penalty', () => {
  test('matches applyRepetitionPenalty', async () => {
    const c = await testGpu();
    const n = 4097;
    const rows = 4;
    const logits = randomF32(rows * n, 77, 5);
    logits[0 * n + 10] = NaN;
    logits[1 * n + 11] = 0;
    logits[1 * n + 12] = -0;
    const contexts = [
      [10, 5, 4096, 0, 77, 9999], // 9999 >= n: skipped
      [11, 12, 13, ...Array.from({ length: 300 }, (_, i) => 100 + 7 * i)],
      [1, 2, 3],
      [],
    ];
    const penalties = [1.3, 1.1, 1, 0.8];
    const tokens: number[] = [];
    const prow: PenaltyRow[] = contexts.map((ctx, r) => {
      const row = { start: tokens.length, count: ctx.length, penalty: penalties[r] as number };
      tokens.push(...ctx);
      return row;
    });
    const buf = upload(c, logits);
    run(c, (b) =>
      repetitionPenalty(b, {
        logits: buf,
        penaltyRows: upload(c, new Uint8Array(packPenaltyRows(prow))),
        tokens: upload(c, Uint32Array.from(tokens)),
        rows,
        n,
      }),
    );
    const got = await readF32(c, buf, rows * n);
    for (let r = 0; r < rows; r++) {
      const want = logits.slice(r * n, (r + 1) * n);
      // The kernel sees the penalty as f32.
      applyRepetitionPenalty(want, contexts[r] as number[], Math.fround(penalties[r] as number));
      const g = got.subarray(r * n, (r + 1) * n);
      for (let i = 0; i < n; i++) {
        const a = g[i] as number;
        const e = want[i] as number;
        if (Number.isNaN(e)) expect(a).toBeNaN();
        else if (e > 0 && a !== e) {
          // WGSL allows 2.5 ulp for f32 division; the multiplications must be exact.
          const ulp = 2 ** (Math.floor(Math.log2(e)) - 23);
          expect(Math.abs(a - e)).toBeLessThanOrEqual(2.5 * ulp);
        } else expect(Object.is(a, e) || a === e).toBe(true);
      }
    }
  });
});

test('timing at n=151936: sample vs argmax (GPU timestamps, median of 7)', async () => {
  const c = await testGpu();
  const n = 151936;
  const timer = new GpuTimer(c);
  const b = new DispatchBuilder(c);
  const ids = upload(c, new Uint32Array(1));
  const lm = upload(c, lmLogits(n, 3));
  const flat = upload(c, flatLogits(n, 4));
  const groups: { label: string; dispatches: Dispatch[] }[] = [
    { label: 'argmax', dispatches: [argmax(b, { logits: lm, ids, rows: 1, n })] },
  ];
  const configs: [string, GPUBuffer, SampleRowParams][] = [];
  for (const [name, buf] of [
    ['lm', lm],
    ['flat', flat],
  ] as const) {
    configs.push([`${name} T=0.7`, buf, { temperature: 0.7, topK: 0, topP: 1, u: 0.3 }]);
    configs.push([`${name} T=0.7 k=50`, buf, { temperature: 0.7, topK: 50, topP: 1, u: 0.3 }]);
    configs.push([`${name} T=0.7 p=0.9`, buf, { temperature: 0.7, topK: 0, topP: 0.9, u: 0.3 }]);
    configs.push([`${name} T=0.7 k=50 p=0.9`, buf, { temperature: 0.7, topK: 50, topP: 0.9, u: 0.3 }]);
    configs.push([`${name} T=1.5 k=2000 p=0.95`, buf, { temperature: 1.5, topK: 2000, topP: 0.95, u: 0.3 }]);
  }
  for (const [label, logits, p] of configs) {
    const params = upload(c, new Uint8Array(packSampleParams([p])));
    groups.push({ label: `sample ${label}`, dispatches: [sample(b, { logits, params, ids, rows: 1, n })] });
  }
  await timer.time(groups);
  const runs: number[][] = groups.map(() => []);
  for (let r = 0; r < 7; r++) (await timer.time(groups)).forEach((ms, i) => runs[i]?.push(ms));
  // Median as asked; the minimum too, since CPU adapters share cores with whatever else runs.
  const med = (a: number[]) => [...a].sort((x, y) => x - y)[a.length >> 1] as number;
  const min = (a: number[]) => Math.min(...a);
  const base = med(runs[0] as number[]);
  const baseMin = min(runs[0] as number[]);
  const lines = groups.map((g, i) => {
    const ms = med(runs[i] as number[]);
    const lo = min(runs[i] as number[]);
    return `${g.label.padEnd(36)} median ${ms.toFixed(3)} ms ${(ms / base).toFixed(2)}x   min ${lo.toFixed(3)} ms ${(lo / baseMin).toFixed(2)}x`;
  });
  console.log(`[${timer.source}] ${c.adapter.description}\n${lines.join('\n')}`);
  timer.destroy();
  b.destroy();
});

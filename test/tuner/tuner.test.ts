/**
 * The kernel tuner: selection logic on fixed timings, the output check that keeps wrong kernels
 * from winning (real kernels on Dawn), the cache (round trip, corruption, foreign entries, the file
 * store), and a tuned BabyLlama engine that still produces its golden greedy ids.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { GpuContext } from '../../src/gpu/device.js';
import { GpuTimer } from '../../src/gpu/timer.js';
import { matmul } from '../../src/kernels/matmul.js';
import { convertLlama2cToFolder } from '../../src/node/convert.js';
import { createEngine } from '../../src/node/index.js';
import { FileTuneStore } from '../../src/node/tune-store.js';
import { MemoryTuneStore, loadTuneCache, saveTuneCache, type TunedClass } from '../../src/tuner/cache.js';
import { KernelChoices, matmulClassKey, mClassOf, type KernelChoice } from '../../src/tuner/choices.js';
import { median, pickWinner } from '../../src/tuner/measure.js';
import { adapterSignature, signatureId } from '../../src/tuner/signature.js';
import { recordAsync } from '../../src/gpu/dispatch.js';
import { M_CLASSES } from '../../src/tuner/choices.js';
import { TIMED_ROWS_MAX, linearClass, timedSlice, type TuneClass } from '../../src/tuner/classes.js';
import { outputsAgree, tuneClass } from '../../src/tuner/tuner.js';
import { KILN_VERSION } from '../../src/version.js';
import { randomF32, testGpu, upload, uploadWeight, zeros } from '../helpers/gpu.js';
import { repoRoot, sharedModel } from '../helpers/shared.js';

describe('selection', () => {
  it('keeps the default unless a candidate beats it by more than 3%', () => {
    expect(pickWinner([10, 9.8, 9.9], [true, true, true])).toBe(0);
    expect(pickWinner([10, 9.0, 9.5], [true, true, true])).toBe(1);
    // The fastest is wrong: the next correct one wins.
    expect(pickWinner([10, 5, 8, 9], [true, false, true, true])).toBe(2);
    // Ties go to the earlier candidate; rejected (null) ones never win.
    expect(pickWinner([10, 8, 8, null], [true, true, true, true])).toBe(1);
    expect(pickWinner([10, null, 11], [true, true, true])).toBe(0);
  });

  it('medians', () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 3, 2])).toBe(2.5);
  });

  it('output check: scale-relative, NaN fails', () => {
    const ref = Float32Array.from([1, -2, 3]);
    expect(outputsAgree(ref, Float32Array.from([1, -2, 3.002]))).toBe(true);
    expect(outputsAgree(ref, Float32Array.from([1, -2, 3.01]))).toBe(false);
    expect(outputsAgree(ref, Float32Array.from([1, NaN, 3]))).toBe(false);
    expect(outputsAgree(ref, Float32Array.from([1, -2]))).toBe(false);
  });

  it('shape classes bucket M', () => {
    expect([1, 2, 4, 5, 16, 17, 256].map(mClassOf)).toEqual([
      '1',
      '2-4',
      '2-4',
      '5-16',
      '5-16',
      '17+',
      '17+',
    ]);
    const w = { format: 'bf16' as const, rows: 896, cols: 4864 };
    expect(matmulClassKey(w, 3)).toBe('matmul_bf16 n896 k4864 m2-4');
    const t = new KernelChoices();
    t.set(matmulClassKey(w, 1), { kernel: 'matmul', variant: { path: 'flat', r: 2 } });
    expect(t.matmul({ ...w, name: 'w', parts: [] }, 1)).toEqual({ path: 'flat', r: 2 });
    expect(t.matmul({ ...w, name: 'w', parts: [] }, 2)).toBeUndefined();
  });

  it("the version is package.json's", () => {
    const pkg = JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')) as { version: string };
    expect(KILN_VERSION).toBe(pkg.version);
  });
});

describe('a wrong kernel never wins', () => {
  let c: GpuContext;
  beforeAll(async () => {
    c = await testGpu();
  });

  it('rejects a faster candidate that computes half the rows, and one that writes elsewhere', async () => {
    const [n, k, m] = [1024, 512, 1];
    const { weight } = uploadWeight(c, randomF32(n * k, 1, 0.1), n, k, 'f32');
    // The "half" candidate: the same kernel over only the first 512 rows (half the work, so it
    // is the fastest), leaving the other outputs zero.
    const half = { ...weight, rows: n / 2, parts: weight.parts.map((p) => ({ ...p, rows: n / 2 })) };
    const x = upload(c, randomF32(m * k, 2));
    const y = zeros(c, m * n);
    const elsewhere = zeros(c, m * n);
    const ph = zeros(c, 4);
    const wrongHalf: KernelChoice = { kernel: 'matmul', variant: { path: 'flat', mt: 1, r: 1 } };
    const wrongElsewhere: KernelChoice = { kernel: 'matmul', variant: { path: 'flat', mt: 1, r: 2 } };
    const cls: TuneClass = {
      key: 'test',
      kernel: 'matmul',
      bucket: '1',
      priority: 0,
      candidates: [
        { kernel: 'matmul', variant: {} },
        wrongHalf,
        wrongElsewhere,
        { kernel: 'matmul', variant: { path: 'flat', mt: 1, r: 4 } },
      ],
      prepare: () => ({
        output: y,
        outputBytes: m * n * 4,
        record: (b, choice) => {
          const variant = choice.kernel === 'matmul' ? choice.variant : {};
          if (choice === wrongHalf) return matmul(b, { x, weight: half, y, m, placeholder: ph, variant });
          if (choice === wrongElsewhere)
            return matmul(b, { x, weight, y: elsewhere, m, placeholder: ph, variant });
          return matmul(b, { x, weight, y, m, placeholder: ph, variant });
        },
        destroy: () => {},
      }),
    };
    const timer = new GpuTimer(c);
    const r = await tuneClass(c, timer, cls);
    timer.destroy();
    expect(r).not.toBeNull();
    expect(r?.rejected_wrong).toBe(2);
    expect([wrongHalf, wrongElsewhere]).not.toContain(r?.choice);
    expect(r?.best_ms).toBeGreaterThan(0);
    expect(r?.default_ms).toBeGreaterThanOrEqual(r?.best_ms as number);
  }, 120_000);
});

describe('big matrices are timed on a prefix of their rows', () => {
  it('cuts only what lies in the first part, and the timed prefix runs the forced variant', async () => {
    const c = await testGpu();
    const k = 8;
    const rows = TIMED_ROWS_MAX + 808;
    const { weight } = uploadWeight(c, randomF32(rows * k, 3, 0.1), rows, k, 'bf16');
    const cut = timedSlice(weight);
    expect(cut.rows).toBe(TIMED_ROWS_MAX);
    expect(cut.parts).toEqual([{ ...weight.parts[0], rows: TIMED_ROWS_MAX }]);
    // A first part shorter than the prefix: timed whole.
    const split = {
      ...weight,
      parts: [
        { ...weight.parts[0]!, rows: 1000 },
        { ...weight.parts[0]!, rowStart: 1000 },
      ],
    };
    expect(timedSlice(split)).toBe(split);

    const cls = linearClass(c, { weight }, false, M_CLASSES[0], 0, 'f32');
    // The class is the whole matrix's; the timed bench is the prefix's.
    expect(cls.key).toBe(`matmul_bf16 n${rows} k${k} m1`);
    const bench = cls.prepare(c);
    try {
      expect(bench.outputBytes).toBe(TIMED_ROWS_MAX * 4);
      const choice = cls.candidates.find(
        (ch) => ch.kernel === 'matmul' && ch.variant.path === 'flat' && ch.variant.r === 1,
      );
      expect(choice).toBeDefined();
      const { builder, dispatches } = await recordAsync(c, (b) => bench.record(b, choice as KernelChoice));
      builder.destroy();
      expect(dispatches.map((d) => d.label)).toEqual([expect.stringMatching(/^matmul_bf16_m1r1x/)]);
    } finally {
      bench.destroy();
    }
  }, 60_000);
});

describe('cache', () => {
  let c: GpuContext;
  const warnings: string[] = [];
  const warn = (m: string) => warnings.push(m);
  const entry: TunedClass = {
    kernel: 'matmul',
    choice: { kernel: 'matmul', variant: { path: 'gemm', tm: 4, tn: 2 } },
    best_variant: 'matmul_bf16_gemm_t4x2',
    default_variant: 'matmul_bf16_m1r4x256',
    default_choice: { kernel: 'matmul', variant: { path: 'flat', mt: 1, r: 4 } },
    default_ms: 2,
    best_ms: 1,
    candidates_tried: 6,
  };
  beforeAll(async () => {
    c = await testGpu();
  });

  it('round-trips', async () => {
    const store = new MemoryTuneStore();
    const sig = adapterSignature(c);
    await saveTuneCache(store, sig, new Map([['k', entry]]));
    warnings.length = 0;
    const back = await loadTuneCache(store, sig, warn);
    expect([...back]).toEqual([['k', entry]]);
    expect(warnings).toEqual([]);
  });

  it('ignores corrupt text, other formats, foreign signatures and malformed entries, with warnings', async () => {
    const sig = adapterSignature(c);
    const id = signatureId(sig);
    const store = new MemoryTuneStore();
    const load = async (text: string) => {
      store.texts.set(id, text);
      warnings.length = 0;
      return loadTuneCache(store, sig, warn);
    };
    expect((await load('{"format": "kiln-tun')).size).toBe(0);
    expect(warnings[0]).toMatch(/not valid JSON/);
    expect((await load('{"format": "other", "version": 1, "classes": {}}')).size).toBe(0);
    expect(warnings[0]).toMatch(/not a kiln-tuning v2 file/);
    // Version 1 entries did not record the default they beat: ignored, retuned.
    expect(
      (await load(JSON.stringify({ format: 'kiln-tuning', version: 1, signature: sig, classes: {} }))).size,
    ).toBe(0);
    expect(warnings[0]).toMatch(/not a kiln-tuning v2 file/);
    const foreign = {
      format: 'kiln-tuning',
      version: 2,
      signature: { ...sig, kiln: '0.0.0' },
      classes: { k: entry },
    };
    expect((await load(JSON.stringify(foreign))).size).toBe(0);
    expect(warnings[0]).toMatch(/another adapter or Kiln version/);
    const mixed = {
      format: 'kiln-tuning',
      version: 2,
      signature: sig,
      classes: {
        good: entry,
        negative: { ...entry, best_ms: -1 },
        nochoice: { ...entry, choice: { kernel: 'rm -rf' } },
        nodefault: { ...entry, default_choice: undefined },
        string: 'matmul',
      },
    };
    const got = await load(JSON.stringify(mixed));
    expect([...got.keys()]).toEqual(['good']);
    expect(warnings).toHaveLength(4);
  });

  it('file store: atomic write, read back, missing file is empty', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kiln-tune-'));
    try {
      const store = new FileTuneStore(join(dir, 'tuning'));
      const sig = adapterSignature(c);
      expect(await store.read(signatureId(sig))).toBeNull();
      await saveTuneCache(store, sig, new Map([['k', entry]]));
      expect(readdirSync(join(dir, 'tuning'))).toEqual([`${signatureId(sig)}.json`]);
      warnings.length = 0;
      expect((await loadTuneCache(store, sig, warn)).get('k')).toEqual(entry);
      writeFileSync(join(dir, 'tuning', `${signatureId(sig)}.json`), '\u0000garbage');
      expect((await loadTuneCache(store, sig, warn)).size).toBe(0);
      expect(warnings[0]).toMatch(/not valid JSON/);
      expect(() => store.path('../../etc/passwd')).toThrow(RangeError);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('a tuned BabyLlama', () => {
  let dir = '';
  const golden = JSON.parse(
    readFileSync(sharedModel('babyllama-tok105', 'reference_greedy.json'), 'utf8'),
  ) as { greedy_ids_after_bos: number[] };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'kiln-tune-baby-'));
    await convertLlama2cToFolder(sharedModel('babyllama-tok105', 'model5000.bin'), {
      outDir: dir,
      tokenizer: sharedModel('babyllama-tok105', 'tok105.model'),
    });
  }, 120_000);
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('tunes in the background, runs the winners, keeps the golden ids; a second engine reuses the cache', async () => {
    const store = new MemoryTuneStore();
    const warnings: string[] = [];
    let engineClass: string | undefined;
    // Four-token prefill chunks keep the classes to M = 1 and 2-4 (the test's time).
    const opts = {
      model: dir,
      prefillChunkTokens: 4,
      tune: { budgetMs: 600_000, store, warn: (m: string) => warnings.push(m) },
    };
    const engine = await createEngine(opts);
    try {
      const report = await engine.tuning;
      expect(report).not.toBeNull();
      expect(report?.skipped).toEqual([]);
      expect(report?.classes.length).toBeGreaterThanOrEqual(10);
      for (const cl of report?.classes ?? []) {
        expect(cl.candidates_tried).toBeGreaterThan(0);
        expect(cl.best_ms).toBeLessThanOrEqual(cl.default_ms);
      }
      // On a CPU adapter the defaults are the 'cpu' row's: the one-row GEMM tile at M = 1 is what
      // candidates were timed against.
      engineClass = engine.kernelDefaults.adapterClass;
      if (engine.kernelDefaults.adapterClass === 'cpu' && engine.adapter.subgroups) {
        const m1 = (report?.classes ?? []).filter(
          (cl) => cl.kernel === 'matmul' && cl.shape_class.endsWith(' m1'),
        );
        expect(m1.length).toBeGreaterThan(0);
        for (const cl of m1) expect(cl.default_variant).toMatch(/_gemm_t1x/);
      }
      // The decode step runs each M = 1 winner (the profile lists the dispatches' pipelines).
      const labels = new Set((await engine.profileDecode(64)).map((p) => p.label));
      // A projection after an RMSNorm runs the winner with the norm folded in (its `_rms` label).
      for (const cl of report?.classes ?? []) {
        if (cl.kernel === 'matmul' && cl.shape_class.endsWith(' m1'))
          expect([cl.best_variant, `${cl.best_variant}_rms`].some((l) => labels.has(l))).toBe(true);
      }
      const r = await engine.generate([1], { maxTokens: 200, temperature: 0, ignoreEos: true }).result();
      expect(r.tokenIds).toEqual(golden.greedy_ids_after_bos.slice(0, 200));
    } finally {
      engine.dispose();
    }
    expect(warnings).toEqual([]);

    const again = await createEngine(opts);
    try {
      expect(await again.tuning).toBeNull(); // nothing left to tune
      const t0 = performance.now();
      const { report } = await again.tune({ budgetMs: 0, store });
      expect(performance.now() - t0).toBeLessThan(1000);
      expect(report.classes.every((cl) => cl.cached && cl.candidates_tried === 0)).toBe(true);
      const r = await again.generate([1], { maxTokens: 200, temperature: 0, ignoreEos: true }).result();
      expect(r.tokenIds).toEqual(golden.greedy_ids_after_bos.slice(0, 200));
    } finally {
      again.dispose();
    }

    // Another defaults row (forced here) gives some classes another default: their cached winners
    // were never timed against it, so they are retuned (skipped at budget 0), the others kept.
    const forced = await createEngine({ model: dir, prefillChunkTokens: 4, kernelDefaults: 'generic' });
    try {
      warnings.length = 0;
      const { report } = await forced.tune({ budgetMs: 0, store, warn: (m) => warnings.push(m) });
      const changed = warnings.filter((w) => /timed against another default/.test(w));
      expect(report.skipped.length).toBe(changed.length);
      expect(report.classes.length + report.skipped.length).toBeGreaterThanOrEqual(10);
      if (engineClass === 'cpu' && forced.adapter.subgroups) expect(changed.length).toBeGreaterThan(0);
    } finally {
      forced.dispose();
    }
  }, 600_000);

  it('runs the adapter class row untuned; a forced row changes the kernels, not the ids', async () => {
    const auto = await createEngine({ model: dir });
    const generic = await createEngine({ model: dir, kernelDefaults: 'generic' });
    try {
      expect(generic.kernelDefaults.adapterClass).toBe('generic');
      expect(generic.kernelDefaults.choices.size).toBe(0); // the kernels' own rules
      const labels = async (e: typeof auto) => new Set((await e.profileDecode(64)).map((p) => p.label));
      if (auto.kernelDefaults.adapterClass === 'cpu' && auto.adapter.subgroups) {
        expect(auto.kernelDefaults.choices.size).toBeGreaterThan(0);
        expect([...(await labels(auto))].some((l) => /_gemm_t1x/.test(l))).toBe(true);
        expect([...(await labels(generic))].some((l) => /_gemm_t1x/.test(l))).toBe(false);
      }
      for (const e of [auto, generic]) {
        const r = await e.generate([1], { maxTokens: 200, temperature: 0, ignoreEos: true }).result();
        expect(r.tokenIds).toEqual(golden.greedy_ids_after_bos.slice(0, 200));
      }
    } finally {
      auto.dispose();
      generic.dispose();
    }
    await expect(createEngine({ model: dir, kernelDefaults: 'fast' as 'cpu' })).rejects.toThrow(
      /kernelDefaults must be/,
    );
  }, 300_000);

  it('tunes in the background only while no request runs; background: false tunes nothing', async () => {
    const store = new MemoryTuneStore();
    const engine = await createEngine({
      model: dir,
      prefillChunkTokens: 4,
      tune: { budgetMs: 3000, store },
    });
    try {
      // A request arriving while tuning waits for the slice in flight, then no slice runs until
      // it is done: the count of slices stays put from its first token to its last.
      const seen: number[] = [];
      for await (const _t of engine.generate([1], { maxTokens: 40, temperature: 0, ignoreEos: true }))
        seen.push(engine.tuningStatus.slices ?? 0);
      expect(seen.length).toBe(40);
      expect(new Set(seen).size).toBe(1);
      const st = await engine.whenTuned();
      expect(st.state).toBe('done');
      expect(st.slices ?? 0).toBeGreaterThan(seen[0] as number);
      expect(st.longestSliceMs ?? 0).toBeGreaterThan(0);
    } finally {
      engine.dispose();
    }
    const oneShot = await createEngine({
      model: dir,
      prefillChunkTokens: 4,
      tune: { store, background: false },
    });
    try {
      expect(await oneShot.tuning).toBeNull();
      const st = oneShot.tuningStatus;
      expect(st.state).toBe('done');
      expect(st.slices).toBeUndefined();
      await oneShot.generate([1], { maxTokens: 4, temperature: 0 }).result();
      expect(oneShot.tuningStatus.slices).toBeUndefined();
    } finally {
      oneShot.dispose();
    }
  }, 300_000);

  it('retunes a cached choice that is not in the search space, with a warning', async () => {
    const store = new MemoryTuneStore();
    const warnings: string[] = [];
    const opts = { model: dir, prefillChunkTokens: 4 };
    const e = await createEngine(opts);
    try {
      const { report } = await e.tune({ budgetMs: 0, store }); // nothing cached: every class skipped
      expect(report.classes).toEqual([]);
      expect(store.texts.size).toBe(0); // nothing tuned, nothing written
      const key = report.skipped[0] as string;
      // Plant an entry with a tile no Kiln version offers.
      const hostile = new Map<string, TunedClass>([
        [
          key,
          {
            kernel: 'matmul',
            choice: { kernel: 'matmul', variant: { path: 'gemm', tm: 32 as 16, tn: 2 } },
            best_variant: 'x',
            default_variant: 'y',
            default_choice: { kernel: 'matmul', variant: { path: 'gemm', tm: 4, tn: 2 } },
            default_ms: 1,
            best_ms: 0.5,
            candidates_tried: 1,
          },
        ],
      ]);
      await saveTuneCache(store, adapterSignature(await testGpu()), hostile);
      const r2 = await e.tune({ budgetMs: 0, store, warn: (m) => warnings.push(m) });
      expect(warnings.join('\n')).toMatch(/not in this version's search space/);
      expect(r2.report.classes).toEqual([]);
    } finally {
      e.dispose();
    }
  }, 300_000);
});

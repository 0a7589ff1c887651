/**
 * The just-in-time kernel tuner (DESIGN-NOTES §6; nn-JIT.web): for the shape classes a loaded
 * model uses (classes.ts), compile a lite space of candidates asynchronously, check each against
 * the default kernel's output on random inputs (a wrong kernel never wins), time the correct ones
 * against the default in interleaved rounds, keep the fastest, and persist the choice per adapter
 * signature. Classes run in priority order (decode first: it is where a user waits per token)
 * until the budget is spent; the rest keep their defaults and are tuned by a later run.
 */
import type { GpuContext } from '../gpu/device.js';
import { precompile, recordAsync, type Dispatch, type DispatchBuilder } from '../gpu/dispatch.js';
import { GpuTimer } from '../gpu/timer.js';
import { loadTuneCache, saveTuneCache, type TunedClass, type TuneStore, type Warn } from './cache.js';
import { KernelChoices, type KernelChoice } from './choices.js';
import { modelTuneClasses, type TuneClass, type TuneTarget } from './classes.js';
import { pickWinner, timeCandidates, unsliced, type MeasureOptions, type Slice } from './measure.js';
import { adapterName, adapterSignature, canonicalJson } from './signature.js';

export interface TuneClassReport {
  kernel: string;
  shape_class: string;
  default_ms: number;
  best_ms: number;
  speedup: number;
  candidates_tried: number;
  best_variant: string;
  default_variant: string;
  /** Candidates that failed the output check (never eligible). */
  rejected_wrong: number;
  cached: boolean;
  /** Seconds this run spent on the class (compiling, checking, timing); 0 when cached. */
  elapsed_s: number;
}

export interface TuneReport {
  adapter: string;
  budget_s: number;
  elapsed_s: number;
  classes: TuneClassReport[];
  /** Classes left untuned because the budget ran out. */
  skipped: string[];
}

export interface TuneOptions {
  /** Wall-clock budget of tuning (cached classes cost nothing). Default 5000 ms. */
  budgetMs?: number;
  /** Where results persist; none: nothing is read or written. */
  store?: TuneStore | undefined;
  warn?: Warn;
  /**
   * Runs each short piece of a class's GPU work (a compile batch, one candidate's recording or
   * output check, one timing round) holding the GPU: the engine passes its lock, so requests
   * interleave between pieces; background tuning's also waits until no request runs.
   */
  hold?: Slice;
  /**
   * The time the budget is counted on (default performance.now); background tuning's stops while
   * it waits for requests to finish, so the budget is spent tuning, not waiting.
   */
  clock?: () => number;
  /**
   * The untuned engine's choices (the adapter class's row, tuner/defaults.ts): each class's
   * default, what candidates must beat; the result's choices start from them.
   */
  defaults?: KernelChoices;
  /** Candidates compiled at once (default 4); 1 keeps each compile slice to one pipeline. */
  compileBatch?: number;
  /** Stop between classes. */
  signal?: AbortSignal | undefined;
  onClass?: (r: TuneClassReport) => void;
  measure?: MeasureOptions;
}

export interface TuneResult {
  report: TuneReport;
  choices: KernelChoices;
}

/**
 * Output check: max |candidate − default| ≤ OUTPUT_TOLERANCE · max |default|. Every candidate sums
 * the same products in f32 in another order (or dequantizes through f16 exactly); at the K of
 * these layers (≤ 16k) reordering moves a sum by a few units of f32 rounding relative to its terms,
 * ~1e-6 of the output's scale in practice, while a wrong kernel (a skipped tile, a wrong row, a
 * stale or unwritten output) is off by the output's own scale. 1e-3 sits orders of magnitude from
 * both.
 */
export const OUTPUT_TOLERANCE = 1e-3;

export function outputsAgree(ref: Float32Array, got: Float32Array, tol = OUTPUT_TOLERANCE): boolean {
  if (ref.length !== got.length) return false;
  let scale = 0;
  for (const v of ref) scale = Math.max(scale, Math.abs(v));
  let worst = 0;
  for (let i = 0; i < ref.length; i++) {
    const d = Math.abs((ref[i] as number) - (got[i] as number));
    if (!(d <= worst)) worst = d; // NaN counts as the worst
    if (Number.isNaN(d)) return false;
  }
  return worst <= tol * scale;
}

async function readF32(ctx: GpuContext, buf: GPUBuffer, bytes: number): Promise<Float32Array> {
  return new Float32Array(await ctx.read(buf, 0, bytes));
}

function runAndClear(ctx: GpuContext, out: GPUBuffer, dispatches: readonly Dispatch[]): void {
  const enc = ctx.device.createCommandEncoder({ label: 'kiln.tune.check' });
  // A candidate that writes nothing must not pass by leaving the previous output in place.
  enc.clearBuffer(out);
  const pass = enc.beginComputePass();
  for (const d of dispatches) {
    pass.setPipeline(d.pipeline);
    pass.setBindGroup(0, d.bindGroup);
    pass.dispatchWorkgroups(d.grid[0], d.grid[1], d.grid[2]);
  }
  pass.end();
  ctx.device.queue.submit([enc.finish()]);
}

/** Candidates compiled concurrently between deadline checks. */
const COMPILE_BATCH = 4;

/**
 * Tunes one class: compile the candidates, drop those that fail to compile or record, dedupe those
 * that resolve to the same pipelines, check outputs, time the correct ones, pick. Returns null
 * when the deadline passes before its timing, or its timing rounds would not fit before it.
 */
export async function tuneClass(
  ctx: GpuContext,
  timer: GpuTimer,
  cls: TuneClass,
  opts: {
    measure?: MeasureOptions;
    deadline?: number;
    clock?: () => number;
    slice?: Slice;
    compileBatch?: number;
  } = {},
): Promise<(TunedClass & { rejected_wrong: number }) | null> {
  const slice = opts.slice ?? unsliced;
  const clock = opts.clock ?? (() => performance.now());
  const batch = opts.compileBatch ?? COMPILE_BATCH;
  const bench = await slice(async () => cls.prepare(ctx));
  const builders: DispatchBuilder[] = [];
  try {
    // Compile the candidates a few at a time (off the queue), then record them one at a time,
    // each in its own error scope: scopes are a device-wide stack, so interleaved ones could pin
    // one candidate's error on another. Compiling is where a cold driver cache spends its time
    // (lavapipe: 0.5-1.5 s per pipeline), so the deadline is checked between batches and between
    // output checks (a driver may compile at first dispatch): a class that cannot finish is
    // skipped, and what it compiled is in the driver's cache for the next run.
    const late = () => opts.deadline !== undefined && clock() > opts.deadline;
    for (let i = 0; i < cls.candidates.length; i += batch) {
      if (late()) return null;
      await slice(() =>
        Promise.all(
          cls.candidates
            .slice(i, i + batch)
            .map((choice) => precompile(ctx, (b) => bench.record(b, choice)).catch(() => undefined)),
        ),
      );
    }
    const recorded: (Dispatch[] | null)[] = [];
    for (const choice of cls.candidates) {
      try {
        const r = await slice(() =>
          ctx.checkErrors(`tuning ${cls.key}`, () => recordAsync(ctx, (b) => bench.record(b, choice))),
        );
        builders.push(r.builder);
        recorded.push(r.dispatches);
      } catch (e) {
        if (choice === cls.candidates[0]) throw e;
        recorded.push(null); // a variant this adapter cannot build: not a candidate here
      }
    }
    const names = new Set<string>();
    const live: { choice: KernelChoice; dispatches: Dispatch[]; name: string }[] = [];
    recorded.forEach((d, i) => {
      if (!d) return;
      // Uniform-only knobs (attention's chunk) share pipelines, so the choice is part of the name.
      const choice = cls.candidates[i] as KernelChoice;
      const labels = [...new Set(d.map((x) => x.label))].join('+');
      const name =
        choice.kernel === 'attention_decode' && !choice.form ? `${labels} chunk${choice.chunk}` : labels;
      if (names.has(name)) return;
      names.add(name);
      live.push({ choice, dispatches: d, name });
    });
    // Correctness first: the default's output is the reference (it is the kernel the test suite
    // checks against float64 references).
    const correct: boolean[] = [];
    let ref: Float32Array | null = null;
    for (const c of live) {
      if (late()) return null;
      const got = await slice(async () => {
        await ctx.checkErrors(`checking ${c.name}`, async () => runAndClear(ctx, bench.output, c.dispatches));
        return readF32(ctx, bench.output, bench.outputBytes);
      });
      if (!ref) {
        ref = got;
        correct.push(true);
      } else correct.push(outputsAgree(ref, got));
    }
    const eligible = live.filter((_, i) => correct[i]);
    const m = await timeCandidates(
      timer,
      eligible.map((c) => c.dispatches),
      {
        ...opts.measure,
        ...(opts.deadline !== undefined ? { deadline: opts.deadline } : {}),
        clock,
        slice,
      },
    );
    if (m.rounds < 3 || m.ms[0] === null || m.ms[0] === undefined) return null;
    let w = pickWinner(
      m.ms,
      eligible.map(() => true),
    );
    let defaultMs = m.ms[0];
    let bestMs = m.ms[w] as number;
    if (w !== 0) {
      // The fastest of many noisy medians is biased low (the winner's curse): time the winner
      // against the default again, alone, and keep it only if it still wins. These fresh figures
      // are the ones reported.
      const pair = [eligible[0], eligible[w]].map((c) => (c as (typeof eligible)[number]).dispatches);
      const again = await timeCandidates(timer, pair, {
        ...opts.measure,
        rejectFactor: Infinity,
        slice,
      });
      const [d0, d1] = again.ms;
      if (d0 != null && d1 != null && again.rounds >= 3) {
        defaultMs = d0;
        if (pickWinner([d0, d1], [true, true]) === 1) bestMs = d1;
        else {
          w = 0;
          bestMs = d0;
        }
      }
    }
    const win = eligible[w] as (typeof eligible)[number];
    return {
      kernel: cls.kernel,
      choice: win.choice,
      best_variant: win.name,
      default_variant: (eligible[0] as (typeof eligible)[number]).name,
      default_choice: cls.candidates[0] as KernelChoice,
      default_ms: defaultMs,
      best_ms: bestMs,
      candidates_tried: live.length,
      rejected_wrong: correct.filter((c) => !c).length,
    };
  } finally {
    for (const b of builders) b.destroy();
    bench.destroy();
  }
}

/** The choices table for these tuned classes, over the defaults of the others. */
export function choicesOf(classes: ReadonlyMap<string, TunedClass>, defaults?: KernelChoices): KernelChoices {
  const out = new KernelChoices();
  for (const [key, c] of defaults?.entries() ?? []) out.set(key, c);
  for (const [key, c] of classes) out.set(key, c.choice);
  return out;
}

function report(key: string, c: TunedClass, cached: boolean, rejected = 0, elapsedMs = 0): TuneClassReport {
  return {
    kernel: c.kernel,
    shape_class: key,
    default_ms: significant(c.default_ms),
    best_ms: significant(c.best_ms),
    speedup: round(c.default_ms / c.best_ms),
    candidates_tried: cached ? 0 : c.candidates_tried,
    best_variant: c.best_variant,
    default_variant: c.default_variant,
    rejected_wrong: rejected,
    cached,
    elapsed_s: round(elapsedMs / 1000),
  };
}

const round = (x: number) => Math.round(x * 1e4) / 1e4;
/**
 * Kernel times keep 6 significant digits, not 4 decimals: a repeated short kernel times in
 * microseconds, where 4 decimals would leave its reported times too coarse to give back the
 * reported speedup (or round a time to 0).
 */
const significant = (x: number) => Number(x.toPrecision(6));

/** Geometric mean of the classes' speedups (1 for none). */
export function geomeanSpeedup(classes: readonly Pick<TuneClassReport, 'speedup'>[]): number {
  if (classes.length === 0) return 1;
  return Math.exp(classes.reduce((s, c) => s + Math.log(c.speedup), 0) / classes.length);
}

/** Tunes `target`'s classes (cached ones first from the store) within the budget. */
export async function tuneModel(target: TuneTarget, opts: TuneOptions = {}): Promise<TuneResult> {
  const ctx = target.ctx;
  const t0 = performance.now();
  const c0 = (opts.clock ?? (() => performance.now()))();
  const budgetMs = opts.budgetMs ?? 5000;
  const warn = opts.warn ?? ((m: string) => console.warn(`kiln: ${m}`));
  const clock = opts.clock ?? (() => performance.now());
  const signature = adapterSignature(ctx);
  const stored = opts.store
    ? await loadTuneCache(opts.store, signature, warn)
    : new Map<string, TunedClass>();
  const classes = modelTuneClasses(target, opts.defaults);
  const done = new Map<string, TunedClass>();
  const reports: TuneClassReport[] = [];
  const todo: TuneClass[] = [];
  for (const cls of classes) {
    const hit = stored.get(cls.key);
    if (hit) {
      // Trust a cached choice only if this Kiln could have chosen it for this class.
      const known = cls.candidates.some((c) => canonicalJson(c) === canonicalJson(hit.choice));
      const sameDefault = canonicalJson(hit.default_choice) === canonicalJson(cls.candidates[0]);
      if (known && sameDefault && hit.kernel === cls.kernel) {
        done.set(cls.key, hit);
        reports.push(report(cls.key, hit, true));
        opts.onClass?.(reports[reports.length - 1] as TuneClassReport);
        continue;
      }
      warn(
        known
          ? `tuning cache: "${cls.key}" was timed against another default (the kernel defaults changed); retuning`
          : `tuning cache: the choice for "${cls.key}" is not in this version's search space; retuning`,
      );
      stored.delete(cls.key);
    }
    todo.push(cls);
  }
  const deadline = c0 + budgetMs;
  const skipped: string[] = [];
  const timer = new GpuTimer(ctx);
  try {
    for (const cls of todo) {
      if (opts.signal?.aborted || clock() >= deadline) {
        skipped.push(cls.key);
        continue;
      }
      const started = performance.now();
      const r = await tuneClass(ctx, timer, cls, {
        measure: opts.measure ?? {},
        deadline,
        clock,
        slice: opts.hold ?? unsliced,
        ...(opts.compileBatch !== undefined ? { compileBatch: opts.compileBatch } : {}),
      });
      if (!r) {
        skipped.push(cls.key);
        continue;
      }
      const { rejected_wrong, ...entry } = r;
      done.set(cls.key, entry);
      stored.set(cls.key, entry);
      reports.push(report(cls.key, entry, false, rejected_wrong, performance.now() - started));
      opts.onClass?.(reports[reports.length - 1] as TuneClassReport);
      // Save as we go: an interrupted run keeps what it finished.
      if (opts.store) await saveTuneCache(opts.store, signature, stored);
    }
  } finally {
    timer.destroy();
  }
  return {
    report: {
      adapter: adapterName(signature),
      budget_s: budgetMs / 1000,
      elapsed_s: round((performance.now() - t0) / 1000),
      classes: reports,
      skipped,
    },
    choices: choicesOf(done, opts.defaults),
  };
}

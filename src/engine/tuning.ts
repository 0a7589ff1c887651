/**
 * Kernel tuning as the engine runs it at load (EngineOptions.tune): the cached choices of this
 * adapter apply before the warm-up, and the classes left are tuned in the background, in short
 * slices that run only while no request runs (`runTuning`), within a budget of tuning time.
 * This keeps the status the browser app shows and the promise that settles when the engine runs
 * the winners, and runs a tuning (foreground or background) in slices that hold the GPU state.
 */
import type { TuningStatus } from '../api/types.js';
import { KilnError } from '../errors.js';
import type { KernelChoices } from '../tuner/choices.js';
import type { Slice } from '../tuner/measure.js';
import { tuneModel, type TuneOptions, type TuneReport, type TuneResult } from '../tuner/tuner.js';
import type { ForwardModel } from './forward/model.js';
import type { EngineTuneOptions } from './options.js';
import type { Scheduler } from './scheduler.js';

const DEFAULT_TUNE_BUDGET_MS = 5000;

/** Tunes the engine's kernels (Engine.tune). */
export type TuneFn = (opts: TuneOptions) => Promise<TuneResult>;

export class BackgroundTuning {
  status: TuningStatus = { state: 'off', cachedClasses: 0, tunedClasses: 0, leftClasses: 0 };
  /** Resolves to the background run's report once the engine runs the winners; null if none ran. */
  report: Promise<TuneReport | null> = Promise.resolve(null);
  private readonly abort = new AbortController();

  /** Applies this adapter's cached choices (tuning nothing new). */
  async applyCached(tune: TuneFn, opts: EngineTuneOptions): Promise<TuneResult> {
    const cached = await tune({ ...opts, budgetMs: 0 });
    const left = cached.report.skipped.length;
    this.status = {
      state: left > 0 && opts.background !== false ? 'running' : 'done',
      cachedClasses: cached.report.classes.length,
      tunedClasses: 0,
      leftClasses: left,
    };
    return cached;
  }

  /** Tunes the classes the cache lacked, in the background; `alive` is false once disposed. */
  start(tune: TuneFn, opts: EngineTuneOptions, alive: () => boolean): void {
    if (this.status.leftClasses === 0) return;
    this.report = tune({
      ...opts,
      budgetMs: opts.budgetMs ?? DEFAULT_TUNE_BUDGET_MS,
      signal: this.abort.signal,
      // Counted as they finish, so a caller that stops early can say how far it got.
      onClass: () => {
        const st = this.status;
        this.status = {
          ...st,
          tunedClasses: st.tunedClasses + 1,
          leftClasses: Math.max(0, st.leftClasses - 1),
        };
      },
    }).then(
      (r) => {
        this.status = {
          ...this.status,
          state: 'done',
          tunedClasses: r.report.classes.filter((c) => !c.cached).length,
          leftClasses: r.report.skipped.length,
        };
        return r.report;
      },
      (e: unknown) => {
        this.status = { ...this.status, state: 'done' };
        // Tuning is an optimisation: the engine keeps its defaults if it fails.
        if (alive()) (opts.warn ?? console.warn)(`kiln: kernel tuning stopped: ${(e as Error).message}`);
        return null;
      },
    );
  }

  /** Records how long one background slice held the GPU (a request arriving waits at most that). */
  noteSlice(ms: number): void {
    const st = this.status;
    this.status = {
      ...st,
      longestSliceMs: Math.max(st.longestSliceMs ?? 0, ms),
      slices: (st.slices ?? 0) + 1,
    };
  }

  /** Stops the background run between classes. */
  stop(): void {
    this.abort.abort();
  }
}

/** What a tuning run needs of the engine, read at each use (a recovery replaces them). */
export interface TuningHost {
  scheduler(): Scheduler;
  forward(): ForwardModel;
  disposed(): boolean;
  /** The untuned kernel choices tuning starts from. */
  defaults: KernelChoices;
}

/**
 * Tuning in slices (a compile batch, an output check, a timing round) that hold the GPU state:
 * in the foreground they take turns with steps; in the background they run only while no request
 * runs, one pipeline compiled per slice, and the budget counts only the time spent in them. The
 * engine then runs the chosen kernels.
 */
export async function runTuning(
  host: TuningHost,
  tuning: BackgroundTuning,
  opts: TuneOptions,
  background: boolean,
): Promise<TuneResult> {
  if (host.disposed()) throw new KilnError('the engine has been disposed');
  const guard = async <T>(work: () => Promise<T>): Promise<T> => {
    if (host.disposed()) throw new KilnError('the engine has been disposed');
    return work();
  };
  let waited = 0;
  const hold: Slice = background
    ? (work) => {
        const asked = performance.now();
        return host.scheduler().whenIdleExclusive(async () => {
          const start = performance.now();
          waited += start - asked;
          try {
            return await guard(work);
          } finally {
            tuning.noteSlice(performance.now() - start);
          }
        });
      }
    : (work) => host.scheduler().exclusive(() => guard(work));
  const result = await tuneModel(host.forward().tuneTarget(), {
    ...opts,
    hold,
    defaults: host.defaults,
    ...(background ? { clock: () => performance.now() - waited, compileBatch: 1 } : {}),
  });
  await host.scheduler().exclusive(() => guard(async () => host.forward().setChoices(result.choices)));
  return result;
}

/**
 * `kiln tune`: tunes a loaded model's kernels to this adapter within a budget, caches the choices
 * per adapter signature (FileTuneStore), and reports default vs tuned time per shape class.
 */
import type { Engine } from '../engine/engine.js';
import type { TuneStore } from '../tuner/cache.js';
import { geomeanSpeedup, type TuneClassReport, type TuneReport } from '../tuner/tuner.js';
import { FileTuneStore } from './tune-store.js';

export interface TuneCommandOptions {
  budgetS: number;
  json?: boolean;
  /** Ignore cached results (they are overwritten by the new ones). */
  retune?: boolean;
  /** Cache location (default FileTuneStore's). */
  store?: TuneStore;
  quiet?: boolean;
}

/** The JSON of `kiln tune --json`. */
export interface TuneJson {
  adapter: string;
  /** The row of kernel defaults the classes' defaults came from (src/tuner/defaults.ts). */
  kernel_defaults: string;
  budget_s: number;
  elapsed_s: number;
  classes: TuneClassReport[];
  geomean_speedup: number;
  skipped: string[];
  cache: string;
}

/** A store that reads nothing: every class is tuned again, and the results replace the old ones. */
class WriteOnly implements TuneStore {
  constructor(private readonly inner: TuneStore) {}
  get where(): string {
    return this.inner.where;
  }
  read(): Promise<string | null> {
    return Promise.resolve(null);
  }
  write(id: string, text: string): Promise<void> {
    return this.inner.write(id, text);
  }
}

export async function runTune(engine: Engine, o: TuneCommandOptions): Promise<TuneJson> {
  const base = o.store ?? new FileTuneStore();
  const store = o.retune ? new WriteOnly(base) : base;
  const log = (s: string) => {
    if (!o.quiet && !o.json) process.stderr.write(s);
  };
  log(
    `tuning ${engine.modelName} on ${engine.adapter.description || engine.adapter.device}, budget ${o.budgetS} s\n`,
  );
  const { report } = await engine.tune({
    budgetMs: o.budgetS * 1000,
    store,
    warn: (m) => process.stderr.write(`kiln: ${m}\n`),
    onClass: (c) =>
      log(
        `  ${c.shape_class}: ${c.cached ? 'cached' : `${c.candidates_tried} tried`}, ${c.default_ms.toFixed(3)} -> ${c.best_ms.toFixed(3)} ms (${c.speedup.toFixed(2)}x) ${c.best_variant}\n`,
      ),
  });
  const out = toJson(report, base.where, engine.kernelDefaults.adapterClass);
  if (o.json) process.stdout.write(JSON.stringify(out) + '\n');
  else printTable(out);
  return out;
}

function toJson(r: TuneReport, cache: string, defaults: string): TuneJson {
  return {
    adapter: r.adapter,
    kernel_defaults: defaults,
    budget_s: r.budget_s,
    elapsed_s: r.elapsed_s,
    classes: r.classes,
    geomean_speedup: Math.round(geomeanSpeedup(r.classes) * 1e4) / 1e4,
    skipped: r.skipped,
    cache,
  };
}

function printTable(t: TuneJson): void {
  const w = Math.max(11, ...t.classes.map((c) => c.shape_class.length));
  const lines = [
    `adapter: ${t.adapter} (kernel defaults: ${t.kernel_defaults})`,
    `${'shape class'.padEnd(w)}  ${'default ms'.padStart(10)}  ${'best ms'.padStart(9)}  speedup  tried  best variant`,
    ...t.classes.map(
      (c) =>
        `${c.shape_class.padEnd(w)}  ${c.default_ms.toFixed(3).padStart(10)}  ${c.best_ms.toFixed(3).padStart(9)}  ${`${c.speedup.toFixed(2)}x`.padStart(7)}  ${String(c.candidates_tried).padStart(5)}  ${c.best_variant}`,
    ),
    `geometric mean speedup ${t.geomean_speedup.toFixed(2)}x over ${t.classes.length} classes in ${t.elapsed_s.toFixed(1)} s` +
      (t.skipped.length ? `; ${t.skipped.length} classes left for a later run (budget)` : ''),
    `cache: ${t.cache}`,
  ];
  process.stdout.write(lines.join('\n') + '\n');
}

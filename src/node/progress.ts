/**
 * A byte-progress bar for downloads and loading, over cli-progress. It draws only to a terminal:
 * when stderr is piped or redirected it prints nothing, so `--json` output on stdout stays clean and
 * CI logs are not flooded with redraws.
 */
import cliProgress from 'cli-progress';

/** A progress display; both methods are no-ops when the display is disabled. */
export interface ByteProgress {
  /** Sets the bytes done and the total (0 when unknown); `detail` is shown after the numbers. */
  update(bytes: number, total: number, detail?: string): void;
  /** Finishes the bar and moves to the next line. Safe to call more than once. */
  stop(): void;
}

/** Options of {@link createByteProgress}. */
export interface ByteProgressOptions {
  /** Where to draw; default process.stderr. */
  stream?: NodeJS.WriteStream;
  /** Force the bar off (e.g. --quiet); it is also off whenever `stream` is not a TTY. */
  enabled?: boolean;
  /** Clock in milliseconds; default Date.now (tests pass their own). */
  now?: () => number;
}

// Rate and ETA come from the last few seconds rather than the whole run, so they follow a connection
// that speeds up or stalls, and bytes already on disk (a resumed download) never count as speed.
const RATE_WINDOW_MS = 5000;
const MIN_RATE_SPAN_MS = 500;

/**
 * `123.4 MB`, or `1.23 GB` from a gigabyte up: decimal units, as the Hub shows download sizes
 * (GPU memory messages use binary units: formatBytes in src/gpu/device.ts).
 */
export function formatDecimalBytes(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} GB`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)} MB`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} kB`;
  return `${Math.round(n)} B`;
}

/** Bytes per second as `12.3 MB/s`. */
export function formatRate(bytesPerSecond: number): string {
  return `${formatDecimalBytes(Number.isFinite(bytesPerSecond) ? bytesPerSecond : 0)}/s`;
}

/** Seconds as `45s`, `3m05s` or `2h07m`; `--` when unknown. */
export function formatEta(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '--';
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

interface Payload {
  detail: string;
}

/**
 * Creates a byte-progress bar labelled `label`: `label [████░░] 42% | 113.0/268.9 MB | 12.1 MB/s |
 * ETA 13s | detail`. The bar starts on the first update, so creating one that is never used prints nothing.
 */
export function createByteProgress(label: string, opts: ByteProgressOptions = {}): ByteProgress {
  const stream = opts.stream ?? process.stderr;
  if (opts.enabled === false || !stream.isTTY) return { update() {}, stop() {} };

  const now = opts.now ?? Date.now;
  let bar: cliProgress.SingleBar | null = null;
  let stopped = false;
  const samples: { t: number; bytes: number }[] = [];

  const sample = (bytes: number): void => {
    const t = now();
    const last = samples.at(-1);
    if (last && bytes < last.bytes) samples.length = 0; // restarted from zero: old samples mean nothing
    if (!last || t - last.t >= 100 || samples.length === 1) samples.push({ t, bytes });
    else samples[samples.length - 1] = { t, bytes };
    while (samples.length > 2 && t - samples[1]!.t > RATE_WINDOW_MS) samples.shift();
  };

  const rate = (): number => {
    const first = samples[0];
    const last = samples.at(-1);
    if (!first || !last || last.t - first.t < MIN_RATE_SPAN_MS) return NaN;
    return ((last.bytes - first.bytes) * 1000) / (last.t - first.t);
  };

  const format = (o: cliProgress.Options, params: cliProgress.Params, payload: Payload): string => {
    const r = rate();
    const eta = params.total > 0 && r > 0 ? (params.total - params.value) / r : NaN;
    const pct = params.total > 0 ? Math.floor((params.value / params.total) * 100) : 0;
    const size =
      params.total > 0
        ? `${formatDecimalBytes(params.value)}/${formatDecimalBytes(params.total)}`
        : formatDecimalBytes(params.value);
    const barText = cliProgress.Format.BarFormat(params.total > 0 ? params.progress : 0, o);
    const parts = [
      `${label} ${barText} ${String(pct).padStart(3)}%`,
      size,
      Number.isNaN(r) ? '-- MB/s' : formatRate(r),
      `ETA ${formatEta(eta)}`,
    ];
    if (payload.detail) parts.push(payload.detail);
    return parts.join(' | ');
  };

  return {
    update(bytes: number, total: number, detail = ''): void {
      if (stopped) return;
      const payload: Payload = { detail };
      if (!bar) {
        bar = new cliProgress.SingleBar(
          { format, stream, hideCursor: true, barsize: 24, fps: 8, etaBuffer: 50 },
          cliProgress.Presets.shades_classic,
        );
        sample(bytes);
        bar.start(total, bytes, payload);
        return;
      }
      sample(bytes);
      if (total !== bar.getTotal()) bar.setTotal(total);
      bar.update(bytes, payload);
    },
    stop(): void {
      if (stopped) return;
      stopped = true;
      bar?.stop();
    },
  };
}

/**
 * A progress bar over a count of items (`label [████░░] 42% | 8/19 | ETA 13s | detail`), for work
 * measured in steps rather than bytes (quantizing matrices, evaluating tokens). Off when not a TTY.
 */
export function createCountProgress(label: string, opts: ByteProgressOptions = {}): ByteProgress {
  const stream = opts.stream ?? process.stderr;
  if (opts.enabled === false || !stream.isTTY) return { update() {}, stop() {} };
  let bar: cliProgress.SingleBar | null = null;
  let stopped = false;
  return {
    update(done: number, total: number, detail = ''): void {
      if (stopped) return;
      if (!bar) {
        bar = new cliProgress.SingleBar(
          {
            stream,
            format: `${label} {bar} {percentage}% | {value}/{total} | ETA {eta_formatted} | {detail}`,
            hideCursor: true,
            clearOnComplete: false,
          },
          cliProgress.Presets.shades_classic,
        );
        bar.start(total, done, { detail });
      } else {
        bar.setTotal(total);
        bar.update(done, { detail });
      }
    },
    stop(): void {
      if (stopped) return;
      stopped = true;
      bar?.stop();
    },
  };
}

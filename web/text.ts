/**
 * What the page says about the engine and its work: load progress, the adapter, precision and
 * tuning rows, and the stats line under a reply. Text only; main.ts puts it on the page.
 */
import type { DeviceLoss, KilnEngine } from '../src/api/engine-api.js';
import { formatBytes } from '../src/gpu/device.js';
import type { LoadProgress } from '../src/worker/protocol.js';

export function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** The start of what the banner says when the GPU device is lost; what to do follows it. */
export function deviceLossText(loss: DeviceLoss): string {
  return `The GPU device was lost (${loss.reason}${loss.message ? `: ${loss.message.replace(/\.$/, '')}` : ''}). `;
}

/** The planner's choice: bytes by part, and why the context or KV pool was cut, if it was. */
export function memoryPlanText(e: KilnEngine): string {
  const p = e.memoryPlan;
  if (!p) return 'none';
  const parts =
    `weights ${formatBytes(p.weights)}, KV ${formatBytes(p.kvCache)} (${p.kvTokens} tokens), ` +
    `activations ${formatBytes(p.activations)}, scratch ${formatBytes(p.scratch)}`;
  return p.note ? `${parts}. ${p.note}` : parts;
}

export function describeProgress(p: LoadProgress): string {
  const bytes = `${formatBytes(p.loadedBytes)} of ${formatBytes(p.totalBytes)}`;
  if (p.phase === 'checking') return 'Checking that the model fits this device…';
  if (p.phase === 'downloading') return p.item ? `Downloading ${p.item} · ${bytes}` : `Downloaded ${bytes}`;
  return `Loading weights onto the GPU · ${bytes}`;
}

export function adapterName(e: KilnEngine): string {
  const a = e.adapter;
  return a.description || [a.vendor, a.architecture].filter(Boolean).join(' ') || 'unknown adapter';
}

export function f16Text(e: KilnEngine): string {
  return e.adapter.shaderF16 ? `f16 on (KV ${e.kvCacheDtype})` : 'f16 off (f32 path)';
}

/** The Kernels row: whether this adapter's tuned kernels are in use (see README, Kernel tuning). */
export function tuningText(e: KilnEngine): string {
  const t = e.tuningStatus;
  if (t.state === 'off') return 'defaults (tuning off)';
  const tuned = t.cachedClasses + t.tunedClasses;
  const left = t.leftClasses > 0 ? `, ${t.leftClasses} left for the next load` : '';
  if (t.state === 'running') return `tuning in the background (${t.cachedClasses} classes cached)`;
  return `${tuned} ${tuned === 1 ? 'class' : 'classes'} tuned for this adapter (${t.cachedClasses} from cache)${left}`;
}

export function baseStats(e: KilnEngine): string {
  return `${adapterName(e)} · ${f16Text(e)} · GPU memory ${formatBytes(e.gpuMemoryBytes)}`;
}

export interface Measure {
  tokens: number;
  tokensPerS: number;
  firstTokenMs: number;
  promptTokens: number;
  cachedTokens: number | null;
}

export function statsLine(e: KilnEngine, m: Measure, finish: string): string {
  const cached = m.cachedTokens === null ? '' : ` (${m.cachedTokens} cached)`;
  return [
    `${m.tokens} tokens`,
    `${m.tokensPerS.toFixed(1)} tokens/s`,
    `first token ${Math.round(m.firstTokenMs)} ms`,
    `prompt ${m.promptTokens} tokens${cached}`,
    ...(finish === 'length' ? [] : [finish === 'stop' ? 'stopped at end of text' : 'stopped']),
    baseStats(e),
  ].join(' · ');
}

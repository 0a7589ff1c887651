/**
 * Work that runs on a scheduler Hold, outside of any request: teacher-forced logits a chunk of rows
 * at a time (evaluation, golden-logit tests), the projections' input activations (quantizer
 * calibration) and one decode step profiled dispatch by dispatch (benchmarks). Each builds its
 * step inputs through the hold, never by itself.
 */
import type { GpuContext } from '../gpu/device.js';
import { GpuTimer } from '../gpu/timer.js';
import type { ProjectionRole } from '../model/architecture.js';
import type { ForwardModel } from './forward/model.js';
import { captureLinearInputs, profileStep, runStep } from './forward/step.js';
import type { Hold } from './scheduler.js';

/**
 * The teacher-forced logits of `ids` in steps of at most `chunk` rows ([rows, vocab] f32 from row
 * `start`). The hold is released when the iteration ends or is abandoned.
 */
export async function* heldLogitChunks(
  forward: ForwardModel,
  hold: Hold,
  ids: readonly number[],
  chunk: number,
): AsyncGenerator<{ start: number; rows: number; logits: Float32Array }> {
  // The logits of one step live in one storage binding: with a 150k vocabulary, 256 rows of f32
  // logits would exceed the default 128 MiB, so steps here take as many rows as fit.
  const fit = Math.floor(forward.ctx.limits.maxStorageBufferBindingSize / (forward.spec.vocabSize * 4));
  const step = Math.max(1, Math.min(chunk, fit));
  try {
    for (let start = 0; start < ids.length; start += step) {
      const rows = ids.slice(start, Math.min(ids.length, start + step));
      const input = hold.input(
        rows,
        start,
        rows.map((_, i) => i),
      );
      yield { start, rows: rows.length, logits: await runStep(forward, input, 'logits') };
    }
  } finally {
    hold.release();
  }
}

/**
 * The input activations of every layer's projections while the model reads `ids` in steps of
 * `chunk` rows: [layer][role] = [ids.length, cols] f32.
 */
export async function heldLinearInputs(
  forward: ForwardModel,
  hold: Hold,
  ids: readonly number[],
  chunk: number,
): Promise<Record<ProjectionRole, Float32Array>[]> {
  const chunks: Record<ProjectionRole, Float32Array>[][] = [];
  for (let start = 0; start < ids.length; start += chunk) {
    const rows = ids.slice(start, Math.min(ids.length, start + chunk));
    chunks.push(await captureLinearInputs(forward, hold.input(rows, start)));
  }
  return Array.from({ length: forward.spec.numLayers }, (_, l) => {
    const join = (proj: ProjectionRole) => {
      const parts = chunks.map((c) => (c[l] as Record<ProjectionRole, Float32Array>)[proj]);
      const out = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
      let at = 0;
      for (const p of parts) {
        out.set(p, at);
        at += p.length;
      }
      return out;
    };
    return { qkv: join('qkv'), o: join('o'), gateUp: join('gateUp'), down: join('down') };
  });
}

/**
 * One step of `rows` rows ending at position `context - 1` (1: a decode step; more: a prefill
 * chunk), every dispatch timed on its own, summed by label.
 */
export async function heldProfile(
  ctx: GpuContext,
  forward: ForwardModel,
  hold: Hold,
  context: number,
  rows = 1,
): Promise<{ label: string; ms: number; count: number }[]> {
  const timer = new GpuTimer(ctx);
  try {
    return await profileStep(forward, hold.input(new Array<number>(rows).fill(0), context - rows), timer);
  } finally {
    timer.destroy();
  }
}

/**
 * Recovery from a lost device: what the engine keeps to rebuild (the opened model files and the
 * load's choices), the rebuild itself on a new device, and how a step that failed is explained (a
 * retriable GpuDeviceError when the device was lost and the engine recovers). The engine's
 * `ready()` waits on the one recovery promise kept here, so every request waits for the rebuild.
 */
import { GpuDeviceError, KilnError } from '../errors.js';
import type { GpuContext } from '../gpu/device.js';
import type { ModelSpec } from '../model/spec.js';
import type { KernelChoices } from '../tuner/choices.js';
import { destroyWeights } from '../weights/loader.js';
import type { ModelFiles } from '../weights/model-files.js';
import type { ForwardModel } from './forward/model.js';
import { buildForward, type GpuRecipe } from './gpu-state.js';

/**
 * How long a failed step waits for `device.lost` to settle before deciding the failure was not a
 * loss: Dawn reports the failed readback and the loss in either order, within one event poll.
 */
const LOST_SETTLE_MS = 1000;

/**
 * What the engine keeps to rebuild its GPU state on a new device after a loss: the opened model
 * files (weights are read again from them, never downloaded again) and the choices made at load.
 */
export interface Rebuild extends GpuRecipe {
  files: ModelFiles;
  /** A new GPU context, or null when the engine cannot get one (an injected device, no factory). */
  acquire: (() => Promise<GpuContext>) | null;
}

/**
 * What a failed step on `ctx` means: when the device was lost and the engine recovers from it
 * (`recovers()`), a retriable GpuDeviceError; else the failure itself.
 */
export async function explainFailure(ctx: GpuContext, e: unknown, recovers: () => boolean): Promise<unknown> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const lost = await Promise.race([
    ctx.device.lost,
    new Promise<null>((r) => (timer = setTimeout(() => r(null), LOST_SETTLE_MS))),
  ]);
  clearTimeout(timer);
  if (!lost || !recovers()) return e;
  return GpuDeviceError.lostRetriable(lost.reason + (lost.message ? `: ${lost.message}` : ''), {
    cause: e,
  });
}

/**
 * The GPU state rebuilt on a new device: weights read again from the model files, the KV cache,
 * the forward plans with the kernel choices in use (tuned ones included). `disposed` is asked
 * once it is built: an engine disposed meanwhile frees it and fails.
 */
export async function rebuildForward(
  rb: Rebuild,
  spec: ModelSpec,
  choices: KernelChoices,
  disposed: () => boolean,
): Promise<ForwardModel> {
  if (!rb.acquire) throw new GpuDeviceError('this engine cannot get a new device');
  const ckpt = await rb.files.openCheckpoint();
  let ctx: GpuContext | null = null;
  let forward: ForwardModel | null = null;
  try {
    ctx = await rb.acquire();
    forward = await buildForward(ctx, spec, ckpt, rb);
    forward.setChoices(choices);
    if (disposed()) {
      forward.destroy();
      throw new KilnError('the engine was disposed while recovering');
    }
    return forward;
  } catch (e) {
    if (forward) {
      forward.kv.destroy();
      destroyWeights(forward.ctx, forward.weights);
    }
    ctx?.close();
    throw e;
  } finally {
    await ckpt.close();
  }
}

/** The recovery in progress, if any, and why the engine cannot run any more, if it cannot. */
export class Recovery {
  /** Settles when a recovery from a device loss is over; null when none runs. */
  private running: Promise<void> | null = null;
  /** Why the engine cannot run any more (a recovery that failed). */
  private broken: unknown = null;

  get active(): boolean {
    return this.running !== null;
  }

  /** Runs `rebuild`; a failure leaves the engine broken with a GpuDeviceError saying why. */
  start(rebuild: () => Promise<void>): void {
    this.running = rebuild().then(
      () => {
        this.running = null;
      },
      (e: unknown) => {
        this.running = null;
        this.broken = new GpuDeviceError(
          `the GPU device was lost and could not be recovered: ${(e as Error)?.message ?? String(e)}`,
          { cause: e },
        );
      },
    );
  }

  /** Waits for any recovery to be over; fails if the engine cannot run any more. */
  async settled(): Promise<void> {
    while (this.running) await this.running;
    if (this.broken) throw this.broken;
  }
}

/**
 * The engine's state on one device: weights, the paged KV cache and the forward model over them.
 * It is built at load and built again on a new device after a loss (recovery.ts), from the same
 * recipe, and freed as one; keeping both builds here keeps them the same.
 */
import type { GpuContext } from '../gpu/device.js';
import type { Checkpoint } from '../io/safetensors-checkpoint.js';
import type { ModelSpec } from '../model/spec.js';
import { destroyWeights, loadWeights, type LoadProgress, type ModelWeights } from '../weights/loader.js';
import type { WeightSource } from '../weights/source.js';
import { ForwardModel } from './forward/model.js';
import { BLOCK_TOKENS, PagedKvCache, type KvDtype } from './kv/cache.js';
import { slidingLayout } from './kv/sliding-pool.js';

/** The choices made at load that a rebuild on a new device repeats. */
export interface GpuRecipe {
  source: WeightSource;
  kvDtype: KvDtype;
  kvBlocks: number;
  /** Blocks of the sliding layers' own pool (MemoryPlan.slidingKvBlocks); 0: none. */
  slidingKvBlocks: number;
  /** Decode steps that calibrate async softmax (0: off). */
  calibration: number;
  activations: 'f32' | 'f16';
  /** One-row steps fold each RMSNorm into the following matmul where its kernel can. */
  foldNorms: boolean;
  prefillChunk: number;
  contextLength: number;
}

/**
 * Reads the weights onto `ctx`, makes the KV cache and the forward model; on failure frees what it
 * made (not `ctx`, the caller's).
 */
export async function buildForward(
  ctx: GpuContext,
  spec: ModelSpec,
  ckpt: Checkpoint,
  r: GpuRecipe,
  onProgress?: (p: LoadProgress) => void,
): Promise<ForwardModel> {
  let weights: ModelWeights | null = null;
  let kv: PagedKvCache | null = null;
  try {
    weights = await loadWeights(ctx, spec, ckpt, r.source, onProgress);
    // The memory plan chose the sliding pool's size for this context and prefill chunk.
    const layout =
      r.slidingKvBlocks > 0 ? slidingLayout(spec, r.contextLength, r.prefillChunk, BLOCK_TOKENS) : null;
    if (r.slidingKvBlocks > 0 && !layout)
      throw new RangeError('a sliding KV pool was planned for no sliding layer');
    kv = await PagedKvCache.create(
      ctx,
      spec,
      r.kvBlocks,
      r.kvDtype,
      layout ? { layout, blocks: r.slidingKvBlocks } : null,
    );
    const forward = new ForwardModel(
      ctx,
      spec,
      weights,
      kv,
      r.prefillChunk,
      r.calibration,
      r.activations,
      r.contextLength,
    );
    forward.setFoldNorms(r.foldNorms);
    return forward;
  } catch (e) {
    kv?.destroy();
    if (weights) destroyWeights(ctx, weights);
    throw e;
  }
}

/** Frees the forward model, the KV cache and the weights on its device, then the device. */
export function destroyGpuState(forward: ForwardModel): void {
  forward.destroy();
  forward.kv.destroy();
  destroyWeights(forward.ctx, forward.weights);
  forward.ctx.close();
}

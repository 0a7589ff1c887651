/**
 * How the browser app loads a model: check that it fits the device from config.json and the
 * safetensors headers (or the GGUF header) alone (a few small Range requests), then fetch the files into the Cache API
 * (or reuse them from there with no network at all), then build the engine from the cached copy.
 * Runs wherever WebGPU and the Cache API do: in the Web Worker (src/worker/handler.ts) or on a
 * page's main thread. A lost GPU device is recovered from the cached or picked files (recoverFrom).
 */
import { DeviceMemoryError, GpuDeviceError } from '../errors.js';
import { formatBytes } from '../gpu/device.js';
import { blobModelDir } from '../io/blob-model-dir.js';
import type { ModelDir } from '../io/byte-source.js';
import { ggufFileOfUrl, ggufModelDir, isGgufFileName } from '../io/gguf-model-dir.js';
import { isLaterGgufShard } from '../io/gguf-split.js';
import { httpModelDir } from '../io/http-model-dir.js';
import { ModelCache } from '../io/model-cache.js';
import { createEngine, type Engine } from '../engine/engine.js';
import { estimateMemory, slidingKvFor } from '../engine/memory.js';
import { BLOCK_TOKENS, kvBlockBytes, kvLayerBlocks, kvPoolBytes } from '../engine/kv/cache.js';
import { openModelFiles } from '../weights/model-files.js';
import { validateCheckpoint } from '../weights/loader.js';
import { IndexedDbTuneStore } from '../tuner/indexeddb-store.js';
import type { LoadOptions, LoadProgress } from './protocol.js';

const DEFAULT_CONTEXT = 4096;
const PREFILL_CHUNK = 256;
/**
 * KV pool of the app, in contexts: one chat at a time needs one context, and the second keeps the
 * previous turn's blocks cached for the next turn's prefix while a new reply is written. (The
 * engine's default pool, sized for a server's many requests, would be mostly idle here.)
 */
const KV_CONTEXTS = 2;
/** navigator.deviceMemory tops out at 8 (GiB) in Chromium: 8 means "8 or more", no limit. */
const DEVICE_MEMORY_CAP_GIB = 8;
/** Background kernel tuning per page load until every class of the model is cached. */
const TUNE_BUDGET_MS = 5000;

export interface LoadedEngine {
  engine: Engine;
  /** True when every file came from the cache. */
  fromCache: boolean;
  /**
   * Where the weights are read again from when the GPU device is lost (the engine then rebuilds on
   * a new device): the Cache API's copy, the picked files, or nowhere (a model read over the
   * network, which recovery never downloads again: it must be loaded again).
   */
  recoverFrom: 'cache' | 'files' | null;
}

/** The memory budget: the caller's, else a small device's reported memory, else none. */
function memoryBudget(opts: LoadOptions): { bytes: number; source: string } | null {
  if (opts.memoryLimitBytes !== undefined) {
    return { bytes: opts.memoryLimitBytes, source: 'the memory limit set for this page' };
  }
  const gib = (globalThis as { navigator?: { deviceMemory?: number } }).navigator?.deviceMemory;
  if (gib !== undefined && gib > 0 && gib < DEVICE_MEMORY_CAP_GIB) {
    return { bytes: gib * 2 ** 30, source: `this device's ${gib} GiB of memory` };
  }
  return null;
}

/**
 * Refuses a model that cannot fit, reading only its config and safetensors headers: the estimated
 * GPU memory against the budget, and one layer's KV cache for a whole context against the largest
 * storage binding the adapter allows.
 */
async function checkFits(
  dir: ModelDir,
  adapter: GPUAdapter,
  opts: LoadOptions,
  beforeDownload: boolean,
): Promise<void> {
  // Said only when it is true: the point of checking first is that nothing big was fetched.
  const notFetched = beforeDownload ? ' Its weights were not downloaded.' : '';
  const files = await openModelFiles(dir);
  const spec = files.spec;
  const ckpt = await files.openCheckpoint();
  try {
    const quant = files.weightSource('none');
    validateCheckpoint(spec, ckpt, quant);
    const context = Math.min(spec.maxPositionEmbeddings, opts.contextLength ?? DEFAULT_CONTEXT);
    const kvDtype =
      opts.kvCache && opts.kvCache !== 'auto'
        ? opts.kvCache
        : adapter.features.has('shader-f16')
          ? 'f16'
          : 'f32';
    const chunk = Math.min(PREFILL_CHUNK, context);
    const est = estimateMemory(spec, ckpt, quant, KV_CONTEXTS * context, kvDtype, chunk);
    // Sliding-window layers keep only their windows, in a pool of their own (kv/sliding-pool.ts).
    const blocks = Math.ceil((KV_CONTEXTS * context) / BLOCK_TOKENS);
    const kv = kvPoolBytes(spec, blocks, kvDtype, slidingKvFor(spec, context, chunk, blocks));
    const total = est.total - est.kvCache + kv;
    const budget = memoryBudget(opts);
    if (budget && total > budget.bytes) {
      throw new DeviceMemoryError(
        `This model is too big for this device: it needs about ${formatBytes(total)} of GPU memory ` +
          `(weights ${formatBytes(est.weights)}, KV cache ${formatBytes(kv)}, activations ${formatBytes(est.activations)}), ` +
          `more than ${budget.source} (${formatBytes(budget.bytes)}).${notFetched}`,
      );
    }
    // The largest buffer one layer's K gets for one context: a model whose every layer slides
    // allocates only its sliding pool.
    const ctxBlocks = Math.ceil(context / BLOCK_TOKENS);
    const layerKv =
      kvLayerBlocks(spec, ctxBlocks, slidingKvFor(spec, context, chunk, ctxBlocks)) *
      kvBlockBytes(spec, kvDtype);
    const binding = adapter.limits.maxStorageBufferBindingSize;
    if (layerKv > binding) {
      throw new DeviceMemoryError(
        `This model is too big for this GPU: one layer's KV cache for ${context} tokens takes ${formatBytes(layerKv)}, ` +
          `over the ${formatBytes(binding)} this adapter allows in one buffer binding.${notFetched}`,
      );
    }
  } finally {
    await ckpt.close();
  }
}

async function requestAdapter(): Promise<GPUAdapter> {
  const gpu = (globalThis as { navigator?: { gpu?: GPU } }).navigator?.gpu;
  if (!gpu) {
    throw new GpuDeviceError(
      'WebGPU is not available in this browser (no navigator.gpu). Use a recent Chrome or Edge, or enable WebGPU in your browser’s settings.',
    );
  }
  const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
  if (!adapter) {
    throw new GpuDeviceError(
      'WebGPU found no adapter: the GPU may be blocklisted or WebGPU disabled (on Linux Chrome, enable chrome://flags/#enable-unsafe-webgpu).',
    );
  }
  return adapter;
}

/** Loads a model as the app does (see the file's comment); progress is byte-accurate per phase. */
export async function loadEngine(
  opts: LoadOptions,
  onProgress: (p: LoadProgress) => void = () => undefined,
): Promise<LoadedEngine> {
  const adapter = await requestAdapter();
  const src = opts.source;
  let dir: ModelDir;
  let fromCache = false;
  let recoverFrom: LoadedEngine['recoverFrom'] = null;
  onProgress({ phase: 'checking', item: 'config.json', loadedBytes: 0, totalBytes: 0 });
  if (src.kind === 'files') {
    dir = blobModelDir(src.name, new Map(src.files.map((f) => [f.path, f.blob])));
    // A picked folder holding a GGUF file (or the shards of one split model, opened from the
    // first) and no config.json is that GGUF model.
    const gguf = src.files
      .map((f) => f.path)
      .filter(isGgufFileName)
      .filter((p) => !isLaterGgufShard(p));
    if (gguf.length === 1 && !src.files.some((f) => f.path === 'config.json')) {
      dir = ggufModelDir(dir, gguf[0] as string);
    }
    recoverFrom = 'files';
    await checkFits(dir, adapter, opts, false);
  } else {
    // Without the Cache API (an insecure context) the model still loads, straight from the network.
    const cache = opts.cache === false ? null : await ModelCache.open().catch(() => null);
    const stored = await cache?.cached(src.url, src.revision);
    if (stored) {
      dir = stored.dir;
      fromCache = true;
      recoverFrom = 'cache';
      await checkFits(dir, adapter, opts, false);
    } else {
      // A model folder, or a GGUF file (with its other shards when split); without the cache, a
      // GGUF file is read in place over Range requests (the header, then each tensor once).
      const gguf = ggufFileOfUrl(src.url);
      const net = gguf ? ggufModelDir(httpModelDir(gguf.base), gguf.file) : httpModelDir(src.url);
      await checkFits(net, adapter, opts, true);
      if (cache) {
        const plan = await cache.plan(src.url, src.revision);
        dir = await cache.download(plan, {
          onProgress: (p) => onProgress({ phase: 'downloading', item: p.file, ...p }),
        });
        recoverFrom = 'cache';
      } else dir = net;
    }
  }
  const context = opts.contextLength;
  const spec = (await openModelFiles(dir)).spec;
  const contextLength = Math.min(spec.maxPositionEmbeddings, context ?? DEFAULT_CONTEXT);
  const budget = memoryBudget(opts);
  const engine = await createEngine({
    model: dir,
    contextLength,
    prefillChunkTokens: Math.min(PREFILL_CHUNK, contextLength),
    kvCacheTokens: KV_CONTEXTS * contextLength,
    ...(opts.kvCache ? { kvCache: opts.kvCache } : {}),
    ...(budget ? { memoryLimitBytes: Math.floor(budget.bytes) } : {}),
    // The engine owns its device; on a loss it gets a new one and reads the weights again from
    // `dir`, which must then be local bytes (the cache or the picked files), never the network.
    recoverOnLoss: recoverFrom !== null,
    tune:
      opts.tune === false || !('indexedDB' in globalThis)
        ? false
        : { store: new IndexedDbTuneStore(), budgetMs: TUNE_BUDGET_MS },
    onProgress: (p) =>
      onProgress({
        phase: 'uploading',
        item: p.tensor,
        loadedBytes: p.loadedBytes,
        totalBytes: p.totalBytes,
      }),
  });
  return { engine, fromCache, recoverFrom };
}

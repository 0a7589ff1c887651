/**
 * Kiln's Node entry (`kiln-llm/node`): the engine with Dawn as the GPU, and models given as a local
 * folder or a Hub id (`org/name[@revision]`, downloaded into the cache on first use).
 */
import { createEngine as createCoreEngine, type Engine } from '../engine/engine.js';
import type { EngineOptions } from '../engine/options.js';
import type { ModelDir } from '../io/byte-source.js';
import { dawnGpu } from './dawn.js';
import { openLocalModelDir } from './fs-model-dir.js';
import { resolveModel } from './hub.js';
import { loadXgrammarNode } from './xgrammar.js';
import type { PullOptions } from './hub-client.js';
import { catalogAliasToHubId } from '../model/catalog.js';
import { existsSync, statSync } from 'node:fs';
import { basename, dirname } from 'node:path';
import { ggufModelDir, isGgufFileName } from '../io/gguf-model-dir.js';

export * from '../index.js';
export { openLocalModelDir } from './fs-model-dir.js';
export { pullModel, resolveModel } from './hub.js';
export { kilnCacheDir } from './hub-cache.js';
export { convertLlama2cToFolder } from './convert.js';
export { dawnGpu, acquireNodeGpu } from './dawn.js';
export { FileTuneStore } from './tune-store.js';
export { loadXgrammarNode } from './xgrammar.js';

export interface NodeEngineOptions extends Omit<EngineOptions, 'model'> {
  /** A local folder or GGUF file, a Hub id, or a ModelDir. */
  model: string | ModelDir;
  /** Download options when `model` is a Hub id not yet in the cache. */
  pull?: PullOptions;
}

/**
 * A model argument as a local folder: an existing folder, a catalog alias (models/catalog.json,
 * e.g. "smollm2-135m", pinned to its revision) or a Hub id, downloaded on first use.
 */
export async function resolveModelArg(arg: string, pull?: PullOptions): Promise<string> {
  // A folder of the same name wins over an alias.
  return resolveModel(existsSync(arg) ? arg : catalogAliasToHubId(arg), pull);
}

/**
 * A model argument opened as a ModelDir: what {@link resolveModelArg} resolves it to (a folder, an
 * alias, a Hub id), a GGUF file (local, or a Hub id's `:TAG`) as its folder plus its name.
 */
export async function openModelArg(arg: string, pull?: PullOptions): Promise<ModelDir> {
  const path = await resolveModelArg(arg, pull);
  if (isGgufFileName(path) && statSync(path).isFile()) {
    return ggufModelDir(openLocalModelDir(dirname(path)), basename(path));
  }
  return openLocalModelDir(path);
}

/** Loads a model on Dawn (unless `device` or `gpu` is given) and returns a ready engine. */
export async function createEngine(opts: NodeEngineOptions): Promise<Engine> {
  const model = typeof opts.model === 'string' ? await openModelArg(opts.model, opts.pull) : opts.model;
  const gpu = opts.device || opts.gpu ? opts.gpu : dawnGpu();
  return createCoreEngine({
    loadXgrammar: loadXgrammarNode,
    // A lost device is recovered from when the weights can be read again from local files.
    recoverOnLoss: typeof opts.model === 'string',
    ...opts,
    model,
    ...(gpu ? { gpu, keepAlive: gpu } : {}),
  });
}

/**
 * What a model is read from, whichever form it has: a Hugging Face folder (config.json,
 * tokenizer.json, safetensors) or one GGUF file (metadata, tokenizer.ggml.*, tensors). Both give
 * the same ModelSpec, the same kind of tokenizer, a Checkpoint under transformers' tensor names
 * and the WeightSource that loads it, so the engine and the browser loader do not ask which.
 */
import type { ModelDir } from '../io/byte-source.js';
import type { GgufHeader } from '../io/gguf.js';
import { openGguf, reopenGguf } from '../io/gguf-split.js';
import { isGgufModelDir } from '../io/gguf-model-dir.js';
import { ggufTokenizer, loadModelTokenizer } from '../io/gguf-tokenizer.js';
import type { KilnTokenizer } from '../io/tokenizer.js';
import { openCheckpoint, type Checkpoint } from '../io/safetensors-checkpoint.js';
import { loadModelSpec } from '../model/config.js';
import { ggufModelSpec } from '../model/gguf-config.js';
import type { ModelSpec } from '../model/spec.js';
import { ggufCheckpoint } from './gguf-checkpoint.js';
import { ggufWeightSource } from './gguf.js';
import { weightSourceFor, type LoadQuantOptions } from './select.js';
import type { WeightSource } from './source.js';

export interface ModelFiles {
  readonly spec: ModelSpec;
  /** The parsed GGUF header, null for a Hugging Face folder. */
  readonly gguf: GgufHeader | null;
  tokenizer(): Promise<KilnTokenizer>;
  /** Opens the weights; the caller closes them. */
  openCheckpoint(): Promise<Checkpoint>;
  /** The WeightSource for these files (`quant` asks for int4 at load of float projections). */
  weightSource(quant: 'none' | 'q4', opts?: LoadQuantOptions): WeightSource;
}

/** Reads a model's spec (and, for GGUF, its header once) from a folder or a GGUF model dir. */
export async function openModelFiles(dir: ModelDir): Promise<ModelFiles> {
  if (isGgufModelDir(dir)) {
    // A split model (`*-00001-of-0000N.gguf`) is opened from its first shard as one file.
    const { header, source, shards } = await openGguf(dir, dir.ggufFile);
    let spec: ModelSpec;
    try {
      spec = await ggufModelSpec(header, (t) => source.read(t.fileOffset, t.byteLength));
    } finally {
      await source.close();
    }
    return {
      spec,
      gguf: header,
      tokenizer: () => Promise.resolve(ggufTokenizer(header.metadata)),
      openCheckpoint: async () => ggufCheckpoint(header, await reopenGguf(dir, shards), spec),
      weightSource: (quant, opts) => ggufWeightSource(header, spec, quant, opts),
    };
  }
  const spec = await loadModelSpec(dir);
  return {
    spec,
    gguf: null,
    tokenizer: () => loadModelTokenizer(dir),
    openCheckpoint: () => openCheckpoint(dir),
    weightSource: (quant, opts) => weightSourceFor(spec, dir.location, quant, opts),
  };
}

/**
 * A model folder's safetensors checkpoint: `model.safetensors`, or the shards that
 * `model.safetensors.index.json` lists, each header validated (safetensors.ts) and the index
 * checked against the shards (names that stay inside the folder, every tensor in exactly the shard
 * the index names). Tensors are read one at a time, or in bounded chunks, so a multi-GB shard never
 * lands whole on the heap.
 */
import { InvalidModelFileError, KilnError } from '../errors.js';
import type { ByteSource, ModelDir } from './byte-source.js';
import { describeValue, isJsonObject } from './json.js';
import { findDuplicateJsonKey, parseSafetensorsHeader, type TensorInfo } from './safetensors.js';

/** A set of tensors from one safetensors file or a sharded set, with their shard files kept open. */
export interface Checkpoint {
  /** Human-readable location, for messages. */
  readonly location: string;
  readonly tensors: ReadonlyMap<string, TensorInfo>;
  /** The shards' `__metadata__` maps merged (earlier shards win). */
  readonly metadata: Readonly<Record<string, string>>;
  /** The tensor named `name`; throws a clear error naming it and the location if absent. */
  get(name: string): TensorInfo;
  has(name: string): boolean;
  /** The whole tensor's bytes. */
  readTensor(info: TensorInfo): Promise<Uint8Array>;
  /**
   * The tensor in consecutive pieces of at most `maxChunkBytes`; every piece but the last is a
   * multiple of 8 bytes (when `maxChunkBytes` >= 8) so it stays element- and writeBuffer-aligned.
   * `from` (default 0) starts at that byte of the tensor (a row range of a fused tensor).
   */
  readTensorChunks(
    info: TensorInfo,
    maxChunkBytes: number,
    from?: number,
  ): AsyncIterable<{ offset: number; bytes: Uint8Array }>;
  close(): Promise<void>;
}

/** File name of a single-file Hugging Face checkpoint. */
export const SINGLE_FILE = 'model.safetensors';
/** File name of the index of a sharded Hugging Face checkpoint. */
export const INDEX_FILE = 'model.safetensors.index.json';

/** What {@link isShardFileName} accepts, for error messages. */
export const SHARD_NAME_RULE = 'a plain file name inside the model folder, ending in .safetensors';

/**
 * Whether `file`, a shard name read from a model.safetensors.index.json, is a plain `*.safetensors`
 * file name: no path separators, drive colons or NULs, and not hidden (which also rules out "." and
 * ".."). Index files are downloaded data, so the names they list must stay inside the model folder.
 * The one rule for both the reader here and the Hub downloader (src/node/hub.ts).
 */
export function isShardFileName(file: unknown): file is string {
  return typeof file === 'string' && !file.startsWith('.') && /^[^/\\:\0]+\.safetensors$/.test(file);
}

function checkShardName(location: string, tensor: string, file: unknown): string {
  const where = `${INDEX_FILE} in ${location}: weight_map[${JSON.stringify(tensor)}]`;
  if (typeof file !== 'string') {
    throw new InvalidModelFileError(`${where} is ${describeValue(file)}, expected a file name`);
  }
  if (!isShardFileName(file)) {
    throw new InvalidModelFileError(`${where} is ${JSON.stringify(file)}, expected ${SHARD_NAME_RULE}`);
  }
  return file;
}

class OpenCheckpoint implements Checkpoint {
  private closed = false;

  constructor(
    readonly location: string,
    readonly tensors: ReadonlyMap<string, TensorInfo>,
    readonly metadata: Readonly<Record<string, string>>,
    private readonly sources: ReadonlyMap<string, ByteSource>,
  ) {}

  get(name: string): TensorInfo {
    const info = this.tensors.get(name);
    if (!info) throw new InvalidModelFileError(`missing tensor ${name} in ${this.location}`);
    return info;
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  private source(info: TensorInfo): ByteSource {
    if (this.closed) {
      throw new KilnError(`checkpoint ${this.location} is closed (reading tensor ${info.name})`);
    }
    const src = this.sources.get(info.file);
    const known = this.tensors.get(info.name);
    if (
      !src ||
      known?.file !== info.file ||
      known.fileOffset !== info.fileOffset ||
      known.byteLength !== info.byteLength
    ) {
      throw new KilnError(
        `tensor ${info.name} (${info.file}) does not belong to checkpoint ${this.location}`,
      );
    }
    return src;
  }

  async readTensor(info: TensorInfo): Promise<Uint8Array> {
    const src = this.source(info);
    if (info.byteLength === 0) return new Uint8Array(0);
    return src.read(info.fileOffset, info.byteLength);
  }

  async *readTensorChunks(
    info: TensorInfo,
    maxChunkBytes: number,
    from = 0,
  ): AsyncIterable<{ offset: number; bytes: Uint8Array }> {
    if (!Number.isSafeInteger(maxChunkBytes) || maxChunkBytes <= 0) {
      throw new KilnError(`maxChunkBytes is ${maxChunkBytes}, expected a positive integer`);
    }
    if (!Number.isSafeInteger(from) || from < 0 || from > info.byteLength) {
      throw new KilnError(`from is ${from}, expected a byte offset within tensor ${info.name}`);
    }
    const src = this.source(info);
    const step = maxChunkBytes >= 8 ? maxChunkBytes - (maxChunkBytes % 8) : maxChunkBytes;
    for (let offset = from; offset < info.byteLength; offset += step) {
      const length = Math.min(step, info.byteLength - offset);
      yield { offset, bytes: await src.read(info.fileOffset + offset, length) };
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([...this.sources.values()].map((s) => s.close()));
  }
}

/**
 * Opens the checkpoint of a model folder: `model.safetensors`, or the shards listed by
 * `model.safetensors.index.json` (checked first in that order, as transformers does). Each shard
 * is opened once and stays open until `close()`.
 */
export async function openCheckpoint(dir: ModelDir): Promise<Checkpoint> {
  if (await dir.exists(SINGLE_FILE)) {
    const src = await dir.open(SINGLE_FILE);
    try {
      const header = await parseSafetensorsHeader(src);
      return new OpenCheckpoint(dir.location, header.tensors, header.metadata, new Map([[src.name, src]]));
    } catch (e) {
      await src.close();
      throw e;
    }
  }
  if (!(await dir.exists(INDEX_FILE))) {
    throw new InvalidModelFileError(
      `no checkpoint in ${dir.location}: looked for ${SINGLE_FILE} and ${INDEX_FILE}`,
    );
  }
  const at = `${INDEX_FILE} in ${dir.location}`;
  const indexText = await dir.readText(INDEX_FILE);
  let index: unknown;
  try {
    index = JSON.parse(indexText);
  } catch (e) {
    throw new InvalidModelFileError(`${at} is not valid JSON: ${(e as Error).message}`);
  }
  if (!isJsonObject(index)) {
    throw new InvalidModelFileError(`${at} is ${describeValue(index)}, expected a JSON object`);
  }
  const weightMap = index.weight_map;
  if (!isJsonObject(weightMap)) {
    throw new InvalidModelFileError(
      `${at}: weight_map is ${describeValue(weightMap)}, expected an object of tensor -> file`,
    );
  }
  const dup = findDuplicateJsonKey(indexText);
  if (dup !== undefined) throw new InvalidModelFileError(`${at} repeats the key ${JSON.stringify(dup)}`);
  const shardOf = new Map<string, string>();
  for (const [tensor, file] of Object.entries(weightMap))
    shardOf.set(tensor, checkShardName(dir.location, tensor, file));
  let totalSize: number | undefined;
  if (index.metadata !== undefined && index.metadata !== null) {
    if (!isJsonObject(index.metadata)) {
      throw new InvalidModelFileError(
        `${at}: metadata is ${describeValue(index.metadata)}, expected an object`,
      );
    }
    const ts = index.metadata.total_size;
    if (ts !== undefined && ts !== null) {
      if (typeof ts !== 'number' || !Number.isSafeInteger(ts) || ts < 0) {
        throw new InvalidModelFileError(
          `${at}: metadata.total_size is ${describeValue(ts)}, expected a non-negative integer`,
        );
      }
      totalSize = ts;
    }
  }

  // Sorted so that "earlier shard" (for metadata) means model-00001 before model-00002.
  const shardFiles = [...new Set(shardOf.values())].sort();
  const sources = new Map<string, ByteSource>();
  try {
    const tensors = new Map<string, TensorInfo>();
    const shardFileOf = new Map<string, string>();
    const metadata = new Map<string, string>();
    for (const shard of shardFiles) {
      if (!(await dir.exists(shard))) {
        throw new InvalidModelFileError(`${at} lists shard ${shard}, which is missing from ${dir.location}`);
      }
      const src = await dir.open(shard);
      sources.set(src.name, src);
      const header = await parseSafetensorsHeader(src);
      for (const [k, v] of Object.entries(header.metadata)) if (!metadata.has(k)) metadata.set(k, v);
      for (const [name, info] of header.tensors) {
        const other = shardFileOf.get(name);
        if (other !== undefined) {
          throw new InvalidModelFileError(
            `tensor ${name} appears in both ${other} and ${shard} in ${dir.location}`,
          );
        }
        const listed = shardOf.get(name);
        if (listed !== shard) {
          throw new InvalidModelFileError(
            `tensor ${name} is in ${shard} but ${at} ` +
              (listed ? `maps it to ${listed}` : 'does not list it'),
          );
        }
        shardFileOf.set(name, shard);
        tensors.set(name, info);
      }
    }
    for (const [name, shard] of shardOf) {
      if (!tensors.has(name)) {
        throw new InvalidModelFileError(`${at} maps tensor ${name} to ${shard}, which lacks it`);
      }
    }
    if (totalSize !== undefined) {
      let sum = 0;
      for (const info of tensors.values()) sum += info.byteLength;
      if (sum !== totalSize) {
        throw new InvalidModelFileError(
          `${at}: metadata.total_size is ${totalSize}, but the shards' tensors hold ${sum} bytes`,
        );
      }
    }
    return new OpenCheckpoint(dir.location, tensors, Object.fromEntries(metadata), sources);
  } catch (e) {
    await Promise.allSettled([...sources.values()].map((s) => s.close()));
    throw e;
  }
}

/**
 * Our own safetensors reader and writer, following the format as the reference implementation
 * (github.com/huggingface/safetensors) defines and checks it.
 * Written by hand rather than taken from a library because the header is untrusted input that
 * decides how many bytes we read and where: every field is checked before it is used, and tensors
 * are read one at a time (or in bounded chunks) so a multi-GB shard never lands whole on the heap.
 */
import { InvalidModelFileError, KilnError, UnsupportedModelError } from '../errors.js';
import type { ByteSource, ModelDir } from './byte-source.js';
import { DTYPE_BYTES, isSafetensorsDtype, type SafetensorsDtype } from './dtype.js';
import { describeValue, isJsonObject } from './json.js';

/** Where one tensor lives and what it holds. */
export interface TensorInfo {
  name: string;
  dtype: SafetensorsDtype;
  /** Row-major (C-order) dimensions; `[]` is a scalar. */
  shape: number[];
  byteLength: number;
  /** Absolute byte offset of the first element in its file. */
  fileOffset: number;
  /** The `name` of the ByteSource (shard) that holds the tensor. */
  file: string;
}

/** A parsed safetensors header. */
export interface SafetensorsHeader {
  tensors: Map<string, TensorInfo>;
  /** The optional `__metadata__` string map (empty when absent). */
  metadata: Record<string, string>;
  /** Absolute offset of the data section (8 + header length). */
  dataStart: number;
}

/** The reference implementation's header limit. */
export const DEFAULT_MAX_HEADER_BYTES = 100_000_000;

const METADATA_KEY = '__metadata__';
const ENTRY_KEYS = ['data_offsets', 'dtype', 'shape'];

/**
 * Returns the first object key that occurs twice in the same object of `text`, which must already
 * be valid JSON. JSON.parse silently keeps the last duplicate, so a hostile header could show one
 * reader a tensor and another reader a different one; we refuse such files instead.
 */
export function findDuplicateJsonKey(text: string): string | undefined {
  // One entry per open container: the keys seen so far for an object, null for an array.
  const stack: (Set<string> | null)[] = [];
  let expectKey = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      const start = i;
      let escaped = false;
      for (i++; i < text.length; i++) {
        const d = text.charCodeAt(i);
        if (d === 0x5c /* \ */) {
          escaped = true;
          i++;
        } else if (d === 0x22) break;
      }
      if (expectKey) {
        const raw = text.slice(start, i + 1);
        // Escapes must be decoded so that "a" and "\u0061" count as the same key.
        const key = escaped ? (JSON.parse(raw) as string) : raw.slice(1, -1);
        const keys = stack[stack.length - 1];
        if (keys) {
          if (keys.has(key)) return key;
          keys.add(key);
        }
        expectKey = false;
      }
    } else if (c === 0x7b /* { */) {
      stack.push(new Set());
      expectKey = true;
    } else if (c === 0x5b /* [ */) {
      stack.push(null);
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      stack.pop();
    } else if (c === 0x2c /* , */) {
      expectKey = stack[stack.length - 1] != null;
    }
  }
  return undefined;
}

function fail(file: string, what: string): never {
  throw new InvalidModelFileError(`${file}: ${what}`);
}

function checkNonNegativeInt(file: string, field: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
    fail(file, `${field} is ${describeValue(v)}, expected a non-negative integer`);
  }
  return v;
}

/**
 * Reads and validates the header of a safetensors file. Nothing in the header is trusted: the
 * length, the JSON, every entry, and that the tensors exactly tile the data section up to the
 * end of the file (no gaps, no overlaps, no trailing bytes, as the reference reader requires).
 */
export async function parseSafetensorsHeader(
  src: ByteSource,
  opts?: { maxHeaderBytes?: number },
): Promise<SafetensorsHeader> {
  const file = src.name;
  const maxHeader = opts?.maxHeaderBytes ?? DEFAULT_MAX_HEADER_BYTES;
  if (src.size < 8) {
    fail(file, `file is ${src.size} bytes, too short for the 8-byte safetensors header length`);
  }
  const lenBytes = await src.read(0, 8);
  const len64 = new DataView(lenBytes.buffer, lenBytes.byteOffset, 8).getBigUint64(0, true);
  if (len64 > BigInt(Number.MAX_SAFE_INTEGER)) {
    fail(file, `header length ${len64} is not a usable size (file is ${src.size} bytes)`);
  }
  const headerLen = Number(len64);
  if (headerLen > maxHeader) {
    fail(file, `header length ${headerLen} exceeds the ${maxHeader}-byte limit`);
  }
  if (8 + headerLen > src.size) {
    fail(file, `header length ${headerLen} runs past the end of the ${src.size}-byte file (truncated?)`);
  }
  const headerBytes = await src.read(8, headerLen);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(headerBytes);
  } catch {
    fail(file, 'header is not valid UTF-8');
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    fail(file, `header is not valid JSON: ${(e as Error).message}`);
  }
  if (!isJsonObject(json)) fail(file, `header is ${describeValue(json)}, expected a JSON object`);
  const dup = findDuplicateJsonKey(text);
  if (dup !== undefined) fail(file, `header repeats the key ${JSON.stringify(dup)}`);

  const dataStart = 8 + headerLen;
  const dataSize = src.size - dataStart;
  // Collected as entries: assigning a "__proto__" key to a plain object would drop it.
  const metaEntries: [string, string][] = [];
  const tensors = new Map<string, TensorInfo>();
  const ranges: { name: string; begin: number; end: number }[] = [];

  for (const [name, entry] of Object.entries(json)) {
    if (name === METADATA_KEY) {
      // The reference reads `__metadata__` as an optional map, so null means "none".
      if (entry === null) continue;
      if (!isJsonObject(entry)) {
        fail(file, `__metadata__ is ${describeValue(entry)}, expected a string-to-string map`);
      }
      for (const [k, v] of Object.entries(entry)) {
        if (typeof v !== 'string') fail(file, `__metadata__.${k} is ${describeValue(v)}, expected a string`);
        metaEntries.push([k, v]);
      }
      continue;
    }
    const where = `tensor ${JSON.stringify(name)}`;
    if (!isJsonObject(entry)) fail(file, `${where} is ${describeValue(entry)}, expected an object`);
    const keys = Object.keys(entry).sort();
    if (keys.join(',') !== ENTRY_KEYS.join(',')) {
      fail(file, `${where} has fields [${keys.join(', ')}], expected exactly dtype, shape, data_offsets`);
    }
    const dtype = entry.dtype;
    if (typeof dtype !== 'string')
      fail(file, `${where}: dtype is ${describeValue(dtype)}, expected a string`);
    if (!isSafetensorsDtype(dtype)) {
      throw new UnsupportedModelError(`${file}: ${where} has unknown dtype ${JSON.stringify(dtype)}`);
    }
    const shape = entry.shape;
    if (!Array.isArray(shape)) fail(file, `${where}: shape is ${describeValue(shape)}, expected an array`);
    const dims = shape.map((d: unknown, i) => checkNonNegativeInt(file, `${where}: shape[${i}]`, d));
    const offsets = entry.data_offsets;
    if (!Array.isArray(offsets) || offsets.length !== 2) {
      fail(file, `${where}: data_offsets is ${describeValue(offsets)}, expected [begin, end]`);
    }
    const begin = checkNonNegativeInt(file, `${where}: data_offsets[0]`, offsets[0]);
    const end = checkNonNegativeInt(file, `${where}: data_offsets[1]`, offsets[1]);
    if (end < begin) fail(file, `${where}: data_offsets [${begin}, ${end}] end before they begin`);
    // BigInt so that a hostile shape cannot overflow its way into a matching byte count.
    const expected = dims.reduce((p, d) => p * BigInt(d), BigInt(DTYPE_BYTES[dtype]));
    if (BigInt(end - begin) !== expected) {
      fail(
        file,
        `${where}: data_offsets [${begin}, ${end}] cover ${end - begin} bytes, but ${dtype} ` +
          `[${dims.join(', ')}] needs ${expected}`,
      );
    }
    if (end > dataSize) {
      fail(
        file,
        `${where}: data_offsets [${begin}, ${end}] run past the ${dataSize}-byte data section ` +
          `(file is ${src.size} bytes, truncated?)`,
      );
    }
    tensors.set(name, {
      name,
      dtype,
      shape: dims,
      byteLength: end - begin,
      fileOffset: dataStart + begin,
      file,
    });
    ranges.push({ name, begin, end });
  }

  ranges.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let pos = 0;
  let prev = '(start of data)';
  for (const r of ranges) {
    if (r.begin < pos) {
      fail(file, `tensor ${JSON.stringify(r.name)} at [${r.begin}, ${r.end}] overlaps ${prev}`);
    }
    if (r.begin > pos) {
      fail(file, `gap of ${r.begin - pos} bytes in the data section before tensor ${JSON.stringify(r.name)}`);
    }
    pos = r.end;
    prev = `tensor ${JSON.stringify(r.name)}`;
  }
  if (pos !== dataSize) {
    fail(file, `tensors cover ${pos} bytes but the data section holds ${dataSize} (extra bytes at the end)`);
  }
  return { tensors, metadata: Object.fromEntries(metaEntries), dataStart };
}

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
   */
  readTensorChunks(
    info: TensorInfo,
    maxChunkBytes: number,
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
  ): AsyncIterable<{ offset: number; bytes: Uint8Array }> {
    if (!Number.isSafeInteger(maxChunkBytes) || maxChunkBytes <= 0) {
      throw new KilnError(`maxChunkBytes is ${maxChunkBytes}, expected a positive integer`);
    }
    const src = this.source(info);
    const step = maxChunkBytes >= 8 ? maxChunkBytes - (maxChunkBytes % 8) : maxChunkBytes;
    for (let offset = 0; offset < info.byteLength; offset += step) {
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

/** One tensor to write with {@link encodeSafetensors}. */
export interface TensorToWrite {
  name: string;
  dtype: SafetensorsDtype;
  shape: readonly number[];
  /** Little-endian C-order elements: exactly prod(shape) * sizeof(dtype) bytes. */
  data: Uint8Array;
}

const utf8 = new TextEncoder();

/** A tensor to be written, without its bytes (see {@link planSafetensors}). */
export type TensorSpec = Omit<TensorToWrite, 'data'>;

/** Where each tensor of a file being written goes. */
export interface SafetensorsPlan<T extends TensorSpec> {
  /** The first bytes of the file: the u64 header length and the space-padded JSON header. */
  header: Uint8Array<ArrayBuffer>;
  /** The tensors in file order, each with its byte length. */
  order: (T & { byteLength: number })[];
  /** Bytes after the header. */
  dataBytes: number;
}

/**
 * Lays out a safetensors file the way the reference writer does: tensors ordered by decreasing
 * element size then name (so each starts aligned to its element size), and the header padded with
 * spaces so the data section starts at a multiple of 8. Writers then emit `header` and each
 * tensor's bytes in `order`, which lets a large file be streamed one tensor at a time.
 */
export function planSafetensors<T extends TensorSpec>(
  tensors: readonly T[],
  metadata?: Record<string, string>,
): SafetensorsPlan<T> {
  const seen = new Set<string>();
  const sized = tensors.map((t) => {
    const where = `safetensors writer: tensor ${JSON.stringify(t.name)}`;
    if (t.name === METADATA_KEY || seen.has(t.name)) {
      throw new KilnError(`${where}: name is reserved or repeated`);
    }
    seen.add(t.name);
    if (!isSafetensorsDtype(t.dtype))
      throw new KilnError(`${where}: unknown dtype ${describeValue(t.dtype)}`);
    let count = 1;
    for (const d of t.shape) {
      if (!Number.isSafeInteger(d) || d < 0) {
        throw new KilnError(`${where}: shape [${t.shape.join(', ')}] is not valid`);
      }
      count *= d;
    }
    return { ...t, byteLength: count * DTYPE_BYTES[t.dtype] };
  });
  const order = sized.sort(
    (a, b) => DTYPE_BYTES[b.dtype] - DTYPE_BYTES[a.dtype] || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0),
  );
  // Built by hand: a JS object would move integer-like tensor names ("0") to the front.
  const parts: string[] = [];
  if (metadata !== undefined) {
    const entries = Object.entries(metadata).map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`);
    parts.push(`"${METADATA_KEY}":{${entries.join(',')}}`);
  }
  let offset = 0;
  for (const t of order) {
    const end = offset + t.byteLength;
    parts.push(
      `${JSON.stringify(t.name)}:{"dtype":${JSON.stringify(t.dtype)},"shape":${JSON.stringify(t.shape)},` +
        `"data_offsets":[${offset},${end}]}`,
    );
    offset = end;
  }
  const json = utf8.encode(`{${parts.join(',')}}`);
  const headerLen = json.byteLength + ((8 - (json.byteLength % 8)) % 8);
  const header = new Uint8Array(8 + headerLen);
  new DataView(header.buffer).setBigUint64(0, BigInt(headerLen), true);
  header.set(json, 8);
  header.fill(0x20, 8 + json.byteLength);
  return { header, order, dataBytes: offset };
}

/** Serializes tensors as one safetensors file in memory (see {@link planSafetensors}). */
export function encodeSafetensors(
  tensors: readonly TensorToWrite[],
  metadata?: Record<string, string>,
): Uint8Array<ArrayBuffer> {
  const { header, order, dataBytes } = planSafetensors(tensors, metadata);
  const out = new Uint8Array(header.byteLength + dataBytes);
  out.set(header);
  let pos = header.byteLength;
  for (const t of order) {
    if (t.data.byteLength !== t.byteLength) {
      throw new KilnError(
        `safetensors writer: tensor ${JSON.stringify(t.name)}: data is ${t.data.byteLength} bytes, expected ${t.byteLength} for ${t.dtype} [${t.shape.join(', ')}]`,
      );
    }
    out.set(t.data, pos);
    pos += t.byteLength;
  }
  return out;
}

/**
 * The text of a `model.safetensors.index.json` as transformers writes it (2-space indent, sorted
 * tensor names, trailing newline).
 */
export function encodeSafetensorsIndex(
  weightMap: Readonly<Record<string, string>>,
  totalSize: number,
): string {
  const names = Object.keys(weightMap).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const lines = names.map((n) => `    ${JSON.stringify(n)}: ${JSON.stringify(weightMap[n])}`);
  return (
    `{\n  "metadata": {\n    "total_size": ${totalSize}\n  },\n  "weight_map": {\n` +
    `${lines.join(',\n')}\n  }\n}\n`
  );
}

/**
 * The safetensors format as the reference implementation (github.com/huggingface/safetensors)
 * defines and checks it: the header's types and our own validating header parser. Written by hand
 * rather than taken from a library because the header is untrusted input that decides how many
 * bytes we read and where: every field is checked before it is used. Checkpoints (a file or a
 * sharded set) are opened in safetensors-checkpoint.ts, files written by safetensors-writer.ts.
 */
import { InvalidModelFileError, UnsupportedModelError } from '../errors.js';
import type { ByteSource } from './byte-source.js';
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

/** The header's reserved key for the string map of metadata. */
export const METADATA_KEY = '__metadata__';
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

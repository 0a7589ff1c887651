/**
 * The GGUF container (ggml's single-file format, versions 2 and 3, little-endian) and our own
 * validating reader. The header is untrusted input that decides how much we allocate and which bytes
 * we read, so nothing in it is used before it is checked: counts and string lengths against the
 * bytes left in the file and against fixed caps, value and element types against the format's
 * lists, every tensor's size against its type's block geometry (gguf-types.ts), its offset against
 * the alignment, the data section and every other tensor. The header is read through a window over
 * the ByteSource, so a multi-GB file (on disk, or over HTTP Range requests) is never read whole.
 */
import { InvalidModelFileError, UnsupportedModelError } from '../errors.js';
import type { ByteSource } from './byte-source.js';
import { ggufTensorBytes, ggufTypeById, type GgufTypeInfo } from './gguf-types.js';
import { describeValue } from './json.js';

/** GGUF metadata value types, by their id in the file. */
export const GGUF_VALUE_TYPES = [
  'u8',
  'i8',
  'u16',
  'i16',
  'u32',
  'i32',
  'f32',
  'bool',
  'string',
  'array',
  'u64',
  'i64',
  'f64',
] as const;
export type GgufValueType = (typeof GGUF_VALUE_TYPES)[number];
/** Types an array may hold (GGUF allows arrays of arrays; no model uses them and we refuse them). */
export type GgufItemType = Exclude<GgufValueType, 'array'>;

/** The elements of a metadata array: a typed array for numbers, plain arrays for bools and strings. */
export type GgufArrayValues =
  | Uint8Array
  | Int8Array
  | Uint16Array
  | Int16Array
  | Uint32Array
  | Int32Array
  | Float32Array
  | Float64Array
  | BigUint64Array
  | BigInt64Array
  | boolean[]
  | string[];

/** A metadata value with its type; 64-bit integers are bigints, so no value changes on a round trip. */
export type GgufValue =
  | { type: 'u8' | 'i8' | 'u16' | 'i16' | 'u32' | 'i32' | 'f32' | 'f64'; value: number }
  | { type: 'u64' | 'i64'; value: bigint }
  | { type: 'bool'; value: boolean }
  | { type: 'string'; value: string }
  | { type: 'array'; itemType: GgufItemType; value: GgufArrayValues };

/** One tensor of the file. */
export interface GgufTensorInfo {
  name: string;
  type: GgufTypeInfo;
  /** ggml's `ne`: the fastest-varying dimension first (a [rows, cols] matrix is [cols, rows]). */
  dims: number[];
  elements: number;
  byteLength: number;
  /** Absolute byte offset of the tensor's first block in the file. */
  fileOffset: number;
}

/** A parsed GGUF header. */
export interface GgufHeader {
  /** The ByteSource's name, for messages. */
  file: string;
  version: 2 | 3;
  metadata: GgufMetadata;
  /** In file-table order. */
  tensors: Map<string, GgufTensorInfo>;
  alignment: number;
  /** Absolute offset of the data section. */
  dataStart: number;
}

/** GGUF's default alignment of the data section and of each tensor when general.alignment is absent. */
export const GGUF_DEFAULT_ALIGNMENT = 32;
/** ggml's GGML_MAX_DIMS. */
export const GGUF_MAX_DIMS = 4;
/** ggml's GGML_MAX_NAME: tensor names are shorter than this many bytes. */
export const GGUF_MAX_NAME_BYTES = 64;

/** Caps on what a header may ask us to hold (see {@link GgufLimits}). */
export interface GgufLimits {
  /** Longest string value or key. Chat templates are tens of KB; 16 MiB is far beyond any real one. */
  maxStringBytes: number;
  /** Most elements of one array (vocabularies reach ~262k tokens and ~500k merges). */
  maxArrayLength: number;
  /** Bytes of header (metadata + tensor table) read in all; big vocabularies take tens of MB. */
  maxHeaderBytes: number;
}

export const DEFAULT_GGUF_LIMITS: GgufLimits = {
  maxStringBytes: 16 * 2 ** 20,
  maxArrayLength: 2 ** 24,
  maxHeaderBytes: 512 * 2 ** 20,
};

/** Bytes read from the source at a time while parsing the header. */
const WINDOW_BYTES = 4 * 2 ** 20;

const SCALAR_BYTES: Record<Exclude<GgufItemType, 'string'>, number> = {
  u8: 1,
  i8: 1,
  u16: 2,
  i16: 2,
  u32: 4,
  i32: 4,
  f32: 4,
  bool: 1,
  u64: 8,
  i64: 8,
  f64: 8,
};

const GGUF_MAGIC = 0x46554747; // "GGUF" read as a little-endian u32

function fail(file: string, what: string): never {
  throw new InvalidModelFileError(`${file}: ${what}`);
}

/** Sequential reads over a ByteSource through a bounded window; every read names what it is for. */
class Cursor {
  pos = 0;
  private buf: Uint8Array = new Uint8Array(0);
  private view = new DataView(this.buf.buffer);
  private bufStart = 0;

  constructor(
    private readonly src: ByteSource,
    private readonly maxBytes: number,
  ) {}

  get file(): string {
    return this.src.name;
  }

  get remaining(): number {
    return this.src.size - this.pos;
  }

  /** Makes `n` bytes at `pos` readable synchronously; a file that ends first is truncated. */
  async need(n: number, what: string): Promise<void> {
    if (this.pos + n <= this.bufStart + this.buf.length) return;
    if (this.pos + n > this.src.size) {
      fail(
        this.file,
        `truncated: ${what} needs ${n} bytes at offset ${this.pos} but the file is ${this.src.size} bytes`,
      );
    }
    if (this.pos + n > this.maxBytes) {
      fail(this.file, `the header runs past ${this.maxBytes} bytes (at ${what}); refusing to read more`);
    }
    const len = Math.min(Math.max(n, WINDOW_BYTES), this.src.size - this.pos);
    this.buf = await this.src.read(this.pos, len);
    this.view = new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength);
    this.bufStart = this.pos;
  }

  private at(n: number): number {
    const o = this.pos - this.bufStart;
    this.pos += n;
    return o;
  }

  u8(): number {
    return this.view.getUint8(this.at(1));
  }
  i8(): number {
    return this.view.getInt8(this.at(1));
  }
  u16(): number {
    return this.view.getUint16(this.at(2), true);
  }
  i16(): number {
    return this.view.getInt16(this.at(2), true);
  }
  u32(): number {
    return this.view.getUint32(this.at(4), true);
  }
  i32(): number {
    return this.view.getInt32(this.at(4), true);
  }
  f32(): number {
    return this.view.getFloat32(this.at(4), true);
  }
  f64(): number {
    return this.view.getFloat64(this.at(8), true);
  }
  u64(): bigint {
    return this.view.getBigUint64(this.at(8), true);
  }
  i64(): bigint {
    return this.view.getBigInt64(this.at(8), true);
  }
  bytes(n: number): Uint8Array {
    const o = this.at(n);
    return this.buf.subarray(o, o + n);
  }
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** A u64 count that must fit in the file: each item takes at least `minItemBytes`. */
async function readCount(c: Cursor, what: string, minItemBytes: number, cap: number): Promise<number> {
  await c.need(8, what);
  const n = c.u64();
  const fits = minItemBytes === 0 ? BigInt(cap) : BigInt(Math.floor(c.remaining / minItemBytes));
  if (n > fits) {
    fail(
      c.file,
      `${what} is ${n}, but the ${c.remaining} bytes left in the file hold at most ${fits} (truncated or corrupt)`,
    );
  }
  if (n > BigInt(cap)) fail(c.file, `${what} is ${n}, over the limit of ${cap}`);
  return Number(n);
}

async function readString(c: Cursor, what: string, limits: GgufLimits): Promise<string> {
  await c.need(8, `the length of ${what}`);
  const len = c.u64();
  if (len > BigInt(c.remaining)) {
    fail(
      c.file,
      `${what} claims ${len} bytes but only ${c.remaining} remain in the file (truncated or corrupt)`,
    );
  }
  if (len > BigInt(limits.maxStringBytes)) {
    fail(c.file, `${what} is ${len} bytes, over the ${limits.maxStringBytes}-byte limit for strings`);
  }
  const n = Number(len);
  await c.need(n, what);
  try {
    return utf8.decode(c.bytes(n));
  } catch {
    fail(c.file, `${what} is not valid UTF-8`);
  }
}

function valueType(c: Cursor, id: number, what: string): GgufValueType {
  const t = GGUF_VALUE_TYPES[id];
  if (t === undefined) fail(c.file, `${what} has unknown value type ${id} (known: 0..12)`);
  return t;
}

async function readScalar(
  c: Cursor,
  type: Exclude<GgufItemType, 'string'>,
  what: string,
): Promise<GgufValue> {
  await c.need(SCALAR_BYTES[type], what);
  switch (type) {
    case 'u8':
      return { type, value: c.u8() };
    case 'i8':
      return { type, value: c.i8() };
    case 'u16':
      return { type, value: c.u16() };
    case 'i16':
      return { type, value: c.i16() };
    case 'u32':
      return { type, value: c.u32() };
    case 'i32':
      return { type, value: c.i32() };
    case 'f32':
      return { type, value: c.f32() };
    case 'f64':
      return { type, value: c.f64() };
    case 'u64':
      return { type, value: c.u64() };
    case 'i64':
      return { type, value: c.i64() };
    case 'bool': {
      const b = c.u8();
      if (b > 1) fail(c.file, `${what} is a bool stored as ${b}, expected 0 or 1`);
      return { type, value: b === 1 };
    }
  }
}

/** Reads `n` numbers of one type in window-sized runs into a typed array. */
async function readNumbers(
  c: Cursor,
  type: Exclude<GgufItemType, 'string' | 'bool'>,
  n: number,
  what: string,
): Promise<GgufArrayValues> {
  const size = SCALAR_BYTES[type];
  const out = new Uint8Array(n * size);
  const step = Math.max(size, WINDOW_BYTES - (WINDOW_BYTES % size));
  for (let done = 0; done < out.length; done += step) {
    const len = Math.min(step, out.length - done);
    await c.need(len, what);
    out.set(c.bytes(len), done);
  }
  // Copied into a fresh buffer, so element alignment holds; the file is little-endian, as every
  // platform that runs WebGPU is.
  const b = out.buffer;
  switch (type) {
    case 'u8':
      return out;
    case 'i8':
      return new Int8Array(b);
    case 'u16':
      return new Uint16Array(b);
    case 'i16':
      return new Int16Array(b);
    case 'u32':
      return new Uint32Array(b);
    case 'i32':
      return new Int32Array(b);
    case 'f32':
      return new Float32Array(b);
    case 'f64':
      return new Float64Array(b);
    case 'u64':
      return new BigUint64Array(b);
    case 'i64':
      return new BigInt64Array(b);
  }
}

async function readValue(
  c: Cursor,
  type: GgufValueType,
  what: string,
  limits: GgufLimits,
): Promise<GgufValue> {
  if (type === 'string') return { type, value: await readString(c, what, limits) };
  if (type !== 'array') return readScalar(c, type, what);
  await c.need(4, `the item type of ${what}`);
  const itemType = valueType(c, c.u32(), `${what} (array)`);
  if (itemType === 'array') {
    throw new UnsupportedModelError(`${c.file}: ${what} is an array of arrays, which Kiln does not read`);
  }
  const minItem = itemType === 'string' ? 8 : SCALAR_BYTES[itemType];
  const n = await readCount(c, `the length of array ${what}`, minItem, limits.maxArrayLength);
  if (itemType === 'string') {
    const values: string[] = new Array<string>(n);
    for (let i = 0; i < n; i++) values[i] = await readString(c, `${what}[${i}]`, limits);
    return { type, itemType, value: values };
  }
  if (itemType === 'bool') {
    const values: boolean[] = new Array<boolean>(n);
    for (let i = 0; i < n; i++) values[i] = (await readScalar(c, 'bool', `${what}[${i}]`)).value as boolean;
    return { type, itemType, value: values };
  }
  return { type, itemType, value: await readNumbers(c, itemType, n, what) };
}

/**
 * Typed, checked reads of a GGUF file's metadata: every refusal names the file, the key and what
 * was found, like Fields does for config.json.
 */
export class GgufMetadata {
  constructor(
    readonly file: string,
    readonly entries: ReadonlyMap<string, GgufValue>,
  ) {}

  has(key: string): boolean {
    return this.entries.has(key);
  }

  get(key: string): GgufValue | undefined {
    return this.entries.get(key);
  }

  private bad(key: string, v: GgufValue | undefined, expected: string): never {
    const found =
      v === undefined
        ? 'missing'
        : v.type === 'array'
          ? `an array of ${v.itemType} (${v.value.length} items)`
          : `${v.type} ${describeValue(typeof v.value === 'bigint' ? v.value.toString() : v.value)}`;
    fail(this.file, `metadata ${key} is ${found}, expected ${expected}`);
  }

  /** A string value, or undefined when absent. */
  optionalString(key: string): string | undefined {
    const v = this.entries.get(key);
    if (v === undefined) return undefined;
    if (v.type !== 'string') this.bad(key, v, 'a string');
    return v.value;
  }

  string(key: string): string {
    const s = this.optionalString(key);
    if (s === undefined) this.bad(key, undefined, 'a string');
    return s;
  }

  /** A non-negative integer of any integer type, or undefined when absent. */
  optionalUint(key: string, max = Number.MAX_SAFE_INTEGER): number | undefined {
    const v = this.entries.get(key);
    if (v === undefined) return undefined;
    let n: number | undefined;
    if (v.type === 'u64' || v.type === 'i64') n = v.value <= BigInt(max) ? Number(v.value) : undefined;
    else if (v.type !== 'f32' && v.type !== 'f64' && typeof v.value === 'number') n = v.value;
    if (n === undefined || n < 0 || n > max) this.bad(key, v, `an integer in 0..${max}`);
    return n;
  }

  uint(key: string, max?: number): number {
    const n = this.optionalUint(key, max);
    if (n === undefined) this.bad(key, undefined, 'an integer');
    return n;
  }

  /** A finite number of any numeric type, or undefined when absent. */
  optionalNumber(key: string): number | undefined {
    const v = this.entries.get(key);
    if (v === undefined) return undefined;
    const n = typeof v.value === 'bigint' ? Number(v.value) : v.value;
    if (typeof n !== 'number' || !Number.isFinite(n)) this.bad(key, v, 'a finite number');
    return n;
  }

  optionalBool(key: string): boolean | undefined {
    const v = this.entries.get(key);
    if (v === undefined) return undefined;
    if (v.type !== 'bool') this.bad(key, v, 'a bool');
    return v.value;
  }

  /** An array of strings, or undefined when absent. */
  optionalStringArray(key: string): readonly string[] | undefined {
    const v = this.entries.get(key);
    if (v === undefined) return undefined;
    if (v.type !== 'array' || v.itemType !== 'string') this.bad(key, v, 'an array of strings');
    return v.value as string[];
  }

  /** An array of numbers (any numeric item type, 64-bit ones converted), or undefined when absent. */
  optionalNumberArray(key: string): ArrayLike<number> | undefined {
    const v = this.entries.get(key);
    if (v === undefined) return undefined;
    if (v.type !== 'array' || v.itemType === 'string' || v.itemType === 'bool') {
      this.bad(key, v, 'an array of numbers');
    }
    const a = v.value;
    if (a instanceof BigInt64Array || a instanceof BigUint64Array) return Array.from(a, (x) => Number(x));
    return a as ArrayLike<number>;
  }
}

/**
 * Reads and validates the header of a GGUF file: magic, version (2 or 3), metadata, the tensor
 * table, the alignment and where every tensor lies. Throws InvalidModelFileError naming the file and
 * the field for anything malformed, truncated or inconsistent, UnsupportedModelError for what is
 * well-formed but not read by Kiln (version 1, big-endian files, nested arrays).
 */
export async function parseGgufHeader(
  src: ByteSource,
  limits: Partial<GgufLimits> = {},
): Promise<GgufHeader> {
  const lim: GgufLimits = { ...DEFAULT_GGUF_LIMITS, ...limits };
  const c = new Cursor(src, lim.maxHeaderBytes);
  const file = src.name;
  if (src.size < 24) fail(file, `file is ${src.size} bytes, too short for a GGUF header (24 bytes)`);
  await c.need(8, 'the magic and version');
  const magic = c.u32();
  if (magic !== GGUF_MAGIC) {
    const b = [0, 1, 2, 3].map((i) => (magic >>> (8 * i)) & 0xff);
    const shown = b.map((x) => (x >= 0x20 && x < 0x7f ? String.fromCharCode(x) : `\\x${x.toString(16)}`));
    fail(file, `not a GGUF file: it starts with "${shown.join('')}", expected "GGUF"`);
  }
  const version = c.u32();
  if (version !== 2 && version !== 3) {
    // A big-endian file stores the version byte-swapped: 3 reads as 0x03000000.
    const swapped =
      ((version & 0xff) << 24) |
      (((version >>> 8) & 0xff) << 16) |
      (((version >>> 16) & 0xff) << 8) |
      (version >>> 24);
    if (swapped === 2 || swapped === 3) {
      throw new UnsupportedModelError(`${file}: a big-endian GGUF file; Kiln reads little-endian GGUF`);
    }
    if (version === 1) {
      throw new UnsupportedModelError(
        `${file}: GGUF version 1 is not supported (convert it again with current llama.cpp)`,
      );
    }
    fail(file, `GGUF version ${version} is unknown (Kiln reads versions 2 and 3)`);
  }
  // A tensor-table entry takes at least 8 (name length) + 1 (name) + 4 (n_dims) + 8 (one dim) +
  // 4 (type) + 8 (offset) bytes and a metadata pair 8 (key length) + 1 (key) + 4 (type) + 1 (value),
  // which bounds both counts by the file before anything is allocated for them.
  const tensorCount = await readCount(c, 'tensor_count', 33, Number.MAX_SAFE_INTEGER);
  const kvCount = await readCount(c, 'metadata_kv_count', 14, Number.MAX_SAFE_INTEGER);

  const entries = new Map<string, GgufValue>();
  for (let i = 0; i < kvCount; i++) {
    const key = await readString(c, `metadata key #${i}`, lim);
    if (key === '') fail(file, `metadata key #${i} is empty`);
    if (entries.has(key)) fail(file, `metadata key ${JSON.stringify(key)} appears twice`);
    await c.need(4, `the type of metadata ${key}`);
    const type = valueType(c, c.u32(), `metadata ${key}`);
    entries.set(key, await readValue(c, type, `metadata ${key}`, lim));
  }
  const metadata = new GgufMetadata(file, entries);

  let alignment = GGUF_DEFAULT_ALIGNMENT;
  const al = entries.get('general.alignment');
  if (al !== undefined) {
    if (al.type !== 'u32' || al.value === 0 || (al.value & (al.value - 1)) !== 0) {
      fail(
        file,
        `metadata general.alignment is ${al.type} ${describeValue(al.type === 'array' ? '[...]' : String(al.value))}, expected a u32 power of two`,
      );
    }
    alignment = al.value;
  }

  const infos: {
    name: string;
    type: GgufTypeInfo;
    dims: number[];
    elements: number;
    bytes: number;
    offset: bigint;
  }[] = [];
  const names = new Set<string>();
  for (let i = 0; i < tensorCount; i++) {
    const name = await readString(c, `the name of tensor #${i}`, lim);
    const where = `tensor ${JSON.stringify(name)}`;
    if (name === '') fail(file, `tensor #${i} has an empty name`);
    if (new TextEncoder().encode(name).length >= GGUF_MAX_NAME_BYTES) {
      fail(file, `${where}: name is over ${GGUF_MAX_NAME_BYTES - 1} bytes`);
    }
    if (names.has(name)) fail(file, `${where} appears twice in the tensor table`);
    names.add(name);
    await c.need(4, `the dimension count of ${where}`);
    const nDims = c.u32();
    if (nDims < 1 || nDims > GGUF_MAX_DIMS)
      fail(file, `${where} has ${nDims} dimensions, expected 1..${GGUF_MAX_DIMS}`);
    await c.need(8 * nDims + 12, `the dimensions, type and offset of ${where}`);
    const dims: number[] = [];
    let elements = 1n;
    for (let d = 0; d < nDims; d++) {
      const n = c.u64();
      if (n === 0n) fail(file, `${where}: dimension ${d} is 0`);
      elements *= n;
      // Past 2^53 elements no size is representable; a real tensor is far smaller than the file.
      if (elements > BigInt(Number.MAX_SAFE_INTEGER)) {
        fail(file, `${where}: dimensions [${[...dims, n].join(', ')}...] hold more than 2^53 elements`);
      }
      dims.push(Number(n));
    }
    const typeId = c.u32();
    const type = ggufTypeById(typeId);
    if (!type) fail(file, `${where} has unknown element type ${typeId}`);
    const bytes = dims[0]! % type.blockElems === 0 ? ggufTensorBytes(type, Number(elements)) : null;
    if (bytes === null) {
      fail(
        file,
        `${where}: its first dimension ${dims[0]} is not a multiple of ${type.name}'s block of ${type.blockElems}`,
      );
    }
    const offset = c.u64();
    if (offset % BigInt(alignment) !== 0n) {
      fail(file, `${where}: offset ${offset} is not a multiple of the alignment ${alignment}`);
    }
    infos.push({ name, type, dims, elements: Number(elements), bytes, offset });
  }
  const dataStart = Math.ceil(c.pos / alignment) * alignment;
  const dataSize = src.size - dataStart;
  if (tensorCount > 0 && dataSize < 0) {
    fail(file, `truncated: the data section starts at ${dataStart} but the file is ${src.size} bytes`);
  }

  const tensors = new Map<string, GgufTensorInfo>();
  for (const t of infos) {
    const end = t.offset + BigInt(t.bytes);
    if (end > BigInt(Math.max(dataSize, 0))) {
      fail(
        file,
        `tensor ${JSON.stringify(t.name)} (${t.type.name} [${t.dims.join(', ')}], ${t.bytes} bytes at data offset ${t.offset}) ` +
          `runs past the ${Math.max(dataSize, 0)}-byte data section (file is ${src.size} bytes, truncated?)`,
      );
    }
    tensors.set(t.name, {
      name: t.name,
      type: t.type,
      dims: t.dims,
      elements: t.elements,
      byteLength: t.bytes,
      fileOffset: dataStart + Number(t.offset),
    });
  }
  // Tensors may leave gaps (alignment padding) but never share bytes.
  const sorted = [...tensors.values()].sort((a, b) => a.fileOffset - b.fileOffset);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!;
    const cur = sorted[i]!;
    if (cur.fileOffset < prev.fileOffset + prev.byteLength && cur.byteLength > 0) {
      fail(
        file,
        `tensor ${JSON.stringify(cur.name)} at data offset ${cur.fileOffset - dataStart} overlaps tensor ` +
          `${JSON.stringify(prev.name)} (data offsets ${prev.fileOffset - dataStart}..${prev.fileOffset - dataStart + prev.byteLength})`,
      );
    }
  }
  return { file, version, metadata, tensors, alignment, dataStart };
}

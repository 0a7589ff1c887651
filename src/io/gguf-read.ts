/**
 * Bounded reads of a GGUF header's primitives: a cursor over the ByteSource through a window of a
 * few MB (a multi-GB file is never read whole), u64 counts and string lengths checked against the
 * bytes left in the file and the caps of GgufLimits before anything is allocated for them, and
 * metadata values of every type. gguf.ts reads the header's structure with these.
 */
import { InvalidModelFileError, UnsupportedModelError } from '../errors.js';
import type { ByteSource } from './byte-source.js';
import {
  GGUF_VALUE_TYPES,
  type GgufArrayValues,
  type GgufItemType,
  type GgufValue,
  type GgufValueType,
} from './gguf-metadata.js';

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

export function fail(file: string, what: string): never {
  throw new InvalidModelFileError(`${file}: ${what}`);
}

/** Sequential reads over a ByteSource through a bounded window; every read names what it is for. */
export class Cursor {
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
export async function readCount(c: Cursor, what: string, minItemBytes: number, cap: number): Promise<number> {
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

export async function readString(c: Cursor, what: string, limits: GgufLimits): Promise<string> {
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

export function valueType(c: Cursor, id: number, what: string): GgufValueType {
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

export async function readValue(
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

/**
 * Writes GGUF files (version 3, little-endian) laid out as ggml's writer does: header, metadata in
 * the order given, the tensor table, then each tensor at the next multiple of the alignment. Used by
 * tests (synthetic models, hostile variants of valid files) and by converters.
 */
import { KilnError } from '../errors.js';
import { GGUF_DEFAULT_ALIGNMENT, GGUF_VALUE_TYPES, type GgufItemType, type GgufValue } from './gguf.js';
import { ggufTensorBytes, type GgufTypeInfo } from './gguf-types.js';

/** One tensor to write: `dims` in ggml order (fastest first), `data` its blocks. */
export interface GgufTensorToWrite {
  name: string;
  type: GgufTypeInfo;
  dims: readonly number[];
  data: Uint8Array;
}

export interface GgufFileToWrite {
  metadata: readonly (readonly [string, GgufValue])[];
  tensors: readonly GgufTensorToWrite[];
  /** Written as general.alignment when not the default (32). */
  alignment?: number;
}

const utf8 = new TextEncoder();

/** Appends little-endian values to a growing byte list. */
class Out {
  private chunks: Uint8Array[] = [];
  length = 0;

  push(b: Uint8Array): void {
    this.chunks.push(b);
    this.length += b.length;
  }

  private num(size: number, set: (v: DataView) => void): void {
    const b = new Uint8Array(size);
    set(new DataView(b.buffer));
    this.push(b);
  }

  u32(v: number): void {
    this.num(4, (d) => d.setUint32(0, v, true));
  }
  u64(v: number | bigint): void {
    this.num(8, (d) => d.setBigUint64(0, BigInt(v), true));
  }
  string(s: string): void {
    const b = utf8.encode(s);
    this.u64(b.length);
    this.push(b);
  }

  scalar(type: GgufItemType, v: unknown): void {
    switch (type) {
      case 'u8':
        return this.num(1, (d) => d.setUint8(0, v as number));
      case 'i8':
        return this.num(1, (d) => d.setInt8(0, v as number));
      case 'u16':
        return this.num(2, (d) => d.setUint16(0, v as number, true));
      case 'i16':
        return this.num(2, (d) => d.setInt16(0, v as number, true));
      case 'u32':
        return this.num(4, (d) => d.setUint32(0, v as number, true));
      case 'i32':
        return this.num(4, (d) => d.setInt32(0, v as number, true));
      case 'f32':
        return this.num(4, (d) => d.setFloat32(0, v as number, true));
      case 'f64':
        return this.num(8, (d) => d.setFloat64(0, v as number, true));
      case 'u64':
        return this.num(8, (d) => d.setBigUint64(0, BigInt(v as bigint), true));
      case 'i64':
        return this.num(8, (d) => d.setBigInt64(0, BigInt(v as bigint), true));
      case 'bool':
        return this.num(1, (d) => d.setUint8(0, v ? 1 : 0));
      case 'string':
        return this.string(v as string);
    }
  }

  pad(alignment: number): void {
    const n = (alignment - (this.length % alignment)) % alignment;
    if (n > 0) this.push(new Uint8Array(n));
  }

  concat(): Uint8Array<ArrayBuffer> {
    const out = new Uint8Array(this.length);
    let o = 0;
    for (const c of this.chunks) {
      out.set(c, o);
      o += c.length;
    }
    return out;
  }
}

/** Serializes a GGUF file in memory. */
export function encodeGguf(f: GgufFileToWrite): Uint8Array<ArrayBuffer> {
  const alignment = f.alignment ?? GGUF_DEFAULT_ALIGNMENT;
  const metadata = [...f.metadata];
  if (alignment !== GGUF_DEFAULT_ALIGNMENT && !metadata.some(([k]) => k === 'general.alignment')) {
    metadata.push(['general.alignment', { type: 'u32', value: alignment }]);
  }
  const out = new Out();
  out.push(utf8.encode('GGUF'));
  out.u32(3);
  out.u64(f.tensors.length);
  out.u64(metadata.length);
  for (const [key, v] of metadata) {
    out.string(key);
    out.u32(GGUF_VALUE_TYPES.indexOf(v.type));
    if (v.type === 'array') {
      out.u32(GGUF_VALUE_TYPES.indexOf(v.itemType));
      out.u64(v.value.length);
      for (const x of v.value) out.scalar(v.itemType, x);
    } else out.scalar(v.type, v.value);
  }
  let offset = 0;
  for (const t of f.tensors) {
    const elements = t.dims.reduce((a, d) => a * d, 1);
    const bytes = ggufTensorBytes(t.type, elements);
    if (bytes !== t.data.length) {
      throw new KilnError(
        `GGUF writer: tensor ${JSON.stringify(t.name)}: ${t.data.length} bytes given, ${t.type.name} [${t.dims.join(', ')}] needs ${String(bytes)}`,
      );
    }
    out.string(t.name);
    out.u32(t.dims.length);
    for (const d of t.dims) out.u64(d);
    out.u32(t.type.id);
    out.u64(offset);
    offset += Math.ceil(t.data.length / alignment) * alignment;
  }
  out.pad(alignment);
  for (const t of f.tensors) {
    out.push(t.data);
    out.pad(alignment);
  }
  return out.concat();
}

/** Shorthands for metadata values, as ggml's writer types them. */
export const gv = {
  str: (value: string): GgufValue => ({ type: 'string', value }),
  u32: (value: number): GgufValue => ({ type: 'u32', value }),
  i32: (value: number): GgufValue => ({ type: 'i32', value }),
  f32: (value: number): GgufValue => ({ type: 'f32', value }),
  bool: (value: boolean): GgufValue => ({ type: 'bool', value }),
  strs: (value: string[]): GgufValue => ({ type: 'array', itemType: 'string', value }),
  f32s: (value: ArrayLike<number>): GgufValue => ({
    type: 'array',
    itemType: 'f32',
    value: Float32Array.from(value),
  }),
  i32s: (value: ArrayLike<number>): GgufValue => ({
    type: 'array',
    itemType: 'i32',
    value: Int32Array.from(value),
  }),
};

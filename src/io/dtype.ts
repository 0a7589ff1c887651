/**
 * safetensors element types and the float conversions the loader needs (F16/BF16 <-> F32).
 * Node 20 has no Float16Array, so half floats are converted with bit arithmetic. All multi-byte
 * values are little-endian, as safetensors stores them and as every WebGPU platform runs.
 */
import { InvalidModelFileError, UnsupportedModelError } from '../errors.js';

/** Every dtype string a safetensors header may carry (the reference's set, minus sub-byte types). */
export const SAFETENSORS_DTYPES = [
  'F64',
  'F32',
  'F16',
  'BF16',
  'F8_E5M2',
  'F8_E4M3',
  'I64',
  'I32',
  'I16',
  'I8',
  'U64',
  'U32',
  'U16',
  'U8',
  'BOOL',
] as const;

/** A safetensors element type. */
export type SafetensorsDtype = (typeof SAFETENSORS_DTYPES)[number];

/** Bytes per element of each dtype. */
export const DTYPE_BYTES: Readonly<Record<SafetensorsDtype, number>> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  F8_E5M2: 1,
  F8_E4M3: 1,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
};

/** Float dtypes that {@link decodeToFloat32} and {@link encodeFromFloat32} handle. */
export type FloatDtype = 'F32' | 'F16' | 'BF16';

const DTYPE_SET: ReadonlySet<string> = new Set(SAFETENSORS_DTYPES);

/** True when `s` is a dtype string safetensors defines. */
export function isSafetensorsDtype(s: unknown): s is SafetensorsDtype {
  return typeof s === 'string' && DTYPE_SET.has(s);
}

// Scratch views that reinterpret one f32's bits; module-level so conversions allocate nothing.
const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

/** The f32 value of IEEE binary16 bits `h` (exact: every f16 is representable in f32). */
export function f16BitsToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant === 0 ? sign * Infinity : NaN;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/**
 * IEEE binary16 bits of `x` rounded to f32 first, then to nearest-even f16: values past the f16
 * range become ±Inf, tiny ones become subnormals or ±0, NaN stays a (quiet) NaN.
 */
export function f32ToF16Bits(x: number): number {
  scratchF32[0] = x;
  const bits = scratchU32[0]!;
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  const mant = bits & 0x7fffff;
  if (exp === 0xff) return mant === 0 ? sign | 0x7c00 : sign | 0x7e00 | (mant >>> 13);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    // Below half the smallest subnormal (2^-25), even a tie rounds to the even value 0.
    if (e < -10) return sign;
    const full = mant | 0x800000;
    const shift = 14 - e;
    let m = full >>> shift;
    const rem = full & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (rem > halfway || (rem === halfway && (m & 1) === 1)) m++;
    // m may reach 0x400 here, which is exactly the encoding of the smallest normal.
    return sign | m;
  }
  let h = sign | (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  // A carry out of the mantissa bumps the exponent, and from the largest finite value yields Inf.
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1) === 1)) h++;
  return h;
}

/** bfloat16 bits of `x` rounded to f32 first, then to nearest-even bf16 (NaN stays NaN). */
export function f32ToBf16Bits(x: number): number {
  scratchF32[0] = x;
  const bits = scratchU32[0]!;
  if ((bits & 0x7f800000) === 0x7f800000 && (bits & 0x7fffff) !== 0) return ((bits >>> 16) | 0x40) & 0xffff;
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
}

/** The f32 value of bfloat16 bits `b`. */
export function bf16BitsToF32(b: number): number {
  scratchU32[0] = (b & 0xffff) << 16;
  return scratchF32[0]!;
}

let f16Table: Float32Array | undefined;

/** All 65536 f16 values as f32, built on first use: one lookup per element beats the bit math. */
function f16ToF32Table(): Float32Array {
  if (!f16Table) {
    f16Table = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) f16Table[h] = f16BitsToF32(h);
  }
  return f16Table;
}

function checkWhole(dtype: SafetensorsDtype, byteLength: number): number {
  const size = DTYPE_BYTES[dtype];
  if (byteLength % size !== 0) {
    throw new InvalidModelFileError(
      `cannot decode ${byteLength} bytes as ${dtype}: expected a multiple of ${size} bytes`,
    );
  }
  return byteLength / size;
}

/** `bytes` as a typed-array-compatible buffer that starts at a multiple of `align` (copied if not). */
function aligned(bytes: Uint8Array, align: number): { buffer: ArrayBufferLike; offset: number } {
  if (bytes.byteOffset % align === 0) return { buffer: bytes.buffer, offset: bytes.byteOffset };
  // A copy (new Uint8Array(view) always copies; a Node Buffer's slice() would not).
  return { buffer: new Uint8Array(bytes).buffer, offset: 0 };
}

/**
 * Decodes little-endian F32, F16 or BF16 elements to f32. Always returns a fresh array (never a
 * view of `bytes`), so callers may mutate it; a misaligned `bytes.byteOffset` is handled by copying.
 */
export function decodeToFloat32(dtype: SafetensorsDtype, bytes: Uint8Array): Float32Array<ArrayBuffer> {
  const n = checkWhole(dtype, bytes.byteLength);
  switch (dtype) {
    case 'F32': {
      const out = new Float32Array(n);
      new Uint8Array(out.buffer).set(bytes);
      return out;
    }
    case 'F16': {
      const { buffer, offset } = aligned(bytes, 2);
      const src = new Uint16Array(buffer, offset, n);
      const table = f16ToF32Table();
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = table[src[i]!]!;
      return out;
    }
    case 'BF16': {
      const { buffer, offset } = aligned(bytes, 2);
      const src = new Uint16Array(buffer, offset, n);
      const out = new Float32Array(n);
      // bf16 is the top half of an f32, so widening is a shift on the output's bits.
      const outBits = new Uint32Array(out.buffer);
      for (let i = 0; i < n; i++) outBits[i] = src[i]! << 16;
      return out;
    }
    default:
      throw new UnsupportedModelError(`cannot decode ${dtype} to f32: expected one of F32, F16, BF16`);
  }
}

/** Encodes f32 values as little-endian F32, F16 or BF16 bytes (round to nearest even). */
export function encodeFromFloat32(dtype: SafetensorsDtype, values: Float32Array): Uint8Array<ArrayBuffer> {
  const n = values.length;
  switch (dtype) {
    case 'F32':
      return new Uint8Array(values.slice().buffer);
    case 'F16': {
      const out = new Uint16Array(n);
      for (let i = 0; i < n; i++) out[i] = f32ToF16Bits(values[i]!);
      return new Uint8Array(out.buffer);
    }
    case 'BF16': {
      const out = new Uint16Array(n);
      for (let i = 0; i < n; i++) out[i] = f32ToBf16Bits(values[i]!);
      return new Uint8Array(out.buffer);
    }
    default:
      throw new UnsupportedModelError(`cannot encode f32 as ${dtype}: expected one of F32, F16, BF16`);
  }
}

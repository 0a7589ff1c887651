import { describe, expect, it } from 'vitest';
import { InvalidModelFileError, UnsupportedModelError } from '../../src/errors.js';
import {
  DTYPE_BYTES,
  SAFETENSORS_DTYPES,
  bf16BitsToF32,
  decodeToFloat32,
  encodeFromFloat32,
  f16BitsToF32,
  f32ToBf16Bits,
  f32ToF16Bits,
  isSafetensorsDtype,
} from '../../src/io/dtype.js';

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
const fromBits = (b: number): number => {
  u32[0] = b;
  return f32[0]!;
};

/** Finite non-negative f16 values in increasing order (bit patterns 0..0x7bff are monotonic). */
const f16Grid = Array.from({ length: 0x7c00 }, (_, h) => f16BitsToF32(h));

/** Independent reference: nearest f16 by search over the value grid, ties to the even pattern. */
function refF16(x: number): number {
  if (Number.isNaN(x)) return 0x7e00;
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  // Halfway between the largest finite f16 (65504) and the next step (65536) rounds to Inf.
  if (a >= 65520) return sign | 0x7c00;
  let lo = 0;
  let hi = f16Grid.length - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (f16Grid[mid]! <= a) lo = mid;
    else hi = mid;
  }
  if (a >= f16Grid[hi]!) return sign | hi;
  const dLo = a - f16Grid[lo]!;
  const dHi = f16Grid[hi]! - a;
  if (dLo < dHi) return sign | lo;
  if (dHi < dLo) return sign | hi;
  return sign | (lo % 2 === 0 ? lo : hi);
}

describe('dtype tables', () => {
  it('knows every safetensors dtype, its size and which ones Kiln loads', () => {
    for (const d of [
      'F64',
      'F32',
      'F16',
      'BF16',
      'I64',
      'I32',
      'I16',
      'I8',
      'U64',
      'U32',
      'U16',
      'U8',
      'BOOL',
    ]) {
      expect(isSafetensorsDtype(d)).toBe(true);
    }
    expect(SAFETENSORS_DTYPES.length).toBe(Object.keys(DTYPE_BYTES).length);
    expect([DTYPE_BYTES.F64, DTYPE_BYTES.F32, DTYPE_BYTES.BF16, DTYPE_BYTES.I8, DTYPE_BYTES.BOOL]).toEqual([
      8, 4, 2, 1, 1,
    ]);
    expect(isSafetensorsDtype('F128')).toBe(false);
    expect(isSafetensorsDtype('f32')).toBe(false);
    expect(isSafetensorsDtype(4)).toBe(false);
  });
});

describe('f16', () => {
  it('decodes special and boundary values', () => {
    expect(f16BitsToF32(0x3c00)).toBe(1);
    expect(f16BitsToF32(0xc000)).toBe(-2);
    expect(f16BitsToF32(0x7bff)).toBe(65504);
    expect(f16BitsToF32(0x0001)).toBe(2 ** -24);
    expect(f16BitsToF32(0x03ff)).toBe(1023 * 2 ** -24);
    expect(f16BitsToF32(0x0400)).toBe(2 ** -14);
    expect(f16BitsToF32(0x7c00)).toBe(Infinity);
    expect(f16BitsToF32(0xfc00)).toBe(-Infinity);
    expect(f16BitsToF32(0x7e00)).toBeNaN();
    expect(Object.is(f16BitsToF32(0x8000), -0)).toBe(true);
  });

  it('round-trips every non-NaN f16 bit pattern exactly', () => {
    for (let h = 0; h < 0x10000; h++) {
      const isNaN = (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;
      if (isNaN) expect(Number.isNaN(f16BitsToF32(f32ToF16Bits(f16BitsToF32(h))))).toBe(true);
      else if (f32ToF16Bits(f16BitsToF32(h)) !== h) expect(f32ToF16Bits(f16BitsToF32(h))).toBe(h);
    }
  });

  it('rounds to nearest even, including subnormals, overflow and ties', () => {
    expect(f32ToF16Bits(1 + 2 ** -11)).toBe(0x3c00); // tie, stays on the even pattern
    expect(f32ToF16Bits(1 + 3 * 2 ** -11)).toBe(0x3c02); // tie, rounds up to the even pattern
    expect(f32ToF16Bits(fromBits(0x3f801001))).toBe(0x3c01); // just above the tie
    expect(f32ToF16Bits(65519)).toBe(0x7bff);
    expect(f32ToF16Bits(65520)).toBe(0x7c00);
    expect(f32ToF16Bits(-1e10)).toBe(0xfc00);
    expect(f32ToF16Bits(2 ** -25)).toBe(0x0000); // half the smallest subnormal: tie to 0
    expect(f32ToF16Bits(fromBits(0x33000001))).toBe(0x0001); // just above it
    expect(f32ToF16Bits(3 * 2 ** -25)).toBe(0x0002);
    expect(f32ToF16Bits(2 ** -24)).toBe(0x0001);
    expect(f32ToF16Bits(2 ** -14 - 2 ** -25)).toBe(0x0400); // largest subnormal + half ulp: tie to even normal
    expect(f32ToF16Bits(1e-30)).toBe(0x0000);
    expect(f32ToF16Bits(-1e-30)).toBe(0x8000);
    expect(f32ToF16Bits(Infinity)).toBe(0x7c00);
    expect(f32ToF16Bits(-Infinity)).toBe(0xfc00);
    expect(f32ToF16Bits(NaN) & 0x7e00).toBe(0x7e00);
    expect(Number.isNaN(f16BitsToF32(f32ToF16Bits(fromBits(0x7f800001))))).toBe(true);
  });

  it('matches a search-based reference on 200k f32 values', () => {
    let seed = 12345;
    const next = () => (seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0);
    for (let i = 0; i < 200_000; i++) {
      // Concentrate on the f16 range (exponents 100..145) while still covering everything else.
      const bits = i % 4 === 0 ? next() : (next() & 0x807fffff) | ((100 + (next() % 46)) << 23);
      const x = fromBits(bits);
      if (Number.isNaN(x)) continue;
      const got = f32ToF16Bits(x);
      if (got !== refF16(x))
        expect({ bits: bits.toString(16), got }).toEqual({ bits: bits.toString(16), got: refF16(x) });
    }
  });
});

describe('bf16', () => {
  it('rounds to nearest even and keeps NaN', () => {
    expect(f32ToBf16Bits(1)).toBe(0x3f80);
    expect(f32ToBf16Bits(fromBits(0x3f808000))).toBe(0x3f80); // tie, even stays
    expect(f32ToBf16Bits(fromBits(0x3f818000))).toBe(0x3f82); // tie, odd rounds up
    expect(f32ToBf16Bits(fromBits(0x3f808001))).toBe(0x3f81);
    expect(f32ToBf16Bits(fromBits(0x7f7fffff))).toBe(0x7f80); // max f32 rounds to Inf
    expect(f32ToBf16Bits(-Infinity)).toBe(0xff80);
    expect(Number.isNaN(bf16BitsToF32(f32ToBf16Bits(NaN)))).toBe(true);
    expect(Number.isNaN(bf16BitsToF32(f32ToBf16Bits(fromBits(0x7f800001))))).toBe(true);
    expect(bf16BitsToF32(0xc040)).toBe(-3);
  });
});

describe('decodeToFloat32 / encodeFromFloat32', () => {
  const values = new Float32Array([0, 1, -2.5, 65504, 2 ** -24, -0.375, 1e-3, 3.140625]);

  it('round-trips F32, F16 and BF16', () => {
    expect(decodeToFloat32('F32', encodeFromFloat32('F32', values))).toEqual(values);
    const f16 = decodeToFloat32('F16', encodeFromFloat32('F16', values));
    for (let i = 0; i < values.length; i++) expect(f16[i]).toBe(f16BitsToF32(f32ToF16Bits(values[i]!)));
    const bf16 = decodeToFloat32('BF16', encodeFromFloat32('BF16', values));
    for (let i = 0; i < values.length; i++) expect(bf16[i]).toBe(bf16BitsToF32(f32ToBf16Bits(values[i]!)));
    expect(encodeFromFloat32('F16', new Float32Array([1, -2]))).toEqual(
      new Uint8Array([0x00, 0x3c, 0x00, 0xc0]),
    );
    expect(encodeFromFloat32('BF16', new Float32Array([1]))).toEqual(new Uint8Array([0x80, 0x3f]));
  });

  it('decodes from misaligned byte offsets and returns a fresh array', () => {
    for (const dtype of ['F32', 'F16', 'BF16'] as const) {
      const enc = encodeFromFloat32(dtype, values);
      const backing = new Uint8Array(enc.byteLength + 3);
      backing.set(enc, 1);
      const view = backing.subarray(1, 1 + enc.byteLength);
      const out = decodeToFloat32(dtype, view);
      expect(out).toEqual(decodeToFloat32(dtype, enc));
      out[0] = 42;
      expect(decodeToFloat32(dtype, view)[0]).toBe(0);
    }
  });

  it('rejects ragged lengths and non-float dtypes, naming them', () => {
    expect(() => decodeToFloat32('F16', new Uint8Array(3))).toThrow(InvalidModelFileError);
    expect(() => decodeToFloat32('F32', new Uint8Array(6))).toThrow(/6 bytes as F32.*multiple of 4/);
    expect(() => decodeToFloat32('I32', new Uint8Array(4))).toThrow(UnsupportedModelError);
    expect(() => encodeFromFloat32('U8', values)).toThrow(/U8/);
  });
});

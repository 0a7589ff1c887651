/**
 * GGUF block formats (src/quant/gguf-blocks.ts): hand-built blocks whose values are worked out
 * here from ggml's layouts (every format, including the bit fields that are easy to get wrong:
 * Q5 high bits, the packed K-quant scales, Q3_K's mask, Q6_K's split nibbles, IQ4_XS's split
 * scales), round trips through the round-to-nearest quantizers against worst-case bounds derived
 * per format, and the errors for bad input.
 */
import { describe, expect, it } from 'vitest';
import { InvalidModelFileError, UnsupportedModelError } from '../../src/errors.js';
import { ggufTypeByName } from '../../src/io/gguf-types.js';
import { GGUF_CODEC_TYPES, dequantizeGguf, quantizeGguf } from '../../src/quant/gguf-blocks.js';
import { IQ4_LEVELS } from '../../src/quant/gguf-iq4.js';
import { q4_0ToQ4Matrix } from '../../src/quant/gguf-q4.js';
import { dequantize, packQ4 } from '../../src/quant/q4.js';

const F16_ONE = [0x00, 0x3c];
const F16_HALF = [0x00, 0x38];
const F16_TWO = [0x00, 0x40];
const F16_MINUS_QUARTER = [0x00, 0xb4];

function block(size: number, fill: [number, number[]][]): Uint8Array {
  const b = new Uint8Array(size);
  for (const [at, bytes] of fill) b.set(bytes, at);
  return b;
}

describe('hand-built blocks', () => {
  it('F32, F16 and BF16 elements', () => {
    expect([...dequantizeGguf('F32', new Uint8Array(new Float32Array([1.5, -2]).buffer), 2)]).toEqual([
      1.5, -2,
    ]);
    // f16 0xc100 = −2.5; bf16 0x3fc0 = 1.5.
    expect([...dequantizeGguf('F16', new Uint8Array([0x00, 0xc1, 0x00, 0x3c]), 2)]).toEqual([-2.5, 1]);
    expect([...dequantizeGguf('BF16', new Uint8Array([0xc0, 0x3f]), 1)]).toEqual([1.5]);
  });

  it('Q4_0: (q − 8)·d, byte j = element j (low) and j + 16 (high)', () => {
    const b = block(18, [
      [0, F16_TWO],
      [2 + 3, [0xf2]],
    ]);
    const v = dequantizeGguf('Q4_0', b, 32);
    // Zero bytes are q = 0 → −8·2 = −16.
    expect(v[0]).toBe(-16);
    expect(v[3]).toBe((2 - 8) * 2);
    expect(v[19]).toBe((15 - 8) * 2);
  });

  it('Q4_1: q·d + m', () => {
    const b = block(20, [
      [0, F16_HALF],
      [2, F16_MINUS_QUARTER],
      [4 + 15, [0x9e]],
    ]);
    const v = dequantizeGguf('Q4_1', b, 32);
    expect(v[0]).toBe(-0.25);
    expect(v[15]).toBe(14 * 0.5 - 0.25);
    expect(v[31]).toBe(9 * 0.5 - 0.25);
  });

  it('Q5_0: bit i of the u32 is the fifth bit of element i; (q − 16)·d', () => {
    // qh bits 1 and 17 (bytes 0x02, 0x00, 0x02, 0x00) → elements 1 and 17 get +16.
    const b = block(22, [
      [0, F16_ONE],
      [2, [0x02, 0x00, 0x02, 0x00]],
      [6 + 1, [0x53]],
    ]);
    const v = dequantizeGguf('Q5_0', b, 32);
    expect(v[0]).toBe(-16);
    expect(v[1]).toBe(3 + 16 - 16);
    expect(v[17]).toBe(5 + 16 - 16);
    expect(v[16]).toBe(-16);
  });

  it('Q5_1: q·d + m with the fifth bits at offset 4', () => {
    // qh bit 31 → element 31.
    const b = block(24, [
      [0, F16_TWO],
      [2, F16_ONE],
      [4, [0, 0, 0, 0x80]],
      [8 + 15, [0x71]],
    ]);
    const v = dequantizeGguf('Q5_1', b, 32);
    expect(v[15]).toBe(1 * 2 + 1);
    expect(v[31]).toBe((7 + 16) * 2 + 1);
  });

  it('Q8_0: signed bytes times d', () => {
    const b = block(34, [
      [0, F16_HALF],
      [2, [0x7f, 0x80, 0xff]],
    ]);
    const v = dequantizeGguf('Q8_0', b, 32);
    expect([v[0], v[1], v[2], v[3]]).toEqual([63.5, -64, -0.5, 0]);
  });

  it('Q4_K: the six-bit (scale, min) pairs and the 64-element nibble halves', () => {
    // Pair 0: sc = 3, m = 2 (bytes 0, 4). Pair 5: sc = 37 = 0b10_0101 (low nibble 5 in byte 9,
    // top bits 0b10 in byte 1), m = 50 = 0b11_0010 (high nibble 2 in byte 9, top bits in byte 5).
    // Pair 4: sc = 1 (byte 8 low nibble), m = 0.
    const b = block(144, [
      [0, F16_ONE],
      [2, F16_HALF],
      [4, [3, 0b1000_0000, 0, 0, 2, 0b1100_0000, 0, 0, 0x01, 0x25, 0, 0]],
      [16 + 0, [0x0f]],
      [16 + 32 * 2 + 7, [0xa3]],
    ]);
    const v = dequantizeGguf('Q4_K', b, 256);
    expect(v[0]).toBe(1 * 3 * 15 - 0.5 * 2);
    expect(v[1]).toBe(-0.5 * 2);
    // Element 135 = 64·2 + 7: sub-block 4, low nibble 3; element 167: sub-block 5, high nibble 10.
    expect(v[135]).toBe(1 * 1 * 3);
    expect(v[167]).toBe(1 * 37 * 10 - 0.5 * 50);
    // Pair 1 is all zero: its elements are 0.
    expect(v[40]).toBe(0);
  });

  it('Q5_K: Q4_K plus a high bit 2g (low half) or 2g + 1 (high half) in byte l', () => {
    // Pair 2: sc = 4, m = 1 (bytes 2, 6); pair 3: sc = 2 (byte 3).
    const b = block(176, [
      [0, F16_HALF],
      [2, F16_ONE],
      [4, [0, 0, 4, 2, 0, 0, 1, 0, 0, 0, 0, 0]],
      [16 + 9, [0b0011_0100]],
      [48 + 32 + 9, [0x6c]],
    ]);
    const v = dequantizeGguf('Q5_K', b, 256);
    // g = 1, l = 9: element 73 (sub-block 2) has q = 12 + 16 (bit 2), element 105 (sub-block 3)
    // has q = 6 (bit 3 is clear; bits 4, 5 belong to g = 2).
    expect(v[73]).toBe(0.5 * 4 * 28 - 1 * 1);
    expect(v[105]).toBe(0.5 * 2 * 6);
    // g = 2, l = 9: both high bits set, nibbles 0: element 137 (sub-block 4, sc 0) and 169.
    expect(v[137]).toBe(0);
  });

  it('Q6_K: split nibbles and 2-bit highs, int8 scales per 16, (q − 32)·scale·d', () => {
    // Element 100 = 128·0 + 32·3 + 4: high nibble of byte 32 + 4, bits 6..7 of byte 128 + 4,
    // scale 6 (= 100 / 16). Element 130 = 128 + 2: low nibble of byte 64 + 2, bits 0..1 of
    // byte 128 + 32 + 2, scale 8.
    const b = block(210, [
      [36, [0x90]],
      [132, [0b1000_0000]],
      [66, [0x05]],
      [162, [0b11]],
      [192 + 6, [0xfe]],
      [192 + 8, [3]],
      [208, F16_HALF],
    ]);
    const v = dequantizeGguf('Q6_K', b, 256);
    expect(v[100]).toBe(0.5 * -2 * (9 + 32 - 32));
    expect(v[130]).toBe(0.5 * 3 * (5 + 48 - 32));
    // Element 128 has q = 0 → −32·3·0.5.
    expect(v[128]).toBe(-48);
  });

  it('Q3_K: 2-bit codes, the high-bit mask (clear subtracts 4) and the six-bit scales', () => {
    // Element 70 = 64 + 6: code bits 4..5 of byte 32 + 6, mask bit 2 of byte 6, scale 4.
    // Scale 4: low nibble from byte 4, top bits = bits 2..3 of byte 8 + 0. Set it to 0b01_0011 =
    // 19 → 19 − 32 = −13. Element 200 = 128 + 64 + 8: bits 4..5 of byte 32 + 32 + 8, mask bit
    // 4 + 2 = 6 of byte 8, scale 12: high nibble of byte 4 and bits 6..7 of byte 8.
    // Scale 12 = 0b10_0001 = 33 → +1.
    const b = block(110, [
      [6, [0b100]],
      [32 + 6, [0b10_0000]],
      [32 + 40, [0b11_0000]],
      [96 + 4, [0x13]],
      [96 + 8, [0b1000_0100]],
      [108, F16_TWO],
    ]);
    const v = dequantizeGguf('Q3_K', b, 256);
    expect(v[70]).toBe(2 * -13 * 2);
    // Mask bit clear: 3 − 4.
    expect(v[200]).toBe(2 * 1 * (3 - 4));
    // Scale 0 is 0 − 32 with code 0 − 4 (byte 0 and masks clear).
    expect(v[0]).toBe(2 * -32 * -4);
  });

  it('Q2_K: (scale | min << 4) per 16, 2-bit codes, d·sc·q − dmin·m', () => {
    // Element 37 = 32 + 5: bits 2..3 of byte 16 + 5, sub-block 2; element 133 = 128 + 5: bits
    // 0..1 of byte 16 + 32 + 5, sub-block 8.
    const b = block(84, [
      [2, [0x35]],
      [8, [0x0f]],
      [16 + 5, [0b1100]],
      [16 + 37, [0b10]],
      [80, F16_HALF],
      [82, F16_TWO],
    ]);
    const v = dequantizeGguf('Q2_K', b, 256);
    expect(v[37]).toBe(0.5 * 5 * 3 - 2 * 3);
    expect(v[133]).toBe(0.5 * 15 * 2);
    expect(v[32]).toBe(-6);
  });

  it('IQ4_NL: d·T[q]', () => {
    const b = block(18, [
      [0, F16_HALF],
      [2 + 4, [0xf0]],
    ]);
    const v = dequantizeGguf('IQ4_NL', b, 32);
    expect(v[4]).toBe(0.5 * -127);
    expect(v[20]).toBe(0.5 * 113);
    expect(v[0]).toBe(0.5 * -127);
    expect(IQ4_LEVELS).toHaveLength(16);
  });

  it('IQ4_XS: six-bit sub-block scales split over scales_l and scales_h', () => {
    // Sub-block 3: low nibble = high nibble of scales_l[1], top bits = bits 6..7 of scales_h.
    // 0b10_0111 = 39 → 39 − 32 = 7.
    const b = block(136, [
      [0, F16_ONE],
      [2, [0b1000_0000, 0]],
      [4 + 1, [0x70]],
      [8 + 16 * 3 + 2, [0x8a]],
    ]);
    const v = dequantizeGguf('IQ4_XS', b, 256);
    expect(v[96 + 2]).toBe(7 * (IQ4_LEVELS[10] as number));
    expect(v[96 + 18]).toBe(7 * (IQ4_LEVELS[8] as number));
    // Sub-block 0 has raw scale 0 → −32·T[0].
    expect(v[0]).toBe(-32 * -127);
  });
});

/**
 * Worst-case |x − x̂| / (block max |x|) of each round-to-nearest quantizer, from its rules (d the
 * stored super-scale; f16 rounding of d adds 2⁻¹¹ relative, covered by the 1% slack):
 *   Q8_0 step amax/127, error ≤ step/2. Q4_0 / Q5_0: the signed extreme sits on the lowest code,
 *   the other side may clamp one step short: ≤ step = amax/8, amax/16. Q4_1 / Q5_1: step ≤
 *   2·amax/15 (/31), error ≤ step/2 plus m's f16 rounding. IQ4_NL: the widest gap of the table
 *   (113 → 127 at the top) is 14 of 127 units. IQ4_XS: IQ4_NL plus the sub-scale rounding,
 *   ≤ 127 · d/2 with d = amax/(127·31). Q6_K: a step (clamp at +31) plus 32 · d/2 with
 *   d = max step/127. Q3_K: a step plus 4 · d/2, d = max step/31. Q4_K, Q5_K, Q2_K: half a step
 *   plus qmax · d/2 drift from the rounded sub-scale plus dmin/2 from the rounded minimum, with
 *   step ≤ 2·amax/qmax and d = max step / smax.
 */
const BOUND: Record<string, number> = {
  F32: 0,
  F16: 2 ** -11,
  BF16: 2 ** -8,
  Q8_0: 0.5 / 127,
  Q4_0: 1 / 8,
  Q5_0: 1 / 16,
  Q4_1: 1 / 15 + 2 ** -10,
  Q5_1: 1 / 31 + 2 ** -10,
  IQ4_NL: 14 / 127,
  IQ4_XS: 14 / 127 + 1 / 62,
  Q6_K: (1 + 32 / 254) / 32,
  Q3_K: (1 + 4 / 62) / 4,
  Q4_K: (0.5 + 15 / 126) * (2 / 15) + 1 / 126,
  Q5_K: (0.5 + 31 / 126) * (2 / 31) + 1 / 126,
  Q2_K: (0.5 + 3 / 30) * (2 / 3) + 1 / 30,
};

function seeded(n: number, seed: number): Float32Array {
  const v = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const u = s / 2 ** 32;
    // Mixed block ranges (some blocks tiny, some large) and skew, so offsets and scales vary.
    v[i] = (u - 0.4) * (1 + ((i >> 5) % 9)) * (i % 97 === 0 ? 8 : 1);
  }
  return v;
}

describe('round trips', () => {
  for (const name of GGUF_CODEC_TYPES) {
    const info = ggufTypeByName(name);
    if (!info) throw new Error(name);
    const counts =
      info.blockElems === 1
        ? [1, 7, 129]
        : info.blockElems === 32
          ? [32, 7 * 32, 129 * 32]
          : [256, 7 * 256, 4096 + 256];
    it(`${name}: every element within the format's worst-case bound (${counts.join(', ')} elements)`, () => {
      for (const n of counts) {
        const v = seeded(n, n + name.length);
        const bytes = quantizeGguf(name, v);
        expect(bytes.length).toBe((n / info.blockElems) * info.blockBytes);
        const back = dequantizeGguf(name, bytes, n);
        const be = Math.max(info.blockElems, 1);
        for (let b0 = 0; b0 < n; b0 += be) {
          let amax = 0;
          for (let i = b0; i < b0 + be; i++) amax = Math.max(amax, Math.abs(v[i] as number));
          const bound = (BOUND[name] as number) * amax * 1.01;
          for (let i = b0; i < b0 + be; i++) {
            const err = Math.abs((back[i] as number) - (v[i] as number));
            if (err > bound) expect.fail(`${name} element ${i}: |${back[i]} − ${v[i]}| > ${bound}`);
          }
        }
      }
    });
  }

  it('all-zero blocks stay zero; a single spike is exact where the format can hold it', () => {
    for (const name of GGUF_CODEC_TYPES) {
      const n = (ggufTypeByName(name)?.blockElems ?? 1) === 1 ? 8 : 256;
      expect(
        [...dequantizeGguf(name, quantizeGguf(name, new Float32Array(n)), n)].every((x) => x === 0),
      ).toBe(true);
    }
    const spike = new Float32Array(32);
    spike[5] = -3;
    expect(dequantizeGguf('Q8_0', quantizeGguf('Q8_0', spike), 32)[5]).toBeCloseTo(-3, 3);
    expect(dequantizeGguf('Q4_0', quantizeGguf('Q4_0', spike), 32)[5]).toBe(-3);
  });
});

describe('Q4_0 as Kiln int4', () => {
  it('converts exactly: the int4 matrix decodes to the Q4_0 values, bit for bit', () => {
    const rows = 7;
    const cols = 96;
    const v = new Float32Array(rows * cols).map((_, i) => Math.sin(i * 0.37) * (1 + (i % 11)));
    const bytes = quantizeGguf('Q4_0', v);
    const q = q4_0ToQ4Matrix(bytes, rows, cols);
    expect(q.format).toEqual({ groupSize: 32, symmetric: true, scaleType: 'f16' });
    const want = dequantizeGguf('Q4_0', bytes, rows * cols);
    const got = dequantize(q);
    for (let i = 0; i < want.length; i++) expect(got[i]).toBe(want[i]);
    // And it packs (every scale is an f16 value).
    expect(() => packQ4(q)).not.toThrow();
    expect(() => q4_0ToQ4Matrix(bytes.subarray(1), rows, cols)).toThrow(InvalidModelFileError);
  });
});

describe('bad input', () => {
  it('names the type, the element count and the bytes', () => {
    expect(() => dequantizeGguf('Q4_K', new Uint8Array(144), 100)).toThrow(InvalidModelFileError);
    expect(() => dequantizeGguf('Q4_K', new Uint8Array(143), 256)).toThrow(/needs 144 bytes, got 143/);
    expect(() => dequantizeGguf('IQ2_XXS', new Uint8Array(66), 256)).toThrow(UnsupportedModelError);
    expect(() => dequantizeGguf('Q9_9', new Uint8Array(1), 1)).toThrow(/Q9_9 is not supported/);
    expect(() => quantizeGguf('Q8_0', new Float32Array(33))).toThrow(/33 values/);
    expect(() => quantizeGguf('Q8_0', new Float32Array(32).fill(Number.NaN))).toThrow(
      /value 0 is not finite/,
    );
  });
});

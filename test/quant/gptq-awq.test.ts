/**
 * GPTQ / AWQ import. The checkpoint tensors are packed here with plain loops over the published bit
 * positions (not with the importers' unpacking), from known codes, zero points and f16 scales; the
 * imported matrix must then dequantize to (q − z)·s bit for bit.
 */
import { describe, expect, it } from 'vitest';
import { InvalidModelFileError, UnsupportedModelError } from '../../src/errors.js';
import { f16BitsToF32 } from '../../src/io/dtype.js';
import { awqToQ4, type AwqTensors } from '../../src/quant/awq.js';
import { gptqToQ4, type GptqTensors } from '../../src/quant/gptq.js';
import {
  parseQuantConfig,
  type AwqImportConfig,
  type GptqImportConfig,
  type ImportGroupSize,
} from '../../src/quant/import-config.js';
import { dequantize, packQ4 } from '../../src/quant/q4.js';
import { shuffledBlocks } from '../helpers/random.js';

/** A small seeded generator (LCG), so every case is reproducible. */
function rng(seed: number): (n: number) => number {
  let s = seed >>> 0;
  return (n) => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return (s >>> 8) % n;
  };
}

/** A layer in logical form: what the checkpoint is built from and what dequantize must give back. */
interface Layer {
  n: number;
  k: number;
  groups: number;
  /** [n · k] codes, W orientation. */
  q: Uint8Array;
  /** [groups · n] true zero points, checkpoint orientation. */
  z: Uint8Array;
  /** [groups · n] f16 scale bits, checkpoint orientation. */
  s: Uint16Array;
  /** [k] group of each input feature. */
  gIdx: Int32Array;
}

function makeLayer(
  n: number,
  k: number,
  gs: number,
  seed: number,
  zeroOf: (r: (n: number) => number) => number,
): Layer {
  const r = rng(seed);
  const groups = k / gs;
  const q = new Uint8Array(n * k).map(() => r(16));
  const z = new Uint8Array(groups * n).map(() => zeroOf(r));
  // Finite f16 scales of every magnitude (exponent field 0..30, so subnormals too) and both signs.
  const s = new Uint16Array(groups * n).map(() => (r(2) << 15) | (r(31) << 10) | r(1024));
  const gIdx = new Int32Array(k).map((_, i) => Math.floor(i / gs));
  return { n, k, groups, q, z, s, gIdx };
}

/** W[n, k] = (q − z)·s, rounded once to f32 as Kiln's dequantize does. */
function expectedW(l: Layer): Float32Array {
  const w = new Float32Array(l.n * l.k);
  for (let n = 0; n < l.n; n++) {
    for (let k = 0; k < l.k; k++) {
      const g = l.gIdx[k] as number;
      const s = f16BitsToF32(l.s[g * l.n + n] as number);
      w[n * l.k + k] = ((l.q[n * l.k + k] as number) - (l.z[g * l.n + n] as number)) * s;
    }
  }
  return w;
}

const bits = (a: Float32Array): Uint32Array => new Uint32Array(a.buffer, a.byteOffset, a.length);

// --- GPTQ packing, from the format description: qweight [K/8, N], k = 8r + j in bits 4j..4j+3 of
// int32 (r, n); qzeros [G, N/8], n = 8c + j in bits 4j..4j+3 of int32 (g, c).

function packGptqQweight(l: Layer): Int32Array {
  const out = new Int32Array((l.k / 8) * l.n);
  for (let row = 0; row < l.k / 8; row++) {
    for (let n = 0; n < l.n; n++) {
      let word = 0;
      for (let j = 0; j < 8; j++) word |= (l.q[n * l.k + 8 * row + j] as number) << (4 * j);
      out[row * l.n + n] = word;
    }
  }
  return out;
}

/** Stored zeros: zero − 1 for the classic format (written as a 4-bit field), zero for v2. */
function packGptqZeros(l: Layer, v1: boolean): Int32Array {
  const cols = l.n / 8;
  const out = new Int32Array(l.groups * cols);
  for (let g = 0; g < l.groups; g++) {
    for (let c = 0; c < cols; c++) {
      let word = 0;
      for (let j = 0; j < 8; j++) {
        const stored = (l.z[g * l.n + 8 * c + j] as number) - (v1 ? 1 : 0);
        word |= (stored & 15) << (4 * j);
      }
      out[g * cols + c] = word;
    }
  }
  return out;
}

function gptqTensors(l: Layer, v1: boolean, withGIdx: boolean): GptqTensors {
  const t: GptqTensors = { qweight: packGptqQweight(l), qzeros: packGptqZeros(l, v1), scales: l.s };
  if (withGIdx) t.gIdx = l.gIdx;
  return t;
}

function gptqCfg(groupSize: ImportGroupSize, over: Partial<GptqImportConfig> = {}): GptqImportConfig {
  return {
    method: 'gptq',
    bits: 4,
    groupSize,
    descAct: false,
    sym: false,
    checkpointFormat: 'gptq',
    lmHead: false,
    ...over,
  };
}

// --- AWQ packing, from AutoAWQ's gemm packer: int32 (row, c) of a [rows, N/8] tensor has nibble
// slot i (bits 4i..4i+3) = column 8c + ORDER[i].
const AWQ_PACK_ORDER = [0, 2, 4, 6, 1, 3, 5, 7];

/** Packs a [rows, N] table given as a getter (row, n) into [rows, N/8] int32s. */
function packAwq(rows: number, n: number, get: (row: number, col: number) => number): Int32Array {
  const cols = n / 8;
  const out = new Int32Array(rows * cols);
  for (let row = 0; row < rows; row++) {
    for (let c = 0; c < cols; c++) {
      let word = 0;
      for (let i = 0; i < 8; i++) word |= get(row, 8 * c + (AWQ_PACK_ORDER[i] as number)) << (4 * i);
      out[row * cols + c] = word;
    }
  }
  return out;
}

function awqTensors(l: Layer): AwqTensors {
  return {
    // qweight is [K, N]: row k, column n holds q[n, k].
    qweight: packAwq(l.k, l.n, (k, n) => l.q[n * l.k + k] as number),
    qzeros: packAwq(l.groups, l.n, (g, n) => l.z[g * l.n + n] as number),
    scales: l.s,
  };
}

function awqCfg(groupSize: ImportGroupSize): AwqImportConfig {
  return { method: 'awq', bits: 4, groupSize, zeroPoint: true, version: 'gemm', modulesToNotConvert: [] };
}

const anyZero = (r: (n: number) => number): number => r(16);
const zeroEight = (): number => 8;

describe('gptqToQ4', () => {
  it('reads a hand-packed word: k = 8r + j in bits 4j..4j+3, low nibble first', () => {
    const n = 8;
    const k = 32;
    const qweight = new Int32Array((k / 8) * n);
    qweight[0] = 0x87654321 | 0; // k = 0..7 of column 0: codes 1..8
    qweight[n + 3] = 0x0000000f; // k = 8 of column 3: code 15
    const scales = new Uint16Array(n).fill(0x3c00); // 1.0
    const cfg = gptqCfg(32, { checkpointFormat: 'gptq_v2' });
    const { matrix, perm } = gptqToQ4(
      { qweight, qzeros: new Int32Array(1), scales },
      { rows: n, cols: k },
      cfg,
      'l',
    );
    expect(perm).toBeUndefined();
    const w = dequantize(matrix);
    expect(Array.from(w.slice(0, 9))).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 0]);
    expect(w[3 * k + 8]).toBe(15);
    expect(w.reduce((a, v) => a + v, 0)).toBe(36 + 15);
  });

  it('undoes the classic format zero offset per nibble (stored 7 is zero 8)', () => {
    const n = 8;
    const k = 32;
    const qzeros = new Int32Array([0x76543210 | 0]); // stored 0..7 -> zeros 1..8 (v1) or 0..7 (v2)
    const t = { qweight: new Int32Array((k / 8) * n), qzeros, scales: new Uint16Array(n).fill(0x3c00) };
    const v1 = gptqToQ4(t, { rows: n, cols: k }, gptqCfg(32), 'l').matrix;
    const v2 = gptqToQ4(t, { rows: n, cols: k }, gptqCfg(32, { checkpointFormat: 'gptq_v2' }), 'l').matrix;
    expect(Array.from(v1.zeros)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(Array.from(v2.zeros)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
  });

  const cases: [string, number, number, ImportGroupSize, boolean, typeof anyZero][] = [
    ['v1 asym N=8 K=32 g32', 8, 32, 32, true, (r) => 1 + r(15)],
    ['v1 sym N=24 K=128 g32', 24, 128, 32, true, zeroEight],
    ['v2 asym N=16 K=256 g64', 16, 256, 64, false, anyZero],
    ['v1 asym N=16 K=256 g128', 16, 256, 128, true, (r) => 1 + r(15)],
    ['v2 sym N=16 K=256 g128', 16, 256, 128, false, zeroEight],
    ['v2 asym N=8 K=64 group_size -1', 8, 64, -1, false, anyZero],
  ];
  it.each(cases)('%s dequantizes bit-exactly', (_name, n, k, groupSize, v1, zeroOf) => {
    const gs = groupSize === -1 ? k : groupSize;
    const l = makeLayer(n, k, gs, n * 1000 + k + gs, zeroOf);
    const cfg = gptqCfg(groupSize, { checkpointFormat: v1 ? 'gptq' : 'gptq_v2', sym: zeroOf === zeroEight });
    for (const withGIdx of [false, true]) {
      const { matrix, perm } = gptqToQ4(gptqTensors(l, v1, withGIdx), { rows: n, cols: k }, cfg, 'l');
      expect(perm).toBeUndefined();
      expect(matrix.format).toEqual({ groupSize: gs, symmetric: zeroOf === zeroEight, scaleType: 'f16' });
      expect(bits(dequantize(matrix))).toEqual(bits(expectedW(l)));
      // The kernel packer accepts it as is: f16-exact scales, and no zero buffer when symmetric.
      expect(packQ4(matrix).zeros === undefined).toBe(zeroOf === zeroEight);
    }
  });

  it('makes act-order (desc_act) groups contiguous with a stable permutation', () => {
    const n = 16;
    const k = 256;
    const gs = 64;
    // Act-order's g_idx: each group still has gs members, scattered over k.
    const order = shuffledBlocks(k, 12345);
    const gIdx = new Int32Array(k).map((_, i) => Math.floor((order[i] as number) / gs));
    for (const v1 of [true, false]) {
      // The classic format cannot store a zero of 0 (see the zero-16 test below).
      const l = makeLayer(n, k, gs, 7, v1 ? (r) => 1 + r(15) : anyZero);
      l.gIdx = gIdx;
      const wl = expectedW(l);
      const cfg = gptqCfg(64, { descAct: true, checkpointFormat: v1 ? 'gptq' : 'gptq_v2' });
      const { matrix, perm } = gptqToQ4(gptqTensors(l, v1, true), { rows: n, cols: k }, cfg, 'l');
      expect(perm).toBeInstanceOf(Uint32Array);
      const p = Array.from(perm ?? []);
      expect([...p].sort((a, b) => a - b)).toEqual(Array.from({ length: k }, (_, i) => i));
      for (let j = 0; j < k; j++) {
        expect(l.gIdx[p[j] as number]).toBe(Math.floor(j / gs));
        if (j % gs !== 0) expect(p[j] as number).toBeGreaterThan(p[j - 1] as number); // stable
      }
      const d = bits(dequantize(matrix));
      const ref = bits(wl);
      const got = new Uint32Array(n * k);
      for (let r = 0; r < n; r++)
        for (let j = 0; j < k; j++) got[r * k + j] = ref[r * k + (p[j] as number)] as number;
      expect(d).toEqual(got);
    }
  });

  it('returns a permutation for contiguous but relabelled groups', () => {
    const l = makeLayer(8, 128, 32, 3, anyZero);
    l.gIdx = new Int32Array(128).map((_, i) => 3 - Math.floor(i / 32));
    const cfg = gptqCfg(32, { checkpointFormat: 'gptq_v2' });
    const { matrix, perm } = gptqToQ4(gptqTensors(l, false, true), { rows: 8, cols: 128 }, cfg, 'l');
    expect(Array.from(perm ?? []).slice(0, 33)).toEqual([
      ...Array.from({ length: 32 }, (_, i) => 96 + i),
      64,
    ]);
    const w = bits(expectedW(l));
    const d = bits(dequantize(matrix));
    expect(d[0]).toBe(w[96]);
    expect(d[127]).toBe(w[31]);
  });

  describe('refuses', () => {
    const l = makeLayer(8, 64, 32, 1, (r) => 1 + r(15));
    const shape = { rows: 8, cols: 64 };
    const ok = (): GptqTensors => gptqTensors(l, true, true);
    const run =
      (t: GptqTensors, cfg = gptqCfg(32), s = shape) =>
      () =>
        gptqToQ4(t, s, cfg, 'model.x');

    it('a qweight of the wrong size or shape, naming it and both shapes', () => {
      expect(run({ ...ok(), qweight: new Int32Array(63) })).toThrow(
        /model\.x\.qweight has 63 elements, expected shape \[8, 8\]/,
      );
      expect(run({ ...ok(), shapes: { qweight: [8, 8, 1] } })).toThrow(InvalidModelFileError);
      expect(run({ ...ok(), shapes: { qweight: [64, 1] } })).toThrow(
        /model\.x\.qweight has shape \[64, 1\], expected \[8, 8\]/,
      );
    });

    it('wrong qzeros, scales or g_idx shapes', () => {
      expect(run({ ...ok(), qzeros: new Int32Array(3) })).toThrow(
        /model\.x\.qzeros has 3 elements.*\[2, 1\]/,
      );
      expect(run({ ...ok(), scales: new Uint16Array(8) })).toThrow(
        /model\.x\.scales has 8 elements.*\[2, 8\]/,
      );
      expect(run({ ...ok(), shapes: { scales: [8, 2] } })).toThrow(
        /scales has shape \[8, 2\], expected \[2, 8\]/,
      );
      expect(run({ ...ok(), gIdx: new Int32Array(32) })).toThrow(/model\.x\.g_idx has 32 elements.*\[64\]/);
    });

    it('missing tensors', () => {
      expect(run({ ...ok(), scales: undefined })).toThrow(
        /model\.x\.scales is missing \(expected shape \[2, 8\]\)/,
      );
      expect(run({ ...ok(), qzeros: undefined })).toThrow(/model\.x\.qzeros is missing/);
      const { gIdx: _gIdx, ...noGIdx } = ok();
      expect(run(noGIdx, gptqCfg(32, { descAct: true }))).toThrow(/g_idx is missing, but desc_act is true/);
    });

    it('g_idx values out of range or groups of the wrong size', () => {
      const bad = new Int32Array(l.gIdx);
      bad[3] = 2;
      expect(run({ ...ok(), gIdx: bad })).toThrow(/g_idx: element 3 is 2, expected a group index in 0\.\.1/);
      bad[3] = -1;
      expect(run({ ...ok(), gIdx: bad })).toThrow(InvalidModelFileError);
      const uneven = new Int32Array(64).map((_, i) => (i < 40 ? 0 : 1));
      expect(run({ ...ok(), gIdx: uneven })).toThrow(UnsupportedModelError);
      expect(run({ ...ok(), gIdx: uneven })).toThrow(/model\.x\.g_idx: group 0 has 40 input features/);
    });

    it('sizes Kiln cannot hold', () => {
      expect(run(ok(), gptqCfg(32), { rows: 12, cols: 64 })).toThrow(/N = 12 .* not a multiple of 8/);
      expect(run(ok(), gptqCfg(32), { rows: 8, cols: 36 })).toThrow(/K = 36 .* not a multiple of 8/);
      expect(run(ok(), gptqCfg(64), { rows: 8, cols: 96 })).toThrow(
        /K = 96 is not a multiple of the group size 64/,
      );
      expect(run(ok(), gptqCfg(-1), { rows: 8, cols: 256 })).toThrow(
        /group_size -1 makes one group of K = 256/,
      );
    });

    it('a classic-format zero of 16 (stored nibble 15) and non-finite scales', () => {
      const t = ok();
      const qz = new Int32Array(t.qzeros as Int32Array);
      qz[1] = (qz[1] as number) | (15 << 8); // group 1, feature 2
      expect(run({ ...t, qzeros: qz })).toThrow(/group 1, output feature 2 decodes to zero point 16/);
      // The same nibble is a valid zero of 15 in the v2 format.
      const m = gptqToQ4({ ...t, qzeros: qz }, shape, gptqCfg(32, { checkpointFormat: 'gptq_v2' }), 'l');
      expect(m.matrix.zeros[2 * 2 + 1]).toBe(15);
      const s = new Uint16Array(l.s);
      s[5] = 0x7c00; // +Inf
      expect(run({ ...t, scales: s })).toThrow(/model\.x\.scales: element 5 is Infinity/);
    });
  });
});

describe('awqToQ4', () => {
  it('reads a hand-packed word: nibble slot i holds column [0, 2, 4, 6, 1, 3, 5, 7][i]', () => {
    const n = 8;
    const k = 32;
    const qweight = new Int32Array(k * (n / 8));
    qweight[0] = 0x75316420; // k = 0: column m has code m
    const qzeros = new Int32Array([0x11111111]); // every zero 1
    const scales = new Uint16Array(n).fill(0x4000); // 2.0
    const { matrix } = awqToQ4({ qweight, qzeros, scales }, { rows: n, cols: k }, awqCfg(32), 'l');
    const w = dequantize(matrix);
    expect(Array.from({ length: n }, (_, m) => w[m * k])).toEqual([-2, 0, 2, 4, 6, 8, 10, 12]);
    expect(w[1]).toBe(-2); // k = 1 has code 0
  });

  it('reads zeros in the same interleaved order, without offset', () => {
    const t = {
      qweight: new Int32Array(32),
      qzeros: new Int32Array([0x75316420]),
      scales: new Uint16Array(8),
    };
    const { matrix } = awqToQ4(t, { rows: 8, cols: 32 }, awqCfg(32), 'l');
    expect(Array.from(matrix.zeros)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
  });

  const cases: [string, number, number, ImportGroupSize, typeof anyZero][] = [
    ['asym N=8 K=32 g32', 8, 32, 32, anyZero],
    ['asym N=24 K=128 g32', 24, 128, 32, anyZero],
    ['asym N=16 K=256 g64', 16, 256, 64, anyZero],
    ['asym N=16 K=256 g128', 16, 256, 128, anyZero],
    ['all zeros 8 N=24 K=128 g64', 24, 128, 64, zeroEight],
    ['asym N=8 K=128 group_size -1', 8, 128, -1, anyZero],
  ];
  it.each(cases)('%s dequantizes bit-exactly', (_name, n, k, groupSize, zeroOf) => {
    const gs = groupSize === -1 ? k : groupSize;
    const l = makeLayer(n, k, gs, n * 7 + k + gs, zeroOf);
    const { matrix, perm } = awqToQ4(awqTensors(l), { rows: n, cols: k }, awqCfg(groupSize), 'l');
    expect(perm).toBeUndefined();
    expect(matrix.format).toEqual({ groupSize: gs, symmetric: zeroOf === zeroEight, scaleType: 'f16' });
    expect(bits(dequantize(matrix))).toEqual(bits(expectedW(l)));
    expect(packQ4(matrix).zeros === undefined).toBe(zeroOf === zeroEight);
  });

  describe('refuses', () => {
    const l = makeLayer(16, 64, 32, 2, anyZero);
    const shape = { rows: 16, cols: 64 };
    const run =
      (t: AwqTensors, cfg = awqCfg(32), s = shape) =>
      () =>
        awqToQ4(t, s, cfg, 'model.y');

    it('wrong shapes, naming the tensor and both shapes', () => {
      expect(run({ ...awqTensors(l), qweight: new Int32Array(64) })).toThrow(
        /model\.y\.qweight has 64 elements, expected shape \[64, 2\] \(128\)/,
      );
      // GPTQ's [K/8, N] layout has the same count but is not AWQ's.
      expect(run({ ...awqTensors(l), shapes: { qweight: [8, 16] } })).toThrow(
        /model\.y\.qweight has shape \[8, 16\], expected \[64, 2\]/,
      );
      expect(run({ ...awqTensors(l), qzeros: new Int32Array(2) })).toThrow(/model\.y\.qzeros has 2 elements/);
      expect(run({ ...awqTensors(l), scales: new Uint16Array(31) })).toThrow(
        /model\.y\.scales has 31 elements/,
      );
    });

    it('missing scales and unsupported sizes', () => {
      expect(run({ ...awqTensors(l), scales: undefined })).toThrow(/model\.y\.scales is missing/);
      expect(run(awqTensors(l), awqCfg(32), { rows: 20, cols: 64 })).toThrow(/N = 20/);
      expect(run(awqTensors(l), awqCfg(128), shape)).toThrow(
        /K = 64 is not a multiple of the group size 128/,
      );
    });

    it('a version other than gemm even in a hand-built config', () => {
      const cfg = { ...awqCfg(32), version: 'gemv' } as unknown as AwqImportConfig;
      expect(run(awqTensors(l), cfg)).toThrow(UnsupportedModelError);
    });
  });
});

describe('parseQuantConfig', () => {
  it("reads transformers' GPTQ quantization_config", () => {
    const cfg = parseQuantConfig(
      {
        quant_method: 'gptq',
        bits: 4,
        group_size: 128,
        desc_act: true,
        sym: false,
        checkpoint_format: 'gptq_v2',
        damp_percent: 0.01,
        true_sequential: true,
        dynamic: null,
      },
      'config.json quantization_config',
    );
    expect(cfg).toEqual({
      method: 'gptq',
      bits: 4,
      groupSize: 128,
      descAct: true,
      sym: false,
      checkpointFormat: 'gptq_v2',
      lmHead: false,
    });
  });

  it("reads AutoGPTQ's quantize_config.json (no quant_method) with defaults", () => {
    const cfg = parseQuantConfig(
      { bits: 4, group_size: -1, desc_act: false, model_file_base_name: 'model' },
      'quantize_config.json',
    );
    expect(cfg).toEqual({
      method: 'gptq',
      bits: 4,
      groupSize: -1,
      descAct: false,
      sym: true,
      checkpointFormat: 'gptq',
      lmHead: false,
    });
  });

  it("reads transformers' and AutoAWQ's AWQ configs", () => {
    const expected: AwqImportConfig = awqCfg(128);
    expect(
      parseQuantConfig(
        {
          quant_method: 'awq',
          bits: 4,
          group_size: 128,
          zero_point: true,
          version: 'gemm',
          modules_to_not_convert: null,
        },
        'config.json quantization_config',
      ),
    ).toEqual(expected);
    expect(
      parseQuantConfig(
        { zero_point: true, q_group_size: 64, w_bit: 4, version: 'GEMM' },
        'quant_config.json',
      ),
    ).toEqual(awqCfg(64));
    expect(
      parseQuantConfig(
        { quant_method: 'awq', bits: 4, group_size: 32, modules_to_not_convert: ['visual'] },
        'config.json',
      ),
    ).toEqual({ ...awqCfg(32), modulesToNotConvert: ['visual'] });
  });

  it('refuses other bit widths, naming the field and value', () => {
    const bad = () => parseQuantConfig({ quant_method: 'gptq', bits: 8, group_size: 128 }, 'config.json');
    expect(bad).toThrow(UnsupportedModelError);
    expect(bad).toThrow(/config\.json: bits is 8/);
    expect(() => parseQuantConfig({ w_bit: 3, q_group_size: 128 }, 'quant_config.json')).toThrow(
      /quant_config\.json: w_bit is 3/,
    );
    expect(() => parseQuantConfig({ quant_method: 'gptq', bits: '4', group_size: 128 }, 'c')).toThrow(
      InvalidModelFileError,
    );
  });

  it('refuses unsupported AWQ versions and zero_point false', () => {
    const awq = { quant_method: 'awq', bits: 4, group_size: 128 };
    expect(() => parseQuantConfig({ ...awq, version: 'gemv' }, 'c')).toThrow(UnsupportedModelError);
    expect(() => parseQuantConfig({ ...awq, version: 'gemv' }, 'c')).toThrow(
      /version "gemv" is not supported/,
    );
    expect(() => parseQuantConfig({ ...awq, zero_point: false }, 'c')).toThrow(/zero_point false/);
  });

  it('refuses unsupported group sizes, formats, methods and malformed input', () => {
    const gptq = { quant_method: 'gptq', bits: 4, group_size: 128 };
    expect(() => parseQuantConfig({ ...gptq, group_size: 256 }, 'c')).toThrow(UnsupportedModelError);
    expect(() => parseQuantConfig({ ...gptq, group_size: 256 }, 'c')).toThrow(/group_size is 256/);
    expect(() => parseQuantConfig({ ...gptq, group_size: 0 }, 'c')).toThrow(InvalidModelFileError);
    expect(() => parseQuantConfig({ ...gptq, group_size: undefined }, 'c')).toThrow(/group_size is missing/);
    expect(() => parseQuantConfig({ ...gptq, checkpoint_format: 'marlin' }, 'c')).toThrow(
      /checkpoint_format "marlin" is not supported/,
    );
    expect(() => parseQuantConfig({ ...gptq, dynamic: { '-:.*lm_head': {} } }, 'c')).toThrow(/dynamic/);
    expect(() => parseQuantConfig({ ...gptq, desc_act: 'yes' }, 'c')).toThrow(/desc_act is "yes"/);
    expect(() => parseQuantConfig({ quant_method: 'bitsandbytes' }, 'c')).toThrow(
      /quant_method "bitsandbytes" is not supported/,
    );
    expect(() => parseQuantConfig({ bits: 4 }, 'c')).toThrow(/quant_method is missing/);
    expect(() => parseQuantConfig([1], 'c')).toThrow(/c: expected an object, got \[1\]/);
  });
});

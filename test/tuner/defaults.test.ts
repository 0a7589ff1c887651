/**
 * The per-adapter-class kernel defaults: which class an adapter falls in, and the row's choice
 * applied only where it is a candidate on the adapter (a variant it can build, a chunk within the
 * context).
 */
import { describe, expect, it } from 'vitest';
import { gemmUsable } from '../../src/kernels/matmul.js';
import { q4SubgroupsUsable } from '../../src/kernels/matmul-q4.js';
import { quantizeGguf } from '../../src/quant/gguf-blocks.js';
import { quantizeRtn } from '../../src/quant/q4.js';
import type { KernelChoice, MClass } from '../../src/tuner/choices.js';
import {
  floatMatmulCandidates,
  ggufMatmulCandidates,
  lanesChoice,
  q4MatmulCandidates,
} from '../../src/tuner/space.js';
import { uploadGgufWeight } from '../../src/weights/upload-gguf.js';
import { q4Buffers, uploadQ4Weight } from '../../src/weights/upload-q4.js';
import { randomF32, testGpu, uploadWeight } from '../helpers/gpu.js';
import {
  adapterClassOf,
  defaultChoices,
  KERNEL_DEFAULTS,
  type DefaultableClass,
} from '../../src/tuner/defaults.js';

const adapter = (vendor: string, architecture: string, description: string) => ({
  vendor,
  architecture,
  device: '',
  description,
});

describe('adapter classes', () => {
  it('places CPU rasterizers, GPUs by vendor, and the rest as generic', () => {
    expect(adapterClassOf(adapter('mesa', 'software', 'llvmpipe: Mesa 25.0.7 (LLVM 15.0.6)'))).toBe('cpu');
    expect(adapterClassOf(adapter('google', 'swiftshader', 'SwiftShader Device (Subzero)'))).toBe('cpu');
    expect(adapterClassOf(adapter('nvidia', 'hopper', 'NVIDIA H100 80GB HBM3'))).toBe('gpu-discrete');
    expect(adapterClassOf(adapter('amd', 'rdna-3', ''))).toBe('gpu-discrete');
    expect(adapterClassOf(adapter('intel', 'xe-lpg', ''))).toBe('gpu-integrated');
    expect(adapterClassOf(adapter('apple', 'metal-3', ''))).toBe('gpu-integrated');
    expect(adapterClassOf(adapter('', '', ''))).toBe('generic');
  });
});

describe('default choices', () => {
  const gemm: KernelChoice = { kernel: 'matmul', variant: { path: 'gemm', tm: 1, tn: 4, wg: 32 } };
  const flat: KernelChoice = { kernel: 'matmul', variant: { path: 'flat', mt: 1, r: 2 } };
  const cls = (
    key: string,
    bucket: string,
    candidates: KernelChoice[],
    kernel: KernelChoice['kernel'] = 'matmul',
  ): DefaultableClass => ({
    key,
    kernel,
    bucket,
    candidates,
  });

  it('takes the row choice where it is a candidate, never where it is not', () => {
    const row = KERNEL_DEFAULTS.cpu;
    const got = defaultChoices(
      [
        { ...cls('a m1', '1', [{ kernel: 'matmul', variant: {} }, flat, gemm]), rows: 896 },
        // An adapter without subgroups has no GEMM candidates: the rule stays.
        cls('b m1', '1', [{ kernel: 'matmul', variant: {} }, flat]),
        // The row's 2-4 choice (a 4-row tile) is not among these candidates.
        cls('c m2-4', '2-4', [{ kernel: 'matmul', variant: {} }, gemm]),
      ],
      row,
      4096,
    );
    expect(got.get('a m1')).toEqual(gemm);
    expect(got.get('b m1')).toBeUndefined();
    expect(got.get('c m2-4')).toBeUndefined();
    expect(got.size).toBe(1);
  });

  it('picks by weight rows where the row lists sizes (the LM head and gate/up want 64 threads)', () => {
    const q4 = (v: object): KernelChoice => ({ kernel: 'matmul_q4', variant: v });
    const small = { rowsPerGroup: 1, rowsPerThread: 4, subgroups: true, dequant: 'f32', workgroupSize: 16 };
    const large = { rowsPerGroup: 1, rowsPerThread: 4, subgroups: true, dequant: 'f32' };
    const wide = { path: 'gemm', tm: 1, tn: 4, wg: 64 } as const;
    const got = defaultChoices(
      [
        {
          key: 'q 896',
          kernel: 'matmul_q4',
          bucket: '1',
          rows: 896,
          candidates: [q4({}), q4(small), q4(large)],
        },
        {
          key: 'q 9728',
          kernel: 'matmul_q4',
          bucket: '1',
          rows: 9728,
          candidates: [q4({}), q4(small), q4(large)],
        },
        {
          key: 'head',
          kernel: 'matmul',
          bucket: '1',
          rows: 151936,
          candidates: [gemm, { kernel: 'matmul', variant: wide }],
        },
        {
          key: 'o',
          kernel: 'matmul',
          bucket: '1',
          rows: 896,
          candidates: [gemm, { kernel: 'matmul', variant: wide }],
        },
      ],
      KERNEL_DEFAULTS.cpu,
      4096,
    );
    expect(got.get('q 896')).toEqual(q4(small));
    expect(got.get('q 9728')).toEqual(q4(large));
    expect(got.get('head')).toEqual({ kernel: 'matmul', variant: wide });
    expect(got.get('o')).toEqual(gemm);
  });

  it("gives every M > 1 bucket a float and an int4 choice from the tuner's own space", async () => {
    // A row entry that is not a candidate is silently dropped (the kernel's rule runs): this pins
    // the cpu row's several-row choices to variants the tuner can build and time here.
    const ctx = await testGpu();
    const float = uploadWeight(ctx, randomF32(16 * 64, 3), 16, 64, 'f32').weight;
    const q4 = uploadQ4Weight(
      ctx,
      'w',
      quantizeRtn(randomF32(16 * 64, 4), 16, 64, { groupSize: 32, symmetric: false, scaleType: 'f32' }),
    );
    const buckets = ['2-4', '5-16', '17+'] as const satisfies readonly MClass[];
    const classes: DefaultableClass[] = buckets.flatMap((bucket) => [
      {
        key: `f ${bucket}`,
        kernel: 'matmul',
        bucket,
        rows: 896,
        candidates: floatMatmulCandidates(ctx, float, bucket),
      },
      ...[896, 9728].map((rows) => ({
        key: `q ${rows} ${bucket}`,
        kernel: 'matmul_q4' as const,
        bucket,
        rows,
        candidates: q4MatmulCandidates(ctx, q4, bucket),
      })),
    ]);
    const got = defaultChoices(classes, KERNEL_DEFAULTS.cpu, 4096);
    // At 5-16 the tile's rows follow the step's (8 up to 8 rows, 16 above): no `tm`.
    const tiles = { '2-4': [4, 32], '5-16': [undefined, 32], '17+': [16, 16] } as const;
    const q4Choice = (workgroupSize?: 32): KernelChoice => ({
      kernel: 'matmul_q4',
      variant: {
        rowsPerGroup: 4,
        rowsPerThread: 4,
        subgroups: true,
        dequant: 'f32',
        ...(workgroupSize ? { workgroupSize } : {}),
      },
    });
    for (const bucket of buckets) {
      const [tm, wg] = tiles[bucket];
      expect(got.get(`f ${bucket}`)).toEqual(
        gemmUsable(ctx)
          ? { kernel: 'matmul', variant: { path: 'gemm', ...(tm === undefined ? {} : { tm }), tn: 4, wg } }
          : undefined,
      );
      const sg = q4SubgroupsUsable(ctx);
      expect(got.get(`q 896 ${bucket}`)).toEqual(sg ? q4Choice(32) : undefined);
      expect(got.get(`q 9728 ${bucket}`)).toEqual(sg ? q4Choice() : undefined);
    }
    for (const b of [...q4Buffers(q4), ...float.parts.map((p) => p.buffer)]) ctx.destroyBuffer(b);
  });

  it('sizes attention splits from the context bucket, within the candidates', () => {
    const chunks = (ns: number[]): KernelChoice[] =>
      ns.map((chunk) => ({ kernel: 'attention_decode', chunk }));
    const row = KERNEL_DEFAULTS.cpu;
    const at = (context: number, candidates: number[]) =>
      defaultChoices([cls('att', '1', chunks(candidates), 'attention_decode')], row, context).get('att');
    // 8 splits of the bucket, at least 128 tokens each, above a 1024-token bucket.
    expect(at(4096, [128, 64, 256, 512, 1024, 2048])).toEqual({ kernel: 'attention_decode', chunk: 512 });
    expect(at(2048, [128, 64, 256, 512, 1024, 2048])).toEqual({ kernel: 'attention_decode', chunk: 256 });
    // Up to 1024, the whole bucket in one split (the single pass).
    expect(at(1024, [128, 64, 256, 512, 1024])).toEqual({ kernel: 'attention_decode', chunk: 1024 });
    expect(at(256, [64, 128, 256])).toEqual({ kernel: 'attention_decode', chunk: 256 });
    expect(at(100, [64, 128, 256])).toEqual({ kernel: 'attention_decode', chunk: 256 });
    // A chunk that is not a candidate (longer than the context allows) is not forced.
    expect(at(4096, [64, 128, 256])).toBeUndefined();
    expect(
      defaultChoices([cls('att', '1', chunks([512]), 'attention_decode')], KERNEL_DEFAULTS.generic, 4096)
        .size,
    ).toBe(0);
  });

  it('prefers the lanes form at every row bucket on the cpu row where it is a candidate', () => {
    const split = (ns: number[]): KernelChoice[] =>
      ns.map((chunk) => ({ kernel: 'attention_decode', chunk }));
    const row = KERNEL_DEFAULTS.cpu;
    const at = (bucket: string, context: number, candidates: KernelChoice[]) =>
      defaultChoices([cls('att', bucket, candidates, 'attention_decode')], row, context).get('att');
    const withLanes = (context: number) => [...split([64, 128, 256]), lanesChoice(context)];
    for (const bucket of ['1', '2-4', '5-32'])
      expect(at(bucket, 256, withLanes(256))).toEqual({
        kernel: 'attention_decode',
        chunk: 256,
        form: 'lanes',
      });
    expect(lanesChoice(4000)).toEqual({ kernel: 'attention_decode', chunk: 4096, form: 'lanes' });
    // A head shape the lanes form does not serve (no lanes candidate): one row keeps the splits'
    // rule, several rows the kernel's.
    expect(at('1', 256, split([64, 128, 256]))).toEqual({ kernel: 'attention_decode', chunk: 256 });
    expect(at('2-4', 256, split([64, 128, 256]))).toBeUndefined();
    expect(
      defaultChoices([cls('att', '2-4', withLanes(256), 'attention_decode')], KERNEL_DEFAULTS.generic, 256)
        .size,
    ).toBe(0);
  });

  it("takes the cpu row's GGUF block choices where the 16-byte kernel and subgroups are candidates", async () => {
    const ctx = await testGpu();
    const k = 512;
    const weight = uploadGgufWeight(
      ctx,
      'w',
      [
        { type: 'Q4_K', rows: 16, bytes: quantizeGguf('Q4_K', randomF32(16 * k, 1, 1)) },
        { type: 'Q6_K', rows: 8, bytes: quantizeGguf('Q6_K', randomF32(8 * k, 2, 1)) },
      ],
      k,
    );
    const classes: DefaultableClass[] = (['1', '5-16', '2-4'] as const).map((bucket) => ({
      key: bucket,
      kernel: 'matmul_gguf',
      bucket,
      rows: weight.rows,
      candidates: ggufMatmulCandidates(ctx, bucket),
    }));
    const got = defaultChoices(classes, KERNEL_DEFAULTS.cpu, 4096);
    // No row entry at M = 1 (the kernel's rule) nor 2-4.
    expect(got.get('1')).toBeUndefined();
    if (q4SubgroupsUsable(ctx)) {
      expect(got.get('5-16')).toEqual({
        kernel: 'matmul_gguf',
        variant: { rowsPerGroup: 4, rowsPerThread: 2, subgroups: true },
      });
    } else {
      // Without subgroups the row's variant is not a candidate: the kernel's rule stays.
      expect(got.get('5-16')).toBeUndefined();
    }
    expect(got.get('2-4')).toBeUndefined();
    for (const p of weight.parts) for (const b of [p.words, p.dplane]) if (b) ctx.destroyBuffer(b);
  });
});

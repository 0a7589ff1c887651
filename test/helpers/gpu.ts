import { expect } from 'vitest';
import { decodeToFloat32, encodeFromFloat32 } from '../../src/io/dtype.js';
import { DispatchBuilder, runDispatches, type Dispatch } from '../../src/gpu/dispatch.js';
import { kvElementBytes, type KvFloatDtype as KvDtype } from '../../src/kernels/kv-dtype.js';
import { tileMatrix, TILE_ROWS, type GpuWeight, type WeightFormat } from '../../src/kernels/tiled.js';
import { acquireGpu, type GpuContext } from '../../src/gpu/device.js';
import { acquireNodeGpu, dawnGpu } from '../../src/node/dawn.js';

export { randomF32, shuffledBlocks } from './random.js';

let ctx: Promise<GpuContext> | null = null;

/** One Dawn device per test file (each file runs in its own process). */
export function testGpu(): Promise<GpuContext> {
  ctx ??= acquireNodeGpu();
  return ctx;
}

let plain: Promise<GpuContext> | null = null;

/**
 * A second device from the same adapter with no optional features (no subgroups, shader-f16 or
 * timestamps) and default limits: the paths an adapter without them takes, forced on this one.
 */
export function plainGpu(): Promise<GpuContext> {
  plain ??= (async () => {
    const gpu = dawnGpu();
    const adapter = await gpu.requestAdapter();
    if (!adapter) throw new Error('no WebGPU adapter');
    return acquireGpu({ device: await adapter.requestDevice({ label: 'plain' }), keepAlive: gpu });
  })();
  return plain;
}

const STORAGE = () => GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;

export function upload(
  c: GpuContext,
  data: Float32Array | Uint32Array | Uint8Array,
  label = 'test',
): GPUBuffer {
  const buf = c.createBuffer(label, Math.max(4, data.byteLength), STORAGE());
  const padded =
    data.byteLength % 4 === 0
      ? data
      : (() => {
          const p = new Uint8Array(Math.ceil(data.byteLength / 4) * 4);
          p.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
          return p;
        })();
  c.device.queue.writeBuffer(buf, 0, padded as Uint8Array<ArrayBuffer>);
  return buf;
}

export function zeros(c: GpuContext, elems: number, label = 'zeros'): GPUBuffer {
  return upload(c, new Float32Array(elems), label);
}

export async function readF32(c: GpuContext, buf: GPUBuffer, elems: number): Promise<Float32Array> {
  return new Float32Array(await c.read(buf, 0, elems * 4));
}

export async function readU32(c: GpuContext, buf: GPUBuffer, elems: number): Promise<Uint32Array> {
  return new Uint32Array(await c.read(buf, 0, elems * 4));
}

/** Runs dispatches made by `make` and frees their uniforms. */
export function run(c: GpuContext, make: (b: DispatchBuilder) => Dispatch | Dispatch[]): void {
  const b = new DispatchBuilder(c);
  const d = make(b);
  runDispatches(c, Array.isArray(d) ? d : [d]);
  b.destroy();
}

const DTYPE = { f32: 'F32', f16: 'F16', bf16: 'BF16' } as const;

/**
 * Uploads a [rows, cols] matrix in `format`, tiled like the model loader does, split into parts
 * of `rowsPerPart` rows (a multiple of 8, to exercise multi-buffer tensors), and returns it with the
 * values the GPU actually sees (after rounding). With `fused: 'swiglu'`, `values` is [gate; up]
 * stacked (2·rows rows) and `rows` counts units.
 */
export function uploadWeight(
  c: GpuContext,
  values: Float32Array,
  rows: number,
  cols: number,
  format: WeightFormat,
  rowsPerPart = rows,
  fused?: 'swiglu',
): { weight: GpuWeight; seen: Float32Array } {
  if (rowsPerPart < rows && rowsPerPart % TILE_ROWS !== 0)
    throw new RangeError('parts must hold whole tiles');
  const bytes = encodeFromFloat32(DTYPE[format], values);
  const seen = decodeToFloat32(DTYPE[format], bytes);
  const eb = format === 'f32' ? 4 : 2;
  const rowBytes = cols * eb;
  const parts: GpuWeight['parts'] = [];
  for (let r = 0; r < rows; r += rowsPerPart) {
    const n = Math.min(rowsPerPart, rows - r);
    let src = bytes.slice(r * rowBytes, (r + n) * rowBytes);
    if (fused) {
      src = new Uint8Array(2 * n * rowBytes);
      src.set(bytes.subarray(r * rowBytes, (r + n) * rowBytes));
      src.set(bytes.subarray((rows + r) * rowBytes, (rows + r + n) * rowBytes), n * rowBytes);
    }
    parts.push({ buffer: upload(c, tileMatrix(src, n, cols, format, fused)), rowStart: r, rows: n });
  }
  const weight: GpuWeight = { name: 'w', format, rows, cols, parts };
  if (fused) weight.fused = fused;
  return { weight, seen };
}

/**
 * Asserts |a - e| <= atol + rtol·|e| everywhere; on failure reports the worst index and the first
 * few mismatching pairs.
 */
export function expectClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  { atol, rtol = 0 }: { atol: number; rtol?: number },
): void {
  expect(actual.length).toBe(expected.length);
  let worst = -1;
  let worstErr = 0;
  const bad: string[] = [];
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i] as number;
    const e = expected[i] as number;
    const err = Math.abs(a - e);
    const tol = atol + rtol * Math.abs(e);
    if (!(err <= tol)) {
      if (bad.length < 5) bad.push(`[${i}] got ${a} want ${e}`);
      if (!(err <= worstErr)) {
        worstErr = err;
        worst = i;
      }
    }
  }
  if (bad.length) {
    expect.fail(
      `mismatch (atol ${atol}, rtol ${rtol}); worst at ${worst} (|err| ${worstErr}); ${bad.join('; ')}`,
    );
  }
}

/** A zeroed paged-KV-cache buffer of `elems` elements of `dtype`. */
export function kvBuffer(c: GpuContext, elems: number, dtype: KvDtype, label = 'kv'): GPUBuffer {
  return upload(c, new Uint8Array(elems * kvElementBytes(dtype)), label);
}

/** Reads `elems` elements of a `dtype` KV-cache buffer back as f32 (f16 widens exactly). */
export async function readKv(
  c: GpuContext,
  buf: GPUBuffer,
  elems: number,
  dtype: KvDtype,
): Promise<Float32Array> {
  const bytes = Math.ceil((elems * kvElementBytes(dtype)) / 4) * 4;
  const raw = new Uint8Array(await c.read(buf, 0, bytes));
  return dtype === 'f16'
    ? decodeToFloat32('F16', raw.subarray(0, elems * 2))
    : new Float32Array(raw.buffer, 0, elems);
}

/** What a `dtype` KV cache stores for these f32 values: themselves, or rounded to nearest-even f16. */
export function kvRounded(x: Float32Array, dtype: KvDtype): Float32Array {
  return dtype === 'f16' ? decodeToFloat32('F16', encodeFromFloat32('F16', x)) : x;
}

/**
 * Round-to-nearest int4 quantization on the GPU, at load time: a float weight already uploaded in
 * the tiled layout (src/kernels/tiled.ts) becomes a Q4GpuWeight (src/kernels/matmul-q4.ts) in the
 * layout of `packQ4`, equal bit for bit to `packQ4(quantizeRtn(w))` on the CPU for every format
 * (see shaders/quantize_q4.wgsl for how the rounding is matched exactly). One int4 part per input
 * part, with the same rows; each part is packed on its own, as `uploadQ4Weight` packs its slices.
 */
import { storageUsage, type GpuContext } from '../gpu/device.js';
import { DispatchBuilder, runDispatches, type Dispatch } from '../gpu/dispatch.js';
import { linearGrid, MAX_GRID, packParams, shaderSource } from './shader.js';
import type { Q4GpuWeight, Q4WeightPart } from './matmul-q4.js';
import type { GpuWeight, WeightFormat } from './tiled.js';
import { checkQ4Shape, Q4_TILE_ROWS, Q4_WORD_K, type Q4Format } from '../quant/q4.js';

const DTYPE_CODE: Record<WeightFormat, number> = { f32: 0, f16: 1, bf16: 2 };

/** Bits of the status word (status[0]) that shaders/quantize_q4.wgsl sets. */
const FLAG_NONFINITE = 1;
const FLAG_F16_OVERFLOW = 2;
const FLAG_NO_CONVERGENCE = 4;
/** u32s of the status buffer: flags, first row with a non-finite value, first f16-overflow row, 0. */
const STATUS_WORDS = 4;

/** Byte sizes of one packed part's buffers (`packQ4`'s array sizes; zeros 0 when symmetric). */
export function q4PartBytes(
  rows: number,
  cols: number,
  format: Q4Format,
): { words: number; scales: number; zeros: number } {
  const padded = Math.ceil(rows / Q4_TILE_ROWS) * Q4_TILE_ROWS;
  const groups = cols / format.groupSize;
  return {
    words: padded * (cols / Q4_WORD_K) * 16,
    scales: padded * (format.scaleType === 'f32' ? groups : Math.ceil(groups / 2)) * 4,
    zeros: format.symmetric ? 0 : padded * Math.ceil(groups / 8) * 4,
  };
}

/**
 * Checks that `weight` can be quantized to `format` (K a whole number of groups, no SwiGLU
 * fusion); throws UnsupportedModelError (K) or RangeError before any GPU work.
 */
export function checkQuantizable(weight: GpuWeight, format: Q4Format): void {
  if (weight.fused) {
    throw new RangeError(
      `${weight.name}: quantize_q4 does not take a ${weight.fused}-fused weight (gate and up tiles interleaved); quantize the gate and up projections, then fuse`,
    );
  }
  try {
    checkQ4Shape(weight.rows, weight.cols, format);
  } catch (e) {
    if (e instanceof Error) e.message = `${weight.name}: ${e.message}`;
    throw e;
  }
  let next = 0;
  for (const part of weight.parts) {
    if (part.rowStart !== next || part.rows < 1) {
      throw new RangeError(
        `${weight.name}: parts must cover the rows in order (part at row ${part.rowStart} with ${part.rows} rows, expected row ${next})`,
      );
    }
    next += part.rows;
  }
  if (next !== weight.rows) {
    throw new RangeError(`${weight.name}: parts hold ${next} rows of ${weight.rows}`);
  }
}

export interface QuantizeQ4Args {
  /** Tiled f32/f16/bf16 weight (not fused). */
  weight: GpuWeight;
  /** Output: zero-filled buffers of `q4PartBytes` sizes, one part per input part (same rows). */
  out: Q4GpuWeight;
  /** 4 u32s, [0, 0xffffffff, 0xffffffff, 0] before the dispatches run (see `quantizeOnGpu`). */
  status: GPUBuffer;
  /** Bound as `zeros` for symmetric formats (never written). */
  placeholder: GPUBuffer;
}

/**
 * The dispatches of quantize_q4 (one per part). `out` must be freshly allocated (zeroed): the
 * kernel ORs packed scale and zero-point bits into place. Check `status` afterwards (see
 * `quantizeOnGpu`): a non-finite value or an f16 scale overflow leaves the output unusable.
 */
export function quantizeQ4(b: DispatchBuilder, a: QuantizeQ4Args): Dispatch[] {
  const { weight: w, out } = a;
  const f = out.format;
  checkQuantizable(w, f);
  if (out.parts.length !== w.parts.length) {
    throw new RangeError(`${w.name}: ${out.parts.length} int4 parts for ${w.parts.length} weight parts`);
  }
  const groups = w.cols / f.groupSize;
  const flags = (f.symmetric ? 0 : 1) | (f.scaleType === 'f16' ? 2 : 0);
  const kw = (w.cols * (w.format === 'f32' ? 4 : 2)) / 16;
  return w.parts.map((part, i) => {
    const q = out.parts[i] as Q4WeightPart;
    if (q.rowStart !== part.rowStart || q.rows !== part.rows) {
      throw new RangeError(`${w.name}: int4 part ${i} does not cover the rows of weight part ${i}`);
    }
    if (!f.symmetric && !q.zeros) throw new RangeError(`${w.name}: asymmetric int4 part without zeros`);
    const threads = Math.ceil(part.rows / Q4_TILE_ROWS) * Q4_TILE_ROWS * groups;
    const { gridX, grid } = linearGrid(threads);
    if (grid[1] > MAX_GRID) throw new RangeError(`${w.name}: part ${i} is too large for one dispatch`);
    const params = packParams([
      ['u32', part.rows],
      ['u32', w.cols],
      ['u32', kw],
      ['u32', groups],
      ['u32', f.groupSize],
      ['u32', DTYPE_CODE[w.format]],
      ['u32', flags],
      ['u32', part.rowStart],
      ['u32', gridX],
    ]);
    return b.make(
      'quantize_q4',
      () => shaderSource('quantize_q4'),
      params,
      [part.buffer, q.words, q.scales, q.zeros ?? a.placeholder, a.status],
      grid,
    );
  });
}

export interface QuantizeOnGpuOptions {
  /** Name of the int4 weight and label prefix of its buffers (default: the float weight's name). */
  name?: string;
  /** Called with every buffer allocated for the result (the loader's cleanup list). */
  track?: (b: GPUBuffer) => GPUBuffer;
}

/**
 * Quantizes a tiled float weight on the GPU (round to nearest, as `quantizeRtn`) into a new
 * Q4GpuWeight, one part per input part. The float weight is left as it was (free it when done).
 * Throws UnsupportedModelError when K is not a multiple of the group size, RangeError for a fused
 * weight, a non-finite value or a scale past the f16 range (as `quantizeRtn` does), and
 * DeviceMemoryError when the result cannot be allocated; nothing stays allocated after a throw.
 */
export async function quantizeOnGpu(
  ctx: GpuContext,
  weight: GpuWeight,
  format: Q4Format,
  opts: QuantizeOnGpuOptions = {},
): Promise<Q4GpuWeight> {
  checkQuantizable(weight, format);
  const name = opts.name ?? weight.name;
  // Every buffer made here, freed on failure; the result's are handed to `track` on success only,
  // so that a caller's cleanup list never holds a buffer this function already freed.
  const made: GPUBuffer[] = [];
  const create = (label: string, size: number) => {
    const b = ctx.createBuffer(label, size, storageUsage());
    made.push(b);
    return b;
  };
  const builder = new DispatchBuilder(ctx);
  try {
    const parts: Q4WeightPart[] = [];
    for (const part of weight.parts) {
      const bytes = q4PartBytes(part.rows, weight.cols, format);
      const range = `[${part.rowStart}:${part.rowStart + part.rows}]`;
      const total = bytes.words + bytes.scales + bytes.zeros;
      parts.push(
        await ctx.guardAllocation(`int4 tensor ${name}${range}`, total, () => ({
          words: create(`${name}.q4${range}`, bytes.words),
          scales: create(`${name}.scales${range}`, bytes.scales),
          zeros: bytes.zeros ? create(`${name}.zeros${range}`, bytes.zeros) : undefined,
          rowStart: part.rowStart,
          rows: part.rows,
        })),
      );
    }
    const out: Q4GpuWeight = { name, format, rows: weight.rows, cols: weight.cols, parts };
    const status = create(`${name}.quantize_status`, STATUS_WORDS * 4);
    ctx.device.queue.writeBuffer(status, 0, new Uint32Array([0, 0xffffffff, 0xffffffff, 0]));
    const placeholder = create(`${name}.quantize_placeholder`, 4);
    runDispatches(ctx, quantizeQ4(builder, { weight, out, status, placeholder }));
    const [flags = 0, badRow = 0, overflowRow = 0] = new Uint32Array(
      await ctx.read(status, 0, STATUS_WORDS * 4),
    );
    if (flags & FLAG_NONFINITE) {
      throw new RangeError(`int4 quantize ${name}: non-finite value in row ${badRow}`);
    }
    if (flags & FLAG_F16_OVERFLOW) {
      throw new RangeError(
        `int4 quantize ${name}: a scale of row ${overflowRow} does not fit in f16 (max 65504); use scaleType 'f32'`,
      );
    }
    if (flags & FLAG_NO_CONVERGENCE) {
      throw new Error(`int4 quantize ${name}: internal error (the scale search did not converge)`);
    }
    for (const b of [status, placeholder]) {
      ctx.destroyBuffer(b);
      made.splice(made.indexOf(b), 1);
    }
    if (opts.track) for (const b of made) opts.track(b);
    return out;
  } catch (e) {
    for (const b of made) ctx.destroyBuffer(b);
    throw e;
  } finally {
    builder.destroy();
  }
}

/**
 * embed_q4: out[m, :] = W[ids[m], :] dequantized ((q − z)·s in f32, equal to `dequantize`) from an
 * int4 table, for tied models whose embedding doubles as a quantized LM head; see
 * shaders/embed_q4.wgsl. Same interface as `embed`: one dispatch per part, each writing the rows of
 * the ids that fall in its row range. One variant for every format (the format is in the uniform).
 */
import type { Q4GpuWeight } from './matmul-q4.js';
import { MAX_GRID, packParams, shaderSource } from './shader.js';
import { type Dispatch, type DispatchBuilder } from '../gpu/dispatch.js';

export function embedQ4(
  b: DispatchBuilder,
  a: {
    table: Q4GpuWeight;
    /** [m] u32 */ ids: GPUBuffer;
    /** [m, cols] f32 */ out: GPUBuffer;
    m: number;
    /** multiplier, default 1 */ scale?: number;
  },
): Dispatch[] {
  const t = a.table;
  const f = t.format;
  if (!Number.isInteger(a.m) || a.m < 1) throw new RangeError(`embed_q4: m = ${a.m}`);
  if (a.m > MAX_GRID) throw new RangeError(`embed_q4: ${a.m} rows exceed one dispatch`);
  if (t.cols % f.groupSize !== 0 || t.cols % 32 !== 0) {
    throw new RangeError(`embed_q4: ${t.name} has ${t.cols} columns, not a multiple of the group size`);
  }
  const flags = (f.symmetric ? 0 : 1) | (f.scaleType === 'f16' ? 2 : 0);
  return t.parts.map((part) => {
    if (!f.symmetric && !part.zeros) throw new RangeError(`${t.name}: asymmetric int4 part without zeros`);
    return b.make(
      'embed_q4',
      () => shaderSource('embed_q4'),
      packParams([
        ['u32', a.m],
        ['u32', t.cols],
        ['u32', part.rowStart],
        ['u32', part.rows],
        ['u32', t.cols / f.groupSize],
        ['u32', f.groupSize],
        ['u32', flags],
        ['f32', a.scale ?? 1],
      ]),
      // Symmetric tables have no zeros; the scales stand in (read-only bindings may alias).
      [part.words, part.scales, part.zeros ?? part.scales, a.ids, a.out],
      [Math.ceil(t.cols / 8 / 64), a.m, 1],
    );
  });
}

/** embed_{f32,f16,bf16}: out[m, :] = E[ids[m], :] from a tiled table; see shaders/embed.wgsl. One dispatch per part. */
import { MAX_GRID, packParams, shaderSource } from './shader.js';
import { type Dispatch, type DispatchBuilder } from '../gpu/dispatch.js';
import { weightFragment, wordsPerRow, type GpuWeight } from './tiled.js';

export function embed(
  b: DispatchBuilder,
  a: {
    table: GpuWeight;
    /** [m] u32 */ ids: GPUBuffer;
    /** [m, cols] f32 */ out: GPUBuffer;
    m: number;
    /** multiplier, default 1 */ scale?: number;
  },
): Dispatch[] {
  if (a.m > MAX_GRID) throw new RangeError(`embed: ${a.m} rows exceed one dispatch`);
  const variant = `embed_${a.table.format}`;
  return a.table.parts.map((part) =>
    b.make(
      variant,
      () => shaderSource('embed', weightFragment(a.table.format), 'common/tiled'),
      packParams([
        ['u32', a.m],
        ['u32', a.table.cols],
        ['u32', part.rowStart],
        ['u32', part.rows],
        ['u32', wordsPerRow(a.table.cols, a.table.format)],
        ['f32', a.scale ?? 1],
      ]),
      [part.buffer, a.ids, a.out],
      [Math.ceil(a.table.cols / 64), a.m, 1],
    ),
  );
}

/** rope: rotate-half rotary embedding in place on q or k; see rope.wgsl beside this file. */
import { linearGrid, packParams } from '../../src/kernels/shader.js';
import { baselineSource } from './source.js';
import { type Dispatch, type DispatchBuilder } from '../../src/gpu/dispatch.js';

export function rope(
  b: DispatchBuilder,
  a: {
    /** [m] vec4<u32> (src/kernels/row-info.ts) */ rowInfo: GPUBuffer;
    /** [positions][headDim / 2] vec2<f32> (cos, sin), from ropeTable */ table: GPUBuffer;
    /** [m, heads·headDim] f32, rotated in place */ x: GPUBuffer;
    m: number;
    heads: number;
    headDim: number;
  },
): Dispatch {
  const { gridX, grid } = linearGrid((a.m * a.heads * a.headDim) / 2);
  return b.make(
    'rope',
    () => baselineSource('rope'),
    packParams([
      ['u32', a.m],
      ['u32', a.heads],
      ['u32', a.headDim],
      ['u32', gridX],
    ]),
    [a.rowInfo, a.table, a.x],
    grid,
  );
}

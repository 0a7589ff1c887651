/** argmax: one id per logits row, lowest index on ties; see shaders/argmax.wgsl. */
import { MAX_GRID, packParams, shaderSource } from './shader.js';
import { type Dispatch, type DispatchBuilder } from '../gpu/dispatch.js';

export function argmax(
  b: DispatchBuilder,
  a: { /** [rows, n] f32 */ logits: GPUBuffer; /** [rows] u32 */ ids: GPUBuffer; rows: number; n: number },
): Dispatch {
  if (a.rows > MAX_GRID) throw new RangeError(`argmax: ${a.rows} rows exceed one dispatch`);
  return b.make(
    'argmax',
    () => shaderSource('argmax'),
    packParams([['u32', a.n]]),
    [a.logits, a.ids],
    [a.rows, 1, 1],
  );
}

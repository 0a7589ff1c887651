/**
 * gptq_quant_g{GS} (shaders/gptq_quant.wgsl): one group of GPTQ's column sweep for every row of a
 * chunk at once (scale and zero point, codes, errors propagated within the group), and the
 * unpacking of its codes and (scale, zero) pairs once they are read back.
 */
import { type DispatchBuilder, type Dispatch } from '../gpu/dispatch.js';
import { type Q4Format, type Q4Matrix } from '../quant/q4.js';
import { hoistEnables, linearGrid, packParams, shaderSource } from './shader.js';
import { u32 } from './gptq-gemm.js';

/** gptq_quant keeps a group's x and e in private arrays of this size. */
export const MAX_GROUP = 128;

export function gptqQuant(
  b: DispatchBuilder,
  a: {
    /** [rows, n] f32: w in, e out */ w: GPUBuffer;
    /** V_km at v[vOff + k·vSk + m·vSm] */ v: GPUBuffer;
    /** [rows, GS] f32: Σ_{k<j0} e_k·V_km for the group's m */ acc: GPUBuffer;
    /** [rows, n / 8] u32: 8 codes per word, low nibble first */ codes: GPUBuffer;
    /** [rows, groups] (scale bits, zero) */ qp: GPUBuffer;
    /** [n] u32: 1 where H_kk = 0 */ dead: GPUBuffer;
    /** the solve's status words (see gptq-buffers.ts) */ status: GPUBuffer;
    /** V_mm at vd[dOff + m·dSk] */ vd: GPUBuffer;
    format: Q4Format;
    rows: number;
    n: number;
    /** the group's first column */ j0: number;
    /** row of the whole matrix this chunk starts at (for error reports) */ rowStart: number;
    vOff: number;
    vSk: number;
    vSm: number;
    dOff: number;
    dSk: number;
  },
): Dispatch {
  const gs = a.format.groupSize;
  const flags = (a.format.symmetric ? 0 : 1) | (a.format.scaleType === 'f16' ? 2 : 0);
  const { gridX, grid } = linearGrid(a.rows);
  return b.make(
    `gptq_quant_g${gs}`,
    () => hoistEnables([`const GS: u32 = ${gs}u;`, shaderSource('gptq_quant', 'common/broadcast8')]),
    packParams([
      ['u32', a.rows],
      ['u32', a.n],
      ['u32', a.j0],
      ['u32', a.n / gs],
      ['u32', flags],
      ['u32', gridX],
      ['u32', a.rowStart],
      ['u32', u32(a.vOff)],
      ['u32', u32(a.vSk)],
      ['u32', u32(a.vSm)],
      ['u32', u32(a.dOff)],
      ['u32', u32(a.dSk)],
    ]),
    [a.w, a.v, a.acc, a.codes, a.qp, a.dead, a.status, a.vd],
    grid,
  );
}

/**
 * Unpacks the codes and (scale bits, zero) pairs of a chunk of `rows` rows read back from
 * gptq_quant into `out`, starting at row `r0`.
 */
export function unpackGptqQuant(
  out: Q4Matrix,
  codes: Uint32Array,
  qp: Uint32Array,
  r0: number,
  rows: number,
): void {
  const n = out.cols;
  const groups = n / out.format.groupSize;
  const base = r0 * n;
  for (let i = 0; i < codes.length; i++) {
    let word = codes[i] as number;
    for (let j = 0; j < 8; j++) {
      out.codes[base + 8 * i + j] = word & 15;
      word >>>= 4;
    }
  }
  const bits = new Uint32Array(1);
  const asF32 = new Float32Array(bits.buffer);
  for (let i = 0; i < rows * groups; i++) {
    bits[0] = qp[2 * i] as number;
    out.scales[r0 * groups + i] = asF32[0] as number;
    out.zeros[r0 * groups + i] = qp[2 * i + 1] as number;
  }
}

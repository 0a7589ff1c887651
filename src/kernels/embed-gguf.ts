/**
 * embed_gguf: out[m, :] = W[ids[m], :] · scale decoded from a GGUF block table (a GGUF model's
 * token_embd, kept quantized, or its tied LM head); see shaders/embed_gguf.wgsl. Same interface as
 * `embed` (the scale is Gemma's √hidden, 1 otherwise): one dispatch per part, each writing the rows of the ids that fall in its row range;
 * one variant per block format (`embed_gguf_<type>`).
 */
import type { Dispatch, DispatchBuilder } from '../gpu/dispatch.js';
import { ggufBlockLayout, type GgufKernelType } from '../quant/gguf-pack.js';
import { ggufSharedFragments, type GgufGpuWeight } from './matmul-gguf.js';
import { MAX_GRID, packParams, shaderSource } from './shader.js';
import type { ShaderName } from './wgsl.gen.js';

/**
 * The fragments that decode one of `type`'s blocks 8 weights at a time (shaders/common/gguf_<type>.wgsl),
 * after what the format shares with others: the scale pairs of Q4_K and Q5_K, the IQ4 levels.
 */
function ggufFragments(type: GgufKernelType): ShaderName[] {
  const own = `common/gguf_${type.toLowerCase()}` as ShaderName;
  return [
    ...ggufSharedFragments(type),
    ...(type === 'Q4_K' || type === 'Q5_K' ? (['common/gguf_k_scales'] as const) : []),
    own,
  ];
}

export function embedGguf(
  b: DispatchBuilder,
  a: {
    table: GgufGpuWeight;
    /** [m] u32 */ ids: GPUBuffer;
    /** [m, cols] f32 */ out: GPUBuffer;
    m: number;
    /** Bound where a part has no d plane or h plane. */
    placeholder: GPUBuffer;
    /** multiplier, default 1 */ scale?: number;
  },
): Dispatch[] {
  const t = a.table;
  if (!Number.isInteger(a.m) || a.m < 1) throw new RangeError(`embed_gguf: m = ${a.m}`);
  if (a.m > MAX_GRID) throw new RangeError(`embed_gguf: ${a.m} rows exceed one dispatch`);
  return t.parts.map((part) => {
    const chunks = t.cols / 8;
    if (t.cols % ggufBlockLayout(part.type).info.blockElems !== 0) {
      throw new RangeError(`embed_gguf: ${t.name} has ${t.cols} columns, not whole ${part.type} blocks`);
    }
    return b.make(
      `embed_gguf_${part.type.toLowerCase()}`,
      () => shaderSource('embed_gguf', 'common/gguf_block', ...ggufFragments(part.type)),
      packParams([
        ['u32', a.m],
        ['u32', t.cols],
        ['u32', part.rowStart],
        ['u32', part.rows],
        ['f32', a.scale ?? 1],
      ]),
      [part.words, part.dplane ?? a.placeholder, a.ids, a.out, part.hplane ?? a.placeholder],
      [Math.ceil(chunks / 64), a.m, 1],
    );
  });
}

/**
 * A float checkpoint quantized to int4 while loading: each projection is uploaded in its tiled
 * float layout, quantized on the GPU (src/kernels/quantize-q4.ts, bit-identical to the CPU
 * round-to-nearest) and the float copy freed, so only one matrix is ever held twice. The LM head
 * is quantized too when asked; a tied one then also serves as the embedding table.
 */
import { UnsupportedModelError } from '../errors.js';
import type { Q4GpuWeight } from '../kernels/matmul-q4.js';
import { quantizeOnGpu } from '../kernels/quantize-q4.js';
import { projectionRows } from '../model/architecture.js';
import { LM_HEAD_PREFIX } from '../quant/kiln-format.js';
import type { Q4Format } from '../quant/q4.js';
import {
  headTensor,
  projectionsOf,
  projectionWeights,
  type LoadContext,
  type WeightSource,
} from './source.js';
import { q4MatrixBytes } from './upload-q4.js';
import { uploadMatrix } from './upload.js';

export function quantizeSource(format: Q4Format, lmHead: boolean, tied: boolean): WeightSource {
  const quantized = async (lc: LoadContext, name: string, tensors: string[]): Promise<Q4GpuWeight> => {
    const temp: GPUBuffer[] = [];
    try {
      const float = await uploadMatrix(lc, name, tensors, 'stack', (b) => (temp.push(b), b));
      return await quantizeOnGpu(lc.ctx, float, format, { name, track: (b) => lc.track(b) });
    } finally {
      for (const b of temp) lc.ctx.destroyBuffer(b);
    }
  };
  const f = format;
  return {
    description: `int4 g${f.groupSize} ${f.symmetric ? 'sym' : 'asym'}${lmHead ? ' (+lm_head)' : ''}, quantized at load`,
    quantized: true,
    headServesEmbeddings: lmHead && tied,
    ownsHead: lmHead,
    floatTensors: (_spec, t) => [...projectionWeights(t), ...(lmHead ? [headTensor(t)] : [])],
    validate(_spec, t) {
      for (const p of projectionsOf(t)) {
        if (p.cols % format.groupSize !== 0) {
          throw new UnsupportedModelError(
            `${p.name}: K = ${p.cols} is not a multiple of the int4 group size ${format.groupSize}; pick a group size that divides it`,
          );
        }
      }
    },
    packedTensorNames: () => [],
    bytes(spec, t) {
      let total = 0;
      for (const p of projectionsOf(t)) total += q4MatrixBytes(projectionRows(p), p.cols, format);
      if (lmHead) total += q4MatrixBytes(spec.vocabSize, spec.hiddenSize, format);
      return total;
    },
    async projection(lc, p) {
      return {
        weight: await quantized(
          lc,
          p.name,
          p.sources.map((s) => `${s.prefix}.weight`),
        ),
      };
    },
    lmHead: (lc, t) => quantized(lc, LM_HEAD_PREFIX, [headTensor(t)]),
  };
}

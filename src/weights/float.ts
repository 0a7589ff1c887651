/**
 * Projections as the checkpoint stores them (f32, f16 or bf16), tiled for the float matmul:
 * q, k and v stacked into one matrix, gate and up with interleaved tiles for the SwiGLU epilogue.
 */
import { projectionWeights, type WeightSource } from './source.js';
import { floatTensorBytes, uploadMatrix } from './upload.js';

export const floatSource: WeightSource = {
  description: 'float',
  quantized: false,
  headServesEmbeddings: false,
  ownsHead: false,
  floatTensors: (_spec, t) => projectionWeights(t),
  validate: () => undefined,
  packedTensorNames: () => [],
  bytes(_spec, t, ckpt) {
    return projectionWeights(t).reduce((a, name) => {
      const info = ckpt.get(name);
      return a + floatTensorBytes(info.shape, info.dtype);
    }, 0);
  },
  async projection(lc, p) {
    const weights = p.sources.map((s) => `${s.prefix}.weight`);
    return { weight: await uploadMatrix(lc, p.name, weights, p.role === 'gateUp' ? 'swiglu' : 'stack') };
  },
  lmHead() {
    throw new RangeError('the float source leaves the LM head to the loader');
  },
};

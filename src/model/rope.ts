/**
 * The rotation each layer applies, from the spec: the global RoPE (ropeTheta, ropeScaling), the
 * local one of Gemma 3's sliding layers (localRopeTheta, unscaled) or none (SmolLM3's NoPE
 * layers), over the first rotaryDim elements of each head. The forward pass builds one table per
 * kind its layers use; the reference rotates with the same angles in float64.
 */
import { NO_ROPE, ropeAngles, type RopeAngles } from '../kernels/rope.ref.js';
import type { LayerRope, ModelSpec } from './spec.js';

export function ropeOfKind(spec: ModelSpec, kind: LayerRope): RopeAngles {
  const rotaryDim = spec.rotaryDim ?? spec.headDim;
  switch (kind) {
    case 'none':
      return NO_ROPE;
    case 'local':
      return ropeAngles(rotaryDim, spec.localRopeTheta ?? spec.ropeTheta, { type: 'none' });
    case 'global':
      return ropeAngles(rotaryDim, spec.ropeTheta, spec.ropeScaling);
  }
}

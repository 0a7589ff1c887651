/**
 * Activation element types. Kernels compute in f32 everywhere; activations a kernel hands to a
 * matmul may be stored as f16 where the adapter has shader-f16 (half the bytes; each value rounded
 * once, to 11 significant bits). See shaders/common/act_*.wgsl.
 */
import type { GpuContext } from '../gpu/device.js';

export type ActivationFormat = 'f32' | 'f16';

/** The shader fragment declaring `Act` (it must come first: the f16 one opens with `enable f16`). */
export function activationFragment(format: ActivationFormat) {
  return `common/act_${format}` as const;
}

/** Bytes of one activation element. */
export function activationBytes(format: ActivationFormat): number {
  return format === 'f16' ? 2 : 4;
}

/** Throws unless the device can store `format` activations. */
export function checkActivationFormat(ctx: GpuContext, format: ActivationFormat): void {
  if (format === 'f16' && !ctx.adapter.shaderF16) {
    throw new RangeError('f16 activations need the shader-f16 feature, which this adapter lacks');
  }
}

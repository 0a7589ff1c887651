/**
 * Element types of the paged KV cache. Attention computes in f32 either way; the cache may store
 * K and V as f16 where the adapter has shader-f16 (half the memory and half the bytes attention
 * reads per token; each value rounded once, to nearest, as it is written). Every kernel that reads
 * or writes the cache is prepended with the matching fragment (shaders/common/kv_*.wgsl, declaring
 * `Kv`), and its f16 variant's pipeline label (= cache key = bench row) ends in `_kvf16`.
 */
import type { GpuContext } from '../gpu/device.js';

export type KvDtype = 'f32' | 'f16';

/** The shader fragment declaring `Kv` (it must come first: the f16 one opens with `enable f16`). */
export function kvFragment(dtype: KvDtype) {
  return `common/kv_${dtype}` as const;
}

/** Bytes of one K or V element. */
export function kvElementBytes(dtype: KvDtype): number {
  return dtype === 'f16' ? 2 : 4;
}

/** The pipeline label of a KV kernel's variant for `dtype`: `label` itself for f32. */
export function kvVariant(label: string, dtype: KvDtype): string {
  return dtype === 'f16' ? `${label}_kvf16` : label;
}

/** Throws unless the device can store a `dtype` KV cache. */
export function checkKvDtype(ctx: GpuContext, dtype: KvDtype): void {
  if (dtype === 'f16' && !ctx.adapter.shaderF16) {
    throw new RangeError('an f16 KV cache needs the shader-f16 feature, which this adapter lacks');
  }
}

import { afterEach, describe, expect, test } from 'vitest';
import { DeviceMemoryError } from '../../src/errors.js';
import { formatBytes } from '../../src/gpu/device.js';
import { parseModelConfig } from '../../src/model/config.js';
import { BLOCK_TOKENS, kvBlockBytes, kvCacheBytes, PagedKvCache } from '../../src/engine/kv/cache.js';
import type { ModelSpec } from '../../src/model/spec.js';
import { slidingLayout } from '../../src/engine/kv/sliding-pool.js';
import type { KvDtype } from '../../src/kernels/kv-dtype.js';
import { testGpu } from '../helpers/gpu.js';

function spec(o: { layers?: number; heads?: number; kvHeads?: number; headDim?: number } = {}): ModelSpec {
  const heads = o.heads ?? 4;
  return parseModelConfig({
    architectures: ['LlamaForCausalLM'],
    vocab_size: 128,
    hidden_size: 64,
    intermediate_size: 96,
    num_hidden_layers: o.layers ?? 2,
    num_attention_heads: heads,
    num_key_value_heads: o.kvHeads ?? 2,
    head_dim: o.headDim ?? 16,
    max_position_embeddings: 4096,
    rms_norm_eps: 1e-5,
  });
}

const caches: PagedKvCache[] = [];
async function cache(numBlocks: number, s = spec()): Promise<PagedKvCache> {
  const c = await PagedKvCache.create(await testGpu(), s, numBlocks);
  caches.push(c);
  return c;
}
afterEach(() => {
  for (const c of caches.splice(0)) c.destroy();
});

describe('sizes', () => {
  test('a block holds 16 tokens of every KV head, f32', () => {
    expect(BLOCK_TOKENS).toBe(16);
    const s = spec({ kvHeads: 2, headDim: 16, layers: 3 });
    expect(kvBlockBytes(s)).toBe(2 * 16 * 16 * 4);
    // K and V, every layer, whole blocks.
    expect(kvCacheBytes(s, 1)).toBe(kvBlockBytes(s) * 2 * 3);
    expect(kvCacheBytes(s, 16)).toBe(kvBlockBytes(s) * 2 * 3);
    expect(kvCacheBytes(s, 17)).toBe(2 * kvBlockBytes(s) * 2 * 3);
    expect(kvCacheBytes(s, 0)).toBe(0);
  });

  test('an f16 cache takes half the bytes: 2 per element', () => {
    const s = spec({ kvHeads: 2, headDim: 16, layers: 3 });
    expect(kvBlockBytes(s, 'f16')).toBe(2 * 16 * 16 * 2);
    expect(kvBlockBytes(s, 'f32')).toBe(kvBlockBytes(s));
    expect(kvCacheBytes(s, 17, 'f16')).toBe(2 * kvBlockBytes(s, 'f16') * 2 * 3);
    expect(kvCacheBytes(s, 17, 'f16') * 2).toBe(kvCacheBytes(s, 17));
  });

  test('compressed rows: packed codes + an f16 (scale, min) word (+ 2 outlier words for GEAR)', () => {
    // Llama-3.2-1B's attention: 16 layers, 8 KV heads of 64.
    const s = spec({ layers: 16, heads: 32, kvHeads: 8, headDim: 64 });
    const perTokenPerLayer = (kv: KvDtype) => (2 * kvBlockBytes(s, kv)) / BLOCK_TOKENS;
    expect(perTokenPerLayer('f16')).toBe(2 * 8 * 64 * 2);
    expect(perTokenPerLayer('int8')).toBe(2 * 8 * (64 + 4));
    expect(perTokenPerLayer('int4')).toBe(2 * 8 * (32 + 4));
    expect(perTokenPerLayer('int2')).toBe(2 * 8 * (16 + 4));
    expect(perTokenPerLayer('gear4')).toBe(2 * 8 * (32 + 4 + 8));
    expect(perTokenPerLayer('gear2')).toBe(2 * 8 * (16 + 4 + 8));
    // Low-rank: rank 2 f16 factors per (block, KV head), A 16 x 2 and B 2 x 64, over 16 tokens.
    const factors = (2 * 2 * (16 + 64)) / 16;
    expect(perTokenPerLayer('int4lr')).toBe(2 * 8 * (32 + 4 + factors));
    expect(perTokenPerLayer('gear4lr')).toBe(2 * 8 * (32 + 4 + 8 + factors));
    expect(perTokenPerLayer('int2lr')).toBe(2 * 8 * (16 + 4 + factors));
    expect(perTokenPerLayer('gear2lr')).toBe(2 * 8 * (16 + 4 + 8 + factors));
    // The longest context a 64 MiB KV budget holds (whole blocks): 4 bits at least 3.5x f16.
    const fits = (kv: KvDtype) => {
      let blocks = 0;
      while (kvCacheBytes(s, (blocks + 1) * BLOCK_TOKENS, kv) <= 64 * 2 ** 20) blocks++;
      return blocks * BLOCK_TOKENS;
    };
    expect(fits('f16')).toBe(2048);
    expect(fits('int4') / fits('f16')).toBeGreaterThanOrEqual(3.5);
    expect([fits('int4lr'), fits('gear4lr'), fits('int2lr'), fits('gear2lr')]).toEqual([
      4672, 4096, 6544, 5456,
    ]);
    // A head_dim whose codes do not fill a word pads the row to whole words (int2, 12 channels).
    expect(kvBlockBytes(spec({ headDim: 12, kvHeads: 1 }), 'int2')).toBe(16 * 4 * 2);
  });

  test('create allocates buffers of the dtype it is given (f32 by default)', async () => {
    const ctx = await testGpu();
    const s = spec({ layers: 2 });
    expect((await cache(3, s)).dtype).toBe('f32');
    if (!ctx.adapter.shaderF16) {
      await expect(PagedKvCache.create(ctx, s, 3, 'f16')).rejects.toThrow(/shader-f16/);
      return;
    }
    const before = ctx.allocatedBytes;
    const c = await PagedKvCache.create(ctx, s, 3, 'f16');
    caches.push(c);
    expect(c.dtype).toBe('f16');
    for (const b of [...c.k, ...c.v]) expect(b.size).toBe(3 * kvBlockBytes(s, 'f16'));
    expect(ctx.allocatedBytes - before).toBe(kvCacheBytes(s, 3 * BLOCK_TOKENS, 'f16'));
  });

  test('create allocates one K and one V buffer of numBlocks blocks per layer', async () => {
    const s = spec({ layers: 3 });
    const c = await cache(5, s);
    expect(c.k).toHaveLength(3);
    expect(c.v).toHaveLength(3);
    for (const b of [...c.k, ...c.v]) expect(b.size).toBe(5 * kvBlockBytes(s));
    expect(c.numBlocks).toBe(5);
  });
});

describe('device limits', () => {
  test('a layer buffer over maxStorageBufferBindingSize is a DeviceMemoryError naming the limit', async () => {
    const ctx = await testGpu();
    const limit = ctx.limits.maxStorageBufferBindingSize;
    const s = spec({ heads: 8, kvHeads: 8, headDim: 256 }); // 128 KiB per block
    const fit = Math.floor(limit / kvBlockBytes(s));
    const err = await PagedKvCache.create(ctx, s, fit + 1).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DeviceMemoryError);
    const msg = (err as Error).message;
    expect(msg).toContain(`maxStorageBufferBindingSize (${formatBytes(limit)})`);
    expect(msg).toContain(`for ${(fit + 1) * 16} tokens`);
    expect(msg).toContain(formatBytes((fit + 1) * kvBlockBytes(s)));
    expect(msg).toMatch(/shorter context/);
  });

  test('with a sliding pool, the limit applies to the buffers allocated: an all-sliding model has no full-size one', async () => {
    const ctx = await testGpu();
    const limit = ctx.limits.maxStorageBufferBindingSize;
    // 128 KiB per block, as above; a window of 64 keys, 16-row steps: 6 blocks per sequence.
    const windowed = (config: Record<string, unknown>) =>
      parseModelConfig({
        vocab_size: 128,
        hidden_size: 64,
        intermediate_size: 96,
        num_hidden_layers: 2,
        num_attention_heads: 8,
        num_key_value_heads: 8,
        head_dim: 256,
        max_position_embeddings: 2 ** 20,
        rms_norm_eps: 1e-5,
        ...config,
      });
    const mistral = windowed({
      architectures: ['MistralForCausalLM'],
      model_type: 'mistral',
      sliding_window: 64,
    });
    // Qwen2's max_window_layers 1: layer 0 keeps every block, layer 1 slides.
    const qwen2 = windowed({
      architectures: ['Qwen2ForCausalLM'],
      model_type: 'qwen2',
      use_sliding_window: true,
      sliding_window: 64,
      max_window_layers: 1,
    });
    const block = kvBlockBytes(mistral);
    expect(kvBlockBytes(qwen2)).toBe(block);
    const fit = Math.floor(limit / block);
    const context = (fit + 1) * BLOCK_TOKENS;
    const layout = (s: ModelSpec) => {
      const l = slidingLayout(s, context, 16, BLOCK_TOKENS);
      if (!l) throw new Error('no sliding layout');
      return l;
    };
    expect(layout(mistral).layers).toEqual([true, true]);
    expect(layout(qwen2).layers).toEqual([false, true]);
    expect(layout(mistral).blocksPerSeq).toBe(6);

    // A whole context's full pool (fit + 1 blocks) would be over the limit; Mistral allocates
    // only its sliding pool, 6 blocks per layer.
    const before = ctx.allocatedBytes;
    const c = await PagedKvCache.create(ctx, mistral, fit + 1, 'f32', { layout: layout(mistral), blocks: 6 });
    caches.push(c);
    for (const b of [...c.k, ...c.v]) expect(b.size).toBe(6 * block);
    expect(ctx.allocatedBytes - before).toBe(2 * 2 * 6 * block);

    // Qwen2's layer 0 keeps the full pool: still refused, naming the limit and what was needed.
    const mixed = await PagedKvCache.create(ctx, qwen2, fit + 1, 'f32', {
      layout: layout(qwen2),
      blocks: 6,
    }).catch((e: unknown) => e);
    expect(mixed).toBeInstanceOf(DeviceMemoryError);
    expect((mixed as Error).message).toContain(
      `for ${context} tokens needs ${formatBytes((fit + 1) * block)}`,
    );
    expect((mixed as Error).message).toContain(`maxStorageBufferBindingSize (${formatBytes(limit)})`);

    // The sliding pool's own buffers are checked too.
    const over = await PagedKvCache.create(ctx, mistral, fit + 2, 'f32', {
      layout: layout(mistral),
      blocks: fit + 1,
    }).catch((e: unknown) => e);
    expect(over).toBeInstanceOf(DeviceMemoryError);
    const msg = (over as Error).message;
    expect(msg).toContain(`sliding-window layers' KV pool of ${context} tokens`);
    expect(msg).toContain(`needs ${formatBytes((fit + 1) * block)} per layer`);
    expect(msg).toContain(`maxStorageBufferBindingSize (${formatBytes(limit)})`);
    expect(ctx.allocatedBytes - before).toBe(2 * 2 * 6 * block);
  });

  test('destroy frees the buffers', async () => {
    const ctx = await testGpu();
    const before = ctx.allocatedBytes;
    const c = await PagedKvCache.create(ctx, spec(), 4);
    expect(ctx.allocatedBytes - before).toBe(2 * 2 * 4 * kvBlockBytes(spec()));
    c.destroy();
    expect(ctx.allocatedBytes).toBe(before);
    expect(c.k).toEqual([]);
  });
});

/**
 * The sliding layers' KV pool on the CPU (src/engine/kv/sliding-pool.ts): a sequence growing far
 * past its window holds a bounded number of blocks (its reservation), released blocks are
 * handed to other sequences, a reservation is refused when the pool is promised out, and the
 * layout and pool size the memory planner uses follow the window, the prefill chunk and the
 * context; the planner, counting the smaller pool, fits more tokens in the same memory.
 */
import { describe, expect, test } from 'vitest';
import {
  pushSlidingRows,
  RELEASED_BLOCK,
  SlidingPool,
  slidingLayout,
  slidingPoolBlocks,
} from '../../src/engine/kv/sliding-pool.js';
import { OutOfBlocksError } from '../../src/engine/kv/block-types.js';
import type { ModelSpec } from '../../src/model/spec.js';
import { CATALOG } from '../../src/model/catalog.js';
import { parseModelConfig } from '../../src/model/config.js';
import { planMemory } from '../../src/engine/memory.js';
import { DeviceMemoryError } from '../../src/errors.js';
import { weightSourceFor } from '../../src/weights/select.js';
import { catalogConfig, shapesOnly } from '../../bench/catalog-memory.js';

const spec = (layerWindows: number[]) => ({ layerWindows }) as unknown as ModelSpec;

describe('slidingLayout and slidingPoolBlocks', () => {
  test('Gemma 3 1B shapes at 8k with 256-row chunks', () => {
    // 26 layers, 5 sliding (512) for each global one.
    const windows = Array.from({ length: 26 }, (_, l) => ((l + 1) % 6 === 0 ? 0 : 512));
    const layout = slidingLayout(spec(windows), 8192, 256, 16);
    expect(layout?.window).toBe(512);
    // floor((512 + 256 - 2) / 16) + 2 = 49 blocks: a chunk of 256 rows plus the 511 keys before it.
    expect(layout?.blocksPerSeq).toBe(49);
    expect(layout?.layers.filter(Boolean).length).toBe(22);
    // One 8k sequence's full pool (512 blocks) gets one sequence's window; two sequences, two.
    expect(slidingPoolBlocks(layout!, 512, 8192, 16)).toBe(49);
    expect(slidingPoolBlocks(layout!, 1024, 8192, 16)).toBe(98);
    expect(slidingPoolBlocks(layout!, 513, 8192, 16)).toBe(98);
  });

  test('no pool where it saves nothing', () => {
    // Windows at or past the context (Phi-3's 262144) are full attention.
    expect(slidingLayout(spec([262144, 262144]), 4096, 256, 16)).toBeNull();
    // No window at all.
    expect(slidingLayout(spec([0, 0]), 4096, 256, 16)).toBeNull();
    // A window plus a chunk as long as the context: a sequence would hold every block anyway.
    expect(slidingLayout(spec([12, 0]), 128, 128, 16)).toBeNull();
    expect(slidingLayout(spec([12, 0]), 128, 16, 16)?.blocksPerSeq).toBe(3);
  });
});

describe('SlidingPool', () => {
  const layout = { layers: [true, false], window: 20, blocksPerSeq: 4 };

  test('a sequence decoding far past its window holds at most its reservation', () => {
    const pool = new SlidingPool(layout, 8, 16);
    pool.reserve(1, 1000);
    // Prefill 0..47 in chunks of 16, then 1000 decode steps one row each.
    for (let p = 0; p < 48; p += 16) pool.prepare(1, p, p + 16);
    let most = 0;
    for (let p = 48; p < 1048; p++) {
      const table = pool.prepare(1, p, p + 1);
      pool.checkInvariants();
      most = Math.max(most, pool.heldBlocks(1));
      // The window of p (keys p - 19 .. p) is live; everything before its block is released.
      const lo = Math.floor((p - 19) / 16);
      for (let k = 0; k < table.length; k++) expect(table[k] === RELEASED_BLOCK).toBe(k < lo);
      expect(pool.slotFor(1, p) % 16).toBe(p % 16);
      expect(() => pool.slotFor(1, lo * 16 - 1)).toThrow(/holds no block/);
    }
    expect(most).toBeLessThanOrEqual(layout.blocksPerSeq);
    expect(pool.stats().peakSeqBlocks).toBeLessThanOrEqual(4);
    pool.free(1);
    expect(pool.stats()).toMatchObject({ usedBlocks: 0, reservedBlocks: 0 });
    pool.checkInvariants();
  });

  test('reservations bound admission; released blocks go to other sequences', () => {
    const pool = new SlidingPool(layout, 8, 16);
    pool.reserve(1, 1000);
    // A short sequence reserves only what its length can use.
    expect(pool.reservation(20)).toBe(2);
    pool.reserve(2, 20);
    expect(pool.canReserve(1000)).toBe(false);
    expect(pool.canReserve(30)).toBe(true);
    expect(() => pool.reserve(3, 1000)).toThrow(OutOfBlocksError);
    pool.prepare(1, 0, 64);
    expect(pool.heldBlocks(1)).toBe(4);
    pool.prepare(2, 0, 20);
    // Sequence 1 moves on: its first blocks come back and sequence 3 (reserved now) gets them.
    // Keys from 45 on: blocks 2..4 (block 4 new).
    pool.prepare(1, 64, 65);
    expect(pool.heldBlocks(1)).toBe(3);
    pool.free(2);
    pool.reserve(3, 64);
    pool.prepare(3, 0, 64);
    pool.checkInvariants();
    expect(pool.stats().usedBlocks).toBe(7);
  });

  test('a truncated step (rejected guesses) gives its blocks back; step rows pad to the full table', () => {
    const pool = new SlidingPool(layout, 8, 16);
    pool.reserve(1, 1000);
    pool.prepare(1, 0, 40); // blocks 0..2
    pool.prepare(1, 40, 50); // guesses into block 3; keys from 21 on: block 0 released
    expect(pool.heldBlocks(1)).toBe(3);
    // Only position 41 was accepted: the next step starts at 42 and ends in block 2.
    const rows = { slidingSlots: [] as number[], slidingBlockTable: [] as number[] };
    pushSlidingRows(rows, pool, 1, 42, 44, 5);
    expect(rows.slidingBlockTable.length).toBe(5);
    expect(rows.slidingBlockTable.slice(3)).toEqual([RELEASED_BLOCK, RELEASED_BLOCK]);
    expect(rows.slidingBlockTable[0]).toBe(RELEASED_BLOCK); // keys from 23 on: block 0 is gone
    expect(rows.slidingSlots.map((s) => s % 16)).toEqual([10, 11]);
    expect(pool.heldBlocks(1)).toBe(2);
    pool.checkInvariants();
  });
});

describe('the memory planner counts the sliding pool (Gemma-3-1B shapes, int4, f16 KV)', () => {
  const entry = CATALOG.find((e) => e.id === 'google/gemma-3-1b-it');
  if (!entry) throw new Error('no Gemma-3-1B in the catalog');
  const spec = parseModelConfig(catalogConfig(entry));
  const ckpt = shapesOnly(spec);
  const source = weightSourceFor(spec, entry.id, 'q4');
  const plan = (slidingKv: 'release' | 'keep', requestedContext: number, budgetBytes?: number) =>
    planMemory({
      spec,
      ckpt,
      source,
      kvDtype: 'f16',
      requestedContext,
      prefillChunkTokens: 256,
      limits: { maxBufferSize: 2 ** 30, maxStorageBufferBindingSize: 2 ** 30 },
      slidingKv,
      ...(budgetBytes !== undefined ? { budgetBytes } : {}),
    });

  test('the same memory limit holds more tokens, and a context that must be cut without it fits', () => {
    const keep = plan('keep', 8192, 1.1 * 2 ** 30);
    const release = plan('release', 8192, 1.1 * 2 ** 30);
    expect(keep.slidingKvBlocks).toBe(0);
    expect(release.slidingKvBlocks).toBeGreaterThan(0);
    for (const p of [keep, release]) expect(p.total).toBeLessThanOrEqual(1.1 * 2 ** 30);
    // Within a few blocks' bytes of the limit, the released plan holds far more full blocks.
    expect(release.kvBlocks).toBeGreaterThan(3 * keep.kvBlocks);
    // 32k tokens in 1.2 GiB: keeping every block (832 MiB of KV) must cut the context; releasing
    // (128 MiB for the 4 global layers, 17 MiB for the sliding pool) does not.
    const keep32 = plan('keep', 32768, 1.2 * 2 ** 30);
    const release32 = plan('release', 32768, 1.2 * 2 ** 30);
    expect(keep32.contextLength).toBeLessThan(32768);
    expect(release32.contextLength).toBe(32768);
  });

  test('the default pool is 256 MiB of f32 K/V either way; released, it holds more tokens', () => {
    const keep = plan('keep', 4096);
    const release = plan('release', 4096);
    // 26 layers x 2 x 256 x 4 bytes a token in f32: 256 MiB is 5041 tokens, 316 blocks (f16 half).
    expect(keep.kvBlocks).toBe(316);
    expect(release.kvBlocks).toBeGreaterThan(2 * keep.kvBlocks);
    expect(release.kvCache).toBeLessThanOrEqual(keep.kvCache);
  });

  test('past 256 MiB the default pool is one whole context as the engine allocates it', () => {
    // At 32k, one context kept in every layer is 1.6 GiB of f32 K/V: keep gets exactly that. The
    // released allocation of one context (4 global layers' blocks plus the sliding pool) is far
    // smaller, and the default buys that one context, not as many as the kept size would hold.
    const keep = plan('keep', 32768);
    const release = plan('release', 32768);
    expect(keep.kvBlocks).toBe(2048);
    expect(release.kvBlocks).toBe(2048);
    expect(release.kvCache).toBeLessThan(keep.kvCache / 4);
  });
});

describe('the binding limit applies to the KV buffers allocated', () => {
  // Mistral-7B-v0.1's shapes: every layer slides (window 4096), 8 KV heads of 128. An f32 cache (an
  // adapter without shader-f16) is 64 KiB a block, so a 64 MiB binding holds 1024 blocks, half of
  // a 32k context: the full pool the model never allocates would not fit one binding, its
  // sliding pool (273 blocks a sequence with 256-row chunks) does.
  const mistral = parseModelConfig({
    architectures: ['MistralForCausalLM'],
    model_type: 'mistral',
    vocab_size: 32000,
    hidden_size: 4096,
    intermediate_size: 14336,
    num_hidden_layers: 32,
    num_attention_heads: 32,
    num_key_value_heads: 8,
    max_position_embeddings: 32768,
    rms_norm_eps: 1e-5,
    sliding_window: 4096,
  });
  const gemmaEntry = CATALOG.find((e) => e.id === 'google/gemma-3-1b-it');
  if (!gemmaEntry) throw new Error('no Gemma-3-1B in the catalog');
  const gemma = parseModelConfig(catalogConfig(gemmaEntry));
  const MiB = 2 ** 20;
  const plan = (
    spec: ModelSpec,
    o: {
      binding: number;
      kv?: 'f32' | 'f16';
      ctx?: number;
      slidingKv?: 'release' | 'keep';
      kvTokens?: number;
    },
  ) =>
    planMemory({
      spec,
      ckpt: shapesOnly(spec),
      source: weightSourceFor(spec, 'shapes', 'q4'),
      kvDtype: o.kv ?? 'f32',
      requestedContext: o.ctx ?? 32768,
      prefillChunkTokens: 256,
      limits: { maxBufferSize: 2 ** 32, maxStorageBufferBindingSize: o.binding },
      slidingKv: o.slidingKv ?? 'release',
      ...(o.kvTokens !== undefined ? { kvTokens: o.kvTokens } : {}),
    });
  const block = 8 * 128 * 4 * 16;

  test('an all-sliding model keeps its context: only its sliding pool must fit a binding', () => {
    const p = plan(mistral, { binding: 64 * MiB });
    expect(p.contextLength).toBe(32768);
    expect(p.note).toBeNull();
    // The full pool is logical only (block ids): over the binding, and never allocated.
    expect(p.kvBlocks * block).toBeGreaterThan(64 * MiB);
    // The default pool is one whole context as allocated (273 sliding blocks a layer, 1.1 GiB of
    // f32 K/V, over the 256 MiB default): not the three contexts' windows that one binding holds,
    // which a floor counted as if every layer kept every block would buy.
    expect([p.kvBlocks, p.slidingKvBlocks]).toEqual([2048, 273]);
    // A pool asked for (one context) is given as asked.
    const one = plan(mistral, { binding: 64 * MiB, kvTokens: 32768 });
    expect([one.contextLength, one.kvBlocks, one.slidingKvBlocks, one.note]).toEqual([
      32768,
      2048,
      273,
      null,
    ]);
    // ... and more than fits one binding is cut to what does.
    const many = plan(mistral, { binding: 64 * MiB, kvTokens: 10 * 32768 });
    expect([many.kvBlocks, many.slidingKvBlocks]).toEqual([3 * 2048, 3 * 273]);
  });

  test('layers that keep every block are still checked on the full pool, and so is the sliding pool', () => {
    // 'keep': every Mistral layer holds the whole pool, so 1024 blocks (16384 tokens) it is.
    const keep = plan(mistral, { binding: 64 * MiB, slidingKv: 'keep' });
    expect([keep.contextLength, keep.kvBlocks, keep.slidingKvBlocks]).toEqual([16384, 1024, 0]);
    expect(keep.note).toBe(
      "one layer's KV cache must fit one buffer binding (64.0 MiB), which holds 16384 tokens",
    );
    // Gemma-3-1B (4 global layers, f16: 8 KiB a block): an 8 MiB binding holds 1024 blocks.
    const mixed = plan(gemma, { binding: 8 * MiB, kv: 'f16' });
    expect([mixed.contextLength, mixed.kvBlocks]).toEqual([16384, 1024]);
    expect(mixed.slidingKvBlocks).toBeGreaterThan(0);
    expect(mixed.note).toBe(
      "one layer's KV cache must fit one buffer binding (8.00 MiB), which holds 16384 tokens",
    );
    // A 16 MiB binding (256 blocks) holds less than one Mistral sequence's sliding window (273):
    // the context is cut until a layer's buffer fits, here 4096 tokens (the window is no longer
    // shorter than the context, so every layer keeps its 256 blocks).
    const small = plan(mistral, { binding: 16 * MiB });
    expect([small.contextLength, small.kvBlocks, small.slidingKvBlocks]).toEqual([4096, 256, 0]);
    expect(small.note).toBe(
      "one layer's KV cache must fit one buffer binding (16.0 MiB), which holds 4096 tokens",
    );
  });

  test('a binding smaller than one block is refused, naming the limit and the need', () => {
    expect(() => plan(mistral, { binding: 32 * 1024 })).toThrow(DeviceMemoryError);
    expect(() => plan(mistral, { binding: 32 * 1024 })).toThrow(
      "one 16-token block of one layer's KV cache needs 64.0 KiB, over the largest buffer binding (32.0 KiB)",
    );
  });
});

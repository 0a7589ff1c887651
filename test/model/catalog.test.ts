import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { InvalidModelFileError } from '../../src/errors.js';
import {
  CATALOG,
  catalogAliasToHubId,
  catalogHubId,
  findCatalogEntry,
  isPinned,
  parseCatalog,
} from '../../src/model/catalog.js';
import { isCommitHash, parseHubId } from '../../src/io/hub-id.js';
import { repoRoot } from '../helpers/shared.js';
import { ARCHITECTURES } from '../../src/model/registry.js';
import { catalogMemory } from '../../bench/catalog-memory.js';

describe('model catalog', () => {
  it('has the expected models', () => {
    expect(CATALOG.map((e) => e.id)).toEqual([
      'HuggingFaceTB/SmolLM2-135M-Instruct',
      'HuggingFaceTB/SmolLM2-360M-Instruct',
      'Qwen/Qwen2.5-0.5B-Instruct',
      'TinyLlama/TinyLlama-1.1B-Chat-v1.0',
      'meta-llama/Llama-3.2-1B-Instruct',
      'meta-llama/Llama-3.2-3B-Instruct',
      'HuggingFaceTB/SmolLM2-1.7B-Instruct',
      'Qwen/Qwen2.5-1.5B-Instruct',
      'Qwen/Qwen3-0.6B',
      'Qwen/Qwen3-1.7B',
      'google/gemma-3-270m-it',
      'google/gemma-3-1b-it',
      'google/gemma-2-2b-it',
      'microsoft/Phi-3.5-mini-instruct',
      'microsoft/Phi-4-mini-instruct',
      'HuggingFaceTB/SmolLM3-3B',
    ]);
  });

  it.each(CATALOG.map((e) => [e.id, e] as const))('%s has valid, consistent fields', (_id, e) => {
    expect(parseHubId(catalogHubId(e))).toEqual({ repo: e.id, revision: e.revision });
    expect(e.revision === 'main' || isCommitHash(e.revision)).toBe(true);
    expect(ARCHITECTURES.map((x) => x.name)).toContain(e.architecture);
    expect(['f32', 'f16', 'bf16']).toContain(e.dtype);
    for (const n of [
      e.parameters,
      e.sizeBytes,
      e.contextLength,
      e.hiddenSize,
      e.numLayers,
      e.numHeads,
      e.numKvHeads,
    ]) {
      expect(Number.isSafeInteger(n) && n > 0).toBe(true);
    }
    expect(e.numHeads % e.numKvHeads).toBe(0);
    // The weights file holds every parameter at the dtype's width plus a small safetensors header.
    const width = e.dtype === 'f32' ? 4 : 2;
    expect(e.sizeBytes).toBeGreaterThanOrEqual(e.parameters * width);
    expect(e.sizeBytes - e.parameters * width).toBeLessThan(1_000_000);
    expect(e.contextLength).toBeGreaterThanOrEqual(2048);
    expect(typeof e.chatTemplate).toBe('boolean');
    expect(e.license.length).toBeGreaterThan(0);
    expect(e.notes.length).toBeGreaterThan(20);
    expect(e.aliases.length).toBeGreaterThan(0);
    for (const a of e.aliases) {
      expect(a).toMatch(/^[a-z0-9][a-z0-9.-]*$/);
      expect(findCatalogEntry(a)).toBe(e);
    }
    expect(findCatalogEntry(e.id)).toBe(e);
    expect(findCatalogEntry(e.id.toUpperCase())).toBe(e);
    expect(findCatalogEntry(`${e.id}@main`)).toBe(e);
  });

  it('marks the Llama 3.2 and Gemma models as gated and pins every model', () => {
    expect(CATALOG.filter((e) => e.gated).map((e) => e.id)).toEqual([
      'meta-llama/Llama-3.2-1B-Instruct',
      'meta-llama/Llama-3.2-3B-Instruct',
      'google/gemma-3-270m-it',
      'google/gemma-3-1b-it',
      'google/gemma-2-2b-it',
    ]);
    expect(CATALOG.every(isPinned)).toBe(true);
  });

  it('finds by short alias and returns undefined for unknown names', () => {
    expect(findCatalogEntry('smollm2-135m')?.id).toBe('HuggingFaceTB/SmolLM2-135M-Instruct');
    expect(findCatalogEntry(' SmolLM2-135M ')?.id).toBe('HuggingFaceTB/SmolLM2-135M-Instruct');
    expect(findCatalogEntry('qwen2.5-0.5b')?.architecture).toBe('qwen2');
    expect(findCatalogEntry('nope')).toBeUndefined();
    expect(findCatalogEntry('org/unknown')).toBeUndefined();
  });

  it('turns an alias into its pinned Hub id and leaves everything else alone', () => {
    const smol = findCatalogEntry('smollm2-135m')!;
    expect(catalogAliasToHubId('smollm2-135m')).toBe(`${smol.id}@${smol.revision}`);
    expect(catalogAliasToHubId('SmolLM2-135M')).toBe(catalogHubId(smol));
    // A Hub id, even of a catalog model, is taken as written (its revision is the caller's choice).
    expect(catalogAliasToHubId(smol.id)).toBe(smol.id);
    expect(catalogAliasToHubId('org/name@main')).toBe('org/name@main');
    expect(catalogAliasToHubId('nope')).toBe('nope');
    expect(catalogAliasToHubId('./smollm2-135m')).toBe('./smollm2-135m');
  });

  it('matches the JSON file on disk', async () => {
    const doc = JSON.parse(await readFile(join(repoRoot, 'models', 'catalog.json'), 'utf8')) as unknown;
    expect(parseCatalog(doc)).toEqual(CATALOG);
  });

  it('rejects malformed documents, naming the entry and field', () => {
    const good = JSON.parse(JSON.stringify({ models: CATALOG })) as { models: Record<string, unknown>[] };
    const bad = (patch: Record<string, unknown>) => ({ models: [{ ...good.models[0], ...patch }] });
    expect(() => parseCatalog({})).toThrow(InvalidModelFileError);
    expect(() => parseCatalog(bad({ architecture: 'gpt2' }))).toThrow(/entry 0 field "architecture"/);
    expect(() => parseCatalog(bad({ parameters: -1 }))).toThrow(/"parameters"/);
    expect(() => parseCatalog(bad({ gated: 'no' }))).toThrow(/"gated"/);
    expect(() => parseCatalog(bad({ id: 'not an id' }))).toThrow(/"id"/);
    expect(() => parseCatalog(bad({ aliases: ['Bad Alias'] }))).toThrow(/"aliases"/);
    expect(() => parseCatalog(bad({ numKvHeads: 4 }))).toThrow(/"numKvHeads"/);
    expect(() => parseCatalog({ models: [good.models[0], good.models[0]] })).toThrow(/reuses/);
  });
});

describe('catalog memory (bench/catalog-memory.ts, the figures README lists)', () => {
  it('estimates every catalog model as int4 through the engine estimate', () => {
    const rows = catalogMemory(4096);
    expect(rows.map((r) => r.id)).toEqual(CATALOG.map((e) => e.id));
    for (const r of rows) {
      expect('error' in r ? r.error : '').toBe('');
      if ('error' in r) continue;
      const e = findCatalogEntry(r.id) as (typeof CATALOG)[number];
      // int4 weights (about half a byte per parameter plus float embeddings) under the checkpoint.
      expect(r.weightsBytes).toBeLessThan(e.sizeBytes);
      expect(r.totalBytes).toBe(r.weightsBytes + r.kvBytes + r.activationBytes);
    }
  });

  it('the KV the engine plans with sliding layers released: Gemma-3-1B at 8k', () => {
    const row = catalogMemory(8192).find((r) => r.id === 'google/gemma-3-1b-it');
    if (!row || 'error' in row) throw new Error('no Gemma-3-1B row');
    // 26 layers, 1 KV head of 256, f16: a block of 16 tokens is 16 KiB (K + V) per layer. Every
    // layer keeping every block: 26 x 512 blocks. Released: the 4 global layers keep 512, the 22
    // sliding ones (window 512) share a pool of one sequence's floor((512 + 256 - 2) / 16) + 2 = 49.
    expect(row.kvBytes).toBe(26 * 512 * 16384);
    expect(row.kvReleasedBytes).toBe(4 * 512 * 16384 + 22 * 49 * 16384);
    expect(row.kvReleasedBytes).toBe(51_216_384);
    // Shorter than window + chunk: no sliding pool, nothing released.
    const short = catalogMemory(512).find((r) => r.id === 'google/gemma-3-1b-it');
    expect(short && !('error' in short) ? short.kvReleasedBytes : 'error').toBeUndefined();
  });
});

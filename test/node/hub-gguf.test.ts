/**
 * GGUF files from the Hub: `org/name:TAG` picks the repository's GGUF file that the tag names (as
 * Ollama and llama.cpp's -hf do), downloads only it (verified like every Hub file) into its own
 * cache folder, finds it there offline, and loads as a model: its tokenizer and, on the GPU, the
 * same logits as the folder it was written from. Served by the local Hub of test/helpers.
 */
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DownloadError } from '../../src/errors.js';
import { loadModelTokenizer } from '../../src/io/gguf-tokenizer.js';
import { ggufFilesForTag, parseGgufHubId } from '../../src/io/hub-id.js';
import { findCachedModel, pullModel } from '../../src/node/hub.js';
import { createEngine, openModelArg } from '../../src/node/index.js';
import { writeTestModel } from '../helpers/checkpoints.js';
import { splitGguf, writeGgufFromFolder } from '../helpers/gguf.js';
import { LocalHub } from '../helpers/local-hub.js';
import { repoRoot } from '../helpers/shared.js';

const vocab = readFileSync(resolve(repoRoot, '..', 'shared', 'gguf-vocab', 'ggml-vocab-llama-spm.gguf'));
let hub: LocalHub;
let cacheDir: string;
let folder: string;

beforeAll(async () => {
  cacheDir = await mkdtemp(join(tmpdir(), 'kiln-hub-gguf-'));
  folder = join(cacheDir, 'src-model');
  writeTestModel(folder, {});
  const modelPath = await writeGgufFromFolder(folder);
  const model = readFileSync(modelPath);
  const shards = (await splitGguf(modelPath, 2)).map((p) => readFileSync(p));
  hub = new LocalHub();
  hub.repos.set('org/vocab-GGUF', {
    files: new Map([
      ['README.md', { data: Buffer.from('# gguf\n'), lfs: false }],
      ['llama-spm.Q4_K_M.gguf', { data: vocab, lfs: true }],
      ['llama-spm.Q4_K_S.gguf', { data: Buffer.from('not this one'), lfs: true }],
      ['llama-spm-Q8_0.gguf', { data: Buffer.from('nor this'), lfs: true }],
      ['llama-spm-Q8_0-00001-of-00002.gguf', { data: Buffer.from('split'), lfs: true }],
    ]),
  });
  hub.repos.set('org/tiny-GGUF', {
    files: new Map([
      ['tiny-F32.gguf', { data: model, lfs: true }],
      ['tiny-f32-copy.F32.gguf', { data: model, lfs: true }],
    ]),
  });
  hub.repos.set('org/split-GGUF', {
    files: new Map([
      ['tiny-F32-00001-of-00002.gguf', { data: shards[0]!, lfs: true }],
      ['tiny-F32-00002-of-00002.gguf', { data: shards[1]!, lfs: true }],
      ['tiny-Q8_0-00001-of-00002.gguf', { data: shards[0]!, lfs: true }],
    ]),
  });
  await hub.start();
});
afterAll(async () => {
  await hub.stop();
  await rm(cacheDir, { recursive: true, force: true });
});

describe('GGUF Hub ids', () => {
  it('parses org/name[@rev]:TAG and picks files by whole tag', () => {
    expect(parseGgufHubId('org/name:Q4_K_M')).toEqual({ repo: 'org/name', revision: 'main', tag: 'Q4_K_M' });
    expect(parseGgufHubId('org/name@v1.0:q8_0')).toEqual({ repo: 'org/name', revision: 'v1.0', tag: 'q8_0' });
    expect(parseGgufHubId('org/name')).toBeNull();
    expect(parseGgufHubId('org/name:')).toBeNull();
    expect(parseGgufHubId('org/name:../x')).toBeNull();
    expect(parseGgufHubId('/abs/path:Q4')).toBeNull();
    const names = [
      'a-Q4_K_M.gguf',
      'a.Q4_K_S.gguf',
      'a-q4_k.gguf',
      'sub/a-Q4_K_M.gguf',
      'b-Q5_K_M-00001-of-00002.gguf',
      'b-Q5_K_M-00002-of-00002.gguf',
    ];
    expect(ggufFilesForTag(names, 'q4_k_m')).toEqual(['a-Q4_K_M.gguf']);
    // A split model is named by its first shard.
    expect(ggufFilesForTag(names, 'Q5_K_M')).toEqual(['b-Q5_K_M-00001-of-00002.gguf']);
    expect(ggufFilesForTag(names, 'Q4_K')).toEqual(['a-q4_k.gguf']);
    expect(ggufFilesForTag(names, 'Q2_K')).toEqual([]);
  });

  it('downloads only the tagged file, finds it offline, and loads its tokenizer', async () => {
    const opts = { endpoint: hub.url, cacheDir };
    expect(await findCachedModel('org/vocab-GGUF:Q4_K_M', { cacheDir })).toBeNull();
    const path = await pullModel('org/vocab-GGUF:q4_k_m', opts);
    expect(path.endsWith('llama-spm.Q4_K_M.gguf')).toBe(true);
    expect(readFileSync(path)).toEqual(vocab);
    expect(hub.fileRequests().map((r) => r.path.split('/').pop())).toEqual(['llama-spm.Q4_K_M.gguf']);
    expect(await findCachedModel('org/vocab-GGUF:Q4_K_M', { cacheDir })).toBe(path);
    await hub.stop();
    try {
      // Offline: the id resolves from the cache alone.
      const tok = await loadModelTokenizer(await openModelArg('org/vocab-GGUF:Q4_K_M', opts));
      expect(tok.encode('Hello world')).toEqual([1, 15043, 3186]);
    } finally {
      await hub.start();
    }
  });

  it('a tag that names no file, or several, is one clear error', async () => {
    const opts = { endpoint: hub.url, cacheDir };
    await expect(pullModel('org/vocab-GGUF:Q2_K', opts)).rejects.toThrow(DownloadError);
    await expect(pullModel('org/vocab-GGUF:Q2_K', opts)).rejects.toThrow(
      /org\/vocab-GGUF@main has no GGUF file tagged Q2_K \(its GGUF files: llama-spm\.Q4_K_M\.gguf, /,
    );
    await expect(pullModel('org/tiny-GGUF:F32', opts)).rejects.toThrow(
      /the tag F32 names several GGUF files \(tiny-F32\.gguf, tiny-f32-copy\.F32\.gguf\)/,
    );
  });

  it('a Hub GGUF id runs: the same logits as the folder the file was written from', async () => {
    hub.repos.get('org/tiny-GGUF')!.files.delete('tiny-f32-copy.F32.gguf');
    const prompt = [1, 12, 40, 7, 99];
    const a = await createEngine({ model: folder });
    const b = await createEngine({ model: 'org/tiny-GGUF:F32', pull: { endpoint: hub.url, cacheDir } });
    try {
      expect(await b.logits(prompt)).toEqual(await a.logits(prompt));
    } finally {
      a.dispose();
      b.dispose();
    }
  }, 120_000);

  it('a split model downloads every shard and runs from its first', async () => {
    const opts = { endpoint: hub.url, cacheDir };
    const before = hub.fileRequests().length;
    const path = await pullModel('org/split-GGUF:F32', opts);
    expect(path.endsWith('tiny-F32-00001-of-00002.gguf')).toBe(true);
    expect(
      hub
        .fileRequests()
        .slice(before)
        .map((r) => r.path.split('/').pop()),
    ).toEqual(['tiny-F32-00001-of-00002.gguf', 'tiny-F32-00002-of-00002.gguf']);
    await expect(pullModel('org/split-GGUF:Q8_0', opts)).rejects.toThrow(
      /the split GGUF model tiny-Q8_0-00001-of-00002.gguf lacks shard tiny-Q8_0-00002-of-00002.gguf/,
    );
    const prompt = [1, 12, 40, 7, 99];
    const a = await createEngine({ model: folder });
    const b = await createEngine({ model: 'org/split-GGUF:F32', pull: opts });
    try {
      expect(await b.logits(prompt)).toEqual(await a.logits(prompt));
    } finally {
      a.dispose();
      b.dispose();
    }
  }, 120_000);
});

/**
 * Split GGUF models (llama.cpp's gguf-split layout, test/helpers/gguf.ts `splitGguf`) opened from
 * their first shard: from disk and over HTTP Range requests, the same spec, tokenizer and tensor
 * bytes as the unsplit file, and on the GPU the same logits; hostile split metadata (a later shard
 * opened, a shard missing or mislabelled, a tensor twice, a wrong tensor count, a first shard not
 * named as one) ends in one InvalidModelFileError naming the file and the key.
 */
import { mkdtempSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { InvalidModelFileError } from '../../src/errors.js';
import { ggufModelDir } from '../../src/io/gguf-model-dir.js';
import { isLaterGgufShard } from '../../src/io/gguf-split.js';
import { loadModelTokenizer } from '../../src/io/gguf-tokenizer.js';
import { httpModelDir } from '../../src/io/http-model-dir.js';
import type { ModelDir } from '../../src/io/byte-source.js';
import { expectedTensors } from '../../src/model/tensors.js';
import { createEngine, openLocalModelDir } from '../../src/node/index.js';
import { openModelFiles } from '../../src/weights/model-files.js';
import { writeTestModel } from '../helpers/checkpoints.js';
import { splitGguf, writeGgufFromFolder } from '../helpers/gguf.js';

const root = mkdtempSync(join(tmpdir(), 'kiln-gguf-split-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

let n = 0;
/** A model's unsplit GGUF file and its split into `count` shards, in their own folder. */
async function model(count: number, o: Parameters<typeof splitGguf>[2] = {}) {
  const folder = join(root, `m${n++}`);
  writeTestModel(folder, { seed: 90 + n, kvHeads: 2 });
  const whole = await writeGgufFromFolder(folder, 'model.gguf');
  const shards = await splitGguf(whole, count, o);
  return { folder, whole, shards };
}

const ggufDir = (path: string): ModelDir => ggufModelDir(openLocalModelDir(dirname(path)), basename(path));

/** The model files of `dir` against those of the unsplit file: spec, tokenizer, every tensor. */
async function expectSameModel(split: ModelDir, whole: ModelDir) {
  const [a, b] = [await openModelFiles(whole), await openModelFiles(split)];
  expect(b.spec).toEqual(a.spec);
  expect((await loadModelTokenizer(split)).encode('Once upon a time')).toEqual(
    (await loadModelTokenizer(whole)).encode('Once upon a time'),
  );
  const [x, y] = [await a.openCheckpoint(), await b.openCheckpoint()];
  try {
    for (const name of expectedTensors(a.spec).keys()) {
      expect(await y.readTensor(y.get(name))).toEqual(await x.readTensor(x.get(name)));
    }
  } finally {
    await x.close();
    await y.close();
  }
}

/** A static file server with Range support over `folder`. */
async function serve(folder: string): Promise<{ server: Server; url: string }> {
  const server = createServer((req, res) => {
    const path = join(folder, decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname).slice(1));
    if (!statSync(path, { throwIfNoEntry: false })?.isFile()) return void res.writeHead(404).end();
    const body = readFileSync(path);
    const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
    if (!m)
      return void res
        .writeHead(200, { 'Content-Length': body.length })
        .end(req.method === 'HEAD' ? undefined : body);
    const [start, end] = [Number(m[1]), Math.min(Number(m[2]), body.length - 1)];
    res.writeHead(206, {
      'Content-Length': end - start + 1,
      'Content-Range': `bytes ${start}-${end}/${body.length}`,
    });
    res.end(req.method === 'HEAD' ? undefined : body.subarray(start, end + 1));
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

describe('split GGUF models', () => {
  it('open from the first shard on disk and over HTTP as the unsplit file', async () => {
    const { folder, whole, shards } = await model(3);
    expect(shards.map((s) => basename(s))).toEqual([
      'model-00001-of-00003.gguf',
      'model-00002-of-00003.gguf',
      'model-00003-of-00003.gguf',
    ]);
    // A picked folder (the browser app) opens the one GGUF file that is not a later shard.
    expect(shards.map((s) => isLaterGgufShard(basename(s)))).toEqual([false, true, true]);
    await expectSameModel(ggufDir(shards[0] as string), ggufDir(whole));
    const { server, url } = await serve(folder);
    try {
      await expectSameModel(ggufModelDir(httpModelDir(url), basename(shards[0] as string)), ggufDir(whole));
    } finally {
      await new Promise<void>((ok) => server.close(() => ok()));
    }
  });

  it('runs on the GPU with the logits of the unsplit file', async () => {
    const { whole, shards } = await model(2);
    const prompt = [1, 12, 40, 7, 99, 3, 57];
    const a = await createEngine({ model: whole });
    const b = await createEngine({ model: shards[0] as string });
    try {
      expect(await b.logits(prompt)).toEqual(await a.logits(prompt));
    } finally {
      a.dispose();
      b.dispose();
    }
  }, 120_000);

  it('refuses hostile split metadata in one clear error naming the file and key', async () => {
    const fails = async (path: string, re: RegExp) => {
      const err = await openModelFiles(ggufDir(path)).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(InvalidModelFileError);
      expect((err as Error).message).toMatch(re);
    };
    let m = await model(3);
    await fails(
      m.shards[1] as string,
      /model-00002-of-00003.gguf is shard 2 of 3 .*open the first, model-00001-of-00003.gguf/,
    );
    rmSync(m.shards[2] as string);
    await fails(
      m.shards[0] as string,
      /shard model-00003-of-00003.gguf \(3 of 3, as split.count says\) is missing/,
    );
    m = await model(3, { meta: (no) => (no === 2 ? { 'split.no': { type: 'u16', value: 1 } } : {}) });
    await fails(
      m.shards[0] as string,
      /model-00003-of-00003.gguf: metadata split.no \/ split.count are 1 \/ 3, expected 2 \/ 3/,
    );
    m = await model(2, { meta: (no) => (no === 1 ? { 'split.count': undefined } : {}) });
    await fails(m.shards[0] as string, /split.no \/ split.count are missing, expected 1 \/ 2/);
    m = await model(2, { meta: () => ({ 'split.tensors.count': { type: 'i32', value: 7 } }) });
    await fails(
      m.shards[0] as string,
      /metadata split.tensors.count is 7, but the 2 shards hold \d+ tensors/,
    );
    m = await model(2, { duplicate: ['token_embd.weight'] });
    await fails(
      m.shards[0] as string,
      /model-00002-of-00002.gguf: tensor "token_embd.weight" is also in model-00001-of-00002.gguf/,
    );
    m = await model(2, { meta: (no) => (no === 0 ? { 'split.count': { type: 'u16', value: 0 } } : {}) });
    await fails(m.shards[0] as string, /metadata split.count is 0/);
    m = await model(2);
    const renamed = join(dirname(m.shards[0] as string), 'first.gguf');
    renameSync(m.shards[0] as string, renamed);
    await fails(renamed, /first.gguf: metadata split.count is 2, but the name is not the first shard's/);
  }, 60_000);
});

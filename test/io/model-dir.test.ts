import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DownloadError, InvalidModelFileError } from '../../src/errors.js';
import { MAX_TEXT_FILE_BYTES, type ModelDir } from '../../src/io/byte-source.js';
import { loadModelSpec } from '../../src/model/config.js';
import { httpModelDir, MAX_RANGELESS_READ_BYTES } from '../../src/io/http-model-dir.js';
import { openCheckpoint } from '../../src/io/safetensors-checkpoint.js';
import { encodeSafetensors, encodeSafetensorsIndex } from '../../src/io/safetensors-writer.js';
import { openLocalModelDir } from '../../src/node/fs-model-dir.js';

const root = mkdtempSync(join(tmpdir(), 'kiln-model-dir-'));
const modelPath = join(root, 'model');
const data = Uint8Array.from({ length: 1000 }, (_, i) => (i * 37 + 11) & 0xff);
const w1 = { name: 'a.weight', dtype: 'F32' as const, shape: [10, 5], data: data.subarray(0, 200) };
const w2 = { name: 'b.weight', dtype: 'U8' as const, shape: [3], data: data.subarray(200, 203) };
const config = {
  architectures: ['LlamaForCausalLM'],
  hidden_size: 64,
  intermediate_size: 128,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  rms_norm_eps: 1e-5,
  max_position_embeddings: 256,
  vocab_size: 100,
  eos_token_id: 2,
};

beforeAll(() => {
  mkdirSync(modelPath);
  writeFileSync(join(modelPath, 'blob.bin'), data);
  writeFileSync(join(modelPath, 'notes with space.txt'), 'héllo');
  writeFileSync(join(modelPath, 'config.json'), JSON.stringify(config));
  writeFileSync(join(modelPath, 'generation_config.json'), JSON.stringify({ eos_token_id: [2, 3] }));
  writeFileSync(join(modelPath, 'model-00001-of-00002.safetensors'), encodeSafetensors([w1]));
  writeFileSync(join(modelPath, 'model-00002-of-00002.safetensors'), encodeSafetensors([w2]));
  writeFileSync(
    join(modelPath, 'model.safetensors.index.json'),
    encodeSafetensorsIndex(
      { [w1.name]: 'model-00001-of-00002.safetensors', [w2.name]: 'model-00002-of-00002.safetensors' },
      203,
    ),
  );
  mkdirSync(join(modelPath, 'sub'));
  writeFileSync(join(modelPath, 'sub', 'inner.txt'), 'inner');
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('openLocalModelDir', () => {
  it('fails at once, naming the path, when the folder does not exist or is a file', () => {
    const missing = join(root, 'nope');
    expect(() => openLocalModelDir(missing)).toThrow(`model folder ${missing} does not exist`);
    expect(() => openLocalModelDir(join(modelPath, 'blob.bin'))).toThrow(/is not a folder/);
  });

  it('checks existence, reads text and random-access bytes', async () => {
    const dir = openLocalModelDir(modelPath);
    expect(dir.location).toBe(modelPath);
    expect(await dir.exists('blob.bin')).toBe(true);
    expect(await dir.exists('missing.bin')).toBe(false);
    expect(await dir.exists('sub')).toBe(false);
    expect(await dir.readText('sub/inner.txt')).toBe('inner');
    expect(await dir.readText('notes with space.txt')).toBe('héllo');
    const src = await dir.open('blob.bin');
    try {
      expect(src.size).toBe(1000);
      expect(src.name).toMatch(/blob\.bin$/);
      expect(await src.read(13, 100)).toEqual(data.subarray(13, 113));
      expect(await src.read(1000, 0)).toEqual(new Uint8Array(0));
      await expect(src.read(990, 11)).rejects.toThrow(
        /blob\.bin is truncated: wanted bytes 990\.\.1001 but the file is 1000 bytes/,
      );
      await expect(src.read(-1, 1)).rejects.toThrow(/invalid read/);
    } finally {
      await src.close();
      await src.close();
    }
  });

  it('reports a file that shrank after open as truncated', async () => {
    const path = join(root, 'shrink');
    mkdirSync(path);
    writeFileSync(join(path, 'f.bin'), data);
    const src = await openLocalModelDir(path).open('f.bin');
    truncateSync(join(path, 'f.bin'), 500);
    await expect(src.read(400, 200)).rejects.toThrow(/f\.bin is truncated: got 100 of 200 bytes/);
    await src.close();
  });

  it('names the file it cannot read and refuses names outside the folder', async () => {
    const dir = openLocalModelDir(modelPath);
    await expect(dir.readText('missing.json')).rejects.toThrow(`cannot read missing.json in ${modelPath}`);
    await expect(dir.open('missing.bin')).rejects.toThrow(InvalidModelFileError);
    await expect(dir.open('../blob.bin')).rejects.toThrow(/points outside the model folder/);
    await expect(dir.exists('/etc/passwd')).rejects.toThrow(/points outside the model folder/);
  });
});

/** A body of `chunks` chunks of `size` bytes, counting what was pulled and whether it was cancelled. */
function countedBody(chunks: number, size: number) {
  const seen = { pulled: 0, cancelled: false };
  const chunk = new Uint8Array(size).fill(0x20);
  const stream = new ReadableStream<Uint8Array>({
    pull(c) {
      if (seen.pulled === chunks) return c.close();
      seen.pulled++;
      c.enqueue(chunk);
    },
    cancel() {
      seen.cancelled = true;
    },
  });
  return { stream, seen };
}

describe('text file size cap', () => {
  it('refuses a local text file over the cap without reading it', async () => {
    const path = join(root, 'big');
    mkdirSync(path);
    // Sparse: no 64 MiB is written.
    writeFileSync(join(path, 'tokenizer.json'), '');
    truncateSync(join(path, 'tokenizer.json'), MAX_TEXT_FILE_BYTES + 1);
    const err = await openLocalModelDir(path)
      .readText('tokenizer.json')
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidModelFileError);
    expect((err as Error).message).toBe(
      `tokenizer.json in ${path} is 67108865 bytes, over the 67108864-byte limit for text files`,
    );
  });

  it('refuses an HTTP text file whose Content-Length is over the cap before reading it', async () => {
    const { stream, seen } = countedBody(1, 10);
    const fetchFn = async () =>
      new Response(stream, { status: 200, headers: { 'content-length': String(MAX_TEXT_FILE_BYTES + 1) } });
    const err = await httpModelDir('http://h/m', { fetch: fetchFn })
      .readText('tokenizer.json')
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidModelFileError);
    expect((err as Error).message).toBe(
      'tokenizer.json in http://h/m is 67108865 bytes, over the 67108864-byte limit for text files',
    );
    expect(seen.pulled).toBeLessThanOrEqual(1);
  });

  it('stops reading an HTTP text file without Content-Length once it passes the cap', async () => {
    const mib = 2 ** 20;
    const { stream, seen } = countedBody(100, mib);
    const fetchFn = async () => new Response(stream, { status: 200 });
    const err = await httpModelDir('http://h/m', { fetch: fetchFn })
      .readText('config.json')
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidModelFileError);
    expect((err as Error).message).toMatch(
      /^config\.json in http:\/\/h\/m is more than 67108864 bytes, over the 67108864-byte limit/,
    );
    expect(seen.cancelled).toBe(true);
    // Pulls run at most a chunk or two ahead of the reader.
    expect(seen.pulled).toBeLessThan(MAX_TEXT_FILE_BYTES / mib + 4);
  });
});

describe('httpModelDir byte reads', () => {
  it('stops reading a range body that runs past the requested length', async () => {
    const { stream, seen } = countedBody(50, 64);
    const fetchFn = async (_url: string | URL | Request, init?: RequestInit) =>
      init?.method === 'HEAD'
        ? new Response(null, { status: 200, headers: { 'content-length': '100000' } })
        : new Response(stream, { status: 206 });
    const src = await httpModelDir('http://h/m', { fetch: fetchFn as typeof fetch }).open('w.bin');
    const err = await src.read(0, 100).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DownloadError);
    expect((err as Error).message).toBe(
      'GET http://h/m/w.bin bytes 0-99 returned more than the 100 bytes asked for',
    );
    expect(seen.cancelled).toBe(true);
    expect(seen.pulled).toBeLessThan(10);
  });
});

interface ServerOptions {
  head?: boolean;
  ranges?: boolean;
  shortBody?: boolean;
  exposeContentRange?: boolean;
}

/** A real static file server over the model folder; options switch off features servers may lack. */
function startServer(
  options: ServerOptions,
  seen: IncomingMessage[],
): Promise<{ server: Server; url: string }> {
  const { head = true, ranges = true, shortBody = false, exposeContentRange = true } = options;
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    seen.push(req);
    const rel = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname).replace(/^\/files\//, '');
    const path = join(modelPath, rel);
    if (!rel || rel.includes('..') || !statSync(path, { throwIfNoEntry: false })?.isFile()) {
      res.writeHead(404).end();
      return;
    }
    if (req.method === 'HEAD' && !head) {
      res.writeHead(405).end();
      return;
    }
    const body = readFileSync(path);
    const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
    if (ranges && m) {
      const start = Number(m[1]);
      const end = Math.min(Number(m[2]), body.length - 1);
      if (start >= body.length) {
        res.writeHead(416, { 'Content-Range': `bytes */${body.length}` }).end();
        return;
      }
      let part = body.subarray(start, end + 1);
      if (shortBody) part = part.subarray(0, Math.max(0, part.length - 1));
      const headers: Record<string, string | number> = { 'Content-Length': part.length };
      if (exposeContentRange) headers['Content-Range'] = `bytes ${start}-${end}/${body.length}`;
      res.writeHead(206, headers);
      res.end(req.method === 'HEAD' ? undefined : part);
      return;
    }
    res.writeHead(200, { 'Content-Length': body.length });
    res.end(req.method === 'HEAD' ? undefined : body);
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo;
      resolve({ server, url: `http://127.0.0.1:${port}/files` });
    });
  });
}

function withServer(options: ServerOptions, body: (dir: ModelDir, seen: IncomingMessage[]) => Promise<void>) {
  return async () => {
    const seen: IncomingMessage[] = [];
    const { server, url } = await startServer(options, seen);
    try {
      await body(httpModelDir(url, { headers: { Authorization: 'Bearer t0k' } }), seen);
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  };
}

describe('httpModelDir against a real HTTP server', () => {
  it(
    'checks existence, reads text and exact byte ranges, and sends the given headers',
    withServer({}, async (dir, seen) => {
      expect(await dir.exists('blob.bin')).toBe(true);
      expect(await dir.exists('missing.bin')).toBe(false);
      expect(await dir.readText('notes with space.txt')).toBe('héllo');
      expect(await dir.readText('sub/inner.txt')).toBe('inner');
      const src = await dir.open('blob.bin');
      expect(src.size).toBe(1000);
      expect(await src.read(0, 1)).toEqual(data.subarray(0, 1));
      expect(await src.read(123, 456)).toEqual(data.subarray(123, 579));
      expect(await src.read(999, 1)).toEqual(data.subarray(999));
      expect(await src.read(500, 0)).toEqual(new Uint8Array(0));
      await expect(src.read(900, 101)).rejects.toThrow(
        /is truncated: wanted bytes 900\.\.1001 but the file is 1000 bytes/,
      );
      await src.close();
      expect(seen.some((r) => r.headers.range === 'bytes=123-578')).toBe(true);
      expect(seen.every((r) => r.headers.authorization === 'Bearer t0k')).toBe(true);
      expect(seen.some((r) => r.url === '/files/notes%20with%20space.txt')).toBe(true);
      await expect(dir.readText('missing.json')).rejects.toThrow(
        /GET http:\/\/127\.0\.0\.1:\d+\/files\/missing\.json answered 404/,
      );
      await expect(dir.exists('../secret')).rejects.toThrow(/is not a plain path/);
    }),
  );

  it(
    'opens a sharded checkpoint and a config over HTTP',
    withServer({}, async (dir) => {
      const ckpt = await openCheckpoint(dir);
      try {
        expect(await ckpt.readTensor(ckpt.get('a.weight'))).toEqual(w1.data);
        expect(await ckpt.readTensor(ckpt.get('b.weight'))).toEqual(w2.data);
        const parts: Uint8Array[] = [];
        for await (const { bytes } of ckpt.readTensorChunks(ckpt.get('a.weight'), 64)) parts.push(bytes);
        expect(parts.map((p) => p.byteLength)).toEqual([64, 64, 64, 8]);
        expect(Uint8Array.from(parts.flatMap((p) => [...p]))).toEqual(w1.data);
      } finally {
        await ckpt.close();
      }
      const spec = await loadModelSpec(dir);
      expect([spec.numKvHeads, spec.eosTokenIds]).toEqual([2, [2, 3]]);
    }),
  );

  it(
    'falls back to a one-byte Range GET when HEAD is refused',
    withServer({ head: false }, async (dir) => {
      expect(await dir.exists('blob.bin')).toBe(true);
      expect(await dir.exists('missing.bin')).toBe(false);
      const src = await dir.open('blob.bin');
      expect(src.size).toBe(1000);
      expect(await src.read(10, 5)).toEqual(data.subarray(10, 15));
    }),
  );

  it(
    'works when Content-Range is not exposed, relying on the body length',
    withServer({ exposeContentRange: false }, async (dir) => {
      const src = await dir.open('blob.bin');
      expect(await src.read(7, 9)).toEqual(data.subarray(7, 16));
    }),
  );

  it(
    'reads near the start of a file from a server that ignores Range requests (headers), and says why it stops further in',
    withServer({ ranges: false }, async (dir) => {
      const src = await dir.open('blob.bin'); // HEAD still gives the size
      expect(await src.read(0, 1000)).toEqual(data); // a whole-file 200 is the exact answer
      expect(await src.read(10, 5)).toEqual(data.subarray(10, 15));
      expect(await src.read(990, 10)).toEqual(data.subarray(990));
      // A safetensors header read this way, as the app's fit check does before caching the file.
      const ckpt = await openCheckpoint(dir);
      expect(await ckpt.readTensor(ckpt.get('b.weight'))).toEqual(w2.data);
      await ckpt.close();
      const big = await dir.open('blob.bin');
      Object.defineProperty(big, 'size', { value: MAX_RANGELESS_READ_BYTES + 10 });
      const err = await big.read(MAX_RANGELESS_READ_BYTES, 5).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(DownloadError);
      expect((err as Error).message).toMatch(
        /answered 200 OK: the server ignores Range requests, and reading this far/,
      );
    }),
  );

  it(
    'refuses to open without HEAD or Range support, and reports short bodies',
    withServer({ head: false, ranges: false }, async (dir) => {
      await expect(dir.open('blob.bin')).rejects.toThrow(/must support Range requests/);
    }),
  );

  it(
    'reports a truncated body',
    withServer({ shortBody: true }, async (dir) => {
      const src = await dir.open('blob.bin');
      await expect(src.read(100, 50)).rejects.toThrow(/returned 49 bytes, expected 50 \(truncated\)/);
    }),
  );

  it('wraps network failures in DownloadError naming the URL', async () => {
    // A port that was just free: the connection is refused for real.
    const { server, url } = await startServer({}, []);
    await new Promise<void>((resolve) => server.close(() => resolve()));
    const err = await httpModelDir(url)
      .exists('config.json')
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DownloadError);
    expect((err as Error).message).toContain(`HEAD ${url}/config.json failed:`);
  });
});

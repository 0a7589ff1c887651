import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DownloadError, KilnError } from '../../src/errors.js';
import { MAX_TEXT_FILE_BYTES } from '../../src/io/byte-source.js';
import { findCachedModel, pullModel, resolveModel } from '../../src/node/hub.js';
import { COMPLETE_MARKER, kilnCacheDir } from '../../src/node/hub-cache.js';
import type { PullProgress } from '../../src/node/hub-client.js';
import { MAX_WEIGHTS_FILE_BYTES, maxDownloadBytes } from '../../src/node/hub-download.js';
import { DEFAULT_COMMIT as COMMIT, LocalHub, type Repo, type RepoFile } from '../helpers/local-hub.js';

// The fake Hub (LocalHub) serves these repos on 127.0.0.1 with the real URL layout.

function json(v: unknown): RepoFile {
  return { data: Buffer.from(JSON.stringify(v)), lfs: false };
}

function standardRepo(weights = randomBytes(300_000)): Repo {
  return {
    files: new Map<string, RepoFile>([
      ['.gitattributes', { data: Buffer.from('*.safetensors filter=lfs\n'), lfs: false }],
      ['README.md', { data: Buffer.from('# test model\n'), lfs: false }],
      ['config.json', json({ architectures: ['LlamaForCausalLM'], hidden_size: 8 })],
      ['generation_config.json', json({ eos_token_id: 2 })],
      ['tokenizer.json', json({ model: { type: 'BPE', vocab: {} } })],
      ['tokenizer_config.json', json({ chat_template: '{{ messages }}' })],
      ['model.safetensors', { data: weights, lfs: true }],
    ]),
  };
}

let hub: LocalHub;
let cacheDir: string;
let savedEnv: Record<string, string | undefined>;
const ENV_KEYS = ['HF_TOKEN', 'HF_ENDPOINT', 'XDG_CACHE_HOME'];

beforeEach(async () => {
  savedEnv = Object.fromEntries(ENV_KEYS.map((k) => [k, process.env[k]]));
  for (const k of ENV_KEYS) delete process.env[k];
  hub = new LocalHub();
  hub.repos.set('org/name', standardRepo());
  await hub.start();
  cacheDir = await mkdtemp(join(tmpdir(), 'kiln-hub-test-'));
});

afterEach(async () => {
  await hub.stop();
  await rm(cacheDir, { recursive: true, force: true });
  for (const [k, v] of Object.entries(savedEnv)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
});

function modelDir(commit = COMMIT): string {
  return join(cacheDir, 'models', 'org', 'name', commit);
}

async function expectRejects(
  p: Promise<unknown>,
  type: typeof KilnError,
  ...patterns: RegExp[]
): Promise<Error> {
  const e = await p.then(
    () => null,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(type);
  for (const re of patterns) expect((e as Error).message).toMatch(re);
  return e as Error;
}

describe('pullModel', () => {
  it('downloads the files a Kiln model needs, verified, with progress', async () => {
    const events: PullProgress[] = [];
    const dir = await pullModel('org/name', {
      endpoint: hub.url,
      cacheDir,
      onProgress: (p) => events.push(p),
    });
    expect(dir).toBe(modelDir());
    const repo = hub.repos.get('org/name')!;
    for (const f of ['config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json']) {
      expect(await readFile(join(dir, f))).toEqual(repo.files.get(f)!.data);
    }
    expect(
      (await readFile(join(dir, 'model.safetensors'))).equals(repo.files.get('model.safetensors')!.data),
    ).toBe(true);
    // Files Kiln does not read are not fetched.
    expect(existsSync(join(dir, 'README.md'))).toBe(false);
    expect(hub.fileRequests('README.md')).toHaveLength(0);
    expect(existsSync(join(dir, 'model.safetensors.part'))).toBe(false);

    const marker = JSON.parse(await readFile(join(dir, COMPLETE_MARKER), 'utf8')) as {
      repo: string;
      revision: string;
      commit: string;
      files: { name: string; size: number; sha256?: string }[];
    };
    expect(marker).toMatchObject({ repo: 'org/name', revision: 'main', commit: COMMIT });
    expect(marker.files.map((f) => f.name).sort()).toEqual(
      [
        'config.json',
        'generation_config.json',
        'model.safetensors',
        'tokenizer.json',
        'tokenizer_config.json',
      ].sort(),
    );
    expect(marker.files.find((f) => f.name === 'model.safetensors')?.sha256).toMatch(/^[0-9a-f]{64}$/);

    const total = [...repo.files]
      .filter(([n]) => n !== 'README.md' && n !== '.gitattributes')
      .reduce((s, [, f]) => s + f.data.length, 0);
    expect(events.length).toBeGreaterThan(5);
    expect(events.every((e) => e.total === total && e.bytes <= total && e.fileBytes <= e.fileTotal)).toBe(
      true,
    );
    expect(events.at(-1)).toMatchObject({ file: 'model.safetensors', bytes: total, fileBytes: 300_000 });
    // bytes never goes backwards
    for (let i = 1; i < events.length; i++)
      expect(events[i]!.bytes).toBeGreaterThanOrEqual(events[i - 1]!.bytes);
    expect(await findCachedModel('org/name', { cacheDir })).toBe(dir);
  });

  it('downloads nothing on a second pull', async () => {
    await pullModel('org/name', { endpoint: hub.url, cacheDir });
    const before = hub.log.length;
    const events: PullProgress[] = [];
    const dir = await pullModel('org/name', {
      endpoint: hub.url,
      cacheDir,
      onProgress: (p) => events.push(p),
    });
    const second = hub.log.slice(before);
    expect(second.map((l) => l.path)).toEqual(['/api/models/org/name/revision/main?blobs=true']);
    expect(dir).toBe(modelDir());
    expect(events.at(-1)?.bytes).toBe(events.at(-1)?.total);
  });

  it('re-hashes an LFS file it has no record of instead of downloading it again', async () => {
    const dir = await pullModel('org/name', { endpoint: hub.url, cacheDir });
    await rm(join(dir, '.kiln-verified.json'));
    const before = hub.log.length;
    await pullModel('org/name', { endpoint: hub.url, cacheDir });
    expect(hub.fileRequests().length).toBe(
      hub.log.slice(0, before).filter((l) => l.path.includes('/resolve/')).length,
    );
  });

  it('resumes an interrupted download with a Range request', async () => {
    hub.cutOnce.add('model.safetensors');
    const dir = await pullModel('org/name', { endpoint: hub.url, cacheDir });
    const reqs = hub.fileRequests('model.safetensors');
    expect(reqs).toHaveLength(2);
    expect(reqs[0]!.headers.range).toBeUndefined();
    const from = Number(/^bytes=(\d+)-$/.exec(reqs[1]!.headers.range ?? '')?.[1]);
    expect(from).toBeGreaterThan(0);
    expect(from).toBeLessThanOrEqual(150_000);
    expect(
      (await readFile(join(dir, 'model.safetensors'))).equals(
        hub.repos.get('org/name')!.files.get('model.safetensors')!.data,
      ),
    ).toBe(true);
  });

  it('keeps the part of a failed download and resumes it on the next pull', async () => {
    hub.cutOnce.add('model.safetensors');
    await expectRejects(
      pullModel('org/name', { endpoint: hub.url, cacheDir, retries: 0 }),
      DownloadError,
      /model\.safetensors/,
      /interrupted/,
      /resume/,
    );
    const dir = modelDir();
    const partSize = (await stat(join(dir, 'model.safetensors.part'))).size;
    expect(partSize).toBeGreaterThan(0);
    expect(partSize).toBeLessThanOrEqual(150_000);
    expect(existsSync(join(dir, 'model.safetensors'))).toBe(false);
    expect(existsSync(join(dir, COMPLETE_MARKER))).toBe(false);
    expect(await findCachedModel('org/name', { cacheDir })).toBeNull();

    await pullModel('org/name', { endpoint: hub.url, cacheDir });
    const reqs = hub.fileRequests('model.safetensors');
    expect(reqs.at(-1)!.headers.range).toBe(`bytes=${partSize}-`);
    // Only the small files before it were fetched once; nothing else was fetched twice.
    expect(hub.fileRequests('config.json')).toHaveLength(1);
    const want = hub.repos.get('org/name')!.files.get('model.safetensors')!.data;
    expect((await readFile(join(dir, 'model.safetensors'))).equals(want)).toBe(true);
    expect(existsSync(join(dir, COMPLETE_MARKER))).toBe(true);
  });

  it('starts over when the server answers a Range request with the whole file', async () => {
    hub.cutOnce.add('model.safetensors');
    hub.ignoreRange = true;
    const dir = await pullModel('org/name', { endpoint: hub.url, cacheDir });
    expect(hub.fileRequests('model.safetensors')[1]!.headers.range).toMatch(/^bytes=[1-9]\d*-$/);
    const want = hub.repos.get('org/name')!.files.get('model.safetensors')!.data;
    expect((await readFile(join(dir, 'model.safetensors'))).equals(want)).toBe(true);
  });

  it('rejects a file whose sha256 does not match and leaves nothing that looks complete', async () => {
    const bad = 'f'.repeat(64);
    hub.repos.get('org/name')!.files.get('model.safetensors')!.claimedSha = bad;
    const e = await expectRejects(
      pullModel('org/name', { endpoint: hub.url, cacheDir }),
      DownloadError,
      /model\.safetensors/,
      /sha256 mismatch/,
    );
    const actual = createHash('sha256').update(
      hub.repos.get('org/name')!.files.get('model.safetensors')!.data,
    );
    expect(e.message).toContain(bad);
    expect(e.message).toContain(actual.digest('hex'));
    const dir = modelDir();
    expect(existsSync(join(dir, 'model.safetensors'))).toBe(false);
    expect(existsSync(join(dir, 'model.safetensors.part'))).toBe(false);
    expect(existsSync(join(dir, COMPLETE_MARKER))).toBe(false);
    expect(await findCachedModel('org/name', { cacheDir })).toBeNull();
  });

  it('explains 401 with HF_TOKEN and gated models', async () => {
    hub.status = 401;
    await expectRejects(
      pullModel('org/name', { endpoint: hub.url, cacheDir }),
      DownloadError,
      /HF_TOKEN/,
      /gated/,
      /401/,
    );
  });

  it('reports 404 as repository or revision not found', async () => {
    await expectRejects(
      pullModel('org/missing', { endpoint: hub.url, cacheDir }),
      DownloadError,
      /repository or revision not found/,
      /org\/missing@main/,
    );
  });

  it('refuses a repository without safetensors weights', async () => {
    const repo = standardRepo();
    repo.files.delete('model.safetensors');
    repo.files.set('pytorch_model.bin', { data: randomBytes(100), lfs: true });
    hub.repos.set('org/pt', repo);
    await expectRejects(
      pullModel('org/pt', { endpoint: hub.url, cacheDir }),
      DownloadError,
      /has no safetensors weights/,
      /pytorch_model\.bin/,
    );
    expect(hub.fileRequests()).toHaveLength(0);
  });

  it('refuses a repository without tokenizer.json', async () => {
    const repo = standardRepo();
    repo.files.delete('tokenizer.json');
    hub.repos.set('org/notok', repo);
    await expectRejects(
      pullModel('org/notok', { endpoint: hub.url, cacheDir }),
      DownloadError,
      /tokenizer\.json/,
    );
  });

  it('downloads the shards named by the index and skips other weight copies', async () => {
    const repo = standardRepo();
    repo.files.delete('model.safetensors');
    const a = randomBytes(70_000);
    const b = randomBytes(50_000);
    repo.files.set('model-00001-of-00002.safetensors', { data: a, lfs: true });
    repo.files.set('model-00002-of-00002.safetensors', { data: b, lfs: true });
    repo.files.set('consolidated.safetensors', { data: randomBytes(120_000), lfs: true });
    repo.files.set(
      'model.safetensors.index.json',
      json({ weight_map: { x: 'model-00001-of-00002.safetensors', y: 'model-00002-of-00002.safetensors' } }),
    );
    hub.repos.set('org/sharded', repo);
    const dir = await pullModel('org/sharded', { endpoint: hub.url, cacheDir });
    expect((await readFile(join(dir, 'model-00001-of-00002.safetensors'))).equals(a)).toBe(true);
    expect((await readFile(join(dir, 'model-00002-of-00002.safetensors'))).equals(b)).toBe(true);
    expect(existsSync(join(dir, 'model.safetensors.index.json'))).toBe(true);
    expect(hub.fileRequests('consolidated.safetensors')).toHaveLength(0);
  });

  it('refuses shard names from the index that are not plain *.safetensors names in the folder', async () => {
    for (const bad of [
      '../evil.safetensors',
      'sub/x.safetensors',
      'c:x.safetensors',
      '.x.safetensors',
      'x.bin',
    ]) {
      const repo = standardRepo();
      repo.files.delete('model.safetensors');
      repo.files.set('model.safetensors.index.json', json({ weight_map: { x: bad } }));
      hub.repos.set('org/badshard', repo);
      await expectRejects(
        pullModel('org/badshard', { endpoint: hub.url, cacheDir }),
        DownloadError,
        new RegExp(
          `model\\.safetensors\\.index\\.json of org/badshard names an invalid shard ${JSON.stringify(bad).replace(/[.\\]/g, '\\$&')}: ` +
            'expected a plain file name inside the model folder, ending in \\.safetensors',
        ),
      );
    }
  });

  it('caps downloads: 64 GiB for weights, 64 MiB for other files', () => {
    expect(MAX_WEIGHTS_FILE_BYTES).toBe(64 * 2 ** 30);
    expect(MAX_TEXT_FILE_BYTES).toBe(64 * 2 ** 20);
    expect(maxDownloadBytes('model-00001-of-00002.safetensors')).toBe(MAX_WEIGHTS_FILE_BYTES);
    expect(maxDownloadBytes('tokenizer.json')).toBe(MAX_TEXT_FILE_BYTES);
  });

  /** A fetch over the local hub whose model-info answer is edited by `patch` for each sibling. */
  function patchedFetch(
    patch: (s: Record<string, unknown>) => void,
    file?: { name: string; body: () => Response },
  ): typeof fetch {
    return async (input, init) => {
      const url = String(input);
      if (file && url.endsWith(`/resolve/main/${file.name}`)) return file.body();
      const res = await fetch(input, init);
      if (!url.includes('/api/models/')) return res;
      const info = (await res.json()) as { siblings: Record<string, unknown>[] };
      info.siblings.forEach(patch);
      return new Response(JSON.stringify(info), { status: 200 });
    };
  }

  it('stops a file of unknown size once it passes the cap, and keeps no part of it', async () => {
    const state = { pulled: 0, cancelled: false };
    const mib = new Uint8Array(2 ** 20).fill(0x20);
    const endless = () =>
      new Response(
        new ReadableStream<Uint8Array>({
          pull(c) {
            state.pulled++;
            c.enqueue(mib);
          },
          cancel() {
            state.cancelled = true;
          },
        }),
        { status: 200 },
      );
    const fetchFn = patchedFetch(
      (s) => {
        if (s.rfilename === 'config.json') delete s.size;
      },
      { name: 'config.json', body: endless },
    );
    await expectRejects(
      pullModel('org/name', { endpoint: hub.url, cacheDir, fetch: fetchFn }),
      DownloadError,
      /^config\.json of org\/name@main passed 68157440 bytes, over the 67108864-byte limit for a text file$/,
    );
    expect(state.cancelled).toBe(true);
    expect(state.pulled).toBeLessThan(64 + 4);
    expect(existsSync(join(modelDir(), 'config.json.part'))).toBe(false);
    expect(existsSync(join(modelDir(), 'config.json'))).toBe(false);
  });

  it('refuses a file listed over the cap before requesting it', async () => {
    const huge = MAX_WEIGHTS_FILE_BYTES + 1;
    const fetchFn = patchedFetch((s) => {
      if (s.rfilename !== 'model.safetensors') return;
      s.size = huge;
      (s.lfs as Record<string, unknown>).size = huge;
    });
    await expectRejects(
      pullModel('org/name', { endpoint: hub.url, cacheDir, fetch: fetchFn }),
      DownloadError,
      /^model\.safetensors of org\/name@main is listed at 68719476737 bytes, over the 68719476736-byte limit for a weights file$/,
    );
    expect(hub.fileRequests('model.safetensors')).toHaveLength(0);
  });

  it('sends Authorization: Bearer <token> when a token is set, and none otherwise', async () => {
    await pullModel('org/name', { endpoint: hub.url, cacheDir });
    expect(hub.log.every((l) => l.headers.authorization === undefined)).toBe(true);
    await rm(cacheDir, { recursive: true, force: true });
    hub.log.length = 0;
    process.env.HF_TOKEN = 'hf_from_env';
    await pullModel('org/name', { endpoint: hub.url, cacheDir });
    expect(hub.log.length).toBeGreaterThan(1);
    expect(hub.log.every((l) => l.headers.authorization === 'Bearer hf_from_env')).toBe(true);
    hub.log.length = 0;
    await pullModel('org/name', { endpoint: hub.url, cacheDir, token: 'hf_option' });
    expect(hub.log[0]!.headers.authorization).toBe('Bearer hf_option');
  });

  it('uses HF_ENDPOINT when no endpoint is given', async () => {
    process.env.HF_ENDPOINT = `${hub.url}/`;
    const dir = await pullModel('org/name', { cacheDir });
    expect(existsSync(join(dir, 'model.safetensors'))).toBe(true);
    expect(hub.log[0]!.path).toBe('/api/models/org/name/revision/main?blobs=true');
  });

  it('stops when the signal aborts and keeps the part for later', async () => {
    const ac = new AbortController();
    const p = pullModel('org/name', {
      endpoint: hub.url,
      cacheDir,
      signal: ac.signal,
      onProgress: (e) => {
        if (e.file === 'model.safetensors' && e.fileBytes > 0) ac.abort();
      },
    });
    await expect(p).rejects.toThrow();
    expect(existsSync(join(modelDir(), COMPLETE_MARKER))).toBe(false);
    expect(existsSync(join(modelDir(), 'model.safetensors'))).toBe(false);
  });

  it('names the folder after the revision when the endpoint reports no commit', async () => {
    hub.repos.get('org/name')!.commit = 'not-a-commit';
    const dir = await pullModel('org/name', { endpoint: hub.url, cacheDir });
    expect(dir).toBe(join(cacheDir, 'models', 'org', 'name', 'main'));
    expect(await findCachedModel('org/name', { cacheDir })).toBe(dir);
  });

  it('rejects ids that are not Hub ids', async () => {
    await expectRejects(
      pullModel('../etc', { endpoint: hub.url, cacheDir }),
      KilnError,
      /not a Hub model id/,
    );
    expect(hub.log).toHaveLength(0);
  });
});

describe('resolveModel', () => {
  it('returns an existing local folder as is', async () => {
    const local = join(cacheDir, 'my-model');
    await mkdir(local);
    expect(await resolveModel(local, { endpoint: hub.url, cacheDir })).toBe(local);
    expect(hub.log).toHaveLength(0);
  });

  it('uses the cached folder of a Hub id offline', async () => {
    const dir = await pullModel('org/name', { endpoint: hub.url, cacheDir });
    await hub.stop();
    expect(await resolveModel('org/name', { endpoint: hub.url, cacheDir })).toBe(dir);
    expect(await resolveModel(`org/name@${COMMIT}`, { endpoint: hub.url, cacheDir })).toBe(dir);
  });

  it('pulls a Hub id that is not cached', async () => {
    const dir = await resolveModel('org/name', { endpoint: hub.url, cacheDir });
    expect(dir).toBe(modelDir());
    expect(existsSync(join(dir, COMPLETE_MARKER))).toBe(true);
  });

  it('does not trust a cached folder whose files went missing', async () => {
    const dir = await pullModel('org/name', { endpoint: hub.url, cacheDir });
    await rm(join(dir, 'tokenizer.json'));
    expect(await findCachedModel('org/name', { cacheDir })).toBeNull();
    await hub.stop();
    await expectRejects(
      resolveModel('org/name', { endpoint: hub.url, cacheDir }),
      DownloadError,
      /could not reach/,
    );
  });

  it('rejects an argument that is neither a folder nor a Hub id, and a path that does not exist', async () => {
    await expectRejects(
      resolveModel('no such thing!', { endpoint: hub.url, cacheDir }),
      KilnError,
      /neither/,
    );
    await expectRejects(
      resolveModel('./missing/folder', { endpoint: hub.url, cacheDir }),
      KilnError,
      /model folder \.\/missing\/folder does not exist/,
    );
    const file = join(cacheDir, 'file.txt');
    await writeFile(file, 'x');
    await expectRejects(resolveModel(file, { endpoint: hub.url, cacheDir }), KilnError, /is a file/);
    expect(hub.log).toHaveLength(0);
  });
});

describe('kilnCacheDir', () => {
  it('follows XDG_CACHE_HOME and ignores a relative value', () => {
    process.env.XDG_CACHE_HOME = join(cacheDir, 'xdg');
    expect(kilnCacheDir()).toBe(join(cacheDir, 'xdg', 'kiln'));
    process.env.XDG_CACHE_HOME = 'relative/path';
    expect(kilnCacheDir()).toMatch(/[/\\]\.cache[/\\]kiln$/);
  });
});

/**
 * Downloads models from the Hugging Face Hub (or any endpoint with the same URL layout, such as a
 * mirror named by HF_ENDPOINT) into Kiln's cache, and resolves a CLI model argument to a local folder.
 *
 * Cache layout: `<cacheDir>/models/<org>/<name>/<commit>/` holds the files of one commit, so a folder
 * never changes once complete; `<cacheDir>/models/<org>/<name>/.refs/<revision>` records which commit a
 * branch or tag pointed to when it was pulled, so `resolveModel('org/name')` works offline. When the
 * endpoint reports no commit, the folder is named after the (encoded) revision instead.
 *
 * Every file is written to `<file>.part`, checked (size, and sha256 for LFS files) and only then
 * renamed into place, so a file under its final name has always been verified. `.kiln-complete.json`
 * is written last, once every file is in place.
 */
import { createHash, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { isAbsolute, join, resolve } from 'node:path';
import { DownloadError, KilnError } from '../errors.js';
import { MAX_TEXT_FILE_BYTES } from '../io/byte-source.js';
import { hubApiUrl, hubFileUrl, isCommitHash, parseHubId, type HubId } from '../io/hub-id.js';
import { isJsonObject } from '../io/json.js';
import { INDEX_FILE, isShardFileName, SHARD_NAME_RULE } from '../io/safetensors.js';

/** One progress report, sent for every chunk written and once per file already in the cache. */
export interface PullProgress {
  /** The file being downloaded. */
  file: string;
  /** Bytes of this file on disk so far (including a resumed part). */
  fileBytes: number;
  /** Size of this file (0 when neither the API nor the response told it). */
  fileTotal: number;
  /** Bytes of all selected files on disk so far. */
  bytes: number;
  /** Size of all selected files. */
  total: number;
}

/** Options of {@link pullModel} and {@link resolveModel}. */
export interface PullOptions {
  /** Hub endpoint; default `$HF_ENDPOINT`, else `https://huggingface.co`. */
  endpoint?: string;
  /** Access token for private or gated repositories; default `$HF_TOKEN`. */
  token?: string;
  /** Cache root; default {@link kilnCacheDir}. */
  cacheDir?: string;
  onProgress?: (p: PullProgress) => void;
  signal?: AbortSignal;
  /** Replaces the global fetch (tests, proxies). */
  fetch?: typeof fetch;
  /**
   * How many times an interrupted file download is resumed before giving up (default 3). Resuming
   * costs one Range request, so retrying is cheap compared with failing a multi-GB pull.
   */
  retries?: number;
}

/** What `.kiln-complete.json` holds: the repository, what was asked, what was fetched. */
export interface CompleteMarker {
  repo: string;
  revision: string;
  /** The commit the revision resolved to, or null when the endpoint did not say. */
  commit: string | null;
  files: { name: string; size: number; sha256?: string }[];
  completedAt: string;
}

/** Marker file written into a model folder once every file has been downloaded and verified. */
export const COMPLETE_MARKER = '.kiln-complete.json';

// Per-folder record of files already hashed, so a repeat pull does not re-read gigabytes to skip them.
const VERIFIED_RECORD = '.kiln-verified.json';

/** Files a Kiln model folder needs besides its weights; the first two are required. */
const REQUIRED_FILES = ['config.json', 'tokenizer.json'];
const OPTIONAL_FILES = ['generation_config.json', 'tokenizer_config.json', 'special_tokens_map.json'];

/**
 * The most bytes one weights file may have. Hub checkpoints are sharded (transformers writes shards
 * of 5 GB by default, 10 GB at most in practice), so 64 GiB is far above any real shard while still
 * stopping a server that streams without end from filling the disk.
 */
export const MAX_WEIGHTS_FILE_BYTES = 64 * 2 ** 30;

/** The most bytes Kiln downloads for `file`: {@link MAX_WEIGHTS_FILE_BYTES} for weights, else the text-file cap. */
export function maxDownloadBytes(file: string): number {
  return file.endsWith('.safetensors') ? MAX_WEIGHTS_FILE_BYTES : MAX_TEXT_FILE_BYTES;
}

/** `$XDG_CACHE_HOME/kiln`, or `~/.cache/kiln` when XDG_CACHE_HOME is unset or not absolute. */
export function kilnCacheDir(): string {
  const xdg = process.env.XDG_CACHE_HOME;
  // The XDG spec says relative values are invalid and must be ignored.
  if (xdg && isAbsolute(xdg)) return join(xdg, 'kiln');
  return join(homedir(), '.cache', 'kiln');
}

interface Sibling {
  name: string;
  size: number | null;
  sha256: string | null;
}

interface RepoInfo {
  commit: string | null;
  siblings: Map<string, Sibling>;
}

interface Ctx {
  id: HubId;
  endpoint: string;
  token: string | undefined;
  fetch: typeof fetch;
  signal: AbortSignal | undefined;
  retries: number;
}

function endpointOf(opts: PullOptions): string {
  return (opts.endpoint ?? process.env.HF_ENDPOINT ?? 'https://huggingface.co').replace(/\/+$/, '');
}

function tokenOf(opts: PullOptions): string | undefined {
  const t = opts.token ?? process.env.HF_TOKEN;
  return t ? t : undefined;
}

function repoDir(cacheDir: string, repo: string): string {
  // parseHubId allows neither '..' nor extra slashes, so org and name are plain folder names.
  const [org, name] = repo.split('/') as [string, string];
  return join(cacheDir, 'models', org, name);
}

function refPath(cacheDir: string, id: HubId): string {
  // Git ref components cannot start with '.', so '.refs' never collides with a revision folder.
  return join(repoDir(cacheDir, id.repo), '.refs', encodeURIComponent(id.revision));
}

function headers(ctx: Ctx, extra?: Record<string, string>): Record<string, string> {
  const h: Record<string, string> = { ...extra };
  if (ctx.token) h.Authorization = `Bearer ${ctx.token}`;
  return h;
}

function httpError(ctx: Ctx, status: number, what: string): DownloadError {
  const where = `${ctx.id.repo}@${ctx.id.revision} on ${ctx.endpoint}`;
  if (status === 401 || status === 403) {
    const auth = ctx.token
      ? 'the token in HF_TOKEN (or --token) was refused or lacks access'
      : 'no token was sent: set HF_TOKEN to a Hugging Face access token';
    return new DownloadError(
      `${what}: HTTP ${status} for ${where}. The repository may be private or gated (gated models such as ` +
        `meta-llama/* need their license accepted on the model page first), or may not exist; ${auth}.`,
    );
  }
  if (status === 404)
    return new DownloadError(`${what}: repository or revision not found: ${where} (HTTP 404)`);
  return new DownloadError(`${what}: HTTP ${status} from ${where}`);
}

async function get(ctx: Ctx, url: string, what: string, extra?: Record<string, string>): Promise<Response> {
  try {
    return await ctx.fetch(url, { headers: headers(ctx, extra), signal: ctx.signal, redirect: 'follow' });
  } catch (e) {
    if (ctx.signal?.aborted) throw e;
    throw new DownloadError(`${what}: could not reach ${ctx.endpoint}: ${(e as Error).message}`, {
      cause: e,
    });
  }
}

function nonNegInt(v: unknown): number | null {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v : null;
}

async function fetchRepoInfo(ctx: Ctx): Promise<RepoInfo> {
  const what = `fetching the file list of ${ctx.id.repo}`;
  const res = await get(ctx, hubApiUrl(ctx.endpoint, ctx.id.repo, ctx.id.revision), what);
  if (!res.ok) throw httpError(ctx, res.status, what);
  let body: unknown;
  try {
    body = await res.json();
  } catch (e) {
    throw new DownloadError(`${what}: the endpoint did not return JSON`, { cause: e });
  }
  if (!isJsonObject(body) || !Array.isArray(body.siblings)) {
    throw new DownloadError(`${what}: the response has no "siblings" list`);
  }
  const siblings = new Map<string, Sibling>();
  for (const s of body.siblings as unknown[]) {
    if (!isJsonObject(s) || typeof s.rfilename !== 'string') continue;
    const lfs = isJsonObject(s.lfs) ? s.lfs : null;
    const sha = lfs && typeof lfs.sha256 === 'string' ? lfs.sha256.toLowerCase() : null;
    siblings.set(s.rfilename, {
      name: s.rfilename,
      size: nonNegInt(lfs?.size) ?? nonNegInt(s.size),
      sha256: sha && /^[0-9a-f]{64}$/.test(sha) ? sha : null,
    });
  }
  // The commit names a cache folder, so anything but a plain hash is ignored rather than trusted.
  const commit = typeof body.sha === 'string' && isCommitHash(body.sha) ? body.sha : null;
  return { commit, siblings };
}

/**
 * The files Kiln needs, in download order. Only top-level files are taken: Kiln reads a flat folder,
 * and it keeps a hostile listing from naming paths outside the cache.
 */
function selectFiles(ctx: Ctx, info: RepoInfo, shards: string[] | null): Sibling[] {
  const top = [...info.siblings.values()].filter((s) => !s.name.includes('/') && !s.name.includes('\\'));
  const has = (n: string) => info.siblings.has(n);
  const missing = REQUIRED_FILES.filter((f) => !has(f));
  if (missing.length > 0) {
    throw new DownloadError(
      `${ctx.id.repo}@${ctx.id.revision} is not a Kiln-loadable model: it has no ${missing.join(' or ')}`,
    );
  }
  let weights: string[];
  if (shards) {
    weights = shards;
  } else if (has('model.safetensors')) {
    // Some repositories carry a second copy of the weights (e.g. consolidated.safetensors for other
    // runtimes); the Transformers layout is what Kiln reads, so take only it.
    weights = ['model.safetensors'];
  } else {
    weights = top.map((s) => s.name).filter(isShardFileName);
  }
  if (weights.length === 0) {
    const others = top.map((s) => s.name).filter((n) => /\.(bin|pt|pth|gguf|ckpt|h5|msgpack)$/.test(n));
    throw new DownloadError(
      `${ctx.id.repo}@${ctx.id.revision} has no safetensors weights` +
        (others.length > 0 ? ` (only ${others.join(', ')}); Kiln reads *.safetensors only` : ''),
    );
  }
  const names = [
    ...REQUIRED_FILES,
    ...OPTIONAL_FILES.filter(has),
    ...(shards ? [INDEX_FILE] : []),
    ...weights,
  ];
  return names.map((n) => {
    const s = info.siblings.get(n);
    if (!s) throw new DownloadError(`${INDEX_FILE} of ${ctx.id.repo} names ${n}, which the repository lacks`);
    return s;
  });
}

/** Shard names listed in a model.safetensors.index.json. */
async function readShards(ctx: Ctx, path: string): Promise<string[]> {
  let index: unknown;
  try {
    index = JSON.parse(await readFile(path, 'utf8')) as unknown;
  } catch (e) {
    throw new DownloadError(`${INDEX_FILE} of ${ctx.id.repo} is not valid JSON`, { cause: e });
  }
  if (!isJsonObject(index) || !isJsonObject(index.weight_map)) {
    throw new DownloadError(`${INDEX_FILE} of ${ctx.id.repo} has no weight_map`);
  }
  const shards = new Set<string>();
  for (const v of Object.values(index.weight_map)) {
    if (!isShardFileName(v)) {
      throw new DownloadError(
        `${INDEX_FILE} of ${ctx.id.repo} names an invalid shard ${JSON.stringify(v)}: expected ${SHARD_NAME_RULE}`,
      );
    }
    shards.add(v);
  }
  if (shards.size === 0) throw new DownloadError(`${INDEX_FILE} of ${ctx.id.repo} lists no tensors`);
  return [...shards];
}

type VerifiedRecord = Record<string, { size: number; sha256: string }>;

async function readJsonFile(path: string): Promise<unknown> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as unknown;
  } catch {
    return null;
  }
}

/** Writes via a temporary file and rename, so a crash never leaves half a JSON file behind. */
async function writeFileAtomic(path: string, text: string): Promise<void> {
  const tmp = `${path}.${process.pid}.tmp`;
  await writeFile(tmp, text);
  await rename(tmp, path);
}

async function sizeOf(path: string): Promise<number | null> {
  try {
    const s = await stat(path);
    return s.isFile() ? s.size : null;
  } catch {
    return null;
  }
}

/** Streams a file (or its first `length` bytes) through `hash`, never holding it in memory. */
async function hashFile(path: string, hash: Hash, length?: number): Promise<void> {
  if (length === 0) return;
  const stream = createReadStream(path, length === undefined ? {} : { end: length - 1 });
  for await (const chunk of stream) hash.update(chunk as Buffer);
}

class Downloader {
  bytes = 0;
  total: number;
  // Files whose size only a response told, already added to `total` (so a retry does not add it twice).
  private readonly counted = new Set<string>();

  constructor(
    private readonly ctx: Ctx,
    private readonly dir: string,
    private readonly record: VerifiedRecord,
    private readonly onProgress: PullOptions['onProgress'],
    total: number,
  ) {
    this.total = total;
  }

  private report(file: string, fileBytes: number, fileTotal: number): void {
    this.onProgress?.({ file, fileBytes, fileTotal, bytes: this.bytes, total: this.total });
  }

  /**
   * Whether `s` is already in place. A file under its final name was verified before its rename; the
   * record says against which sha256, so a repeat pull skips it without re-reading. A file missing
   * from the record (e.g. a crash between rename and record update) is re-hashed once.
   */
  private async complete(s: Sibling): Promise<boolean> {
    const size = await sizeOf(join(this.dir, s.name));
    if (size === null || (s.size !== null && size !== s.size)) return false;
    if (!s.sha256) return true;
    const known = this.record[s.name];
    if (known && known.size === size && known.sha256 === s.sha256) return true;
    const hash = createHash('sha256');
    await hashFile(join(this.dir, s.name), hash);
    if (hash.digest('hex') !== s.sha256) return false;
    await this.remember(s.name, size, s.sha256);
    return true;
  }

  private async remember(name: string, size: number, sha256: string): Promise<void> {
    this.record[name] = { size, sha256 };
    await writeFileAtomic(join(this.dir, VERIFIED_RECORD), JSON.stringify(this.record, null, 2) + '\n');
  }

  /** Makes `s` present and verified under its final name; returns its size. */
  async ensure(s: Sibling): Promise<number> {
    if (await this.complete(s)) {
      const size = (await sizeOf(join(this.dir, s.name))) ?? 0;
      this.bytes += size;
      this.report(s.name, size, size);
      return size;
    }
    const startBytes = this.bytes;
    for (let attempt = 0; ; attempt++) {
      this.bytes = startBytes;
      try {
        const size = await this.download(s);
        this.bytes = startBytes + size;
        return size;
      } catch (e) {
        // Only a dropped connection is worth resuming; HTTP and verification errors would repeat.
        if (!(e instanceof InterruptedError) || attempt >= this.ctx.retries || this.ctx.signal?.aborted) {
          throw e instanceof InterruptedError ? e.toDownloadError() : e;
        }
      }
    }
  }

  private tooLarge(s: Sibling, size: number, how: string): DownloadError {
    const cap = maxDownloadBytes(s.name);
    return new DownloadError(
      `${s.name} of ${this.ctx.id.repo}@${this.ctx.id.revision} ${how} ${size} bytes, over the ` +
        `${cap}-byte limit for ${s.name.endsWith('.safetensors') ? 'a weights' : 'a text'} file`,
    );
  }

  private async download(s: Sibling): Promise<number> {
    const final = join(this.dir, s.name);
    const part = `${final}.part`;
    if (s.size !== null && s.size > maxDownloadBytes(s.name)) throw this.tooLarge(s, s.size, 'is listed at');
    let have = (await sizeOf(part)) ?? 0;
    if (s.size !== null && have > s.size) {
      await rm(part, { force: true });
      have = 0;
    }
    const hash = createHash('sha256');
    let fileTotal = s.size ?? 0;
    if (have > 0 && s.size !== null && have === s.size) {
      // Fully downloaded by an earlier run that stopped before verifying: no request needed.
      await hashFile(part, hash, have);
    } else {
      const url = hubFileUrl(this.ctx.endpoint, this.ctx.id.repo, this.ctx.id.revision, s.name);
      const what = `downloading ${s.name}`;
      const res = await get(this.ctx, url, what, have > 0 ? { Range: `bytes=${have}-` } : undefined);
      let append = false;
      if (res.status === 206 && have > 0 && rangeStart(res.headers.get('content-range')) === have) {
        append = true;
      } else if (res.status === 416) {
        // The part no longer matches the remote file; start over on the next attempt.
        await res.body?.cancel();
        await rm(part, { force: true });
        throw new InterruptedError(s.name, 0, 'the server refused to resume (HTTP 416)');
      } else if (!res.ok || res.status === 206) {
        await res.body?.cancel();
        if (res.status === 206) {
          // A range we did not ask for: discard the part rather than splice mismatched bytes.
          await rm(part, { force: true });
          throw new InterruptedError(s.name, 0, 'the server answered with an unexpected range');
        }
        throw httpError(this.ctx, res.status, what);
      }
      if (append) {
        await hashFile(part, hash, have);
      } else {
        have = 0; // HTTP 200: the server sends the whole file, so the part starts over.
      }
      const length = Number(res.headers.get('content-length'));
      if (s.size === null && Number.isSafeInteger(length) && length >= 0) fileTotal = have + length;
      if (fileTotal > maxDownloadBytes(s.name)) {
        await res.body?.cancel();
        throw this.tooLarge(s, fileTotal, 'is announced at');
      }
      if (s.size === null && fileTotal > 0 && !this.counted.has(s.name)) {
        this.total += fileTotal;
        this.counted.add(s.name);
      }
      have = await this.receive(res, part, append, hash, have, s, fileTotal);
    }
    await this.verify(s, part, have, fileTotal, hash.digest('hex'));
    await rename(part, final);
    if (s.sha256) await this.remember(s.name, have, s.sha256);
    return have;
  }

  /** Streams the body into the part file chunk by chunk; returns the part's size when the body ends. */
  private async receive(
    res: Response,
    part: string,
    append: boolean,
    hash: Hash,
    start: number,
    s: Sibling,
    fileTotal: number,
  ): Promise<number> {
    const fh = await open(part, append ? 'a' : 'w');
    const expected = s.size ?? (fileTotal > 0 ? fileTotal : null);
    // Without a known size the cap is all that bounds the body.
    const cap = maxDownloadBytes(s.name);
    let have = start;
    let overflow = false;
    const base = this.bytes;
    try {
      const body = res.body;
      if (!body) return have;
      const reader = body.getReader();
      for (;;) {
        let chunk: ReadableStreamReadResult<Uint8Array>;
        try {
          chunk = await reader.read();
        } catch (e) {
          if (this.ctx.signal?.aborted) throw e;
          throw new InterruptedError(s.name, have, (e as Error).message);
        }
        if (chunk.done) break;
        await fh.write(chunk.value);
        hash.update(chunk.value);
        have += chunk.value.byteLength;
        if (expected !== null && have > expected) {
          // Stop a server that sends more than it promised instead of filling the disk.
          await reader.cancel();
          break;
        }
        if (have > cap) {
          await reader.cancel();
          overflow = true;
          break;
        }
        this.bytes = base + have;
        this.report(s.name, have, fileTotal);
      }
    } finally {
      await fh.close();
    }
    if (overflow) {
      await rm(part, { force: true });
      throw this.tooLarge(s, have, 'passed');
    }
    if (expected !== null && have < expected) {
      throw new InterruptedError(s.name, have, `the connection closed after ${have} of ${expected} bytes`);
    }
    return have;
  }

  private async verify(
    s: Sibling,
    part: string,
    size: number,
    fileTotal: number,
    sha: string,
  ): Promise<void> {
    const expectedSize = s.size ?? (fileTotal > 0 ? fileTotal : null);
    let problem: string | null = null;
    if (expectedSize !== null && size !== expectedSize) {
      problem = `size mismatch: expected ${expectedSize} bytes, got ${size}`;
    } else if (s.sha256 && sha !== s.sha256) {
      problem = `sha256 mismatch: expected ${s.sha256}, got ${sha}`;
    }
    if (problem) {
      // The bytes are wrong, so resuming from them would be too: delete the part.
      await rm(part, { force: true });
      throw new DownloadError(
        `${s.name} of ${this.ctx.id.repo}@${this.ctx.id.revision} failed to verify: ${problem}`,
      );
    }
  }
}

/** A download that stopped midway; the part file is kept for resuming. */
class InterruptedError extends Error {
  constructor(
    readonly file: string,
    readonly have: number,
    readonly reason: string,
  ) {
    super(`download of ${file} interrupted after ${have} bytes: ${reason}`);
  }
  toDownloadError(): DownloadError {
    return new DownloadError(`${this.message}; run the command again to resume`, { cause: this });
  }
}

function rangeStart(contentRange: string | null): number | null {
  const m = /^bytes (\d+)-\d+\/(?:\d+|\*)$/.exec(contentRange?.trim() ?? '');
  return m ? Number(m[1]) : null;
}

function toCtx(id: HubId, opts: PullOptions): Ctx {
  return {
    id,
    endpoint: endpointOf(opts),
    token: tokenOf(opts),
    fetch: opts.fetch ?? globalThis.fetch,
    signal: opts.signal,
    retries: Math.max(0, opts.retries ?? 3),
  };
}

function parseOrThrow(id: string): HubId {
  const parsed = parseHubId(id);
  if (!parsed) throw new KilnError(`"${id}" is not a Hub model id (expected org/name or org/name@revision)`);
  return parsed;
}

/**
 * Downloads the files Kiln needs from a Hub model repository (config, tokenizer, generation config and
 * safetensors weights) into the cache, verifying sizes and LFS sha256 hashes, resuming partial files,
 * and skipping files already present. Returns the local model folder.
 */
export async function pullModel(id: string, opts: PullOptions = {}): Promise<string> {
  const ctx = toCtx(parseOrThrow(id), opts);
  const cacheDir = opts.cacheDir ?? kilnCacheDir();
  const info = await fetchRepoInfo(ctx);
  const commit = isCommitHash(ctx.id.revision) ? ctx.id.revision : info.commit;
  const dir = join(repoDir(cacheDir, ctx.id.repo), commit ?? encodeURIComponent(ctx.id.revision));
  await mkdir(dir, { recursive: true });

  const recorded = await readJsonFile(join(dir, VERIFIED_RECORD));
  const record: VerifiedRecord = isJsonObject(recorded) ? (recorded as VerifiedRecord) : {};

  // Sharded weights: the index says which shards the model uses, so it is fetched before the rest.
  let shards: string[] | null = null;
  const index = info.siblings.get(INDEX_FILE);
  if (index) {
    const pre = new Downloader(ctx, dir, record, undefined, 0);
    await pre.ensure(index);
    shards = await readShards(ctx, join(dir, INDEX_FILE));
  }
  const files = selectFiles(ctx, info, shards);
  const total = files.reduce((n, f) => n + (f.size ?? 0), 0);
  const dl = new Downloader(ctx, dir, record, opts.onProgress, total);
  const done: CompleteMarker['files'] = [];
  for (const f of files) {
    const size = await dl.ensure(f);
    done.push(f.sha256 ? { name: f.name, size, sha256: f.sha256 } : { name: f.name, size });
  }

  const marker: CompleteMarker = {
    repo: ctx.id.repo,
    revision: ctx.id.revision,
    commit,
    files: done,
    completedAt: new Date().toISOString(),
  };
  await writeFileAtomic(join(dir, COMPLETE_MARKER), JSON.stringify(marker, null, 2) + '\n');
  if (commit && commit !== ctx.id.revision) {
    const ref = refPath(cacheDir, ctx.id);
    await mkdir(join(ref, '..'), { recursive: true });
    await writeFileAtomic(ref, commit + '\n');
  }
  return dir;
}

/** A folder whose marker exists and whose listed files are all still there at their recorded sizes. */
async function isCompleteDir(dir: string): Promise<boolean> {
  const marker = await readJsonFile(join(dir, COMPLETE_MARKER));
  if (!isJsonObject(marker) || !Array.isArray(marker.files)) return false;
  for (const f of marker.files as unknown[]) {
    if (!isJsonObject(f) || typeof f.name !== 'string' || f.name.includes('/') || f.name.includes('\\'))
      return false;
    if ((await sizeOf(join(dir, f.name))) !== f.size) return false;
  }
  return true;
}

/**
 * The cached, complete folder of a Hub id, or null. Reads only the local cache (no network): a branch
 * or tag resolves through the commit recorded when it was last pulled.
 */
export async function findCachedModel(id: string, opts: { cacheDir?: string } = {}): Promise<string | null> {
  const parsed = parseOrThrow(id);
  const cacheDir = opts.cacheDir ?? kilnCacheDir();
  const base = repoDir(cacheDir, parsed.repo);
  const candidates: string[] = [];
  if (isCommitHash(parsed.revision)) {
    candidates.push(join(base, parsed.revision));
  } else {
    const ref = await readFile(refPath(cacheDir, parsed), 'utf8').then(
      (t) => t.trim(),
      () => null,
    );
    if (ref && isCommitHash(ref)) candidates.push(join(base, ref));
    candidates.push(join(base, encodeURIComponent(parsed.revision)));
  }
  for (const dir of candidates) if (await isCompleteDir(dir)) return dir;
  return null;
}

/**
 * Turns a CLI model argument into a local folder: an existing directory is used as is; a Hub id
 * (`org/name[@revision]`) uses its complete cached folder when there is one (so it works offline) and
 * pulls it otherwise. Anything else is a {@link KilnError}.
 */
export async function resolveModel(arg: string, opts: PullOptions = {}): Promise<string> {
  const local = await stat(arg).catch(() => null);
  if (local?.isDirectory()) return resolve(arg);
  if (local)
    throw new KilnError(
      `"${arg}" is a file; a model is a folder (config.json, tokenizer.json, *.safetensors)`,
    );
  // Something written as a path is a folder that is not there, not a Hub id to download.
  if (isAbsolute(arg) || /^\.{1,2}([/\\]|$)|^~/.test(arg)) {
    throw new KilnError(`model folder ${arg} does not exist`);
  }
  if (parseHubId(arg)) {
    return (await findCachedModel(arg, opts)) ?? (await pullModel(arg, opts));
  }
  throw new KilnError(
    `"${arg}" is neither a model folder nor a Hugging Face Hub id (org/name or org/name@revision)`,
  );
}

/**
 * A browser-side cache of models in the Cache API, keyed by the model's URL and revision: a model
 * folder's URL, or a GGUF file's (with its other shards when it is the first of a split model).
 * `plan()` lists the files the engine will read and their sizes (HEAD requests, or the GGUF
 * headers read with Range requests; no weights move),
 * `download()` streams the missing ones into the cache with byte-accurate progress, and `cached()`
 * gives the stored folder back as a ModelDir without touching the network, so a reload works
 * offline. The Cache API exists in windows and workers of secure contexts (https, localhost); in
 * Node (no `caches`) `ModelCache.open` refuses with a clear message.
 */
import { DownloadError, InvalidModelFileError, KilnError } from '../errors.js';
import { blobModelDir } from './blob-model-dir.js';
import type { ModelDir } from './byte-source.js';
import { ggufFileOfUrl, ggufModelDir } from './gguf-model-dir.js';
import { openGguf } from './gguf-split.js';
import { httpModelDir } from './http-model-dir.js';
import { INDEX_FILE, isShardFileName, SHARD_NAME_RULE, SINGLE_FILE } from './safetensors-checkpoint.js';

/** The Cache API cache Kiln stores model files in. */
export const MODEL_CACHE_NAME = 'kiln-models-v1';

/**
 * Files besides the weights that the engine may read (config, generation defaults, GPTQ's
 * quantize_config, tokenizer, chat templates). tokenizer.model is only read without a
 * tokenizer.json, so it is only fetched then.
 */
const SIDE_FILES = [
  'config.json',
  'generation_config.json',
  'quantize_config.json',
  'tokenizer.json',
  'tokenizer_config.json',
  'chat_template.jinja',
  'chat_template.json',
] as const;

/** Storage ran out (the site's quota, or the disk): the message says how much was needed and free. */
export class StorageQuotaError extends KilnError {
  override name = 'StorageQuotaError';
}

export interface ModelFile {
  /** Path inside the model folder. */
  name: string;
  size: number;
}

/** What the cache records once every file of a model is stored. */
export interface ModelManifest {
  /** The model's URL: its folder, or its GGUF file. */
  url: string;
  revision: string;
  files: ModelFile[];
  totalBytes: number;
  /** Date.now() when the download completed. */
  savedAt: number;
}

/** The files of a folder to fetch, and which of them the cache already holds. */
export interface DownloadPlan {
  url: string;
  revision: string;
  files: ModelFile[];
  totalBytes: number;
  /** Files already stored whole (an interrupted download keeps the files it finished). */
  cached: ReadonlySet<string>;
}

export interface DownloadProgress {
  /** The file being stored ('' once everything is). */
  file: string;
  /** Bytes of the folder in the cache so far, files stored earlier included. */
  loadedBytes: number;
  totalBytes: number;
}

export interface ModelCacheInit {
  /** Default: the global `caches`. */
  caches?: CacheStorage;
  /** Default: MODEL_CACHE_NAME. */
  name?: string;
  /** Default: the global fetch. */
  fetch?: typeof fetch;
  /** Default: `navigator.storage` where there is one (for quota checks). */
  storage?: StorageManager | null;
}

/**
 * Where a model's files live (a folder URL with a trailing slash, so file names resolve inside it)
 * and, for a GGUF model, the file the model is opened from.
 */
function modelLocation(url: string): { folder: string; gguf: string | null } {
  const gguf = ggufFileOfUrl(url);
  if (gguf) return { folder: gguf.base, gguf: gguf.file };
  return { folder: url.endsWith('/') ? url : `${url}/`, gguf: null };
}

function filePath(file: string): string {
  return file.split('/').map(encodeURIComponent).join('/');
}

/**
 * A file's key: its URL in the model's folder, so a folder and the GGUF files in it (the same
 * bytes under the same name and revision) share what is stored.
 */
function fileKey(url: string, revision: string, file: string): string {
  return `${modelLocation(url).folder}${filePath(file)}?kiln-revision=${encodeURIComponent(revision)}`;
}

/** One manifest per folder, and one per GGUF file in it (a folder may hold several quantizations). */
function manifestKey(url: string, revision: string): string {
  const { folder, gguf } = modelLocation(url);
  return `${folder}${gguf === null ? '' : filePath(gguf)}?kiln-manifest=${encodeURIComponent(revision)}`;
}

/** Stored beside each file's bytes, so sizes are known without reading the bodies. */
const SIZE_HEADER = 'x-kiln-size';

const QUOTA_ADVICE =
  'Clear the model cache (or other data of this site), free disk space, or open the model as a local folder instead.';

function isQuotaError(e: unknown): boolean {
  return e instanceof DOMException && e.name === 'QuotaExceededError';
}

function mib(n: number): string {
  return n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(2)} GiB` : `${(n / 2 ** 20).toFixed(1)} MiB`;
}

function isManifest(v: unknown): v is ModelManifest {
  if (typeof v !== 'object' || v === null) return false;
  const m = v as Record<string, unknown>;
  return (
    typeof m.url === 'string' &&
    typeof m.revision === 'string' &&
    typeof m.totalBytes === 'number' &&
    typeof m.savedAt === 'number' &&
    Array.isArray(m.files) &&
    m.files.every(
      (f: unknown) =>
        typeof f === 'object' &&
        f !== null &&
        typeof (f as ModelFile).name === 'string' &&
        typeof (f as ModelFile).size === 'number',
    )
  );
}

export class ModelCache {
  private constructor(
    private readonly cache: Cache,
    private readonly fetchFn: typeof fetch,
    private readonly storage: StorageManager | null,
  ) {}

  /** Opens (creating if needed) Kiln's cache; refuses where the Cache API is missing. */
  static async open(init: ModelCacheInit = {}): Promise<ModelCache> {
    const storageApi = init.caches ?? (globalThis as { caches?: CacheStorage }).caches;
    if (!storageApi) {
      throw new KilnError(
        'the Cache API is not available here (it needs a secure context: https or localhost), so models cannot be cached',
      );
    }
    const nav = (globalThis as { navigator?: { storage?: StorageManager } }).navigator;
    const storage = init.storage === undefined ? (nav?.storage ?? null) : init.storage;
    const fetchFn = init.fetch ?? globalThis.fetch.bind(globalThis);
    return new ModelCache(await storageApi.open(init.name ?? MODEL_CACHE_NAME), fetchFn, storage);
  }

  /**
   * The stored copy of a model as a ModelDir (a GgufModelDir for a GGUF file's URL), or null when
   * it is not (completely) stored. Reads only the cache: no request goes to the network.
   */
  async cached(url: string, revision: string): Promise<{ manifest: ModelManifest; dir: ModelDir } | null> {
    const stored = await this.cache.match(manifestKey(url, revision));
    if (!stored) return null;
    let manifest: unknown;
    try {
      manifest = await stored.json();
    } catch {
      return null;
    }
    if (!isManifest(manifest)) return null;
    const files = new Map<string, Blob>();
    for (const f of manifest.files) {
      const blob = await this.storedBlob(url, revision, f);
      if (!blob) return null;
      files.set(f.name, blob);
    }
    const { folder, gguf } = modelLocation(url);
    const dir = blobModelDir(folder, files);
    return { manifest, dir: gguf === null ? dir : ggufModelDir(dir, gguf) };
  }

  /** A stored file's bytes, or null when missing or not whole. */
  private async storedBlob(url: string, revision: string, f: ModelFile): Promise<Blob | null> {
    const res = await this.cache.match(fileKey(url, revision, f.name));
    if (!res) return null;
    // Browsers back a cached body with a file on disk: blob() hands out a handle, not the bytes.
    const blob = await res.blob();
    return blob.size === f.size ? blob : null;
  }

  /**
   * Lists the model's files over the network with their sizes, without downloading any weights:
   * for a folder (HEAD, or a one-byte Range GET) config and tokenizer files, chat templates, and
   * model.safetensors or the shards its index lists; for a GGUF file, the file and the other
   * shards its header names, each header read and checked as the engine will read it.
   */
  async plan(url: string, revision: string): Promise<DownloadPlan> {
    const { folder, gguf } = modelLocation(url);
    const net = httpModelDir(folder, { fetch: this.fetchFn });
    const files = gguf === null ? await this.folderFiles(url, net) : await ggufFiles(net, gguf);
    const cached = new Set<string>();
    for (const f of files) if (await this.storedBlob(url, revision, f)) cached.add(f.name);
    return { url, revision, files, totalBytes: files.reduce((s, f) => s + f.size, 0), cached };
  }

  private async folderFiles(url: string, net: ModelDir): Promise<ModelFile[]> {
    const present = await Promise.all(SIDE_FILES.map(async (f) => ((await net.exists(f)) ? f : null)));
    const names: string[] = present.filter((f): f is (typeof SIDE_FILES)[number] => f !== null);
    if (!names.includes('config.json')) {
      throw new InvalidModelFileError(`config.json not found in ${url}: is it a Hugging Face model folder?`);
    }
    if (!names.includes('tokenizer.json') && (await net.exists('tokenizer.model'))) {
      names.push('tokenizer.model');
    }
    if (await net.exists(SINGLE_FILE)) names.push(SINGLE_FILE);
    else if (await net.exists(INDEX_FILE)) {
      names.push(INDEX_FILE);
      names.push(...shardNames(await net.readText(INDEX_FILE), url));
    } else {
      throw new InvalidModelFileError(`no checkpoint in ${url}: looked for ${SINGLE_FILE} and ${INDEX_FILE}`);
    }
    return Promise.all(
      names.map(async (name) => {
        const src = await net.open(name);
        await src.close();
        return { name, size: src.size };
      }),
    );
  }

  /**
   * Streams every file of `plan` that is not yet stored into the cache, reporting the bytes as they
   * arrive, checks each stored size, then records the manifest and returns the cached folder.
   * Refuses up front when the site's storage quota cannot hold the missing bytes.
   */
  async download(
    plan: DownloadPlan,
    opts: { onProgress?: (p: DownloadProgress) => void; signal?: AbortSignal } = {},
  ): Promise<ModelDir> {
    const missing = plan.files.filter((f) => !plan.cached.has(f.name));
    const need = missing.reduce((s, f) => s + f.size, 0);
    await this.checkQuota(plan.url, need);
    let loaded = plan.totalBytes - need;
    const report = (file: string) =>
      opts.onProgress?.({ file, loadedBytes: loaded, totalBytes: plan.totalBytes });
    report(missing[0]?.name ?? '');
    for (const f of missing) {
      const url = `${modelLocation(plan.url).folder}${filePath(f.name)}`;
      let res: Response;
      try {
        res = await this.fetchFn(url, opts.signal ? { signal: opts.signal } : {});
      } catch (e) {
        throw new DownloadError(`GET ${url} failed: ${(e as Error).message}`, { cause: e });
      }
      if (!res.ok || !res.body) {
        await res.body?.cancel().catch(() => undefined);
        throw new DownloadError(
          `GET ${url} answered ${res.status}${res.statusText ? ` ${res.statusText}` : ''}`,
        );
      }
      let got = 0;
      const counter = new TransformStream<Uint8Array, Uint8Array>({
        transform(chunk, controller) {
          got += chunk.byteLength;
          if (got > f.size) {
            controller.error(new DownloadError(`GET ${url} sent more than the ${f.size} bytes announced`));
            return;
          }
          loaded += chunk.byteLength;
          report(f.name);
          controller.enqueue(chunk);
        },
      });
      const key = fileKey(plan.url, plan.revision, f.name);
      try {
        await this.cache.put(
          key,
          new Response(res.body.pipeThrough(counter), {
            headers: { 'content-type': 'application/octet-stream', [SIZE_HEADER]: String(f.size) },
          }),
        );
      } catch (e) {
        loaded -= got;
        await this.cache.delete(key).catch(() => false);
        if (isQuotaError(e)) {
          // Browsers may enforce less than estimate() reports, so this can happen after the check.
          throw new StorageQuotaError(
            `The browser refused to store ${url}: this site's storage quota ran out while caching the ` +
              `model (its files need ${mib(need)}). ${QUOTA_ADVICE}`,
          );
        }
        if (e instanceof KilnError) throw e;
        throw new DownloadError(`storing ${url} failed: ${(e as Error).message}`, { cause: e });
      }
      if (!(await this.storedBlob(plan.url, plan.revision, f))) {
        await this.cache.delete(key);
        throw new DownloadError(`GET ${url} returned ${got} bytes, expected ${f.size} (truncated)`);
      }
    }
    report('');
    const manifest: ModelManifest = {
      url: plan.url,
      revision: plan.revision,
      files: plan.files,
      totalBytes: plan.totalBytes,
      savedAt: Date.now(),
    };
    await this.cache.put(
      manifestKey(plan.url, plan.revision),
      new Response(JSON.stringify(manifest), { headers: { 'content-type': 'application/json' } }),
    );
    const stored = await this.cached(plan.url, plan.revision);
    if (!stored) throw new DownloadError(`the cache lost ${plan.url} right after storing it`);
    return stored.dir;
  }

  /** Every completely stored folder. */
  async models(): Promise<ModelManifest[]> {
    const out: ModelManifest[] = [];
    for (const req of await this.cache.keys()) {
      if (!new URL(req.url).searchParams.has('kiln-manifest')) continue;
      const m: unknown = await (await this.cache.match(req))?.json().catch(() => null);
      if (isManifest(m)) out.push(m);
    }
    return out;
  }

  /** Bytes of everything in the cache, partial downloads included. */
  async sizeBytes(): Promise<number> {
    let total = 0;
    for (const req of await this.cache.keys()) {
      const size = Number((await this.cache.match(req))?.headers.get(SIZE_HEADER) ?? 0);
      if (Number.isSafeInteger(size)) total += size;
    }
    return total;
  }

  private async checkQuota(url: string, need: number): Promise<void> {
    if (need === 0 || !this.storage?.estimate) return;
    const { quota, usage } = await this.storage.estimate();
    if (quota === undefined || usage === undefined) return;
    const free = Math.max(0, quota - usage);
    if (need > free) {
      throw new StorageQuotaError(
        `Not enough browser storage to cache ${url}: its files need ${mib(need)}, but this site may only store ` +
          `${mib(free)} more (quota ${mib(quota)}, ${mib(usage)} used). ${QUOTA_ADVICE}`,
      );
    }
  }
}

/** A GGUF model's files: `file`, and the later shards when it is the first of a split model. */
async function ggufFiles(net: ModelDir, file: string): Promise<ModelFile[]> {
  const { source, shards } = await openGguf(net, file);
  await source.close();
  return shards;
}

/** The shard names listed by a model.safetensors.index.json (validated as plain file names). */
function shardNames(indexText: string, url: string): string[] {
  let index: unknown;
  try {
    index = JSON.parse(indexText);
  } catch (e) {
    throw new InvalidModelFileError(`${INDEX_FILE} in ${url} is not valid JSON: ${(e as Error).message}`);
  }
  const map = (index as { weight_map?: unknown } | null)?.weight_map;
  if (typeof map !== 'object' || map === null) {
    throw new InvalidModelFileError(`${INDEX_FILE} in ${url} has no weight_map object`);
  }
  const names = new Set<string>();
  for (const file of Object.values(map)) {
    if (!isShardFileName(file)) {
      throw new InvalidModelFileError(
        `${INDEX_FILE} in ${url} lists ${JSON.stringify(file)}, expected ${SHARD_NAME_RULE}`,
      );
    }
    names.add(file);
  }
  return [...names].sort();
}

/** Deletes Kiln's whole model cache. */
export async function clearModelCache(init: Pick<ModelCacheInit, 'caches' | 'name'> = {}): Promise<void> {
  const storageApi = init.caches ?? (globalThis as { caches?: CacheStorage }).caches;
  await storageApi?.delete(init.name ?? MODEL_CACHE_NAME);
}

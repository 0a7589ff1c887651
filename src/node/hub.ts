/**
 * Pulls models from the Hugging Face Hub into Kiln's cache (hub-cache.ts) and resolves a CLI model
 * argument to a local folder: lists the repository (hub-client.ts), picks the files Kiln needs,
 * downloads and verifies each (hub-download.ts), and writes `.kiln-complete.json` last, once every
 * file is in place.
 */
import { mkdir, readFile, stat } from 'node:fs/promises';
import { isAbsolute, join, resolve } from 'node:path';
import { DownloadError, KilnError } from '../errors.js';
import {
  ggufFilesForTag,
  isCommitHash,
  parseGgufHubId,
  parseHubId,
  type HubGgufId,
  type HubId,
} from '../io/hub-id.js';
import { isGgufFileName } from '../io/gguf-model-dir.js';
import { ggufShardName } from '../io/gguf-split.js';
import { isJsonObject } from '../io/json.js';
import { INDEX_FILE, isShardFileName, SHARD_NAME_RULE } from '../io/safetensors-checkpoint.js';
import {
  COMPLETE_MARKER,
  isCompleteDir,
  kilnCacheDir,
  readJsonFile,
  refPath,
  repoDir,
  VERIFIED_RECORD,
  writeFileAtomic,
  type CompleteMarker,
  type VerifiedRecord,
} from './hub-cache.js';
import {
  fetchRepoInfo,
  hubContext,
  type HubContext,
  type PullOptions,
  type RepoInfo,
  type Sibling,
} from './hub-client.js';
import { Downloader } from './hub-download.js';

/** Files a Kiln model folder needs besides its weights; the first two are required. */
const REQUIRED_FILES = ['config.json', 'tokenizer.json'];
const OPTIONAL_FILES = ['generation_config.json', 'tokenizer_config.json', 'special_tokens_map.json'];

/**
 * The files Kiln needs, in download order. Only top-level files are taken: Kiln reads a flat folder,
 * and it keeps a hostile listing from naming paths outside the cache.
 */
function selectFiles(ctx: HubContext, info: RepoInfo, shards: string[] | null): Sibling[] {
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
async function readShards(ctx: HubContext, path: string): Promise<string[]> {
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
  const gguf = parseGgufHubId(id);
  if (gguf) return pullGguf(gguf, opts);
  const ctx = hubContext(parseOrThrow(id), opts);
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

/** The cache folder of one GGUF tag of a repository at a commit (or revision). */
function ggufDir(cacheDir: string, id: HubGgufId, commitOrRevision: string): string {
  return join(repoDir(cacheDir, id.repo), commitOrRevision, `gguf-${id.tag.toUpperCase()}`);
}

/**
 * Downloads the one GGUF file of a repository that `id.tag` names (verified like any Hub file), or
 * every shard of the split model whose first shard it names, into its own cache folder, and
 * returns the (first) file's path.
 */
async function pullGguf(id: HubGgufId, opts: PullOptions): Promise<string> {
  const ctx = hubContext(id, opts);
  const cacheDir = opts.cacheDir ?? kilnCacheDir();
  const info = await fetchRepoInfo(ctx);
  const matches = ggufFilesForTag(info.siblings.keys(), id.tag);
  const where = `${id.repo}@${id.revision}`;
  if (matches.length !== 1) {
    const all = [...info.siblings.keys()].filter((n) => /\.gguf$/i.test(n));
    throw new DownloadError(
      matches.length === 0
        ? `${where} has no GGUF file tagged ${id.tag}` +
            (all.length > 0 ? ` (its GGUF files: ${all.slice(0, 12).join(', ')})` : ' (it has no GGUF files)')
        : `${where}: the tag ${id.tag} names several GGUF files (${matches.join(', ')}); name one by a longer tag`,
    );
  }
  // A split model's first shard brings its others (gguf-split's names), all in the listing.
  const first = matches[0] as string;
  const split = /^(.*)-00001-of-(\d{5})\.gguf$/i.exec(first);
  const names = split
    ? Array.from({ length: Number(split[2]) }, (_, i) =>
        ggufShardName(split[1] as string, i, Number(split[2])),
      )
    : [first];
  const missing = names.filter((n) => !info.siblings.has(n));
  if (missing.length > 0) {
    throw new DownloadError(`${where}: the split GGUF model ${first} lacks shard ${missing.join(', ')}`);
  }
  const files = names.map((n) => info.siblings.get(n) as Sibling);
  const commit = isCommitHash(id.revision) ? id.revision : info.commit;
  const dir = ggufDir(cacheDir, id, commit ?? encodeURIComponent(id.revision));
  await mkdir(dir, { recursive: true });
  const recorded = await readJsonFile(join(dir, VERIFIED_RECORD));
  const record: VerifiedRecord = isJsonObject(recorded) ? (recorded as VerifiedRecord) : {};
  const total = files.reduce((a, f) => a + (f.size ?? 0), 0);
  const dl = new Downloader(ctx, dir, record, opts.onProgress, total);
  const done: CompleteMarker['files'] = [];
  for (const file of files) {
    const size = await dl.ensure(file);
    done.push(file.sha256 ? { name: file.name, size, sha256: file.sha256 } : { name: file.name, size });
  }
  const marker: CompleteMarker = {
    repo: id.repo,
    revision: id.revision,
    commit,
    files: done,
    completedAt: new Date().toISOString(),
  };
  await writeFileAtomic(join(dir, COMPLETE_MARKER), JSON.stringify(marker, null, 2) + '\n');
  if (commit && commit !== id.revision) {
    const ref = refPath(cacheDir, id);
    await mkdir(join(ref, '..'), { recursive: true });
    await writeFileAtomic(ref, commit + '\n');
  }
  return join(dir, first);
}

/** The GGUF file (a split model's first shard) a complete GGUF cache folder holds, or null. */
async function cachedGgufFile(dir: string): Promise<string | null> {
  if (!(await isCompleteDir(dir))) return null;
  const marker = await readJsonFile(join(dir, COMPLETE_MARKER));
  const files = isJsonObject(marker) && Array.isArray(marker.files) ? (marker.files as unknown[]) : [];
  const first = files[0];
  return isJsonObject(first) && typeof first.name === 'string' ? join(dir, first.name) : null;
}

/**
 * The cached, complete folder of a Hub id, or null. Reads only the local cache (no network): a branch
 * or tag resolves through the commit recorded when it was last pulled.
 */
export async function findCachedModel(id: string, opts: { cacheDir?: string } = {}): Promise<string | null> {
  const gguf = parseGgufHubId(id);
  const parsed = gguf ?? parseOrThrow(id);
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
  for (const dir of candidates) {
    if (gguf) {
      const file = await cachedGgufFile(join(dir, `gguf-${gguf.tag.toUpperCase()}`));
      if (file) return file;
    } else if (await isCompleteDir(dir)) return dir;
  }
  return null;
}

/**
 * Turns a CLI model argument into a local folder or GGUF file: an existing directory or `*.gguf`
 * file is used as is; a Hub id (`org/name[@revision]`, or `org/name[@revision]:TAG` for the GGUF
 * file that tag names) uses its complete cached copy when there is one (so it works offline) and
 * pulls it otherwise. Anything else is a {@link KilnError}.
 */
export async function resolveModel(arg: string, opts: PullOptions = {}): Promise<string> {
  const local = await stat(arg).catch(() => null);
  if (local?.isDirectory()) return resolve(arg);
  if (local && isGgufFileName(arg)) return resolve(arg);
  if (local)
    throw new KilnError(
      `"${arg}" is a file; a model is a folder (config.json, tokenizer.json, *.safetensors)`,
    );
  // Something written as a path is a folder that is not there, not a Hub id to download.
  if (isAbsolute(arg) || /^\.{1,2}([/\\]|$)|^~/.test(arg)) {
    throw new KilnError(`model folder ${arg} does not exist`);
  }
  if (parseHubId(arg) || parseGgufHubId(arg)) {
    return (await findCachedModel(arg, opts)) ?? (await pullModel(arg, opts));
  }
  throw new KilnError(
    `"${arg}" is neither a model folder nor a Hugging Face Hub id (org/name, org/name@revision, or org/name:Q4_K_M for a GGUF file)`,
  );
}

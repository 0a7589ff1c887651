/**
 * Talking to a Hugging Face Hub endpoint (or a mirror with the same URL layout, such as one named
 * by HF_ENDPOINT): the pull options, the request context built from them (endpoint, token, fetch,
 * signal, retries), GETs with the token and errors that say what to do, and a repository's file
 * listing.
 */
import { DownloadError } from '../errors.js';
import { hubApiUrl, isCommitHash, type HubId } from '../io/hub-id.js';
import { isJsonObject } from '../io/json.js';

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

/** Options of `pullModel` and `resolveModel` (hub.ts). */
export interface PullOptions {
  /** Hub endpoint; default `$HF_ENDPOINT`, else `https://huggingface.co`. */
  endpoint?: string;
  /** Access token for private or gated repositories; default `$HF_TOKEN`. */
  token?: string;
  /** Cache root; default `kilnCacheDir()` (hub-cache.ts). */
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

/** A file of the repository as its listing describes it. */
export interface Sibling {
  name: string;
  size: number | null;
  sha256: string | null;
}

/** A repository's listing: the commit its revision resolved to, and its files by name. */
export interface RepoInfo {
  commit: string | null;
  siblings: Map<string, Sibling>;
}

/** What every request of one pull needs. */
export interface HubContext {
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

function headers(ctx: HubContext, extra?: Record<string, string>): Record<string, string> {
  const h: Record<string, string> = { ...extra };
  if (ctx.token) h.Authorization = `Bearer ${ctx.token}`;
  return h;
}

export function httpError(ctx: HubContext, status: number, what: string): DownloadError {
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

export async function get(
  ctx: HubContext,
  url: string,
  what: string,
  extra?: Record<string, string>,
): Promise<Response> {
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

export async function fetchRepoInfo(ctx: HubContext): Promise<RepoInfo> {
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

export function hubContext(id: HubId, opts: PullOptions): HubContext {
  return {
    id,
    endpoint: endpointOf(opts),
    token: tokenOf(opts),
    fetch: opts.fetch ?? globalThis.fetch,
    signal: opts.signal,
    retries: Math.max(0, opts.retries ?? 3),
  };
}

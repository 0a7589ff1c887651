/**
 * Hugging Face Hub model ids (`org/name[@revision]`) and the URLs the Hub serves them at. Browser-safe:
 * the Node downloader (src/node/hub.ts) and a browser loader build the same URLs from here.
 */

/** A parsed Hub model id. */
export interface HubId {
  /** `org/name`. */
  repo: string;
  /** Branch, tag or 40-hex commit; `main` when the id names none. */
  revision: string;
}

// The Hub's own rule (huggingface_hub's validate_repo_id): letters, digits, '.', '_' and '-', at most 96
// characters, no '--' or '..', and a name may not start or end with '.' or '-'. Being as strict as the
// Hub means anything that fails here could never be downloaded, and nothing that passes can escape the
// cache folder it is stored under (no '/', no '..').
const PART = /^[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?$/;

// Revisions are git ref names or commits. Git forbids '..', '@{', control characters, spaces and
// ~^:?*[\ in ref names, and components that start with '.'; a slash separates components
// (for example `refs/pr/1`, which the Hub uses for pull requests).
const REVISION = /^[A-Za-z0-9_][A-Za-z0-9._+-]*(?:\/[A-Za-z0-9_][A-Za-z0-9._+-]*)*$/;

/** True when `s` is a full 40-hex git commit hash. */
export function isCommitHash(s: string): boolean {
  return /^[0-9a-f]{40}$/.test(s);
}

function validPart(s: string): boolean {
  return PART.test(s) && !s.includes('--') && !s.includes('..');
}

function validRevision(s: string): boolean {
  return (
    s.length > 0 &&
    s.length <= 255 &&
    REVISION.test(s) &&
    !s.includes('..') &&
    !s.endsWith('.lock') &&
    !s.endsWith('.')
  );
}

/**
 * Parses `org/name` or `org/name@revision` (revision defaults to `main`). Returns null for anything
 * else, including local-looking paths such as `./a/b` or `/x/y`, so callers can try a folder first.
 */
export function parseHubId(s: string): HubId | null {
  const at = s.indexOf('@');
  const repo = at < 0 ? s : s.slice(0, at);
  const revision = at < 0 ? 'main' : s.slice(at + 1);
  const parts = repo.split('/');
  if (parts.length !== 2) return null;
  const [org, name] = parts as [string, string];
  if (!validPart(org) || !validPart(name)) return null;
  if (!validRevision(revision)) return null;
  return { repo, revision };
}

function trimEndpoint(endpoint: string): string {
  return endpoint.replace(/\/+$/, '');
}

/**
 * URL of one file of a repository at a revision: `<endpoint>/<repo>/resolve/<revision>/<file>`. The
 * revision is encoded whole (so `refs/pr/1` stays one path segment, as the Hub expects); the file path
 * is encoded segment by segment so sub-folders keep their slashes.
 */
export function hubFileUrl(endpoint: string, repo: string, revision: string, file: string): string {
  const path = file.split('/').map(encodeURIComponent).join('/');
  return `${trimEndpoint(endpoint)}/${repo}/resolve/${encodeURIComponent(revision)}/${path}`;
}

/**
 * URL of the model-info API for a revision, with `blobs=true` so each sibling carries its size and, for
 * LFS files, its sha256: `<endpoint>/api/models/<repo>/revision/<revision>?blobs=true`.
 */
export function hubApiUrl(endpoint: string, repo: string, revision: string): string {
  return `${trimEndpoint(endpoint)}/api/models/${repo}/revision/${encodeURIComponent(revision)}?blobs=true`;
}

/** A Hub id naming one GGUF file of a repository by its quantization tag (`org/name:Q4_K_M`). */
export interface HubGgufId extends HubId {
  /** The tag as given ('Q4_K_M', 'q8_0', 'F16'); matched case-insensitively. */
  tag: string;
}

const GGUF_TAG = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

/**
 * Parses `org/name:TAG` or `org/name@revision:TAG` (as Ollama and llama.cpp's `-hf` name a GGUF
 * file of a repository). Git refs cannot contain ':', so the last ':' always starts the tag.
 * Returns null for anything else (a plain Hub id included).
 */
export function parseGgufHubId(s: string): HubGgufId | null {
  const colon = s.lastIndexOf(':');
  if (colon < 0) return null;
  const tag = s.slice(colon + 1);
  if (!GGUF_TAG.test(tag)) return null;
  const id = parseHubId(s.slice(0, colon));
  return id === null ? null : { ...id, tag };
}

/**
 * The GGUF files of a repository listing that a tag names: top-level `*.gguf` files whose name
 * holds the tag as a whole word (`Llama-3.2-1B-Instruct-Q4_K_M.gguf` for Q4_K_M, not for Q4_K),
 * case-insensitively; of a split model (`-00001-of-00003.gguf`), its first shard, which opens it.
 */
export function ggufFilesForTag(names: Iterable<string>, tag: string): string[] {
  const t = tag.toLowerCase();
  return [...names].filter((n) => {
    if (n.includes('/') || n.includes('\\') || !/\.gguf$/i.test(n)) return false;
    const shard = /-(\d{5})-of-\d{5}\.gguf$/i.exec(n);
    if (shard && shard[1] !== '00001') return false;
    const stem = shard ? n.slice(0, shard.index) : n.slice(0, -'.gguf'.length);
    // Tags sit between '-' or '.' separators: name-Q4_K_M.gguf, name.Q4_K_M.gguf.
    return stem.toLowerCase().split(/[-.]/).includes(t);
  });
}

/**
 * Kiln's model cache on disk. `<cacheDir>/models/<org>/<name>/<commit>/` holds the files of one
 * commit, so a folder never changes once complete; `<cacheDir>/models/<org>/<name>/.refs/<revision>`
 * records which commit a branch or tag pointed to when it was pulled, so a Hub id resolves offline.
 * When the endpoint reports no commit, the folder is named after the (encoded) revision instead.
 * `.kiln-complete.json` marks a complete folder, `.kiln-verified.json` the files already hashed.
 */
import { readFile, rename, stat, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { type HubId } from '../io/hub-id.js';
import { isJsonObject } from '../io/json.js';

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
export const VERIFIED_RECORD = '.kiln-verified.json';

/** `.kiln-verified.json`: file name to the size and sha256 it was verified against. */
export type VerifiedRecord = Record<string, { size: number; sha256: string }>;

/** `$XDG_CACHE_HOME/kiln`, or `~/.cache/kiln` when XDG_CACHE_HOME is unset or not absolute. */
export function kilnCacheDir(): string {
  const xdg = process.env.XDG_CACHE_HOME;
  // The XDG spec says relative values are invalid and must be ignored.
  if (xdg && isAbsolute(xdg)) return join(xdg, 'kiln');
  return join(homedir(), '.cache', 'kiln');
}

/** The folder of a repository: one subfolder per commit, and `.refs`. */
export function repoDir(cacheDir: string, repo: string): string {
  // parseHubId allows neither '..' nor extra slashes, so org and name are plain folder names.
  const [org, name] = repo.split('/') as [string, string];
  return join(cacheDir, 'models', org, name);
}

/** The file recording the commit a branch or tag resolved to when it was last pulled. */
export function refPath(cacheDir: string, id: HubId): string {
  // Git ref components cannot start with '.', so '.refs' never collides with a revision folder.
  return join(repoDir(cacheDir, id.repo), '.refs', encodeURIComponent(id.revision));
}

/** A JSON file's value, or null when it is missing or not JSON. */
export async function readJsonFile(path: string): Promise<unknown> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as unknown;
  } catch {
    return null;
  }
}

/** Writes via a temporary file and rename, so a crash never leaves half a JSON file behind. */
export async function writeFileAtomic(path: string, text: string): Promise<void> {
  const tmp = `${path}.${process.pid}.tmp`;
  await writeFile(tmp, text);
  await rename(tmp, path);
}

/** The size of a regular file, or null when there is none at `path`. */
export async function sizeOf(path: string): Promise<number | null> {
  try {
    const s = await stat(path);
    return s.isFile() ? s.size : null;
  } catch {
    return null;
  }
}

/** A folder whose marker exists and whose listed files are all still there at their recorded sizes. */
export async function isCompleteDir(dir: string): Promise<boolean> {
  const marker = await readJsonFile(join(dir, COMPLETE_MARKER));
  if (!isJsonObject(marker) || !Array.isArray(marker.files)) return false;
  for (const f of marker.files as unknown[]) {
    if (!isJsonObject(f) || typeof f.name !== 'string' || f.name.includes('/') || f.name.includes('\\'))
      return false;
    if ((await sizeOf(join(dir, f.name))) !== f.size) return false;
  }
  return true;
}

/**
 * The tuning cache on disk: one JSON file per adapter signature under
 * `$XDG_CACHE_HOME/kiln/tuning` (or `~/.cache/kiln/tuning`), written atomically (a temporary file,
 * then a rename), so a crash mid-write leaves the old file or the new one, never half of one.
 */
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { TuneStore } from '../tuner/cache.js';
import { kilnCacheDir } from './hub-cache.js';

export class FileTuneStore implements TuneStore {
  constructor(readonly dir: string = join(kilnCacheDir(), 'tuning')) {}

  get where(): string {
    return this.dir;
  }

  path(id: string): string {
    if (!/^[0-9a-f]{16}$/.test(id)) throw new RangeError(`tuning cache id ${id}`);
    return join(this.dir, `${id}.json`);
  }

  async read(id: string): Promise<string | null> {
    try {
      return await readFile(this.path(id), 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
  }

  async write(id: string, text: string): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    const tmp = `${this.path(id)}.${process.pid}.tmp`;
    await writeFile(tmp, text, 'utf8');
    await rename(tmp, this.path(id));
  }
}

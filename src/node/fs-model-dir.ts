/**
 * ModelDir over the local filesystem for Node: random-access reads through a FileHandle, so a
 * tensor is read without loading its whole shard.
 */
import { statSync } from 'node:fs';
import { open, stat, type FileHandle } from 'node:fs/promises';
import { resolve, sep } from 'node:path';
import { InvalidModelFileError, KilnError } from '../errors.js';
import {
  checkReadRange,
  MAX_TEXT_FILE_BYTES,
  textFileTooLarge,
  type ByteSource,
  type ModelDir,
} from '../io/byte-source.js';

class FileByteSource implements ByteSource {
  private closed = false;

  constructor(
    readonly name: string,
    readonly size: number,
    private readonly handle: FileHandle,
  ) {}

  async read(offset: number, length: number): Promise<Uint8Array> {
    checkReadRange(this.name, this.size, offset, length);
    if (this.closed) throw new KilnError(`${this.name}: read after close`);
    const out = new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.handle.read(out, done, length - done, offset + done);
      // The size was taken at open; a file that shrank since then ends early.
      if (bytesRead === 0) {
        throw new InvalidModelFileError(
          `${this.name} is truncated: got ${done} of ${length} bytes at offset ${offset} (file shrank?)`,
        );
      }
      done += bytesRead;
    }
    return out;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.handle.close();
  }
}

/**
 * A ModelDir over the folder at `path`. Throws at once when the folder does not exist. File names
 * may contain subfolders but must stay inside the folder.
 */
export function openLocalModelDir(path: string): ModelDir {
  const root = resolve(path);
  let isDir: boolean;
  try {
    isDir = statSync(root).isDirectory();
  } catch (e) {
    throw new InvalidModelFileError(`model folder ${path} does not exist or cannot be read`, { cause: e });
  }
  if (!isDir) throw new InvalidModelFileError(`model folder ${path} is not a folder`);

  const base = root.endsWith(sep) ? root : root + sep;
  const fileIn = (file: string): string => {
    const p = resolve(root, file);
    if (!p.startsWith(base)) {
      throw new InvalidModelFileError(
        `file name ${JSON.stringify(file)} points outside the model folder ${path}`,
      );
    }
    return p;
  };

  return {
    location: path,
    async exists(file: string): Promise<boolean> {
      try {
        return (await stat(fileIn(file))).isFile();
      } catch (e) {
        if (e instanceof KilnError) throw e;
        return false;
      }
    },
    async open(file: string): Promise<ByteSource> {
      const p = fileIn(file);
      let handle: FileHandle;
      try {
        handle = await open(p, 'r');
      } catch (e) {
        throw new InvalidModelFileError(`cannot open ${file} in ${path}: ${(e as Error).message}`, {
          cause: e,
        });
      }
      try {
        const { size } = await handle.stat();
        return new FileByteSource(p, size, handle);
      } catch (e) {
        await handle.close();
        throw e;
      }
    },
    async readText(file: string): Promise<string> {
      const p = fileIn(file);
      let handle: FileHandle;
      try {
        handle = await open(p, 'r');
      } catch (e) {
        throw new InvalidModelFileError(`cannot read ${file} in ${path}: ${(e as Error).message}`, {
          cause: e,
        });
      }
      try {
        const { size } = await handle.stat();
        if (size > MAX_TEXT_FILE_BYTES) throw textFileTooLarge(file, path, String(size));
        return await handle.readFile('utf8');
      } catch (e) {
        if (e instanceof KilnError) throw e;
        throw new InvalidModelFileError(`cannot read ${file} in ${path}: ${(e as Error).message}`, {
          cause: e,
        });
      } finally {
        await handle.close();
      }
    },
  };
}

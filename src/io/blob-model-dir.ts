/**
 * ModelDir over Blobs: files the browser already holds, such as a folder the user picked
 * (`<input webkitdirectory>`, `showDirectoryPicker`) or responses stored in the Cache API. A read
 * is a Blob slice, so the browser fetches just those bytes from disk and a multi-GB shard never
 * lands whole on the JS heap.
 */
import { InvalidModelFileError } from '../errors.js';
import {
  checkReadRange,
  MAX_TEXT_FILE_BYTES,
  textFileTooLarge,
  type ByteSource,
  type ModelDir,
} from './byte-source.js';

class BlobByteSource implements ByteSource {
  constructor(
    readonly name: string,
    private readonly blob: Blob,
  ) {}

  get size(): number {
    return this.blob.size;
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    checkReadRange(this.name, this.size, offset, length);
    if (length === 0) return new Uint8Array(0);
    const bytes = new Uint8Array(await this.blob.slice(offset, offset + length).arrayBuffer());
    // A file changed on disk after it was picked reads short instead of failing.
    if (bytes.byteLength !== length) {
      throw new InvalidModelFileError(
        `${this.name} is truncated: got ${bytes.byteLength} of ${length} bytes at offset ${offset} (changed since it was opened?)`,
      );
    }
    return bytes;
  }

  async close(): Promise<void> {}
}

/**
 * A ModelDir whose files are `files` (paths relative to the model folder, `/`-separated). Files not
 * in the map do not exist.
 */
export function blobModelDir(location: string, files: ReadonlyMap<string, Blob>): ModelDir {
  const get = (file: string): Blob => {
    const blob = files.get(file);
    if (!blob) throw new InvalidModelFileError(`${file} not found in ${location}`);
    return blob;
  };
  return {
    location,
    async exists(file: string): Promise<boolean> {
      return files.has(file);
    },
    async open(file: string): Promise<ByteSource> {
      return new BlobByteSource(`${location}/${file}`, get(file));
    },
    async readText(file: string): Promise<string> {
      const blob = get(file);
      if (blob.size > MAX_TEXT_FILE_BYTES) throw textFileTooLarge(file, location, String(blob.size));
      // As Response.text(): UTF-8, a leading BOM dropped, invalid bytes replaced.
      return new TextDecoder().decode(await blob.arrayBuffer());
    },
  };
}

/**
 * The files of a folder picked with `<input type="file" webkitdirectory>`: each File's
 * `webkitRelativePath` starts with the picked folder's name, which is dropped, so `config.json` at
 * the folder's top is found as `config.json`. Returns the folder's name and its files.
 */
export function pickedFolderFiles(picked: Iterable<File>): { name: string; files: Map<string, Blob> } {
  const files = new Map<string, Blob>();
  let name = '';
  for (const f of picked) {
    const path = f.webkitRelativePath || f.name;
    const slash = path.indexOf('/');
    if (slash < 0) files.set(path, f);
    else {
      name ||= path.slice(0, slash);
      files.set(path.slice(slash + 1), f);
    }
  }
  return { name: name || 'local folder', files };
}

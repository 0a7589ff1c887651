/**
 * A GGUF model is one file, where a Hugging Face model is a folder: a GgufModelDir is the folder
 * that holds the file (local, over HTTP, or Blobs) plus the file's name, so every place that takes
 * a ModelDir (the engine, the browser loader, the CLI) takes a GGUF model too, and asks
 * {@link isGgufModelDir} which one it got.
 */
import type { ByteSource, ModelDir } from './byte-source.js';

export interface GgufModelDir extends ModelDir {
  /** The GGUF file's name inside the folder. */
  readonly ggufFile: string;
}

/** True for a file name that names a GGUF file (`*.gguf`, any case). */
export function isGgufFileName(name: string): boolean {
  return /\.gguf$/i.test(name);
}

/**
 * The folder URL (with its trailing slash, no query) and the file name of a URL whose path names a
 * `.gguf` file, else null (a model folder's URL).
 */
export function ggufFileOfUrl(url: string): { base: string; file: string } | null {
  const u = new URL(url);
  const slash = u.pathname.lastIndexOf('/');
  const file = decodeURIComponent(u.pathname.slice(slash + 1));
  if (!isGgufFileName(file)) return null;
  u.pathname = u.pathname.slice(0, slash + 1);
  u.search = '';
  u.hash = '';
  return { base: u.href, file };
}

/** The GGUF file `file` of the folder `dir`, as a model. */
export function ggufModelDir(dir: ModelDir, file: string): GgufModelDir {
  return {
    location: `${dir.location.replace(/\/+$/, '')}/${file}`,
    ggufFile: file,
    exists: (f: string): Promise<boolean> => dir.exists(f),
    open: (f: string): Promise<ByteSource> => dir.open(f),
    readText: (f: string): Promise<string> => dir.readText(f),
  };
}

export function isGgufModelDir(dir: ModelDir): dir is GgufModelDir {
  return typeof (dir as Partial<GgufModelDir>).ggufFile === 'string';
}

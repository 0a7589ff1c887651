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

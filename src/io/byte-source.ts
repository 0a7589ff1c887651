import { InvalidModelFileError, KilnError } from '../errors.js';

/**
 * The largest text file (config.json, the safetensors index, tokenizer.json, chat templates) a
 * ModelDir reads whole. The biggest real one is tokenizer.json, about 10-20 MB for vocabularies of
 * 150k-260k tokens; 64 MiB leaves room for those while a hostile or mistaken multi-GB "json" file is
 * refused before it lands on the heap.
 */
export const MAX_TEXT_FILE_BYTES = 64 * 2 ** 20;

/** The error for a text file over {@link MAX_TEXT_FILE_BYTES}; `size` is what is known of its size. */
export function textFileTooLarge(file: string, location: string, size: string): InvalidModelFileError {
  return new InvalidModelFileError(
    `${file} in ${location} is ${size} bytes, over the ${MAX_TEXT_FILE_BYTES}-byte limit for text files`,
  );
}

/**
 * Checks the arguments of {@link ByteSource.read}: whole non-negative numbers (a KilnError, as that
 * is the caller's bug) that stay inside the file's `size` bytes (an InvalidModelFileError, as a
 * header that points past the end means a truncated file).
 */
export function checkReadRange(name: string, size: number, offset: number, length: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
    throw new KilnError(`${name}: invalid read of ${length} bytes at offset ${offset}`);
  }
  if (offset + length > size) {
    throw new InvalidModelFileError(
      `${name} is truncated: wanted bytes ${offset}..${offset + length} but the file is ${size} bytes`,
    );
  }
}

/**
 * How the core reads files without knowing where they live. Node implements these over file handles
 * (src/node/fs-model-dir.ts); the browser over fetch with Range requests (src/io/http-model-dir.ts).
 * Reads are random-access and bounded so a multi-GB shard never lands whole on the JS heap.
 */
export interface ByteSource {
  /** File name, for error messages. */
  readonly name: string;
  /** Total size in bytes. */
  readonly size: number;
  /** Reads exactly `length` bytes at `offset`; rejects if the file is shorter. */
  read(offset: number, length: number): Promise<Uint8Array>;
  close(): Promise<void>;
}

/** A model folder in Hugging Face layout (config.json, *.safetensors, tokenizer.json, ...). */
export interface ModelDir {
  /** Human-readable location, for messages. */
  readonly location: string;
  exists(file: string): Promise<boolean>;
  open(file: string): Promise<ByteSource>;
  /** A whole text file, decoded as UTF-8; files over {@link MAX_TEXT_FILE_BYTES} are refused. */
  readText(file: string): Promise<string>;
}

/** Reads and parses a JSON file of a model folder, naming the file when it is not valid JSON. */
export async function readJson(dir: ModelDir, file: string): Promise<unknown> {
  const text = await dir.readText(file);
  try {
    return JSON.parse(text) as unknown;
  } catch (e) {
    throw new InvalidModelFileError(`${file} in ${dir.location} is not valid JSON: ${(e as Error).message}`);
  }
}

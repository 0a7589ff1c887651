import { InvalidModelFileError } from '../errors.js';

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

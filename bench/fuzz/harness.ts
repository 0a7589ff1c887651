/**
 * The fuzz harness the targets share: what a target is, how a case's end is judged (success, or a
 * Kiln error class with a message; anything else is a crash), the broken-promise error, and the
 * ByteSources that fail a case when a parser reads more than twice its file (a hostile size must
 * not become an unbounded allocation).
 */
import type fc from 'fast-check';
import { KilnError } from '../../src/errors.js';
import { blobModelDir } from '../../src/io/blob-model-dir.js';
import type { ByteSource, ModelDir } from '../../src/io/byte-source.js';

/** How a case ended: 'ok', or the name of the Kiln error class it was refused with. */
export type Outcome = string;

/** A parser under fuzzing: inputs and the run of one case. */
export interface FuzzTarget<T = unknown> {
  readonly name: string;
  readonly input: fc.Arbitrary<T>;
  /** Resolves to the outcome; rejects (a non-Kiln error) on a crash or a broken promise. */
  run(input: T): Promise<Outcome>;
}

/** Real files the targets start from (read by the caller: the core of a target needs no fs). */
export interface FuzzData {
  /** The tok105 SentencePiece model (BabyLlama's tokenizer). */
  tokenizerModel: Uint8Array;
  /** Real chat templates (Llama 3, Qwen3, Gemma 3). */
  chatTemplates: string[];
}

/** A broken promise of a parser that returned normally (not a Kiln error: the case fails). */
export class FuzzViolation extends Error {
  override name = 'FuzzViolation';
}

export function check(cond: boolean, what: string): void {
  if (!cond) throw new FuzzViolation(what);
}

export async function outcome(fn: () => Promise<void>): Promise<Outcome> {
  try {
    await fn();
    return 'ok';
  } catch (e) {
    if (e instanceof KilnError && !(e instanceof FuzzViolation)) {
      check(e.message.length > 0, `${e.name} without a message`);
      return e.name;
    }
    throw e;
  }
}

/** A ModelDir over in-memory files whose reads are counted against twice each file's size. */
export function boundedDir(files: Record<string, Uint8Array | string>): ModelDir {
  const blobs = new Map<string, Blob>();
  for (const [k, v] of Object.entries(files)) blobs.set(k, new Blob([v as BlobPart]));
  const inner = blobModelDir('fuzz', blobs);
  return {
    location: inner.location,
    exists: (f) => inner.exists(f),
    readText: (f) => inner.readText(f),
    async open(f) {
      return bounded(await inner.open(f));
    },
  };
}

export function bounded(src: ByteSource): ByteSource {
  let total = 0;
  return {
    name: src.name,
    size: src.size,
    async read(offset, length) {
      total += length;
      if (total > 2 * src.size + 1024) {
        throw new FuzzViolation(`${src.name}: read ${total} bytes of a ${src.size}-byte file`);
      }
      return src.read(offset, length);
    },
    close: () => src.close(),
  };
}

export function bytesSource(name: string, bytes: Uint8Array): ByteSource {
  const blob = new Blob([bytes as BlobPart]);
  return bounded({
    name,
    size: blob.size,
    async read(offset, length) {
      // The same checks as every real source (blob-model-dir.ts), through a one-file dir.
      const dir = blobModelDir('fuzz', new Map([[name, blob]]));
      return (await dir.open(name)).read(offset, length);
    },
    close: async () => undefined,
  });
}

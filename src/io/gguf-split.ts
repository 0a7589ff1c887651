/**
 * GGUF files split into shards, as llama.cpp's gguf-split (and the converter's --split-max-size)
 * writes them: `<prefix>-00001-of-00003.gguf` ... each a whole GGUF file of its own, the first
 * holding every metadata key, each holding `split.no` (0-based), `split.count` and
 * `split.tensors.count` (the tensors of all shards). Opened from the first shard, a split model is
 * one GgufHeader over one ByteSource: the shards' bytes laid end to end, every tensor's offset
 * moved by the sizes of the shards before its own, so the rest of Kiln reads it as one file.
 */
import { InvalidModelFileError, KilnError } from '../errors.js';
import type { ByteSource, ModelDir } from './byte-source.js';
import { parseGgufHeader, type GgufHeader, type GgufLimits, type GgufTensorInfo } from './gguf.js';

/** A shard's name: prefix, its number (1-based) and the count, five digits each. */
const SHARD_NAME = /^(.*)-(\d{5})-of-(\d{5})\.gguf$/i;

/** gguf-split's five-digit numbering caps a split at 99999 shards. */
const MAX_SHARDS = 99999;

/** The name of shard `no` (0-based) of `count` with `prefix`, as gguf-split names it. */
export function ggufShardName(prefix: string, no: number, count: number): string {
  return `${prefix}-${String(no + 1).padStart(5, '0')}-of-${String(count).padStart(5, '0')}.gguf`;
}

/** True for a shard name other than the first's (`-00002-of-00003.gguf`). */
export function isLaterGgufShard(name: string): boolean {
  const m = SHARD_NAME.exec(name);
  return m !== null && Number(m[2]) > 1;
}

/** A GGUF model as one file: its header and the source its tensors' offsets point into. */
export interface OpenGguf {
  header: GgufHeader;
  source: ByteSource;
  /** The files read, in order, with their sizes (one for an unsplit file). */
  shards: { name: string; size: number }[];
}

/** The shards' bytes end to end; a read stays within one shard, as every tensor does. */
class ShardsSource implements ByteSource {
  readonly size: number;
  private readonly starts: number[] = [];

  constructor(
    readonly name: string,
    private readonly parts: readonly ByteSource[],
  ) {
    let at = 0;
    for (const p of parts) {
      this.starts.push(at);
      at += p.size;
    }
    this.size = at;
  }

  read(offset: number, length: number): Promise<Uint8Array> {
    let i = this.parts.length - 1;
    while (i > 0 && (this.starts[i] as number) > offset) i--;
    const part = this.parts[i] as ByteSource;
    const start = this.starts[i] as number;
    if (offset < 0 || offset + length > start + part.size) {
      return Promise.reject(
        new KilnError(
          `${this.name}: a read of ${length} bytes at ${offset} crosses the end of shard ${part.name}`,
        ),
      );
    }
    return part.read(offset - start, length);
  }

  async close(): Promise<void> {
    await Promise.all(this.parts.map((p) => p.close()));
  }
}

/** `split.*` of a header: undefined for an unsplit file. */
function splitKeys(h: GgufHeader): { no: number; count: number; tensors: number | undefined } | undefined {
  const m = h.metadata;
  const count = m.optionalUint('split.count', MAX_SHARDS);
  if (count === undefined) return undefined;
  if (count < 1)
    throw new InvalidModelFileError(`${h.file}: metadata split.count is 0, expected 1..${MAX_SHARDS}`);
  const no = m.uint('split.no', count - 1);
  return { no, count, tensors: m.optionalUint('split.tensors.count') };
}

/**
 * Opens the GGUF file `file` of `dir`, with its other shards when it is the first of a split:
 * every shard is checked to be the one its name says (split.no, split.count), no tensor to appear
 * twice and their number to be the first shard's split.tensors.count. A later shard, a missing one
 * or inconsistent split keys end in an InvalidModelFileError naming the file and the key.
 */
export async function openGguf(
  dir: ModelDir,
  file: string,
  limits: Partial<GgufLimits> = {},
): Promise<OpenGguf> {
  const opened: ByteSource[] = [];
  try {
    const first = await dir.open(file);
    opened.push(first);
    const header = await parseGgufHeader(first, limits);
    const split = splitKeys(header);
    if (split === undefined || (split.count === 1 && split.no === 0)) {
      return { header, source: first, shards: [{ name: file, size: first.size }] };
    }
    const m = SHARD_NAME.exec(file);
    if (split.no !== 0) {
      const hint = m ? `; open the first, ${ggufShardName(m[1] as string, 0, split.count)}` : '';
      throw new InvalidModelFileError(
        `${file} is shard ${split.no + 1} of ${split.count} of a split GGUF model${hint}`,
      );
    }
    if (!m || Number(m[2]) !== 1 || Number(m[3]) !== split.count) {
      throw new InvalidModelFileError(
        `${file}: metadata split.count is ${split.count}, but the name is not the first shard's (<name>-00001-of-${String(split.count).padStart(5, '0')}.gguf)`,
      );
    }
    const prefix = m[1] as string;
    const tensors = new Map<string, GgufTensorInfo>(header.tensors);
    const owner = new Map<string, string>([...header.tensors.keys()].map((t) => [t, file]));
    const shards = [{ name: file, size: first.size }];
    let base = first.size;
    for (let no = 1; no < split.count; no++) {
      const name = ggufShardName(prefix, no, split.count);
      if (!(await dir.exists(name))) {
        throw new InvalidModelFileError(
          `${file}: shard ${name} (${no + 1} of ${split.count}, as split.count says) is missing in ${dir.location}`,
        );
      }
      const src = await dir.open(name);
      opened.push(src);
      const h = await parseGgufHeader(src, limits);
      const s = splitKeys(h);
      if (s?.no !== no || s.count !== split.count) {
        throw new InvalidModelFileError(
          `${name}: metadata split.no / split.count are ${s ? `${s.no} / ${s.count}` : 'missing'}, expected ${no} / ${split.count} (shard ${no + 1} of ${file})`,
        );
      }
      for (const t of h.tensors.values()) {
        const other = owner.get(t.name);
        if (other !== undefined) {
          throw new InvalidModelFileError(`${name}: tensor ${JSON.stringify(t.name)} is also in ${other}`);
        }
        owner.set(t.name, name);
        tensors.set(t.name, { ...t, fileOffset: base + t.fileOffset });
      }
      shards.push({ name, size: src.size });
      base += src.size;
    }
    if (split.tensors !== undefined && split.tensors !== tensors.size) {
      throw new InvalidModelFileError(
        `${file}: metadata split.tensors.count is ${split.tensors}, but the ${split.count} shards hold ${tensors.size} tensors`,
      );
    }
    return { header: { ...header, tensors }, source: new ShardsSource(file, opened), shards };
  } catch (e) {
    await Promise.all(opened.map((s) => s.close()));
    throw e;
  }
}

/**
 * The source of a GGUF model opened before (its shards, as {@link openGguf} listed them), for a
 * later read of its tensors; a shard whose size changed since is refused.
 */
export async function reopenGguf(
  dir: ModelDir,
  shards: readonly { name: string; size: number }[],
): Promise<ByteSource> {
  const opened: ByteSource[] = [];
  try {
    for (const s of shards) {
      const src = await dir.open(s.name);
      opened.push(src);
      if (src.size !== s.size) {
        throw new InvalidModelFileError(`${s.name} changed while open: ${src.size} bytes, was ${s.size}`);
      }
    }
  } catch (e) {
    await Promise.all(opened.map((s) => s.close()));
    throw e;
  }
  return opened.length === 1 ? (opened[0] as ByteSource) : new ShardsSource(shards[0]?.name ?? '', opened);
}

/**
 * One file of a Hub repository into a cache folder: written to `<file>.part`, resumed after a
 * dropped connection, capped in size, checked (size, and sha256 for LFS files) and only then
 * renamed into place, so a file under its final name has always been verified.
 */
import { createHash, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { DownloadError } from '../errors.js';
import { MAX_TEXT_FILE_BYTES } from '../io/byte-source.js';
import { hubFileUrl } from '../io/hub-id.js';
import { sizeOf, VERIFIED_RECORD, writeFileAtomic, type VerifiedRecord } from './hub-cache.js';
import { get, httpError, type HubContext, type PullOptions, type Sibling } from './hub-client.js';

/**
 * The most bytes one weights file may have. Hub checkpoints are sharded (transformers writes shards
 * of 5 GB by default, 10 GB at most in practice), so 64 GiB is far above any real shard while still
 * stopping a server that streams without end from filling the disk.
 */
export const MAX_WEIGHTS_FILE_BYTES = 64 * 2 ** 30;

/** The most bytes Kiln downloads for `file`: {@link MAX_WEIGHTS_FILE_BYTES} for weights, else the text-file cap. */
export function maxDownloadBytes(file: string): number {
  return file.endsWith('.safetensors') ? MAX_WEIGHTS_FILE_BYTES : MAX_TEXT_FILE_BYTES;
}

/** Streams a file (or its first `length` bytes) through `hash`, never holding it in memory. */
async function hashFile(path: string, hash: Hash, length?: number): Promise<void> {
  if (length === 0) return;
  const stream = createReadStream(path, length === undefined ? {} : { end: length - 1 });
  for await (const chunk of stream) hash.update(chunk as Buffer);
}

/** Makes files present and verified in one folder, counting the bytes of a pull for its progress reports. */
export class Downloader {
  bytes = 0;
  total: number;
  // Files whose size only a response told, already added to `total` (so a retry does not add it twice).
  private readonly counted = new Set<string>();

  constructor(
    private readonly ctx: HubContext,
    private readonly dir: string,
    private readonly record: VerifiedRecord,
    private readonly onProgress: PullOptions['onProgress'],
    total: number,
  ) {
    this.total = total;
  }

  private report(file: string, fileBytes: number, fileTotal: number): void {
    this.onProgress?.({ file, fileBytes, fileTotal, bytes: this.bytes, total: this.total });
  }

  /**
   * Whether `s` is already in place. A file under its final name was verified before its rename; the
   * record says against which sha256, so a repeat pull skips it without re-reading. A file missing
   * from the record (e.g. a crash between rename and record update) is re-hashed once.
   */
  private async complete(s: Sibling): Promise<boolean> {
    const size = await sizeOf(join(this.dir, s.name));
    if (size === null || (s.size !== null && size !== s.size)) return false;
    if (!s.sha256) return true;
    const known = this.record[s.name];
    if (known && known.size === size && known.sha256 === s.sha256) return true;
    const hash = createHash('sha256');
    await hashFile(join(this.dir, s.name), hash);
    if (hash.digest('hex') !== s.sha256) return false;
    await this.remember(s.name, size, s.sha256);
    return true;
  }

  private async remember(name: string, size: number, sha256: string): Promise<void> {
    this.record[name] = { size, sha256 };
    await writeFileAtomic(join(this.dir, VERIFIED_RECORD), JSON.stringify(this.record, null, 2) + '\n');
  }

  /** Makes `s` present and verified under its final name; returns its size. */
  async ensure(s: Sibling): Promise<number> {
    if (await this.complete(s)) {
      const size = (await sizeOf(join(this.dir, s.name))) ?? 0;
      this.bytes += size;
      this.report(s.name, size, size);
      return size;
    }
    const startBytes = this.bytes;
    for (let attempt = 0; ; attempt++) {
      this.bytes = startBytes;
      try {
        const size = await this.download(s);
        this.bytes = startBytes + size;
        return size;
      } catch (e) {
        // Only a dropped connection is worth resuming; HTTP and verification errors would repeat.
        if (!(e instanceof InterruptedError) || attempt >= this.ctx.retries || this.ctx.signal?.aborted) {
          throw e instanceof InterruptedError ? e.toDownloadError() : e;
        }
      }
    }
  }

  private tooLarge(s: Sibling, size: number, how: string): DownloadError {
    const cap = maxDownloadBytes(s.name);
    return new DownloadError(
      `${s.name} of ${this.ctx.id.repo}@${this.ctx.id.revision} ${how} ${size} bytes, over the ` +
        `${cap}-byte limit for ${s.name.endsWith('.safetensors') ? 'a weights' : 'a text'} file`,
    );
  }

  private async download(s: Sibling): Promise<number> {
    const final = join(this.dir, s.name);
    const part = `${final}.part`;
    if (s.size !== null && s.size > maxDownloadBytes(s.name)) throw this.tooLarge(s, s.size, 'is listed at');
    let have = (await sizeOf(part)) ?? 0;
    if (s.size !== null && have > s.size) {
      await rm(part, { force: true });
      have = 0;
    }
    const hash = createHash('sha256');
    let fileTotal = s.size ?? 0;
    if (have > 0 && s.size !== null && have === s.size) {
      // Fully downloaded by an earlier run that stopped before verifying: no request needed.
      await hashFile(part, hash, have);
    } else {
      const url = hubFileUrl(this.ctx.endpoint, this.ctx.id.repo, this.ctx.id.revision, s.name);
      const what = `downloading ${s.name}`;
      const res = await get(this.ctx, url, what, have > 0 ? { Range: `bytes=${have}-` } : undefined);
      let append = false;
      if (res.status === 206 && have > 0 && rangeStart(res.headers.get('content-range')) === have) {
        append = true;
      } else if (res.status === 416) {
        // The part no longer matches the remote file; start over on the next attempt.
        await res.body?.cancel();
        await rm(part, { force: true });
        throw new InterruptedError(s.name, 0, 'the server refused to resume (HTTP 416)');
      } else if (!res.ok || res.status === 206) {
        await res.body?.cancel();
        if (res.status === 206) {
          // A range we did not ask for: discard the part rather than splice mismatched bytes.
          await rm(part, { force: true });
          throw new InterruptedError(s.name, 0, 'the server answered with an unexpected range');
        }
        throw httpError(this.ctx, res.status, what);
      }
      if (append) {
        await hashFile(part, hash, have);
      } else {
        have = 0; // HTTP 200: the server sends the whole file, so the part starts over.
      }
      const length = Number(res.headers.get('content-length'));
      if (s.size === null && Number.isSafeInteger(length) && length >= 0) fileTotal = have + length;
      if (fileTotal > maxDownloadBytes(s.name)) {
        await res.body?.cancel();
        throw this.tooLarge(s, fileTotal, 'is announced at');
      }
      if (s.size === null && fileTotal > 0 && !this.counted.has(s.name)) {
        this.total += fileTotal;
        this.counted.add(s.name);
      }
      have = await this.receive(res, part, append, hash, have, s, fileTotal);
    }
    await this.verify(s, part, have, fileTotal, hash.digest('hex'));
    await rename(part, final);
    if (s.sha256) await this.remember(s.name, have, s.sha256);
    return have;
  }

  /** Streams the body into the part file chunk by chunk; returns the part's size when the body ends. */
  private async receive(
    res: Response,
    part: string,
    append: boolean,
    hash: Hash,
    start: number,
    s: Sibling,
    fileTotal: number,
  ): Promise<number> {
    const fh = await open(part, append ? 'a' : 'w');
    const expected = s.size ?? (fileTotal > 0 ? fileTotal : null);
    // Without a known size the cap is all that bounds the body.
    const cap = maxDownloadBytes(s.name);
    let have = start;
    let overflow = false;
    const base = this.bytes;
    try {
      const body = res.body;
      if (!body) return have;
      const reader = body.getReader();
      for (;;) {
        let chunk: ReadableStreamReadResult<Uint8Array>;
        try {
          chunk = await reader.read();
        } catch (e) {
          if (this.ctx.signal?.aborted) throw e;
          throw new InterruptedError(s.name, have, (e as Error).message);
        }
        if (chunk.done) break;
        await fh.write(chunk.value);
        hash.update(chunk.value);
        have += chunk.value.byteLength;
        if (expected !== null && have > expected) {
          // Stop a server that sends more than it promised instead of filling the disk.
          await reader.cancel();
          break;
        }
        if (have > cap) {
          await reader.cancel();
          overflow = true;
          break;
        }
        this.bytes = base + have;
        this.report(s.name, have, fileTotal);
      }
    } finally {
      await fh.close();
    }
    if (overflow) {
      await rm(part, { force: true });
      throw this.tooLarge(s, have, 'passed');
    }
    if (expected !== null && have < expected) {
      throw new InterruptedError(s.name, have, `the connection closed after ${have} of ${expected} bytes`);
    }
    return have;
  }

  private async verify(
    s: Sibling,
    part: string,
    size: number,
    fileTotal: number,
    sha: string,
  ): Promise<void> {
    const expectedSize = s.size ?? (fileTotal > 0 ? fileTotal : null);
    let problem: string | null = null;
    if (expectedSize !== null && size !== expectedSize) {
      problem = `size mismatch: expected ${expectedSize} bytes, got ${size}`;
    } else if (s.sha256 && sha !== s.sha256) {
      problem = `sha256 mismatch: expected ${s.sha256}, got ${sha}`;
    }
    if (problem) {
      // The bytes are wrong, so resuming from them would be too: delete the part.
      await rm(part, { force: true });
      throw new DownloadError(
        `${s.name} of ${this.ctx.id.repo}@${this.ctx.id.revision} failed to verify: ${problem}`,
      );
    }
  }
}

/** A download that stopped midway; the part file is kept for resuming. */
class InterruptedError extends Error {
  constructor(
    readonly file: string,
    readonly have: number,
    readonly reason: string,
  ) {
    super(`download of ${file} interrupted after ${have} bytes: ${reason}`);
  }
  toDownloadError(): DownloadError {
    return new DownloadError(`${this.message}; run the command again to resume`, { cause: this });
  }
}

function rangeStart(contentRange: string | null): number | null {
  const m = /^bytes (\d+)-\d+\/(?:\d+|\*)$/.exec(contentRange?.trim() ?? '');
  return m ? Number(m[1]) : null;
}

/**
 * ModelDir over HTTP for the browser (and any runtime with fetch): sizes come from HEAD (or a
 * one-byte Range request), and every read is a Range request whose status and length are checked,
 * so a tensor is fetched on its own instead of downloading a whole multi-GB shard. A server that
 * ignores Range still serves reads near a file's start (headers), from the start of its 200 body.
 */
import { DownloadError, InvalidModelFileError } from '../errors.js';
import {
  checkReadRange,
  MAX_TEXT_FILE_BYTES,
  textFileTooLarge,
  type ByteSource,
  type ModelDir,
} from './byte-source.js';

/** Options of {@link httpModelDir}. */
export interface HttpModelDirInit {
  /** The fetch to use (defaults to the global one); lets callers add caching or auth. */
  fetch?: typeof fetch;
  /** Headers sent with every request, e.g. `Authorization`. */
  headers?: Record<string, string>;
}

type Request = (method: 'GET' | 'HEAD', url: string, range?: string) => Promise<Response>;

async function discard(res: Response): Promise<void> {
  try {
    await res.body?.cancel();
  } catch {
    // The body is unwanted; failing to cancel it only wastes bandwidth.
  }
}

function status(res: Response): string {
  return `${res.status}${res.statusText ? ` ${res.statusText}` : ''}`;
}

/** "bytes 0-0/1234" -> { start: 0, end: 0, total: 1234 }; "bytes * /1234" -> total only. */
function parseContentRange(
  header: string | null,
): { start?: number; end?: number; total?: number } | undefined {
  if (header === null) return undefined;
  const m = /^bytes\s+(?:(\d+)-(\d+)|\*)\/(\d+|\*)$/i.exec(header.trim());
  if (!m) return undefined;
  const num = (s: string | undefined) => (s === undefined || s === '*' ? undefined : Number(s));
  return { start: num(m[1]), end: num(m[2]), total: num(m[3]) };
}

function parseLength(header: string | null): number | undefined {
  if (header === null || !/^\d+$/.test(header.trim())) return undefined;
  const n = Number(header.trim());
  return Number.isSafeInteger(n) ? n : undefined;
}

/**
 * Reads a response body chunk by chunk, and cancels it as soon as it passes `limit` bytes (then
 * returns null): a server that sends more than was asked for is not buffered whole first.
 */
async function readBody(res: Response, limit: number, what: string): Promise<Uint8Array | null> {
  const reader = res.body?.getReader();
  if (!reader) return new Uint8Array(0);
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    let chunk: ReadableStreamReadResult<Uint8Array>;
    try {
      chunk = await reader.read();
    } catch (e) {
      throw new DownloadError(`${what} failed while reading the body: ${(e as Error).message}`, { cause: e });
    }
    if (chunk.done) break;
    total += chunk.value.byteLength;
    if (total > limit) {
      await reader.cancel().catch(() => undefined);
      return null;
    }
    chunks.push(chunk.value);
  }
  if (chunks.length === 1) return chunks[0]!;
  const out = new Uint8Array(total);
  let pos = 0;
  for (const c of chunks) {
    out.set(c, pos);
    pos += c.byteLength;
  }
  return out;
}

/**
 * How far into a file a read may reach when the server ignores Range requests (answers 200 with
 * the whole file, as `python3 -m http.server` does): such a read streams the file from its start
 * and cancels the rest, which is fine for headers but would download a shard for a tensor.
 */
export const MAX_RANGELESS_READ_BYTES = MAX_TEXT_FILE_BYTES;

/** The first `need` bytes of a body (cancelling the rest), or null when it is shorter. */
async function readPrefix(res: Response, need: number, what: string): Promise<Uint8Array | null> {
  const reader = res.body?.getReader();
  if (!reader) return null;
  const out = new Uint8Array(need);
  let got = 0;
  while (got < need) {
    let chunk: ReadableStreamReadResult<Uint8Array>;
    try {
      chunk = await reader.read();
    } catch (e) {
      throw new DownloadError(`${what} failed while reading the body: ${(e as Error).message}`, { cause: e });
    }
    if (chunk.done) return null;
    const take = Math.min(chunk.value.byteLength, need - got);
    out.set(chunk.value.subarray(0, take), got);
    got += take;
  }
  await reader.cancel().catch(() => undefined);
  return out;
}

class HttpByteSource implements ByteSource {
  constructor(
    readonly name: string,
    readonly size: number,
    private readonly request: Request,
  ) {}

  async read(offset: number, length: number): Promise<Uint8Array> {
    checkReadRange(this.name, this.size, offset, length);
    // A Range header cannot ask for zero bytes.
    if (length === 0) return new Uint8Array(0);
    const last = offset + length - 1;
    const res = await this.request('GET', this.name, `bytes=${offset}-${last}`);
    const what = `GET ${this.name} bytes ${offset}-${last}`;
    const wholeFile = res.status === 200 && offset === 0 && length === this.size;
    if (res.status === 200 && !wholeFile) return this.readIgnoringRange(res, offset, length, what);
    if (res.status !== 206 && !wholeFile) {
      await discard(res);
      throw new DownloadError(`${what} answered ${status(res)}, expected 206 Partial Content`);
    }
    if (res.status === 206) {
      // Content-Range is absent when a cross-origin server does not expose it; the length check remains.
      const cr = parseContentRange(res.headers.get('content-range'));
      if (cr && (cr.start !== offset || cr.end !== last)) {
        await discard(res);
        throw new DownloadError(`${what} answered with range ${res.headers.get('content-range')}`);
      }
    }
    const bytes = await readBody(res, length, what);
    if (bytes === null) throw new DownloadError(`${what} returned more than the ${length} bytes asked for`);
    if (bytes.byteLength !== length) {
      throw new DownloadError(`${what} returned ${bytes.byteLength} bytes, expected ${length} (truncated)`);
    }
    return bytes;
  }

  /** A 200 to a Range request: the bytes from the start of the whole file, if near the start. */
  private async readIgnoringRange(
    res: Response,
    offset: number,
    length: number,
    what: string,
  ): Promise<Uint8Array> {
    if (offset + length > MAX_RANGELESS_READ_BYTES) {
      await discard(res);
      throw new DownloadError(
        `${what} answered 200 OK: the server ignores Range requests, and reading this far into the ` +
          `file (${offset + length} bytes) would download it whole; serve the folder with Range support`,
      );
    }
    const prefix = await readPrefix(res, offset + length, what);
    if (prefix === null) {
      throw new DownloadError(`${what} answered 200 OK with fewer than ${offset + length} bytes (truncated)`);
    }
    return prefix.subarray(offset);
  }

  async close(): Promise<void> {}
}

/**
 * A ModelDir whose files live under `baseUrl` (for example
 * `https://huggingface.co/ORG/MODEL/resolve/main`). Reads past the first
 * {@link MAX_RANGELESS_READ_BYTES} of a file need a server that honours Range requests.
 */
export function httpModelDir(baseUrl: string, init?: HttpModelDirInit): ModelDir {
  // Bound so it can be called detached: browsers reject fetch called with a foreign `this`.
  const fetchFn = init?.fetch ?? globalThis.fetch.bind(globalThis);
  const base = baseUrl.endsWith('/') ? baseUrl : `${baseUrl}/`;
  const extraHeaders = init?.headers ?? {};

  const urlOf = (file: string): string => {
    const parts = file.split('/');
    if (parts.some((p) => p === '' || p === '.' || p === '..')) {
      throw new InvalidModelFileError(
        `file name ${JSON.stringify(file)} is not a plain path inside ${baseUrl}`,
      );
    }
    return base + parts.map(encodeURIComponent).join('/');
  };

  const request: Request = async (method, url, range) => {
    const headers: Record<string, string> = { ...extraHeaders };
    if (range !== undefined) headers.Range = range;
    try {
      return await fetchFn(url, { method, headers });
    } catch (e) {
      throw new DownloadError(`${method} ${url} failed: ${(e as Error).message}`, { cause: e });
    }
  };

  /** Probes with a one-byte GET for servers that refuse HEAD; true/false, or the response to report. */
  const probe = async (url: string): Promise<{ found: boolean; size?: number; res: Response }> => {
    const res = await request('GET', url, 'bytes=0-0');
    await discard(res);
    if (res.status === 404 || res.status === 410) return { found: false, res };
    if (res.status === 206 || res.status === 416) {
      return { found: true, size: parseContentRange(res.headers.get('content-range'))?.total, res };
    }
    return { found: res.ok, res };
  };

  return {
    location: baseUrl,
    async exists(file: string): Promise<boolean> {
      const url = urlOf(file);
      const head = await request('HEAD', url);
      if (head.ok) return true;
      if (head.status === 404 || head.status === 410) return false;
      const p = await probe(url);
      if (p.found || p.res.status === 404 || p.res.status === 410) return p.found;
      throw new DownloadError(
        `cannot tell whether ${url} exists: HEAD answered ${status(head)}, GET ${status(p.res)}`,
      );
    },
    async open(file: string): Promise<ByteSource> {
      const url = urlOf(file);
      const head = await request('HEAD', url);
      const encoding = head.headers.get('content-encoding');
      // A compressed length is not the file's size, so only trust an identity-encoded one.
      let size =
        head.ok && (!encoding || encoding === 'identity')
          ? parseLength(head.headers.get('content-length'))
          : undefined;
      if (size === undefined) {
        const p = await probe(url);
        if (p.res.status !== 206 && p.res.status !== 416) {
          throw new DownloadError(
            `cannot open ${url}: a Range request answered ${status(p.res)}, expected 206 Partial Content ` +
              '(the server must support Range requests)',
          );
        }
        size = p.size;
        if (size === undefined) {
          throw new DownloadError(
            `cannot open ${url}: the server did not report the file size (Content-Range)`,
          );
        }
      }
      return new HttpByteSource(url, size, request);
    },
    async readText(file: string): Promise<string> {
      const url = urlOf(file);
      const res = await request('GET', url);
      if (!res.ok) {
        await discard(res);
        throw new DownloadError(`GET ${url} answered ${status(res)}`);
      }
      // Content-Length, when given, refuses an oversized file before any of its body is read.
      const announced = parseLength(res.headers.get('content-length'));
      if (announced !== undefined && announced > MAX_TEXT_FILE_BYTES) {
        await discard(res);
        throw textFileTooLarge(file, baseUrl, String(announced));
      }
      const bytes = await readBody(res, MAX_TEXT_FILE_BYTES, `GET ${url}`);
      if (bytes === null) throw textFileTooLarge(file, baseUrl, `more than ${MAX_TEXT_FILE_BYTES}`);
      // As Response.text(): UTF-8, a leading BOM dropped, invalid bytes replaced.
      return new TextDecoder().decode(bytes);
    },
  };
}

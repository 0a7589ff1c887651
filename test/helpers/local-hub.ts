import { createHash } from 'node:crypto';
import { createServer, type IncomingHttpHeaders, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

// A local Hugging Face Hub on 127.0.0.1 with the real URL layout: the model-info API and /resolve/
// file downloads with Range support, plus switches to cut a body midway, ignore Range, or fail with a
// status, and a log of every request.

/** The commit the model-info API reports for a repo that does not set its own. */
export const DEFAULT_COMMIT = 'a'.repeat(40);

export interface RepoFile {
  data: Buffer;
  lfs: boolean;
  /** What the API claims, when it should lie. */
  claimedSha?: string;
}

export interface Repo {
  files: Map<string, RepoFile>;
  commit?: string;
}

export interface Logged {
  path: string;
  headers: IncomingHttpHeaders;
}

export class LocalHub {
  readonly repos = new Map<string, Repo>();
  readonly log: Logged[] = [];
  /** Files whose next response is cut after half the body. */
  readonly cutOnce = new Set<string>();
  ignoreRange = false;
  status: number | null = null;
  private server: Server | null = null;
  url = '';

  async start(): Promise<void> {
    this.server = createServer((req, res) => this.handle(req.url ?? '', req.headers, res));
    await new Promise<void>((ok) => this.server!.listen(0, '127.0.0.1', ok));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  async stop(): Promise<void> {
    const s = this.server;
    this.server = null;
    if (!s) return;
    s.closeAllConnections();
    await new Promise<void>((ok) => s.close(() => ok()));
  }

  fileRequests(name?: string): Logged[] {
    return this.log.filter((l) => l.path.includes('/resolve/') && (!name || l.path.endsWith(`/${name}`)));
  }

  private handle(path: string, headers: IncomingHttpHeaders, res: ServerResponse): void {
    this.log.push({ path, headers });
    if (this.status !== null) {
      res.writeHead(this.status, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: 'nope' }));
      return;
    }
    const api = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/([^?]+)\?blobs=true$/.exec(path);
    if (api) {
      const repo = this.repos.get(api[1]!);
      if (!repo || decodeURIComponent(api[2]!) !== 'main') return notFound(res);
      const siblings = [...repo.files].map(([name, f]) => ({
        rfilename: name,
        size: f.data.length,
        ...(f.lfs
          ? {
              lfs: {
                sha256: f.claimedSha ?? createHash('sha256').update(f.data).digest('hex'),
                size: f.data.length,
              },
            }
          : {}),
      }));
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ id: api[1], sha: repo.commit ?? DEFAULT_COMMIT, siblings }));
      return;
    }
    const file = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(path);
    const repo = file ? this.repos.get(file[1]!) : undefined;
    const name = file ? decodeURIComponent(file[3]!) : '';
    const f = repo?.files.get(name);
    if (!file || !f || decodeURIComponent(file[2]!) !== 'main') return notFound(res);

    let start = 0;
    const range = /^bytes=(\d+)-$/.exec(headers.range ?? '');
    if (range && !this.ignoreRange) {
      start = Number(range[1]);
      if (start >= f.data.length) {
        res.writeHead(416, { 'content-range': `bytes */${f.data.length}` });
        res.end();
        return;
      }
      res.writeHead(206, {
        'content-length': String(f.data.length - start),
        'content-range': `bytes ${start}-${f.data.length - 1}/${f.data.length}`,
      });
    } else {
      res.writeHead(200, { 'content-length': String(f.data.length), 'accept-ranges': 'bytes' });
    }
    const body = f.data.subarray(start);
    if (this.cutOnce.delete(name)) {
      // Send half, then drop the connection: to the client, a body that ends before its Content-Length.
      // The pause lets the client drain what arrived (a failing fetch body discards unread chunks), so
      // the part is usually half the file; the tests only rely on it being a strict, non-empty prefix.
      res.write(body.subarray(0, body.length >> 1), () => setTimeout(() => res.socket?.destroy(), 50));
      return;
    }
    // Several writes so the client sees several chunks (progress events, abort midway).
    for (let o = 0; o < body.length; o += 32 * 1024) res.write(body.subarray(o, o + 32 * 1024));
    res.end();
  }
}

function notFound(res: ServerResponse): void {
  res.writeHead(404, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ error: 'Repository not found' }));
}

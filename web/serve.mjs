// Serves the built browser app (dist/web) and, optionally, model folders on localhost:
//
//   node web/serve.mjs [--port 5173] [--host 127.0.0.1] [--root dist/web] [--model DIR]... [--log]
//
// Each --model DIR is served at /models/<folder name>/ with HEAD and byte-range support (the app
// reads safetensors headers with Range requests before it downloads anything). The first line on
// stdout is the app's address; with --log every request follows as one line
// "METHOD PATH STATUS [RANGE]", which the browser test reads to see what the page fetched.
import { createReadStream, existsSync, statSync } from 'node:fs';
import { createServer } from 'node:http';
import { basename, extname, join, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.jinja': 'text/plain; charset=utf-8',
  '.txt': 'text/plain; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.map': 'application/json; charset=utf-8',
  '.wasm': 'application/wasm',
};

function parseArgs(argv) {
  const opts = { port: 5173, host: '127.0.0.1', root: null, models: [], log: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === '--port') opts.port = Number(value());
    else if (a === '--host') opts.host = value();
    else if (a === '--root') opts.root = value();
    else if (a === '--model') opts.models.push(value());
    else if (a === '--log') opts.log = true;
    else throw new Error(`unknown option ${a}`);
  }
  return opts;
}

/** Resolves `rel` inside `dir`, or null when it would leave it. */
function inside(dir, rel) {
  const p = resolve(dir, `.${sep}${rel}`);
  return p === dir || p.startsWith(dir + sep) ? p : null;
}

/** "bytes=a-b" | "bytes=a-" | "bytes=-n" -> [start, end] inclusive, null if unsatisfiable. */
function parseRange(header, size) {
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === '' && m[2] === '')) return null;
  let start;
  let end;
  if (m[1] === '') {
    start = Math.max(0, size - Number(m[2]));
    end = size - 1;
  } else {
    start = Number(m[1]);
    end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
  }
  return start <= end && start < size ? [start, end] : null;
}

function sendFile(req, res, file) {
  const size = statSync(file).size;
  const headers = {
    'content-type': TYPES[extname(file)] ?? 'application/octet-stream',
    'accept-ranges': 'bytes',
    // The app keeps models in the Cache API itself; the HTTP cache must not answer for the server.
    'cache-control': 'no-cache',
  };
  const range = req.headers.range;
  if (range !== undefined) {
    const r = parseRange(range, size);
    if (!r) {
      res.writeHead(416, { ...headers, 'content-range': `bytes */${size}` });
      res.end();
      return 416;
    }
    const [start, end] = r;
    res.writeHead(206, {
      ...headers,
      'content-range': `bytes ${start}-${end}/${size}`,
      'content-length': String(end - start + 1),
    });
    if (req.method === 'HEAD') res.end();
    else createReadStream(file, { start, end }).pipe(res);
    return 206;
  }
  res.writeHead(200, { ...headers, 'content-length': String(size) });
  if (req.method === 'HEAD') res.end();
  else createReadStream(file).pipe(res);
  return 200;
}

/** Starts the server; resolves with its address once it listens. */
export function startServer(opts) {
  const root = resolve(opts.root ?? fileURLToPath(new URL('../dist/web', import.meta.url)));
  if (!existsSync(join(root, 'index.html'))) {
    throw new Error(`${root} has no index.html: run \`npm run build\` first`);
  }
  const models = new Map(opts.models.map((d) => [basename(resolve(d)), resolve(d)]));
  const server = createServer((req, res) => {
    let status = 404;
    try {
      const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
      if (req.method !== 'GET' && req.method !== 'HEAD') status = 405;
      else {
        const m = /^\/models\/([^/]+)\/(.+)$/.exec(path);
        const dir = m ? models.get(m[1]) : root;
        const rel = m ? m[2] : path === '/' ? 'index.html' : path.slice(1);
        const file = dir === undefined ? null : inside(dir, rel);
        if (file && existsSync(file) && statSync(file).isFile()) status = sendFile(req, res, file);
      }
    } catch {
      status = 400;
    }
    if (!res.headersSent) {
      res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8' });
      res.end(status === 404 ? 'not found\n' : 'bad request\n');
    }
    if (opts.log) {
      const range = req.headers.range ? ` ${req.headers.range}` : '';
      process.stdout.write(`${req.method} ${req.url} ${status}${range}\n`);
    }
  });
  return new Promise((resolveListen, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => {
      const a = server.address();
      const url = `http://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}/`;
      resolveListen({ server, url, models: [...models.keys()].map((name) => `${url}models/${name}/`) });
    });
  });
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    const opts = parseArgs(process.argv.slice(2));
    const { url, models } = await startServer(opts);
    process.stdout.write(`kiln web app: ${url}\n`);
    for (const m of models) process.stdout.write(`model: ${url}?model=${new URL(m).pathname}\n`);
  } catch (e) {
    process.stderr.write(`serve: ${e.message}\n`);
    process.exit(1);
  }
}

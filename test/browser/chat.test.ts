/**
 * The browser app end to end, in Debian's Chromium (headless, through playwright-core) on its
 * SwiftShader WebGPU adapter (a CPU, no shader-f16: the f32 path). The app is built here with
 * Vite, served with a BabyLlama folder converted at test time by the app's own server
 * (web/serve.mjs, a real HTTP server with Range support), and driven only through the page's
 * stable hooks: the URL parameters and the data-testid elements. BabyLlama has no chat template,
 * so the page runs it in plain completion mode, and at temperature 0 it must continue its golden
 * text exactly. The screenshot of the chat goes to test-results/browser/ (ignored by git).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  renameSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { extname, join } from 'node:path';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { build } from 'vite';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { KilnTokenizer } from '../../src/io/tokenizer.js';
import { convertLlama2cToFolder } from '../../src/node/convert.js';
import { splitGguf, writeGgufFromFolder } from '../helpers/gguf.js';
import { createEngine } from '../../src/node/index.js';
import { openLocalModelDir } from '../../src/node/fs-model-dir.js';
import { repoRoot, sharedModel } from '../helpers/shared.js';

/** Debian's package (scripts/setup.sh installs it); KILN_CHROMIUM points elsewhere. */
const CHROMIUM = process.env.KILN_CHROMIUM ?? '/usr/bin/chromium';
const PROMPT = 'Once upon a time';
const MAX_TOKENS = 60;
const SCREENSHOTS = join(repoRoot, 'test-results', 'browser');
/** Loading compiles every kernel on a CPU adapter; a first reply compiles the prefill kernels. */
const LOAD_TIMEOUT = 90_000;
/** A minimal template (BabyLlama has none) that writes every role and the system prompt. */
const CHAT_TEMPLATE =
  '{{ bos_token }}{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}';

let tmp = '';
let modelDir = '';
/** The same model with a chat template added to its tokenizer_config.json. */
let chatModelDir = '';
/** The same model as one GGUF file (model.gguf). */
let ggufModelFolder = '';
/** The same GGUF file split in three shards (model-0000i-of-00003.gguf). */
let splitGgufFolder = '';
let server: ChildProcess | null = null;
let baseUrl = '';
let webRoot = '';
/** Every request the server answered, as "METHOD PATH STATUS [RANGE]". */
const requests: string[] = [];
let browser: Browser | null = null;
let context: BrowserContext;
let page: Page;
/** The greedy ids after BOS, and the tokenizer that decodes them. */
let greedy: number[] = [];
let tokenizer: KilnTokenizer;

/** The golden text continued from PROMPT for `tokens` tokens (its greedy ids decoded). */
function goldenContinuation(tokens: number): string {
  const promptIds = tokenizer.encode(PROMPT, { addSpecialTokens: false });
  expect(greedy.slice(0, promptIds.length)).toEqual(promptIds);
  const text = tokenizer.decode(greedy.slice(0, promptIds.length + tokens));
  expect(text.startsWith(PROMPT)).toBe(true);
  return text.slice(PROMPT.length);
}

function startServer(root: string, models: string[]): Promise<string> {
  const child = spawn(
    process.execPath,
    [
      join(repoRoot, 'web', 'serve.mjs'),
      ...['--port', '0', '--root', root, '--log'],
      ...models.flatMap((m) => ['--model', m]),
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  server = child;
  return new Promise((resolve, reject) => {
    let buf = '';
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.once('exit', (code) => reject(new Error(`web/serve.mjs exited with ${code}: ${stderr}`)));
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      buf += d;
      for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        const app = /^kiln web app: (\S+)$/.exec(line);
        if (app?.[1]) resolve(app[1]);
        else if (/^(GET|HEAD) /.test(line)) requests.push(line);
      }
    });
  });
}

/**
 * A plain static server that ignores Range requests (every GET is a whole-file 200, as
 * `python3 -m http.server` answers), serving the app at / and `model` at /models/plain/ on one
 * origin. Its requests are logged into `log` as "METHOD PATH STATUS [RANGE]".
 */
function startRangelessServer(
  webRoot: string,
  model: string,
  log: string[],
): Promise<{ url: string; close: () => void }> {
  const types: Record<string, string> = {
    '.html': 'text/html',
    '.js': 'text/javascript',
    '.css': 'text/css',
    '.json': 'application/json',
    '.wasm': 'application/wasm',
  };
  const srv = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
    const file = path.startsWith('/models/plain/')
      ? join(model, path.slice('/models/plain/'.length))
      : join(webRoot, path === '/' ? 'index.html' : path);
    const ok = !path.includes('..') && statSync(file, { throwIfNoEntry: false })?.isFile();
    const status = ok ? 200 : 404;
    log.push(`${req.method} ${path} ${status}${req.headers.range ? ` ${req.headers.range}` : ''}`);
    if (!ok) {
      res.writeHead(404).end();
      return;
    }
    const body = readFileSync(file);
    res.writeHead(200, {
      'content-type': types[extname(file)] ?? 'application/octet-stream',
      'content-length': body.length,
    });
    res.end(req.method === 'HEAD' ? undefined : body);
  });
  return new Promise((resolve) => {
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as AddressInfo;
      resolve({ url: `http://127.0.0.1:${port}/`, close: () => srv.close() });
    });
  });
}

/** Waits for the status to read `ready`; a load that fails shows its error instead. */
async function waitReady(p: Page): Promise<void> {
  await p.waitForFunction(
    () => {
      const s = document.querySelector('[data-testid="status"]')?.textContent ?? '';
      return s.includes('ready') || s.includes('error') || s.includes('lost');
    },
    null,
    { timeout: LOAD_TIMEOUT },
  );
  const status = (await p.getByTestId('status').textContent()) ?? '';
  if (!status.includes('ready')) {
    throw new Error(
      `the page did not load the model: ${status}: ${await p.locator('#banner-text').textContent()}`,
    );
  }
}

/** Sends `text` and waits for the reply to finish; returns its text and every length it streamed through. */
async function ask(p: Page, text: string): Promise<{ output: string; lengths: number[] }> {
  // Record the reply's text as it changes, to see it arrive in pieces rather than at once.
  await p.evaluate(() => {
    const w = window as unknown as { __lengths: number[] };
    w.__lengths = [];
    new MutationObserver(() => {
      const out = document.querySelector('[data-testid="output"]');
      if (out) w.__lengths.push(out.textContent?.length ?? 0);
    }).observe(document.getElementById('messages') as HTMLElement, {
      subtree: true,
      childList: true,
      characterData: true,
    });
  });
  await p.getByTestId('prompt').fill(text);
  await p.getByTestId('send').click();
  await p.waitForSelector('[data-testid="output"][data-done="true"]', { timeout: LOAD_TIMEOUT });
  const output = (await p.getByTestId('output').textContent()) ?? '';
  const lengths = await p.evaluate(() => (window as unknown as { __lengths: number[] }).__lengths);
  return { output, lengths };
}

function modelRequests(from = 0): string[] {
  return requests.slice(from).filter((r) => / \/models\//.test(r));
}

/**
 * A real GPU device loss: Chromium's GPU process is crashed (CDP Browser.crashGpuProcess), as a
 * driver reset or a GPU hang would do; every device in it is lost with reason 'unknown' and the
 * browser starts a new GPU process, from which a worker can request a new adapter and device at
 * once. Two launch flags keep that true over this file's several crashes: Chromium blocks WebGPU
 * for a site whose page used the GPU during a second crash (--disable-domain-blocking-for-3d-apis)
 * and gives up on the GPU process after its third (--disable-gpu-process-crash-limit). This is
 * preferred over device.destroy() from a test hook: it needs nothing in the app, and it loses the
 * device the way users lose it.
 */
async function crashGpuProcess(): Promise<void> {
  const cdp = await (browser as Browser).newBrowserCDPSession();
  try {
    await cdp.send('Browser.crashGpuProcess');
  } finally {
    await cdp.detach();
  }
}

/** Starts recording every text the status shows (read back with recordedStatuses). */
async function recordStatuses(p: Page): Promise<void> {
  await p.evaluate(() => {
    const w = window as unknown as { __statuses: string[] };
    w.__statuses = [];
    const status = document.querySelector('[data-testid="status"]') as HTMLElement;
    new MutationObserver(() => w.__statuses.push(status.textContent ?? '')).observe(status, {
      subtree: true,
      childList: true,
      characterData: true,
    });
  });
}

function recordedStatuses(p: Page): Promise<string[]> {
  return p.evaluate(() => (window as unknown as { __statuses: string[] }).__statuses);
}

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`no Chromium at ${CHROMIUM}: run \`npm run setup\` (installs Debian's chromium)`);
  }
  if (!existsSync(join(repoRoot, 'src', 'kernels', 'wgsl.gen.ts'))) {
    throw new Error('src/kernels/wgsl.gen.ts is missing: run `npm run build` first');
  }
  tmp = mkdtempSync(join(tmpdir(), 'kiln-web-'));
  webRoot = join(tmp, 'web');
  modelDir = join(tmp, 'babyllama');
  await build({
    configFile: join(repoRoot, 'web', 'vite.config.ts'),
    logLevel: 'silent',
    build: { outDir: webRoot, emptyOutDir: true, sourcemap: false },
  });
  await convertLlama2cToFolder(sharedModel('babyllama-tok105', 'model5000.bin'), {
    outDir: modelDir,
    tokenizer: sharedModel('babyllama-tok105', 'tok105.model'),
  });
  chatModelDir = join(tmp, 'babyllama-chat');
  cpSync(modelDir, chatModelDir, { recursive: true });
  const tokConfig = join(chatModelDir, 'tokenizer_config.json');
  const withTemplate = { ...JSON.parse(readFileSync(tokConfig, 'utf8')), chat_template: CHAT_TEMPLATE };
  writeFileSync(tokConfig, JSON.stringify(withTemplate));
  tokenizer = await KilnTokenizer.load(openLocalModelDir(modelDir));
  const ref = JSON.parse(readFileSync(sharedModel('babyllama-tok105', 'reference_greedy.json'), 'utf8')) as {
    greedy_ids_after_bos: number[];
  };
  greedy = ref.greedy_ids_after_bos;
  const golden = readFileSync(sharedModel('babyllama-tok105', 'greedy_t0_n256.runc.txt'), 'utf8');
  expect(golden.startsWith(PROMPT + goldenContinuation(MAX_TOKENS))).toBe(true);
  ggufModelFolder = join(tmp, 'babyllama-gguf');
  mkdirSync(ggufModelFolder);
  renameSync(await writeGgufFromFolder(modelDir, 'model.gguf'), join(ggufModelFolder, 'model.gguf'));
  splitGgufFolder = join(tmp, 'babyllama-split');
  mkdirSync(splitGgufFolder);
  cpSync(join(ggufModelFolder, 'model.gguf'), join(splitGgufFolder, 'model.gguf'));
  await splitGguf(join(splitGgufFolder, 'model.gguf'), 3);
  rmSync(join(splitGgufFolder, 'model.gguf'));
  baseUrl = await startServer(webRoot, [modelDir, chatModelDir, ggufModelFolder]);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // See crashGpuProcess: the device-loss tests crash the GPU process more than once.
    args: [
      '--enable-unsafe-webgpu',
      '--disable-domain-blocking-for-3d-apis',
      '--disable-gpu-process-crash-limit',
    ],
  });
  context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  page = await context.newPage();
}, 120_000);

afterAll(async () => {
  await browser?.close();
  server?.kill();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

// Generous: on a loaded 2-core machine (the whole suite runs two files at once) a CPU adapter
// compiling kernels can take twice as long as alone.
describe('the chat app in headless Chromium (SwiftShader, f32 path)', { timeout: 180_000 }, () => {
  test('loads BabyLlama over HTTP and streams its golden continuation', async () => {
    await page.goto(`${baseUrl}?model=/models/babyllama/&temperature=0&max_tokens=${MAX_TOKENS}`);
    await waitReady(page);

    // Byte-accurate progress: the download counted every byte of the folder's files, and the GPU
    // upload every byte of its tensors.
    const onDisk = readdirSync(modelDir).reduce((s, f) => s + statSync(join(modelDir, f)).size, 0);
    expect(await page.locator('#progress').getAttribute('data-downloading')).toBe(`${onDisk}/${onDisk}`);
    const upload = (await page.locator('#progress').getAttribute('data-uploading')) ?? '';
    expect(upload).toMatch(/^(\d+)\/\1$/);
    // The weights were read whole into the cache, after only their header was read with Range.
    const weightReads = modelRequests().filter((r) =>
      r.startsWith('GET /models/babyllama/model.safetensors'),
    );
    expect(weightReads.filter((r) => / 200$/.test(r))).toHaveLength(1);
    // SwiftShader has no shader-f16: the engine runs the f32 path.
    await expect.poll(() => page.locator('#model-info').textContent()).toContain('f16 off');

    const { output, lengths } = await ask(page, PROMPT);
    expect(output).toBe(goldenContinuation(MAX_TOKENS));
    // Streamed: the reply grew through many intermediate lengths before its last.
    expect(new Set(lengths.filter((n) => n > 0 && n < output.length)).size).toBeGreaterThan(10);
    const stats = (await page.getByTestId('stats').textContent()) ?? '';
    expect(stats).toMatch(new RegExp(`^${MAX_TOKENS} tokens · [\\d.]+ tokens/s · `));
    expect(stats).toContain('swiftshader');
    expect(stats).toContain('f16 off');
    expect(stats).toMatch(/GPU memory [\d.]+ MiB/);
    expect(await page.getByTestId('status').textContent()).toContain('ready');
    // Background kernel tuning (5 s budget, one class at a time between steps) ends with choices
    // stored in IndexedDB for this adapter; the reload below must find them there.
    await expect
      .poll(() => page.getByTestId('tuning').textContent(), { timeout: 120_000 })
      .toMatch(/^\d+ class(es)? tuned for this adapter \(0 from cache\)/);
    const tunedFirst = Number(/^(\d+)/.exec((await page.getByTestId('tuning').textContent()) ?? '')?.[1]);
    expect(tunedFirst).toBeGreaterThan(0);

    mkdirSync(SCREENSHOTS, { recursive: true });
    await page.screenshot({ path: join(SCREENSHOTS, 'chat.png') });
  });

  test('reloads offline from the cache, and the next turn reuses the KV cache', async () => {
    const mark = requests.length;
    // Offline for the model: the browser may not reach it, and the server must not see a request.
    const isModel = (url: URL) => url.pathname.startsWith('/models/');
    await context.route(isModel, (route) => route.abort('internetdisconnected'));
    try {
      await page.reload();
      await waitReady(page);
      expect(await page.locator('#model-info').textContent()).toContain('from the cache');
      expect(await page.locator('#cache-info').textContent()).toMatch(/^1 model cached/);
      // The kernel choices tuned on the first load came back from IndexedDB.
      const tuning = (await page.getByTestId('tuning').textContent()) ?? '';
      expect(Number(/(\d+) (?:from cache|classes cached)/.exec(tuning)?.[1])).toBeGreaterThan(0);

      await page.locator('#max-tokens').fill('8');
      const first = await ask(page, PROMPT);
      expect(first.output).toBe(goldenContinuation(8));
      // Completion mode keeps the conversation as one text: the second prompt starts with the
      // first prompt and reply, whose full 16-token KV blocks are reused instead of recomputed.
      await page.locator('#max-tokens').fill('4');
      const second = await ask(page, 'The end.');
      expect(second.output.length).toBeGreaterThan(0);
      const cached = /prompt (\d+) tokens \((\d+) cached\)/.exec(
        (await page.getByTestId('stats').textContent()) ?? '',
      );
      expect(Number(cached?.[2])).toBeGreaterThanOrEqual(16);

      // Stop ends a long reply early; what streamed so far stays.
      await page.locator('#max-tokens').fill('200');
      await page.getByTestId('prompt').fill('Then');
      await page.getByTestId('send').click();
      await page.waitForFunction(
        () => (document.querySelector('[data-testid="output"]')?.textContent?.length ?? 0) >= 2,
      );
      await page.getByTestId('stop').click();
      await page.waitForSelector('[data-testid="output"][data-done="true"]');
      expect(await page.getByTestId('stats').textContent()).toMatch(/^\d+ tokens · .* · stopped · /);
      expect(((await page.getByTestId('output').textContent()) ?? '').length).toBeLessThan(100);
      expect(await page.getByTestId('stop').isDisabled()).toBe(true);
      expect(modelRequests(mark)).toEqual([]);
    } finally {
      await context.unroute(isModel);
    }
  });

  test('loads a GGUF file by URL into the cache, then again with no request for it, streams the golden continuation, recovers a lost device from the cache', async () => {
    const url = `${baseUrl}?model=/models/babyllama-gguf/model.gguf&temperature=0&max_tokens=${MAX_TOKENS}`;
    const gguf = (r: string) => r.startsWith('GET /models/babyllama-gguf/model.gguf');
    const mark = requests.length;
    await page.goto(url);
    await waitReady(page);
    expect(await page.locator('#model-info').textContent()).toContain('from the network');
    const size = statSync(join(ggufModelFolder, 'model.gguf')).size;
    expect(await page.locator('#progress').getAttribute('data-downloading')).toBe(`${size}/${size}`);
    // The header was read with Range requests (the fit check, then the plan's shard list), then
    // the file was downloaded once, whole, into the cache: the engine read the cached copy.
    const reads = modelRequests(mark).filter(gguf);
    expect(reads.filter((r) => / 206 bytes=\d+-\d+$/.test(r)).length).toBeGreaterThan(0);
    expect(reads.filter((r) => !/ bytes=/.test(r))).toEqual(['GET /models/babyllama-gguf/model.gguf 200']);
    await expect.poll(() => page.locator('#cache-info').textContent()).toMatch(/^2 models cached/);

    // A second load reads the cached copy: the server sees no request for the file at all.
    const again = requests.length;
    await page.goto(url);
    await waitReady(page);
    expect(await page.locator('#model-info').textContent()).toContain('from the cache');
    const { output } = await ask(page, PROMPT);
    expect(output).toBe(goldenContinuation(MAX_TOKENS));

    // A lost device is recovered from the cached copy (recoverFrom 'cache'), no page reload.
    await recordStatuses(page);
    await crashGpuProcess();
    await expect.poll(() => recordedStatuses(page), { timeout: LOAD_TIMEOUT }).toContain('recovering');
    await expect
      .poll(() => page.getByTestId('status').textContent(), { timeout: LOAD_TIMEOUT })
      .toBe('ready');
    await page.locator('#new-chat').click();
    await page.locator('#max-tokens').fill('8');
    expect((await ask(page, PROMPT)).output).toBe(goldenContinuation(8));
    expect(modelRequests(again).filter((r) => r.includes('.gguf'))).toEqual([]);
  });

  test('JSON mode: the worker constrains the reply with xgrammar, as the library does in Node', async () => {
    await page.goto(`${baseUrl}?model=/models/babyllama/&temperature=0&max_tokens=12&json=1`);
    await waitReady(page);
    expect(await page.locator('#json-mode').isChecked()).toBe(true);
    const { output } = await ask(page, PROMPT);
    // The same request through the library on Dawn: the same grammar engine, the same mask.
    const engine = await createEngine({ model: modelDir });
    try {
      const want = await engine
        .generate(PROMPT, { maxTokens: 12, temperature: 0, grammar: { type: 'json' } })
        .result();
      expect(output).toBe(want.text);
    } finally {
      engine.dispose();
    }
    // Constrained: not the model's free continuation, and JSON from its first character.
    expect(output).not.toBe(goldenContinuation(12));
    expect(output.trimStart()[0]).toMatch(/[[{"0-9tfn-]/);
  });

  test('a model with a chat template runs as a chat, with the system prompt', async () => {
    const system = 'Be brief.';
    await page.goto(
      `${baseUrl}?model=/models/babyllama-chat/&temperature=0&max_tokens=6&system=${encodeURIComponent(system)}`,
    );
    await waitReady(page);
    expect(await page.locator('#chat-mode').textContent()).toContain('chat template');
    const { output } = await ask(page, PROMPT);
    expect(output.length).toBeGreaterThan(0);
    // The prompt the worker encoded is the template over the system prompt and the message.
    const chatTokenizer = await KilnTokenizer.load(openLocalModelDir(chatModelDir));
    const ids = chatTokenizer.encodeChat([
      { role: 'system', content: system },
      { role: 'user', content: PROMPT },
    ]);
    const stats = (await page.getByTestId('stats').textContent()) ?? '';
    expect(stats).toMatch(new RegExp(`^\\d+ tokens · [\\d.]+ tokens/s · .* prompt ${ids.length} tokens · `));
  });

  test('a server without Range support: the header check reads the first bytes, then the whole file is cached with progress', async () => {
    const log: string[] = [];
    const plain = await startRangelessServer(webRoot, modelDir, log);
    const fresh = await (browser as Browser).newContext();
    try {
      const p = await fresh.newPage();
      await p.goto(`${plain.url}?model=/models/plain/&temperature=0&max_tokens=8&tune=0`);
      await waitReady(p);
      const onDisk = readdirSync(modelDir).reduce((s, f) => s + statSync(join(modelDir, f)).size, 0);
      expect(await p.locator('#progress').getAttribute('data-downloading')).toBe(`${onDisk}/${onDisk}`);
      // The fit check's Range requests got whole-file answers (cut short after the header); the
      // download then fetched each file once, without Range.
      const weights = log.filter((r) => r.startsWith('GET /models/plain/model.safetensors'));
      expect(weights.filter((r) => / bytes=/.test(r)).length).toBeGreaterThan(0);
      expect(weights.filter((r) => !/ bytes=/.test(r))).toEqual(['GET /models/plain/model.safetensors 200']);
      const { output } = await ask(p, PROMPT);
      expect(output).toBe(goldenContinuation(8));
    } finally {
      await fresh.close();
      plain.close();
    }
  });

  test('a split GGUF model from a server without Range support: every shard cached once, a reload reads none', async () => {
    const log: string[] = [];
    const plain = await startRangelessServer(webRoot, splitGgufFolder, log);
    const fresh = await (browser as Browser).newContext();
    const shards = readdirSync(splitGgufFolder).sort();
    expect(shards).toEqual([1, 2, 3].map((i) => `model-0000${i}-of-00003.gguf`));
    try {
      const p = await fresh.newPage();
      const url = `${plain.url}?model=/models/plain/${shards[0]}&temperature=0&max_tokens=8&tune=0`;
      await p.goto(url);
      await waitReady(p);
      const total = shards.reduce((s, f) => s + statSync(join(splitGgufFolder, f)).size, 0);
      expect(await p.locator('#progress').getAttribute('data-downloading')).toBe(`${total}/${total}`);
      // The headers' Range requests got whole-file answers (cut short); then each shard was
      // fetched once, without Range.
      expect(log.filter((r) => / bytes=/.test(r)).length).toBeGreaterThan(0);
      expect(log.filter((r) => r.startsWith('GET /models/') && !/ bytes=/.test(r))).toEqual(
        shards.map((f) => `GET /models/plain/${f} 200`),
      );
      const mark = log.length;
      await p.goto(url);
      await waitReady(p);
      expect(await p.locator('#model-info').textContent()).toContain('from the cache');
      expect((await ask(p, PROMPT)).output).toBe(goldenContinuation(8));
      expect(log.slice(mark).filter((r) => r.includes('/models/'))).toEqual([]);
    } finally {
      await fresh.close();
      plain.close();
    }
  });

  test('a storage quota too small for the model is explained in words', async () => {
    const fresh = await (browser as Browser).newContext();
    try {
      const p = await fresh.newPage();
      // Chromium enforces this quota (navigator.storage.estimate() still reports the default), so
      // the Cache API refuses the weights while they stream in.
      const cdp = await fresh.newCDPSession(p);
      await cdp.send('Storage.overrideQuotaForOrigin', {
        origin: new URL(baseUrl).origin,
        quotaSize: 100_000,
      });
      await p.goto(`${baseUrl}?model=/models/babyllama/`);
      await expect.poll(() => p.getByTestId('status').textContent(), { timeout: LOAD_TIMEOUT }).toBe('error');
      expect(await p.locator('#banner-text').textContent()).toMatch(
        /^The browser refused to store .*model\.safetensors: this site's storage quota ran out while caching the model \(its files need 3\.\d MiB\)\. Clear the model cache/,
      );
      await expect.poll(() => p.locator('#cache-info').textContent()).toMatch(/^0 models cached/);
      // No stale progress ("Checking that the model fits…", "Downloading…") is left beside the error.
      expect(await p.locator('#progress').isHidden()).toBe(true);
      expect(await p.locator('#progress-text').textContent()).toBe('');
    } finally {
      await fresh.close();
    }
  });

  test('a model too big for the device is refused before its weights are downloaded', async () => {
    const fresh = await (browser as Browser).newContext();
    try {
      const p = await fresh.newPage();
      const mark = requests.length;
      await p.goto(`${baseUrl}?model=/models/babyllama/&memory_limit_mib=1`);
      await expect.poll(() => p.getByTestId('status').textContent(), { timeout: LOAD_TIMEOUT }).toBe('error');
      expect(await p.locator('#banner-text').textContent()).toMatch(
        /too big for this device: it needs about [\d.]+ MiB .* Its weights were not downloaded\./,
      );
      // Only the safetensors header was read (Range requests), never the whole file.
      const reads = modelRequests(mark).filter((r) =>
        r.startsWith('GET /models/babyllama/model.safetensors'),
      );
      expect(reads.length).toBeGreaterThan(0);
      expect(reads.every((r) => / 206 bytes=\d+-\d+$/.test(r))).toBe(true);
    } finally {
      await fresh.close();
    }
  });

  test('a lost GPU device: the app recovers from the cache without a page reload, and answers again', async () => {
    // The loss is real: Chromium's GPU process is crashed, as a driver reset or a GPU hang would
    // do, and every device in it is lost (reason 'unknown'). See crashGpuProcess for why the
    // browser can give the page a new device afterwards.
    await page.goto(`${baseUrl}?model=/models/babyllama/&temperature=0&max_tokens=200`);
    await waitReady(page);
    expect(await page.locator('#model-info').textContent()).toContain('from the cache');
    // Kernel choices tuned by the first test came back from IndexedDB: the rebuild carries them.
    const tuning = (await page.getByTestId('tuning').textContent()) ?? '';
    expect(Number(/(\d+) (?:from cache|classes cached)/.exec(tuning)?.[1])).toBeGreaterThan(0);
    const mark = requests.length;
    // Recovery reads the weights from the Cache API: the model is out of the network's reach.
    const isModel = (url: URL) => url.pathname.startsWith('/models/');
    await context.route(isModel, (route) => route.abort('internetdisconnected'));
    try {
      await recordStatuses(page);
      await page.getByTestId('prompt').fill(PROMPT);
      await page.getByTestId('send').click();
      // The first reply compiles the prefill kernels: slow on a loaded machine.
      await page.waitForFunction(
        () => (document.querySelector('[data-testid="output"]')?.textContent?.length ?? 0) >= 2,
        null,
        { timeout: LOAD_TIMEOUT },
      );
      await crashGpuProcess();
      // The reply in flight ends with a retriable error in the chat while the worker rebuilds.
      // A message sent right then (in the same task: no worker message can come between) waits
      // in the worker and runs after the recovery.
      const sent = await page.evaluate(
        async (args) => {
          const done = () => document.querySelector('[data-testid="output"][data-done="true"]');
          while (!done()) await new Promise((r) => setTimeout(r, 5));
          const note = done()?.closest('.bubble')?.querySelector('.meta.error')?.textContent ?? null;
          const status = document.querySelector('[data-testid="status"]')?.textContent ?? '';
          (document.getElementById('new-chat') as HTMLButtonElement).click();
          (document.getElementById('max-tokens') as HTMLInputElement).value = String(args.maxTokens);
          (document.querySelector('[data-testid="prompt"]') as HTMLTextAreaElement).value = args.prompt;
          (document.querySelector('[data-testid="send"]') as HTMLButtonElement).click();
          return { note, status };
        },
        { prompt: PROMPT, maxTokens: MAX_TOKENS },
      );
      expect(sent.note).toMatch(
        /GPU device was lost \(unknown.*\) and Kiln is recovering it; the request can be retried/,
      );
      expect(sent.status).toBe('recovering');
      expect(await page.locator('#banner-text').textContent()).toMatch(
        /GPU device was lost .*Recovering: loading the model onto a new device from the browser’s cache/,
      );
      await page.waitForSelector('[data-testid="output"][data-done="true"]', { timeout: LOAD_TIMEOUT });
      // The queued message got BabyLlama's golden continuation from the rebuilt engine.
      expect(await page.getByTestId('output').textContent()).toBe(goldenContinuation(MAX_TOKENS));
      expect(await page.getByTestId('status').textContent()).toBe('ready');
      // Recorded since before the crash: the window (and so the page) is the same, never reloaded.
      const statuses = await recordedStatuses(page);
      expect(statuses.indexOf('recovering')).toBeGreaterThan(-1);
      expect(statuses.lastIndexOf('ready')).toBeGreaterThan(statuses.indexOf('recovering'));
      expect(await page.locator('#banner').isHidden()).toBe(true);
      // The model was never requested again.
      expect(modelRequests(mark)).toEqual([]);

      // It goes on: a second turn on the new device continues the conversation.
      await page.locator('#max-tokens').fill('4');
      const next = await ask(page, 'The end.');
      expect(next.output.length).toBeGreaterThan(0);
      await page.screenshot({ path: join(SCREENSHOTS, 'device-recovered.png') });
    } finally {
      await context.unroute(isModel);
    }
  });

  test('a picked folder: recovery reads the picked files again; once they changed, the app asks for the folder again', async () => {
    const picked = join(tmp, 'picked-babyllama');
    cpSync(modelDir, picked, { recursive: true });
    await page.goto(`${baseUrl}?temperature=0&max_tokens=8&tune=0`);
    await page.locator('#folder-input').setInputFiles(picked);
    await waitReady(page);
    await recordStatuses(page);
    await crashGpuProcess();
    await expect.poll(() => recordedStatuses(page), { timeout: LOAD_TIMEOUT }).toContain('recovering');
    await expect
      .poll(() => page.getByTestId('status').textContent(), { timeout: LOAD_TIMEOUT })
      .toBe('ready');
    expect((await ask(page, PROMPT)).output).toBe(goldenContinuation(8));

    // A picked file is a snapshot: once it changed on disk the browser refuses to read it, so the
    // next recovery cannot rebuild and the app says what to do (a reload would not help).
    const weights = join(picked, 'model.safetensors');
    writeFileSync(weights, readFileSync(weights));
    const later = new Date(Date.now() + 60_000);
    utimesSync(weights, later, later);
    await crashGpuProcess();
    await expect
      .poll(() => page.getByTestId('status').textContent(), { timeout: LOAD_TIMEOUT })
      .toBe('device lost');
    expect(await page.locator('#banner-text').textContent()).toMatch(
      /could not be recovered: .*pick the model folder again.*Open the model folder again to continue\.$/,
    );
    expect(await page.locator('#reload').isVisible()).toBe(false);
    expect(await page.getByTestId('send').isDisabled()).toBe(true);
    expect(await page.locator('#open-folder').isDisabled()).toBe(false);
  });

  test('a lost GPU device with a model read over the network: a message and a reload button', async () => {
    // Without the cache (?cache=0) a GGUF file by URL is read in place over Range requests:
    // recovering would download it again, which recovery never does.
    const mark = requests.length;
    await page.goto(
      `${baseUrl}?model=/models/babyllama-gguf/model.gguf&temperature=0&max_tokens=8&tune=0&cache=0`,
    );
    await waitReady(page);
    expect(await page.locator('#model-info').textContent()).toContain('from the network');
    const reads = modelRequests(mark).filter((r) => r.startsWith('GET /models/babyllama-gguf/model.gguf'));
    expect(reads.length).toBeGreaterThan(1);
    expect(reads.every((r) => / 206 bytes=/.test(r))).toBe(true);
    await crashGpuProcess();
    await expect
      .poll(() => page.getByTestId('status').textContent(), { timeout: 20_000 })
      .toBe('device lost');
    expect(await page.locator('#banner-text').textContent()).toMatch(
      /GPU device was lost .*reload the page to continue/,
    );
    expect(await page.locator('#reload').isVisible()).toBe(true);
    expect(await page.getByTestId('send').isDisabled()).toBe(true);
    await page.screenshot({ path: join(SCREENSHOTS, 'device-lost.png') });
  });
});

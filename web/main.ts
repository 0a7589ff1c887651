/**
 * The chat page. Everything heavy runs in the engine's Web Worker (WorkerEngine): this thread only
 * renders. Query parameters (stable, tests rely on them): `model` (a Hub id `org/name[@rev]` or a
 * folder URL; relative URLs start with `/` or `.`), `revision`, `temperature`, `top_p`,
 * `max_tokens`, `system`, `context`, `memory_limit_mib`, `json` (1: JSON mode), `kv`, `tune`, `cache`.
 */
import { formatBytes } from '../src/gpu/device.js';
import { ui } from './elements.js';
import {
  adapterName,
  baseStats,
  describeProgress,
  deviceLossText,
  errorText,
  f16Text,
  memoryPlanText,
  statsLine,
  tuningText,
} from './text.js';
import { pickedFolderFiles } from '../src/io/blob-model-dir.js';
import { hubFileUrl, parseHubId } from '../src/io/hub-id.js';
import { clearModelCache, ModelCache } from '../src/io/model-cache.js';
import type { ChatMessageParam as ChatMessage } from '../src/api/openai/types.js';
import type { KilnEngine } from '../src/api/engine-api.js';
import type { LoadProgress, ModelSource } from '../src/worker/protocol.js';
import { WorkerEngine } from '../src/worker/proxy.js';
import { KV_CACHE_OPTIONS } from '../src/engine/options.js';

const HUB = 'https://huggingface.co';

const params = new URLSearchParams(location.search);

function numberParam(name: string, fallback: number, ok: (v: number) => boolean): number {
  const raw = params.get(name);
  const v = raw === null ? NaN : Number(raw);
  return raw !== null && Number.isFinite(v) && ok(v) ? v : fallback;
}

ui.temperature.value = String(numberParam('temperature', 0.7, (v) => v >= 0 && v <= 2));
ui.topP.value = String(numberParam('top_p', 0.95, (v) => v > 0 && v <= 1));
ui.maxTokens.value = String(numberParam('max_tokens', 256, (v) => Number.isInteger(v) && v >= 1));
ui.system.value = params.get('system') ?? '';
// JSON mode: every reply is JSON, enforced token by token (constrained decoding).
ui.jsonMode.checked = params.get('json') === '1';
const contextParam = numberParam('context', 0, (v) => Number.isInteger(v) && v > 0);
const memoryLimitMiB = numberParam('memory_limit_mib', 0, (v) => v > 0);
/**
 * `?kv=int4` (or int8, int2, gear4, gear2, f16, f32) picks the KV cache format; a compressed one
 * fits a longer context in the same GPU memory. Default: auto.
 */
const kvParam = params.get('kv');
const kvCache = KV_CACHE_OPTIONS.find((k) => k === kvParam);
/** `?tune=0` turns background kernel tuning off. */
const tuneKernels = params.get('tune') !== '0';
/**
 * `?cache=0` reads a model by URL from the network without storing it in the browser (a GGUF file
 * in place over Range requests): nothing fills the site's storage, but each load downloads again.
 */
const useCache = params.get('cache') !== '0';

const showSliders = () => {
  ui.temperatureValue.value = Number(ui.temperature.value).toFixed(2);
  ui.topPValue.value = Number(ui.topP.value).toFixed(2);
};
ui.temperature.addEventListener('input', showSliders);
ui.topP.addEventListener('input', showSliders);
showSliders();

// ---- state

interface Turn {
  role: 'user' | 'assistant';
  content: string;
}

let engine: KilnEngine | null = null;
let loading = false;
let generation: AbortController | null = null;
let turns: Turn[] = [];
let lost = false;
/** The worker's engine is rebuilding on a new GPU device after a loss (see WorkerEngine.recovering). */
let recovering = false;

type StatusState = 'idle' | 'busy' | 'ready' | 'error';

function setStatus(text: string, state: StatusState): void {
  ui.status.textContent = text;
  ui.status.dataset.state = state;
}

function refreshControls(): void {
  const busy = generation !== null;
  ui.send.disabled = !engine || busy || loading || lost;
  ui.stop.disabled = !busy;
  ui.load.disabled = loading;
  ui.openFolder.disabled = loading;
  ui.newChat.disabled = loading;
}

function showBanner(text: string, reload: boolean): void {
  ui.banner.hidden = false;
  ui.bannerText.textContent = text;
  ui.reload.hidden = !reload;
}

// ---- model loading

/** A Hub id becomes its resolve URL; anything else is a URL relative to this page. */
function sourceFromInput(value: string): ModelSource {
  const v = value.trim();
  const hub = /^(https?:|\/|\.)/.test(v) ? null : parseHubId(v);
  if (hub) return { kind: 'url', url: hubFileUrl(HUB, hub.repo, hub.revision, ''), revision: hub.revision };
  return { kind: 'url', url: new URL(v, location.href).href, revision: params.get('revision') ?? 'main' };
}

/** A short name for the header: a Hub id as is, a URL's last folder name. */
function modelTitle(value: string): string {
  const v = value.trim();
  if (!/^(https?:|\/|\.)/.test(v) && parseHubId(v)) return v;
  const parts = new URL(v, location.href).pathname.split('/').filter(Boolean);
  return decodeURIComponent(parts.at(-1) ?? v);
}

function showProgress(p: LoadProgress): void {
  ui.progress.hidden = false;
  const frac = p.totalBytes > 0 ? p.loadedBytes / p.totalBytes : 0;
  ui.progressFill.style.width = `${(frac * 100).toFixed(1)}%`;
  ui.progressText.textContent = describeProgress(p);
  // Exact byte counts per phase ("loaded/total"), for tests and the curious (the text rounds them).
  ui.progress.dataset[p.phase] = `${p.loadedBytes}/${p.totalBytes}`;
  const pct = `${Math.floor(frac * 100)}%`;
  if (p.phase === 'checking') setStatus('checking model', 'busy');
  else if (p.phase === 'downloading') setStatus(`downloading ${pct}`, 'busy');
  else setStatus(`loading ${pct}`, 'busy');
}

/** Hides the progress bar and its text, so a failed load leaves no stale "Checking…" behind. */
function clearProgress(): void {
  ui.progress.hidden = true;
  ui.progressFill.style.width = '0%';
  ui.progressText.textContent = '';
}

function showModelInfo(e: KilnEngine, fromCache: boolean): void {
  const rows: [string, string, string?][] = [
    ['Adapter', adapterName(e)],
    ['Precision', f16Text(e)],
    ['Weights', e.weightFormat],
    ['Context', `${e.contextLength} tokens`],
    ['GPU memory', formatBytes(e.gpuMemoryBytes)],
    ['Memory plan', memoryPlanText(e), 'memory-plan'],
    ['Loaded', `in ${(e.loadMs / 1000).toFixed(1)} s, ${fromCache ? 'from the cache' : 'from the network'}`],
    ['Kernels', tuningText(e), 'tuning'],
  ];
  ui.modelInfo.replaceChildren(
    ...rows.flatMap(([k, v, testId]) => {
      const dt = document.createElement('dt');
      dt.textContent = k;
      const dd = document.createElement('dd');
      dd.textContent = v;
      if (testId) dd.dataset.testid = testId;
      return [dt, dd];
    }),
  );
}

function disposeEngine(): void {
  generation?.abort();
  generation = null;
  engine?.dispose();
  engine = null;
}

async function loadModel(source: ModelSource, title: string): Promise<void> {
  disposeEngine();
  loading = true;
  lost = false;
  recovering = false;
  ui.banner.hidden = true;
  ui.modelInfo.replaceChildren();
  ui.chatTitle.textContent = title;
  ui.chatTitle.title = title;
  ui.chatMode.textContent = '';
  ui.stats.textContent = '';
  refreshControls();
  setStatus('starting', 'busy');
  const worker = new Worker(new URL('./worker.ts', import.meta.url), { type: 'module', name: 'kiln-engine' });
  try {
    const e = await WorkerEngine.load(
      worker,
      {
        source,
        ...(contextParam ? { contextLength: contextParam } : {}),
        ...(memoryLimitMiB ? { memoryLimitBytes: Math.floor(memoryLimitMiB * 2 ** 20) } : {}),
        tune: tuneKernels,
        cache: useCache,
        ...(kvCache ? { kvCache } : {}),
        onProgress: showProgress,
      },
      () => worker.terminate(),
    );
    engine = e;
    const fromCache = e.fromCache;
    // A loss the worker recovers from: the weights go onto a new device from the cache or the
    // picked files (never the network) while the page stays; a reply it cut off ends with a
    // retriable error, and a message sent meanwhile waits and then runs.
    e.onRecovery((ev) => {
      if (engine !== e) return;
      recovering = ev.state === 'recovering';
      if (ev.state === 'recovering') {
        setStatus('recovering', 'busy');
        const from = source.kind === 'files' ? 'the picked files' : 'the browser’s cache';
        showBanner(
          `${deviceLossText(ev.loss)}Recovering: loading the model onto a new device from ${from}.`,
          false,
        );
      } else {
        ui.banner.hidden = true;
        if (generation) setStatus('generating', 'busy');
        else setStatus('ready', 'ready');
        showModelInfo(e, fromCache);
      }
      refreshControls();
    });
    void e.deviceLost.then((loss) => {
      if (engine !== e) return;
      lost = true;
      recovering = false;
      generation?.abort();
      setStatus('device lost', 'error');
      clearProgress();
      // Picked files cannot come back with a page reload: the folder must be opened again.
      const picked = source.kind === 'files';
      showBanner(
        deviceLossText(loss) +
          (picked
            ? 'Open the model folder again to continue.'
            : 'The model must be loaded again; reload the page to continue.'),
        !picked,
      );
      refreshControls();
    });
    ui.chatMode.textContent = e.hasChatTemplate
      ? 'Chat (the model’s chat template)'
      : 'Plain completion: this model has no chat template, so it continues your text';
    ui.progress.hidden = true;
    showModelInfo(e, fromCache);
    // The Kernels row changes when background tuning ends (while this engine is still the one).
    void e.whenTuned().then(() => {
      if (engine === e) showModelInfo(e, fromCache);
    });
    ui.stats.textContent = baseStats(e);
    setStatus('ready', 'ready');
    ui.prompt.focus();
  } catch (err) {
    worker.terminate();
    setStatus('error', 'error');
    clearProgress();
    showBanner(errorText(err), false);
  } finally {
    loading = false;
    refreshControls();
    void refreshCache();
  }
}

ui.modelForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const v = ui.modelUrl.value.trim();
  if (!v) return;
  const url = new URL(location.href);
  url.searchParams.set('model', v);
  window.history.replaceState(null, '', url);
  void loadModel(sourceFromInput(v), modelTitle(v));
});

ui.openFolder.addEventListener('click', () => ui.folderInput.click());
ui.folderInput.addEventListener('change', () => {
  const picked = ui.folderInput.files;
  if (!picked || picked.length === 0) return;
  const { name, files } = pickedFolderFiles(picked);
  // Only the folder's own files: a model folder's sub-folders (.git, onnx/, ...) are never read.
  const top = [...files].filter(([path]) => !path.includes('/') && !path.startsWith('.'));
  ui.modelUrl.value = '';
  void loadModel({ kind: 'files', name, files: top.map(([path, blob]) => ({ path, blob })) }, name);
  ui.folderInput.value = '';
});

// ---- cache

async function refreshCache(): Promise<void> {
  try {
    const cache = await ModelCache.open();
    const [models, bytes, estimate] = await Promise.all([
      cache.models(),
      cache.sizeBytes(),
      navigator.storage?.estimate?.().catch(() => null) ?? null,
    ]);
    const quota = estimate?.quota ? ` · this site may use ${formatBytes(estimate.quota)}` : '';
    ui.cacheInfo.textContent = `${models.length} model${models.length === 1 ? '' : 's'} cached · ${formatBytes(bytes)}${quota}`;
    ui.cacheInfo.dataset.bytes = String(bytes);
    ui.clearCache.disabled = bytes === 0;
  } catch (e) {
    ui.cacheInfo.textContent = `The model cache is unavailable: ${errorText(e)}`;
    ui.clearCache.disabled = true;
  }
}

ui.clearCache.addEventListener('click', async () => {
  ui.clearCache.disabled = true;
  try {
    await clearModelCache();
  } finally {
    await refreshCache();
  }
});

// ---- chat

function scrollToEnd(force = false): void {
  const m = ui.messages;
  if (force || m.scrollHeight - m.scrollTop - m.clientHeight < 120) m.scrollTop = m.scrollHeight;
}

function addMessage(role: Turn['role'], text: string): HTMLDivElement {
  ui.empty.hidden = true;
  const msg = document.createElement('div');
  msg.className = `msg ${role}`;
  const avatar = document.createElement('div');
  avatar.className = 'avatar';
  avatar.textContent = role === 'user' ? 'You' : 'K';
  const bubble = document.createElement('div');
  bubble.className = 'bubble';
  const who = document.createElement('div');
  who.className = 'who';
  who.textContent = role === 'user' ? 'You' : 'Assistant';
  const body = document.createElement('div');
  body.className = 'text';
  body.textContent = text;
  bubble.append(who, body);
  msg.append(avatar, bubble);
  ui.messages.append(msg);
  scrollToEnd(true);
  return body;
}

/** The prompt of a model without a chat template: the conversation as one running text. */
function completionPrompt(turns: readonly Turn[], system: string): string {
  let text = system ? `${system}\n\n` : '';
  turns.forEach((t, i) => {
    // A reply continues its prompt directly (that is what was generated); a new prompt starts a
    // paragraph. The earlier turns are then a prefix of the tokens already in the KV cache.
    if (t.role === 'user' && i > 0) text += '\n\n';
    text += t.content;
  });
  return text;
}

function chatMessages(turns: readonly Turn[], system: string): ChatMessage[] {
  return [...(system ? [{ role: 'system' as const, content: system }] : []), ...turns];
}

async function send(): Promise<void> {
  const e = engine;
  const text = ui.prompt.value;
  if (!e || generation || !text.trim()) return;
  ui.prompt.value = '';
  autoGrow();
  const system = ui.system.value.trim();
  turns.push({ role: 'user', content: text });
  addMessage('user', text);
  // Only the newest reply carries the test hook.
  ui.messages.querySelector('[data-testid="output"]')?.removeAttribute('data-testid');
  const body = addMessage('assistant', '');
  if (!e.hasChatTemplate) {
    // A completion continues the prompt: shown muted before the reply, the text reads as one.
    const echo = document.createElement('span');
    echo.className = 'echo';
    echo.textContent = text;
    body.append(echo);
  }
  const out = document.createElement('span');
  out.className = 'reply';
  body.append(out);
  out.dataset.testid = 'output';
  out.dataset.done = 'false';
  const ac = new AbortController();
  generation = ac;
  refreshControls();
  // While the engine recovers the request waits in the worker: the status says why.
  if (!recovering) setStatus('generating', 'busy');
  const sampling = {
    temperature: Number(ui.temperature.value),
    topP: Number(ui.topP.value),
    maxTokens: Math.max(1, Math.floor(Number(ui.maxTokens.value) || 1)),
  };
  const started = performance.now();
  let firstAt = 0;
  let lastAt = 0;
  let pieces = 0;
  const append = (piece: string) => {
    if (!piece) return;
    lastAt = performance.now();
    if (pieces++ === 0) firstAt = lastAt;
    out.append(piece);
    scrollToEnd();
  };
  let reply = '';
  try {
    if (e.hasChatTemplate) {
      const stream = await e.chat.completions.create({
        messages: chatMessages(turns, system),
        stream: true,
        // The token counts of the stats line come in the closing usage chunk.
        stream_options: { include_usage: true },
        temperature: sampling.temperature,
        top_p: sampling.topP,
        max_tokens: sampling.maxTokens,
        ...(ui.jsonMode.checked ? { response_format: { type: 'json_object' as const } } : {}),
        signal: ac.signal,
      });
      let finish = 'length';
      let usage = { prompt_tokens: 0, completion_tokens: 0 };
      for await (const chunk of stream) {
        const c = chunk.choices[0];
        const piece = c?.delta.content ?? '';
        reply += piece;
        append(piece);
        if (c?.finish_reason) finish = c.finish_reason;
        if (chunk.usage) usage = chunk.usage;
      }
      const decodeS = (lastAt - firstAt) / 1000;
      ui.stats.textContent = statsLine(
        e,
        {
          tokens: usage.completion_tokens,
          tokensPerS: decodeS > 0 ? (usage.completion_tokens - 1) / decodeS : 0,
          firstTokenMs: firstAt - started,
          promptTokens: usage.prompt_tokens,
          cachedTokens: null,
        },
        finish,
      );
    } else {
      const gen = e.generate(completionPrompt(turns, system), {
        ...sampling,
        ...(ui.jsonMode.checked ? { grammar: { type: 'json' as const } } : {}),
        signal: ac.signal,
      });
      for await (const t of gen) {
        reply += t.text;
        append(t.text);
      }
      const r = await gen.result();
      ui.stats.textContent = statsLine(
        e,
        {
          tokens: r.tokenIds.length,
          tokensPerS: r.timings.decodeTokensPerS,
          firstTokenMs: r.timings.prefillMs,
          promptTokens: r.promptTokenIds.length,
          cachedTokens: r.cachedPromptTokens,
        },
        r.finishReason,
      );
    }
    if (!lost && !recovering) setStatus('ready', 'ready');
  } catch (err) {
    const note = document.createElement('div');
    note.className = 'meta error';
    note.textContent = errorText(err);
    body.after(note);
    if (!lost && !recovering) setStatus('ready', 'ready');
  } finally {
    turns.push({ role: 'assistant', content: reply });
    out.dataset.done = 'true';
    generation = null;
    refreshControls();
  }
}

ui.composer.addEventListener('submit', (ev) => {
  ev.preventDefault();
  void send();
});

ui.prompt.addEventListener('keydown', (ev) => {
  if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault();
    void send();
  }
});

function autoGrow(): void {
  ui.prompt.style.height = 'auto';
  ui.prompt.style.height = `${Math.min(ui.prompt.scrollHeight + 2, 200)}px`;
}
ui.prompt.addEventListener('input', autoGrow);

ui.stop.addEventListener('click', () => generation?.abort());

ui.newChat.addEventListener('click', () => {
  generation?.abort();
  turns = [];
  ui.messages.replaceChildren(ui.empty);
  ui.empty.hidden = engine !== null;
  if (engine) ui.stats.textContent = baseStats(engine);
  ui.prompt.focus();
});

ui.reload.addEventListener('click', () => location.reload());

// ---- start

refreshControls();
void refreshCache();
const initial = params.get('model');
if (initial) {
  ui.modelUrl.value = initial;
  void loadModel(sourceFromInput(initial), modelTitle(initial));
} else {
  setStatus('no model', 'idle');
}

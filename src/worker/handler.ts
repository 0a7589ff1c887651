/**
 * The Web Worker side: owns one Engine and answers WorkerRequests with WorkerEvents. Requests run
 * concurrently (an `abort` must get through while a generation streams), and each ends with exactly
 * one final event (`loaded`, `result`, `tokens`, `disposed` or `error`). A lost GPU device is
 * reported unprompted: `recovering` then `recovered` when the engine rebuilds on a new device from
 * the cached or picked files, else (or when that fails) `device-lost`, after which it is gone.
 */
import { KilnError } from '../errors.js';
import type { Engine } from '../engine/engine.js';
import { loadEngine, type LoadedEngine } from './load.js';
import {
  serializeError,
  type Endpoint,
  type EngineInfo,
  type LoadProgress,
  type WorkerEvent,
  type WorkerRequest,
} from './protocol.js';

/** Progress events are posted at most this often (the last one of a phase always is). */
const PROGRESS_INTERVAL_MS = 50;

function engineInfo(engine: Engine, fromCache: boolean): EngineInfo {
  return {
    modelName: engine.modelName,
    contextLength: engine.contextLength,
    adapter: engine.adapter,
    kvCacheDtype: engine.kvCacheDtype,
    weightFormat: engine.weightFormat,
    hasChatTemplate: engine.hasChatTemplate,
    toolCallFormat: engine.toolCallFormat,
    loadMs: engine.loadMs,
    gpuMemoryBytes: engine.gpuMemoryBytes,
    memoryPlan: engine.memoryPlan,
    fromCache,
    tuning: engine.tuningStatus,
  };
}

/** Serves engine requests arriving on `endpoint` (the worker's global scope). */
export function serveEngine(endpoint: Endpoint<WorkerRequest, WorkerEvent>): void {
  let engine: Engine | null = null;
  /** Aborts of the generations running now, by request id. */
  const running = new Map<number, AbortController>();
  const post = (ev: WorkerEvent) => endpoint.postMessage(ev);

  const requireEngine = (): Engine => {
    if (!engine) throw new KilnError('no model is loaded');
    return engine;
  };

  const dispose = () => {
    for (const ac of running.values()) ac.abort();
    const e = engine;
    engine = null;
    e?.dispose();
  };

  /** Reports the losses of `current`'s device while it is the engine in use, and its recoveries. */
  const watchDevice = (current: Engine, recoverFrom: LoadedEngine['recoverFrom']) => {
    void current.deviceLost.then(async (info) => {
      // dispose() destroys the device too; only a loss of the engine in use is news.
      if (engine !== current) return;
      const lost = { reason: info.reason, message: info.message };
      if (!current.recovering) {
        engine = null;
        post({ type: 'device-lost', ...lost });
        return;
      }
      post({ type: 'recovering', ...lost });
      try {
        await current.whenRecovered();
      } catch (e) {
        if (engine !== current) return;
        engine = null;
        const why = (e instanceof Error ? e.message : String(e)).replace(/\.$/, '');
        post({
          type: 'device-lost',
          ...lost,
          message:
            recoverFrom === 'files'
              ? `${why}. The picked files could not be read again (changed or removed since?): pick the model folder again`
              : why,
        });
        return;
      }
      if (engine !== current) return;
      post({ type: 'recovered', adapter: current.adapter, gpuMemoryBytes: current.gpuMemoryBytes });
      // The new device can be lost in turn.
      watchDevice(current, recoverFrom);
    });
  };

  const throttled = (id: number) => {
    let last = 0;
    let phase = '';
    return (p: LoadProgress) => {
      const now = performance.now();
      const final = p.loadedBytes === p.totalBytes;
      if (p.phase !== phase || final || now - last >= PROGRESS_INTERVAL_MS) {
        phase = p.phase;
        last = now;
        post({ type: 'progress', id, progress: p });
      }
    };
  };

  async function handle(req: WorkerRequest): Promise<void> {
    switch (req.type) {
      case 'load': {
        dispose();
        const loaded = await loadEngine(req.options, throttled(req.id));
        const current = loaded.engine;
        engine = current;
        watchDevice(current, loaded.recoverFrom);
        post({ type: 'loaded', id: req.id, info: engineInfo(current, loaded.fromCache) });
        if (current.tuningStatus.state === 'running') {
          void current.whenTuned().then((status) => {
            if (engine === current) post({ type: 'tuned', status });
          });
        }
        return;
      }
      case 'generate': {
        const e = requireEngine();
        const ac = new AbortController();
        running.set(req.id, ac);
        try {
          const gen = e.generate(req.prompt, { ...req.options, signal: ac.signal });
          for await (const token of gen) post({ type: 'token', id: req.id, token });
          const result = await gen.result();
          post({ type: 'result', id: req.id, result, gpuMemoryBytes: e.gpuMemoryBytes });
        } finally {
          running.delete(req.id);
        }
        return;
      }
      case 'tokenize': {
        const ids = await requireEngine().tokenize(req.input);
        post({ type: 'tokens', id: req.id, ids });
        return;
      }
      case 'check-grammar':
        await requireEngine().checkGrammar(req.grammar);
        post({ type: 'checked', id: req.id });
        return;
      case 'abort':
        running.get(req.id)?.abort();
        return;
      case 'dispose':
        dispose();
        post({ type: 'disposed', id: req.id });
        return;
    }
  }

  endpoint.addEventListener('message', (ev) => {
    const req = ev.data;
    handle(req).catch((e: unknown) => post({ type: 'error', id: req.id, error: serializeError(e) }));
  });
}

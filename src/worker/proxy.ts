/**
 * The page side: `WorkerEngine` implements KilnEngine by sending WorkerRequests to the engine
 * handler in a Web Worker and turning its WorkerEvents back into promises and async iterables, so
 * the page's main thread only ever waits on messages and never blocks on inference.
 */
import { KilnError } from '../errors.js';
import type { AdapterSummary } from '../gpu/device.js';
import type { ChatInput, DeviceLoss, GenerationStream, KilnEngine } from '../api/engine-api.js';
import { OpenAiChat, OpenAiCompletions } from '../api/openai/openai.js';
import type { ToolFormatName } from '../api/openai/tools.js';
import type {
  GenerateOptions,
  GenerateResult,
  GeneratedToken,
  GrammarSpec,
  MemoryPlan,
  TuningStatus,
} from '../api/types.js';
import type { KvDtype } from '../kernels/kv-dtype.js';
import {
  deserializeError,
  type Endpoint,
  type EngineInfo,
  type LoadOptions,
  type LoadProgress,
  type WorkerEvent,
  type WorkerRequest,
} from './protocol.js';

type Listener = (ev: WorkerEvent) => void;

/** A device loss the worker's engine recovers from: it starts, then it is over. */
export type RecoveryEvent = { state: 'recovering'; loss: DeviceLoss } | { state: 'recovered' };

/** Routes a worker's events to the request that each answers. */
class Connection {
  private nextId = 1;
  private readonly listeners = new Map<number, Listener>();
  /** Set once the device is lost: every later request fails with it. */
  loss: DeviceLoss | null = null;
  private onLoss: ((loss: DeviceLoss) => void) | null = null;
  readonly lost: Promise<DeviceLoss>;
  /** Called with the final status when the worker's background tuning ends. */
  onTuned: ((status: TuningStatus) => void) | null = null;
  /** The loss being recovered from, while the worker's engine rebuilds on a new device. */
  recovering: DeviceLoss | null = null;
  /** Called when a recovery starts and when it is over (after `onRecovered`). */
  readonly recoveryListeners: ((ev: RecoveryEvent) => void)[] = [];
  /** Takes the new device's adapter and memory when a recovery is over. */
  onRecovered: ((adapter: AdapterSummary, gpuMemoryBytes: number) => void) | null = null;

  constructor(readonly endpoint: Endpoint<WorkerEvent, WorkerRequest>) {
    this.lost = new Promise((resolve) => (this.onLoss = resolve));
    endpoint.addEventListener('message', (ev) => {
      const msg = ev.data;
      if (msg.type === 'device-lost') {
        this.recovering = null;
        this.loss = { reason: msg.reason, message: msg.message };
        this.onLoss?.(this.loss);
        return;
      }
      if (msg.type === 'recovering') {
        const loss = { reason: msg.reason, message: msg.message };
        this.recovering = loss;
        for (const l of this.recoveryListeners) l({ state: 'recovering', loss });
        return;
      }
      if (msg.type === 'recovered') {
        this.recovering = null;
        this.onRecovered?.(msg.adapter, msg.gpuMemoryBytes);
        for (const l of this.recoveryListeners) l({ state: 'recovered' });
        return;
      }
      if (msg.type === 'tuned') {
        this.onTuned?.(msg.status);
        return;
      }
      this.listeners.get(msg.id)?.(msg);
    });
  }

  /** Sends a request made with a fresh id; `listen` gets its events until `done()` is called. */
  send(make: (id: number) => WorkerRequest, listen: Listener): { id: number; done: () => void } {
    const id = this.nextId++;
    this.listeners.set(id, listen);
    this.endpoint.postMessage(make(id));
    return { id, done: () => this.listeners.delete(id) };
  }
}

/** An async iterable fed by pushes; `onCancel` runs when its consumer stops early. */
class Channel<T> implements AsyncIterable<T> {
  private readonly items: T[] = [];
  private ended = false;
  private error: Error | null = null;
  private wake: (() => void) | null = null;
  private iterated = false;

  constructor(private readonly onCancel: () => void) {}

  push(item: T): void {
    this.items.push(item);
    this.wake?.();
  }

  end(error: Error | null = null): void {
    this.ended = true;
    this.error = error;
    this.wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    if (this.iterated) throw new KilnError('a generation can be iterated once');
    this.iterated = true;
    let finished = false;
    try {
      for (;;) {
        while (this.items.length > 0) yield this.items.shift() as T;
        if (this.ended) break;
        await new Promise<void>((r) => (this.wake = r));
        this.wake = null;
      }
      finished = true;
      if (this.error) throw this.error;
    } finally {
      // A consumer that breaks out early stops the work in the worker, as with the in-thread engine.
      if (!finished && !this.ended) this.onCancel();
    }
  }
}

/** Forwards `signal`'s abort to the worker as an `abort` request for `id`. */
function forwardAbort(conn: Connection, signal: AbortSignal | undefined, id: number): () => void {
  if (!signal) return () => undefined;
  const onAbort = () => conn.endpoint.postMessage({ type: 'abort', id });
  if (signal.aborted) onAbort();
  else signal.addEventListener('abort', onAbort, { once: true });
  return () => signal.removeEventListener('abort', onAbort);
}

class RemoteGeneration implements GenerationStream {
  private started = false;
  private readonly tokens: Channel<GeneratedToken>;
  private readonly finished: Promise<GenerateResult>;
  private settle!: { resolve: (r: GenerateResult) => void; reject: (e: Error) => void };
  private id = 0;

  constructor(
    private readonly engine: WorkerEngine,
    private readonly conn: Connection,
    private readonly prompt: string | readonly number[],
    private readonly opts: GenerateOptions,
  ) {
    this.tokens = new Channel(() => conn.endpoint.postMessage({ type: 'abort', id: this.id }));
    this.finished = new Promise((resolve, reject) => (this.settle = { resolve, reject }));
    // Whoever awaits result() sees the error; nobody awaiting it is not an unhandled rejection.
    this.finished.catch(() => undefined);
  }

  private start(): void {
    if (this.started) return;
    this.started = true;
    if (this.conn.loss) {
      const e = lostError(this.conn.loss);
      this.tokens.end(e);
      this.settle.reject(e);
      return;
    }
    const { signal, ...options } = this.opts;
    let unforward = () => {};
    const req = this.conn.send(
      (id) => ({
        type: 'generate',
        id,
        prompt: typeof this.prompt === 'string' ? this.prompt : [...this.prompt],
        options,
      }),
      (ev) => {
        if (ev.type === 'token') this.tokens.push(ev.token);
        else if (ev.type === 'result' || ev.type === 'error') {
          req.done();
          unforward();
          if (ev.type === 'result') {
            this.engine.noteMemory(ev.gpuMemoryBytes);
            this.tokens.end();
            this.settle.resolve(ev.result);
          } else {
            const e = deserializeError(ev.error);
            this.tokens.end(e);
            this.settle.reject(e);
          }
        }
      },
    );
    this.id = req.id;
    unforward = forwardAbort(this.conn, signal, req.id);
  }

  [Symbol.asyncIterator](): AsyncIterator<GeneratedToken> {
    this.start();
    return this.tokens[Symbol.asyncIterator]();
  }

  result(): Promise<GenerateResult> {
    this.start();
    return this.finished;
  }
}

function lostError(loss: DeviceLoss): Error {
  return deserializeError({
    name: 'GpuDeviceError',
    message: `the GPU device was lost (${loss.reason}${loss.message ? `: ${loss.message}` : ''}); reload the model to continue`,
  });
}

export interface WorkerEngineOptions extends LoadOptions {
  /** Load progress (checking, downloading into the cache, uploading to the GPU), byte-accurate. */
  onProgress?: (p: LoadProgress) => void;
}

/**
 * An Engine running in a Web Worker, behind the KilnEngine interface. Tokenizing and generating
 * run in the worker; the OpenAI layer (`chat.completions`, `completions`) runs here over them.
 */
export class WorkerEngine implements KilnEngine {
  readonly chat: { readonly completions: OpenAiChat };
  readonly completions: OpenAiCompletions;
  private memory: number;
  private adapterSummary: AdapterSummary;

  private constructor(
    private readonly conn: Connection,
    private readonly info: EngineInfo,
    private readonly terminate: (() => void) | null,
  ) {
    this.memory = info.gpuMemoryBytes;
    this.adapterSummary = info.adapter;
    conn.onRecovered = (adapter, bytes) => {
      this.adapterSummary = adapter;
      this.memory = bytes;
    };
    this.chat = { completions: new OpenAiChat(this) };
    this.completions = new OpenAiCompletions(this);
    this.tuning = info.tuning;
    this.tuned =
      info.tuning.state === 'running'
        ? new Promise((resolve) => {
            conn.onTuned = (status) => {
              this.tuning = status;
              resolve(status);
            };
          })
        : Promise.resolve(info.tuning);
  }

  private tuning: TuningStatus;
  private readonly tuned: Promise<TuningStatus>;

  get tuningStatus(): TuningStatus {
    return { ...this.tuning };
  }

  whenTuned(): Promise<TuningStatus> {
    return this.tuned;
  }

  /**
   * Loads a model in the worker behind `endpoint` (a Worker running `serveEngine`). With
   * `terminate`, dispose() also ends the worker. Rejects with the worker's error, rebuilt as its
   * Kiln class.
   */
  static load(
    endpoint: Endpoint<WorkerEvent, WorkerRequest>,
    options: WorkerEngineOptions,
    terminate: (() => void) | null = null,
  ): Promise<WorkerEngine> {
    const conn = new Connection(endpoint);
    const { onProgress, ...loadOptions } = options;
    return new Promise((resolve, reject) => {
      const req = conn.send(
        (id) => ({ type: 'load', id, options: loadOptions }),
        (ev) => {
          if (ev.type === 'progress') onProgress?.(ev.progress);
          else if (ev.type === 'loaded') {
            req.done();
            resolve(new WorkerEngine(conn, ev.info, terminate));
          } else if (ev.type === 'error') {
            req.done();
            reject(deserializeError(ev.error));
          }
        },
      );
    });
  }

  get modelName(): string {
    return this.info.modelName;
  }
  get contextLength(): number {
    return this.info.contextLength;
  }
  get adapter(): AdapterSummary {
    return this.adapterSummary;
  }
  get kvCacheDtype(): KvDtype {
    return this.info.kvCacheDtype;
  }
  get weightFormat(): string {
    return this.info.weightFormat;
  }
  get hasChatTemplate(): boolean {
    return this.info.hasChatTemplate;
  }
  get loadMs(): number {
    return this.info.loadMs;
  }
  /** As of the last finished request (the worker reports it with each). */
  get gpuMemoryBytes(): number {
    return this.memory;
  }
  get memoryPlan(): MemoryPlan | null {
    return this.info.memoryPlan;
  }
  /** True when the model came from the browser's cache, with no network. */
  get fromCache(): boolean {
    return this.info.fromCache;
  }
  /**
   * Settles when the GPU device is lost for good: the engine cannot rebuild (a model read over the
   * network) or its rebuild failed. A loss it recovers from is reported to `onRecovery` instead.
   */
  get deviceLost(): Promise<DeviceLoss> {
    return this.conn.lost;
  }

  /**
   * Whether the worker's engine is rebuilding on a new GPU device after a loss (weights read again
   * from the cache or the picked files). Requests sent meanwhile run once it is over.
   */
  get recovering(): boolean {
    return this.conn.recovering !== null;
  }

  /** Calls `listener` when a device loss the engine recovers from starts and when it is over. */
  onRecovery(listener: (ev: RecoveryEvent) => void): void {
    this.conn.recoveryListeners.push(listener);
  }

  /** @internal */
  noteMemory(bytes: number): void {
    this.memory = bytes;
  }

  get toolCallFormat(): ToolFormatName {
    return this.info.toolCallFormat;
  }

  checkGrammar(grammar: GrammarSpec): Promise<void> {
    if (this.conn.loss) return Promise.reject(lostError(this.conn.loss));
    return new Promise((resolve, reject) => {
      const sent = this.conn.send(
        (id) => ({ type: 'check-grammar', id, grammar }),
        (ev) => {
          if (ev.type !== 'checked' && ev.type !== 'error') return;
          sent.done();
          if (ev.type === 'checked') resolve();
          else reject(deserializeError(ev.error));
        },
      );
    });
  }

  tokenize(input: string | ChatInput): Promise<number[]> {
    if (this.conn.loss) return Promise.reject(lostError(this.conn.loss));
    const data =
      typeof input === 'string'
        ? input
        : {
            messages: [...input.messages],
            ...(input.tools ? { tools: [...input.tools] } : {}),
            ...(input.chatTemplateKwargs ? { chatTemplateKwargs: { ...input.chatTemplateKwargs } } : {}),
          };
    return new Promise((resolve, reject) => {
      const sent = this.conn.send(
        (id) => ({ type: 'tokenize', id, input: data }),
        (ev) => {
          if (ev.type !== 'tokens' && ev.type !== 'error') return;
          sent.done();
          if (ev.type === 'tokens') resolve(ev.ids);
          else reject(deserializeError(ev.error));
        },
      );
    });
  }

  generate(prompt: string | readonly number[], opts: GenerateOptions = {}): GenerationStream {
    return new RemoteGeneration(this, this.conn, prompt, opts);
  }

  /** Frees the engine in the worker; a worker given `terminate` is ended once it has. */
  dispose(): void {
    const req = this.conn.send(
      (id) => ({ type: 'dispose', id }),
      () => {
        req.done();
        this.terminate?.();
      },
    );
  }
}

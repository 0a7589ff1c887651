/**
 * The tuning cache: per adapter signature, the choice made for every shape class tuned on it, with
 * the timings that justified it. Stored as JSON text through a TuneStore (a file in Node, IndexedDB
 * in the browser, memory in tests). Nothing read back is trusted blindly: text that does not parse,
 * another format, a foreign signature or a malformed entry is ignored with a warning, and the tuner
 * further accepts an entry only if its choice is one of the class's current candidates and it was
 * timed against the class's current default (a changed defaults row, or a forced one, makes the
 * old speedup meaningless: the winner might now be slower than the default).
 */
import type { KernelChoice } from './choices.js';
import { canonicalJson, signatureId, type AdapterSignature } from './signature.js';

/** Where tuning results persist, one text per adapter signature id. */
export interface TuneStore {
  /** Human-readable location, for messages. */
  readonly where: string;
  read(id: string): Promise<string | null>;
  write(id: string, text: string): Promise<void>;
}

export class MemoryTuneStore implements TuneStore {
  readonly where = 'memory';
  readonly texts = new Map<string, string>();

  read(id: string): Promise<string | null> {
    return Promise.resolve(this.texts.get(id) ?? null);
  }

  write(id: string, text: string): Promise<void> {
    this.texts.set(id, text);
    return Promise.resolve();
  }
}

/** One tuned shape class as cached (and as reported, with the class key). */
export interface TunedClass {
  kernel: string;
  choice: KernelChoice;
  /** Pipeline label(s) of the winner and of the default, e.g. "matmul_bf16_gemm_t4x2". */
  best_variant: string;
  default_variant: string;
  /** The default the winner was timed against (candidate 0 of the class when it was tuned). */
  default_choice: KernelChoice;
  default_ms: number;
  best_ms: number;
  candidates_tried: number;
}

const FORMAT = 'kiln-tuning';
/** 2: entries carry default_choice (version 1 entries cannot say what they beat). */
const VERSION = 2;

interface TuneFile {
  format: typeof FORMAT;
  version: typeof VERSION;
  signature: AdapterSignature;
  classes: Record<string, TunedClass>;
}

export type Warn = (message: string) => void;

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);
const positive = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v) && v > 0;

function validChoice(v: unknown): v is KernelChoice {
  if (!isObject(v)) return false;
  if (v.kernel === 'attention_decode')
    return (
      Number.isInteger(v.chunk) && (v.chunk as number) > 0 && (v.form === undefined || v.form === 'lanes')
    );
  return (
    (v.kernel === 'matmul' || v.kernel === 'matmul_q4' || v.kernel === 'matmul_gguf') && isObject(v.variant)
  );
}

function validEntry(v: unknown): v is TunedClass {
  return (
    isObject(v) &&
    typeof v.kernel === 'string' &&
    validChoice(v.choice) &&
    validChoice(v.default_choice) &&
    typeof v.best_variant === 'string' &&
    typeof v.default_variant === 'string' &&
    positive(v.default_ms) &&
    positive(v.best_ms) &&
    Number.isInteger(v.candidates_tried) &&
    (v.candidates_tried as number) >= 0
  );
}

/** The cached classes for `signature` (empty when there are none or they cannot be trusted). */
export async function loadTuneCache(
  store: TuneStore,
  signature: AdapterSignature,
  warn: Warn,
): Promise<Map<string, TunedClass>> {
  const out = new Map<string, TunedClass>();
  const id = signatureId(signature);
  let text: string | null;
  try {
    text = await store.read(id);
  } catch (e) {
    warn(`tuning cache (${store.where}) could not be read, tuning afresh: ${(e as Error).message}`);
    return out;
  }
  if (text === null) return out;
  let file: unknown;
  try {
    file = JSON.parse(text);
  } catch {
    warn(`tuning cache entry ${id} (${store.where}) is not valid JSON; ignored`);
    return out;
  }
  if (!isObject(file) || file.format !== FORMAT || file.version !== VERSION || !isObject(file.classes)) {
    warn(`tuning cache entry ${id} (${store.where}) is not a ${FORMAT} v${VERSION} file; ignored`);
    return out;
  }
  if (canonicalJson(file.signature) !== canonicalJson(signature)) {
    warn(`tuning cache entry ${id} (${store.where}) was made for another adapter or Kiln version; ignored`);
    return out;
  }
  for (const [key, entry] of Object.entries(file.classes)) {
    if (validEntry(entry)) out.set(key, entry);
    else warn(`tuning cache entry ${id} (${store.where}): malformed class "${key}" ignored`);
  }
  return out;
}

export async function saveTuneCache(
  store: TuneStore,
  signature: AdapterSignature,
  classes: ReadonlyMap<string, TunedClass>,
): Promise<void> {
  const file: TuneFile = {
    format: FORMAT,
    version: VERSION,
    signature,
    classes: Object.fromEntries([...classes].sort(([a], [b]) => (a < b ? -1 : 1))),
  };
  await store.write(signatureId(signature), `${JSON.stringify(file, null, 1)}\n`);
}

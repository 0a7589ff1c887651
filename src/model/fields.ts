/**
 * Typed, checked reads of one JSON object of a model folder (config.json, generation_config.json,
 * a nested rope_scaling): every refusal names the file, the field and its value, so a model Kiln
 * cannot run exactly is refused up front instead of producing wrong tokens later.
 */
import { InvalidModelFileError, UnsupportedModelError } from '../errors.js';
import { describeValue, type JsonObject } from '../io/json.js';

/**
 * Sanity bounds on config sizes. They are far above every published model (the largest have ~126
 * layers, hidden sizes of 16k, vocabularies of 262k and contexts of 10M tokens) but stop a hostile
 * or corrupt config.json before it makes the engine build a tensor list or buffers of absurd size.
 * 2^24 is also the largest range in which f32 (what shaders compute positions and sizes in) holds
 * every integer exactly.
 */
export const MAX_LAYERS = 1024;
/** Upper bound of every other size, count or length in config.json (see {@link MAX_LAYERS}). */
export const MAX_DIM = 2 ** 24;

/** Field readers bound to one file label, so every message starts with the file it is about. */
export class Fields {
  constructor(
    readonly label: string,
    private readonly obj: JsonObject,
    readonly prefix = '',
  ) {}

  invalid(field: string, value: unknown, expected: string): never {
    throw new InvalidModelFileError(
      `${this.label}: ${this.prefix}${field} is ${describeValue(value)}, expected ${expected}`,
    );
  }

  unsupported(message: string): never {
    throw new UnsupportedModelError(`${this.label}: ${message}`);
  }

  raw(field: string): unknown {
    return this.obj[field];
  }

  /** True when the field is absent or null (HF writes both for "use the default"). */
  unset(field: string): boolean {
    return this.obj[field] === undefined || this.obj[field] === null;
  }

  /** A positive integer no larger than `max` (a sanity bound, see {@link MAX_DIM}). */
  positiveInt(field: string, max = MAX_DIM): number {
    const v = this.obj[field];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) {
      this.invalid(field, v, 'a positive integer');
    }
    if (v > max) this.invalid(field, v, `at most ${max} (no real model is that large)`);
    return v;
  }

  /** An integer from 0 up to `max`. */
  nonNegativeInt(field: string, max = MAX_DIM): number {
    const v = this.obj[field];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
      this.invalid(field, v, 'a non-negative integer');
    }
    if (v > max) this.invalid(field, v, `at most ${max} (no real model is that large)`);
    return v;
  }

  optionalPositiveInt(field: string, max = MAX_DIM): number | undefined {
    return this.unset(field) ? undefined : this.positiveInt(field, max);
  }

  positiveNumber(field: string): number {
    const v = this.obj[field];
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) this.invalid(field, v, 'a positive number');
    return v;
  }

  bool(field: string, fallback: boolean): boolean {
    if (this.unset(field)) return fallback;
    const v = this.obj[field];
    if (typeof v !== 'boolean') this.invalid(field, v, 'true or false');
    return v;
  }

  tokenId(field: string): number | null {
    if (this.unset(field)) return null;
    const v = this.obj[field];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) this.invalid(field, v, 'a token id');
    return v;
  }

  tokenIds(field: string): number[] {
    if (this.unset(field)) return [];
    const v = this.obj[field];
    const list = Array.isArray(v) ? (v as unknown[]) : [v];
    for (const id of list) {
      if (typeof id !== 'number' || !Number.isSafeInteger(id) || id < 0) {
        this.invalid(field, v, 'a token id or a list of token ids');
      }
    }
    return list as number[];
  }

  /** A finite number, or undefined when absent or null. */
  optionalPositiveNumber(field: string): number | undefined {
    return this.unset(field) ? undefined : this.positiveNumber(field);
  }
}

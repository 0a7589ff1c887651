/**
 * GGUF metadata: the value types a header may hold (numbers, 64-bit integers as bigints, bools,
 * strings, typed arrays) and typed, checked reads of them by key, so code that maps metadata onto
 * a model config or a tokenizer refuses a wrong value by naming the file and the key. Reading the
 * values out of the file is gguf-read.ts's.
 */
import { InvalidModelFileError } from '../errors.js';
import { describeValue } from './json.js';

/** GGUF metadata value types, by their id in the file. */
export const GGUF_VALUE_TYPES = [
  'u8',
  'i8',
  'u16',
  'i16',
  'u32',
  'i32',
  'f32',
  'bool',
  'string',
  'array',
  'u64',
  'i64',
  'f64',
] as const;
export type GgufValueType = (typeof GGUF_VALUE_TYPES)[number];
/** Types an array may hold (GGUF allows arrays of arrays; no model uses them and we refuse them). */
export type GgufItemType = Exclude<GgufValueType, 'array'>;

/** The elements of a metadata array: a typed array for numbers, plain arrays for bools and strings. */
export type GgufArrayValues =
  | Uint8Array
  | Int8Array
  | Uint16Array
  | Int16Array
  | Uint32Array
  | Int32Array
  | Float32Array
  | Float64Array
  | BigUint64Array
  | BigInt64Array
  | boolean[]
  | string[];

/** A metadata value with its type; 64-bit integers are bigints, so no value changes on a round trip. */
export type GgufValue =
  | { type: 'u8' | 'i8' | 'u16' | 'i16' | 'u32' | 'i32' | 'f32' | 'f64'; value: number }
  | { type: 'u64' | 'i64'; value: bigint }
  | { type: 'bool'; value: boolean }
  | { type: 'string'; value: string }
  | { type: 'array'; itemType: GgufItemType; value: GgufArrayValues };

/**
 * Typed, checked reads of a GGUF file's metadata: every refusal names the file, the key and what
 * was found, like Fields does for config.json.
 */
export class GgufMetadata {
  constructor(
    readonly file: string,
    readonly entries: ReadonlyMap<string, GgufValue>,
  ) {}

  has(key: string): boolean {
    return this.entries.has(key);
  }

  get(key: string): GgufValue | undefined {
    return this.entries.get(key);
  }

  private bad(key: string, v: GgufValue | undefined, expected: string): never {
    const found =
      v === undefined
        ? 'missing'
        : v.type === 'array'
          ? `an array of ${v.itemType} (${v.value.length} items)`
          : `${v.type} ${describeValue(typeof v.value === 'bigint' ? v.value.toString() : v.value)}`;
    throw new InvalidModelFileError(`${this.file}: metadata ${key} is ${found}, expected ${expected}`);
  }

  /** A string value, or undefined when absent. */
  optionalString(key: string): string | undefined {
    const v = this.entries.get(key);
    if (v === undefined) return undefined;
    if (v.type !== 'string') this.bad(key, v, 'a string');
    return v.value;
  }

  string(key: string): string {
    const s = this.optionalString(key);
    if (s === undefined) this.bad(key, undefined, 'a string');
    return s;
  }

  /** A non-negative integer of any integer type, or undefined when absent. */
  optionalUint(key: string, max = Number.MAX_SAFE_INTEGER): number | undefined {
    const v = this.entries.get(key);
    if (v === undefined) return undefined;
    let n: number | undefined;
    if (v.type === 'u64' || v.type === 'i64') n = v.value <= BigInt(max) ? Number(v.value) : undefined;
    else if (v.type !== 'f32' && v.type !== 'f64' && typeof v.value === 'number') n = v.value;
    if (n === undefined || n < 0 || n > max) this.bad(key, v, `an integer in 0..${max}`);
    return n;
  }

  uint(key: string, max?: number): number {
    const n = this.optionalUint(key, max);
    if (n === undefined) this.bad(key, undefined, 'an integer');
    return n;
  }

  /** A finite number of any numeric type, or undefined when absent. */
  optionalNumber(key: string): number | undefined {
    const v = this.entries.get(key);
    if (v === undefined) return undefined;
    const n = typeof v.value === 'bigint' ? Number(v.value) : v.value;
    if (typeof n !== 'number' || !Number.isFinite(n)) this.bad(key, v, 'a finite number');
    return n;
  }

  optionalBool(key: string): boolean | undefined {
    const v = this.entries.get(key);
    if (v === undefined) return undefined;
    if (v.type !== 'bool') this.bad(key, v, 'a bool');
    return v.value;
  }

  /** An array of strings, or undefined when absent. */
  optionalStringArray(key: string): readonly string[] | undefined {
    const v = this.entries.get(key);
    if (v === undefined) return undefined;
    if (v.type !== 'array' || v.itemType !== 'string') this.bad(key, v, 'an array of strings');
    return v.value as string[];
  }

  /** An array of numbers (any numeric item type, 64-bit ones converted), or undefined when absent. */
  optionalNumberArray(key: string): ArrayLike<number> | undefined {
    const v = this.entries.get(key);
    if (v === undefined) return undefined;
    if (v.type !== 'array' || v.itemType === 'string' || v.itemType === 'bool') {
      this.bad(key, v, 'an array of numbers');
    }
    const a = v.value;
    if (a instanceof BigInt64Array || a instanceof BigUint64Array) return Array.from(a, (x) => Number(x));
    return a as ArrayLike<number>;
  }
}

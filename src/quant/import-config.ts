/**
 * The quantization config of a pre-quantized GPTQ or AWQ checkpoint (config.json's
 * `quantization_config`, AutoGPTQ's quantize_config.json or AutoAWQ's quant_config.json), and the
 * tensor checks both importers (gptq.ts, awq.ts) share.
 *
 * Only what Kiln can reproduce exactly is accepted: 4-bit codes, groups of 32/64/128 (or one group
 * over a K of that size), the classic and v2 GPTQ zero-point storage, and AWQ's `gemm` packing.
 * Anything else is refused here, with the field and its value, before any tensor is read.
 */
import { InvalidModelFileError, UnsupportedModelError } from '../errors.js';
import { f16BitsToF32 } from '../io/dtype.js';
import { describeValue, isJsonObject, type JsonObject } from '../io/json.js';
import { Q4_GROUP_SIZES, type Q4GroupSize, type Q4Matrix } from './q4.js';

/** A group size as configured: -1 means one group over all of K (resolved per tensor). */
export type ImportGroupSize = Q4GroupSize | -1;

export interface GptqImportConfig {
  method: 'gptq';
  bits: 4;
  groupSize: ImportGroupSize;
  /**
   * Act-order: groups are not contiguous in k and `g_idx` says which group each k is in. Only used
   * to insist on g_idx; the importer always follows g_idx when the checkpoint has one.
   */
  descAct: boolean;
  /**
   * Informational: the stored zero points are what the reference kernels use, so the importer
   * reads them in both cases (a symmetric checkpoint stores 8, or 7 in the classic format).
   */
  sym: boolean;
  /** 'gptq': zero points stored minus one (AutoGPTQ, GPTQModel's v1); 'gptq_v2': stored as is. */
  checkpointFormat: 'gptq' | 'gptq_v2';
  /** GPTQModel's `lm_head`: the output projection is quantized too. */
  lmHead: boolean;
}

export interface AwqImportConfig {
  method: 'awq';
  bits: 4;
  groupSize: ImportGroupSize;
  /** Always true: the gemm packing stores a zero point per group (see parseAwq). */
  zeroPoint: true;
  /** The packing: only AutoAWQ's `gemm` layout is imported. */
  version: 'gemm';
  /** Module names left unquantized (e.g. a vision tower); empty when none. */
  modulesToNotConvert: string[];
}

export type ImportedQuantConfig = GptqImportConfig | AwqImportConfig;

/** Field readers that start every message with `where` (the file and object it is about). */
class QuantFields {
  constructor(
    private readonly where: string,
    private readonly obj: JsonObject,
  ) {}

  invalid(field: string, expected: string): never {
    throw new InvalidModelFileError(
      `${this.where}: ${field} is ${describeValue(this.obj[field])}, expected ${expected}`,
    );
  }

  unsupported(message: string): never {
    throw new UnsupportedModelError(`${this.where}: ${message}`);
  }

  raw(field: string): unknown {
    return this.obj[field];
  }

  has(field: string): boolean {
    return this.obj[field] !== undefined && this.obj[field] !== null;
  }

  /** The first of `fields` that is set (AutoAWQ and transformers spell some fields differently). */
  pick(...fields: string[]): string | undefined {
    return fields.find((f) => this.has(f));
  }

  bool(field: string, fallback: boolean): boolean {
    if (!this.has(field)) return fallback;
    const v = this.obj[field];
    if (typeof v !== 'boolean') this.invalid(field, 'true or false');
    return v;
  }

  string(field: string): string {
    const v = this.obj[field];
    if (typeof v !== 'string') this.invalid(field, 'a string');
    return v;
  }

  bits(field: string | undefined): 4 {
    if (field === undefined) this.invalid('bits', 'an integer (4)');
    const v = this.obj[field];
    if (typeof v !== 'number' || !Number.isSafeInteger(v)) this.invalid(field, 'an integer (4)');
    if (v !== 4) {
      this.unsupported(`${field} is ${v}: Kiln imports 4-bit GPTQ/AWQ weights only (int4 kernels)`);
    }
    return 4;
  }

  groupSize(field: string | undefined): ImportGroupSize {
    if (field === undefined) this.invalid('group_size', 'an integer (32, 64, 128 or -1)');
    const v = this.obj[field];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || (v < 1 && v !== -1)) {
      this.invalid(field, 'a positive integer or -1');
    }
    if (v !== -1 && !(Q4_GROUP_SIZES as readonly number[]).includes(v)) {
      this.unsupported(
        `${field} is ${v}: Kiln's int4 kernels support group sizes ${Q4_GROUP_SIZES.join(', ')} (or -1 over such a K)`,
      );
    }
    return v as ImportGroupSize;
  }
}

function parseGptq(f: QuantFields): GptqImportConfig {
  const bits = f.bits(f.pick('bits'));
  const groupSize = f.groupSize(f.pick('group_size'));
  // transformers writes `checkpoint_format`; some GPTQModel releases write `format` instead.
  const formatField = f.pick('checkpoint_format', 'format');
  let checkpointFormat: GptqImportConfig['checkpointFormat'] = 'gptq';
  if (formatField !== undefined) {
    const v = f.string(formatField);
    if (v !== 'gptq' && v !== 'gptq_v2') {
      // marlin, bitblas, ... repack the same codes in kernel-specific layouts.
      f.unsupported(`${formatField} ${describeValue(v)} is not supported (expected "gptq" or "gptq_v2")`);
    }
    checkpointFormat = v;
  }
  // GPTQModel's per-module overrides may change bits or group size for some layers: importing them
  // with the global settings would decode those layers wrongly.
  const dynamic = f.raw('dynamic');
  if (dynamic !== undefined && dynamic !== null) {
    if (!isJsonObject(dynamic)) f.invalid('dynamic', 'null or an object');
    if (Object.keys(dynamic).length > 0) {
      f.unsupported('dynamic (per-module quantization overrides) is not supported');
    }
  }
  return {
    method: 'gptq',
    bits,
    groupSize,
    descAct: f.bool('desc_act', false),
    sym: f.bool('sym', true),
    checkpointFormat,
    lmHead: f.bool('lm_head', false),
  };
}

function parseAwq(f: QuantFields): AwqImportConfig {
  // AutoAWQ's own quant_config.json says w_bit / q_group_size; transformers says bits / group_size.
  const bits = f.bits(f.pick('bits', 'w_bit'));
  const groupSize = f.groupSize(f.pick('group_size', 'q_group_size'));
  if (!f.bool('zero_point', true)) {
    f.unsupported(
      'zero_point false (symmetric AWQ) is not supported: Kiln imports the gemm packing, which stores a zero point per group',
    );
  }
  if (f.has('version')) {
    // AutoAWQ writes "GEMM", transformers "gemm".
    const v = f.string('version').toLowerCase();
    if (v !== 'gemm') {
      f.unsupported(
        `version ${describeValue(f.raw('version'))} is not supported: Kiln imports AutoAWQ's "gemm" packing only (gemv and the others lay the codes out differently)`,
      );
    }
  }
  let modulesToNotConvert: string[] = [];
  if (f.has('modules_to_not_convert')) {
    const m = f.raw('modules_to_not_convert');
    if (!Array.isArray(m) || !m.every((x) => typeof x === 'string')) {
      f.invalid('modules_to_not_convert', 'null or a list of module names');
    }
    modulesToNotConvert = m as string[];
  }
  return { method: 'awq', bits, groupSize, zeroPoint: true, version: 'gemm', modulesToNotConvert };
}

/**
 * Parses a quantization config: config.json's `quantization_config` object, or the separate
 * quantize_config.json (AutoGPTQ) / quant_config.json (AutoAWQ) object. `where` names it in every
 * message (e.g. "config.json quantization_config"). Malformed values throw InvalidModelFileError,
 * well-formed ones Kiln cannot import exactly (bits 8, group size 256, AWQ gemv, ...) throw
 * UnsupportedModelError naming the field and its value.
 */
export function parseQuantConfig(obj: unknown, where: string): ImportedQuantConfig {
  if (!isJsonObject(obj)) {
    throw new InvalidModelFileError(`${where}: expected an object, got ${describeValue(obj)}`);
  }
  const f: QuantFields = new QuantFields(where, obj);
  let method: string;
  if (f.has('quant_method')) {
    method = f.string('quant_method').toLowerCase();
  } else if (f.has('w_bit') || f.has('q_group_size')) {
    // Older standalone files carry no quant_method: AutoAWQ's spells its fields w_bit/q_group_size,
    // AutoGPTQ's always has desc_act.
    method = 'awq';
  } else if (f.has('desc_act')) {
    method = 'gptq';
  } else {
    f.invalid('quant_method', '"gptq" or "awq"');
  }
  if (method === 'gptq') return parseGptq(f);
  if (method === 'awq') return parseAwq(f);
  return f.unsupported(
    `quant_method ${describeValue(f.raw('quant_method'))} is not supported (Kiln imports "gptq" and "awq" checkpoints)`,
  );
}

/** An imported layer: the matrix and, when its groups were not contiguous in k, the column order. */
export interface ImportedQ4 {
  matrix: Q4Matrix;
  /** perm[j] = the original k of column j; X must be gathered by it (x'[j] = x[perm[j]]). */
  perm?: Uint32Array;
}

/** Packed int32 tensors as read from safetensors (I32); the bits are what matter, so U32 is fine too. */
export type PackedInts = Int32Array | Uint32Array;

/**
 * The group size of one [rows, cols = K] layer: -1 becomes K, which must then itself be a size the
 * kernels support (padding K would change what the activations must look like).
 */
export function resolveGroupSize(groupSize: ImportGroupSize, cols: number, layer: string): Q4GroupSize {
  const gs = groupSize === -1 ? cols : groupSize;
  if (!(Q4_GROUP_SIZES as readonly number[]).includes(gs)) {
    throw new UnsupportedModelError(
      `${layer}: group_size -1 makes one group of K = ${cols}, but Kiln's int4 kernels support groups of ${Q4_GROUP_SIZES.join(', ')} only`,
    );
  }
  if (cols % gs !== 0) {
    throw new UnsupportedModelError(
      `${layer}: K = ${cols} is not a multiple of the group size ${gs} (Kiln has no partial groups)`,
    );
  }
  return gs as Q4GroupSize;
}

const showShape = (s: readonly number[]): string => `[${s.join(', ')}]`;

/**
 * Checks one checkpoint tensor against the shape the layer implies and returns it. `shape` is the
 * stored shape when the caller has it (safetensors header): then a transposed or otherwise
 * mis-shaped tensor is caught even when its element count happens to match.
 */
export function requireTensor<T extends { length: number }>(
  data: T | undefined,
  shape: readonly number[] | undefined,
  expected: readonly number[],
  tensor: string,
): T {
  if (data === undefined) {
    throw new InvalidModelFileError(`${tensor} is missing (expected shape ${showShape(expected)})`);
  }
  if (shape !== undefined) {
    if (shape.length !== expected.length || shape.some((d, i) => d !== expected[i])) {
      throw new InvalidModelFileError(
        `${tensor} has shape ${showShape(shape)}, expected ${showShape(expected)}`,
      );
    }
  }
  const count = expected.reduce((a, b) => a * b, 1);
  if (data.length !== count) {
    const stored = shape === undefined ? '' : ` for its shape ${showShape(shape)}`;
    throw new InvalidModelFileError(
      `${tensor} has ${data.length} elements${stored}, expected shape ${showShape(expected)} (${count})`,
    );
  }
  return data;
}

/**
 * f16 scale bits as their exact f32 values (same order). Inf/NaN are refused: no weight can use
 * them, and packQ4 (rightly) cannot round-trip them.
 */
export function decodeF16Scales(bits: Uint16Array, tensor: string): Float32Array {
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) {
    const v = f16BitsToF32(bits[i] as number);
    if (!Number.isFinite(v)) {
      throw new InvalidModelFileError(`${tensor}: element ${i} is ${v}, expected a finite f16 scale`);
    }
    out[i] = v;
  }
  return out;
}

/** Layer size checks common to both formats: qzeros packs 8 consecutive output features per int32. */
export function checkLayerShape(rows: number, cols: number, layer: string): void {
  if (!Number.isSafeInteger(rows) || rows < 1 || !Number.isSafeInteger(cols) || cols < 1) {
    throw new RangeError(`${layer}: layer shape [${rows}, ${cols}] must be positive integers`);
  }
  if (rows % 8 !== 0) {
    throw new UnsupportedModelError(
      `${layer}: N = ${rows} output features is not a multiple of 8 (qzeros packs 8 per int32)`,
    );
  }
}

/**
 * Which int4 path a model's projections take (see `WeightQuant` in weights.ts): decided from the
 * folder's quantization_config (a Kiln, GPTQ or AWQ checkpoint loads as stored) and, for float
 * folders, from the caller's request to quantize while loading.
 */
import { InvalidRequestError } from '../errors.js';
import { parseQuantConfig } from '../quant/import-config.js';
import { parseKilnQuantConfig } from '../quant/kiln-format.js';
import { Q4_GROUP_SIZES, type Q4Format, type Q4GroupSize } from '../quant/q4.js';
import type { ModelSpec } from '../model/spec.js';
import type { WeightQuant } from './loader.js';

/** Quantizing a float checkpoint while loading. */
export interface LoadQuantOptions {
  /** Group size along K (default 32). */
  groupSize?: Q4GroupSize;
  /** Zero point 8 for every group (default false: asymmetric, per-group zero points). */
  symmetric?: boolean;
  /** Quantize the LM head too (default false: it stays in the checkpoint's float format). */
  lmHead?: boolean;
}

/** Load-time int4 default: asymmetric, group 32, f16 scales (RTN's better variant; see README). */
export const DEFAULT_LOAD_FORMAT: Q4Format = { groupSize: 32, symmetric: false, scaleType: 'f16' };

export function weightQuantFor(
  spec: ModelSpec,
  location: string,
  quant: 'none' | 'q4',
  opts: LoadQuantOptions = {},
): WeightQuant {
  const q = spec.quantizationConfig;
  if (q) {
    const where = `config.json in ${location}`;
    if (q.quant_method === 'kiln') return { kind: 'kiln', ...parseKilnQuantConfig(q, where) };
    return { kind: 'import', config: parseQuantConfig(q, where) };
  }
  if (quant === 'none') return { kind: 'float' };
  const groupSize = opts.groupSize ?? DEFAULT_LOAD_FORMAT.groupSize;
  if (!Q4_GROUP_SIZES.includes(groupSize)) {
    throw new InvalidRequestError(
      `int4 group size ${String(groupSize)} is not one of ${Q4_GROUP_SIZES.join(', ')}`,
    );
  }
  return {
    kind: 'quantize',
    format: { groupSize, symmetric: opts.symmetric ?? DEFAULT_LOAD_FORMAT.symmetric, scaleType: 'f16' },
    lmHead: opts.lmHead ?? false,
  };
}

/** A short description for logs and `kiln run --json`. */
export function describeWeightQuant(q: WeightQuant): string {
  if (q.kind === 'float') return 'float';
  if (q.kind === 'import') return `int4 g${q.config.groupSize}, ${q.config.method} checkpoint`;
  const f = q.format;
  const what = `int4 g${f.groupSize} ${f.symmetric ? 'sym' : 'asym'}${q.lmHead ? ' (+lm_head)' : ''}`;
  return q.kind === 'kiln' ? `${what}, kiln checkpoint` : `${what}, quantized at load`;
}

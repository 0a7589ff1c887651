/**
 * Which WeightSource a model loads through: decided by the folder's quantization_config (a Kiln,
 * GPTQ or AWQ checkpoint loads as stored) and, for float folders, by the caller's request to
 * quantize while loading.
 */
import { InvalidRequestError } from '../errors.js';
import type { ModelSpec } from '../model/spec.js';
import { parseQuantConfig } from '../quant/import-config.js';
import { parseKilnQuantConfig } from '../quant/kiln-format.js';
import { Q4_GROUP_SIZES, type Q4Format, type Q4GroupSize } from '../quant/q4.js';
import { floatSource } from './float.js';
import { importedSource } from './imported.js';
import { kilnSource } from './kiln.js';
import { quantizeSource } from './quantize.js';
import type { WeightSource } from './source.js';

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

export function weightSourceFor(
  spec: ModelSpec,
  location: string,
  quant: 'none' | 'q4',
  opts: LoadQuantOptions = {},
): WeightSource {
  const q = spec.quantizationConfig;
  const tied = spec.tieWordEmbeddings;
  if (q) {
    const where = `config.json in ${location}`;
    if (q.quant_method === 'kiln') {
      const k = parseKilnQuantConfig(q, where);
      return kilnSource(k.format, k.lmHead, tied);
    }
    return importedSource(parseQuantConfig(q, where));
  }
  if (quant === 'none') return floatSource;
  const groupSize = opts.groupSize ?? DEFAULT_LOAD_FORMAT.groupSize;
  if (!Q4_GROUP_SIZES.includes(groupSize)) {
    throw new InvalidRequestError(
      `int4 group size ${String(groupSize)} is not one of ${Q4_GROUP_SIZES.join(', ')}`,
    );
  }
  const format: Q4Format = {
    groupSize,
    symmetric: opts.symmetric ?? DEFAULT_LOAD_FORMAT.symmetric,
    scaleType: 'f16',
  };
  return quantizeSource(format, opts.lmHead ?? false, tied);
}

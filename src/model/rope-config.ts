/**
 * RoPE scaling as config.json states it (`rope_scaling`, or transformers v5's `rope_parameters`),
 * read with modeling_rope_utils' rules; architecture files with their own RoPE fields (Phi-3's old
 * type names, Gemma 3's per-layer-type parameters) call parseRopeParams on their objects.
 */
import { isJsonObject } from '../io/json.js';
import { Fields } from './fields.js';
import type { RopeScaling } from './spec.js';

/** The rope_scaling / rope_parameters of a config (`f`); `rotaryDim` sizes LongRoPE's factor lists. */
export function parseRopeScaling(f: Fields, architecture: string, rotaryDim: number): RopeScaling {
  // transformers v5 moved these into `rope_parameters`; older configs use `rope_scaling`.
  const field = f.unset('rope_scaling') && !f.unset('rope_parameters') ? 'rope_parameters' : 'rope_scaling';
  if (f.unset(field)) return { type: 'none' };
  const rs = f.raw(field);
  if (!isJsonObject(rs)) f.invalid(field, rs, 'null or an object');
  return parseRopeParams(new Fields(f.label, rs, `${field}.`), f, architecture, rotaryDim);
}

/**
 * One rope_scaling / rope_parameters object (`r`) of a config (`top`, which may hold LongRoPE's
 * original_max_position_embeddings), as modeling_rope_utils reads it. `rotaryDim`: the rotated
 * elements per head (LongRoPE's factor lists have rotaryDim / 2 entries).
 */
export function parseRopeParams(
  r: Fields,
  top: Fields,
  architecture: string,
  rotaryDim: number,
): RopeScaling {
  const typeField = r.unset('rope_type') ? 'type' : 'rope_type';
  const type = r.raw(typeField);
  if (type === undefined && !r.unset('rope_theta')) return { type: 'none' };
  if (typeof type !== 'string') r.invalid('rope_type', type, 'a string such as "linear" or "llama3"');
  switch (type) {
    case 'default':
      return { type: 'none' };
    case 'longrope': {
      const factors = (field: string): number[] => {
        const v = r.raw(field);
        const half = rotaryDim / 2;
        if (!Array.isArray(v) || v.length !== half || v.some((x) => typeof x !== 'number' || !(x > 0)))
          r.invalid(field, v, `a list of ${half} positive numbers (rotary dims / 2)`);
        return v as number[];
      };
      // transformers reads original_max_position_embeddings from the config (Phi-3) or, in v5,
      // from the rope parameters; the ratio of the two context lengths sets the attention factor.
      const orig = r.unset('original_max_position_embeddings')
        ? top.positiveInt('original_max_position_embeddings')
        : r.positiveInt('original_max_position_embeddings');
      const factor = top.positiveInt('max_position_embeddings') / orig;
      const attentionFactor = r.unset('attention_factor')
        ? factor > 1
          ? Math.sqrt(1 + Math.log(factor) / Math.log(orig))
          : 1
        : r.positiveNumber('attention_factor');
      return {
        type: 'longrope',
        shortFactor: factors('short_factor'),
        longFactor: factors('long_factor'),
        originalMaxPositionEmbeddings: orig,
        attentionFactor,
      };
    }
    case 'linear':
      return { type: 'linear', factor: r.positiveNumber('factor') };
    case 'llama3': {
      const s: RopeScaling = {
        type: 'llama3',
        factor: r.positiveNumber('factor'),
        lowFreqFactor: r.positiveNumber('low_freq_factor'),
        highFreqFactor: r.positiveNumber('high_freq_factor'),
        originalMaxPositionEmbeddings: r.positiveInt('original_max_position_embeddings'),
      };
      // The smoothing step divides by (high - low); equal factors would make it 0/0.
      if (s.highFreqFactor <= s.lowFreqFactor) {
        r.invalid('high_freq_factor', s.highFreqFactor, `a value above low_freq_factor (${s.lowFreqFactor})`);
      }
      return s;
    }
    default:
      r.unsupported(
        `${r.prefix}${typeField} ${JSON.stringify(type)} is not supported for ${architecture} ` +
          '(supported: default, linear, llama3, longrope)',
      );
  }
}

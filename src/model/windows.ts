/**
 * Per-layer attention windows from config.json: transformers' `layer_types` list
 * ("full_attention" / "sliding_attention") when the config has one, otherwise the architecture's
 * rule for which layers slide. Architecture files call this from their `config`.
 */
import type { Fields } from './fields.js';

const LAYER_TYPES = ['full_attention', 'sliding_attention'] as const;

/**
 * Reads `layer_types`, checked to hold one known entry per layer; undefined when the key is absent
 * or null. True marks a sliding layer.
 */
export function readLayerTypes(f: Fields, numLayers: number): boolean[] | undefined {
  if (f.unset('layer_types')) return undefined;
  const v = f.raw('layer_types');
  if (!Array.isArray(v) || v.length !== numLayers) {
    f.invalid('layer_types', v, `a list of ${numLayers} entries (one per layer)`);
  }
  return (v as unknown[]).map((t, i) => {
    if (!LAYER_TYPES.includes(t as (typeof LAYER_TYPES)[number])) {
      f.unsupported(
        `layer_types[${i}] ${JSON.stringify(t)} is not supported (supported: ${LAYER_TYPES.join(', ')})`,
      );
    }
    return t === 'sliding_attention';
  });
}

/**
 * The window of every layer: `window` on the sliding ones, 0 (full attention) on the others and on
 * every layer when `window` is undefined (the config turned sliding off). Which layers slide comes
 * from `layer_types` when present, else from `slides(layer)`.
 */
export function layerWindowsFrom(
  f: Fields,
  numLayers: number,
  window: number | undefined,
  slides: (layer: number) => boolean,
): number[] {
  const types = readLayerTypes(f, numLayers);
  return Array.from({ length: numLayers }, (_, i) =>
    window !== undefined && (types ? types[i] === true : slides(i)) ? window : 0,
  );
}

/**
 * What every kernel wrapper shares: its WGSL source (from the generated table of shaders/), the
 * packing of its `struct Params` uniform, and the grid of element-wise kernels. Recording and
 * replaying a dispatch is the GPU layer's (src/gpu/dispatch.ts).
 */
import { WGSL, type ShaderName } from './wgsl.gen.js';

/** Fields of a WGSL `struct Params` made of 4-byte scalars, in declaration order. */
export type ParamField = readonly [kind: 'u32' | 'f32', value: number];

/** Packs a Params uniform (4-byte scalars, padded to 16 bytes as uniform structs require). */
export function packParams(fields: readonly ParamField[]): ArrayBuffer {
  const words = Math.max(4, Math.ceil(fields.length / 4) * 4);
  const buf = new ArrayBuffer(words * 4);
  const u = new Uint32Array(buf);
  const f = new Float32Array(buf);
  fields.forEach(([kind, value], i) => {
    if (kind === 'u32') {
      if (!Number.isInteger(value) || value < 0 || value > 0xffffffff)
        throw new RangeError(`u32 param ${i} = ${value}`);
      u[i] = value;
    } else f[i] = value;
  });
  return buf;
}

/** WGSL source of a kernel, optionally prefixed with fragments (e.g. a weight format). */
export function shaderSource(main: ShaderName, ...fragments: ShaderName[]): string {
  return [...fragments.map((f) => WGSL[f]), WGSL[main]].join('\n');
}

/**
 * Joins shader parts with every fragment's `enable` directive moved to the top, once (WGSL wants
 * them before any declaration).
 */
export function hoistEnables(parts: readonly string[]): string {
  const lines = parts.join('\n').split('\n');
  const enable = (l: string) => /^enable\s[^;]*;\s*$/.test(l);
  return [...new Set(lines.filter(enable))].concat(lines.filter((l) => !enable(l))).join('\n');
}

/** Max workgroups per grid dimension (the WebGPU default limit; adapters rarely raise it). */
export const MAX_GRID = 65535;

/**
 * A 2-D grid for `items` work items in 64-wide workgroups, for kernels that linearize
 * `id = gid.y * grid_x * 64 + gid.x` (one dimension alone stops at 65535 workgroups).
 */
export function linearGrid(items: number): { gridX: number; grid: [number, number, number] } {
  const groups = Math.max(1, Math.ceil(items / 64));
  const gridX = Math.min(groups, MAX_GRID);
  return { gridX, grid: [gridX, Math.ceil(groups / gridX), 1] };
}

/**
 * WGSL of the benchmark-only kernels beside this file (unfused baselines of the engine's fused
 * kernels, and the bandwidth probe), prefixed with fragments from shaders/common like the engine's.
 */
import { WGSL, type ShaderName } from '../../src/kernels/wgsl.gen.js';
import { BASELINE_WGSL, type BaselineShaderName } from './wgsl.gen.js';

export function baselineSource(main: BaselineShaderName, ...fragments: ShaderName[]): string {
  return [...fragments.map((f) => WGSL[f]), BASELINE_WGSL[main]].join('\n');
}

/**
 * The shared plumbing of every kernel wrapper: a uniform packer, bind groups in binding order, and
 * a recorded dispatch (pipeline + bind group + grid) that forward plans build once per shape and
 * replay every step, so the hot path creates no GPU objects.
 */
import type { GpuContext } from '../gpu/device.js';
import { WGSL, type ShaderName } from './wgsl.gen.js';

export interface Dispatch {
  label: string;
  pipeline: GPUComputePipeline;
  bindGroup: GPUBindGroup;
  grid: readonly [number, number, number];
}

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

/**
 * Owns the uniform buffers of the dispatches it makes, so a plan can be released as a whole.
 */
export class DispatchBuilder {
  private readonly uniforms: GPUBuffer[] = [];

  constructor(readonly ctx: GpuContext) {}

  make(
    variant: string,
    code: () => string,
    params: ArrayBuffer,
    buffers: readonly GPUBuffer[],
    grid: readonly [number, number, number],
    constants?: Record<string, number>,
  ): Dispatch {
    const device = this.ctx.device;
    const pipeline = this.ctx.pipelines.get(variant, code, constants);
    const uniform = device.createBuffer({
      label: `${variant}.params`,
      size: params.byteLength,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
    device.queue.writeBuffer(uniform, 0, params);
    this.uniforms.push(uniform);
    const bindGroup = device.createBindGroup({
      label: variant,
      layout: pipeline.getBindGroupLayout(0),
      entries: [uniform, ...buffers].map((buffer, binding) => ({ binding, resource: { buffer } })),
    });
    return { label: variant, pipeline, bindGroup, grid };
  }

  destroy(): void {
    for (const u of this.uniforms) u.destroy();
    this.uniforms.length = 0;
  }
}

/**
 * Records `record`'s dispatches after compiling every pipeline they use asynchronously (see
 * PipelineCache.getAsync): a first pass only collects the variants, the second records for real
 * from the filled cache. Errors from the record function (an invalid variant) propagate.
 */
export async function recordAsync(
  ctx: GpuContext,
  record: (b: DispatchBuilder) => Dispatch[],
): Promise<{ builder: DispatchBuilder; dispatches: Dispatch[] }> {
  await precompile(ctx, record);
  const builder = new DispatchBuilder(ctx);
  try {
    return { builder, dispatches: record(builder) };
  } catch (e) {
    builder.destroy();
    throw e;
  }
}

/**
 * Starts compiling (createComputePipelineAsync) every pipeline `record` would use and settles
 * when they are ready; nothing is recorded. Many of these may run at once.
 */
export async function precompile(ctx: GpuContext, record: (b: DispatchBuilder) => Dispatch[]): Promise<void> {
  const collector = new CompileCollector(ctx);
  record(collector);
  await Promise.all(collector.compiles);
}

/** A builder whose `make` only starts the pipeline's compile; its dispatches are never encoded. */
class CompileCollector extends DispatchBuilder {
  readonly compiles: Promise<GPUComputePipeline>[] = [];

  override make(
    variant: string,
    code: () => string,
    _params: ArrayBuffer,
    _buffers: readonly GPUBuffer[],
    grid: readonly [number, number, number],
    constants?: Record<string, number>,
  ): Dispatch {
    this.compiles.push(this.ctx.pipelines.getAsync(variant, code, constants));
    // Discarded by recordAsync before anything could encode it.
    return {
      label: variant,
      pipeline: null as unknown as GPUComputePipeline,
      bindGroup: null as unknown as GPUBindGroup,
      grid,
    };
  }
}

/** Records dispatches into one compute pass. */
export function encodeDispatches(pass: GPUComputePassEncoder, dispatches: readonly Dispatch[]): void {
  for (const d of dispatches) {
    pass.setPipeline(d.pipeline);
    pass.setBindGroup(0, d.bindGroup);
    pass.dispatchWorkgroups(d.grid[0], d.grid[1], d.grid[2]);
  }
}

/** Runs dispatches in their own command buffer (tests and one-off work). */
export function runDispatches(ctx: GpuContext, dispatches: readonly Dispatch[]): void {
  ctx.assertAlive();
  const enc = ctx.device.createCommandEncoder();
  const pass = enc.beginComputePass();
  encodeDispatches(pass, dispatches);
  pass.end();
  ctx.device.queue.submit([enc.finish()]);
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

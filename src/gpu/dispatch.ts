/**
 * A recorded dispatch (pipeline + bind group + grid): forward plans build them once per shape and
 * replay them every step, so the hot path creates no GPU objects. The builder owns the uniform
 * buffers of the dispatches it makes, so a plan can be released as a whole.
 */
import type { GpuContext } from './device.js';

export interface Dispatch {
  label: string;
  pipeline: GPUComputePipeline;
  bindGroup: GPUBindGroup;
  grid: readonly [number, number, number];
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

/**
 * Compute pipelines keyed by kernel variant (e.g. "matmul_bf16"), never by shape: shapes travel in
 * uniforms, so one pipeline serves every size. The key doubles as the pipeline label, so GPU
 * debuggers and error messages show the variant.
 */
export class PipelineCache {
  private readonly pipelines = new Map<string, GPUComputePipeline>();
  private readonly pending = new Map<string, Promise<GPUComputePipeline>>();

  constructor(private readonly device: GPUDevice) {}

  /**
   * Returns the pipeline for `variant`, compiling `code()` the first time it is asked for.
   * `constants` are WGSL override values; they are part of what the variant name denotes (e.g.
   * "matmul_bf16_m1r4" has MT = 1, R = 4), so one name must always come with the same constants.
   */
  get(variant: string, code: () => string, constants?: Record<string, number>): GPUComputePipeline {
    let p = this.pipelines.get(variant);
    if (p) return p;
    const module = this.device.createShaderModule({ label: variant, code: code() });
    p = this.device.createComputePipeline({
      label: variant,
      layout: 'auto',
      compute: constants ? { module, entryPoint: 'main', constants } : { module, entryPoint: 'main' },
    });
    this.pipelines.set(variant, p);
    return p;
  }

  /**
   * Like `get`, but compiled with createComputePipelineAsync, so the compile runs beside the queue
   * instead of blocking the caller (the tuner compiles its candidates this way while inference
   * goes on). A shader the device rejects rejects the promise (and is not cached).
   */
  async getAsync(
    variant: string,
    code: () => string,
    constants?: Record<string, number>,
  ): Promise<GPUComputePipeline> {
    const ready = this.pipelines.get(variant);
    if (ready) return ready;
    let p = this.pending.get(variant);
    if (!p) {
      const module = this.device.createShaderModule({ label: variant, code: code() });
      p = this.device
        .createComputePipelineAsync({
          label: variant,
          layout: 'auto',
          compute: constants ? { module, entryPoint: 'main', constants } : { module, entryPoint: 'main' },
        })
        .then(
          (pipeline) => {
            this.pipelines.set(variant, pipeline);
            this.pending.delete(variant);
            return pipeline;
          },
          (e: unknown) => {
            this.pending.delete(variant);
            throw e;
          },
        );
      this.pending.set(variant, p);
    }
    return p;
  }

  get size(): number {
    return this.pipelines.size;
  }
}

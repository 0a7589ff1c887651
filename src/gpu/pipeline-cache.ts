/**
 * Compute pipelines keyed by kernel variant (e.g. "matmul_bf16"), never by shape: shapes travel in
 * uniforms, so one pipeline serves every size. The key doubles as the pipeline label, so GPU
 * debuggers and error messages show the variant.
 */
import { GpuDeviceError } from '../errors.js';

export class PipelineCache {
  private readonly pipelines = new Map<string, GPUComputePipeline>();

  constructor(private readonly device: GPUDevice) {}

  /** Returns the pipeline for `variant`, compiling `code()` the first time it is asked for. */
  get(variant: string, code: () => string, constants?: Record<string, number>): GPUComputePipeline {
    const key = constants ? `${variant}|${JSON.stringify(constants)}` : variant;
    let p = this.pipelines.get(key);
    if (p) return p;
    const module = this.device.createShaderModule({ label: variant, code: code() });
    p = this.device.createComputePipeline({
      label: variant,
      layout: 'auto',
      compute: { module, entryPoint: 'main', ...(constants ? { constants } : {}) },
    });
    this.pipelines.set(key, p);
    return p;
  }

  /**
   * Compiles every pipeline in `variants` and surfaces shader compilation errors with the variant's
   * name (Dawn otherwise reports them asynchronously as an uncaptured error).
   */
  async check(variant: string, code: () => string): Promise<void> {
    const module = this.device.createShaderModule({ label: variant, code: code() });
    const info = await module.getCompilationInfo();
    const errors = info.messages.filter((m) => m.type === 'error');
    if (errors.length) {
      throw new GpuDeviceError(
        `shader ${variant} failed to compile: ${errors.map((m) => `${m.lineNum}:${m.linePos} ${m.message}`).join('; ')}`,
      );
    }
  }

  get size(): number {
    return this.pipelines.size;
  }
}

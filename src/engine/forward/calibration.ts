/**
 * Async-softmax calibration (FlashDecoding++'s unified max, never trusted blindly): the first
 * decode steps run the exact split-K softmax with a copy of each layer's split partials taken
 * after pass 1; their row maxima give each layer's observed score range, and phi is set in its
 * middle. A layer whose maxima spread wider than half the kernel's window keeps the exact softmax.
 */
import { storageUsage, type GpuContext } from '../../gpu/device.js';
import { encodeDispatches } from '../../gpu/dispatch.js';
import type { StepPlan } from './plan.js';

/**
 * How far above phi a score may go before the async-softmax kernel flags its row for the exact
 * recompute (OVERFLOW_B in shaders/attention_split.wgsl): e^60 and sums of thousands of such terms
 * stay finite in f32.
 */
const ASYNC_WINDOW = 60;

export class Calibration {
  private left: number;
  /** Observed range of per-row score maxima, per layer. */
  private readonly range: { lo: number; hi: number }[];
  private captureBuffer: GPUBuffer | null = null;
  private captureReadback: GPUBuffer | null = null;

  constructor(
    private readonly ctx: GpuContext,
    private readonly layers: number,
    private readonly heads: number,
    private readonly headDim: number,
    /** Decode steps whose scores are observed. */
    steps: number,
  ) {
    this.left = steps;
    this.range = Array.from({ length: layers }, () => ({ lo: Infinity, hi: -Infinity }));
  }

  /** True while decode steps still calibrate. */
  get active(): boolean {
    return this.left > 0;
  }

  /**
   * Encodes the plan's body with a copy of each layer's split partials after its exact pass 1,
   * into `pass` (ending and reopening it around each copy); returns the pass to continue in.
   */
  encode(enc: GPUCommandEncoder, pass: GPUComputePassEncoder, plan: StepPlan): GPUComputePassEncoder {
    const scratch = plan.decode;
    if (!scratch) throw new RangeError('calibration needs a decode-shaped plan');
    const layerBytes = scratch.partials.size;
    const total = layerBytes * this.layers;
    if (!this.captureBuffer || this.captureBuffer.size < total) {
      this.releaseBuffers();
      this.captureBuffer = this.ctx.createBuffer('calibration.scores', total, storageUsage());
      this.captureReadback = this.ctx.createBuffer(
        'calibration.readback',
        total,
        GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      );
    }
    const body = plan.graph.body;
    let from = 0;
    for (const { layer, after } of plan.graph.scoreCapture) {
      encodeDispatches(pass, body.slice(from, after + 1));
      pass.end();
      enc.copyBufferToBuffer(scratch.partials, 0, this.captureBuffer, layer * layerBytes, layerBytes);
      pass = enc.beginComputePass({ label: 'kiln.forward' });
      from = after + 1;
    }
    encodeDispatches(pass, body.slice(from));
    return pass;
  }

  /**
   * Folds one captured step of `rows` rows into the per-layer score ranges. After the last
   * calibration step, returns phi per layer (null: keep the exact softmax) and frees its buffers.
   */
  async absorb(plan: StepPlan, rows: number): Promise<(number | null)[] | null> {
    const scratch = plan.decode as NonNullable<StepPlan['decode']>;
    const rb = this.captureReadback as GPUBuffer;
    const layerBytes = scratch.partials.size;
    const enc = this.ctx.device.createCommandEncoder();
    enc.copyBufferToBuffer(this.captureBuffer as GPUBuffer, 0, rb, 0, layerBytes * this.layers);
    this.ctx.device.queue.submit([enc.finish()]);
    await rb.mapAsync(GPUMapMode.READ);
    const all = new Float32Array(rb.getMappedRange().slice(0));
    rb.unmap();
    const { splits } = scratch;
    const rec = this.headDim + 4; // floats per (row, head, split) record: vec4(c, l, _, _) + o
    for (const { layer } of plan.graph.scoreCapture) {
      const base = (layer * layerBytes) / 4;
      const range = this.range[layer] as { lo: number; hi: number };
      for (let row = 0; row < rows; row++) {
        for (let h = 0; h < this.heads; h++) {
          let rowMax = -Infinity;
          for (let sp = 0; sp < splits; sp++) {
            const at = base + ((row * this.heads + h) * splits + sp) * rec;
            if ((all[at + 1] as number) > 0) rowMax = Math.max(rowMax, all[at] as number);
          }
          if (Number.isFinite(rowMax)) {
            range.lo = Math.min(range.lo, rowMax);
            range.hi = Math.max(range.hi, rowMax);
          }
        }
      }
    }
    if (--this.left > 0) return null;
    this.releaseBuffers();
    // phi in the middle of the observed row maxima. A layer whose maxima spread over at most half
    // the window keeps at least 3/4 of ASYNC_WINDOW of headroom above anything calibration saw
    // before the kernel flags a row (and recomputes it exactly); a wider spread keeps the exact
    // softmax for that layer (as FlashDecoding++ does for OPT).
    return this.range.map(({ lo, hi }) =>
      Number.isFinite(lo) && hi - lo <= ASYNC_WINDOW / 2 ? (lo + hi) / 2 : null,
    );
  }

  private releaseBuffers(): void {
    for (const b of [this.captureBuffer, this.captureReadback]) if (b) this.ctx.destroyBuffer(b);
    this.captureBuffer = this.captureReadback = null;
  }

  destroy(): void {
    this.releaseBuffers();
  }
}

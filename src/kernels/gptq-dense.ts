/**
 * The dense factorization of the GPU GPTQ solve (src/kernels/gptq.ts): R = J·H·J from the caller's
 * float64 H or from the activations (gptq_gemm), damped (gptq_damp) and factored R = L·Lᵀ in
 * panels (gptq_gemm, gptq_chol), and the sweep's lazy update through L.
 */
import { type GpuContext } from '../gpu/device.js';
import { DispatchBuilder, runDispatches, type Dispatch } from '../gpu/dispatch.js';
import { bindLimit, BufferSet, STATUS_WORDS, type SweepBuffers } from './gptq-buffers.js';
import { gptqChol, PANEL } from './gptq-chol.js';
import { gptqDamp } from './gptq-damp.js';
import { gptqGemm } from './gptq-gemm.js';
import { countTokens, type GptqHessianSource } from './gptq-plan.js';

/**
 * R = J·H·J in f32 (lower triangle, row-major), symmetrised from both triangles of a float64 H,
 * with the CPU solver's checks and messages. The diagonal is H's own (gptq_damp fixes it).
 */
function reversedHessian(h: Float64Array, n: number): Float32Array {
  if (h.length !== n * n) {
    throw new RangeError(`GPTQ: Hessian has ${h.length} values, expected ${n}×${n}`);
  }
  const r = new Float32Array(n * n);
  for (let i = 0; i < n; i++) {
    const hii = h[i * n + i] as number;
    if (!Number.isFinite(hii) || hii < 0) {
      throw new RangeError(`GPTQ: Hessian diagonal ${hii} at ${i} must be finite and ≥ 0`);
    }
  }
  for (let a = 0; a < n; a++) {
    const i = n - 1 - a;
    for (let b = 0; b < a; b++) {
      const j = n - 1 - b;
      const v = 0.5 * ((h[i * n + j] as number) + (h[j * n + i] as number));
      if (!Number.isFinite(v)) throw new RangeError(`GPTQ: non-finite Hessian entry at ${i}, ${j}`);
      r[a * n + b] = v;
    }
    r[a * n + a] = h[i * n + i] as number;
  }
  return r;
}

/**
 * The activations transposed to [cols, tokens] (k-major, so gptq_gemm reads each column's tokens
 * as vec4s), and the tokens per product: all of them when [cols, tokens] fits one buffer, else
 * chunks of a multiple of 8 that do.
 */
function transposedActivations(
  batches: readonly { x: Float32Array; tokens: number }[],
  n: number,
  limit: number,
): { data: Float32Array; tokens: number; chunk: number } {
  const tokens = countTokens(batches, n);
  const data = new Float32Array(n * tokens);
  let t0 = 0;
  for (const b of batches) {
    for (let t = 0; t < b.tokens; t++) {
      const row = t * n;
      for (let k = 0; k < n; k++) data[k * tokens + t0 + t] = b.x[row + k] as number;
    }
    t0 += b.tokens;
  }
  const fit = Math.floor(limit / (4 * n) / 8) * 8;
  const chunk = Math.min(Math.ceil(tokens / 8) * 8, Math.max(8, fit));
  return { data, tokens, chunk };
}

/** The dense factor on the GPU. */
export interface DenseBuffers {
  /** The factor L of R = J·H·J (lower triangle), n × n. */
  l: GPUBuffer;
  /** [n] u32: 1 where H_kk = 0. */
  dead: GPUBuffer;
  /** Status: flags of gptq_damp, gptq_chol and gptq_quant. */
  status: GPUBuffer;
}

/**
 * Queues the damped Hessian's factorization; its failures surface in the status buffer. Frees
 * what it made if it throws.
 */
export async function factorDense(
  ctx: GpuContext,
  n: number,
  source: GptqHessianSource,
  dampPercent: number,
): Promise<DenseBuffers> {
  let xt: ReturnType<typeof transposedActivations> | null = null;
  let r: Float32Array | null = null;
  if ('hessian' in source) {
    r = reversedHessian(source.hessian, n);
  } else {
    xt = transposedActivations(source.activations, n, bindLimit(ctx));
  }
  const made = new BufferSet(ctx);
  const builder = new DispatchBuilder(ctx);
  try {
    const bufs = await ctx.guardAllocation(`the GPTQ Hessian (${n}×${n})`, 4 * n * n, () => ({
      l: made.create(`gptq.hessian[${n}]`, 4 * n * n),
      dead: made.create('gptq.dead', 4 * n),
      status: made.create('gptq.status', STATUS_WORDS * 4),
      xt: xt ? made.create('gptq.activations', 4 * n * xt.chunk) : null,
      upd: made.create('gptq.panel', 4 * n * PANEL),
    }));
    ctx.device.queue.writeBuffer(bufs.status, 0, new Uint32Array([0, 0xffffffff, 0, 0]));
    if (r) ctx.device.queue.writeBuffer(bufs.l, 0, r);
    if (xt && bufs.xt) {
      // H = (2/T)·Σ_t x_t x_tᵀ, written as R(n−1−i, n−1−j) for i ≤ j (R's lower triangle), one
      // product per chunk of tokens, each in its own submit so the chunk buffer can be reused.
      const chunkData = new Float32Array(n * xt.chunk);
      for (let t0 = 0; t0 < xt.tokens; t0 += xt.chunk) {
        const tw = Math.min(xt.chunk, xt.tokens - t0);
        for (let k = 0; k < n; k++) {
          chunkData.set(xt.data.subarray(k * xt.tokens + t0, k * xt.tokens + t0 + tw), k * xt.chunk);
          chunkData.fill(0, k * xt.chunk + tw, (k + 1) * xt.chunk);
        }
        ctx.device.queue.writeBuffer(bufs.xt, 0, chunkData);
        runDispatches(ctx, [
          gptqGemm(builder, {
            a: bufs.xt,
            b: bufs.xt,
            c: bufs.l,
            na: n,
            nb: n,
            kend: Math.ceil(tw / 8) * 8,
            aOff: 0,
            aSa: xt.chunk,
            aSk: 1,
            bOff: 0,
            ldb: xt.chunk,
            cOff: (n - 1) * n + (n - 1),
            cSa: -n,
            cSb: -1,
            alpha: 2 / xt.tokens,
            accumulate: t0 > 0,
            lower: true,
          }),
        ]);
      }
    }
    const d: Dispatch[] = [
      gptqDamp(builder, { r: bufs.l, dead: bufs.dead, status: bufs.status, n, dampPercent }),
    ];
    for (let p0 = 0; p0 < n; p0 += PANEL) {
      const w = Math.min(PANEL, n - p0);
      // upd = −L[p0:, <p0]·L[panel, <p0]ᵀ (the rows' columns before the panel; gptq_chol adds R).
      if (p0 > 0) {
        d.push(
          gptqGemm(builder, {
            a: bufs.l,
            b: bufs.l,
            c: bufs.upd,
            na: w,
            nb: n - p0,
            kend: p0,
            aOff: p0 * n,
            aSa: n,
            aSk: 1,
            bOff: p0 * n,
            ldb: n,
            cOff: 0,
            cSa: 1,
            cSb: PANEL,
            alpha: -1,
            accumulate: false,
            lower: true,
          }),
        );
      }
      const below = n - p0 - w;
      const chol = (mode: number, groups: number) =>
        gptqChol(builder, { l: bufs.l, upd: bufs.upd, status: bufs.status, n, p0, w, mode, groups });
      d.push(chol(0, 1));
      if (below > 0) d.push(chol(1, Math.ceil(below / PANEL)));
    }
    runDispatches(ctx, d);
    // The uniforms and the scratch buffers must outlive the queued work.
    await ctx.device.queue.onSubmittedWorkDone();
    for (const buf of [bufs.xt, bufs.upd]) {
      if (!buf) continue;
      made.destroy(buf);
    }
    return { l: bufs.l, dead: bufs.dead, status: bufs.status };
  } catch (e) {
    made.destroyAll();
    throw e;
  } finally {
    builder.destroy();
  }
}

/**
 * The sweep's lazy update of the group at j0: acc[r, m] = Σ_{k<j0} e[r, k]·V[k, m] for the group's
 * m, V[k, m] = L[n−1−k, n−1−m].
 */
export function denseGroupUpdate(
  builder: DispatchBuilder,
  d: Dispatch[],
  bufs: SweepBuffers,
  l: GPUBuffer,
  n: number,
  cr: number,
  j0: number,
  gs: number,
): void {
  d.push(
    gptqGemm(builder, {
      a: l,
      b: bufs.w,
      c: bufs.acc,
      na: gs,
      nb: cr,
      kend: j0,
      aOff: (n - 1) * n + (n - 1 - j0),
      aSa: -1,
      aSk: -n,
      bOff: 0,
      ldb: n,
      cOff: 0,
      cSa: 1,
      cSb: gs,
      alpha: 1,
      accumulate: false,
      lower: false,
    }),
  );
}

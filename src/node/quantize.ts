/**
 * `kiln quantize`: writes a Kiln int4 folder (src/quant/kiln-format.ts) from a float checkpoint.
 * Methods:
 *   - rtn: round-to-nearest (no calibration);
 *   - clip: per-group clipping search minimising the reconstruction error weighted by the
 *     calibration activations' second moments E[x²] (activation-aware clipping);
 *   - gptq: GPTQ error compensation with the Hessian of the calibration activations (group
 *     parameters by round to nearest on the compensated weights), solved on the GPU
 *     (src/kernels/gptq.ts) where the device can hold it, else by the float64 CPU solver.
 * Calibration activations are the float model's own projection inputs, captured on the GPU while
 * it reads the calibration text (or, without one, text it samples itself from BOS).
 */
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DeviceMemoryError, InvalidRequestError, UnsupportedModelError } from '../errors.js';
import { loadModelSpec } from '../model/config.js';
import { decodeToFloat32 } from '../io/dtype.js';
import { openCheckpoint, type Checkpoint } from '../io/safetensors-checkpoint.js';
import { planSafetensors } from '../io/safetensors-writer.js';
import { columnSecondMoments, quantizeClip } from '../quant/clip.js';
import type { GpuContext } from '../gpu/device.js';
import { GptqGpuSolver } from '../kernels/gptq.js';
import { planGptqGpu } from '../kernels/gptq-plan.js';
import { accumulateHessian, quantizeGptq } from '../quant/gptq-solver.js';
import {
  fusedProjectionNames,
  KILN_QUANT_METADATA,
  kilnQuantConfig,
  LM_HEAD_PREFIX,
  q4TensorSpecs,
  type QuantMethod,
} from '../quant/kiln-format.js';
import { packQ4, quantizeRtn, stackQ4, type PackedQ4, type Q4Format, type Q4Matrix } from '../quant/q4.js';
import type { Engine } from '../engine/engine.js';
import { projectionRows, type ProjectionRole } from '../model/architecture.js';
import type { ModelSpec } from '../model/spec.js';
import { expectedTensors, modelTensors } from '../model/tensors.js';
import { floatSource } from '../weights/float.js';
import { validateCheckpoint } from '../weights/loader.js';
import { headTensor, projectionsOf } from '../weights/source.js';
import { acquireNodeGpu } from './dawn.js';
import { createEngine } from './index.js';
import { openLocalModelDir } from './fs-model-dir.js';
import { writeSafetensorsFile } from './safetensors-file.js';

export const QUANT_METHODS: readonly QuantMethod[] = ['rtn', 'clip', 'gptq'];
/** The method `kiln quantize` uses unless told otherwise (see README for its measured quality). */
export const DEFAULT_QUANT_METHOD: QuantMethod = 'gptq';

export interface QuantizeModelOptions {
  /** Float model folder. */
  dir: string;
  out: string;
  format: Q4Format;
  method: QuantMethod;
  /** Calibration text (clip, gptq); default: text the model samples itself. */
  calibrationText?: string;
  /** Calibration tokens in all (default 256). */
  calibrationTokens?: number;
  /** Quantize the LM head as well (embeddings always stay in float). */
  lmHead?: boolean;
  /**
   * Where GPTQ is solved: 'auto' (default) on the GPU where the device can hold the problem, else
   * on the CPU (with a log line saying why); 'gpu' fails instead of falling back; 'cpu' is the
   * float64 reference solver (slow: minutes per layer at 0.5B shapes on a CPU adapter).
   */
  gptqSolver?: 'auto' | 'gpu' | 'cpu';
  onProgress?: (done: number, total: number, what: string) => void;
  /** Messages about what is being done. */
  log?: (line: string) => void;
}

export interface QuantizeSummary {
  method: QuantMethod;
  format: Q4Format;
  calibration_tokens: number;
  matrices: number;
  seconds: number;
  bytes_written: number;
  /** GPTQ only: where each matrix was solved ('gpu', 'cpu', or 'mixed' after a fallback). */
  gptq_solver?: 'gpu' | 'cpu' | 'mixed';
}

const DEFAULT_CALIBRATION_TOKENS = 256;
/** Self-generated calibration: this many sequences sampled from BOS at temperature 1. */
const SELF_SEQUENCES = 4;
/**
 * GPTQ projections started ahead of the one being written (a layer's worth: its down_proj's CPU
 * factorization then overlaps the previous layer's GPU sweeps). Memory: that many projections'
 * f32 weights and results at once.
 */
const GPTQ_AHEAD = 4;

/**
 * Per-layer statistics of one projection's input: second moments (clip), or for gptq the
 * activations themselves, from which the solver forms H = 2·XᵀX/n when it needs it (at the
 * default 256 tokens they are 19× smaller than down_proj's 4864² Hessian, and the GPU solver's
 * low-rank factorization works from X directly).
 */
interface InputStats {
  moments: Float64Array;
  activations?: { x: Float32Array; tokens: number }[];
}

export async function quantizeModel(opts: QuantizeModelOptions): Promise<QuantizeSummary> {
  const t0 = performance.now();
  const dir = openLocalModelDir(opts.dir);
  const spec = await loadModelSpec(dir);
  if (spec.quantizationConfig) {
    throw new UnsupportedModelError(
      `${opts.dir} is already quantized (quant_method ${String(spec.quantizationConfig.quant_method)}); quantize a float checkpoint`,
    );
  }
  if (!QUANT_METHODS.includes(opts.method)) {
    throw new InvalidRequestError(
      `quantization method ${String(opts.method)} is not one of ${QUANT_METHODS.join(', ')}`,
    );
  }
  const log = opts.log ?? (() => undefined);
  const ckpt = await openCheckpoint(dir);
  try {
    validateCheckpoint(spec, ckpt, floatSource);
    for (const p of quantizedMatrices(spec, opts.lmHead ?? false)) {
      if (p.cols % opts.format.groupSize !== 0) {
        throw new UnsupportedModelError(
          `${p.prefix}: K = ${p.cols} is not a multiple of the group size ${opts.format.groupSize}; pick a group size that divides it`,
        );
      }
    }
    let stats: Map<string, InputStats> | null = null;
    let calibrationTokens = 0;
    if (opts.method !== 'rtn') {
      const cal = await calibrate(opts, spec, log);
      stats = cal.stats;
      calibrationTokens = cal.tokens;
    }
    const gptq = opts.method === 'gptq' ? await gptqRunner(opts.gptqSolver ?? 'auto', log) : null;
    try {
      const summary = await writeQuantized(opts, spec, ckpt, stats, gptq);
      return {
        method: opts.method,
        format: opts.format,
        calibration_tokens: calibrationTokens,
        matrices: summary.matrices,
        seconds: (performance.now() - t0) / 1000,
        bytes_written: summary.bytes,
        ...(gptq ? { gptq_solver: gptq.used() } : {}),
      };
    } finally {
      gptq?.close();
    }
  } finally {
    await ckpt.close();
  }
}

interface Projection {
  /** Fused name in the Kiln folder. */
  prefix: string;
  /** HF weight tensors stacked by rows. */
  sources: string[];
  /** Whose input activations calibrate it (null: the LM head, quantized by weight error). */
  input: { layer: number; proj: ProjectionRole } | null;
  rows: number;
  cols: number;
}

function quantizedMatrices(spec: ModelSpec, lmHead: boolean): Projection[] {
  const t = modelTensors(spec);
  const out: Projection[] = projectionsOf(t).map((p) => ({
    prefix: fusedProjectionNames(p.layer)[p.role],
    sources: p.sources.map((s) => `${s.prefix}.weight`),
    input: { layer: p.layer, proj: p.role },
    rows: projectionRows(p),
    cols: p.cols,
  }));
  if (lmHead) {
    out.push({
      prefix: LM_HEAD_PREFIX,
      sources: [headTensor(t)],
      input: null,
      rows: spec.vocabSize,
      cols: spec.hiddenSize,
    });
  }
  return out;
}

/** Runs the float model over the calibration tokens and reduces each projection's inputs. */
async function calibrate(
  opts: QuantizeModelOptions,
  spec: ModelSpec,
  log: (line: string) => void,
): Promise<{ stats: Map<string, InputStats>; tokens: number }> {
  const want = opts.calibrationTokens ?? DEFAULT_CALIBRATION_TOKENS;
  const engine: Engine = await createEngine({ model: opts.dir, attentionSoftmax: 'two_pass' });
  try {
    const sequences: number[][] = [];
    if (opts.calibrationText !== undefined) {
      const ids = engine.encodePrompt(opts.calibrationText);
      // Long texts are cut into context-sized windows, each read from its own start.
      const window = engine.contextLength;
      for (let at = 0; at < Math.min(ids.length, want); at += window) {
        sequences.push(ids.slice(at, Math.min(at + window, want)));
      }
      if (ids.length < 2) throw new InvalidRequestError('the calibration text is empty after tokenization');
    } else {
      const per = Math.min(Math.ceil(want / SELF_SEQUENCES), engine.contextLength - 1);
      log(`sampling ${SELF_SEQUENCES} x ${per} calibration tokens from the model`);
      const bos = spec.bosTokenId === null ? [] : [spec.bosTokenId];
      // Sampled together: the engine batches them into the same decode steps.
      const runs = await Promise.all(
        Array.from({ length: SELF_SEQUENCES }, (_, s) =>
          engine.generate(bos, { maxTokens: per, temperature: 1, seed: 1000 + s, ignoreEos: true }).result(),
        ),
      );
      for (const r of runs) sequences.push([...r.promptTokenIds, ...r.tokenIds]);
    }
    const stats = new Map<string, InputStats>();
    let tokens = 0;
    const counts = new Map<string, number>();
    const f = (l: number, proj: ProjectionRole) => `${l}.${proj}`;
    for (const seq of sequences) {
      const captured = await engine.captureLinearInputs(seq);
      tokens += seq.length;
      captured.forEach((layer, l) => {
        for (const proj of ['qkv', 'o', 'gateUp', 'down'] as const) {
          const x = layer[proj];
          const cols = x.length / seq.length;
          const key = f(l, proj);
          let st = stats.get(key);
          if (!st) {
            st = { moments: new Float64Array(cols) };
            if (opts.method === 'gptq') st.activations = [];
            stats.set(key, st);
          }
          // Second moments are summed here and divided by the count below.
          const m = columnSecondMoments(x, seq.length, cols);
          for (let c = 0; c < cols; c++)
            st.moments[c] = (st.moments[c] as number) + (m[c] as number) * seq.length;
          st.activations?.push({ x, tokens: seq.length });
          counts.set(key, (counts.get(key) ?? 0) + seq.length);
        }
      });
    }
    for (const [key, st] of stats) {
      const n = counts.get(key) as number;
      for (let c = 0; c < st.moments.length; c++) st.moments[c] = (st.moments[c] as number) / n;
    }
    log(`calibrated on ${tokens} tokens`);
    return { stats, tokens };
  } finally {
    engine.dispose();
  }
}

async function readF32(ckpt: Checkpoint, name: string): Promise<Float32Array> {
  const info = ckpt.get(name);
  return decodeToFloat32(info.dtype, await ckpt.readTensor(info));
}

/**
 * GPTQ for `kiln quantize`: one solver per projection input (q, k and v share theirs), on the GPU
 * unless the device cannot hold it or the caller asked for the CPU.
 */
interface GptqRunner {
  quantize(
    list: { values: Float32Array; rows: number }[],
    cols: number,
    format: Q4Format,
    st: InputStats,
  ): Promise<Q4Matrix[]>;
  used(): 'gpu' | 'cpu' | 'mixed';
  close(): void;
}

async function gptqRunner(mode: 'auto' | 'gpu' | 'cpu', log: (line: string) => void): Promise<GptqRunner> {
  // The calibration engine is gone by now: the solve gets its own device.
  let ctx: GpuContext | null = null;
  if (mode !== 'cpu') {
    try {
      ctx = await acquireNodeGpu();
    } catch (e) {
      if (mode === 'gpu') throw e;
      log(`${(e as Error).message}; solving GPTQ on the CPU (slow)`);
    }
  }
  const seen = new Set<'gpu' | 'cpu'>();
  const warned = new Set<string>();
  const fallBack = (reason: string, cols: number) => {
    if (mode === 'gpu') throw new UnsupportedModelError(reason);
    if (!warned.has(reason)) {
      warned.add(reason);
      log(`${reason}; solving GPTQ for K = ${cols} on the CPU (slow)`);
    }
  };
  return {
    async quantize(list, cols, format, st) {
      const batches = st.activations ?? [];
      const tokens = batches.reduce((a, b) => a + b.tokens, 0);
      const rows = list.reduce((a, m) => a + m.rows, 0);
      if (ctx) {
        const plan = planGptqGpu(ctx, cols, tokens, rows);
        if ('reason' in plan) fallBack(plan.reason, cols);
        else {
          let solver: GptqGpuSolver | null = null;
          try {
            solver = await GptqGpuSolver.create(ctx, cols, { activations: batches }, { rows });
            const out: Q4Matrix[] = [];
            for (const m of list) out.push(await solver.quantize(m.values, m.rows, format));
            seen.add('gpu');
            return out;
          } catch (e) {
            // Out of device memory (the limits allowed it, the allocation did not): the CPU can.
            if (!(e instanceof DeviceMemoryError)) throw e;
            fallBack(e.message, cols);
          } finally {
            solver?.destroy();
          }
        }
      }
      seen.add('cpu');
      const h = new Float64Array(cols * cols);
      for (const b of batches) accumulateHessian(h, b.x, b.tokens, cols);
      for (let i = 0; i < h.length; i++) h[i] = (h[i] as number) / tokens;
      return list.map((m) => quantizeGptq(m.values, m.rows, cols, format, h, { clip: false }));
    },
    used: () => (seen.size > 1 ? 'mixed' : seen.has('cpu') ? 'cpu' : 'gpu'),
    close: () => ctx?.close(),
  };
}

function quantizeOne(
  values: Float32Array,
  rows: number,
  cols: number,
  format: Q4Format,
  method: QuantMethod,
  stats: InputStats | undefined,
): Q4Matrix {
  if (method === 'rtn') return quantizeRtn(values, rows, cols, format);
  return quantizeClip(values, rows, cols, format, stats ? { columnWeights: stats.moments } : {});
}

async function writeQuantized(
  opts: QuantizeModelOptions,
  spec: ModelSpec,
  ckpt: Checkpoint,
  stats: Map<string, InputStats> | null,
  gptq: GptqRunner | null,
): Promise<{ matrices: number; bytes: number }> {
  const projections = quantizedMatrices(spec, opts.lmHead ?? false);
  // A quantized tied head replaces the embeddings too: the runtime gathers them from the int4 table.
  const replaced = new Set(projections.flatMap((p) => p.sources));
  const tensors: { name: string; dtype: ReturnType<Checkpoint['get']>['dtype']; shape: number[] }[] = [];
  for (const name of expectedTensors(spec).keys()) {
    if (replaced.has(name)) continue;
    const info = ckpt.get(name);
    tensors.push({ name, dtype: info.dtype, shape: [...info.shape] });
  }
  const owner = new Map<string, Projection>();
  for (const p of projections) {
    for (const t of q4TensorSpecs(p.prefix, p.rows, p.cols, opts.format)) {
      tensors.push({ name: t.name, dtype: t.dtype, shape: t.shape });
      owner.set(t.name, p);
    }
  }
  // The writer asks for tensors in file order (by element size, then name), so a projection's
  // words come long before its scales: packed matrices wait here until their last tensor is out.
  const packed = new Map<string, { p: PackedQ4; left: number }>();
  let done = 0;
  const tensorsOf = (p: Projection) => q4TensorSpecs(p.prefix, p.rows, p.cols, opts.format).length;
  const quantizeProjection = async (p: Projection): Promise<PackedQ4> => {
    let list: Q4Matrix[] = [];
    const st = p.input ? stats?.get(`${p.input.layer}.${p.input.proj}`) : undefined;
    if (gptq && st?.activations) {
      const inputs: { values: Float32Array; rows: number }[] = [];
      for (const src of p.sources) {
        const shape = expectedTensors(spec).get(src) as [number, number];
        inputs.push({ values: await readF32(ckpt, src), rows: shape[0] });
      }
      list = await gptq.quantize(inputs, p.cols, opts.format, st);
    } else {
      // rtn, clip, and the LM head under gptq (no calibrated input: the weight-error search).
      for (const src of p.sources) {
        const shape = expectedTensors(spec).get(src) as [number, number];
        list.push(quantizeOne(await readF32(ckpt, src), shape[0], shape[1], opts.format, opts.method, st));
      }
    }
    return packQ4(stackQ4(list));
  };
  // GPTQ runs a few projections ahead of the writer, in the writer's order: one projection's CPU
  // work (reading weights, the low-rank factorization, packing) then overlaps the GPU solve of
  // another, where the two would otherwise take turns. Other methods are CPU-only: one at a time.
  const order: Projection[] = [];
  for (const t of planSafetensors(tensors).order) {
    const p = owner.get(t.name);
    if (p && !order.includes(p)) order.push(p);
  }
  const ahead = gptq ? GPTQ_AHEAD : 0;
  const jobs = new Map<string, Promise<PackedQ4>>();
  const start = (p: Projection): Promise<PackedQ4> => {
    let job = jobs.get(p.prefix);
    if (!job) {
      job = quantizeProjection(p);
      // Awaited when the writer reaches it; a failure before then must not go unhandled.
      job.catch(() => undefined);
      jobs.set(p.prefix, job);
    }
    return job;
  };
  const produce = async (t: { name: string }): Promise<Uint8Array> => {
    const p = owner.get(t.name);
    if (!p) {
      const info = ckpt.get(t.name);
      return ckpt.readTensor(info);
    }
    let entry = packed.get(p.prefix);
    if (!entry) {
      const job = start(p);
      const at = order.indexOf(p);
      for (const next of order.slice(at + 1, at + 1 + ahead)) void start(next);
      entry = { p: await job, left: tensorsOf(p) };
      jobs.delete(p.prefix);
      packed.set(p.prefix, entry);
      opts.onProgress?.(++done, projections.length, p.prefix);
    }
    if (--entry.left === 0) packed.delete(p.prefix);
    const q = entry.p;
    const data = t.name.endsWith('.q4_words')
      ? q.words
      : t.name.endsWith('.q4_zeros')
        ? (q.zeros as Uint32Array)
        : q.scales;
    return data instanceof ArrayBuffer
      ? new Uint8Array(data)
      : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  };
  const config = kilnQuantConfig(opts.format, opts.method, opts.lmHead ?? false);
  await mkdir(opts.out, { recursive: true });
  const bytes = await writeSafetensorsFile(join(opts.out, 'model.safetensors'), tensors, produce, {
    format: 'pt',
    [KILN_QUANT_METADATA]: JSON.stringify(config),
  });
  const srcConfig = JSON.parse(await readFile(join(opts.dir, 'config.json'), 'utf8')) as Record<
    string,
    unknown
  >;
  await writeFile(
    join(opts.out, 'config.json'),
    JSON.stringify({ ...srcConfig, quantization_config: config }, null, 2) + '\n',
  );
  for (const file of [
    'generation_config.json',
    'tokenizer.json',
    'tokenizer_config.json',
    'special_tokens_map.json',
  ]) {
    await copyFile(join(opts.dir, file), join(opts.out, file)).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'ENOENT') throw e;
    });
  }
  return { matrices: projections.length, bytes };
}

/**
 * A Kiln int4 folder (src/quant/kiln-format.ts): the projections are stored already in the
 * kernel's layout with the tile as the leading dimension, so each part buffer is a byte range of
 * its tensor, streamed straight from the file with no reshuffle. A quantized tied head replaces
 * the embedding table (the folder keeps only the int4 copy).
 */
import { UnsupportedModelError } from '../errors.js';
import type { Checkpoint } from '../io/safetensors-checkpoint.js';
import type { Q4GpuWeight, Q4WeightPart } from '../kernels/matmul-q4.js';
import { projectionRows, type ModelTensors } from '../model/architecture.js';
import type { ModelSpec } from '../model/spec.js';
import { fusedProjectionNames, LM_HEAD_PREFIX, q4TensorSpecs } from '../quant/kiln-format.js';
import { Q4_TILE_ROWS, type Q4Format } from '../quant/q4.js';
import { projectionsOf, type LoadContext, type WeightSource } from './source.js';
import { allocateQ4, q4MatrixBytes, q4RowsPerPart } from './upload-q4.js';
import { CHUNK_BYTES } from './upload.js';

/** Every int4 matrix of the folder: its name prefix and [rows, cols]. */
function matrices(spec: ModelSpec, t: ModelTensors, lmHead: boolean) {
  const out = projectionsOf(t).map((p) => ({
    prefix: fusedProjectionNames(p.layer)[p.role],
    rows: projectionRows(p),
    cols: p.cols,
  }));
  if (lmHead) out.push({ prefix: LM_HEAD_PREFIX, rows: spec.vocabSize, cols: spec.hiddenSize });
  return out;
}

export function kilnSource(format: Q4Format, lmHead: boolean, tied: boolean): WeightSource {
  const f = format;
  const load = (lc: LoadContext, prefix: string, rows: number, cols: number) =>
    uploadKilnQ4(lc, prefix, rows, cols, format);
  return {
    description: `int4 g${f.groupSize} ${f.symmetric ? 'sym' : 'asym'}${lmHead ? ' (+lm_head)' : ''}, kiln checkpoint`,
    quantized: true,
    headServesEmbeddings: lmHead && tied,
    ownsHead: lmHead,
    floatTensors: () => [],
    validate(spec, t, ckpt) {
      for (const m of matrices(spec, t, lmHead)) {
        for (const s of q4TensorSpecs(m.prefix, m.rows, m.cols, format))
          checkQ4Tensor(ckpt, s.name, s.dtype, s.shape);
      }
    },
    packedTensorNames: (spec, t) =>
      matrices(spec, t, lmHead).flatMap((m) =>
        q4TensorSpecs(m.prefix, m.rows, m.cols, format).map((s) => s.name),
      ),
    bytes: (spec, t) =>
      matrices(spec, t, lmHead).reduce((a, m) => a + q4MatrixBytes(m.rows, m.cols, format), 0),
    projection: async (lc, p) => ({
      weight: await load(lc, fusedProjectionNames(p.layer)[p.role], projectionRows(p), p.cols),
    }),
    lmHead: (lc) => load(lc, LM_HEAD_PREFIX, lc.spec.vocabSize, lc.spec.hiddenSize),
  };
}

function checkQ4Tensor(ckpt: Checkpoint, name: string, dtype: string, shape: readonly number[]): void {
  const info = ckpt.get(name);
  if (
    info.dtype !== dtype ||
    info.shape.length !== shape.length ||
    info.shape.some((d, i) => d !== shape[i])
  ) {
    throw new UnsupportedModelError(
      `tensor ${name} in ${ckpt.location} is ${info.dtype} [${info.shape.join(', ')}], but the int4 format implies ${dtype} [${shape.join(', ')}]`,
    );
  }
}

/** Streams the int4 matrix `prefix` of a Kiln folder into part buffers, a byte range each. */
async function uploadKilnQ4(
  lc: LoadContext,
  prefix: string,
  rows: number,
  cols: number,
  format: Q4Format,
): Promise<Q4GpuWeight> {
  const { ctx, ckpt } = lc;
  const specs = q4TensorSpecs(prefix, rows, cols, format);
  const per = q4RowsPerPart(rows, cols, format, ctx.limits.maxStorageBufferBindingSize, prefix);
  const tilesPer = per / Q4_TILE_ROWS;
  const parts: Q4WeightPart[] = [];
  // Buffers per stored tensor, one per part.
  const buffers: GPUBuffer[][] = specs.map(() => []);
  for (let r = 0; r < rows; r += per) {
    const n = Math.min(per, rows - r);
    const tiles = Math.ceil(n / Q4_TILE_ROWS);
    const bufs: GPUBuffer[] = [];
    for (const [i, s] of specs.entries()) {
      const b = await allocateQ4(lc, `${s.name}[${r}:${r + n}]`, tiles * s.tileBytes);
      (buffers[i] as GPUBuffer[]).push(b);
      bufs.push(b);
    }
    parts.push({
      words: bufs[0] as GPUBuffer,
      scales: bufs[1] as GPUBuffer,
      zeros: format.symmetric ? undefined : bufs[2],
      rowStart: r,
      rows: n,
    });
  }
  const queue = ctx.device.queue;
  for (const [i, s] of specs.entries()) {
    const info = ckpt.get(s.name);
    const partBytes = tilesPer * s.tileBytes;
    for await (const { offset, bytes } of ckpt.readTensorChunks(info, CHUNK_BYTES)) {
      // A chunk may straddle parts: write each piece into its own buffer.
      let at = 0;
      while (at < bytes.length) {
        const global = offset + at;
        const part = Math.floor(global / partBytes);
        const within = global - part * partBytes;
        const take = Math.min(bytes.length - at, partBytes - within);
        queue.writeBuffer(
          (buffers[i] as GPUBuffer[])[part] as GPUBuffer,
          within,
          bytes.subarray(at, at + take),
        );
        at += take;
      }
      lc.tick(info, bytes.length);
    }
  }
  ctx.assertAlive();
  return { name: prefix, format, rows, cols, parts };
}

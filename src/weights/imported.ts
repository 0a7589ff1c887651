/**
 * GPTQ and AWQ folders, converted exactly to Kiln's int4 layout on the CPU while loading (the
 * converters are src/quant/gptq.ts and awq.ts): each checkpoint projection (q, k, v, ...) is read,
 * converted, and the projections of one matmul stacked by rows. An act-order GPTQ projection keeps
 * its column order (g_idx) as a permutation the int4 matmul gathers X through.
 */
import { UnsupportedModelError } from '../errors.js';
import { storageUsage } from '../gpu/device.js';
import type { TensorInfo } from '../io/safetensors.js';
import type { Linear, MatrixWeight } from '../kernels/linear.js';
import { projectionRows, type ModelTensors } from '../model/architecture.js';
import type { ModelSpec } from '../model/spec.js';
import { awqToQ4 } from '../quant/awq.js';
import { gptqToQ4 } from '../quant/gptq.js';
import type { ImportedQ4, ImportedQuantConfig } from '../quant/import-config.js';
import { LM_HEAD_PREFIX } from '../quant/kiln-format.js';
import { stackQ4, type Q4Format } from '../quant/q4.js';
import { projectionsOf, type LoadContext, type WeightSource } from './source.js';
import { q4MatrixBytes, uploadQ4Matrix } from './upload-q4.js';

/** The import tensors of one checkpoint projection. */
function tensorNames(prefix: string, config: ImportedQuantConfig): string[] {
  const names = [`${prefix}.qweight`, `${prefix}.qzeros`, `${prefix}.scales`];
  if (config.method === 'gptq' && config.descAct) names.push(`${prefix}.g_idx`);
  return names;
}

export function importedSource(config: ImportedQuantConfig): WeightSource {
  const head = config.method === 'gptq' && config.lmHead;
  const allNames = (t: ModelTensors) => [
    ...projectionsOf(t).flatMap((p) => p.sources.flatMap((s) => tensorNames(s.prefix, config))),
    ...(head ? tensorNames(LM_HEAD_PREFIX, config) : []),
  ];
  /** Checkpoint projections `sources` converted and stacked by rows into one matmul `name`. */
  const load = async (
    lc: LoadContext,
    name: string,
    sources: readonly { prefix: string; rows: number }[],
    cols: number,
  ): Promise<Linear> => {
    const list: ImportedQ4[] = [];
    for (const s of sources) list.push(await importProjection(lc, s.prefix, { rows: s.rows, cols }, config));
    const perm = list[0]?.perm;
    for (const q of list) {
      if (!samePerm(q.perm, perm)) {
        throw new UnsupportedModelError(
          `${name}: the act-order column orders (g_idx) of ${sources.map((s) => s.prefix).join(', ')} differ, so they cannot share one matmul input`,
        );
      }
    }
    const weight = await uploadQ4Matrix(lc, name, stackQ4(list.map((q) => q.matrix)));
    if (!perm) return { weight };
    const { ctx } = lc;
    const buf = await ctx.guardAllocation(`tensor ${name}.perm`, perm.byteLength, () =>
      lc.track(ctx.createBuffer(`${name}.perm`, perm.byteLength, storageUsage())),
    );
    ctx.device.queue.writeBuffer(buf, 0, perm as Uint32Array<ArrayBuffer>);
    return { weight, perm: buf };
  };
  return {
    description: `int4 g${config.groupSize}, ${config.method} checkpoint`,
    quantized: true,
    headServesEmbeddings: false,
    ownsHead: head,
    floatTensors: () => [],
    validate(_spec, t, ckpt) {
      for (const name of allNames(t)) ckpt.get(name);
    },
    packedTensorNames: (_spec, t) => allNames(t),
    bytes(spec: ModelSpec, t) {
      // Estimated with group 32 and zero points (the largest the conversion can produce).
      const f: Q4Format = { groupSize: 32, symmetric: false, scaleType: 'f16' };
      let total = 0;
      for (const p of projectionsOf(t)) total += q4MatrixBytes(projectionRows(p), p.cols, f);
      if (head) total += q4MatrixBytes(spec.vocabSize, spec.hiddenSize, f);
      return total;
    },
    projection: (lc, p) => load(lc, p.name, p.sources, p.cols),
    async lmHead(lc): Promise<MatrixWeight> {
      const { vocabSize, hiddenSize } = lc.spec;
      const h = await load(lc, LM_HEAD_PREFIX, [{ prefix: LM_HEAD_PREFIX, rows: vocabSize }], hiddenSize);
      if (h.perm) throw new UnsupportedModelError('an act-order (g_idx) lm_head is not supported');
      return h.weight;
    },
  };
}

/** Reads one GPTQ/AWQ projection's tensors and converts them (exactly) to Kiln's int4 matrix. */
async function importProjection(
  lc: LoadContext,
  prefix: string,
  shape: { rows: number; cols: number },
  config: ImportedQuantConfig,
): Promise<ImportedQ4> {
  const { ckpt } = lc;
  const read = async (suffix: string) => {
    const name = `${prefix}.${suffix}`;
    if (!ckpt.has(name)) return undefined;
    const info = ckpt.get(name);
    const raw = await ckpt.readTensor(info);
    lc.tick(info, raw.length);
    // A copy: the bytes may sit at any offset of a shared buffer, and typed arrays need alignment.
    return { info, bytes: raw.slice() };
  };
  const ints = (t: { info: TensorInfo; bytes: Uint8Array } | undefined) => {
    if (!t) return undefined;
    if (t.info.dtype !== 'I32' && t.info.dtype !== 'U32') {
      throw new UnsupportedModelError(
        `tensor ${t.info.name} in ${ckpt.location} is ${t.info.dtype}; expected I32 packed int4`,
      );
    }
    return new Int32Array(t.bytes.buffer, 0, t.bytes.length / 4);
  };
  const halves = (t: { info: TensorInfo; bytes: Uint8Array } | undefined) => {
    if (!t) return undefined;
    if (t.info.dtype !== 'F16') {
      throw new UnsupportedModelError(
        `tensor ${t.info.name} in ${ckpt.location} is ${t.info.dtype}; expected F16 scales`,
      );
    }
    return new Uint16Array(t.bytes.buffer, 0, t.bytes.length / 2);
  };
  const [qweight, qzeros, scales] = [await read('qweight'), await read('qzeros'), await read('scales')];
  const shapes = { qweight: qweight?.info.shape, qzeros: qzeros?.info.shape, scales: scales?.info.shape };
  const definedShapes = Object.fromEntries(Object.entries(shapes).filter(([, v]) => v !== undefined));
  if (config.method === 'awq') {
    return awqToQ4(
      { qweight: ints(qweight), qzeros: ints(qzeros), scales: halves(scales), shapes: definedShapes },
      shape,
      config,
      prefix,
    );
  }
  const gIdx = await read('g_idx');
  return gptqToQ4(
    {
      qweight: ints(qweight),
      qzeros: ints(qzeros),
      scales: halves(scales),
      ...(gIdx ? { gIdx: ints(gIdx) as Int32Array } : {}),
      shapes: { ...definedShapes, ...(gIdx ? { gIdx: gIdx.info.shape } : {}) },
    },
    shape,
    config,
    prefix,
  );
}

function samePerm(a: Uint32Array | undefined, b: Uint32Array | undefined): boolean {
  if (!a || !b) return a === b;
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

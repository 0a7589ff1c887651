/**
 * The WeightSource of a GGUF file. A file whose projections, LM head and embeddings are all F32,
 * F16 or BF16 is a float checkpoint (gguf-checkpoint.ts presents it under transformers' names, rows
 * un-permuted): it loads through the float path, or is quantized to int4 at load like any float
 * checkpoint. A file with block-quantized tensors (Q4_K_M and the like mix several block types)
 * keeps them quantized on the GPU: each projection's pieces (q, k, v; gate, up) are uploaded in
 * their own block formats as one stacked GgufGpuWeight (upload-gguf.ts) for the matmul_gguf
 * kernels, a block-quantized LM head likewise, and a block-quantized token_embd as the table
 * embed_gguf gathers from. Nothing is expanded to floats in memory. Float tensors beside blocks
 * (a float projection, an F16 output.weight, F32 norms) take the float path.
 */
import { UnsupportedModelError } from '../errors.js';
import type { GgufHeader, GgufTensorInfo } from '../io/gguf.js';
import type { ModelTensors, ProjectionTensors } from '../model/architecture.js';
import { ggufTensorName } from '../model/gguf-config.js';
import type { ModelSpec } from '../model/spec.js';
import { modelTensors } from '../model/tensors.js';
import { GGUF_KERNEL_TYPES } from '../quant/gguf-pack.js';
import { weightSourceFor, type LoadQuantOptions } from './select.js';
import {
  headTensor,
  projectionsOf,
  projectionWeights,
  type LoadContext,
  type WeightSource,
} from './source.js';
import { ggufStackBytes, uploadGgufMatrix, type GgufPiece } from './upload-gguf.js';
import { floatTensorBytes, uploadMatrix } from './upload.js';

const FLOAT_TYPES: ReadonlySet<string> = new Set(['F32', 'F16', 'BF16']);
const KERNEL_TYPES: ReadonlySet<string> = new Set(GGUF_KERNEL_TYPES);

/** The GGUF name of a transformers tensor name in this file. */
function ggufName(h: GgufHeader, name: string): string | undefined {
  return ggufTensorName(h.metadata.string('general.architecture'), name);
}

/** The GGUF tensor behind a transformers tensor name, or undefined. */
function ggufOf(h: GgufHeader, name: string): GgufTensorInfo | undefined {
  const g = ggufName(h, name);
  return g === undefined ? undefined : h.tensors.get(g);
}

function isBlock(t: GgufTensorInfo | undefined): boolean {
  return t !== undefined && !FLOAT_TYPES.has(t.type.name);
}

/** The GGUF element types of a model's projection weights, LM head and embeddings, by type name. */
export function ggufProjectionTypes(h: GgufHeader, spec: ModelSpec): Map<string, string[]> {
  const t = modelTensors(spec);
  const byType = new Map<string, string[]>();
  for (const name of new Set([...projectionWeights(t), headTensor(t), t.embed])) {
    const info = ggufOf(h, name);
    if (!info) continue;
    const list = byType.get(info.type.name) ?? [];
    list.push(info.name);
    byType.set(info.type.name, list);
  }
  return byType;
}

/**
 * The source for a GGUF file: the float sources when every weight is a float type, the block
 * source otherwise. `quant: 'q4'` applies to float files only.
 */
export function ggufWeightSource(
  h: GgufHeader,
  spec: ModelSpec,
  quant: 'none' | 'q4',
  opts?: LoadQuantOptions,
): WeightSource {
  const types = ggufProjectionTypes(h, spec);
  const blocks = [...types].filter(([type]) => !FLOAT_TYPES.has(type));
  if (blocks.length === 0) return weightSourceFor(spec, h.file, quant, opts);
  const missing = blocks.filter(([type]) => !KERNEL_TYPES.has(type));
  if (missing.length > 0) {
    const list = missing.map(([type, names]) => `${type} (${names.length} tensors, e.g. ${names[0]})`);
    throw new UnsupportedModelError(
      `${h.file}: block type ${list.join(', ')} has no GPU kernel in Kiln ` +
        `(supported: ${[...GGUF_KERNEL_TYPES].join(', ')}, and F32, F16, BF16)`,
    );
  }
  if (quant === 'q4') {
    throw new UnsupportedModelError(
      `${h.file} is already quantized (${blocks.map(([type]) => type).join(', ')}); --quant q4 applies to float weights`,
    );
  }
  return ggufBlockSource(h, spec);
}

function ggufBlockSource(h: GgufHeader, spec: ModelSpec): WeightSource {
  const t = modelTensors(spec);
  const head = headTensor(t);
  const headBlocks = isBlock(ggufOf(h, head));
  // A tied block head is also the table embed_gguf gathers from: uploaded once.
  const tiedBlocks = headBlocks && head === t.embed;
  const embedBlocks = isBlock(ggufOf(h, t.embed)) && !tiedBlocks;
  /** Projections all of whose pieces are blocks; all-float ones load as floats; mixed is refused. */
  const blockProjections = new Set<string>();
  for (const p of projectionsOf(t)) {
    const kinds = p.sources.map((s) => isBlock(ggufOf(h, `${s.prefix}.weight`)));
    if (kinds.every(Boolean)) blockProjections.add(p.name);
    else if (kinds.some(Boolean)) {
      const desc = p.sources.map(
        (s) => `${ggufName(h, `${s.prefix}.weight`)} ${ggufOf(h, `${s.prefix}.weight`)?.type.name}`,
      );
      throw new UnsupportedModelError(
        `${h.file}: projection ${p.name} stacks block and float tensors (${desc.join(', ')}); Kiln stacks one or the other`,
      );
    }
  }
  const weightsOf = (p: ProjectionTensors) => p.sources.map((s) => `${s.prefix}.weight`);
  const blockNames = (tt: ModelTensors): string[] => {
    const names = projectionsOf(tt)
      .filter((p) => blockProjections.has(p.name))
      .flatMap(weightsOf);
    if (headBlocks) names.push(head);
    if (embedBlocks) names.push(tt.embed);
    return [...new Set(names)];
  };
  const piece = (name: string, rows: number): Omit<GgufPiece, 'bytes'> => {
    const g = ggufOf(h, name);
    if (!g) throw new UnsupportedModelError(`missing tensor ${ggufName(h, name) ?? name} in ${h.file}`);
    return { type: g.type.name, rows };
  };
  const stack = async (
    lc: LoadContext,
    name: string,
    tensors: { name: string; rows: number }[],
    cols: number,
  ) => {
    const pieces: GgufPiece[] = [];
    for (const x of tensors) {
      const info = lc.ckpt.get(x.name);
      const bytes = await lc.ckpt.readTensor(info);
      lc.tick(info, bytes.byteLength);
      pieces.push({ ...piece(x.name, x.rows), bytes });
    }
    return uploadGgufMatrix(lc, name, pieces, cols);
  };
  const names = [...blocks(h, spec)];
  return {
    description: `gguf ${names.join(', ')} blocks`,
    quantized: true,
    headServesEmbeddings: tiedBlocks,
    ownsHead: headBlocks,
    floatTensors: (_spec, tt) =>
      projectionsOf(tt)
        .filter((p) => !blockProjections.has(p.name))
        .flatMap(weightsOf),
    validate(_spec, tt) {
      // Every block tensor's GGUF shape must be the [cols, rows] the architecture implies.
      const shapes = new Map<string, [number, number]>();
      for (const p of projectionsOf(tt))
        for (const s of p.sources) shapes.set(`${s.prefix}.weight`, [p.cols, s.rows]);
      shapes.set(headTensor(tt), [spec.hiddenSize, spec.vocabSize]);
      shapes.set(tt.embed, [spec.hiddenSize, spec.vocabSize]);
      for (const name of blockNames(tt)) {
        const g = ggufOf(h, name);
        const want = shapes.get(name);
        if (!g || !want)
          throw new UnsupportedModelError(`missing tensor ${ggufName(h, name) ?? name} in ${h.file}`);
        if (g.dims.length !== 2 || g.dims[0] !== want[0] || g.dims[1] !== want[1]) {
          throw new UnsupportedModelError(
            `tensor ${g.name} in ${h.file} is ${g.type.name} [${g.dims.join(', ')}], but the metadata implies [${want.join(', ')}]`,
          );
        }
      }
    },
    packedTensorNames: (_spec, tt) => blockNames(tt),
    bytes(_spec, tt, ckpt) {
      let total = 0;
      for (const p of projectionsOf(tt)) {
        if (blockProjections.has(p.name)) {
          total += ggufStackBytes(
            p.sources.map((s) => piece(`${s.prefix}.weight`, s.rows)),
            p.cols,
          );
        } else {
          for (const w of weightsOf(p)) total += floatTensorBytes(ckpt.get(w).shape, ckpt.get(w).dtype);
        }
      }
      if (headBlocks) total += ggufStackBytes([piece(head, spec.vocabSize)], spec.hiddenSize);
      if (embedBlocks) total += ggufStackBytes([piece(tt.embed, spec.vocabSize)], spec.hiddenSize);
      return total;
    },
    async projection(lc, p) {
      if (!blockProjections.has(p.name)) {
        return {
          weight: await uploadMatrix(lc, p.name, weightsOf(p), p.role === 'gateUp' ? 'swiglu' : 'stack'),
        };
      }
      return {
        weight: await stack(
          lc,
          p.name,
          p.sources.map((s) => ({ name: `${s.prefix}.weight`, rows: s.rows })),
          p.cols,
        ),
      };
    },
    lmHead: (lc, tt) =>
      stack(lc, headTensor(tt), [{ name: headTensor(tt), rows: spec.vocabSize }], spec.hiddenSize),
    ...(embedBlocks
      ? {
          embedTable: (lc: LoadContext, tt: ModelTensors) =>
            stack(lc, tt.embed, [{ name: tt.embed, rows: spec.vocabSize }], spec.hiddenSize),
        }
      : {}),
  };
}

/** The block types of a file's weights, in the order first met. */
function blocks(h: GgufHeader, spec: ModelSpec): Set<string> {
  return new Set([...ggufProjectionTypes(h, spec).keys()].filter((type) => !FLOAT_TYPES.has(type)));
}

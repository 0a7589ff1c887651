/**
 * GGUF block weights in the forward pass: a synthetic model whose projections, embedding table and
 * LM head are stored in GGUF block formats (every block format, fused projections stacking
 * different formats as Q4_K_M files do) runs through the loader, the graph (matmul_gguf,
 * embed_gguf, SwiGLU over the stacked gate/up) and a prefill step, and its logits equal the
 * float64 reference model run over the very weights the blocks decode to.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { BLOCK_TOKENS, PagedKvCache } from '../../src/engine/kv/cache.js';
import { ForwardModel } from '../../src/engine/forward/model.js';
import { runStep } from '../../src/engine/forward/step.js';
import { decodeToFloat32 } from '../../src/io/dtype.js';
import { openCheckpoint, type Checkpoint } from '../../src/io/safetensors-checkpoint.js';
import { isGgufWeight, isQ4Weight, type MatrixWeight } from '../../src/kernels/linear.js';
import type { ModelTensors } from '../../src/model/architecture.js';
import { ReferenceModel } from '../../src/model/reference.js';
import type { ModelSpec } from '../../src/model/spec.js';
import { modelTensors } from '../../src/model/tensors.js';
import { openLocalModelDir } from '../../src/node/fs-model-dir.js';
import { dequantizeGguf, quantizeGguf } from '../../src/quant/gguf-blocks.js';
import { destroyWeights, loadWeights } from '../../src/weights/loader.js';
import {
  headTensor,
  projectionWeights,
  type LoadContext,
  type WeightSource,
} from '../../src/weights/source.js';
import { ggufStackBytes, uploadGgufMatrix, type GgufPiece } from '../../src/weights/upload-gguf.js';
import { writeTestModel } from '../helpers/checkpoints.js';
import { overlayCheckpoint } from '../helpers/gguf.js';
import { expectClose, testGpu } from '../helpers/gpu.js';

/**
 * The f32-arithmetic budget of test/model/models.test.ts (1e-4, justified there): both sides use
 * bit-identical weights up to one f32 rounding of each decoded weight, and matmul_gguf's summation
 * depth per output (K/8 chunk adds of 8-element dots) is of the float matmul's order.
 */
const LOGIT_ATOL = 1e-4;
const PROMPT = [1, 17, 45, 3, 88, 23, 61, 9, 30, 74, 5, 99];

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/**
 * The block format of each tensor: every format at least once, fused projections mixed; layer 1's
 * o_proj is Q4_0 alone, which loads as Kiln int4 (an exact conversion).
 */
function typeOf(name: string, t: ModelTensors): string {
  if (name === t.embed) return 'Q8_0';
  if (name === headTensor(t)) return 'Q6_K';
  const layer = Number(/layers\.(\d+)\./.exec(name)?.[1] ?? 0);
  const byRole: Record<string, [string, string]> = {
    q_proj: ['Q4_K', 'Q2_K'],
    k_proj: ['Q5_K', 'IQ4_XS'],
    v_proj: ['Q6_K', 'IQ4_NL'],
    o_proj: ['Q8_0', 'Q4_0'],
    gate_proj: ['Q4_0', 'Q5_1'],
    up_proj: ['Q4_1', 'Q4_K'],
    down_proj: ['Q3_K', 'Q5_0'],
  };
  const role = Object.keys(byRole).find((r) => name.includes(`.${r}.`));
  if (!role) throw new Error(`no format for ${name}`);
  return (byRole[role] as [string, string])[layer % 2] as string;
}

/** Every tensor the source stores, quantized on the CPU: its blocks and the values they decode to. */
async function quantizeAll(ckpt: Checkpoint, spec: ModelSpec) {
  const t = modelTensors(spec);
  const out = new Map<
    string,
    { type: string; bytes: Uint8Array; rows: number; cols: number; values: Float32Array }
  >();
  for (const name of new Set([...projectionWeights(t), t.embed, headTensor(t)])) {
    const info = ckpt.get(name);
    const [rows, cols] = info.shape as [number, number];
    const type = typeOf(name, t);
    const bytes = quantizeGguf(type, decodeToFloat32(info.dtype, await ckpt.readTensor(info)));
    out.set(name, {
      type,
      bytes,
      rows,
      cols,
      values: Float32Array.from(dequantizeGguf(type, bytes, rows * cols)),
    });
  }
  return out;
}

/** A WeightSource over CPU-quantized GGUF blocks (what a GGUF file's source hands the loader). */
function blockSource(q: Awaited<ReturnType<typeof quantizeAll>>): WeightSource {
  const stack = async (lc: LoadContext, name: string, names: string[]) => {
    const pieces: GgufPiece[] = names.map((n) => {
      const e = q.get(n);
      if (!e) throw new Error(n);
      return { type: e.type, bytes: e.bytes, rows: e.rows };
    });
    return uploadGgufMatrix(lc, name, pieces, q.get(names[0] as string)?.cols ?? 0);
  };
  return {
    description: 'gguf blocks (test)',
    quantized: true,
    headServesEmbeddings: false,
    ownsHead: true,
    floatTensors: () => [],
    validate: () => undefined,
    packedTensorNames: (_spec, t) => [...new Set([...projectionWeights(t), t.embed, headTensor(t)])],
    bytes: () => [...q.values()].reduce((s, e) => s + ggufStackBytes([e], e.cols), 0),
    projection: async (lc, p) => ({
      weight: await stack(
        lc,
        p.name,
        p.sources.map((s) => `${s.prefix}.weight`),
      ),
    }),
    lmHead: (lc, t) => stack(lc, 'lm_head', [headTensor(t)]),
    embedTable: (lc, t) => stack(lc, 'embed', [t.embed]),
  };
}

describe('GGUF block weights in the forward pass', () => {
  test.each([
    ['Llama, untied head', { seed: 51 }],
    [
      'Qwen2 (q/k/v biases), tied head: the block table embeds and projects',
      { architecture: 'Qwen2ForCausalLM' as const, tie: true, seed: 52 },
    ],
  ])(
    '%s: logits equal the float64 reference over the decoded weights',
    async (_, o) => {
      const dir = mkdtempSync(join(tmpdir(), 'kiln-gguf-blocks-'));
      dirs.push(dir);
      // K-quants need K to be whole 256-element blocks: hidden 256, intermediate 512, 4 heads of 64.
      const spec = writeTestModel(dir, {
        hidden: 256,
        intermediate: 512,
        heads: 4,
        kvHeads: 2,
        layers: 2,
        ...o,
      });
      const ckpt = await openCheckpoint(openLocalModelDir(dir));
      const ctx = await testGpu();
      try {
        const q = await quantizeAll(ckpt, spec);
        const weights = await loadWeights(ctx, spec, ckpt, blockSource(q));
        expect(isGgufWeight(weights.embed) && isGgufWeight(weights.lmHead)).toBe(true);
        expect(isQ4Weight(weights.layers[1]?.o.weight as MatrixWeight)).toBe(true);
        expect(isGgufWeight(weights.layers[0]?.gateUp.weight as MatrixWeight)).toBe(true);
        const kv = await PagedKvCache.create(ctx, spec, 4, 'f32');
        const fm = new ForwardModel(ctx, spec, weights, kv, PROMPT.length, 0, 'f32', 4 * BLOCK_TOKENS);
        const rows = PROMPT.map((_, i) => i);
        const logits = await runStep(
          fm,
          {
            tokens: PROMPT,
            positions: rows,
            slots: rows,
            blockTableOffsets: rows.map(() => 0),
            blockTable: [0],
            logitRows: rows,
          },
          'logits',
        );
        fm.destroy();
        kv.destroy();
        destroyWeights(ctx, weights);
        const ref = await ReferenceModel.load(
          spec,
          overlayCheckpoint(ckpt, spec, new Map([...q].map(([name, e]) => [name, e.values]))),
        );
        const want = ref.forward(PROMPT);
        const V = spec.vocabSize;
        want.forEach((row, i) => expectClose(logits.slice(i * V, (i + 1) * V), row, { atol: LOGIT_ATOL }));
      } finally {
        await ckpt.close();
      }
    },
    240_000,
  );
});

/**
 * int4 for every architecture added for the 2026 small models (Qwen3, SmolLM3, Phi-3, Gemma 2,
 * Gemma 3): quantized at load (--quant q4) the logits equal the float64 reference over the
 * dequantized weights, and a `kiln quantize` folder (LM head quantized too: a tied head then also
 * serves as the embedding table, with Gemma's √hidden scale) loads to bit-identical logits.
 * Phi-3's fused qkv_proj / gate_up_proj are quantized as the stacked matrices they are.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { decodeToFloat32 } from '../../src/io/dtype.js';
import { openCheckpoint } from '../../src/io/safetensors-checkpoint.js';
import type { ModelSpec } from '../../src/model/spec.js';
import { modelTensors } from '../../src/model/tensors.js';
import { ReferenceModel } from '../../src/model/reference.js';
import { openLocalModelDir } from '../../src/node/fs-model-dir.js';
import { createEngine } from '../../src/node/index.js';
import { quantizeModel } from '../../src/node/quantize.js';
import { dequantize, quantizeRtn, type Q4Format } from '../../src/quant/q4.js';
import { ARCH_CASES } from '../helpers/arch-cases.js';
import { writeTestModel } from '../helpers/checkpoints.js';
import { overlayCheckpoint } from '../helpers/gguf.js';
import { expectClose } from '../helpers/gpu.js';

/** As test/weights/quantized.test.ts (justified there): the f32-arithmetic budget of the float path. */
const LOGIT_ATOL = 1e-4;
const ASYM32: Q4Format = { groupSize: 32, symmetric: false, scaleType: 'f16' };
const PROMPT = [1, 17, 45, 3, 88, 23, 61, 9, 30, 74, 5, 99];

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'kiln-q4a-'));
  dirs.push(d);
  return d;
}

/** The reference over RTN int4 copies of every projection (read as the checkpoint stores them). */
async function int4Reference(dir: string, spec: ModelSpec): Promise<ReferenceModel> {
  const ckpt = await openCheckpoint(openLocalModelDir(dir));
  try {
    const replaced = new Map<string, Float32Array>();
    for (const L of modelTensors(spec).layers)
      for (const p of [L.qkv, L.o, L.gateUp, L.down])
        for (const s of p.sources) {
          const info = ckpt.get(`${s.prefix}.weight`);
          const [rows, cols] = info.shape as [number, number];
          const w = decodeToFloat32(info.dtype, await ckpt.readTensor(info));
          replaced.set(info.name, dequantize(quantizeRtn(w, rows, cols, ASYM32)));
        }
    return await ReferenceModel.load(spec, overlayCheckpoint(ckpt, spec, replaced));
  } finally {
    await ckpt.close();
  }
}

async function logits(dir: string, opts: Omit<Parameters<typeof createEngine>[0], 'model'> = {}) {
  const engine = await createEngine({ model: dir, kvCache: 'f32', ...opts });
  try {
    return { rows: await engine.logits(PROMPT), format: engine.weightFormat };
  } finally {
    engine.dispose();
  }
}

describe('int4 for every new architecture', () => {
  // hidden 64 where the case has 48: int4 groups of 32 must divide every K.
  test.each(ARCH_CASES)(
    '$name',
    async ({ opts }) => {
      const dir = tempDir();
      const spec = writeTestModel(dir, { ...opts, hidden: 64 });
      const atLoad = await logits(dir, { quant: 'q4' });
      expect(atLoad.format).toBe('int4 g32 asym, quantized at load');
      const want = (await int4Reference(dir, spec)).forward(PROMPT);
      atLoad.rows.forEach((row, i) => expectClose(row, want[i] as Float64Array, { atol: LOGIT_ATOL }));

      const out = tempDir();
      await quantizeModel({ dir, out, format: ASYM32, method: 'rtn', lmHead: true });
      const folder = await logits(out);
      expect(folder.format).toBe('int4 g32 asym (+lm_head), kiln checkpoint');
      const headAtLoad = await logits(dir, { quant: 'q4', quantOptions: { lmHead: true } });
      // Same codes, scales and zeros in the same kernel layout: bit-identical logits.
      folder.rows.forEach((row, i) => expect(row).toEqual(headAtLoad.rows[i]));
    },
    600_000,
  );
});

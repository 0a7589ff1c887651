/**
 * llama2.c checkpoints (v0 and v1, fp32): header parsing, the converted tensors against the arrays
 * the test wrote, the wq/wk row permutation against an independent implementation of HF's
 * `w.view(n_heads, d / 2, 2, in).transpose(1, 2)`, a numeric check that interleaved-pair RoPE on the
 * original weights gives the same attention scores as rotate-half RoPE on the converted ones, and the
 * rejection of hostile files.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { InvalidModelFileError, KilnError, UnsupportedModelError } from '../../src/errors.js';
import type { ByteSource } from '../../src/io/byte-source.js';
import { decodeToFloat32 } from '../../src/io/dtype.js';
import { convertLlama2c, readLlama2cHeader } from '../../src/io/llama2c.js';
import { openCheckpoint } from '../../src/io/safetensors-checkpoint.js';
import { encodeSafetensors } from '../../src/io/safetensors-writer.js';
import { ropeInvFreq, ropeRef } from '../../src/kernels/rope.ref.js';
import { convertLlama2cToFolder } from '../../src/node/convert.js';
import { openLocalModelDir } from '../../src/node/fs-model-dir.js';
import { randomF32 } from '../helpers/random.js';
import { sharedModel } from '../helpers/shared.js';

const root = mkdtempSync(join(tmpdir(), 'kiln-llama2c-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

interface Dims {
  dim: number;
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  vocab: number;
  seqLen: number;
  shared: boolean;
}

const SMALL: Dims = {
  dim: 16,
  hidden: 24,
  layers: 2,
  heads: 4,
  kvHeads: 2,
  vocab: 11,
  seqLen: 6,
  shared: true,
};

/** The llama2.c weights of a model, one array per tensor (per layer for layer tensors). */
interface Llama2cWeights {
  embed: Float32Array;
  attnNorm: Float32Array[];
  wq: Float32Array[];
  wk: Float32Array[];
  wv: Float32Array[];
  wo: Float32Array[];
  ffnNorm: Float32Array[];
  w1: Float32Array[];
  w2: Float32Array[];
  w3: Float32Array[];
  norm: Float32Array;
  /** RoPE tables that v0 stores (skipped by the converter); [seqLen, headSize / 2] each. */
  freqCos: Float32Array;
  freqSin: Float32Array;
  cls: Float32Array | null;
}

function randomWeights(d: Dims, seed = 1): Llama2cWeights {
  const hs = d.dim / d.heads;
  const kv = d.kvHeads * hs;
  let s = seed * 1000;
  const layers = (n: number) => Array.from({ length: d.layers }, () => randomF32(n, s++));
  return {
    embed: randomF32(d.vocab * d.dim, s++),
    attnNorm: layers(d.dim),
    wq: layers(d.dim * d.dim),
    wk: layers(kv * d.dim),
    wv: layers(kv * d.dim),
    wo: layers(d.dim * d.dim),
    ffnNorm: layers(d.dim),
    w1: layers(d.hidden * d.dim),
    w2: layers(d.dim * d.hidden),
    w3: layers(d.hidden * d.dim),
    norm: randomF32(d.dim, s++),
    freqCos: randomF32((d.seqLen * hs) / 2, s++),
    freqSin: randomF32((d.seqLen * hs) / 2, s++),
    cls: d.shared ? null : randomF32(d.vocab * d.dim, s++),
  };
}

/**
 * A llama2.c file as karpathy/llama2.c writes it: run.c's legacy v0 (7 int32, negative vocab for a
 * separate classifier, RoPE tables before the classifier) or export.py's version1_export ("ak42",
 * version 1, 7 int32, shared-classifier byte, zero padding to 256 bytes, a different tensor order).
 */
function llama2cFile(
  version: 0 | 1,
  d: Dims,
  w: Llama2cWeights,
  headerOverride: Partial<Dims> = {},
): Uint8Array {
  const h = { ...d, ...headerOverride };
  const ints = [h.dim, h.hidden, h.layers, h.heads, h.kvHeads, h.vocab, h.seqLen];
  let head: Uint8Array;
  if (version === 0) {
    if (!h.shared) ints[5] = -h.vocab;
    head = new Uint8Array(new Int32Array(ints).buffer);
  } else {
    head = new Uint8Array(256);
    const dv = new DataView(head.buffer);
    dv.setUint32(0, 0x616b3432, true);
    dv.setInt32(4, 1, true);
    ints.forEach((v, i) => dv.setInt32(8 + 4 * i, v, true));
    dv.setUint8(36, h.shared ? 1 : 0);
  }
  const parts: Float32Array[] =
    version === 0
      ? [
          w.embed,
          ...w.attnNorm,
          ...w.wq,
          ...w.wk,
          ...w.wv,
          ...w.wo,
          ...w.ffnNorm,
          ...w.w1,
          ...w.w2,
          ...w.w3,
          w.norm,
          w.freqCos,
          w.freqSin,
        ]
      : [
          ...w.attnNorm,
          ...w.ffnNorm,
          w.norm,
          w.embed,
          ...w.wq,
          ...w.wk,
          ...w.wv,
          ...w.wo,
          ...w.w1,
          ...w.w2,
          ...w.w3,
        ];
  if (w.cls) parts.push(w.cls);
  const size = head.byteLength + 4 * parts.reduce((n, p) => n + p.length, 0);
  const out = new Uint8Array(size);
  out.set(head, 0);
  let o = head.byteLength;
  for (const p of parts) {
    out.set(new Uint8Array(p.buffer, p.byteOffset, p.byteLength), o);
    o += p.byteLength;
  }
  return out;
}

function memSource(name: string, bytes: Uint8Array): ByteSource {
  return {
    name,
    size: bytes.byteLength,
    read: (offset, length) => {
      if (offset + length > bytes.byteLength)
        return Promise.reject(new Error(`read past the end of ${name}`));
      return Promise.resolve(bytes.slice(offset, offset + length));
    },
    close: () => Promise.resolve(),
  };
}

/**
 * HF's convert_llama_weights_to_hf.py permute, written from the tensor semantics: view the
 * [heads * headSize, cols] matrix as [heads, headSize / 2, 2, cols], swap axes 1 and 2 and read it
 * back in C order as [heads * headSize, cols].
 */
function hfPermute(w: Float32Array, heads: number, headSize: number, cols: number): Float32Array {
  const half = headSize / 2;
  // Strides of the source view [heads, half, 2, cols].
  const src = (h: number, i: number, j: number, c: number) => ((h * half + i) * 2 + j) * cols + c;
  const out = new Float32Array(w.length);
  let o = 0;
  // The transposed view has shape [heads, 2, half, cols]; element (h, j, i, c) is source (h, i, j, c).
  for (let h = 0; h < heads; h++)
    for (let j = 0; j < 2; j++)
      for (let i = 0; i < half; i++) for (let c = 0; c < cols; c++) out[o++] = w[src(h, i, j, c)] as number;
  return out;
}

/** The converted tensors by name, decoded to f32. */
function tensorMap(
  conv: Awaited<ReturnType<typeof convertLlama2c>>,
): Map<string, { shape: readonly number[]; v: Float32Array }> {
  return new Map(conv.tensors.map((t) => [t.name, { shape: t.shape, v: decodeToFloat32(t.dtype, t.data) }]));
}

/** Expected HF tensors: the llama2.c arrays, with wq/wk rows permuted by {@link hfPermute}. */
function expectedHf(d: Dims, w: Llama2cWeights): Map<string, { shape: number[]; v: Float32Array }> {
  const hs = d.dim / d.heads;
  const kv = d.kvHeads * hs;
  const m = new Map<string, { shape: number[]; v: Float32Array }>();
  m.set('model.embed_tokens.weight', { shape: [d.vocab, d.dim], v: w.embed });
  for (let l = 0; l < d.layers; l++) {
    const p = `model.layers.${l}`;
    m.set(`${p}.input_layernorm.weight`, { shape: [d.dim], v: w.attnNorm[l]! });
    m.set(`${p}.self_attn.q_proj.weight`, {
      shape: [d.dim, d.dim],
      v: hfPermute(w.wq[l]!, d.heads, hs, d.dim),
    });
    m.set(`${p}.self_attn.k_proj.weight`, {
      shape: [kv, d.dim],
      v: hfPermute(w.wk[l]!, d.kvHeads, hs, d.dim),
    });
    m.set(`${p}.self_attn.v_proj.weight`, { shape: [kv, d.dim], v: w.wv[l]! });
    m.set(`${p}.self_attn.o_proj.weight`, { shape: [d.dim, d.dim], v: w.wo[l]! });
    m.set(`${p}.post_attention_layernorm.weight`, { shape: [d.dim], v: w.ffnNorm[l]! });
    m.set(`${p}.mlp.gate_proj.weight`, { shape: [d.hidden, d.dim], v: w.w1[l]! });
    m.set(`${p}.mlp.down_proj.weight`, { shape: [d.dim, d.hidden], v: w.w2[l]! });
    m.set(`${p}.mlp.up_proj.weight`, { shape: [d.hidden, d.dim], v: w.w3[l]! });
  }
  m.set('model.norm.weight', { shape: [d.dim], v: w.norm });
  if (w.cls) m.set('lm_head.weight', { shape: [d.vocab, d.dim], v: w.cls });
  return m;
}

function expectSameTensors(
  got: Map<string, { shape: readonly number[]; v: Float32Array }>,
  want: Map<string, { shape: number[]; v: Float32Array }>,
): void {
  expect([...got.keys()].sort()).toEqual([...want.keys()].sort());
  for (const [name, t] of want) {
    const g = got.get(name)!;
    expect(g.shape, name).toEqual(t.shape);
    // Bit-exact: f32 in, f32 out, only rows moved.
    expect(
      Buffer.from(g.v.buffer, g.v.byteOffset, g.v.byteLength).equals(
        Buffer.from(t.v.buffer, t.v.byteOffset, t.v.byteLength),
      ),
      name,
    ).toBe(true);
  }
}

/** The header readLlama2cHeader should report for a SMALL file. */
function smallHeader(version: number, sharedClassifier: boolean, dataOffset: number) {
  return {
    version,
    dim: 16,
    hiddenDim: 24,
    nLayers: 2,
    nHeads: 4,
    nKvHeads: 2,
    vocabSize: 11,
    seqLen: 6,
    sharedClassifier,
    dataOffset,
  };
}

describe('readLlama2cHeader', () => {
  it('parses a v0 header with a shared classifier (positive vocab)', async () => {
    const bytes = llama2cFile(0, SMALL, randomWeights(SMALL));
    expect(await readLlama2cHeader(memSource('m.bin', bytes))).toEqual(smallHeader(0, true, 28));
  });

  it('parses a v0 header whose negative vocab size marks a separate classifier', async () => {
    const d = { ...SMALL, shared: false };
    const bytes = llama2cFile(0, d, randomWeights(d));
    expect(new DataView(bytes.buffer).getInt32(20, true)).toBe(-11);
    const h = await readLlama2cHeader(memSource('m.bin', bytes));
    expect(h).toMatchObject({ version: 0, vocabSize: 11, sharedClassifier: false, dataOffset: 28 });
  });

  it('parses a v1 header ("ak42", version 1, shared flag, 256-byte header)', async () => {
    for (const shared of [true, false]) {
      const d = { ...SMALL, shared };
      const bytes = llama2cFile(1, d, randomWeights(d));
      expect(new TextDecoder().decode(bytes.subarray(0, 4))).toBe('24ka'); // 0x616b3432 little-endian
      const h = await readLlama2cHeader(memSource('m.bin', bytes));
      expect(h).toEqual(smallHeader(1, shared, 256));
    }
  });
});

describe('convertLlama2c', () => {
  const cases: { version: 0 | 1; shared: boolean }[] = [
    { version: 0, shared: true },
    { version: 0, shared: false },
    { version: 1, shared: true },
    { version: 1, shared: false },
  ];
  for (const { version, shared } of cases) {
    it(`v${version} ${shared ? 'shared' : 'separate'} classifier: tensors are the file's arrays, wq/wk rows permuted per head`, async () => {
      const d = { ...SMALL, shared };
      const w = randomWeights(d, version * 2 + (shared ? 1 : 0) + 1);
      const conv = await convertLlama2c(memSource('m.bin', llama2cFile(version, d, w)));
      expect(conv.tensors.every((t) => t.dtype === 'F32')).toBe(true);
      expectSameTensors(tensorMap(conv), expectedHf(d, w));
      expect(conv.config).toMatchObject({
        architectures: ['LlamaForCausalLM'],
        model_type: 'llama',
        hidden_size: 16,
        intermediate_size: 24,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        vocab_size: 11,
        max_position_embeddings: 6,
        rms_norm_eps: 1e-5,
        rope_theta: 10000,
        tie_word_embeddings: shared,
        bos_token_id: 1,
        eos_token_id: 2,
        torch_dtype: 'float32',
      });
    });
  }

  it('the permutation moves row 2i to i and row 2i+1 to headSize/2 + i within each head', () => {
    // One column holding the row index makes the permutation readable.
    const heads = 2;
    const hs = 6;
    const rows = Float32Array.from({ length: heads * hs }, (_, i) => i);
    expect([...hfPermute(rows, heads, hs, 1)]).toEqual([0, 2, 4, 1, 3, 5, 6, 8, 10, 7, 9, 11]);
  });

  it('writes f16 and bf16 weights rounded from the f32 arrays', async () => {
    const w = randomWeights(SMALL, 9);
    const want = expectedHf(SMALL, w);
    for (const dtype of ['F16', 'BF16'] as const) {
      const conv = await convertLlama2c(memSource('m.bin', llama2cFile(0, SMALL, w)), { dtype });
      expect(conv.config.torch_dtype).toBe(dtype === 'F16' ? 'float16' : 'bfloat16');
      const got = tensorMap(conv);
      const rel = dtype === 'F16' ? 2 ** -11 : 2 ** -8;
      for (const [name, t] of want) {
        expect(conv.tensors.find((x) => x.name === name)!.dtype).toBe(dtype);
        const g = got.get(name)!.v;
        for (let i = 0; i < t.v.length; i++) {
          const e = t.v[i] as number;
          // Round-to-nearest: half an ulp relative, plus the f16 subnormal step near zero.
          expect(Math.abs((g[i] as number) - e)).toBeLessThanOrEqual(rel * Math.abs(e) + 2 ** -24);
        }
      }
    }
  });

  it('takes BOS/EOS from the tokenizer (null when it has none)', async () => {
    const conv = await convertLlama2c(memSource('m.bin', llama2cFile(0, SMALL, randomWeights(SMALL))), {
      bosTokenId: 5,
      eosTokenId: null,
    });
    expect(conv.config).toMatchObject({ bos_token_id: 5, eos_token_id: null });
    expect(conv.generationConfig).toEqual({ bos_token_id: 5, eos_token_id: null });
  });
});

describe('RoPE: interleaved pairs on llama2.c weights == rotate-half on converted weights', () => {
  /** llama2.c run.c's RoPE: pairs (2i, 2i+1) of each head rotated by pos * invFreq[i]. */
  function ropeInterleaved(
    x: Float64Array,
    pos: number,
    heads: number,
    hs: number,
    inv: ArrayLike<number>,
  ): void {
    for (let h = 0; h < heads; h++) {
      for (let i = 0; i < hs / 2; i++) {
        const a = pos * (inv[i] as number);
        const c = Math.cos(a);
        const s = Math.sin(a);
        const k = h * hs + 2 * i;
        const v0 = x[k] as number;
        const v1 = x[k + 1] as number;
        x[k] = v0 * c - v1 * s;
        x[k + 1] = v0 * s + v1 * c;
      }
    }
  }

  function matVec(w: Float32Array, rows: number, cols: number, x: Float64Array): Float64Array {
    const y = new Float64Array(rows);
    for (let r = 0; r < rows; r++) {
      let s = 0;
      for (let c = 0; c < cols; c++) s += (w[r * cols + c] as number) * (x[c] as number);
      y[r] = s;
    }
    return y;
  }

  /** scores[qPos][kPos][head] = q_head(qPos) . k_{head / group}(kPos) after RoPE. */
  function scores(
    wq: Float32Array,
    wk: Float32Array,
    d: Dims,
    xs: Float64Array[],
    rope: (v: Float64Array, pos: number, heads: number) => void,
  ): number[] {
    const hs = d.dim / d.heads;
    const group = d.heads / d.kvHeads;
    const q = xs.map((x, p) => {
      const v = matVec(wq, d.dim, d.dim, x);
      rope(v, p, d.heads);
      return v;
    });
    const k = xs.map((x, p) => {
      const v = matVec(wk, d.kvHeads * hs, d.dim, x);
      rope(v, p, d.kvHeads);
      return v;
    });
    const out: number[] = [];
    for (let a = 0; a < xs.length; a++)
      for (let b = 0; b < xs.length; b++)
        for (let h = 0; h < d.heads; h++) {
          let s = 0;
          const kh = Math.floor(h / group);
          for (let i = 0; i < hs; i++) s += (q[a]![h * hs + i] as number) * (k[b]![kh * hs + i] as number);
          out.push(s);
        }
    return out;
  }

  it('gives the same attention scores at every pair of positions (GQA, head size 8)', async () => {
    const d: Dims = {
      dim: 32,
      hidden: 40,
      layers: 2,
      heads: 4,
      kvHeads: 2,
      vocab: 13,
      seqLen: 64,
      shared: true,
    };
    const w = randomWeights(d, 21);
    const file = join(root, 'rope.bin');
    writeFileSync(file, llama2cFile(0, d, w));
    const out = join(root, 'rope-hf');
    await convertLlama2cToFolder(file, { outDir: out });
    const ckpt = await openCheckpoint(openLocalModelDir(out));
    const hs = d.dim / d.heads;
    const inv = ropeInvFreq(hs, 10000, { type: 'none' });
    // Positions far enough apart that every frequency has turned by a visible angle.
    const positions = [0, 1, 5, 17, 40, 63];
    const xs = positions.map((p) => Float64Array.from(randomF32(d.dim, 100 + p)));
    const interleaved = (v: Float64Array, p: number, heads: number) =>
      ropeInterleaved(v, positions[p]!, heads, hs, inv);
    const rotateHalf = (v: Float64Array, p: number, heads: number) => {
      ropeRef(v, [positions[p]!], heads, hs, inv);
    };
    try {
      for (let l = 0; l < d.layers; l++) {
        const read = async (n: string) =>
          decodeToFloat32('F32', await ckpt.readTensor(ckpt.get(`model.layers.${l}.self_attn.${n}.weight`)));
        const orig = scores(w.wq[l]!, w.wk[l]!, d, xs, interleaved);
        const conv = scores(await read('q_proj'), await read('k_proj'), d, xs, rotateHalf);
        // Unpermuted weights with rotate-half RoPE give other scores: the check can fail.
        const wrong = scores(w.wq[l]!, w.wk[l]!, d, xs, rotateHalf);
        expect(orig.length).toBe(positions.length ** 2 * d.heads);
        let worst = 0;
        let worstWrong = 0;
        for (let i = 0; i < orig.length; i++) {
          worst = Math.max(worst, Math.abs((orig[i] as number) - (conv[i] as number)));
          worstWrong = Math.max(worstWrong, Math.abs((orig[i] as number) - (wrong[i] as number)));
        }
        expect(worst).toBeLessThan(1e-12);
        expect(worstWrong).toBeGreaterThan(0.1);
      }
    } finally {
      await ckpt.close();
    }
  });
});

describe('rejects hostile llama2.c files with a clear error naming the file', () => {
  const w = randomWeights(SMALL);
  const good0 = llama2cFile(0, SMALL, w);
  const good1 = llama2cFile(1, SMALL, w);

  async function rejects(bytes: Uint8Array, type: typeof KilnError, ...patterns: RegExp[]): Promise<void> {
    const name = 'hostile-model.bin';
    const e = await convertLlama2c(memSource(name, bytes)).then(
      () => null,
      (err: unknown) => err,
    );
    expect(e).toBeInstanceOf(type);
    const msg = (e as Error).message;
    expect(msg).toContain(name);
    for (const re of patterns) expect(msg).toMatch(re);
  }

  it('a file shorter than the header', async () => {
    await rejects(good0.subarray(0, 20), InvalidModelFileError, /20 bytes is too short/);
    await rejects(new Uint8Array(0), InvalidModelFileError, /too short/);
  });

  it('a truncated v1 header', async () => {
    await rejects(good1.subarray(0, 100), InvalidModelFileError, /truncated v1 header/);
  });

  it('a truncated or padded data section (file size differs from what the header implies)', async () => {
    for (const bytes of [good0, good1]) {
      const full = bytes.byteLength;
      await rejects(
        bytes.subarray(0, full - 4),
        InvalidModelFileError,
        new RegExp(`file is ${full - 4} bytes`),
        new RegExp(`implies ${full}`),
      );
      const padded = new Uint8Array(full + 8);
      padded.set(bytes);
      await rejects(
        padded,
        InvalidModelFileError,
        new RegExp(`file is ${full + 8} bytes`),
        new RegExp(`implies ${full}`),
      );
    }
    // A header for a bigger model than the data (what a wrong dim would look like).
    await rejects(llama2cFile(0, SMALL, w, { layers: 3 }), InvalidModelFileError, /layers 3/, /implies/);
  });

  it('v2 (int8) and unknown versions', async () => {
    for (const version of [2, 0, -1, 99]) {
      const bytes = good1.slice();
      new DataView(bytes.buffer).setInt32(4, version, true);
      await rejects(bytes, UnsupportedModelError, new RegExp(`version ${version} is not supported`));
    }
  });

  it('absurd header fields', async () => {
    const cases: [Partial<Dims>, RegExp][] = [
      [{ dim: 0 }, /dim = 0/],
      [{ layers: -3 }, /nLayers = -3/],
      [{ hidden: 2 ** 30 }, /hiddenDim = 1073741824/],
      [{ seqLen: 0 }, /seqLen = 0/],
      [{ kvHeads: 0 }, /nKvHeads = 0/],
    ];
    for (const [override, re] of cases) {
      for (const version of [0, 1] as const) {
        await rejects(
          llama2cFile(version, SMALL, w, override),
          InvalidModelFileError,
          re,
          /not a plausible size/,
        );
      }
    }
    // v0 vocab -2^31: its absolute value is not plausible either.
    const bytes = good0.slice();
    new DataView(bytes.buffer).setInt32(20, -(2 ** 31), true);
    await rejects(bytes, InvalidModelFileError, /vocabSize = 2147483648/);
    // Text is not a checkpoint.
    await rejects(
      new TextEncoder().encode('{"this is": "not a llama2.c checkpoint at all"}'),
      InvalidModelFileError,
      /not a plausible size/,
    );
  });

  it('heads that do not divide dim, kv heads that do not divide heads, an odd head size', async () => {
    await rejects(llama2cFile(0, SMALL, w, { heads: 3 }), InvalidModelFileError, /dim 16/, /n_heads 3/);
    await rejects(
      llama2cFile(1, SMALL, w, { kvHeads: 3 }),
      InvalidModelFileError,
      /n_heads 4/,
      /n_kv_heads 3/,
    );
    await rejects(
      llama2cFile(0, SMALL, w, { heads: 16, kvHeads: 16 }),
      InvalidModelFileError,
      /even head size/,
    );
  });
});

describe('convertLlama2cToFolder', () => {
  it('writes a loadable folder and names the file in errors', async () => {
    const file = join(root, 'small.bin');
    writeFileSync(file, llama2cFile(1, SMALL, randomWeights(SMALL)));
    const out = join(root, 'small-hf');
    expect((await convertLlama2cToFolder(file, { outDir: out })).sort()).toEqual(
      ['config.json', 'generation_config.json', 'model.safetensors'].sort(),
    );
    const config = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')) as Record<string, unknown>;
    expect(config).toMatchObject({ hidden_size: 16, num_key_value_heads: 2, tie_word_embeddings: true });
    // Streamed tensor by tensor, the file is byte for byte what the in-memory writer makes.
    const conv = await convertLlama2c(memSource('small.bin', new Uint8Array(readFileSync(file))), {
      bosTokenId: 1,
      eosTokenId: 2,
    });
    expect(readFileSync(join(out, 'model.safetensors'))).toEqual(
      Buffer.from(encodeSafetensors(conv.tensors, { format: 'pt', source: 'llama2.c' })),
    );

    const bad = join(root, 'cut.bin');
    writeFileSync(bad, readFileSync(file).subarray(0, 1000));
    await expect(convertLlama2cToFolder(bad, { outDir: join(root, 'cut-hf') })).rejects.toThrow(bad);
    await expect(
      convertLlama2cToFolder(join(root, 'missing.bin'), { outDir: join(root, 'x') }),
    ).rejects.toThrow(/missing\.bin/);
  });

  it('refuses a tokenizer whose vocabulary does not match the checkpoint', async () => {
    const file = join(root, 'vocab11.bin');
    writeFileSync(file, llama2cFile(0, SMALL, randomWeights(SMALL)));
    const tok = sharedModel('babyllama-tok105', 'tok105.model');
    await expect(
      convertLlama2cToFolder(file, { outDir: join(root, 'vocab11-hf'), tokenizer: tok }),
    ).rejects.toThrow(/105 tokens but the checkpoint's vocab_size is 11/);
  });
});

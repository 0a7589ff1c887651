/**
 * The CPU reference: a plain float64 forward pass, written for clarity from the Hugging Face
 * transformers modeling code (modeling_llama.py and the files each architecture names) and built
 * from the per-kernel CPU twins. It reads the same declarations as the GPU engine (the
 * architecture's tensors and block recipe, src/model/arch/), so a new architecture is checked
 * against it without touching it. Tests compare the engine's logits and greedy ids with it. Slow
 * by design; use with tiny models.
 */
import { decodeToFloat32, f16BitsToF32, f32ToF16Bits } from '../io/dtype.js';
import type { Checkpoint } from '../io/safetensors-checkpoint.js';
import { attentionRef } from '../kernels/attention.ref.js';
import { embedRef } from '../kernels/embed.ref.js';
import { matmulRef } from '../kernels/matmul.ref.js';
import { rmsnormRef } from '../kernels/rmsnorm.ref.js';
import { qkNormRef } from '../kernels/qk-norm.ref.js';
import { ropeRef, type RopeAngles } from '../kernels/rope.ref.js';
import { softcapRef } from '../kernels/softcap.ref.js';
import { gegluRef, swigluRef } from '../kernels/swiglu.ref.js';
import { projectionRows, type BlockRecipe, type ProjectionTensors } from './architecture.js';
import { architectureOf } from './registry.js';
import { isQuantKv, kvQuantParams, type KvDtype, type KvQuantDtype } from '../kernels/kv-dtype.js';
import { kvRoundTrip } from '../kernels/kv-quant.ref.js';
import { ropeOfKind } from './rope.js';
import { attentionScale, layerRope, type ModelSpec } from './spec.js';
import { embeddingScale, expectedTensors, modelTensors } from './tensors.js';

type Tensor = Float64Array;

export interface ReferenceOptions {
  /**
   * 'f16' rounds K (after RoPE) and V to f16 (through f32, to nearest even) before attention, as
   * an f16 KV cache stores them; a compressed format (int8, int4, int2, gear4, gear2) replaces each
   * token row of a KV head by its quantize -> dequantize round trip (kv-quant.ref.ts); everything
   * else stays float64. Default 'f32': no rounding.
   */
  kvDtype?: KvDtype;
  /**
   * Features switched off, to show each one matters (tests): the reference then computes the
   * model without it. Never set for a real comparison.
   */
  ablate?: readonly Ablation[];
}

/** A modelling feature the reference can leave out (see ReferenceOptions.ablate). */
export type Ablation =
  | 'qk-norm'
  | 'one-plus-w'
  | 'embed-scale'
  | 'geglu'
  | 'sandwich-norms'
  | 'attention-scale'
  | 'attn-softcap'
  | 'final-softcap'
  | 'local-rope'
  | 'nope-layers'
  | 'partial-rotary'
  | 'longrope-switch'
  | 'longrope-attention-factor'
  | 'sliding-window';

const roundF16 = (x: number): number => f16BitsToF32(f32ToF16Bits(x));

/** Every headDim-long row of `x` as a compressed KV cache gives it back. */
function roundTripRows(x: Tensor, headDim: number, dtype: KvQuantDtype): Tensor {
  const out = new Float64Array(x.length);
  for (let at = 0; at < x.length; at += headDim) {
    out.set(kvRoundTrip(x.subarray(at, at + headDim), dtype), at);
  }
  return out;
}

export class ReferenceModel {
  static async load(spec: ModelSpec, ckpt: Checkpoint, opts: ReferenceOptions = {}): Promise<ReferenceModel> {
    const t = new Map<string, Tensor>();
    for (const name of expectedTensors(spec).keys()) {
      const info = ckpt.get(name);
      t.set(name, Float64Array.from(decodeToFloat32(info.dtype, await ckpt.readTensor(info))));
    }
    return new ReferenceModel(spec, t, opts, embeddingScale(spec, modelTensors(spec), ckpt));
  }

  private constructor(
    readonly spec: ModelSpec,
    private readonly t: Map<string, Tensor>,
    private readonly opts: ReferenceOptions = {},
    /** Multiplier of the embeddings (Gemma's √hidden in the table's dtype). */
    private readonly embedScale = 1,
  ) {}

  /** The same weights with other options (no copy). */
  with(opts: ReferenceOptions): ReferenceModel {
    return new ReferenceModel(this.spec, this.t, opts, this.embedScale);
  }

  private off(a: Ablation): boolean {
    return this.opts.ablate?.includes(a) ?? false;
  }

  /** A norm weight as the block applies it: w, or (Gemma) 1 + w. */
  private normW(name: string): Tensor {
    const w = this.w(name);
    if (architectureOf(this.spec).block.normWeight === 'w' || this.off('one-plus-w')) return w;
    return w.map((v) => 1 + v);
  }

  /** The rotation of layer `l`, with any RoPE ablation applied. */
  private rope(l: number): RopeAngles {
    const s = this.spec;
    let kind = layerRope(s, l);
    if (kind === 'none' && this.off('nope-layers')) kind = 'global';
    if (kind === 'local' && this.off('local-rope')) kind = 'global';
    let spec = s;
    if (this.off('partial-rotary')) {
      // The whole head rotates; LongRoPE factor lists grow to the new length (their last value).
      const pad = (f: readonly number[]) =>
        Array.from({ length: s.headDim / 2 }, (_, i) => f[Math.min(i, f.length - 1)] as number);
      const r = s.ropeScaling;
      spec = {
        ...spec,
        rotaryDim: undefined,
        ropeScaling:
          r.type === 'longrope'
            ? { ...r, shortFactor: pad(r.shortFactor), longFactor: pad(r.longFactor) }
            : r,
      };
    }
    const sc = spec.ropeScaling;
    if (sc.type === 'longrope' && (this.off('longrope-switch') || this.off('longrope-attention-factor'))) {
      spec = {
        ...spec,
        ropeScaling: {
          ...sc,
          ...(this.off('longrope-switch') ? { longFactor: sc.shortFactor } : {}),
          ...(this.off('longrope-attention-factor') ? { attentionFactor: 1 } : {}),
        },
      };
    }
    return ropeOfKind(spec, kind);
  }

  private w(name: string): Tensor {
    const x = this.t.get(name);
    if (!x) throw new Error(`reference model: no tensor ${name}`);
    return x;
  }

  /** X·Wᵀ (+ bias) of a projection: [m, rows], its sources' outputs side by side. */
  private project(x: Tensor, m: number, p: ProjectionTensors): Tensor {
    const rows = projectionRows(p);
    const y = new Float64Array(m * rows);
    let at = 0;
    for (const s of p.sources) {
      const bias = p.bias ? this.w(`${s.prefix}.bias`) : undefined;
      const part = matmulRef(x, this.w(`${s.prefix}.weight`), m, s.rows, p.cols, bias);
      for (let i = 0; i < m; i++) y.set(part.subarray(i * s.rows, (i + 1) * s.rows), i * rows + at);
      at += s.rows;
    }
    return y;
  }

  /** Logits [tokens.length, vocab] for every position of `tokens` (a full causal pass). */
  forward(tokens: readonly number[]): Float64Array[] {
    const s = this.spec;
    const recipe = architectureOf(s).block;
    checkBlock(recipe);
    const names = modelTensors(s);
    const m = tokens.length;
    const H = s.hiddenSize;
    const eps = s.rmsNormEps;
    const qDim = s.numHeads * s.headDim;
    const kvDim = s.numKvHeads * s.headDim;
    const positions = tokens.map((_, i) => i);
    const sandwich = recipe.norm === 'rmsnorm-sandwich' && !this.off('sandwich-norms');
    const scale = this.off('attention-scale') ? 1 / Math.sqrt(s.headDim) : attentionScale(s);
    const attnCap = this.off('attn-softcap') ? 0 : (s.attnLogitSoftcap ?? 0);
    const embedScale = this.off('embed-scale') ? 1 : this.embedScale;
    let x = embedRef(this.w(names.embed), H, tokens, embedScale);
    /** Adds a branch's output to the stream, through its own norm in a sandwich block. */
    const addBranch = (out: Tensor, norm: string | undefined) => {
      const y = sandwich && norm !== undefined ? rmsnormRef(out, this.normW(norm), m, H, eps) : out;
      x = x.map((xi, i) => xi + (y[i] as number));
    };
    names.layers.forEach((L, l) => {
      // Attention: RMSNorm, q/k/v, (q/k head norms), RoPE on q and k, causal GQA attention, o,
      // (its norm), residual.
      const xn = rmsnormRef(x, this.normW(L.inputNorm), m, H, eps);
      let qkv = this.project(xn, m, L.qkv);
      if (recipe.qkNorm === 'rmsnorm-head' && !this.off('qk-norm')) {
        const [qn, kn] = [L.qNorm, L.kNorm] as [string, string];
        qkv = qkNormRef(qkv, m, s.numHeads, s.numKvHeads, s.headDim, this.normW(qn), this.normW(kn), eps);
      }
      const width = qDim + 2 * kvDim;
      const rope = this.rope(l);
      const q = ropeRef(columns(qkv, m, width, 0, qDim), positions, s.numHeads, s.headDim, rope);
      let k = ropeRef(columns(qkv, m, width, qDim, kvDim), positions, s.numKvHeads, s.headDim, rope);
      let v = columns(qkv, m, width, qDim + kvDim, kvDim);
      const kvDtype = this.opts.kvDtype ?? 'f32';
      if (kvDtype === 'f16') {
        k = k.map(roundF16);
        v = v.map(roundF16);
      } else if (isQuantKv(kvDtype)) {
        if (kvQuantParams(kvDtype).rank > 0) {
          // Their factors depend on which blocks a step wrote whole (kv-lowrank.ref.ts).
          throw new RangeError(
            `the reference model has no '${kvDtype}' KV cache (low-rank factors depend on the step's chunking)`,
          );
        }
        k = roundTripRows(k, s.headDim, kvDtype);
        v = roundTripRows(v, s.headDim, kvDtype);
      }
      const att = attentionRef(
        q,
        k,
        v,
        positions,
        s.numHeads,
        s.numKvHeads,
        s.headDim,
        scale,
        this.off('sliding-window') ? 0 : (s.layerWindows[l] ?? 0),
        attnCap,
      );
      addBranch(this.project(att, m, L.o), L.attnOutNorm);
      // MLP: RMSNorm, silu(gate) · up (GeGLU: gelu_tanh(gate) · up), down, (its norm), residual.
      const hn = rmsnormRef(x, this.normW(L.postNorm), m, H, eps);
      const I = s.intermediateSize;
      const gu = this.project(hn, m, L.gateUp);
      const geglu = recipe.mlp === 'geglu-tanh' && !this.off('geglu');
      const act = (geglu ? gegluRef : swigluRef)(columns(gu, m, 2 * I, 0, I), columns(gu, m, 2 * I, I, I));
      addBranch(this.project(act, m, L.down), L.mlpOutNorm);
    });
    const fin = rmsnormRef(x, this.normW(names.finalNorm), m, H, eps);
    const head = this.w(names.lmHead === null ? names.embed : `${names.lmHead}.weight`);
    let logits = matmulRef(fin, head, m, s.vocabSize, H);
    if (s.finalLogitSoftcap && !this.off('final-softcap')) logits = softcapRef(logits, s.finalLogitSoftcap);
    return positions.map((p) => logits.subarray(p * s.vocabSize, (p + 1) * s.vocabSize));
  }

  /** Greedy continuation: `steps` argmax ids after `prompt` (full recompute per token). */
  greedy(prompt: readonly number[], steps: number): number[] {
    const ids = [...prompt];
    const out: number[] = [];
    for (let i = 0; i < steps; i++) {
      const all = this.forward(ids);
      const last = all[all.length - 1] as Float64Array;
      let best = 0;
      for (let j = 1; j < last.length; j++) if ((last[j] as number) > (last[best] as number)) best = j;
      out.push(best);
      ids.push(best);
    }
    return out;
  }
}

/** Columns [from, from + n) of a row-major [m, width] matrix. */
function columns(y: Tensor, m: number, width: number, from: number, n: number): Tensor {
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++) out.set(y.subarray(i * width + from, i * width + from + n), i * n);
  return out;
}

/** The recipe this reference implements; a new recipe choice needs its case here first. */
function checkBlock(b: BlockRecipe): void {
  if (
    !['rmsnorm-pre', 'rmsnorm-sandwich'].includes(b.norm) ||
    !['w', 'one-plus-w'].includes(b.normWeight) ||
    !['none', 'rmsnorm-head'].includes(b.qkNorm) ||
    b.positions !== 'rope' ||
    !['swiglu', 'geglu-tanh'].includes(b.mlp) ||
    !['none', 'sqrt-hidden'].includes(b.embedScale)
  ) {
    throw new Error(`reference model: block ${JSON.stringify(b)} is not implemented`);
  }
}

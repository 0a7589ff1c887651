/**
 * The CPU reference: a plain float64 Llama/Mistral/Qwen2 forward pass, written for clarity from the
 * Hugging Face transformers modeling code (modeling_llama.py, modeling_qwen2.py) and built from the
 * per-kernel CPU twins. Tests compare the GPU engine's logits and greedy ids against it. Slow by
 * design; use with tiny models.
 */
import { decodeToFloat32, f16BitsToF32, f32ToF16Bits } from '../io/dtype.js';
import type { Checkpoint } from '../io/safetensors-checkpoint.js';
import { attentionRef } from '../kernels/attention.ref.js';
import { embedRef } from '../kernels/embed.ref.js';
import { matmulRef } from '../kernels/matmul.ref.js';
import { rmsnormRef } from '../kernels/rmsnorm.ref.js';
import { ropeInvFreq, ropeRef } from '../kernels/rope.ref.js';
import { swigluRef } from '../kernels/swiglu.ref.js';
import { EMBED_TOKENS, FINAL_NORM, LM_HEAD, layerTensorNames, type ModelSpec } from './spec.js';
import { expectedTensors } from '../weights/loader.js';

type Tensor = Float64Array;

export interface ReferenceOptions {
  /**
   * 'f16' rounds K (after RoPE) and V to f16 (through f32, to nearest even) before attention, as
   * an f16 KV cache stores them; everything else stays float64. Default 'f32': no rounding.
   */
  kvDtype?: 'f32' | 'f16';
}

const roundF16 = (x: number): number => f16BitsToF32(f32ToF16Bits(x));

export class ReferenceModel {
  private constructor(
    readonly spec: ModelSpec,
    private readonly t: Map<string, Tensor>,
    private readonly opts: ReferenceOptions = {},
  ) {}

  static async load(spec: ModelSpec, ckpt: Checkpoint, opts: ReferenceOptions = {}): Promise<ReferenceModel> {
    const t = new Map<string, Tensor>();
    for (const name of expectedTensors(spec).keys()) {
      const info = ckpt.get(name);
      t.set(name, Float64Array.from(decodeToFloat32(info.dtype, await ckpt.readTensor(info))));
    }
    return new ReferenceModel(spec, t, opts);
  }

  /** The same weights with other options (no copy). */
  with(opts: ReferenceOptions): ReferenceModel {
    return new ReferenceModel(this.spec, this.t, opts);
  }

  private w(name: string): Tensor {
    const x = this.t.get(name);
    if (!x) throw new Error(`reference model: no tensor ${name}`);
    return x;
  }

  private linear(x: Tensor, m: number, prefix: string, outDim: number, inDim: number, bias: boolean): Tensor {
    return matmulRef(
      x,
      this.w(`${prefix}.weight`),
      m,
      outDim,
      inDim,
      bias ? this.w(`${prefix}.bias`) : undefined,
    );
  }

  /** Logits [tokens.length, vocab] for every position of `tokens` (a full causal pass). */
  forward(tokens: readonly number[]): Float64Array[] {
    const s = this.spec;
    const m = tokens.length;
    const H = s.hiddenSize;
    const qDim = s.numHeads * s.headDim;
    const kvDim = s.numKvHeads * s.headDim;
    const positions = tokens.map((_, i) => i);
    const invFreq = ropeInvFreq(s.headDim, s.ropeTheta, s.ropeScaling);
    let x = embedRef(this.w(EMBED_TOKENS), H, tokens);
    for (let l = 0; l < s.numLayers; l++) {
      const n = layerTensorNames(l);
      const xn = rmsnormRef(x, this.w(n.inputNorm), m, H, s.rmsNormEps);
      const q = ropeRef(
        this.linear(xn, m, n.q, qDim, H, s.qkvBias),
        positions,
        s.numHeads,
        s.headDim,
        invFreq,
      );
      let k = ropeRef(
        this.linear(xn, m, n.k, kvDim, H, s.qkvBias),
        positions,
        s.numKvHeads,
        s.headDim,
        invFreq,
      );
      let v = this.linear(xn, m, n.v, kvDim, H, s.qkvBias);
      if (this.opts.kvDtype === 'f16') {
        k = k.map(roundF16);
        v = v.map(roundF16);
      }
      const att = attentionRef(
        q,
        k,
        v,
        positions,
        s.numHeads,
        s.numKvHeads,
        s.headDim,
        1 / Math.sqrt(s.headDim),
      );
      const o = this.linear(att, m, n.o, H, qDim, s.oBias);
      x = x.map((xi, i) => xi + (o[i] as number));
      const hn = rmsnormRef(x, this.w(n.postNorm), m, H, s.rmsNormEps);
      const g = this.linear(hn, m, n.gate, s.intermediateSize, H, s.mlpBias);
      const u = this.linear(hn, m, n.up, s.intermediateSize, H, s.mlpBias);
      const down = this.linear(swigluRef(g, u), m, n.down, H, s.intermediateSize, s.mlpBias);
      x = x.map((xi, i) => xi + (down[i] as number));
    }
    const fin = rmsnormRef(x, this.w(FINAL_NORM), m, H, s.rmsNormEps);
    const head = this.w(s.tieWordEmbeddings ? EMBED_TOKENS : LM_HEAD);
    const logits = matmulRef(fin, head, m, s.vocabSize, H);
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

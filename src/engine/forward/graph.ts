/**
 * The forward graph of one step shape, recorded once from the model's block recipe (its
 * architecture file, src/model/arch/) into dispatch lists the step replays:
 *   embed (×scale) -> per layer [rmsnorm -> qkv (one fused matmul, +bias) -> (q/k head norms)
 *   -> rope(q, k) + KV-cache write -> attention (within the layer's sliding window) -> o
 *   (+residual, or a sandwich norm that adds it)
 *   -> rmsnorm -> gate·up with the SwiGLU/GeGLU epilogue -> down (+residual, or its norm)]
 *   -> (head) final rmsnorm of the rows that need logits -> lm head -> (softcap) -> (argmax)
 * In one-row steps each rmsnorm before qkv, gate·up and the LM head is folded into that matmul's
 * prologue where its chosen kernel has one (src/kernels/rms-fold.ts): one dispatch fewer each.
 * Decode-shaped steps run split-K attention, exact until the layer's unified max (phi) of the
 * async softmax is calibrated.
 */
import type { Dispatch, DispatchBuilder } from '../../gpu/dispatch.js';
import { argmax } from '../../kernels/argmax.js';
import { attention } from '../../kernels/attention.js';
import { attentionPrefill, supportsAttentionPrefill } from '../../kernels/attention-prefill.js';
import { attentionDecode, type AttentionDecodeScratch } from '../../kernels/attention-decode.js';
import { embed } from '../../kernels/embed.js';
import { embedGguf } from '../../kernels/embed-gguf.js';
import { embedQ4 } from '../../kernels/embed-q4.js';
import { isGgufWeight, isQ4Weight, linear, linearFoldsNorm, type LinearArgs } from '../../kernels/linear.js';
import { rmsnorm } from '../../kernels/rmsnorm.js';
import { isQuantKv, kvQuantParams } from '../../kernels/kv-dtype.js';
import { kvQuantize } from '../../kernels/kv-quantize.js';
import { kvLowrank } from '../../kernels/kv-lowrank.js';
import { ropeKvWrite } from '../../kernels/rope-kv-write.js';
import { softcap } from '../../kernels/softcap.js';
import type { BlockRecipe, ProjectionRole } from '../../model/architecture.js';
import { architectureOf } from '../../model/registry.js';
import { attentionScale, layerRope } from '../../model/spec.js';
import type { StepBuffers } from './buffers.js';
import type { ForwardState } from './state.js';

/** Where a projection's input is complete (after dispatch `after`) and which buffer holds it. */
export interface LinearInputTap {
  layer: number;
  proj: ProjectionRole;
  after: number;
  buffer: GPUBuffer;
  cols: number;
}

export interface RecordedGraph {
  /** Embedding and every layer: what each step runs. */
  body: Dispatch[];
  /** Final norm of the logit rows and the LM head (skipped by steps that read nothing back). */
  head: Dispatch[];
  /** Greedy decoding's argmax over the logits (skipped when logits or samples are read back). */
  argmax: Dispatch;
  /** Exact split-K attention of each layer: where calibration copies its split maxima out. */
  scoreCapture: { layer: number; after: number }[];
  /**
   * Every projection's input (quantizers calibrate on these activations); a projection with its
   * RMSNorm folded in has no materialized input, and no tap.
   */
  linearInputs: LinearInputTap[];
  /** Some RMSNorm is folded into its matmul (then linearInputs lacks those projections). */
  foldsNorms: boolean;
}

/** The recipe this graph implements; a new recipe choice needs its case here. */
function checkBlock(b: BlockRecipe, arch: string): void {
  if (
    !['rmsnorm-pre', 'rmsnorm-sandwich'].includes(b.norm) ||
    !['w', 'one-plus-w'].includes(b.normWeight) ||
    !['none', 'rmsnorm-head'].includes(b.qkNorm) ||
    b.positions !== 'rope' ||
    !['swiglu', 'geglu-tanh'].includes(b.mlp) ||
    !['none', 'sqrt-hidden'].includes(b.embedScale)
  ) {
    throw new RangeError(`the forward graph does not implement ${arch}'s block ${JSON.stringify(b)}`);
  }
}

export function recordGraph(
  b: DispatchBuilder,
  model: ForwardState,
  s: StepBuffers,
  shape: {
    m: number;
    r: number;
    /** Split-K scratch of a decode-shaped plan; null: the general attention kernel. */
    decode: AttentionDecodeScratch | null;
    /** Unified max per layer of the async softmax; null entries run the exact split-K softmax. */
    phi: readonly (number | null)[];
  },
): RecordedGraph {
  const { m, r, decode } = shape;
  const { spec, weights, kv } = model;
  const recipe = architectureOf(spec).block;
  checkBlock(recipe, spec.architecture);
  const sandwich = recipe.norm === 'rmsnorm-sandwich';
  const gate = recipe.mlp === 'geglu-tanh' ? ('gelu-tanh' as const) : ('silu' as const);
  const branch = s.branch;
  if (sandwich && !branch) throw new RangeError('a sandwich-norm block needs the branch buffer');
  // (1 + w) norm weights were added at load (weights/loader.ts): every norm below is plain.
  const H = spec.hiddenSize;
  const qDim = spec.numHeads * spec.headDim;
  const I = spec.intermediateSize;
  const eps = spec.rmsNormEps;
  const scratch = { gateUp: s.gateUp, gathered: s.gathered };
  // Every projection of the plan shares the placeholder, the int4 scratch and the tuned choices.
  const project = (a: Omit<LinearArgs, 'placeholder' | 'scratch' | 'choices'>): Dispatch[] =>
    linear(b, { ...a, placeholder: model.placeholder, scratch, choices: model.choices });
  const body: Dispatch[] = [];
  // One-row steps: X is one cache-resident row, and the rmsnorm dispatch costs more than the norm.
  const tryFold = model.foldNorms && m === 1;
  let foldsNorms = false;
  /**
   * rmsnorm of the residual rows `rows` into `into`, then the projection reading it; or, where the
   * projection's kernel can, the projection norming the residual itself.
   */
  const normed = (
    out: Dispatch[],
    norm: { weight: GPUBuffer; rows: GPUBuffer; into: GPUBuffer; m: number },
    a: Omit<LinearArgs, 'placeholder' | 'scratch' | 'choices' | 'x' | 'm'>,
    onNormed?: () => void,
  ): void => {
    const args = { ...a, m: norm.m };
    if (tryFold && norm.m === 1 && linearFoldsNorm(b.ctx, { ...args, choices: model.choices })) {
      foldsNorms = true;
      out.push(...project({ ...args, x: s.x, norm: { weight: norm.weight, eps } }));
      return;
    }
    out.push(
      rmsnorm(b, {
        x: s.x,
        weight: norm.weight,
        rows: norm.rows,
        y: norm.into,
        m: norm.m,
        hidden: H,
        eps,
        ...normOut,
      }),
    );
    onNormed?.();
    out.push(...project({ ...args, x: norm.into }));
  };
  const scoreCapture: RecordedGraph['scoreCapture'] = [];
  const linearInputs: LinearInputTap[] = [];
  const table = weights.embed;
  body.push(
    ...(isGgufWeight(table)
      ? embedGguf(b, {
          table,
          ids: s.ids,
          out: s.x,
          m,
          placeholder: model.placeholder,
          scale: weights.embedScale,
        })
      : isQ4Weight(table)
        ? embedQ4(b, { table, ids: s.ids, out: s.x, m, scale: weights.embedScale })
        : embed(b, { table, ids: s.ids, out: s.x, m, scale: weights.embedScale })),
  );
  const normOut = { out: model.activations };
  const xIn = { xFormat: model.activations };
  weights.layers.forEach((L, l) => {
    const kCache = kv.k[l] as GPUBuffer;
    const vCache = kv.v[l] as GPUBuffer;
    // A sliding layer with a pool of its own (kv/sliding-pool.ts) writes and reads through its
    // own slots and block table; the rows' positions and table offsets are the same.
    const sliding = kv.isSliding(l);
    if (sliding && (!s.slidingSlots || !model.slidingBlockTable))
      throw new RangeError('a sliding KV pool needs its slots and block table');
    const slots = sliding ? (s.slidingSlots as GPUBuffer) : s.slots;
    const blockTable = sliding ? (model.slidingBlockTable as GPUBuffer) : model.blockTable;
    const tap = (proj: ProjectionRole, buffer: GPUBuffer, cols: number) =>
      linearInputs.push({ layer: l, proj, after: body.length - 1, buffer, cols });
    // Attention.
    const layerNorm = (weight: GPUBuffer) => ({ weight, rows: model.identityRows, into: s.xn, m });
    normed(body, layerNorm(L.inputNorm), { lin: L.qkv, y: s.qkv, ...xIn }, () => tap('qkv', s.xn, H));
    // Qwen3's and Gemma 3's per-head q/k RMSNorm runs inside the RoPE + KV-write kernel
    // (rope_kv_write_qknorm) rather than as its own qk_norm dispatch before it.
    let norm: { qWeight: GPUBuffer; kWeight: GPUBuffer; eps: number } | undefined;
    if (recipe.qkNorm === 'rmsnorm-head') {
      if (!L.qNorm || !L.kNorm) throw new RangeError(`layer ${l}: the q/k norm weights are not loaded`);
      norm = { qWeight: L.qNorm, kWeight: L.kNorm, eps };
    }
    const qkNorm = norm ? { qkNorm: norm } : {};
    const rotaryDim = layerRope(spec, l) === 'none' ? 0 : (spec.rotaryDim ?? spec.headDim);
    const kvDims = { m, kvHeads: spec.numKvHeads, headDim: spec.headDim };
    const dtype = kv.dtype;
    if (isQuantKv(dtype)) {
      // A quantized cache: RoPE'd f32 rows to the step's stage (identity slots), then quantized
      // into the cache at the rows' slots.
      if (!s.kvStage) throw new RangeError('a quantized KV cache needs the step buffers kvStage');
      const stage = s.kvStage;
      body.push(
        ropeKvWrite(b, {
          rowInfo: s.rowInfo,
          slots: model.identityRows,
          table: model.layerRopeTables[l] as GPUBuffer,
          rotaryDim,
          qkv: s.qkv,
          q: s.q,
          kCache: stage.k,
          vCache: stage.v,
          heads: spec.numHeads,
          ...kvDims,
          ...qkNorm,
        }),
        kvQuantize(b, {
          slots,
          kStage: stage.k,
          vStage: stage.v,
          kCache,
          vCache,
          kvDtype: dtype,
          ...kvDims,
        }),
      );
      if (kvQuantParams(dtype).rank > 0) {
        // GEAR's low-rank part, for the blocks whose last row this step writes.
        body.push(
          kvLowrank(b, {
            slots,
            kStage: stage.k,
            vStage: stage.v,
            kCache,
            vCache,
            lanes: stage.lanes,
            window: kv.window[l] as GPUBuffer,
            kvDtype: dtype,
            ...kvDims,
          }),
        );
      }
    } else {
      body.push(
        ropeKvWrite(b, {
          rowInfo: s.rowInfo,
          slots,
          table: model.layerRopeTables[l] as GPUBuffer,
          rotaryDim,
          qkv: s.qkv,
          q: s.q,
          kCache,
          vCache,
          heads: spec.numHeads,
          kvDtype: dtype,
          ...kvDims,
          ...qkNorm,
        }),
      );
    }
    const attnArgs = {
      rowInfo: s.rowInfo,
      blockTable,
      q: s.q,
      kCache,
      vCache,
      out: s.attn,
      m,
      heads: spec.numHeads,
      kvHeads: spec.numKvHeads,
      headDim: spec.headDim,
      scale: attentionScale(spec),
      window: spec.layerWindows[l] ?? 0,
      ...(spec.attnLogitSoftcap ? { softcap: spec.attnLogitSoftcap } : {}),
      kvDtype: kv.dtype,
    };
    if (decode) {
      const phi = shape.phi[l] ?? null;
      const calls = attentionDecode(b, {
        ...attnArgs,
        maxContext: decode.shape.maxContext,
        chunk: decode.shape.chunk,
        form: decode.shape.form ?? 'split',
        variant: phi === null ? 'two_pass' : 'async_softmax',
        ...(phi === null ? {} : { phi }),
        scratch: decode,
      });
      // Where calibration copies this layer's split maxima out (after the exact pass 1).
      if (phi === null) scoreCapture.push({ layer: l, after: body.length });
      body.push(...calls);
    } else if (supportsAttentionPrefill(spec.headDim)) body.push(attentionPrefill(b, attnArgs));
    else body.push(attention(b, attnArgs));
    // A branch's output goes straight into the residual stream, or (sandwich) through its own
    // norm, which adds it.
    const addBranch = (norm: GPUBuffer | undefined, what: string) => {
      if (!norm) throw new RangeError(`layer ${l}: the ${what} norm weight is not loaded`);
      body.push(
        rmsnorm(b, {
          x: branch as GPUBuffer,
          weight: norm,
          rows: model.identityRows,
          y: s.x,
          m,
          hidden: H,
          eps,
          add: true,
        }),
      );
    };
    tap('o', s.attn, qDim);
    if (sandwich) {
      body.push(...project({ x: s.attn, lin: L.o, y: branch as GPUBuffer, m }));
      addBranch(L.attnOutNorm, 'attention-output');
    } else body.push(...project({ x: s.attn, lin: L.o, y: s.x, m, accumulate: true }));
    // MLP.
    normed(body, layerNorm(L.postNorm), { lin: L.gateUp, y: s.mlp, swiglu: true, gate, ...xIn }, () =>
      tap('gateUp', s.xn, H),
    );
    tap('down', s.mlp, I);
    if (sandwich) {
      body.push(...project({ x: s.mlp, lin: L.down, y: branch as GPUBuffer, m }));
      addBranch(L.mlpOutNorm, 'MLP-output');
    } else body.push(...project({ x: s.mlp, lin: L.down, y: s.x, m, accumulate: true }));
  });
  // A prefill chunk that needs no logits has r = 0: no head at all (an empty int4 GEMV is an error).
  // A prefill chunk that needs no logits has r = 0: no head at all (an empty int4 GEMV is an error).
  // In a one-row step the logit row is row 0, which a folded norm reads.
  const head: Dispatch[] = [];
  if (r > 0) {
    const final = { weight: weights.finalNorm, rows: s.logitRows, into: s.final, m: r };
    normed(head, final, { lin: { weight: weights.lmHead }, y: s.logits, ...xIn });
    if (spec.finalLogitSoftcap)
      head.push(softcap(b, { x: s.logits, count: r * spec.vocabSize, cap: spec.finalLogitSoftcap }));
  }
  return {
    body,
    head,
    argmax: argmax(b, { logits: s.logits, ids: s.outIds, rows: r, n: spec.vocabSize }),
    scoreCapture,
    linearInputs,
    foldsNorms,
  };
}

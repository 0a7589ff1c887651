/**
 * The architectures of arch-cases.ts as GGUF test models: the same scaled-down real configs, with
 * the changes a GGUF file forces, since llama.cpp's converter stores no key for them and its
 * loader implies the real models' values: Gemma 2's query_pre_attn_scalar is head_dim (as in
 * gemma-2-2b/9b), and Gemma 3 has 6 layers with the real sliding_window_pattern 6 (layers 0-4 slide,
 * layer 5 is global) and a vocabulary the size of the tokenizer (its converter cuts token_embd to
 * it). Gemma 3 is f32 here: a bf16 Gemma file holds bf16(w + 1), the converter's rounding, not the
 * folder's weights. Qwen3 and Phi-3.5 are f16.
 */
import { expect } from 'vitest';
import type { ModelSpec } from '../../src/model/spec.js';
import { ARCH_CASES, type ArchCase } from './arch-cases.js';
import type { TestModelOptions } from './checkpoints.js';

export interface GgufArchCase {
  name: string;
  /** general.architecture of the file. */
  gguf: string;
  opts: TestModelOptions;
  check: (spec: ModelSpec) => void;
}

function base(prefix: string): ArchCase {
  const c = ARCH_CASES.find((x) => x.name.startsWith(prefix));
  if (!c) throw new Error(`no arch case ${prefix}`);
  return c;
}

const qwen3 = base('Qwen3');
const phi4 = base('Phi-4-mini');
const phi35 = base('Phi-3.5');
const gemma2 = base('Gemma 2');
const gemma3 = base('Gemma 3');

export const GGUF_ARCH_CASES: GgufArchCase[] = [
  { name: `${qwen3.name}, f16`, gguf: 'qwen3', opts: { ...qwen3.opts, dtype: 'F16' }, check: qwen3.check },
  { name: phi4.name, gguf: 'phi3', opts: phi4.opts, check: phi4.check },
  { name: `${phi35.name}, f16`, gguf: 'phi3', opts: { ...phi35.opts, dtype: 'F16' }, check: phi35.check },
  {
    name: 'Gemma 2 (soft-caps, window 12 on layer 0, query_pre_attn_scalar = head_dim)',
    gguf: 'gemma2',
    opts: { ...gemma2.opts, config: { ...gemma2.opts.config, query_pre_attn_scalar: 32 } },
    check: (s) => {
      expect([s.attnLogitSoftcap, s.finalLogitSoftcap, s.layerWindows]).toEqual([5, 8, [12, 0]]);
      expect(s.attentionScale).toBeCloseTo(32 ** -0.5, 15);
    },
  },
  {
    name: 'Gemma 3 (6 layers, pattern 6, window 10, local RoPE, linear scaling, f32)',
    gguf: 'gemma3',
    opts: {
      ...gemma3.opts,
      layers: 6,
      vocab: 105,
      dtype: 'F32',
      config: { ...gemma3.opts.config, sliding_window_pattern: 6, torch_dtype: 'float32' },
    },
    check: (s) => {
      expect(s.layerWindows).toEqual([10, 10, 10, 10, 10, 0]);
      expect(s.layerRope).toEqual(['local', 'local', 'local', 'local', 'local', 'global']);
      expect([s.localRopeTheta, s.ropeTheta, s.ropeScaling]).toEqual([
        10000,
        1000000,
        { type: 'linear', factor: 8 },
      ]);
    },
  },
];

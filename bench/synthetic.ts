/**
 * Synthetic checkpoints at real model shapes, for benchmarks: seeded random weights (so runs are
 * repeatable) in Hugging Face layout, written tensor by tensor. The numbers they produce measure
 * speed only; the text is noise. Shapes follow the published config.json of each model.
 */
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { encodeFromFloat32, type FloatDtype } from '../src/io/dtype.js';
import { parseModelConfig } from '../src/model/config.js';
import { expectedTensors } from '../src/model/tensors.js';
import { writeSafetensorsFile } from '../src/node/safetensors-file.js';
import { randomF32 } from '../src/kernels/random.js';

export { SHAPES } from './shapes.js';
import { SHAPES } from './shapes.js';

/** A byte-level tokenizer (256 byte tokens + specials): any text encodes, nothing else matters. */
function byteTokenizer(): { tokenizer: object; config: object } {
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`] = b + 3;
  const special = (id: number, content: string) => ({
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  });
  return {
    tokenizer: {
      version: '1.0',
      truncation: null,
      padding: null,
      added_tokens: [special(0, '<unk>'), special(1, '<s>'), special(2, '</s>')],
      normalizer: null,
      pre_tokenizer: null,
      post_processor: null,
      decoder: { type: 'Sequence', decoders: [{ type: 'ByteFallback' }, { type: 'Fuse' }] },
      model: {
        type: 'BPE',
        dropout: null,
        unk_token: '<unk>',
        fuse_unk: true,
        byte_fallback: true,
        vocab,
        merges: [],
      },
    },
    config: { add_bos_token: true, bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>' },
  };
}

/** Writes (once) the synthetic model `shape` in `dtype` under `root` and returns its folder. */
export async function syntheticModel(
  root: string,
  shape: string,
  dtype: FloatDtype = 'BF16',
  /** Fewer decoder layers than the real model (same layer shapes): quicker to write and run. */
  layers?: number,
): Promise<string> {
  const shaped = SHAPES[shape];
  if (!shaped) throw new Error(`unknown shape ${shape}; known: ${Object.keys(SHAPES).join(', ')}`);
  const base = layers ? { ...shaped, num_hidden_layers: layers } : shaped;
  const dir = join(root, `${shape}-${dtype.toLowerCase()}${layers ? `-l${layers}` : ''}`);
  if (existsSync(join(dir, 'model.safetensors'))) return dir;
  mkdirSync(dir, { recursive: true });
  const config = { ...base, hidden_act: 'silu', bos_token_id: 1, eos_token_id: 2 };
  const spec = parseModelConfig(config);
  const tok = byteTokenizer();
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config, null, 2));
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(tok.tokenizer));
  writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(tok.config));
  const tensors = [...expectedTensors(spec)].map(([name, shape], i) => ({ name, dtype, shape, seed: i + 1 }));
  await writeSafetensorsFile(join(dir, 'model.safetensors'), tensors, (t) => {
    const n = t.shape.reduce((a, b) => a * b, 1);
    const isNorm = t.shape.length === 1 && !t.name.endsWith('.bias');
    const v = randomF32(n, t.seed, isNorm ? 0.1 : 1 / Math.sqrt(t.shape[t.shape.length - 1] as number));
    if (isNorm) for (let j = 0; j < n; j++) v[j] = (v[j] as number) + 1;
    return encodeFromFloat32(dtype, v);
  });
  return dir;
}

/** `kiln convert llama2c`: writes a Hugging Face folder from a llama2.c checkpoint (+ tokenizer). */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { FloatDtype } from '../io/dtype.js';
import { convertLlama2c } from '../io/llama2c.js';
import { encodeSafetensors } from '../io/safetensors.js';
import { convertSentencePiece } from '../io/sentencepiece.js';
import { InvalidModelFileError, KilnError } from '../errors.js';
import { openLocalModelDir } from './fs-model-dir.js';

export interface ConvertLlama2cOptions {
  /** SentencePiece tokenizer.model of the checkpoint. */
  tokenizer?: string;
  outDir: string;
  dtype?: FloatDtype;
}

export async function convertLlama2cToFolder(
  modelPath: string,
  opts: ConvertLlama2cOptions,
): Promise<string[]> {
  let special: { bos: number | null; eos: number | null } = { bos: 1, eos: 2 };
  let tokenizer: ReturnType<typeof convertSentencePiece> | null = null;
  if (opts.tokenizer) {
    let bytes: Buffer;
    try {
      bytes = await readFile(opts.tokenizer);
    } catch (e) {
      const why = (e as Error).message;
      throw new InvalidModelFileError(`cannot read the tokenizer ${opts.tokenizer}: ${why}`, { cause: e });
    }
    tokenizer = convertSentencePiece(new Uint8Array(bytes), opts.tokenizer);
    special = tokenizer.specialIds;
  }
  const src = await openLocalModelDir(dirname(modelPath)).open(basename(modelPath));
  let conv;
  try {
    conv = await convertLlama2c(src, {
      dtype: opts.dtype ?? 'F32',
      bosTokenId: special.bos,
      eosTokenId: special.eos,
    });
  } finally {
    await src.close();
  }
  if (tokenizer) {
    const n =
      tokenizer.tokenizerJson.model.type === 'BPE'
        ? Object.keys(tokenizer.tokenizerJson.model.vocab).length
        : tokenizer.tokenizerJson.model.vocab.length;
    if (n !== conv.header.vocabSize) {
      throw new KilnError(
        `the tokenizer ${opts.tokenizer} has ${n} tokens but the checkpoint's vocab_size is ${conv.header.vocabSize}`,
      );
    }
  }
  await mkdir(opts.outDir, { recursive: true });
  const json = (v: unknown) => JSON.stringify(v, null, 2) + '\n';
  const written: Record<string, string | Uint8Array> = {
    'config.json': json(conv.config),
    'generation_config.json': json(conv.generationConfig),
    'model.safetensors': encodeSafetensors(conv.tensors, { format: 'pt', source: 'llama2.c' }),
  };
  if (tokenizer) {
    written['tokenizer.json'] = json(tokenizer.tokenizerJson);
    written['tokenizer_config.json'] = json(tokenizer.tokenizerConfig);
  }
  for (const [name, data] of Object.entries(written)) await writeFile(join(opts.outDir, name), data);
  return Object.keys(written);
}

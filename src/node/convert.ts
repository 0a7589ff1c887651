/** `kiln convert llama2c`: writes a Hugging Face folder from a llama2.c checkpoint (+ tokenizer). */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { FloatDtype } from '../io/dtype.js';
import { convertLlama2c } from '../io/llama2c.js';
import { convertSentencePiece } from '../io/sentencepiece.js';
import { InvalidModelFileError, KilnError } from '../errors.js';
import { openLocalModelDir } from './fs-model-dir.js';
import { writeSafetensorsFile } from './safetensors-file.js';
import { writeTokenizerFiles } from './tokenizer-files.js';

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
  const written: string[] = [];
  const json = async (name: string, v: unknown) => {
    await writeFile(join(opts.outDir, name), JSON.stringify(v, null, 2) + '\n');
    written.push(name);
  };
  await json('config.json', conv.config);
  await json('generation_config.json', conv.generationConfig);
  // Streamed tensor by tensor: the converted tensors are never copied into one file-sized buffer.
  await writeSafetensorsFile(join(opts.outDir, 'model.safetensors'), conv.tensors, (t) => t.data, {
    format: 'pt',
    source: 'llama2.c',
  });
  written.push('model.safetensors');
  if (tokenizer) written.push(...(await writeTokenizerFiles(opts.outDir, tokenizer)));
  return written;
}

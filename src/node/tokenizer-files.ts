/** Writes the Hugging Face tokenizer files converted from a SentencePiece model into a folder. */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { convertSentencePiece, type SentencePieceSpecialIds } from '../io/sentencepiece.js';

/**
 * Converts SentencePiece model bytes and writes tokenizer.json and tokenizer_config.json (pretty
 * JSON) into `outDir`, creating it if needed. Returns the special token ids for config.json.
 */
export async function writeTokenizerFiles(
  outDir: string,
  modelBytes: Uint8Array,
): Promise<SentencePieceSpecialIds> {
  const { tokenizerJson, tokenizerConfig, specialIds } = convertSentencePiece(modelBytes);
  await mkdir(outDir, { recursive: true });
  await writeFile(join(outDir, 'tokenizer.json'), JSON.stringify(tokenizerJson, null, 2) + '\n');
  await writeFile(join(outDir, 'tokenizer_config.json'), JSON.stringify(tokenizerConfig, null, 2) + '\n');
  return specialIds;
}

/** Writes the Hugging Face tokenizer files converted from a SentencePiece model into a folder. */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ConvertedSentencePiece } from '../io/sentencepiece.js';

/**
 * Writes tokenizer.json and tokenizer_config.json (pretty JSON, as transformers saves them) of a
 * converted SentencePiece model into `outDir`, creating it if needed. Returns the names written.
 */
export async function writeTokenizerFiles(
  outDir: string,
  converted: Pick<ConvertedSentencePiece, 'tokenizerJson' | 'tokenizerConfig'>,
): Promise<string[]> {
  const files: [string, unknown][] = [
    ['tokenizer.json', converted.tokenizerJson],
    ['tokenizer_config.json', converted.tokenizerConfig],
  ];
  await mkdir(outDir, { recursive: true });
  for (const [name, value] of files)
    await writeFile(join(outDir, name), JSON.stringify(value, null, 2) + '\n');
  return files.map(([name]) => name);
}

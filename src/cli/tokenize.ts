/**
 * `kiln tokenize`: the token ids of a text under a model's tokenizer, for Hugging Face folders and
 * GGUF files alike (as llama.cpp's llama-tokenize prints them). Reads the tokenizer only: no GPU,
 * no weights.
 */
import type { Command } from 'commander';
import { loadModelTokenizer } from '../io/gguf-tokenizer.js';
import { openModelArg } from '../node/index.js';

interface TokenizeFlags {
  model: string;
  text: string;
  /** false with --no-special */
  special: boolean;
  json?: boolean;
}

export function addTokenizeCommand(program: Command): void {
  program
    .command('tokenize')
    .description("print the token ids of a text under a model's tokenizer (folder, GGUF file or Hub id)")
    .requiredOption('-m, --model <model>', 'model folder, GGUF file, Hub id org/name[@rev] or catalog alias')
    .requiredOption('-t, --text <text>', 'the text to tokenize')
    .option('--no-special', "do not add the model's special tokens (BOS)")
    .option('--json', 'print {"ids": [...], "tokens": [...]} on one line')
    .action(async (o: TokenizeFlags) => {
      const tok = await loadModelTokenizer(await openModelArg(o.model));
      const ids = tok.encode(o.text, { addSpecialTokens: o.special });
      const tokens = ids.map((id) => tok.idToToken(id) ?? '');
      if (o.json) {
        process.stdout.write(JSON.stringify({ ids, tokens }) + '\n');
        return;
      }
      ids.forEach((id, i) =>
        process.stdout.write(`${String(id).padStart(6)} -> ${JSON.stringify(tokens[i])}\n`),
      );
    });
}

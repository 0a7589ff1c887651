/** `kiln convert`: other checkpoint formats (llama2.c) to a Hugging Face folder. */
import { Option, type Command } from 'commander';
import type { FloatDtype } from '../io/dtype.js';
import { convertLlama2cToFolder } from '../node/convert.js';

/** `kiln convert` and its subcommands. */
export function addConvertCommand(program: Command): void {
  const convert = program
    .command('convert')
    .description('convert other checkpoint formats to a Hugging Face folder');
  convert
    .command('llama2c <model.bin>')
    .description('a llama2.c checkpoint (v0 or v1, fp32) and its SentencePiece tokenizer')
    .option('--tokenizer <tokenizer.model>', 'SentencePiece model of the checkpoint')
    .requiredOption('-o, --out <dir>', 'output folder')
    .addOption(
      new Option('--dtype <dtype>', 'weight format written').choices(['f32', 'f16', 'bf16']).default('f32'),
    )
    .action(async (model: string, o: { tokenizer?: string; out: string; dtype: string }) => {
      const files = await convertLlama2cToFolder(model, {
        outDir: o.out,
        dtype: o.dtype.toUpperCase() as FloatDtype,
        ...(o.tokenizer ? { tokenizer: o.tokenizer } : {}),
      });
      process.stderr.write(`wrote ${files.join(', ')} to ${o.out}\n`);
    });
}

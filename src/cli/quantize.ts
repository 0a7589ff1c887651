/** `kiln quantize`: an int4 copy of a float model folder (src/node/quantize.ts). */
import { readFile } from 'node:fs/promises';
import { Option, type Command } from 'commander';
import { KilnError } from '../errors.js';
import { DEFAULT_QUANT_METHOD, QUANT_METHODS, quantizeModel } from '../node/quantize.js';
import { resolveModelArg } from '../node/index.js';
import { createCountProgress } from '../node/progress.js';
import type { QuantMethod } from '../quant/kiln-format.js';
import type { Q4GroupSize } from '../quant/q4.js';
import { intArg } from './options.js';

interface QuantizeFlags {
  out: string;
  bits: string;
  groupSize: string;
  method: QuantMethod;
  sym?: boolean;
  calibration?: string;
  calibrationTokens?: number;
  lmHead?: boolean;
  json?: boolean;
  quiet?: boolean;
}

async function cmdQuantize(dir: string, o: QuantizeFlags): Promise<void> {
  const bar = createCountProgress('quantize', { enabled: !o.quiet });
  let calibrationText: string | undefined;
  if (o.calibration !== undefined) {
    try {
      calibrationText = await readFile(o.calibration, 'utf8');
    } catch (e) {
      throw new KilnError(`cannot read the calibration text ${o.calibration}: ${(e as Error).message}`, {
        cause: e,
      });
    }
  }
  try {
    const summary = await quantizeModel({
      dir: await resolveModelArg(dir),
      out: o.out,
      format: { groupSize: Number(o.groupSize) as Q4GroupSize, symmetric: o.sym === true, scaleType: 'f16' },
      method: o.method,
      ...(calibrationText !== undefined ? { calibrationText } : {}),
      ...(o.calibrationTokens ? { calibrationTokens: o.calibrationTokens } : {}),
      lmHead: o.lmHead === true,
      onProgress: (done, total, what) => bar.update(done, total, what),
      log: (line) => {
        if (!o.quiet && !o.json) process.stderr.write(`${line}\n`);
      },
    });
    bar.stop();
    if (o.json) process.stdout.write(JSON.stringify(summary) + '\n');
    else if (!o.quiet) {
      process.stderr.write(
        `wrote ${o.out}: ${summary.matrices} int4 matrices (${o.method}, group ${o.groupSize}, ${o.sym ? 'sym' : 'asym'}), ${(summary.bytes_written / 1e6).toFixed(1)} MB in ${summary.seconds.toFixed(1)} s\n`,
      );
    }
  } finally {
    bar.stop();
  }
}

/** `kiln quantize`. */
export function addQuantizeCommand(program: Command): void {
  program
    .command('quantize <dir>')
    .description('write an int4 copy of a float model folder (Kiln int4 format, loads as is)')
    .requiredOption('-o, --out <dir>', 'output folder')
    .addOption(new Option('--bits <n>', 'bits per weight').choices(['4']).default('4'))
    .addOption(
      new Option('--group-size <n>', 'weights per scale along K').choices(['32', '64', '128']).default('32'),
    )
    .addOption(
      new Option('--method <m>', 'rtn (round to nearest), clip (activation-aware clipping search) or gptq')
        .choices([...QUANT_METHODS])
        .default(DEFAULT_QUANT_METHOD),
    )
    .option('--sym', 'symmetric (zero point 8) instead of per-group zero points')
    .option('--calibration <file>', 'calibration text for clip/gptq (default: text the model samples itself)')
    .option('--calibration-tokens <n>', 'calibration tokens (default 256)', intArg('--calibration-tokens', 2))
    .option('--lm-head', 'quantize the LM head too (embeddings always stay in float)')
    .option('--json', 'print a JSON summary')
    .option('-q, --quiet', 'no progress bar')
    .action((dir: string, o: QuantizeFlags) => cmdQuantize(dir, o));
}

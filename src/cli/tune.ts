/** `kiln tune`: tunes a model's kernels to this adapter in the foreground (src/node/tune.ts). */
import type { Command } from 'commander';
import { runTune } from '../node/tune.js';
import { loadEngine } from './load.js';
import { addModelOptions, numArg, type ModelFlags } from './options.js';

async function cmdTune(o: ModelFlags & { budgetS: number; json?: boolean; retune?: boolean }): Promise<void> {
  // The command tunes in the foreground; no background tuning besides it.
  const engine = await loadEngine({ ...o, tune: false });
  try {
    await runTune(engine, {
      budgetS: o.budgetS,
      ...(o.json ? { json: true } : {}),
      ...(o.retune ? { retune: true } : {}),
      ...(o.quiet ? { quiet: true } : {}),
    });
  } finally {
    engine.dispose();
  }
}

/** `kiln tune`. */
export function addTuneCommand(program: Command): void {
  addModelOptions(
    program
      .command('tune')
      .description(
        'tune the kernels of a model to this adapter (cached per adapter; later runs use the choices)',
      ),
  )
    .option(
      '--budget-s <s>',
      'tuning budget in seconds',
      numArg('--budget-s', (n) => n > 0, 'seconds > 0'),
      60,
    )
    .option('--retune', 'ignore cached choices and tune every class again')
    .option('--json', 'print {adapter, budget_s, elapsed_s, classes: [...]}')
    .action((o: ModelFlags & { budgetS: number; json?: boolean; retune?: boolean }) => cmdTune(o));
}

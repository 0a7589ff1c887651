/** `kiln models`: the catalog of known-good models (models/catalog.json). */
import type { Command } from 'commander';
import { CATALOG } from '../model/catalog.js';

/** `kiln models`. */
export function addModelsCommand(program: Command): void {
  program
    .command('models')
    .description('list the catalog of known-good models (models/catalog.json)')
    .option('--json', 'print the catalog as JSON')
    .action((o: { json?: boolean }) => {
      if (o.json) {
        process.stdout.write(JSON.stringify(CATALOG, null, 2) + '\n');
        return;
      }
      for (const e of CATALOG) {
        const size = `${(e.sizeBytes / 1e9).toFixed(2)} GB`;
        process.stdout.write(
          `${(e.aliases[0] ?? e.id).padEnd(16)} ${e.id.padEnd(38)} ${e.architecture.padEnd(11)} ${e.dtype} ${size.padStart(8)}${e.gated ? '  (gated: needs HF_TOKEN)' : ''}\n`,
        );
      }
    });
}

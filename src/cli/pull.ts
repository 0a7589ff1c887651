/** `kiln pull`: a Hub model (or catalog alias) into the cache, printing its folder. */
import type { Command } from 'commander';
import { catalogAliasToHubId } from '../model/catalog.js';
import { pullModel } from '../node/hub.js';
import { createByteProgress } from '../node/progress.js';

/** `kiln pull`. */
export function addPullCommand(program: Command): void {
  program
    .command('pull <model>')
    .description(
      'download a Hub model (org/name[@revision] or catalog alias; HF_ENDPOINT, HF_TOKEN) into the cache',
    )
    .option('-q, --quiet', 'no progress bar')
    .action(async (id: string, o: { quiet?: boolean }) => {
      const bar = createByteProgress('download', { enabled: !o.quiet });
      try {
        const dir = await pullModel(catalogAliasToHubId(id), {
          onProgress: (p) => bar.update(p.bytes, p.total, p.file),
        });
        bar.stop();
        process.stdout.write(dir + '\n');
      } finally {
        bar.stop();
      }
    });
}

/**
 * `kiln serve`: the OpenAI-compatible HTTP server (src/node/serve.ts) over one loaded model, until
 * SIGTERM or SIGINT.
 */
import type { Command } from 'commander';
import { startServer } from '../node/serve.js';
import { loadEngine } from './load.js';
import { addModelOptions, intArg, type ModelFlags } from './options.js';

interface ServeFlags extends ModelFlags {
  host: string;
  port: number;
  apiKey?: string;
  maxConcurrent: number;
  maxQueue: number;
  servedModelName?: string;
  allowedHost: string[];
  cors: string[];
}

async function cmdServe(o: ServeFlags): Promise<void> {
  const engine = await loadEngine(o);
  const apiKey = o.apiKey ?? process.env.KILN_API_KEY;
  const server = await startServer({
    engine,
    modelId: o.servedModelName ?? o.model,
    host: o.host,
    port: o.port,
    ...(apiKey ? { apiKey } : {}),
    maxConcurrent: o.maxConcurrent,
    maxQueue: o.maxQueue,
    ...(o.allowedHost.length > 0 ? { allowedHosts: o.allowedHost } : {}),
    corsOrigins: o.cors,
    log: (line) => process.stderr.write(`${line}\n`),
  });
  // SIGTERM / SIGINT: stop accepting, let in-flight requests finish (cancelled after 10 s), exit.
  await new Promise<void>((resolve) => {
    const stop = (sig: string) => {
      process.stderr.write(`kiln serve: ${sig}, finishing in-flight requests\n`);
      void server.close(10_000).finally(resolve);
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
  engine.dispose();
}

/** `kiln serve`. */
export function addServeCommand(program: Command): void {
  addModelOptions(
    program
      .command('serve')
      .description('an OpenAI-compatible HTTP server (chat/completions, completions, models)'),
  )
    .option('--host <host>', 'address to listen on (loopback by default)', '127.0.0.1')
    .option('--port <port>', 'TCP port', intArg('--port', 0), 8080)
    .option('--api-key <key>', 'require Authorization: Bearer <key> on /v1 routes (or KILN_API_KEY)')
    .option(
      '--max-concurrent <n>',
      'requests generating at once (batched)',
      intArg('--max-concurrent', 1),
      16,
    )
    .option('--max-queue <n>', 'requests waiting beyond those before 429', intArg('--max-queue', 0), 64)
    .option('--served-model-name <id>', 'the model id clients send (default: the --model argument)')
    .option(
      '--allowed-host <name>',
      'a Host name the server answers (repeatable; default: the loopback names when bound to loopback, any otherwise); others get 403',
      (v: string, prev: string[]) => [...prev, v.toLowerCase()],
      [] as string[],
    )
    .option(
      '--cors <origin>',
      'allow browser calls from this origin (repeatable; "*" for any); off by default',
      (v: string, prev: string[]) => [...prev, v],
      [] as string[],
    )
    .action((o: ServeFlags) => cmdServe(o));
}

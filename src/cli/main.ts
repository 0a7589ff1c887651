/**
 * The `kiln` command line: the program (one file per command group beside this one), stdout
 * guarded against a closed pipe, and error handling. Errors print one line on stderr and exit
 * non-zero (with --verbose, the stack too); `run --json` prints exactly one JSON object on stdout.
 */
import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { KilnError } from '../errors.js';
import { KILN_VERSION as VERSION } from '../version.js';
import { addBenchCommand } from './bench.js';
import { addChatCommand } from './chat.js';
import { addConvertCommand } from './convert.js';
import { addEvalCommand } from './eval.js';
import { addModelsCommand } from './models.js';
import { addPullCommand } from './pull.js';
import { addQuantizeCommand } from './quantize.js';
import { addRunCommand } from './run.js';
import { addServeCommand } from './serve.js';
import { addTokenizeCommand } from './tokenize.js';
import { addTuneCommand } from './tune.js';

export function buildProgram(): Command {
  const program = new Command('kiln')
    .description('LLM inference on WebGPU')
    .version(VERSION)
    .option('-v, --verbose', 'print stack traces of errors')
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });

  // In this order in `kiln --help`.
  addRunCommand(program);
  addChatCommand(program);
  addConvertCommand(program);
  addServeCommand(program);
  addQuantizeCommand(program);
  addEvalCommand(program);
  addModelsCommand(program);
  addTokenizeCommand(program);
  addTuneCommand(program);
  addBenchCommand(program);
  addPullCommand(program);
  return program;
}

let stdoutGuarded = false;

/**
 * `kiln run ... | head` closes stdout while tokens are still coming. Node ignores SIGPIPE, so the
 * next write fails with EPIPE as an unhandled 'error' event (a stack trace, exit 1); a command-line
 * tool should stop quietly instead, as it would on SIGPIPE.
 */
function guardStdout(): void {
  if (stdoutGuarded) return;
  stdoutGuarded = true;
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(0);
    process.stderr.write(`kiln: cannot write to stdout: ${e.message}\n`);
    process.exit(1);
  });
}

/** Runs the CLI; returns the exit code. */
export async function main(argv: string[]): Promise<number> {
  guardStdout();
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
    // A command that finished but failed a check (e.g. a benchmark row) set process.exitCode.
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (e) {
    // An InvalidArgumentError thrown by a command's own checks reaches here unprinted (commander
    // prints only what its parsers reject, re-thrown as a plain CommanderError).
    if (e instanceof InvalidArgumentError) {
      process.stderr.write(`kiln: error: ${e.message}\n`);
      return e.exitCode;
    }
    if (e instanceof CommanderError) {
      // Help and version exit 0; usage errors were already printed by commander.
      return e.exitCode;
    }
    const verbose =
      program.opts<{ verbose?: boolean }>().verbose || argv.includes('--verbose') || argv.includes('-v');
    const msg = e instanceof Error ? e.message : String(e);
    process.stderr.write(`kiln: ${e instanceof KilnError ? '' : 'error: '}${msg.split('\n')[0]}\n`);
    if (verbose && e instanceof Error && e.stack) process.stderr.write(e.stack + '\n');
    return 1;
  }
}

/**
 * The `kiln` command line: run, chat, convert, pull. Errors print one line on stderr and exit
 * non-zero (with --verbose, the stack too); `run --json` prints exactly one JSON object on stdout.
 */
import { createInterface } from 'node:readline/promises';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { KilnError } from '../errors.js';
import { CATALOG, catalogAliasToHubId } from '../model/catalog.js';
import type { FloatDtype } from '../io/dtype.js';
import type { ChatMessage } from '../io/tokenizer.js';
import type { Engine, TuningStatus } from '../engine/engine.js';
import type { LoadProgress } from '../weights/loader.js';
import type { Q4GroupSize } from '../quant/q4.js';
import { cmdBenchKernels } from '../../bench/commands.js';
import { convertLlama2cToFolder } from '../node/convert.js';
import { pullModel } from '../node/hub.js';
import type { PullProgress } from '../node/hub-client.js';
import { createEngine, resolveModelArg } from '../node/index.js';
import { createByteProgress, createCountProgress } from '../node/progress.js';
import { DEFAULT_QUANT_METHOD, QUANT_METHODS, quantizeModel } from '../node/quantize.js';
import type { QuantMethod } from '../quant/kiln-format.js';
import { evaluateText } from '../engine/eval.js';
import type { GenerateResult } from '../api/types.js';
import { benchDecode, readPromptsFile, runBatch } from '../node/batch.js';
import { startServer } from '../node/serve.js';
import { runTune } from '../node/tune.js';
import { FileTuneStore } from '../node/tune-store.js';
import { readFile } from 'node:fs/promises';

import { KILN_VERSION as VERSION } from '../version.js';

function intArg(name: string, min: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min)
      throw new InvalidArgumentError(`${name} must be an integer >= ${min}`);
    return n;
  };
}

function numArg(name: string, ok: (n: number) => boolean, want: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || !ok(n)) throw new InvalidArgumentError(`${name} must be ${want}`);
    return n;
  };
}

interface ModelFlags {
  model: string;
  context?: number;
  memoryLimit?: number;
  attention?: 'async' | 'two_pass';
  sampler?: 'gpu' | 'cpu';
  activations?: 'f32' | 'f16';
  kvCache?: 'auto' | 'f16' | 'f32';
  quant?: 'none' | 'q4';
  groupSize?: number;
  quantSym?: boolean;
  quantLmHead?: boolean;
  quiet?: boolean;
  /** false with --no-tune */
  tune: boolean;
  tuneBudget: number;
}

interface SamplingFlags {
  maxTokens?: number;
  temperature: number;
  topK: number;
  topP: number;
  repetitionPenalty: number;
  seed?: number;
}

function addModelOptions(cmd: Command): Command {
  return cmd
    .requiredOption(
      '-m, --model <model>',
      'model folder (Hugging Face layout), Hub id org/name[@rev], or catalog alias',
    )
    .option(
      '--context <tokens>',
      'context length (default: min(max_position_embeddings, 4096))',
      intArg('--context', 1),
    )
    .option(
      '--memory-limit <MiB>',
      'refuse models whose weights + KV cache + activations exceed this',
      intArg('--memory-limit', 1),
    )
    .addOption(
      new Option(
        '--attention <softmax>',
        'decode attention softmax: async (unified max, calibrated, exact fallback) or two_pass (always exact)',
      ).choices(['async', 'two_pass']),
    )
    .addOption(
      new Option(
        '--sampler <where>',
        'where non-greedy tokens are drawn: gpu (one id read back per token) or cpu (from the logits)',
      ).choices(['gpu', 'cpu']),
    )
    .addOption(
      new Option(
        '--activations <type>',
        'storage of the normed activations the matmuls read: f32, or f16 (needs shader-f16)',
      ).choices(['f32', 'f16']),
    )
    .addOption(
      new Option(
        '--kv-cache <type>',
        'KV cache element type: auto (f16 where the adapter has shader-f16, else f32), f16 or f32',
      ).choices(['auto', 'f16', 'f32']),
    )
    .addOption(
      new Option(
        '--quant <type>',
        'quantize a float model while loading: q4 (int4 round-to-nearest; int4 folders load as int4 anyway)',
      ).choices(['none', 'q4']),
    )
    .addOption(
      new Option('--group-size <n>', 'int4 group size for --quant q4 (default 32)')
        .choices(['32', '64', '128'])
        .argParser(Number),
    )
    .option('--quant-sym', 'symmetric int4 for --quant q4 (default: asymmetric zero points)')
    .option('--quant-lm-head', 'quantize the LM head too with --quant q4')
    .option('--no-tune', 'do not tune kernels to this adapter (cached choices are not used either)')
    .option(
      '--tune-budget <s>',
      'seconds of background kernel tuning at first use (choices cached per adapter)',
      numArg('--tune-budget', (n) => n >= 0, 'a number of seconds >= 0'),
      5,
    )
    .option('-q, --quiet', 'no progress bar');
}

function addSamplingOptions(cmd: Command, defaultMax?: number): Command {
  return cmd
    .option('-n, --max-tokens <n>', 'most tokens to generate', intArg('--max-tokens', 0), defaultMax)
    .option(
      '-t, --temperature <t>',
      'sampling temperature, 0 = greedy',
      numArg('--temperature', (n) => n >= 0, '>= 0'),
      0,
    )
    .option('--top-k <k>', 'keep the k most likely tokens (0 = off)', intArg('--top-k', 0), 0)
    .option(
      '--top-p <p>',
      'nucleus sampling mass (1 = off)',
      numArg('--top-p', (n) => n > 0 && n <= 1, 'in (0, 1]'),
      1,
    )
    .option(
      '--repetition-penalty <r>',
      'penalize tokens already in the context (1 = off)',
      numArg('--repetition-penalty', (n) => n > 0, '> 0'),
      1,
    )
    .option('--seed <s>', 'sampler seed', intArg('--seed', 0));
}

function samplingOf(o: SamplingFlags) {
  return {
    ...(o.maxTokens !== undefined ? { maxTokens: o.maxTokens } : {}),
    temperature: o.temperature,
    topK: o.topK,
    topP: o.topP,
    repetitionPenalty: o.repetitionPenalty,
    ...(o.seed !== undefined ? { seed: o.seed } : {}),
  };
}

async function loadEngine(o: ModelFlags): Promise<Engine> {
  const pullBar = createByteProgress('download', { enabled: !o.quiet });
  const loadBar = createByteProgress('loading', { enabled: !o.quiet });
  try {
    return await createEngine({
      model: o.model,
      ...(o.context ? { contextLength: o.context } : {}),
      ...(o.memoryLimit ? { memoryLimitBytes: o.memoryLimit * 2 ** 20 } : {}),
      ...(o.attention ? { attentionSoftmax: o.attention } : {}),
      ...(o.sampler ? { sampling: o.sampler } : {}),
      ...(o.activations ? { activations: o.activations } : {}),
      ...(o.kvCache ? { kvCache: o.kvCache } : {}),
      ...(o.quant ? { quant: o.quant } : {}),
      quantOptions: {
        ...(o.groupSize ? { groupSize: o.groupSize as Q4GroupSize } : {}),
        ...(o.quantSym ? { symmetric: true } : {}),
        ...(o.quantLmHead ? { lmHead: true } : {}),
      },
      tune: o.tune ? { budgetMs: o.tuneBudget * 1000, store: new FileTuneStore(), warn: tuneWarn } : false,
      pull: { onProgress: (p: PullProgress) => pullBar.update(p.bytes, p.total, p.file) },
      onProgress: (p: LoadProgress) => loadBar.update(p.loadedBytes, p.totalBytes, p.tensor),
    });
  } finally {
    pullBar.stop();
    loadBar.stop();
  }
}

/**
 * A line for a run that ends before its kernels are all tuned (the background budget is a few
 * seconds per run, and a cold driver cache spends it compiling): how far tuning got, and the
 * command that finishes it. Null when everything is tuned or tuning is off.
 */
function tuningHint(t: TuningStatus, model: string): string | null {
  if (t.state === 'off' || t.leftClasses === 0) return null;
  const total = t.cachedClasses + t.tunedClasses + t.leftClasses;
  return `kernel tuning: ${t.cachedClasses + t.tunedClasses} of ${total} shape classes tuned for this adapter; \`kiln tune --model ${model}\` tunes the rest`;
}

function tuneWarn(m: string): void {
  process.stderr.write(`kiln: ${m}\n`);
}

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

async function cmdRun(o: ModelFlags & SamplingFlags & { prompt: string; json?: boolean }): Promise<void> {
  const engine = await loadEngine(o);
  try {
    const gen = engine.generate(o.prompt, samplingOf(o));
    if (!o.json) {
      for await (const t of gen) process.stdout.write(t.text);
      process.stdout.write('\n');
      const r = await gen.result();
      if (!o.quiet) {
        process.stderr.write(
          `[${r.promptTokenIds.length} prompt tokens, ${r.tokenIds.length} generated, finish ${r.finishReason}; ` +
            `prefill ${r.timings.prefillTokensPerS.toFixed(1)} tok/s, decode ${r.timings.decodeTokensPerS.toFixed(1)} tok/s]\n`,
        );
        const hint = tuningHint(engine.tuningStatus, o.model);
        if (hint) process.stderr.write(`[${hint}]\n`);
      }
      return;
    }
    const r = await gen.result();
    process.stdout.write(JSON.stringify(runJson(engine, r)) + '\n');
  } finally {
    engine.dispose();
  }
}

interface ServeFlags extends ModelFlags {
  host: string;
  port: number;
  apiKey?: string;
  maxConcurrent: number;
  maxQueue: number;
  servedModelName?: string;
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

async function cmdEval(o: ModelFlags & { text: string; reference?: string; json?: boolean }): Promise<void> {
  let text: string;
  try {
    text = await readFile(o.text, 'utf8');
  } catch (e) {
    throw new KilnError(`cannot read the text ${o.text}: ${(e as Error).message}`, { cause: e });
  }
  const engine = await loadEngine(o);
  let reference: Engine | null = null;
  try {
    if (o.reference) reference = await loadEngine({ ...o, model: o.reference, quant: 'none' });
    const ids = engine.encodePrompt(text);
    const bar = createCountProgress('eval', { enabled: !o.quiet });
    const r = await evaluateText(engine, ids, reference ?? undefined, (done, total) =>
      bar.update(done, total),
    );
    bar.stop();
    if (o.json) {
      process.stdout.write(JSON.stringify(r) + '\n');
      return;
    }
    const lines = [`tokens ${r.tokens}`, `perplexity ${r.perplexity.toFixed(4)}`];
    if (r.kl_mean !== null) {
      lines.push(
        `reference perplexity ${(r.reference_perplexity as number).toFixed(4)}`,
        `mean KL(reference ‖ model) ${r.kl_mean.toFixed(5)}`,
        `top-1 agreement ${((r.top1_agreement as number) * 100).toFixed(2)}%`,
      );
    }
    process.stdout.write(lines.join('\n') + '\n');
  } finally {
    reference?.dispose();
    engine.dispose();
  }
}

async function cmdRunBatch(
  o: ModelFlags & SamplingFlags & { promptsFile: string; json?: boolean },
): Promise<void> {
  const prompts = await readPromptsFile(o.promptsFile);
  const engine = await loadEngine(o);
  try {
    const { results, summary } = await runBatch(engine, prompts, samplingOf(o));
    results.forEach((r, i) => {
      if (o.json) process.stdout.write(JSON.stringify(runJson(engine, r)) + '\n');
      else process.stdout.write(`--- ${i + 1}/${results.length} (${r.finishReason})\n${r.text}\n`);
    });
    process.stdout.write(
      (o.json ? JSON.stringify({ summary }) : `summary ${JSON.stringify(summary)}`) + '\n',
    );
  } finally {
    engine.dispose();
  }
}

async function cmdBenchDecode(
  o: ModelFlags & { batch: string; promptTokens: number; tokens: number; json?: boolean },
): Promise<void> {
  const batches = o.batch.split(',').map((b) => Number(b.trim()));
  if (batches.some((b) => !Number.isInteger(b) || b < 1)) {
    throw new InvalidArgumentError(`--batch ${o.batch}: expected positive integers separated by commas`);
  }
  const engine = await loadEngine(o);
  try {
    const rows = await benchDecode(engine, batches, o.promptTokens, o.tokens);
    const base = rows[0]?.decode_tokens_per_s_aggregate ?? 0;
    if (o.json) {
      process.stdout.write(
        JSON.stringify({
          model: engine.modelName,
          adapter: engine.adapter,
          weights: engine.weightFormat,
          rows,
        }) + '\n',
      );
      return;
    }
    process.stdout.write('batch  aggregate tok/s  per request  vs first\n');
    for (const r of rows) {
      const ratio = base > 0 ? (r.decode_tokens_per_s_aggregate / base).toFixed(2) + 'x' : '-';
      process.stdout.write(
        `${String(r.batch).padStart(5)}  ${r.decode_tokens_per_s_aggregate.toFixed(2).padStart(15)}  ${r.decode_tokens_per_s_per_request.toFixed(2).padStart(11)}  ${ratio.padStart(9)}\n`,
      );
    }
  } finally {
    engine.dispose();
  }
}

function runJson(engine: Engine, r: GenerateResult) {
  return {
    text: r.text,
    token_ids: r.tokenIds,
    prompt_token_ids: r.promptTokenIds,
    finish_reason: r.finishReason,
    timings: {
      load_ms: round(engine.loadMs),
      prefill_tokens_per_s: round(r.timings.prefillTokensPerS),
      decode_tokens_per_s: round(r.timings.decodeTokensPerS),
    },
    adapter: engine.adapter,
    weights: engine.weightFormat,
  };
}

function round(n: number): number {
  return Math.round(n * 100) / 100;
}

async function cmdChat(o: ModelFlags & SamplingFlags & { system?: string }): Promise<void> {
  const engine = await loadEngine(o);
  if (!engine.tokenizer.hasChatTemplate) {
    engine.dispose();
    throw new KilnError(
      `${o.model} has no chat template (tokenizer_config.json chat_template); use \`kiln run\` for plain prompts`,
    );
  }
  const rl = createInterface({
    input: process.stdin,
    output: process.stderr,
    terminal: process.stdin.isTTY === true,
  });
  rl.setPrompt('> ');
  // Lines are read through the async iterator, which queues them: `rl.question()` only sees lines that
  // arrive while it waits, so piped input (all lines in one chunk) would lose every line typed ahead.
  const lines = rl[Symbol.asyncIterator]();
  const history: ChatMessage[] = o.system ? [{ role: 'system', content: o.system }] : [];
  process.stderr.write('kiln chat: empty line or Ctrl-D to quit, /reset to start over\n');
  try {
    for (;;) {
      rl.prompt();
      const next = await lines.next();
      if (next.done) break; // stdin closed
      const line = next.value;
      if (line.trim() === '') break;
      if (line.trim() === '/reset') {
        history.splice(o.system ? 1 : 0);
        continue;
      }
      history.push({ role: 'user', content: line });
      const stream = await engine.chat.completions.create({
        messages: history,
        stream: true,
        ...(o.maxTokens !== undefined ? { max_tokens: o.maxTokens } : {}),
        temperature: o.temperature,
        top_p: o.topP,
        top_k: o.topK,
        repetition_penalty: o.repetitionPenalty,
        ...(o.seed !== undefined ? { seed: o.seed } : {}),
      });
      let reply = '';
      for await (const chunk of stream) {
        const text = chunk.choices[0]?.delta.content ?? '';
        reply += text;
        process.stdout.write(text);
      }
      process.stdout.write('\n');
      history.push({ role: 'assistant', content: reply });
    }
  } finally {
    rl.close();
    engine.dispose();
  }
}

export function buildProgram(): Command {
  const program = new Command('kiln')
    .description('LLM inference on WebGPU')
    .version(VERSION)
    .option('-v, --verbose', 'print stack traces of errors')
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });

  addSamplingOptions(
    addModelOptions(program.command('run').description('generate text from a prompt, streamed to stdout')),
    256,
  )
    .option('-p, --prompt <text>', 'the prompt ("" = start from BOS)')
    .option(
      '--prompts-file <file>',
      'JSONL of {"prompt", "max_tokens"?, "temperature"?, "seed"?}: all run as one batch, results in input order',
    )
    .option('--json', 'print one JSON object with text, ids, finish reason, timings and adapter')
    .action((o: ModelFlags & SamplingFlags & { prompt?: string; promptsFile?: string; json?: boolean }) => {
      if ((o.prompt === undefined) === (o.promptsFile === undefined)) {
        throw new InvalidArgumentError('give exactly one of --prompt and --prompts-file');
      }
      return o.promptsFile !== undefined
        ? cmdRunBatch({ ...o, promptsFile: o.promptsFile })
        : cmdRun({ ...o, prompt: o.prompt as string });
    });

  addSamplingOptions(
    addModelOptions(
      program.command('chat').description('chat with the model in the terminal (its chat template)'),
    ),
    512,
  )
    .option('--system <text>', 'system prompt')
    .action((o) => cmdChat(o));

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
    .action((o: ServeFlags) => cmdServe(o));

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

  addModelOptions(
    program
      .command('eval')
      .description('teacher-forced perplexity of a text, and KL / top-1 agreement against a reference model'),
  )
    .requiredOption('--text <file>', 'text to evaluate (UTF-8)')
    .option('--reference <dir>', 'reference model (e.g. the float model a quantized one came from)')
    .option('--json', 'print {tokens, perplexity, reference_perplexity, kl_mean, top1_agreement}')
    .action((o: ModelFlags & { text: string; reference?: string; json?: boolean }) => cmdEval(o));

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
          `${(e.aliases[0] ?? e.id).padEnd(16)} ${e.id.padEnd(38)} ${e.architecture.padEnd(7)} ${e.dtype} ${size.padStart(8)}${e.gated ? '  (gated: needs HF_TOKEN)' : ''}\n`,
        );
      }
    });

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

  const bench = program.command('bench').description('benchmarks');
  bench
    .command('kernels')
    .description(
      'time every kernel at Llama-3.2-1B / Qwen2.5-0.5B layer shapes against the measured bandwidth, each checked against its CPU reference',
    )
    .option('--json <file>', 'write the JSON report to FILE (default: stdout)')
    .option('--quick', 'fewer shapes and repetitions')
    .action((o: { json?: string; quick?: boolean }) => cmdBenchKernels(o));

  addModelOptions(
    bench
      .command('decode')
      .description('aggregate decode tokens/s of a model at several batch sizes (continuous batching)'),
  )
    .option('--batch <sizes>', 'comma-separated batch sizes', '1,4,16')
    .option('--prompt-tokens <n>', 'prompt tokens per request', intArg('--prompt-tokens', 1), 16)
    .option('--tokens <n>', 'tokens generated per request', intArg('--tokens', 2), 32)
    .option('--json', 'print one JSON object')
    .action((o: ModelFlags & { batch: string; promptTokens: number; tokens: number; json?: boolean }) =>
      cmdBenchDecode(o),
    );

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

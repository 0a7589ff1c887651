/** `kiln eval`: teacher-forced perplexity of a text, and KL / top-1 agreement against a reference. */
import { readFile } from 'node:fs/promises';
import { Option, type Command } from 'commander';
import type { Engine } from '../engine/engine.js';
import { evaluateText } from '../engine/eval.js';
import { InvalidRequestError, KilnError } from '../errors.js';
import { createCountProgress } from '../node/progress.js';
import { KV_CACHE_OPTIONS, type KvCacheOption } from '../engine/options.js';
import { isQuantKv } from '../kernels/kv-dtype.js';
import { loadEngine } from './load.js';
import { addModelOptions, type ModelFlags } from './options.js';

interface EvalFlags extends ModelFlags {
  text?: string;
  generated?: string;
  reference?: string;
  referenceKvCache?: KvCacheOption;
  rowsPerStep?: string;
  json?: boolean;
}

async function cmdEval(o: EvalFlags): Promise<void> {
  if ((o.text === undefined) === (o.generated === undefined)) {
    throw new InvalidRequestError('kiln eval needs exactly one of --text FILE and --generated N');
  }
  let text: string | null = null;
  if (o.text !== undefined) {
    try {
      text = await readFile(o.text, 'utf8');
    } catch (e) {
      throw new KilnError(`cannot read the text ${o.text}: ${(e as Error).message}`, { cause: e });
    }
  }
  const generated = o.generated === undefined ? 0 : Number(o.generated);
  if (o.generated !== undefined && !(Number.isSafeInteger(generated) && generated >= 2)) {
    throw new InvalidRequestError(`--generated must be an integer of at least 2, got ${o.generated}`);
  }
  const rowsPerStep = o.rowsPerStep === undefined ? undefined : Number(o.rowsPerStep);
  if (rowsPerStep !== undefined && !(Number.isSafeInteger(rowsPerStep) && rowsPerStep >= 1)) {
    throw new InvalidRequestError(`--rows-per-step must be a positive integer, got ${o.rowsPerStep}`);
  }
  const engine = await loadEngine(o, false);
  let reference: Engine | null = null;
  try {
    if (o.reference) reference = await loadEngine({ ...o, model: o.reference, quant: 'none' }, false);
    else if (o.referenceKvCache || isCompressed(o.kvCache)) {
      // The same model with another KV cache (default f16): the quality cost of compressing it.
      reference = await loadEngine({ ...o, kvCache: o.referenceKvCache ?? 'f16' }, false);
    }
    // The text, or the greedy continuation of BOS by the reference (else the model itself): a
    // model's own text, which needs no tokenizer (llama2.c checkpoints without a SentencePiece
    // model), up to the context.
    const ids = text !== null ? engine.encodePrompt(text) : await ownText(reference ?? engine, generated);
    const bar = createCountProgress('eval', { enabled: !o.quiet });
    const r = await evaluateText(
      engine,
      ids,
      reference ?? undefined,
      (done, total) => bar.update(done, total),
      rowsPerStep,
    );
    bar.stop();
    if (o.json) {
      process.stdout.write(JSON.stringify(r) + '\n');
      return;
    }
    const lines = [
      `tokens ${r.tokens}`,
      `kv cache ${engine.kvCacheDtype}${reference && !o.reference ? ` (reference: ${reference.kvCacheDtype})` : ''}`,
      `perplexity ${r.perplexity.toFixed(4)}`,
    ];
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

async function ownText(e: Engine, tokens: number): Promise<number[]> {
  const bos = e.spec.bosTokenId ?? 1;
  const n = Math.min(tokens, e.contextLength) - 1;
  const r = await e.generate([bos], { maxTokens: n, temperature: 0, ignoreEos: true }).result();
  return [bos, ...r.tokenIds];
}

function isCompressed(kv: KvCacheOption | undefined): boolean {
  return kv !== undefined && kv !== 'auto' && isQuantKv(kv);
}

/** `kiln eval`. */
export function addEvalCommand(program: Command): void {
  addModelOptions(
    program
      .command('eval')
      .description('teacher-forced perplexity of a text, and KL / top-1 agreement against a reference model'),
  )
    .option('--text <file>', 'text to evaluate (UTF-8)')
    .option(
      '--generated <tokens>',
      'evaluate on the greedy continuation of BOS (this many tokens, at most the context) that the reference (else the model) generates',
    )
    .option('--reference <dir>', 'reference model (e.g. the float model a quantized one came from)')
    .addOption(
      new Option(
        '--reference-kv-cache <type>',
        'compare against the same model with this KV cache (default f16 when --kv-cache is compressed and no --reference is given)',
      ).choices([...KV_CACHE_OPTIONS]),
    )
    .option(
      '--rows-per-step <n>',
      'ids read per step (default: the prefill chunk; 1 writes the KV cache one row a step, as decoding does)',
    )
    .option('--json', 'print {tokens, perplexity, reference_perplexity, kl_mean, top1_agreement}')
    .action((o: EvalFlags) => cmdEval(o));
}

/**
 * The n choices of a request run as one stream: each choice is its own generate() call, their
 * tokens merged in the order they come, the first choice of a prompt running alone until its first
 * token so the others reuse its prompt's KV blocks from the prefix cache; and, for a non-streamed
 * answer, the choices' texts, logprobs and results gathered.
 */
import type { KilnEngine } from '../engine-api.js';
import type { GenerateOptions, GenerateResult, TokenLogprobs } from '../types.js';
import type { CompletionObserver } from './types.js';

/** One choice being generated: its stream of tokens and its result. */
export interface Choice {
  index: number;
  ids: readonly number[];
  opts: GenerateOptions;
}

/** A token as a choice yields it (text may be "" while a character is partial). */
interface ChoiceToken {
  text: string;
  logprob?: TokenLogprobs;
}

export type ChoiceItem = { index: number; token: ChoiceToken } | { index: number; result: GenerateResult };

/**
 * Runs the choices and merges their token streams: each item is one choice's token or its end.
 * Choices of one prompt share its KV blocks: the first of a prompt runs alone until its first token
 * (its prefill is then in the prefix cache), then the others start and reuse those blocks.
 */
export async function* runChoices(
  engine: KilnEngine,
  choices: readonly Choice[],
  observe: CompletionObserver,
): AsyncGenerator<ChoiceItem> {
  const queue: ChoiceItem[] = [];
  let wake: (() => void) | null = null;
  let failure: unknown = null;
  let running = 0;
  const signal = () => {
    const w = wake;
    wake = null;
    w?.();
  };
  // Ends every choice when the consumer stops reading or one choice fails.
  const stopAll = new AbortController();
  const outer = choices[0]?.opts.signal;
  const onOuter = () => stopAll.abort();
  outer?.addEventListener('abort', onOuter, { once: true });
  if (outer?.aborted) stopAll.abort();
  const firstOfPrompt = new Map<string, Promise<void>>();
  for (const c of choices) {
    const key = c.ids.join(',');
    const after = firstOfPrompt.get(key) ?? null;
    let firstToken: () => void = () => undefined;
    if (!after) firstOfPrompt.set(key, new Promise<void>((r) => (firstToken = r)));
    running++;
    void (async () => {
      try {
        if (after) await after;
        const gen = engine.generate(c.ids, { ...c.opts, signal: stopAll.signal });
        for await (const t of gen) {
          firstToken();
          if (t.id !== null) observe.onToken?.();
          queue.push({
            index: c.index,
            token: { text: t.text, ...(t.logprob ? { logprob: t.logprob } : {}) },
          });
          signal();
        }
        queue.push({ index: c.index, result: await gen.result() });
      } catch (e) {
        failure ??= e;
      } finally {
        firstToken();
        running--;
        signal();
      }
    })();
  }
  try {
    for (;;) {
      const item = queue.shift();
      if (item) {
        yield item;
        continue;
      }
      if (failure !== null) throw failure;
      if (running === 0) return;
      await new Promise<void>((r) => (wake = r));
    }
  } finally {
    outer?.removeEventListener('abort', onOuter);
    if (running > 0) stopAll.abort();
  }
}

/** Every choice's text, logprobs (when asked for) and result, once all have ended. */
export async function collectChoices(
  engine: KilnEngine,
  choices: readonly Choice[],
  observe: CompletionObserver,
): Promise<{ texts: string[]; logprobs: TokenLogprobs[][]; results: GenerateResult[] }> {
  const texts = choices.map(() => '');
  const logprobs: TokenLogprobs[][] = choices.map(() => []);
  const results: GenerateResult[] = [];
  for await (const item of runChoices(engine, choices, observe)) {
    if ('token' in item) {
      texts[item.index] += item.token.text;
      if (item.token.logprob) logprobs[item.index]?.push(item.token.logprob);
    } else results[item.index] = item.result;
  }
  return { texts, logprobs, results };
}

/**
 * The pieces of OpenAI's response objects that chat and completions share: request ids, the usage
 * block, and logprobs in each endpoint's shape (chat's per-token entries with UTF-8 bytes,
 * completions' parallel lists with text offsets).
 */
import type { TokenLogprobs } from '../types.js';
import type { CompletionLogprobs, CompletionUsage, TokenLogprob } from './types.js';

/** OpenAI's usage block. */
export function usage(prompt: number, completion: number): CompletionUsage {
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion };
}

let counter = 0;
export function requestId(prefix: string): string {
  return `${prefix}-${Date.now().toString(36)}${(counter++).toString(36)}${Math.random().toString(36).slice(2, 6)}`;
}

function utf8Bytes(s: string): number[] {
  return [...new TextEncoder().encode(s)];
}

/** Chat's logprobs entry of one token. */
export function chatLogprob(l: TokenLogprobs): TokenLogprob {
  return {
    token: l.token,
    logprob: l.logprob,
    bytes: utf8Bytes(l.token),
    top_logprobs: l.top.map((t) => ({ token: t.token, logprob: t.logprob, bytes: utf8Bytes(t.token) })),
  };
}

/** Completions' logprobs block of tokens starting at text offset `offset`. */
export function completionLogprobs(
  list: readonly TokenLogprobs[],
  offset: number,
  top: number,
): CompletionLogprobs {
  const text_offset: number[] = [];
  let at = offset;
  for (const l of list) {
    text_offset.push(at);
    at += l.token.length;
  }
  return {
    tokens: list.map((l) => l.token),
    token_logprobs: list.map((l) => l.logprob),
    top_logprobs:
      top > 0 ? list.map((l) => Object.fromEntries(l.top.map((t) => [t.token, t.logprob]))) : null,
    text_offset,
  };
}

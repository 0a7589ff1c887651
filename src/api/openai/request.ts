/**
 * The OpenAI request mapped onto the engine's terms: chat messages as chat templates read them,
 * response_format as a grammar, the sampling, logit and stop fields as generate() options, the
 * token budget left by the prompt, and the seed of each of n choices. A value the engine refuses
 * (a grammar it cannot compile, a prompt over the context) becomes a 400 naming its field.
 */
import { InvalidRequestError } from '../../errors.js';
import type { ChatMessage } from '../../io/tokenizer.js';
import type { KilnEngine } from '../engine-api.js';
import type { GenerateOptions, GrammarSpec } from '../types.js';
import type { ChatCompletionRequest, CompletionFields, CompletionRequest, ResponseFormat } from './types.js';
import { OpenAiRequestError } from './validate.js';

function parseArguments(text: string): unknown {
  // Validated as a JSON object by validate.ts.
  return JSON.parse(text) as unknown;
}

/**
 * The messages as chat templates read them: developer is system, text parts joined, a tool
 * message named after the call it answers, tool-call arguments as objects.
 */
export function chatMessages(req: ChatCompletionRequest): ChatMessage[] {
  const callNames = new Map<string, string>();
  return req.messages.map((m) => {
    const content =
      m.content === null
        ? ''
        : typeof m.content === 'string'
          ? m.content
          : m.content.map((p) => p.text).join('');
    const out: ChatMessage = { role: m.role === 'developer' ? 'system' : m.role, content };
    if (m.tool_calls) {
      out.tool_calls = m.tool_calls.map((c) => {
        callNames.set(c.id, c.function.name);
        return {
          id: c.id,
          type: 'function',
          function: { name: c.function.name, arguments: parseArguments(c.function.arguments) },
        };
      });
    }
    if (m.tool_call_id !== undefined) {
      out.tool_call_id = m.tool_call_id;
      const name = callNames.get(m.tool_call_id);
      if (name !== undefined) out.name = name;
    } else if (m.name !== undefined) out.name = m.name;
    return out;
  });
}

/** The grammar behind response_format (null: free text). */
export function formatGrammar(rf: ResponseFormat | null | undefined): GrammarSpec | null {
  if (!rf || rf.type === 'text') return null;
  if (rf.type === 'json_object') return { type: 'json' };
  const schema = rf.json_schema.schema;
  return schema === undefined ? { type: 'json' } : { type: 'json_schema', schema };
}

/** The request's sampling and logit fields as generate() options (everything but the prompt). */
export function generateOptions(req: CompletionFields, maxTokens: number): GenerateOptions {
  const stop = req.stop == null ? [] : typeof req.stop === 'string' ? [req.stop] : req.stop;
  const bias = req.logit_bias ? Object.entries(req.logit_bias) : [];
  return {
    maxTokens,
    ...(req.temperature != null ? { temperature: req.temperature } : {}),
    ...(req.top_p != null ? { topP: req.top_p } : {}),
    ...(req.top_k != null ? { topK: req.top_k } : {}),
    ...(req.repetition_penalty != null ? { repetitionPenalty: req.repetition_penalty } : {}),
    ...(req.min_p ? { minP: req.min_p } : {}),
    ...(req.presence_penalty ? { presencePenalty: req.presence_penalty } : {}),
    ...(req.frequency_penalty ? { frequencyPenalty: req.frequency_penalty } : {}),
    ...(bias.length > 0 ? { logitBias: Object.fromEntries(bias.map(([k, v]) => [Number(k), v])) } : {}),
    ...(req.seed != null ? { seed: req.seed } : {}),
    ...(stop.length > 0 ? { stop } : {}),
    ...(req.signal ? { signal: req.signal } : {}),
  };
}

/** Checks that the prompt leaves room and returns the token budget of each choice. */
export function budget(
  engine: KilnEngine,
  ids: readonly number[],
  req: CompletionFields,
  promptParam: string,
): number {
  const room = engine.contextLength - ids.length;
  if (room < 1) {
    throw new OpenAiRequestError(
      `the prompt is ${ids.length} tokens; this model's context is ${engine.contextLength} tokens, which leaves no room to generate`,
      promptParam,
      'context_length_exceeded',
    );
  }
  const maxTokens = req.max_completion_tokens ?? req.max_tokens ?? room;
  if (maxTokens > room) {
    throw new OpenAiRequestError(
      `max_tokens ${maxTokens} plus the prompt's ${ids.length} tokens exceed the context of ${engine.contextLength} tokens (at most ${room} here)`,
      req.max_completion_tokens != null ? 'max_completion_tokens' : 'max_tokens',
      'context_length_exceeded',
    );
  }
  return maxTokens;
}

/** Choice i of n draws with seed + i, so a seeded request gives n different, reproducible answers. */
export function choiceOptions(opts: GenerateOptions, i: number): GenerateOptions {
  return opts.seed === undefined || i === 0 ? opts : { ...opts, seed: (opts.seed + i) >>> 0 };
}

/** Compiles the request's grammar up front: one the engine refuses is a 400 naming its field. */
export async function checkGrammar(engine: KilnEngine, grammar: GrammarSpec, param: string): Promise<void> {
  try {
    await engine.checkGrammar(grammar);
  } catch (e) {
    if (e instanceof InvalidRequestError) {
      throw new OpenAiRequestError(`${param}: ${e.message}`, param);
    }
    throw e;
  }
}

/** The field a grammar came from, for a grammar the engine cannot compile. */
export function grammarParam(req: ChatCompletionRequest | CompletionRequest, fromTools: boolean): string {
  if (fromTools) return 'tools';
  return req.response_format?.type === 'json_schema'
    ? 'response_format.json_schema.schema'
    : 'response_format';
}

/**
 * OpenAI-shaped chat completions over the engine: `create({ messages })` returns a ChatCompletion,
 * `create({ messages, stream: true })` an async iterable of ChatCompletionChunk, field names as in
 * the OpenAI API so existing client code reads them unchanged.
 */
import { InvalidRequestError } from '../../errors.js';
import type { ChatMessage } from '../../io/tokenizer.js';
import type { Engine } from '../../engine/engine.js';
import type { FinishReason } from '../types.js';

export interface ChatCompletionRequest {
  messages: ChatMessage[];
  stream?: boolean;
  max_tokens?: number;
  max_completion_tokens?: number;
  temperature?: number;
  top_p?: number;
  /** Not in OpenAI's API; as in vLLM and llama.cpp's server. */
  top_k?: number;
  repetition_penalty?: number;
  seed?: number;
  signal?: AbortSignal;
}

export interface ChatCompletionUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export interface ChatCompletion {
  id: string;
  object: 'chat.completion';
  created: number;
  model: string;
  choices: { index: 0; message: { role: 'assistant'; content: string }; finish_reason: FinishReason }[];
  usage: ChatCompletionUsage;
}

export interface ChatCompletionChunk {
  id: string;
  object: 'chat.completion.chunk';
  created: number;
  model: string;
  choices: {
    index: 0;
    delta: { role?: 'assistant'; content?: string };
    finish_reason: FinishReason | null;
  }[];
  usage?: ChatCompletionUsage;
}

let counter = 0;

export class ChatCompletions {
  constructor(private readonly engine: Engine) {}

  create(req: ChatCompletionRequest & { stream: true }): Promise<AsyncIterable<ChatCompletionChunk>>;
  create(req: ChatCompletionRequest & { stream?: false }): Promise<ChatCompletion>;
  async create(req: ChatCompletionRequest): Promise<ChatCompletion | AsyncIterable<ChatCompletionChunk>> {
    if (!Array.isArray(req.messages) || req.messages.length === 0) {
      throw new InvalidRequestError('messages must be a non-empty array');
    }
    const ids = this.engine.encodeChat(req.messages);
    const maxTokens = req.max_completion_tokens ?? req.max_tokens;
    const gen = this.engine.generate(ids, {
      ...(maxTokens !== undefined ? { maxTokens } : {}),
      ...(req.temperature !== undefined ? { temperature: req.temperature } : {}),
      ...(req.top_p !== undefined ? { topP: req.top_p } : {}),
      ...(req.top_k !== undefined ? { topK: req.top_k } : {}),
      ...(req.repetition_penalty !== undefined ? { repetitionPenalty: req.repetition_penalty } : {}),
      ...(req.seed !== undefined ? { seed: req.seed } : {}),
      ...(req.signal ? { signal: req.signal } : {}),
    });
    const id = `chatcmpl-${Date.now().toString(36)}${(counter++).toString(36)}`;
    const created = Math.floor(Date.now() / 1000);
    const model = this.engine.modelName;
    if (!req.stream) {
      const r = await gen.result();
      return {
        id,
        object: 'chat.completion',
        created,
        model,
        choices: [
          { index: 0, message: { role: 'assistant', content: r.text }, finish_reason: r.finishReason },
        ],
        usage: usage(r.promptTokenIds.length, r.tokenIds.length),
      };
    }
    return (async function* () {
      yield {
        id,
        object: 'chat.completion.chunk',
        created,
        model,
        choices: [{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }],
      } as ChatCompletionChunk;
      for await (const t of gen) {
        if (t.text) {
          yield {
            id,
            object: 'chat.completion.chunk',
            created,
            model,
            choices: [{ index: 0, delta: { content: t.text }, finish_reason: null }],
          } as ChatCompletionChunk;
        }
      }
      const r = await gen.result();
      yield {
        id,
        object: 'chat.completion.chunk',
        created,
        model,
        choices: [{ index: 0, delta: {}, finish_reason: r.finishReason }],
        usage: usage(r.promptTokenIds.length, r.tokenIds.length),
      } as ChatCompletionChunk;
    })();
  }
}

/** OpenAI's usage block. */
export function usage(prompt: number, completion: number): ChatCompletionUsage {
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion };
}

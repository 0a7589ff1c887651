/**
 * Checks an OpenAI chat or text completion request, from JSON (the HTTP server) or from code (the
 * library, the browser app): types, ranges and unknown fields, each refusal naming its field as
 * OpenAI does (`param`, a dotted path such as `messages.0.role`). Validate, never repair: no
 * coercion ("5" is not a number) and no field silently dropped.
 */
import { InvalidRequestError } from '../../errors.js';
import { describeValue, isJsonObject, type JsonObject } from '../../io/json.js';
import type { ChatCompletionRequest, CompletionRequest } from './types.js';

/** A refused request, with OpenAI's error fields. */
export class OpenAiRequestError extends InvalidRequestError {
  override name = 'OpenAiRequestError';
  constructor(
    message: string,
    /** The field at fault, as a dotted path; null for the request as a whole. */
    readonly param: string | null,
    /** OpenAI's error code where it has one (`context_length_exceeded`, `unsupported`). */
    readonly code: string | null = null,
  ) {
    super(message);
  }
}

/** The most stop strings a request may give (OpenAI's limit). */
export const MAX_STOP_STRINGS = 4;

const COMMON_FIELDS = [
  'model',
  'stream',
  'stream_options',
  'max_tokens',
  'max_completion_tokens',
  'temperature',
  'top_p',
  'top_k',
  'repetition_penalty',
  'seed',
  'stop',
  'n',
  'logprobs',
  'user',
  'signal',
] as const;

const ROLES = ['system', 'developer', 'user', 'assistant'] as const;

/** How a request reached us: the server requires `model` and has no `signal` in its JSON. */
export interface ValidateOptions {
  requireModel?: boolean;
}

function fail(param: string | null, message: string, code: string | null = null): never {
  throw new OpenAiRequestError(message, param, code);
}

/** Field checks for one object at `path` (the body, or a nested object). */
class Checker {
  constructor(
    private readonly o: JsonObject,
    private readonly path = '',
  ) {}

  private p(field: string): string {
    return `${this.path}${field}`;
  }

  /** Refuses keys outside `known`. */
  only(known: readonly string[]): void {
    for (const k of Object.keys(this.o)) {
      if (!known.includes(k)) fail(this.p(k), `unsupported field ${this.p(k)}`);
    }
  }

  has(field: string): boolean {
    return this.o[field] !== undefined && this.o[field] !== null;
  }

  value(field: string): unknown {
    return this.o[field];
  }

  string(field: string, { nonEmpty = false, required = false } = {}): void {
    const v = this.o[field];
    if (v === undefined && !required) return;
    if (typeof v !== 'string' || (nonEmpty && v.length === 0)) {
      fail(
        this.p(field),
        `${this.p(field)} must be a${nonEmpty ? ' non-empty' : ''} string, got ${describeValue(v)}`,
      );
    }
  }

  bool(field: string): void {
    const v = this.o[field];
    if (v !== undefined && v !== null && typeof v !== 'boolean') {
      fail(this.p(field), `${this.p(field)} must be true or false, got ${describeValue(v)}`);
    }
  }

  /** A number (or null) within [min, max]; `openMin` excludes min. */
  number(field: string, min: number, max: number, { integer = false, openMin = false } = {}): void {
    const v = this.o[field];
    if (v === undefined || v === null) return;
    const what = integer ? 'an integer' : 'a number';
    const range =
      max === Infinity ? `${openMin ? '>' : '>='} ${min}` : `${openMin ? 'in (' : 'in ['}${min}, ${max}]`;
    const ok =
      typeof v === 'number' &&
      Number.isFinite(v) &&
      (!integer || Number.isInteger(v)) &&
      (openMin ? v > min : v >= min) &&
      v <= max;
    if (!ok) fail(this.p(field), `${this.p(field)} must be ${what} ${range}, got ${describeValue(v)}`);
  }
}

function checkCommon(c: Checker, body: JsonObject, o: ValidateOptions): void {
  if (o.requireModel || body.model !== undefined)
    c.string('model', { nonEmpty: true, required: o.requireModel ?? false });
  c.bool('stream');
  const so = body.stream_options;
  if (so !== undefined && so !== null) {
    if (!isJsonObject(so))
      fail('stream_options', `stream_options must be an object, got ${describeValue(so)}`);
    const s = new Checker(so, 'stream_options.');
    s.only(['include_usage']);
    s.bool('include_usage');
  }
  c.number('max_tokens', 1, Infinity, { integer: true });
  c.number('max_completion_tokens', 1, Infinity, { integer: true });
  c.number('temperature', 0, 2);
  c.number('top_p', 0, 1, { openMin: true });
  c.number('top_k', 0, Infinity, { integer: true });
  c.number('repetition_penalty', 0, Infinity, { openMin: true });
  c.number('seed', 0, 2 ** 32 - 1, { integer: true });
  const stop = body.stop;
  if (stop !== undefined && stop !== null) {
    const list = typeof stop === 'string' ? [stop] : stop;
    if (!Array.isArray(list))
      fail('stop', `stop must be a string or a list of strings, got ${describeValue(stop)}`);
    if (list.length > MAX_STOP_STRINGS)
      fail('stop', `stop takes at most ${MAX_STOP_STRINGS} strings, got ${list.length}`);
    list.forEach((s: unknown, i: number) => {
      if (typeof s !== 'string' || s.length === 0) {
        fail(
          typeof stop === 'string' ? 'stop' : `stop.${i}`,
          `stop strings must be non-empty, got ${describeValue(s)}`,
        );
      }
    });
  }
  const n = body.n;
  if (n !== undefined && n !== null && n !== 1) {
    fail('n', `n must be 1 (one choice per request), got ${describeValue(n)}`, 'unsupported');
  }
  c.bool('logprobs');
  if (body.logprobs === true) fail('logprobs', 'logprobs are not supported', 'unsupported');
  c.string('user');
  const signal = body.signal;
  if (signal !== undefined && !(typeof AbortSignal !== 'undefined' && signal instanceof AbortSignal)) {
    fail('signal', 'signal must be an AbortSignal');
  }
}

function object(body: unknown): JsonObject {
  if (!isJsonObject(body)) fail(null, `the request must be a JSON object, got ${describeValue(body)}`);
  return body;
}

/** Checks a chat completion request; returns it typed. */
export function validateChatRequest(body: unknown, o: ValidateOptions = {}): ChatCompletionRequest {
  const b = object(body);
  const c = new Checker(b);
  c.only([...COMMON_FIELDS, 'messages']);
  checkCommon(c, b, o);
  const messages = b.messages;
  if (!Array.isArray(messages) || messages.length === 0) {
    fail('messages', `messages must be a non-empty list of messages, got ${describeValue(messages)}`);
  }
  messages.forEach((m: unknown, i: number) => {
    const at = `messages.${i}`;
    if (!isJsonObject(m)) fail(at, `${at} must be an object with role and content, got ${describeValue(m)}`);
    const mc = new Checker(m, `${at}.`);
    mc.only(['role', 'content', 'name']);
    if (!ROLES.includes(m.role as (typeof ROLES)[number])) {
      fail(`${at}.role`, `${at}.role must be one of ${ROLES.join(', ')}, got ${describeValue(m.role)}`);
    }
    const content = m.content;
    if (Array.isArray(content)) {
      content.forEach((part: unknown, j: number) => {
        const pat = `${at}.content.${j}`;
        if (!isJsonObject(part) || part.type !== 'text' || typeof part.text !== 'string') {
          fail(
            pat,
            `${pat} must be a text part {"type": "text", "text": "..."} (this model reads text only)`,
          );
        }
        new Checker(part, `${pat}.`).only(['type', 'text']);
      });
    } else if (typeof content !== 'string') {
      fail(
        `${at}.content`,
        `${at}.content must be a string or a list of text parts, got ${describeValue(content)}`,
      );
    }
    mc.string('name');
  });
  return b as unknown as ChatCompletionRequest;
}

/** Checks a text completion request; returns it typed. */
export function validateCompletionRequest(body: unknown, o: ValidateOptions = {}): CompletionRequest {
  const b = object(body);
  const c = new Checker(b);
  c.only([...COMMON_FIELDS, 'prompt']);
  checkCommon(c, b, o);
  const prompt = b.prompt;
  const one = Array.isArray(prompt) ? (prompt.length === 1 ? prompt[0] : undefined) : prompt;
  if (typeof one !== 'string') {
    fail(
      'prompt',
      Array.isArray(prompt)
        ? `prompt takes one string (a list of exactly one), got a list of ${prompt.length}`
        : `prompt must be a string, got ${describeValue(prompt)}`,
    );
  }
  return b as unknown as CompletionRequest;
}

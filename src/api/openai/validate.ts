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
/** The most choices one request may ask for (`n`, times the prompts of a completion). */
export const MAX_CHOICES = 16;
/** The most alternatives `top_logprobs` (chat) may ask for, and completions' `logprobs`. */
export const MAX_TOP_LOGPROBS = 20;
export const MAX_COMPLETION_LOGPROBS = 5;

/**
 * Fields accepted and ignored: they describe the caller or OpenAI's hosting and change nothing in
 * a local engine (README lists them).
 */
export const IGNORED_FIELDS = [
  'user',
  'metadata',
  'store',
  'service_tier',
  'prompt_cache_key',
  'safety_identifier',
] as const;

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
  'min_p',
  'presence_penalty',
  'frequency_penalty',
  'logit_bias',
  'seed',
  'stop',
  'n',
  'logprobs',
  'response_format',
  'signal',
  ...IGNORED_FIELDS,
] as const;

const ROLES = ['system', 'developer', 'user', 'assistant', 'tool'] as const;

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

  p(field: string): string {
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
    if ((v === undefined || v === null) && !required) return;
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

  /** An object (or null) when present; returns a Checker for it. */
  object(field: string, { required = false } = {}): Checker | null {
    const v = this.o[field];
    if ((v === undefined || v === null) && !required) return null;
    if (!isJsonObject(v)) fail(this.p(field), `${this.p(field)} must be an object, got ${describeValue(v)}`);
    return new Checker(v, `${this.p(field)}.`);
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

function checkResponseFormat(c: Checker): void {
  const rf = c.object('response_format');
  if (!rf) return;
  const type = rf.value('type');
  if (type === 'text' || type === 'json_object') {
    rf.only(['type']);
    return;
  }
  if (type !== 'json_schema') {
    fail(
      'response_format.type',
      `response_format.type must be "text", "json_object" or "json_schema", got ${describeValue(type)}`,
    );
  }
  rf.only(['type', 'json_schema']);
  const js = rf.object('json_schema', { required: true }) as Checker;
  js.only(['name', 'description', 'schema', 'strict']);
  js.string('name', { nonEmpty: true, required: true });
  js.string('description');
  js.bool('strict');
  const schema = js.value('schema');
  if (schema !== undefined && schema !== null && !isJsonObject(schema) && typeof schema !== 'boolean') {
    fail(js.p('schema'), `${js.p('schema')} must be a JSON Schema object, got ${describeValue(schema)}`);
  }
}

function checkCommon(c: Checker, body: JsonObject, o: ValidateOptions): void {
  if (o.requireModel || body.model !== undefined)
    c.string('model', { nonEmpty: true, required: o.requireModel ?? false });
  c.bool('stream');
  // Without stream, stream_options change nothing (OpenAI's clients send them anyway).
  const so = c.object('stream_options');
  if (so) {
    so.only(['include_usage', 'include_obfuscation']);
    so.bool('include_usage');
    so.bool('include_obfuscation');
  }
  c.number('max_tokens', 1, Infinity, { integer: true });
  c.number('max_completion_tokens', 1, Infinity, { integer: true });
  c.number('temperature', 0, 2);
  c.number('top_p', 0, 1, { openMin: true });
  c.number('top_k', 0, Infinity, { integer: true });
  c.number('repetition_penalty', 0, Infinity, { openMin: true });
  c.number('min_p', 0, 1);
  c.number('presence_penalty', -2, 2);
  c.number('frequency_penalty', -2, 2);
  const bias = c.object('logit_bias');
  if (bias) {
    for (const [k, v] of Object.entries(body.logit_bias as JsonObject)) {
      if (!/^(0|[1-9][0-9]{0,9})$/.test(k)) {
        fail(
          `logit_bias.${k}`,
          `logit_bias keys must be token ids (non-negative integers), got ${describeValue(k)}`,
        );
      }
      if (typeof v !== 'number' || !Number.isFinite(v) || v < -100 || v > 100) {
        fail(`logit_bias.${k}`, `logit_bias.${k} must be a number in [-100, 100], got ${describeValue(v)}`);
      }
    }
  }
  c.number('seed', 0, 2 ** 32 - 1, { integer: true });
  const stop = body.stop;
  if (stop !== undefined && stop !== null) {
    const list = typeof stop === 'string' ? [stop] : stop;
    if (!Array.isArray(list))
      fail('stop', `stop must be a string or a list of strings, got ${describeValue(stop)}`);
    if (list.length > MAX_STOP_STRINGS)
      fail('stop', `at most ${MAX_STOP_STRINGS} stop strings, got ${list.length}`);
    list.forEach((s: unknown, i: number) => {
      if (typeof s !== 'string' || s.length === 0) {
        fail(
          typeof stop === 'string' ? 'stop' : `stop.${i}`,
          `stop strings must be non-empty strings, got ${describeValue(s)}`,
        );
      }
    });
  }
  c.number('n', 1, MAX_CHOICES, { integer: true });
  checkResponseFormat(c);
  c.string('user');
  c.object('metadata');
  c.bool('store');
  c.string('service_tier');
  c.string('prompt_cache_key');
  c.string('safety_identifier');
  const signal = body.signal;
  if (signal !== undefined && !(typeof AbortSignal !== 'undefined' && signal instanceof AbortSignal)) {
    fail('signal', 'signal must be an AbortSignal');
  }
}

/** A JSON text that parses to an object: the arguments of a tool call. */
function checkArguments(at: string, v: unknown): void {
  if (typeof v !== 'string') fail(at, `${at} must be a JSON text (a string), got ${describeValue(v)}`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(v);
  } catch {
    fail(at, `${at} is not valid JSON: ${describeValue(v)}`);
  }
  if (!isJsonObject(parsed)) fail(at, `${at} must be a JSON object, got ${describeValue(parsed)}`);
}

function checkMessages(messages: unknown): void {
  if (!Array.isArray(messages) || messages.length === 0) {
    fail('messages', `messages must be a non-empty list of messages, got ${describeValue(messages)}`);
  }
  const callIds = new Set<string>();
  messages.forEach((m: unknown, i: number) => {
    const at = `messages.${i}`;
    if (!isJsonObject(m)) fail(at, `${at} must be an object with role and content, got ${describeValue(m)}`);
    const mc = new Checker(m, `${at}.`);
    if (!ROLES.includes(m.role as (typeof ROLES)[number])) {
      fail(`${at}.role`, `${at}.role must be one of ${ROLES.join(', ')}, got ${describeValue(m.role)}`);
    }
    const role = m.role as (typeof ROLES)[number];
    mc.only(
      role === 'assistant'
        ? ['role', 'content', 'name', 'tool_calls', 'refusal']
        : role === 'tool'
          ? ['role', 'content', 'tool_call_id']
          : ['role', 'content', 'name'],
    );
    const content = m.content;
    const calls = m.tool_calls;
    if (role === 'assistant' && calls !== undefined && calls !== null) {
      if (!Array.isArray(calls) || calls.length === 0) {
        fail(`${at}.tool_calls`, `${at}.tool_calls must be a non-empty list, got ${describeValue(calls)}`);
      }
      calls.forEach((call: unknown, j: number) => {
        const cat = `${at}.tool_calls.${j}`;
        if (!isJsonObject(call)) fail(cat, `${cat} must be an object {id, type, function}`);
        const cc = new Checker(call, `${cat}.`);
        cc.only(['id', 'type', 'function']);
        cc.string('id', { nonEmpty: true, required: true });
        if (call.type !== 'function')
          fail(`${cat}.type`, `${cat}.type must be "function", got ${describeValue(call.type)}`);
        const fc = cc.object('function', { required: true }) as Checker;
        fc.only(['name', 'arguments']);
        fc.string('name', { nonEmpty: true, required: true });
        checkArguments(`${cat}.function.arguments`, fc.value('arguments'));
        callIds.add(call.id as string);
      });
      if (content === null || content === undefined) return;
    }
    if (role === 'tool') {
      mc.string('tool_call_id', { nonEmpty: true, required: true });
      if (!callIds.has(m.tool_call_id as string)) {
        fail(
          `${at}.tool_call_id`,
          `${at}.tool_call_id ${describeValue(m.tool_call_id)} answers no tool call of an earlier assistant message`,
        );
      }
    }
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
}

function checkTools(c: Checker, body: JsonObject): void {
  const tools = body.tools;
  const names: string[] = [];
  if (tools !== undefined && tools !== null) {
    if (!Array.isArray(tools))
      fail('tools', `tools must be a list of functions, got ${describeValue(tools)}`);
    tools.forEach((t: unknown, i: number) => {
      const at = `tools.${i}`;
      if (!isJsonObject(t)) fail(at, `${at} must be {"type": "function", "function": {...}}`);
      const tc = new Checker(t, `${at}.`);
      tc.only(['type', 'function']);
      if (t.type !== 'function')
        fail(`${at}.type`, `${at}.type must be "function", got ${describeValue(t.type)}`);
      const fc = tc.object('function', { required: true }) as Checker;
      fc.only(['name', 'description', 'parameters', 'strict']);
      fc.string('name', { nonEmpty: true, required: true });
      const name = fc.value('name') as string;
      if (!/^[A-Za-z0-9_-]{1,64}$/.test(name)) {
        fail(
          `${at}.function.name`,
          `${at}.function.name must be 1 to 64 letters, digits, _ or -, got ${describeValue(name)}`,
        );
      }
      if (names.includes(name)) fail(`${at}.function.name`, `two tools are named ${describeValue(name)}`);
      names.push(name);
      fc.string('description');
      fc.object('parameters');
      fc.bool('strict');
    });
  }
  const choice = body.tool_choice;
  if (choice === undefined || choice === null) return;
  if (choice === 'none' || choice === 'auto') return;
  if (choice === 'required') {
    if (names.length === 0) fail('tool_choice', 'tool_choice "required" needs tools');
    return;
  }
  if (!isJsonObject(choice)) {
    fail(
      'tool_choice',
      `tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}, got ${describeValue(choice)}`,
    );
  }
  const cc = c.object('tool_choice') as Checker;
  cc.only(['type', 'function']);
  if (choice.type !== 'function')
    fail('tool_choice.type', `tool_choice.type must be "function", got ${describeValue(choice.type)}`);
  const fc = cc.object('function', { required: true }) as Checker;
  fc.only(['name']);
  fc.string('name', { nonEmpty: true, required: true });
  const name = fc.value('name') as string;
  if (!names.includes(name)) {
    fail(
      'tool_choice.function.name',
      `tool_choice names ${describeValue(name)}, which is not among the tools (${names.length > 0 ? names.join(', ') : 'none given'})`,
    );
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
  c.only([
    ...COMMON_FIELDS,
    'messages',
    'top_logprobs',
    'tools',
    'tool_choice',
    'parallel_tool_calls',
    'chat_template_kwargs',
  ]);
  checkCommon(c, b, o);
  checkMessages(b.messages);
  // An extension (vLLM's and SGLang's name): extra chat template variables, e.g. Qwen3's
  // {"enable_thinking": false}. Their values are the template's business.
  const kwargs = b.chat_template_kwargs;
  if (kwargs !== undefined && kwargs !== null && !isJsonObject(kwargs)) {
    fail(
      'chat_template_kwargs',
      `chat_template_kwargs must be an object of template variables, got ${describeValue(kwargs)}`,
    );
  }
  c.bool('logprobs');
  c.number('top_logprobs', 0, MAX_TOP_LOGPROBS, { integer: true });
  if (c.has('top_logprobs') && b.logprobs !== true) fail('top_logprobs', 'top_logprobs needs logprobs: true');
  c.bool('parallel_tool_calls');
  checkTools(c, b);
  if (c.has('tools') && isJsonObject(b.response_format) && b.response_format.type !== 'text') {
    const choice = b.tool_choice;
    if (choice !== 'none' && choice !== undefined && choice !== null && choice !== 'auto') {
      fail('response_format', 'response_format and a forced tool_choice cannot both constrain the reply');
    }
  }
  return b as unknown as ChatCompletionRequest;
}

/** Checks a text completion request; returns it typed. */
export function validateCompletionRequest(body: unknown, o: ValidateOptions = {}): CompletionRequest {
  const b = object(body);
  const c = new Checker(b);
  c.only([...COMMON_FIELDS, 'prompt', 'echo', 'best_of', 'suffix']);
  checkCommon(c, b, o);
  c.number('logprobs', 0, MAX_COMPLETION_LOGPROBS, { integer: true });
  // Their defaults are accepted; anything else would change the answer in ways not implemented.
  if (b.echo !== undefined && b.echo !== null && b.echo !== false)
    fail('echo', 'echo is not supported (only false)', 'unsupported');
  if (b.best_of !== undefined && b.best_of !== null && b.best_of !== 1)
    fail('best_of', 'best_of is not supported (only 1)', 'unsupported');
  if (b.suffix !== undefined && b.suffix !== null) fail('suffix', 'suffix is not supported', 'unsupported');
  const prompt = b.prompt;
  if (typeof prompt === 'string') return b as unknown as CompletionRequest;
  if (!Array.isArray(prompt) || prompt.length === 0) {
    fail('prompt', `prompt must be a string or a non-empty list of strings, got ${describeValue(prompt)}`);
  }
  prompt.forEach((p: unknown, i: number) => {
    if (typeof p !== 'string') {
      fail(
        `prompt.${i}`,
        `prompt.${i} must be a string${typeof p === 'number' ? ' (token-id prompts are not supported)' : ''}, got ${describeValue(p)}`,
      );
    }
  });
  const choices = prompt.length * ((b.n as number | undefined) ?? 1);
  if (choices > MAX_CHOICES) {
    fail('prompt', `at most ${MAX_CHOICES} choices per request (prompts times n), got ${choices}`);
  }
  return b as unknown as CompletionRequest;
}

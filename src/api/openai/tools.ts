/**
 * Tool calling: how each model family writes a call, read off its chat template, the grammar that
 * forces a call (tool_choice "required" or a named function) and the parser that turns the
 * model's text back into OpenAI `tool_calls`. Formats:
 * - hermes: `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`, repeated (Qwen2.5/3,
 *   Hermes, and the format used for models whose template defines none);
 * - llama3: a bare `{"name": ..., "parameters": {...}}`, optionally after `<|python_tag|>` (Llama 3.1+);
 * - mistral: `[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]`;
 * - phi4: `<|tool_call|>[{"name": ..., "arguments": {...}}]<|/tool_call|>` (Phi-4-mini with its own
 *   template, which takes the tools as JSON text in the system message: see io/message-tools.ts);
 * - functools: `functools[{"name": ..., "arguments": {...}}, ...]` (Phi-4-mini with the tool
 *   template vLLM publishes for it, whose system prompt asks for this marker).
 */
import type { GrammarSpec } from '../types.js';
import type { ToolCall, ToolParam } from './types.js';

export type ToolFormatName = 'hermes' | 'llama3' | 'mistral' | 'phi4' | 'functools';

export interface ToolFormat {
  readonly name: ToolFormatName;
  /** The text that opens a call: streamed text is held back from it on (null: a bare JSON object). */
  readonly opener: string | null;
  /** The grammar of one or more calls of these tools (the reply is nothing else). */
  grammar(tools: readonly ToolParam[]): GrammarSpec;
  /** The calls in a finished reply, and the text outside them; null when it holds no call. */
  parse(text: string, tools: readonly ToolParam[]): { content: string; calls: ParsedCall[] } | null;
}

export interface ParsedCall {
  name: string;
  /** JSON text of an object. */
  arguments: string;
}

/** The format a chat template writes calls in (hermes when it shows none). */
export function detectToolFormat(template: string | null): ToolFormatName {
  if (template !== null) {
    if (template.includes('[TOOL_CALLS]')) return 'mistral';
    if (template.includes('functools[')) return 'functools';
    // Phi-4-mini's own template shows no call, only the <|tool|> block its tools go in.
    if (template.includes('<|tool_call|>') || template.includes('<|tool|>')) return 'phi4';
    if (template.includes('<|python_tag|>') || template.includes('"parameters": ')) return 'llama3';
  }
  return 'hermes';
}

export function toolFormatOf(name: ToolFormatName): ToolFormat {
  return { hermes: HERMES, llama3: LLAMA3, mistral: MISTRAL, phi4: PHI4, functools: FUNCTOOLS }[name];
}

/** The JSON Schema of one call object of any of `tools`. */
function callSchema(
  tools: readonly ToolParam[],
  argsKey: 'arguments' | 'parameters',
): Record<string, unknown> {
  const one = (t: ToolParam) => ({
    type: 'object',
    properties: {
      name: { const: t.function.name },
      [argsKey]: t.function.parameters ?? { type: 'object' },
    },
    required: ['name', argsKey],
    additionalProperties: false,
  });
  return tools.length === 1 ? one(tools[0] as ToolParam) : { anyOf: tools.map(one) };
}

/** Constant text, JSON of `schema`, constant text. */
function wrapped(prefix: string, schema: Record<string, unknown>, suffix: string): GrammarSpec {
  return { type: 'json_schema', schema, prefix, suffix };
}

/** Reads a call object: {name, arguments|parameters} naming one of `tools`; else null. */
function callOf(v: unknown, tools: readonly ToolParam[]): ParsedCall | null {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return null;
  const o = v as Record<string, unknown>;
  const name = o.name;
  if (typeof name !== 'string' || !tools.some((t) => t.function.name === name)) return null;
  let args = o.arguments ?? o.parameters ?? {};
  if (typeof args === 'string') {
    try {
      args = JSON.parse(args);
    } catch {
      return null;
    }
  }
  if (typeof args !== 'object' || args === null || Array.isArray(args)) return null;
  return { name, arguments: JSON.stringify(args) };
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

const HERMES: ToolFormat = {
  name: 'hermes',
  opener: '<tool_call>',
  grammar: (tools) => wrapped('<tool_call>\n', callSchema(tools, 'arguments'), '\n</tool_call>'),
  parse(text, tools) {
    const calls: ParsedCall[] = [];
    const re = /<tool_call>([\s\S]*?)(?:<\/tool_call>|$)/g;
    let content = '';
    let last = 0;
    for (let m = re.exec(text); m !== null; m = re.exec(text)) {
      const call = callOf(parseJson((m[1] as string).trim()), tools);
      if (!call) return null;
      calls.push(call);
      content += text.slice(last, m.index);
      last = m.index + m[0].length;
      if (m[0].length === 0) break;
    }
    if (calls.length === 0) return null;
    return { content: (content + text.slice(last)).trim(), calls };
  },
};

/** Calls as a JSON list (or one object) after `marker`. */
function listAfter(marker: string, end: string) {
  return (text: string, tools: readonly ToolParam[]) => {
    const at = text.indexOf(marker);
    if (at < 0) return null;
    let body = text.slice(at + marker.length);
    const stop = end ? body.indexOf(end) : -1;
    if (stop >= 0) body = body.slice(0, stop);
    const v = parseJson(body.trim());
    const list = Array.isArray(v) ? v : [v];
    const calls = list.map((c) => callOf(c, tools));
    if (calls.length === 0 || calls.some((c) => c === null)) return null;
    return { content: text.slice(0, at).trim(), calls: calls as ParsedCall[] };
  };
}

const MISTRAL: ToolFormat = {
  name: 'mistral',
  opener: '[TOOL_CALLS]',
  grammar: (tools) =>
    wrapped('[TOOL_CALLS] ', { type: 'array', items: callSchema(tools, 'arguments'), minItems: 1 }, ''),
  parse: listAfter('[TOOL_CALLS]', ''),
};

const PHI4: ToolFormat = {
  name: 'phi4',
  opener: '<|tool_call|>',
  grammar: (tools) =>
    wrapped(
      '<|tool_call|>',
      { type: 'array', items: callSchema(tools, 'arguments'), minItems: 1 },
      '<|/tool_call|>',
    ),
  parse: listAfter('<|tool_call|>', '<|/tool_call|>'),
};

const FUNCTOOLS: ToolFormat = {
  name: 'functools',
  opener: 'functools[',
  grammar: (tools) =>
    wrapped('functools', { type: 'array', items: callSchema(tools, 'arguments'), minItems: 1 }, ''),
  parse: listAfter('functools', ''),
};

const LLAMA3: ToolFormat = {
  name: 'llama3',
  opener: null,
  grammar: (tools) => wrapped('', callSchema(tools, 'parameters'), ''),
  parse(text, tools) {
    const body = text.replace(/^\s*<\|python_tag\|>/, '').trim();
    if (!body.startsWith('{')) return null;
    const call = callOf(parseJson(body), tools);
    return call ? { content: '', calls: [call] } : null;
  },
};

let callCounter = 0;
/**
 * A tool call id. Mistral's template accepts only 9 alphanumeric characters, so every format gets
 * ids of that shape.
 */
export function toolCallId(): string {
  const alphabet = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789';
  let s = '';
  let x = (Date.now() ^ (callCounter++ * 2654435761)) >>> 0;
  for (let i = 0; i < 9; i++) {
    x = (Math.imul(x ^ (x >>> 15), 2246822519) + Math.floor(Math.random() * 1e9)) >>> 0;
    s += alphabet[x % alphabet.length];
  }
  return s;
}

/** OpenAI's tool_calls of parsed calls. */
export function toToolCalls(calls: readonly ParsedCall[]): ToolCall[] {
  return calls.map((c) => ({
    id: toolCallId(),
    type: 'function',
    function: { name: c.name, arguments: c.arguments },
  }));
}

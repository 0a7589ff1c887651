/**
 * Tool calls through real chat templates, in the library (`engine.chat.completions.create`, the
 * same code `kiln serve` and the browser run): tiny random models carrying the Qwen3 tokenizer and
 * its own template (tools built in), the Llama 3 tokenizer with the Llama 3.1 JSON tool-calling
 * template and the Mistral tokenizer with the Mistral tool-calling template (both as vLLM
 * publishes them, embedded below with their source), and the Llama 3 tokenizer under two
 * Phi-4-mini conventions (its own template's logic: tools as JSON text in the system message; and
 * a vLLM-style template asking for `functools[...]`). The tools must reach the prompt, a forced
 * call (tool_choice required or named: constrained decoding) must come back as `tool_calls` whose
 * arguments validate, and the call plus a tool result must render as history for the next turn.
 */
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import type { ChatMessageParam, ToolParam } from '../../src/api/openai/types.js';
import { createEngine } from '../../src/node/index.js';
import { writeTestModel } from '../helpers/checkpoints.js';
import { sharedTokenizer } from '../helpers/shared.js';

// Published by vLLM as examples/tool_chat_template_llama3.1_json.jinja (vllm-project/vllm, commit
// 545227602f2569dfe61adb608beb7bb69fc55fa8): Llama 3.1's JSON tool calling.
const LLAMA31_JSON_TOOLS = `{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {#- Llama 3.1 doesn't pass all tests if the tools are in the system prompt #}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- if messages[0]['content'] is string %}
        {%- set system_message = messages[0]['content']|trim %}
    {%- else %}
        {%- set system_message = messages[0]['content'][0]['text']|trim %}
    {%- endif %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- if tools is not none %}
        {%- set system_message = "You are a helpful assistant with tool calling capabilities. Only reply with a tool call if the function exists in the library provided by the user. If it doesn't exist, just reply directly in natural language. When you receive a tool call response, use the output to format an answer to the original user question." %}
    {%- else %}
        {%- set system_message = "" %}
    {%- endif %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call. " }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}. ' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- if messages[0]['content'] is string %}
            {%- set first_user_message = messages[0]['content']|trim %}
        {%- else %}
            {%- set first_user_message = messages[0]['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | map('trim') | join('\\n') %}
        {%- endif %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
    {%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}. ' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}
        {%- if message['content'] is string %}
            {{- message['content'] | trim}}
        {%- else %}
            {%- for content in message['content'] %}
                {%- if content['type'] == 'text' %}
                    {{- content['text'] | trim }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if message.tool_calls|length > 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- elif message.tool_calls|length == 0 %}
            {{- "No tool calls found." }}
        {%- else %}
            {%- set tool_call = message.tool_calls[0].function %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- '{"name": "' + tool_call.name|trim + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is string %}
            {{- { "output": message.content } | tojson }}
        {%- else %}
            {%- for content in message['content']  %}
                {%- if content['type']  == 'text' %}
                    {{- { "output": content['text']  } | tojson }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
`;

// Published by vLLM as examples/tool_chat_template_mistral.jinja (vllm-project/vllm, commit
// 2d4b302af306ff9b71e60135530e75ccf29b15f7): Mistral's [TOOL_CALLS] format.
const MISTRAL_TOOLS =
  "{{ bos_token }}{% set user_messages = messages | selectattr('role', 'equalto', 'user') | list %}{% for message in messages %}{% if message['role'] == 'user' %}{% if message == user_messages[-1] %}{% if tools %}{{ '[AVAILABLE_TOOLS]'+ tools|string + '[/AVAILABLE_TOOLS]' }}{% endif %}{{ '[INST]' + message['content'] + '[/INST]' }}{% else %}{{ '[INST]' + message['content'] + '[/INST]' }}{% endif %}{% elif message['role'] == 'assistant' and message['tool_calls'] and message['tool_calls']|length > 0 %}{{ '[TOOL_CALLS]' + message['content']|string + eos_token }}{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + ' ' + eos_token }}{% elif message['role'] == 'tool' %}{{ '[TOOL_RESULTS]' + message['content']|string + '[/TOOL_RESULTS]' }}{% endif %}{% endfor %}";

// The logic of Phi-4-mini-instruct's own chat template (microsoft/Phi-4-mini-instruct,
// tokenizer_config.json), written out here: a system message may carry `tools` (JSON text), shown
// in a <|tool|> block; every turn is <|role|>text<|end|>; the model answers calls with
// <|tool_call|>[...]<|/tool_call|> (special tokens of its vocabulary).
const PHI4_MINI = [
  '{% for message in messages %}',
  "{% if message['role'] == 'system' and 'tools' in message and message['tools'] is not none %}",
  "{{ '<|' + message['role'] + '|>' + message['content'] + '<|tool|>' + message['tools'] + '<|/tool|>' + '<|end|>' }}",
  "{% else %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endif %}",
  "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}",
].join('');

// A template in the convention vLLM serves Phi-4-mini with: the tools in the system prompt, which
// asks for calls as functools[{"name": ..., "arguments": ...}, ...]; calls in history written back
// in that form.
const PHI4_FUNCTOOLS = [
  '<|system|>You may call functions. Write calls as functools[{"name": ..., "arguments": {...}}].',
  '{% for t in tools %}{{ t | tojson }}{% endfor %}<|end|>',
  '{% for m in messages %}<|{{ m.role }}|>',
  '{% if m.tool_calls %}functools[{% for c in m.tool_calls %}{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}{% if not loop.last %}, {% endif %}{% endfor %}]',
  '{% else %}{{ m.content }}{% endif %}<|end|>{% endfor %}',
  '{% if add_generation_prompt %}<|assistant|>{% endif %}',
].join('');

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** A tiny random model with a real tokenizer; `template` replaces the tokenizer's own. */
function model(tokenizer: string, vocab: number, eos: number, template: string | null): string {
  const dir = mkdtempSync(join(tmpdir(), `kiln-tools-${tokenizer}-`));
  dirs.push(dir);
  writeTestModel(dir, {
    hidden: 32,
    intermediate: 64,
    layers: 1,
    heads: 2,
    kvHeads: 1,
    vocab,
    tie: true,
    dtype: 'F16',
    maxPositions: 2048,
    config: { eos_token_id: eos, bos_token_id: null },
  });
  copyFileSync(sharedTokenizer(tokenizer, 'tokenizer.json'), join(dir, 'tokenizer.json'));
  const config = JSON.parse(
    readFileSync(sharedTokenizer(tokenizer, 'tokenizer_config.json'), 'utf8'),
  ) as Record<string, unknown>;
  if (template !== null) config.chat_template = template;
  writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(config));
  return dir;
}

const weather: ToolParam = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'The weather in a city',
    parameters: {
      type: 'object',
      properties: {
        city: { type: 'string', maxLength: 12 },
        days: { type: 'integer', minimum: 1, maximum: 7 },
      },
      required: ['city', 'days'],
      additionalProperties: false,
    },
  },
};
const time: ToolParam = {
  type: 'function',
  function: {
    name: 'get_time',
    parameters: {
      type: 'object',
      properties: { zone: { enum: ['UTC', 'CET'] } },
      required: ['zone'],
      additionalProperties: false,
    },
  },
};

const CASES = [
  {
    name: 'Qwen3 (its own template)',
    tokenizer: 'qwen3',
    vocab: 151936,
    eos: 151645,
    template: null,
    format: 'hermes',
  },
  {
    name: 'Llama 3.1 JSON',
    tokenizer: 'llama3',
    vocab: 128256,
    eos: 128009,
    template: LLAMA31_JSON_TOOLS,
    format: 'llama3',
  },
  {
    name: 'Mistral',
    tokenizer: 'mistral-v0.1',
    vocab: 32000,
    eos: 2,
    template: MISTRAL_TOOLS,
    format: 'mistral',
  },
  {
    name: 'Phi-4-mini (its own template)',
    tokenizer: 'llama3',
    vocab: 128256,
    eos: 128009,
    template: PHI4_MINI,
    format: 'phi4',
  },
  {
    name: 'Phi-4-mini (functools)',
    tokenizer: 'llama3',
    vocab: 128256,
    eos: 128009,
    template: PHI4_FUNCTOOLS,
    format: 'functools',
  },
] as const;

describe.each(CASES)('$name', (c) => {
  test('forced calls come back as tool_calls; call and result render as history', async () => {
    const engine = await createEngine({ model: model(c.tokenizer, c.vocab, c.eos, c.template) });
    try {
      expect(engine.toolCallFormat).toBe(c.format);
      const messages: ChatMessageParam[] = [{ role: 'user', content: 'What is the weather in Paris?' }];
      // The tools reach the prompt.
      const ids = await engine.tokenize({ messages: [{ role: 'user', content: 'x' }], tools: [weather] });
      expect(engine.tokenizer.decode(ids)).toContain('get_weather');
      // Phi-4-mini's template takes them from the system message (one is added when none is sent).
      if (c.format === 'phi4')
        expect(engine.tokenizer.decode(ids)).toContain('<|system|><|tool|>[{"name":"get_weather"');
      for (const toolChoice of ['required', { type: 'function', function: { name: 'get_time' } }] as const) {
        const r = await engine.chat.completions.create({
          messages,
          tools: [weather, time],
          tool_choice: toolChoice,
          max_tokens: 200,
          temperature: 0,
        });
        const choice = r.choices[0];
        expect(choice?.finish_reason).toBe('tool_calls');
        const call = choice?.message.tool_calls?.[0];
        expect(call).toBeDefined();
        if (typeof toolChoice === 'object') expect(call?.function.name).toBe('get_time');
        const args = JSON.parse(call?.function.arguments ?? '') as Record<string, unknown>;
        if (call?.function.name === 'get_time') expect(['UTC', 'CET']).toContain(args.zone);
        else {
          expect(typeof args.city).toBe('string');
          expect(
            Number.isInteger(args.days) && (args.days as number) >= 1 && (args.days as number) <= 7,
          ).toBe(true);
        }
        // The next turn: the assistant's call and the tool's answer in the history.
        const next = await engine.chat.completions.create({
          messages: [
            ...messages,
            { role: 'assistant', content: null, tool_calls: [call!] },
            { role: 'tool', tool_call_id: call!.id, content: '{"temperature": 21}' },
          ],
          tools: [weather, time],
          max_tokens: 4,
          temperature: 0,
        });
        expect(next.usage.prompt_tokens).toBeGreaterThan(r.usage.prompt_tokens);
      }
    } finally {
      engine.dispose();
    }
  }, 180_000);
});

/**
 * Chat templates are code from the model folder: rendered under limits (src/io/chat-template.ts).
 * Real templates render exactly as the unbounded library renders them, for long conversations;
 * hostile ones (`range(10**9)` hung the process for minutes before) stop
 * within the step budget with an error naming the template.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Template } from '@huggingface/jinja';
import { describe, expect, test } from 'vitest';
import { ChatTemplate, MAX_TEMPLATE_STEPS, TemplateLimitError } from '../../src/io/chat-template.js';
import { convertSentencePiece } from '../../src/io/sentencepiece.js';
import { KilnTokenizer } from '../../src/io/tokenizer.js';
import { InvalidModelFileError, KilnError } from '../../src/errors.js';
import { repoRoot, sharedModel } from '../helpers/shared.js';

const converted = convertSentencePiece(
  new Uint8Array(readFileSync(sharedModel('babyllama-tok105', 'tok105.model'))),
);

function tokenizerWith(template: string): KilnTokenizer {
  return KilnTokenizer.fromJson(converted.tokenizerJson, {
    ...converted.tokenizerConfig,
    chat_template: template,
  });
}

describe('chat templates under limits', () => {
  test('real templates render as the unbounded renderer does, 400 messages long', () => {
    const messages = [
      { role: 'system', content: 'You are terse.' },
      ...Array.from({ length: 400 }, (_, i) => ({
        role: i % 2 === 0 ? 'user' : 'assistant',
        content: `turn ${i}: ${'word '.repeat(i % 17)}`,
      })),
    ];
    for (const name of ['llama3', 'qwen3', 'gemma3']) {
      const config = JSON.parse(
        readFileSync(join(repoRoot, '..', 'shared', 'tokenizers', name, 'tokenizer_config.json'), 'utf8'),
      ) as { chat_template: string };
      const ctx = { messages, add_generation_prompt: true, bos_token: '<s>', eos_token: '</s>' };
      const want = new Template(config.chat_template).render(ctx);
      expect(new ChatTemplate(config.chat_template).render(ctx), name).toBe(want);
      expect(want.length).toBeGreaterThan(4000);
    }
  });

  test.each([
    ['a huge range', '{% for i in range(10**9) %}x{% endfor %}'],
    [
      'a doubling loop',
      "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
    ],
  ])('%s is stopped with an error naming the template', (_, template) => {
    const t0 = performance.now();
    let err: unknown;
    try {
      tokenizerWith(template).applyChatTemplate([{ role: 'user', content: 'hi' }]);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(InvalidModelFileError);
    expect((err as Error).message).toMatch(/chat template .* was stopped/);
    // These stop at a range or size limit, long before the step budget.
    expect(performance.now() - t0).toBeLessThan(5_000);
  });

  test('nested loops with empty bodies count every iteration against the step budget', () => {
    const t = new ChatTemplate(
      '{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}',
      {
        maxSteps: 50_000,
      },
    );
    expect(() => t.render({})).toThrow(TemplateLimitError);
  });

  test('unbounded recursion is a Kiln error, not a crash', () => {
    const t = tokenizerWith('{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}');
    expect(() => t.applyChatTemplate([{ role: 'user', content: 'hi' }])).toThrow(KilnError);
  });

  test('the step budget leaves room: Qwen3 over 4000 messages renders', () => {
    const config = JSON.parse(
      readFileSync(join(repoRoot, '..', 'shared', 'tokenizers', 'qwen3', 'tokenizer_config.json'), 'utf8'),
    ) as { chat_template: string };
    const messages = Array.from({ length: 4000 }, (_, i) => ({
      role: i % 2 ? 'assistant' : 'user',
      content: `t${i}`,
    }));
    expect(new ChatTemplate(config.chat_template).render({ messages }).length).toBeGreaterThan(40_000);
    expect(MAX_TEMPLATE_STEPS).toBe(1_000_000);
  });
});

/** `kiln chat`: a conversation in the terminal through the model's chat template. */
import { createInterface } from 'node:readline/promises';
import type { Command } from 'commander';
import { KilnError } from '../errors.js';
import type { ChatMessageParam } from '../api/openai/types.js';
import { loadEngine } from './load.js';
import { addModelOptions, addSamplingOptions, type ModelFlags, type SamplingFlags } from './options.js';

async function cmdChat(o: ModelFlags & SamplingFlags & { system?: string }): Promise<void> {
  const engine = await loadEngine(o);
  if (!engine.tokenizer.hasChatTemplate) {
    engine.dispose();
    throw new KilnError(
      `${o.model} has no chat template (tokenizer_config.json chat_template); use \`kiln run\` for plain prompts`,
    );
  }
  const rl = createInterface({
    input: process.stdin,
    output: process.stderr,
    terminal: process.stdin.isTTY === true,
  });
  rl.setPrompt('> ');
  // Lines are read through the async iterator, which queues them: `rl.question()` only sees lines that
  // arrive while it waits, so piped input (all lines in one chunk) would lose every line typed ahead.
  const lines = rl[Symbol.asyncIterator]();
  const history: ChatMessageParam[] = o.system ? [{ role: 'system', content: o.system }] : [];
  process.stderr.write('kiln chat: empty line or Ctrl-D to quit, /reset to start over\n');
  try {
    for (;;) {
      rl.prompt();
      const next = await lines.next();
      if (next.done) break; // stdin closed
      const line = next.value;
      if (line.trim() === '') break;
      if (line.trim() === '/reset') {
        history.splice(o.system ? 1 : 0);
        continue;
      }
      history.push({ role: 'user', content: line });
      const stream = await engine.chat.completions.create({
        messages: history,
        stream: true,
        ...(o.maxTokens !== undefined ? { max_tokens: o.maxTokens } : {}),
        temperature: o.temperature,
        top_p: o.topP,
        top_k: o.topK,
        repetition_penalty: o.repetitionPenalty,
        ...(o.seed !== undefined ? { seed: o.seed } : {}),
      });
      let reply = '';
      for await (const chunk of stream) {
        const text = chunk.choices[0]?.delta.content ?? '';
        reply += text;
        process.stdout.write(text);
      }
      process.stdout.write('\n');
      history.push({ role: 'assistant', content: reply });
    }
  } finally {
    rl.close();
    engine.dispose();
  }
}

/** `kiln chat`. */
export function addChatCommand(program: Command): void {
  addSamplingOptions(
    addModelOptions(
      program.command('chat').description('chat with the model in the terminal (its chat template)'),
    ),
    512,
  )
    .option('--system <text>', 'system prompt')
    .action((o) => cmdChat(o));
}

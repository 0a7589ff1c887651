/**
 * What a long prompt does to sequences already decoding (SARATHI's point):
 *   npm run bench:chunked -- --model DIR [--prompt-tokens N] [--decoders N] [--chunks 32,256]
 * For each prefill chunk size (the engine's token budget per step), N sequences decode while a
 * long prompt arrives; prints the gaps between the running sequences' tokens during the long
 * prompt's prefill (median and max, ms) and its time to first token. With a chunk at least as long
 * as the prompt, the prompt is prefilled in one step and every decoder stalls for all of it.
 */
import { createEngine } from '../src/node/index.js';

function flag(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 ? (process.argv[i + 1] ?? fallback) : fallback;
}

const model = flag('--model', '');
if (!model) throw new Error('--model DIR is required');
const promptTokens = Number(flag('--prompt-tokens', '200'));
const decoders = Number(flag('--decoders', '8'));
const chunks = flag('--chunks', '32,256').split(',').map(Number);

const median = (v: number[]) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)] ?? 0;

for (const chunk of chunks) {
  const engine = await createEngine({ model, prefillChunkTokens: chunk });
  const vocab = engine.tokenizer.vocabSize;
  const prompt = (salt: number, n: number) => [
    1,
    ...Array.from({ length: n - 1 }, (_, i) => 3 + ((i * 13 + salt * 7) % (vocab - 3))),
  ];
  const opts = { temperature: 0, ignoreEos: true };
  // Warm-up: compile the step shapes this run uses.
  await Promise.all([
    ...Array.from({ length: decoders }, (_, i) =>
      engine.generate(prompt(50 + i, 8), { ...opts, maxTokens: 3 }).result(),
    ),
    engine.generate(prompt(99, promptTokens), { ...opts, maxTokens: 1 }).result(),
  ]);
  const stamps: number[][] = Array.from({ length: decoders }, () => []);

  const running = Array.from({ length: decoders }, async (_, i) => {
    for await (const t of engine.generate(prompt(i, 8), { ...opts, maxTokens: 60 })) {
      if (t.id !== null) (stamps[i] as number[]).push(performance.now());
    }
  });
  while (stamps.some((s) => s.length < 3)) await new Promise((r) => setTimeout(r, 2));
  const t0 = performance.now();
  const long = await engine.generate(prompt(7, promptTokens), { ...opts, maxTokens: 1 }).result();
  const window: [number, number] = [t0, t0 + long.timings.prefillMs];
  await Promise.all(running);
  const gaps: number[] = [];
  for (const s of stamps) {
    for (let j = 1; j < s.length; j++) {
      const a = s[j - 1] as number;
      const b = s[j] as number;
      if (b > window[0] && a < window[1]) gaps.push(b - a);
    }
  }
  console.log(
    JSON.stringify({
      bench: 'chunked_prefill',
      prefill_chunk: chunk,
      prompt_tokens: promptTokens,
      decoders,
      long_prompt_ttft_ms: Math.round(long.timings.prefillMs),
      decoder_gap_median_ms: Math.round(median(gaps) * 10) / 10,
      decoder_gap_max_ms: Math.round(Math.max(...gaps) * 10) / 10,
    }),
  );
  engine.dispose();
}
process.exit(0);

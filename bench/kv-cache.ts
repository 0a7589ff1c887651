/**
 * Decode speed per KV-cache format at long contexts, on a synthetic model at a real shape (int4
 * projections, as `bench:decode --quant q4`; the LM head stays bf16, as `kiln quantize` leaves it
 * by default, so the figures stay comparable with earlier runs):
 *   npm run bench:kv -- [shape] [--layers N] [--contexts 1024,4096] [--formats f16,int8,...]
 *     [--tokens N] [--rounds N] [--instances N] [--profile-only] [--model DIR]
 * (`--model DIR`: a model directory instead of the synthetic shape, loaded as it is, e.g. an int4
 * checkpoint from `kiln quantize`.)
 * For each context, one engine per format holds a prompt of (context - tokens) ids, then the
 * formats decode `tokens` greedy tokens each in alternating rounds, in the list's order in even
 * rounds and reversed in odd ones (ABBA), so a drift on a shared machine within a round favours
 * none (run an even number of rounds); the median round of each is kept (and every round
 * printed). Each round also profiles one decode step at the context's last position, dispatch by
 * dispatch with GPU timestamps (Engine.profileDecode): its sum is the step's GPU time, its
 * attention dispatches the format's attention cost, neither counting submission or readback.
 * `--profile-only` skips the prompts and the timed decoding (the profiled step does the same work
 * whatever the cache holds): GPU figures only, in seconds rather than minutes at long contexts.
 * Prints one JSON line per (context, format) with decode tokens/s (wall clock) and GPU ms per
 * step, each with its ratio to f16 (for tokens/s also the median of the per-round ratios), plus the
 * KV bytes per token per layer.
 * `--instances N` loads N engines per format (interleaved: f16, int4, ..., f16, int4, ...) and takes
 * a format's best instance in each round. On a virtual machine, identical engines can sit up to
 * 2.4x apart for their whole life (where their memory landed, not what they compute: the LM head's
 * streaming matmul varies, attention does not), which one instance per format would charge to the
 * format. Each instance's median is printed too. Progress (each engine's prompt, each round) goes
 * to stderr: at 4096 each engine's prompt takes about a minute here.
 */
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { kvBlockBytes } from '../src/engine/kv/cache.js';
import type { KvDtype } from '../src/kernels/kv-dtype.js';
import type { Engine } from '../src/engine/engine.js';
import { createEngine } from '../src/node/index.js';
import { syntheticModel } from './synthetic.js';

function flag(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 ? (process.argv[i + 1] ?? fallback) : fallback;
}

const shape = process.argv[2] && !process.argv[2].startsWith('--') ? process.argv[2] : 'llama-3.2-1b';
const layers = Number(flag('--layers', '2'));
const contexts = flag('--contexts', '1024,4096').split(',').map(Number);
const formats = flag('--formats', 'f16,int8,int4,int2,gear4,gear2').split(',') as KvDtype[];
const tokens = Number(flag('--tokens', '8'));
const rounds = Number(flag('--rounds', '6'));
const instances = Number(flag('--instances', '1'));
if (!Number.isInteger(instances) || instances < 1)
  throw new RangeError(`--instances ${instances}: expected a positive integer`);
const profileOnly = process.argv.includes('--profile-only');
const root = process.env.KILN_BENCH_DIR ?? join(tmpdir(), 'kiln-bench');
const modelDir = process.argv.includes('--model') ? flag('--model', '') : undefined;
const dir = modelDir ?? (await syntheticModel(root, shape, 'BF16', layers));

const r2 = (x: number) => Math.round(x * 100) / 100;

for (const context of contexts) {
  // Rounds share the prompt but for its last 16 ids: the prefix cache serves the rest (its blocks
  // were written by the same prefill), so a round costs one block of prefill and its decode reads
  // the same cache as the first round's.
  const n = context - tokens - 1;
  const prompt = (round: number) => [
    1,
    ...Array.from({ length: n }, (_, i) => 3 + ((i * 37 + (i >= n - 16 ? round : 0)) % 256)),
  ];
  // Engine k is instance floor(k / formats) of format k % formats: instances interleaved.
  const engines: Engine[] = [];
  const t0 = Date.now();
  const progress = (what: string) =>
    console.error(`[kv-cache] context ${context}: ${what} (${((Date.now() - t0) / 1000).toFixed(0)} s)`);
  for (let k = 0; k < instances * formats.length; k++) {
    engines.push(
      await createEngine({
        model: dir,
        contextLength: context + 16,
        // Room for the profiled step's own context beside the held prompt: in a pool of one
        // context, the profile's blocks evict the prompt from the prefix cache, and every round
        // prefills it again (a minute per format at 4096 here).
        kvCacheTokens: 2 * (context + 16),
        ...(modelDir === undefined ? { quant: 'q4' as const, quantOptions: { lmHead: false } } : {}),
        kvCache: formats[k % formats.length] as KvDtype,
      }),
    );
  }
  // Per engine, per round.
  const runs: number[][] = engines.map(() => []);
  const gpu: number[][] = engines.map(() => []);
  const attn: number[][] = engines.map(() => []);
  for (let round = 0; round < rounds; round++) {
    progress(`round ${round + 1} of ${rounds}`);
    const order = [...engines.entries()];
    if (round % 2 === 1) order.reverse();
    for (const [k, e] of order) {
      if (!profileOnly) {
        const r = await e
          .generate(prompt(round), { maxTokens: tokens, temperature: 0, ignoreEos: true })
          .result();
        runs[k]?.push(r.timings.decodeTokensPerS);
        if (round === 0)
          progress(`${formats[k % formats.length]} prompt held, ${r2(r.timings.decodeTokensPerS)} tokens/s`);
      }
      const prof = await e.profileDecode(context);
      gpu[k]?.push(prof.reduce((s, p) => s + p.ms, 0));
      attn[k]?.push(prof.filter((p) => p.label.startsWith('attention')).reduce((s, p) => s + p.ms, 0));
    }
  }
  // A format's figure in a round: its best instance (the fastest tokens/s, the least GPU time).
  const own = (i: number) => engines.map((_, k) => k).filter((k) => k % formats.length === i);
  const best = (xs: number[][], i: number, pick: (...v: number[]) => number) =>
    Array.from({ length: xs[own(i)[0] as number]?.length ?? 0 }, (_, r) =>
      pick(...own(i).map((k) => xs[k]?.[r] as number)),
    );
  const perRound = formats.map((_, i) => ({
    runs: best(runs, i, Math.max),
    gpu: best(gpu, i, Math.min),
    attn: best(attn, i, Math.min),
  }));
  const f16i = formats.indexOf('f16');
  const tps = perRound.map((p) => (p.runs.length > 0 ? median(p.runs) : NaN));
  const gpuMs = perRound.map((p) => median(p.gpu));
  const f16 = perRound[f16i];
  for (const [i, kvCache] of formats.entries()) {
    const e = engines[i] as Engine;
    const p = perRound[i] as (typeof perRound)[number];
    console.log(
      JSON.stringify({
        bench: 'kv-cache',
        shape: modelDir === undefined ? shape : basename(modelDir),
        layers: e.spec.numLayers,
        adapter: e.adapter.description,
        context,
        kv_cache: kvCache,
        kv_bytes_per_token_per_layer: (2 * kvBlockBytes(e.spec, kvCache)) / 16,
        instances,
        decode_tokens_per_s: r2(tps[i] as number),
        vs_f16: Math.round(((tps[i] as number) / (tps[f16i] as number)) * 1000) / 1000,
        // The median of each round's ratio (f16 and this format decode minutes apart at most).
        vs_f16_paired: paired(p.runs, f16?.runs ?? []),
        gpu_ms_per_step: r2(gpuMs[i] as number),
        gpu_vs_f16: Math.round(((gpuMs[f16i] as number) / (gpuMs[i] as number)) * 1000) / 1000,
        attention_gpu_ms: r2(median(p.attn)),
        rounds: p.runs.map(r2),
        gpu_rounds: p.gpu.map(r2),
        attention_rounds: p.attn.map(r2),
        // Each instance's median: how far apart identical engines sit on this machine.
        instance_tokens_per_s: own(i).map((k) =>
          (runs[k]?.length ?? 0) > 0 ? r2(median(runs[k] ?? [])) : null,
        ),
        instance_gpu_ms: own(i).map((k) => r2(median(gpu[k] ?? []))),
      }),
    );
  }
  for (const e of engines) e.dispose();
}
process.exit(0);

function paired(xs: number[], f16: number[]): number | null {
  if (xs.length === 0) return null;
  return Math.round(median(xs.map((x, r) => x / (f16[r] as number))) * 1000) / 1000;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const h = s.length >> 1;
  return s.length % 2 ? (s[h] as number) : ((s[h - 1] as number) + (s[h] as number)) / 2;
}

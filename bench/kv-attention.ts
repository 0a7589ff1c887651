/**
 * Split-K decode attention alone, per KV-cache format, at one head shape and context:
 *   npm run bench:kv-attention -- [--heads 14] [--kv-heads 2] [--head-dim 64] [--context 4096]
 *     [--chunk N] [--variant two_pass|async_softmax] [--formats f16,int4,gear4lr,...]
 *     [--rounds 100] [--calls 2]
 * (defaults: Qwen2.5-0.5B's heads, the int4 bench model's, at 4096 with the cpu defaults row's
 * chunk: 512 tokens there). One row of keys like a model's (uniform, every 13th channel 8x larger: the
 * outliers that make per-token keys lossy) is written into each format's cache with the engine's
 * own kernels (kv_quantize, kv_lowrank), then rounds alternate the formats in order and reversed,
 * each timing `--calls` back-to-back calls. Per format: the 10th percentile and the median of the
 * rounds, in wall ms and in the process's CPU ms per call, each against the first format's. On a
 * CPU adapter (lavapipe runs the dispatch on this process's threads) CPU time is the steadier
 * figure: wall time there also counts the time a virtual machine's cores were taken away.
 */
import {
  AttentionDecodeScratch,
  attentionDecode,
  attentionDecodeLabels,
  decodeSplits,
  pickDecodeChunk,
} from '../src/kernels/attention-decode.js';
import { KERNEL_DEFAULTS, defaultAttentionChunk } from '../src/tuner/defaults.js';
import type { AttentionDecodeVariant } from '../src/kernels/attention-decode.js';
import { DispatchBuilder, runDispatches, type Dispatch } from '../src/gpu/dispatch.js';
import {
  KV_DTYPES,
  isQuantKv,
  kvGroupBytes,
  kvQuantParams,
  type KvDtype,
  type KvQuantDtype,
} from '../src/kernels/kv-dtype.js';
import { kvQuantize } from '../src/kernels/kv-quantize.js';
import { kvLowrank } from '../src/kernels/kv-lowrank.js';
import { KV_WINDOW_LANES, NO_LANE } from '../src/engine/kv/window.js';
import { plainRowInfo } from '../src/kernels/row-info.js';
import { encodeFromFloat32 } from '../src/io/dtype.js';
import { randomF32 } from '../src/kernels/random.js';
import { storageUsage, type GpuContext } from '../src/gpu/device.js';
import { acquireNodeGpu } from '../src/node/dawn.js';

function flag(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 ? (process.argv[i + 1] ?? fallback) : fallback;
}
function intFlag(name: string, fallback: number): number {
  const v = Number(flag(name, String(fallback)));
  if (!Number.isInteger(v) || v < 1) throw new RangeError(`${name} ${v}: expected a positive integer`);
  return v;
}

const heads = intFlag('--heads', 14);
const kvHeads = intFlag('--kv-heads', 2);
const headDim = intFlag('--head-dim', 64);
const context = intFlag('--context', 4096);
const rounds = intFlag('--rounds', 100);
const calls = intFlag('--calls', 2);
const variant = flag('--variant', 'two_pass') as AttentionDecodeVariant;
if (variant !== 'two_pass' && variant !== 'async_softmax') throw new RangeError(`--variant ${variant}`);
const formats = flag('--formats', 'f16,int4,gear4,int4lr,gear4lr').split(',') as KvDtype[];
for (const f of formats) if (!KV_DTYPES.includes(f)) throw new RangeError(`--formats: unknown format ${f}`);
// The chunk the cpu defaults row gives one decode row at this context (src/tuner/defaults.ts).
const chunk = intFlag(
  '--chunk',
  defaultAttentionChunk(KERNEL_DEFAULTS.cpu, '1', context) ??
    pickDecodeChunk({ maxContext: context, kvHeads, rows: 1 }),
);
if (chunk % 16 !== 0) throw new RangeError(`--chunk ${chunk}: expected a multiple of 16`);

const BLOCK = 16;
const c: GpuContext = await acquireNodeGpu();
const blocks = Math.ceil(context / BLOCK);
const kvDim = kvHeads * headDim;
const buffer = (data: Float32Array | Uint32Array | Uint8Array, label: string): GPUBuffer => {
  const b = c.createBuffer(label, Math.max(16, Math.ceil(data.byteLength / 4) * 4), storageUsage());
  c.device.queue.writeBuffer(b, 0, data as Uint8Array<ArrayBuffer>);
  return b;
};
const k = randomF32(context * kvDim, 7, 2);
for (let i = 0; i < k.length; i++) if ((i % headDim) % 13 === 5) k[i] = (k[i] as number) * 8;
const v = randomF32(context * kvDim, 8);
// A scattered (reversed) block table, as a long-lived pool leaves it.
const table = Uint32Array.from({ length: blocks }, (_, i) => blocks - 1 - i);
const slotOf = (p: number) => (table[Math.floor(p / BLOCK)] as number) * BLOCK + (p % BLOCK);
const q = buffer(randomF32(heads * headDim, 9), 'q');
const rowInfo = buffer(plainRowInfo([context - 1]), 'row_info');
const blockTable = buffer(table, 'block_table');
const out = c.createBuffer('out', heads * headDim * 4, storageUsage());
const scratch = new AttentionDecodeScratch(c, { rows: 1, heads, headDim, maxContext: context, chunk });

/** [tokens][kvHeads][headDim] rows of `x` from token t0, laid out as [block][kvHead][16][headDim]. */
function blockRows(x: Float32Array, t0: number, m: number, slot: (r: number) => number): Float32Array {
  const s = new Float32Array(Math.ceil((t0 + m) / BLOCK) * BLOCK * kvDim);
  for (let r = 0; r < m; r++) {
    const at = slot(r);
    for (let h = 0; h < kvHeads; h++) {
      const src = (t0 + r) * kvDim + h * headDim;
      s.set(
        x.subarray(src, src + headDim),
        ((Math.floor(at / BLOCK) * kvHeads + h) * BLOCK + (at % BLOCK)) * headDim,
      );
    }
  }
  return s;
}

/** The format's K and V caches holding the rows (quantized ones written by the engine's kernels). */
function fill(format: KvDtype): { kCache: GPUBuffer; vCache: GPUBuffer } {
  if (!isQuantKv(format)) {
    const enc = (x: Float32Array) => {
      const rows = blockRows(x, 0, context, slotOf);
      return format === 'f16' ? encodeFromFloat32('F16', rows) : rows;
    };
    return { kCache: buffer(enc(k), 'k_cache'), vCache: buffer(enc(v), 'v_cache') };
  }
  const dtype: KvQuantDtype = format;
  const bytes = blocks * kvHeads * kvGroupBytes(dtype, headDim);
  const kCache = buffer(new Uint8Array(bytes), 'k_cache');
  const vCache = buffer(new Uint8Array(bytes), 'v_cache');
  const window = buffer(new Float32Array(KV_WINDOW_LANES * 2 * kvHeads * BLOCK * headDim), 'window');
  // Prefill chunks of 256 rows: each writes whole blocks, so kv_lowrank factors every block.
  for (let t0 = 0; t0 < context; t0 += 256) {
    const m = Math.min(256, context - t0);
    const b = new DispatchBuilder(c);
    const a = {
      slots: buffer(
        Uint32Array.from({ length: m }, (_, r) => slotOf(t0 + r)),
        'slots',
      ),
      kStage: buffer(
        blockRows(k, t0, m, (r) => r),
        'k_stage',
      ),
      vStage: buffer(
        blockRows(v, t0, m, (r) => r),
        'v_stage',
      ),
      kCache,
      vCache,
      lanes: buffer(new Uint32Array(m).fill(NO_LANE), 'lanes'),
      window,
      m,
      kvHeads,
      headDim,
      kvDtype: dtype,
    };
    const ds = [kvQuantize(b, a)];
    if (kvQuantParams(dtype).rank > 0) ds.push(kvLowrank(b, a));
    runDispatches(c, ds);
    b.destroy();
  }
  return { kCache, vCache };
}

interface Row {
  format: KvDtype;
  dispatches: Dispatch[];
  wall: number[];
  cpu: number[];
}
const runs: Row[] = [];
for (const format of formats) {
  const caches = fill(format);
  const b = new DispatchBuilder(c);
  const dispatches = attentionDecode(b, {
    rowInfo,
    blockTable,
    q,
    ...caches,
    kvDtype: format,
    out,
    m: 1,
    heads,
    kvHeads,
    headDim,
    scale: 1 / Math.sqrt(headDim),
    maxContext: context,
    chunk,
    variant,
    ...(variant === 'async_softmax' ? { phi: 8 } : {}),
    scratch,
  });
  // The first call compiles the pipelines.
  runDispatches(c, dispatches);
  await c.device.queue.onSubmittedWorkDone();
  runs.push({ format, dispatches, wall: [], cpu: [] });
}
for (let r = 0; r < rounds; r++) {
  for (const row of r % 2 === 0 ? runs : [...runs].reverse()) {
    const t = performance.now();
    const u = process.cpuUsage();
    for (let i = 0; i < calls; i++) runDispatches(c, row.dispatches);
    await c.device.queue.onSubmittedWorkDone();
    const du = process.cpuUsage(u);
    row.wall.push((performance.now() - t) / calls);
    row.cpu.push((du.user + du.system) / 1000 / calls);
  }
}
const quantile = (xs: readonly number[], f: number) =>
  [...xs].sort((a, b) => a - b)[Math.floor(f * (xs.length - 1))] as number;
const r3 = (x: number) => Math.round(x * 1000) / 1000;
const base = runs[0] as Row;
for (const row of runs) {
  const stat = (xs: number[], ref: number[], f: number) => ({
    ms: r3(quantile(xs, f)),
    vs_first: r3(quantile(xs, f) / quantile(ref, f)),
  });
  console.log(
    JSON.stringify({
      bench: 'kv-attention',
      label: attentionDecodeLabels(variant, row.format, decodeSplits(context, chunk))[0],
      heads,
      kv_heads: kvHeads,
      head_dim: headDim,
      context,
      chunk,
      rounds,
      calls,
      cpu_p10: stat(row.cpu, base.cpu, 0.1),
      cpu_median: stat(row.cpu, base.cpu, 0.5),
      wall_p10: stat(row.wall, base.wall, 0.1),
      wall_median: stat(row.wall, base.wall, 0.5),
    }),
  );
}
process.exit(0);

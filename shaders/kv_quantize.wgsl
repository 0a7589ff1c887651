// kv_quantize: writes one step's K and V rows into a quantized paged KV cache (prefixed with
// common/kv_quant.wgsl after KV_BITS, KV_OUTLIERS and KV_RANK; the format is in src/kernels/kv-dtype.ts).
// rope_kv_write has put the rows, RoPE applied to k, as f32 in k_stage / v_stage with the cache's
// own layout over the identity slots ([row / 16][kv_head][row % 16][head_dim]); this kernel
// quantizes each (row, kv head) of K and of V into its slot's row of the cache:
//   1. outliers (GEAR's sparse part, KV_OUTLIERS > 0): the KV_OUTLIERS channels of largest |x|
//      (the lowest channel among equals), taken out of the range;
//   2. (scale, min) = ((max - min) / (2^bits - 1), min) over the other channels, rounded to f16;
//   3. code = clamp(round((x - min) / scale), 0, 2^bits - 1) for every channel (0 if scale is 0);
//   4. each outlier's residual x - (code · scale + min), rounded to f16, beside its channel;
//   5. low-rank formats: the (block, KV head)'s factors are zeroed (kv_lowrank follows).
// Bindings: params, slots [m] u32, k_stage, v_stage (f32), k_cache, v_cache (u32 words).
// Work: one thread per (row, kv head, K or V), linearized over a 2-D grid: a row is small
// (head_dim <= 256 values) and quantizing it needs all of it.

struct Params {
  m: u32,
  kv_heads: u32,
  head_dim: u32,
  grid_x: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> slots: array<u32>;
@group(0) @binding(2) var<storage, read> k_stage: array<f32>;
@group(0) @binding(3) var<storage, read> v_stage: array<f32>;
@group(0) @binding(4) var<storage, read_write> k_cache: array<KvCell>;
@group(0) @binding(5) var<storage, read_write> v_cache: array<KvCell>;

const BLOCK_TOKENS: u32 = 16u;
const MAX_HEAD_DIM: u32 = 256u;
const MAX_OUTLIERS: u32 = 4u;

var<private> x: array<f32, MAX_HEAD_DIM>;

fn code_of(v: f32, sm: vec2<f32>, inv: f32) -> u32 {
  return u32(clamp(round((v - sm.y) * inv), 0.0, f32(KVQ_MASK)));
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let idx = gid.y * p.grid_x * 64u + gid.x;
  if (idx >= p.m * p.kv_heads * 2u) {
    return;
  }
  let is_v = idx % 2u == 1u;
  let head = (idx / 2u) % p.kv_heads;
  let row = idx / (2u * p.kv_heads);
  let n = p.head_dim;
  let src = ((row / BLOCK_TOKENS * p.kv_heads + head) * BLOCK_TOKENS + row % BLOCK_TOKENS) * n;
  for (var d = 0u; d < n; d++) {
    x[d] = select(k_stage[src + d], v_stage[src + d], is_v);
  }

  var outl: array<u32, MAX_OUTLIERS>;
  for (var o = 0u; o < KV_OUTLIERS; o++) {
    var best = 0u;
    var best_abs = -1.0;
    for (var d = 0u; d < n; d++) {
      var taken = false;
      for (var i = 0u; i < o; i++) {
        taken = taken || outl[i] == d;
      }
      if (!taken && abs(x[d]) > best_abs) {
        best = d;
        best_abs = abs(x[d]);
      }
    }
    outl[o] = best;
  }
  var lo = 3.0e38;
  var hi = -3.0e38;
  for (var d = 0u; d < n; d++) {
    var taken = false;
    for (var i = 0u; i < KV_OUTLIERS; i++) {
      taken = taken || outl[i] == d;
    }
    if (!taken) {
      lo = min(lo, x[d]);
      hi = max(hi, x[d]);
    }
  }
  // quantizeToF16, not unpack(pack(..)): a compiler may fold that pair away (lavapipe does), and
  // the codes must be computed from the (scale, min) the row stores.
  let sm = quantizeToF16(vec2<f32>((hi - lo) / f32(KVQ_MASK), lo));
  let inv = select(0.0, 1.0 / sm.x, sm.x > 0.0);

  let slot = slots[row];
  let cw = kvq_code_words();
  let cache_row = (slot / BLOCK_TOKENS * p.kv_heads + head) * BLOCK_TOKENS + slot % BLOCK_TOKENS;
  let dst = kvq_row_base(cache_row);
  // A block that changes loses its low-rank factors; kv_lowrank, next, recomputes them when this
  // step wrote the block's last row. (Every writer of the block stores the same zeros.)
  let f = kvq_factor_base(cache_row);
  for (var w = 0u; w < KV_RANK * (BLOCK_TOKENS + n) / 2u; w++) {
    store(is_v, f + w, 0u);
  }
  let per_word = 32u / KV_BITS;
  for (var w = 0u; w < cw; w++) {
    var word = 0u;
    for (var e = 0u; e < per_word; e++) {
      let d = w * per_word + e;
      if (d < n) {
        word |= code_of(x[d], sm, inv) << (e * KV_BITS);
      }
    }
    store(is_v, dst + w, word);
  }
  store(is_v, dst + cw, pack2x16float(sm));
  for (var o = 0u; o < KV_OUTLIERS; o++) {
    let d = outl[o];
    let r = quantizeToF16(x[d] - (f32(code_of(x[d], sm, inv)) * sm.x + sm.y));
    store(is_v, dst + cw + 1u + o, (pack2x16float(vec2<f32>(r, 0.0)) << 16u) | d);
  }
}

fn store(is_v: bool, i: u32, w: u32) {
  if (is_v) {
    v_cache[i] = w;
  } else {
    k_cache[i] = w;
  }
}

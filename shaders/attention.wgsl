// attention: causal softmax(q·kᵀ·scale)·v over the paged KV cache, for every query row of a step
// (prefill rows and decode rows alike). Row m attends to its sequence's tokens lo..row_info[m].x
// (its own position, inclusive), found through the block table starting at row_info[m].y; lo is 0,
// or with a sliding window (p.window > 0) the oldest of the last `window` tokens. Keys before lo
// are never read: their blocks may already be released. A token tree's rows see their ancestors
// only (row_info's tree base and mask, common/attention_rows.wgsl).
// GQA: query head h reads KV head h / (heads / kv_heads); K/V are indexed, never repeated.
// Bindings: params, row_info [m] vec4<u32> (common/attention_rows.wgsl), block_table u32,
// q [m, heads·head_dim] f32, k_cache, v_cache ([block][kv_head][16] token rows of the prepended
// KV fragment's format, common/kv_*.wgsl, read through its kv_k1 / kv_v1 as f32), out like q.
// Work: one 64-thread workgroup per (query head, row). Keys go in tiles of 64 (one score per
// thread), with the online softmax (running max and sum, accumulator rescaled when the max grows);
// each thread owns head dims t, t+64, t+128, t+192 of the output (head_dim <= 256).
// The exact baseline that the split-K decode kernels of "Seed kernels" are measured against.

struct Params {
  heads: u32,
  kv_heads: u32,
  head_dim: u32,
  scale: f32,
  // Sliding-window length of this layer, 0 for full attention.
  window: u32,
  // > 0: scores become softcap · tanh(score / softcap) (Gemma 2's attn_logit_softcapping).
  softcap: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> block_table: array<u32>;
@group(0) @binding(3) var<storage, read> q: array<f32>;
@group(0) @binding(4) var<storage, read> k_cache: array<KvCell>;
@group(0) @binding(5) var<storage, read> v_cache: array<KvCell>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

const WG: u32 = 64u;
const BLOCK_TOKENS: u32 = 16u;
const MAX_DIMS_PER_THREAD: u32 = 4u;
// A finite "minus infinity": keeps exp(m_old - m_new) and (m_old - m_new) free of NaN.
const NEG_BIG: f32 = -1.0e30;

var<workgroup> q_sh: array<f32, 256>;
var<workgroup> probs: array<f32, WG>;
var<workgroup> red: array<f32, WG>;

fn reduce_max(t: u32) -> f32 {
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (t < s) {
      red[t] = max(red[t], red[t + s]);
    }
    workgroupBarrier();
  }
  return red[0];
}

fn reduce_sum(t: u32) -> f32 {
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (t < s) {
      red[t] += red[t + s];
    }
    workgroupBarrier();
  }
  return red[0];
}

// Token row of key `j` for `kv_head` (the first argument of the fragment's loads).
fn kv_row(bt_off: u32, kv_head: u32, j: u32) -> u32 {
  let block = block_table[bt_off + j / BLOCK_TOKENS];
  return (block * p.kv_heads + kv_head) * BLOCK_TOKENS + j % BLOCK_TOKENS;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let head = wid.x;
  let row = wid.y;
  let keys = row_keys(row, p.window);
  let ctx_len = keys.end;
  let bt_off = row_info[row].y;
  // Low-rank KV formats leave out the factors of the row's own block (its future rows shaped them).
  kv_own_block = block_table[bt_off + (ctx_len - 1u) / BLOCK_TOKENS];
  let lo = keys.lo;
  let kv_head = head / (p.heads / p.kv_heads);
  let q_base = (row * p.heads + head) * p.head_dim;
  for (var d = t; d < p.head_dim; d += WG) {
    q_sh[d] = q[q_base + d];
  }
  workgroupBarrier();

  var acc: array<f32, MAX_DIMS_PER_THREAD>;
  var m_run = NEG_BIG;
  var l_run = 0.0;
  for (var tile = lo; tile < ctx_len; tile += WG) {
    let j = tile + t;
    var s = NEG_BIG;
    let seen = j < ctx_len && !key_hidden(keys, j);
    if (seen) {
      let kr = kv_row(bt_off, kv_head, j);
      var dot = 0.0;
      for (var d = 0u; d < p.head_dim; d++) {
        dot += q_sh[d] * kv_k1(kr, d);
      }
      s = dot * p.scale;
      if (p.softcap > 0.0) {
        // tanh as 1 − 2 / (e^(2y) + 1): saturates instead of overflowing for large |y|.
        s = p.softcap * (1.0 - 2.0 / (exp(2.0 * s / p.softcap) + 1.0));
      }
    }
    red[t] = s;
    workgroupBarrier();
    let m_new = max(m_run, reduce_max(t));
    workgroupBarrier();
    var pr = 0.0;
    if (seen) {
      pr = exp(s - m_new);
    }
    probs[t] = pr;
    red[t] = pr;
    workgroupBarrier();
    let tile_sum = reduce_sum(t);
    let alpha = exp(m_run - m_new);
    l_run = l_run * alpha + tile_sum;
    let n_keys = min(WG, ctx_len - tile);
    for (var r = 0u; r < MAX_DIMS_PER_THREAD; r++) {
      let d = t + r * WG;
      if (d < p.head_dim) {
        var a = acc[r] * alpha;
        for (var jj = 0u; jj < n_keys; jj++) {
          a += probs[jj] * kv_v1(kv_row(bt_off, kv_head, tile + jj), d);
        }
        acc[r] = a;
      }
    }
    m_run = m_new;
    workgroupBarrier();
  }
  for (var r = 0u; r < MAX_DIMS_PER_THREAD; r++) {
    let d = t + r * WG;
    if (d < p.head_dim) {
      out[q_base + d] = acc[r] / l_run;
    }
  }
}

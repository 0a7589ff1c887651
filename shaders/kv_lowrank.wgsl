// kv_lowrank: GEAR's low-rank part for the low-rank KV formats (prefixed with common/kv_quant.wgsl
// after KV_BITS, KV_OUTLIERS and KV_RANK > 0; the format is in src/kernels/kv-dtype.ts). Runs
// after kv_quantize, on the same step:
//   1. every step row with a lane of the recent window (lanes[row], src/engine/kv/window.ts) is
//      copied into it, K and V: [lane][K, V][kv_head][row % 16][head_dim] f32;
//   2. for every (block, KV head, K or V) whose last row (offset 15) this step wrote: its rows are
//      the step's (the run of consecutive step rows at consecutive slots ending there; all 16 if
//      the step wrote the block whole) and, before them, the lane's (lanes[last row]; without a
//      lane and with rows before the step's, the block keeps kv_quantize's zero factors). E = x -
//      decoded row (codes + outliers) over the block's 16 rows, and rank-KV_RANK factors E ≈ A·B
//      by power iteration with deflation, for j = 0..KV_RANK-1:
//   a. E_j = E - Σ_{i<j} A[:, i]·B[i, :] (the stored, f16-rounded factors);
//   b. v = E_j's row of largest norm (the lowest among equals), normalised; none: A, B stay 0;
//   c. ITERS times: v = E_jᵀ(E_j v), normalised (stops early if that is 0);
//   d. B[j, :] = f16(v), A[:, j] = f16(E_j v).
// The lane holds the rows as f32, as the stage does, so a block filled row by row gets the
// factors it would get written whole. Step 2 reads no lane row this step writes (the step's own
// rows come from the stage), so one dispatch does both. src/kernels/kv-lowrank.ref.ts is the
// float64 twin.
// Bindings: params, slots [m] u32, k_stage, v_stage (f32, at the identity slots, as kv_quantize
// reads them), k_cache, v_cache (u32 words), lanes [m] u32 (0xffffffff: none), lane_rows (the
// layer's window, f32).
// Work: one thread per (step row, KV head, K or V), linearized over a 2-D grid; only threads whose
// row ends a block do step 2. E is recomputed from the rows and the cache at each pass instead of
// being held (16 · head_dim floats per thread would not fit private memory well).

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
@group(0) @binding(6) var<storage, read> lanes: array<u32>;
@group(0) @binding(7) var<storage, read_write> lane_rows: array<f32>;

const BLOCK_TOKENS: u32 = 16u;
const MAX_HEAD_DIM: u32 = 256u;
const ITERS: u32 = 4u;
const NO_LANE: u32 = 0xffffffffu;

var<private> vv: array<f32, MAX_HEAD_DIM>;
var<private> nv: array<f32, MAX_HEAD_DIM>;
var<private> uu: array<f32, BLOCK_TOKENS>;
// The f16-rounded factors found so far: A [16][KV_RANK], B [KV_RANK][head_dim].
var<private> fa: array<f32, BLOCK_TOKENS * KV_RANK>;
var<private> fb: array<f32, MAX_HEAD_DIM * KV_RANK>;

var<private> is_v: bool;
// Block row t is the step's row last + 1 + t - 16 for t >= from_stage, else the lane's row t.
var<private> last: u32;
var<private> from_stage: u32;
var<private> lane: u32;
var<private> row0: u32;
var<private> head: u32;

fn load(i: u32) -> u32 {
  return select(k_cache[i], v_cache[i], is_v);
}

fn store(i: u32, w: u32) {
  if (is_v) {
    v_cache[i] = w;
  } else {
    k_cache[i] = w;
  }
}

// E_j[t][d]: the step's value minus what the cache's codes and outliers give, minus the first j
// factors.
fn stage_at(r: u32, hd: u32) -> u32 {
  return ((r / BLOCK_TOKENS * p.kv_heads + hd) * BLOCK_TOKENS + r % BLOCK_TOKENS) * p.head_dim;
}

fn lane_at(l: u32, v: bool, hd: u32, t: u32) -> u32 {
  return (((l * 2u + select(0u, 1u, v)) * p.kv_heads + hd) * BLOCK_TOKENS + t) * p.head_dim;
}

fn err(t: u32, d: u32, j: u32) -> f32 {
  var x: f32;
  if (t >= from_stage) {
    let src = stage_at(last + 1u + t - BLOCK_TOKENS, head) + d;
    x = select(k_stage[src], v_stage[src], is_v);
  } else {
    x = lane_rows[lane_at(lane, is_v, head, t) + d];
  }
  let base = kvq_row_base(row0 + t);
  let cw = kvq_code_words();
  var y = kvq_dequant1(load(base + (d * KV_BITS) / 32u), d, unpack2x16float(load(base + cw)));
  for (var o = 0u; o < KV_OUTLIERS; o++) {
    y += kvq_patch1(load(base + cw + 1u + o), d);
  }
  var e = x - y;
  for (var i = 0u; i < j; i++) {
    e -= fa[t * KV_RANK + i] * fb[i * MAX_HEAD_DIM + d];
  }
  return e;
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let idx = gid.y * p.grid_x * 64u + gid.x;
  if (idx >= p.m * p.kv_heads * 2u) {
    return;
  }
  is_v = idx % 2u == 1u;
  head = (idx / 2u) % p.kv_heads;
  let i = idx / (2u * p.kv_heads);
  let n = p.head_dim;
  let slot = slots[i];
  lane = lanes[i];
  if (lane != NO_LANE) {
    let src = stage_at(i, head);
    let dst = lane_at(lane, is_v, head, slot % BLOCK_TOKENS);
    for (var d = 0u; d < n; d++) {
      lane_rows[dst + d] = select(k_stage[src + d], v_stage[src + d], is_v);
    }
  }
  if (slot % BLOCK_TOKENS != BLOCK_TOKENS - 1u) {
    return;
  }
  // The step's own rows of the block: back from row i while the slots run on.
  var k = 1u;
  while (k < BLOCK_TOKENS && k <= i && slots[i - k] == slot - k) {
    k++;
  }
  if (k < BLOCK_TOKENS && lane == NO_LANE) {
    return;
  }
  from_stage = BLOCK_TOKENS - k;
  last = i;
  row0 = (slot / BLOCK_TOKENS * p.kv_heads + head) * BLOCK_TOKENS;
  for (var j = 0u; j < KV_RANK; j++) {
    var best = -1.0;
    var best_t = 0u;
    for (var t = 0u; t < BLOCK_TOKENS; t++) {
      var s = 0.0;
      for (var d = 0u; d < n; d++) {
        let e = err(t, d, j);
        s += e * e;
      }
      if (s > best) {
        best = s;
        best_t = t;
      }
    }
    if (best > 0.0) {
      let inv0 = inverseSqrt(best);
      for (var d = 0u; d < n; d++) {
        vv[d] = err(best_t, d, j) * inv0;
      }
      for (var it = 0u; it < ITERS; it++) {
        for (var t = 0u; t < BLOCK_TOKENS; t++) {
          var s = 0.0;
          for (var d = 0u; d < n; d++) {
            s += err(t, d, j) * vv[d];
          }
          uu[t] = s;
        }
        var s2 = 0.0;
        for (var d = 0u; d < n; d++) {
          var s = 0.0;
          for (var t = 0u; t < BLOCK_TOKENS; t++) {
            s += err(t, d, j) * uu[t];
          }
          nv[d] = s;
          s2 += s * s;
        }
        if (s2 <= 0.0) {
          break;
        }
        let inv = inverseSqrt(s2);
        for (var d = 0u; d < n; d++) {
          vv[d] = nv[d] * inv;
        }
      }
      for (var t = 0u; t < BLOCK_TOKENS; t++) {
        var s = 0.0;
        for (var d = 0u; d < n; d++) {
          s += err(t, d, j) * vv[d];
        }
        fa[t * KV_RANK + j] = quantizeToF16(s);
      }
      for (var d = 0u; d < n; d++) {
        fb[j * MAX_HEAD_DIM + d] = quantizeToF16(vv[d]);
      }
    } else {
      for (var t = 0u; t < BLOCK_TOKENS; t++) {
        fa[t * KV_RANK + j] = 0.0;
      }
      for (var d = 0u; d < n; d++) {
        fb[j * MAX_HEAD_DIM + d] = 0.0;
      }
    }
  }
  let f = kvq_factor_base(row0);
  for (var w = 0u; w < BLOCK_TOKENS * KV_RANK / 2u; w++) {
    store(f + w, pack2x16float(vec2<f32>(fa[2u * w], fa[2u * w + 1u])));
  }
  for (var j = 0u; j < KV_RANK; j++) {
    for (var d = 0u; d < n; d += 2u) {
      store(f + kvq_b_word(j, d), pack2x16float(vec2<f32>(fb[j * MAX_HEAD_DIM + d], fb[j * MAX_HEAD_DIM + d + 1u])));
    }
  }
}

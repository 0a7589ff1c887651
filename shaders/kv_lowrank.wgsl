// kv_lowrank: GEAR's low-rank part for the low-rank KV formats (prefixed with common/kv_quant.wgsl
// after KV_BITS, KV_OUTLIERS and KV_RANK > 0; the format is in src/kernels/kv-dtype.ts). Runs
// after kv_quantize, on the same step: for every (block, KV head, K or V) whose 16 rows this step
// wrote (16 consecutive step rows whose slots are one whole block), E = x - decoded row (codes +
// outliers) over the block's rows (16 x head_dim), and rank-KV_RANK factors E ≈ A·B by power
// iteration with deflation, for j = 0..KV_RANK-1:
//   1. E_j = E - Σ_{i<j} A[:, i]·B[i, :] (the stored, f16-rounded factors);
//   2. v = E_j's row of largest norm (the lowest among equals), normalised; none: A, B stay 0;
//   3. ITERS times: v = E_jᵀ(E_j v), normalised (stops early if that is 0);
//   4. B[j, :] = f16(v), A[:, j] = f16(E_j v).
// Blocks the step wrote only in part keep the zero factors kv_quantize left (the rows of earlier
// steps are no longer at hand in f32). src/kernels/kv-lowrank.ref.ts is the float64 twin.
// Bindings: params, slots [m] u32, k_stage, v_stage (f32, at the identity slots, as kv_quantize
// reads them), k_cache, v_cache (u32 words).
// Work: one thread per (step row, KV head, K or V), linearized over a 2-D grid; only threads whose
// row starts a whole block do anything. E is recomputed from the stage and the cache at each pass
// instead of being held (16 · head_dim floats per thread would not fit private memory well).

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
const ITERS: u32 = 4u;

var<private> vv: array<f32, MAX_HEAD_DIM>;
var<private> nv: array<f32, MAX_HEAD_DIM>;
var<private> uu: array<f32, BLOCK_TOKENS>;
// The f16-rounded factors found so far: A [16][KV_RANK], B [KV_RANK][head_dim].
var<private> fa: array<f32, BLOCK_TOKENS * KV_RANK>;
var<private> fb: array<f32, MAX_HEAD_DIM * KV_RANK>;

var<private> is_v: bool;
var<private> stage0: u32;
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
fn err(t: u32, d: u32, j: u32) -> f32 {
  let r = stage0 + t;
  let src = ((r / BLOCK_TOKENS * p.kv_heads + head) * BLOCK_TOKENS + r % BLOCK_TOKENS) * p.head_dim + d;
  let x = select(k_stage[src], v_stage[src], is_v);
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
  let i0 = idx / (2u * p.kv_heads);
  if (i0 + BLOCK_TOKENS > p.m) {
    return;
  }
  let s0 = slots[i0];
  if (s0 % BLOCK_TOKENS != 0u) {
    return;
  }
  for (var t = 1u; t < BLOCK_TOKENS; t++) {
    if (slots[i0 + t] != s0 + t) {
      return;
    }
  }
  let n = p.head_dim;
  stage0 = i0;
  row0 = (s0 / BLOCK_TOKENS * p.kv_heads + head) * BLOCK_TOKENS;
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

// attention_lanes (attention_decode_lanes_d{D}r{R}): decode attention over the paged KV cache with
// one invocation per (row, KV head), for the small heads of tiny models on CPU adapters. Each
// invocation walks its row's keys block by block (16 tokens) with an exact online softmax, q of
// the KV head's R = heads / kv_heads query heads and their D-wide accumulators held in
// registers, and writes the normalised output itself: one dispatch per layer whatever the rows,
// with no workgroup memory and no barrier.
// Why (lavapipe, 8 lanes per SIMD instruction): split-K's workgroup per (split, KV head, row) of 64
// threads costs about 15 µs even over a 16-token context (its barriers, its workgroup memory,
// its P·V on head_dim / 4 threads), so a step of k rows paid k times that. Here the 8 lanes of a
// SIMD instruction are 8 (row, KV head) pairs, and a step of 16 rows of a 4-KV-head model is
// 64 invocations.
// Exactness: per row the same f32 online softmax over its keys in order, whatever the other rows
// of the step: a row's output does not depend on how many rows its step has.
// Prepended by src/kernels/attention-decode.ts with the KV fragment (common/kv4_*.wgsl) and
// `const HD4: u32` (head_dim / 4), `const NREP: u32` (query heads per KV head), `const WG: u32`.
//
// Bindings: params, row_info [m] vec4<u32> (common/attention_rows.wgsl), block_table u32,
// q [m, heads·head_dim] f32 (as vec4), k_cache, v_cache, partials (one record per (row, head) as
// the single split of attention_split: vec4(c, l, 0, 0) then o, of which only the header is written,
// for calibration), out [m, heads·head_dim] f32 (as vec4).

struct Params {
  heads: u32,
  kv_heads: u32,
  head_dim: u32,
  scale: f32,
  window: u32,
  softcap: f32,
  m: u32,
  // Splits the partials' records are laid out for (the plan's scratch); record 0 is written.
  splits: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> block_table: array<u32>;
@group(0) @binding(3) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> k_cache: array<KvCell>;
@group(0) @binding(5) var<storage, read> v_cache: array<KvCell>;
@group(0) @binding(6) var<storage, read_write> partials: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> out: array<vec4<f32>>;

const BLOCK_TOKENS: u32 = 16u;
// A finite "minus infinity": e^(NEG_BIG - m) is 0 and NEG_BIG - NEG_BIG is 0, never NaN.
const NEG_BIG: f32 = -1.0e30;

fn softcap(x: f32) -> f32 {
  if (p.softcap <= 0.0) {
    return x;
  }
  return p.softcap * (1.0 - 2.0 / (exp(2.0 * x / p.softcap) + 1.0));
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x;
  if (i >= p.m * p.kv_heads) {
    return;
  }
  let row = i / p.kv_heads;
  let g = i % p.kv_heads;
  let keys = row_keys(row, p.window);
  let end = keys.end;
  let bt_off = row_info[row].y;
  let q0 = (row * p.heads + g * NREP) * HD4;
  var qr: array<array<vec4<f32>, HD4>, NREP>;
  var acc: array<array<vec4<f32>, HD4>, NREP>;
  var mx: array<f32, NREP>;
  var l: array<f32, NREP>;
  for (var h = 0u; h < NREP; h++) {
    for (var d = 0u; d < HD4; d++) {
      qr[h][d] = q[q0 + h * HD4 + d];
      acc[h][d] = vec4<f32>(0.0);
    }
    mx[h] = NEG_BIG;
    l[h] = 0.0;
  }
  // From the block of the window's oldest key to the row's own.
  for (var b0 = keys.lo - keys.lo % BLOCK_TOKENS; b0 < end; b0 += BLOCK_TOKENS) {
    let base = (block_table[bt_off + b0 / BLOCK_TOKENS] * p.kv_heads + g) * BLOCK_TOKENS;
    var s: array<array<f32, BLOCK_TOKENS>, NREP>;
    var bm: array<f32, NREP>;
    for (var h = 0u; h < NREP; h++) {
      bm[h] = NEG_BIG;
    }
    // Scores of the block's keys (a slot past the row's end reads the row's own, and is hidden).
    for (var j = 0u; j < BLOCK_TOKENS; j++) {
      let slot = b0 + j;
      let hidden = slot >= end || key_hidden(keys, slot);
      let kr = base + min(j, end - 1u - b0);
      for (var h = 0u; h < NREP; h++) {
        var dotv = 0.0;
        for (var d = 0u; d < HD4; d++) {
          dotv += dot(qr[h][d], kv_k4(kr, d));
        }
        let x = select(softcap(dotv * p.scale), NEG_BIG, hidden);
        s[h][j] = x;
        bm[h] = max(bm[h], x);
      }
    }
    // Rescale what is accumulated to the new max, then add the block's probabilities · V.
    var pr: array<array<f32, BLOCK_TOKENS>, NREP>;
    for (var h = 0u; h < NREP; h++) {
      let mn = max(mx[h], bm[h]);
      let al = exp(mx[h] - mn);
      mx[h] = mn;
      l[h] *= al;
      for (var d = 0u; d < HD4; d++) {
        acc[h][d] *= al;
      }
      for (var j = 0u; j < BLOCK_TOKENS; j++) {
        // A hidden key's probability is 0 even while every key so far is hidden (max NEG_BIG).
        pr[h][j] = select(exp(s[h][j] - mn), 0.0, s[h][j] == NEG_BIG);
        l[h] += pr[h][j];
      }
    }
    for (var j = 0u; j < BLOCK_TOKENS; j++) {
      let vr = base + min(j, end - 1u - b0);
      for (var d = 0u; d < HD4; d++) {
        let v = kv_v4(vr, d);
        for (var h = 0u; h < NREP; h++) {
          acc[h][d] += pr[h][j] * v;
        }
      }
    }
  }
  for (var h = 0u; h < NREP; h++) {
    let head = row * p.heads + g * NREP + h;
    partials[head * p.splits * (HD4 + 1u)] = vec4<f32>(mx[h], l[h], 0.0, 0.0);
    for (var d = 0u; d < HD4; d++) {
      out[head * HD4 + d] = acc[h][d] / l[h];
    }
  }
}

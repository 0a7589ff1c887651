// attention_split: pass 1 of split-K decode attention over the paged KV cache. Row m attends to
// tokens lo..row_info[m].x (its position, inclusive) through the block table starting at
// row_info[m].y, like `attention`: lo is 0, or with a sliding window (p.window > 0) the oldest of
// the last `window` tokens. The keys from lo, rounded down to its 16-token block (chunks and tiles
// start on blocks), are cut in chunks of p.chunk tokens, so a sliding layer's splits past its
// window are empty and no key before the window's block is read; the few keys of that block
// before lo are masked. Workgroup
// (split s, kv head g, row m) writes, for each query head h of g's GQA group, the partial
//   l_s = Σ_{j in chunk s} e^{x_j - c},   o_s = Σ_{j in chunk s} e^{x_j - c} · v_j   (unnormalised)
// with x_j = q_h·k_j·scale, and the constant c it used; attention_merge combines the splits.
// One algorithm in one file, past 500 lines: its modes share one workgroup loop and its workgroup
// memory, and WGSL has no modules to split them into.
//
// Variants (the wrapper prefixes a KV fragment, common/kv_*.wgsl, then `const MODE: u32 = ...;`):
//   0 with p.direct = 1 (attention_decode_single_pass): the whole context is one split, so its
//     partial is the answer: o / l goes straight to `out` and no merge runs (one dispatch per layer
//     instead of 2 or 4). The record is still written: calibration reads its (c, l).
//   0 exact (attention_decode_two_pass): c = m_s, the chunk's max (online softmax over the tiles
//     of the chunk).
//   1 async softmax (attention_decode_async_softmax, FlashDecoding++'s unified max): c = phi, a
//     per-call constant, so there is no max reduction at all. A score with x - phi > OVERFLOW_B
//     sets flags[m] (atomicOr); its exponent is clamped so nothing turns into inf/NaN, and the
//     fallback recomputes the row.
//   2 the async chain's exact fallback (attention_decode_async_softmax_fallback), its last
//     dispatch: one workgroup per row takes its flag (reads and clears it: the only reader in this
//     dispatch, and the next call's async pass runs in a later one) and returns at once if it was
//     clear (no CPU readback); a flagged row is recomputed exactly over its whole context, KV head
//     after KV head, straight into `out` (no merge).
//
// Bindings: params, row_info [m] vec4<u32> (common/attention_rows.wgsl: a token tree's rows see
// their ancestors only), block_table u32, q [m, heads·head_dim] f32 (as vec4),
// k_cache, v_cache ([block][kv_head][16] token rows of the prepended KV fragment's format,
// common/kv4_*.wgsl or kv_quant.wgsl, read 4 channels at a time through kv_k4 / kv_v4), partials, flags [m] u32 (read-only in mode 0, atomic in mode 1),
// out [m, heads·head_dim] f32 (as vec4; written with p.direct and in mode 2).
// partials: one record of head_dim/4 + 1 vec4 per (row, query head, split), in that order:
// vec4(c, l, 0, 0) then o. A split that starts past the row's end writes c = NEG_BIG, l = 0, o = 0.
//
// Work mapping, chosen for lavapipe and fine on GPUs. On lavapipe (a CPU running 8 invocations per
// SIMD instruction) any load whose address depends on a loop counter is a gather, one per vec4
// component, and gathers dominate the cost; barriers are costly too. So: 64 threads serve all
// n_rep = heads / kv_heads query heads of the KV head (each K/V byte read once per workgroup), in
// blocks of 4 heads kept as the 4 lanes of vec4s and mat4x4 columns (private arrays indexed in
// loops live in memory on lavapipe: 3x slower). The chunk is walked in tiles of p.tile tokens
// (their probabilities fit workgroup memory):
//   scores: one thread per token reads that token's contiguous K row in vec4s and dots it with the
//     query heads staged in workgroup memory; each thread takes 4 (or, near the end of a tile,
//     2) tokens per step so every q load serves 32 (16) tokens of a SIMD group; with two head
//     blocks (n_rep > 4) it takes 2 tokens for both blocks at once, so each K load serves 8 heads;
//   P·V: thread t < head_dim/4 owns output dims 4t..4t+3 of every head and walks the tile's
//     tokens block by block: one V load serves all the group's heads.
//   Low-rank KV formats (GEAR's per-block error factors E ≈ A·B, A per token, B per channel) add
//     them per block, never per element, and each factor word is read by one thread: while the
//     tile's blocks are staged, thread b computes B·q of block b for every query head and then
//     A[t]·(B·q) for its 16 keys into p_sh, which the key's scorer adds to its codes' dot product
//     (stage_lr); for V, one thread per block sums Σ_t p_t·A[t] (pa_sh, with the exact modes'
//     exponentials, so no barrier is added there) and P·V adds (Σ_t p_t·A[t])·B once per block.
//     (Read per key instead, by each scorer and by each of the head_dim / 4 P·V threads, A and
//     B·q made attention 1.35x f16's on lavapipe at Qwen2.5-0.5B's heads.)
// Barriers: 1 to stage q; per tile: async 1 (2 with low-rank V), exact 3 (tile max in two stages,
// probabilities); +2 between the tiles of a chunk.

struct Params {
  heads: u32,
  kv_heads: u32,
  head_dim: u32,
  scale: f32,
  chunk: u32,
  splits: u32,
  tile: u32,
  phi: f32,
  // Sliding-window length of this layer, 0 for full attention.
  window: u32,
  // > 0: scores become softcap · tanh(score / softcap) (Gemma 2's attn_logit_softcapping).
  softcap: f32,
  // 1: one split, write the normalised output to `out` (exact mode only).
  direct: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> block_table: array<u32>;
@group(0) @binding(3) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> k_cache: array<KvCell>;
@group(0) @binding(5) var<storage, read> v_cache: array<KvCell>;
@group(0) @binding(6) var<storage, read_write> partials: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> out: array<vec4<f32>>;
// Binding 7, flags [m] u32, and flag_get / flag_set come from common/attention_flags_read (mode 0)
// or common/attention_flags_write (mode 1).

const WG: u32 = 64u;
const BLOCK_TOKENS: u32 = 16u;
// q of the group, heads padded to whole blocks of 4: blocks · 4 · head_dim/4 <= Q_CAP vec4s.
const Q_CAP: u32 = 256u;
// Probabilities of one tile, [block][token] vec4 (one lane per head): blocks · tile <= P_CAP.
const P_CAP: u32 = 512u;
// Blocks of a tile: tile <= P_CAP tokens.
const TILE_BLOCKS: u32 = 32u;
// A finite "minus infinity": e^(NEG_BIG - m) is 0 and NEG_BIG - NEG_BIG is 0, never NaN.
const NEG_BIG: f32 = -1.0e30;
// Largest x - phi the async variant accepts: e^60 ≈ 1.1e26, so a chunk's sum of up to 2^24 terms
// and its product with |v| up to ~1e5 stay below f32's 3.4e38.
const OVERFLOW_B: f32 = 60.0;

var<workgroup> q_sh: array<vec4<f32>, Q_CAP>;
var<workgroup> p_sh: array<vec4<f32>, P_CAP>;
// Physical blocks of the current tile: one load per block instead of one per token and lane.
var<workgroup> bt_sh: array<u32, TILE_BLOCKS>;
// Low-rank KV formats: Σ_k p_k·A[k] of each block of the tile (V's factors), [head block][block]
// [rank] (rank 2), lanes the head block's 4 query heads: P·V adds it times the block's B, and no
// P·V thread sums it per channel.
const PA_CAP: u32 = 64u; // P_CAP / BLOCK_TOKENS · 2
var<workgroup> pa_sh: array<vec4<f32>, PA_CAP>;
// Exact modes: per-thread maxima of the tile's scores [block][thread], then per 8 threads.
var<workgroup> red: array<vec4<f32>, 128>; // 2 * WG
var<workgroup> red8: array<vec4<f32>, 16>; // 2 * 8

// Stages the physical blocks of the tile of `n` tokens from t0 (a multiple of 16, as chunks and
// tiles are).
fn stage_blocks(bt_off: u32, t0: u32, n: u32, t: u32) {
  if (t < (n + BLOCK_TOKENS - 1u) / BLOCK_TOKENS) {
    bt_sh[t] = block_table[bt_off + t0 / BLOCK_TOKENS + t];
  }
}

// Low-rank formats: the low-rank part of each key's score, A[t]·(B·q) for every query head, for
// the tile of `n` tokens from t0, staged in p_sh where the key's score goes next ([head block]
// [token], lanes the head block's 4 heads). Thread t takes block t: B·q of both ranks (each q load
// serves 2), then A[t]·(B·q) for the block's rows, so scoring a key reads one staged vec4 per head
// block on top of its codes (no A, no B·q). q and the block table come from global memory (q of a
// head past n_rep is zero) so that this shares stage_blocks' barrier, before the first tile too.
fn stage_lr(bt_off: u32, t0: u32, n: u32, g: u32, q0: u32, n_rep: u32, hd4: u32, blocks: u32,
            t: u32) {
  let j0 = t * BLOCK_TOKENS;
  if (j0 >= n) {
    return;
  }
  let f = kv_fac((block_table[bt_off + t0 / BLOCK_TOKENS + t] * p.kv_heads + g) * BLOCK_TOKENS);
  let kn = min(BLOCK_TOKENS, n - j0);
  for (var hb = 0u; hb < blocks; hb++) {
    var s0 = vec4<f32>(0.0);
    var s1 = vec4<f32>(0.0);
    if (f != 0xffffffffu) {
      let qh = q0 + 4u * hb * hd4;
      for (var d4 = 0u; d4 < hd4; d4++) {
        let b0 = kv_k_b4(f, 0u, d4);
        let b1 = kv_k_b4(f, 1u, d4);
        let qa = q[qh + d4];
        let qb = q[qh + hd4 + d4];
        let qc = q[qh + 2u * hd4 + d4];
        let qd = q[qh + 3u * hd4 + d4];
        s0 += vec4<f32>(dot(qa, b0), dot(qb, b0), dot(qc, b0), dot(qd, b0));
        s1 += vec4<f32>(dot(qa, b1), dot(qb, b1), dot(qc, b1), dot(qd, b1));
      }
      let live = vec4<u32>(4u * hb) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(n_rep);
      s0 = select(vec4<f32>(0.0), s0, live);
      s1 = select(vec4<f32>(0.0), s1, live);
    }
    for (var k = 0u; k < kn; k++) {
      var x = vec4<f32>(0.0);
      if (f != 0xffffffffu) {
        let a = kv_k_af(f, k);
        x = a.x * s0 + a.y * s1;
      }
      p_sh[hb * p.tile + j0 + k] = x;
    }
  }
}

// Low-rank formats: the staged low-rank score term of the tile's token j for the head block whose
// scores start at p_sh[base]; 0 for a lane past the tile's end (it redoes the last token, masked,
// and reads nothing the token's own thread is about to overwrite).
fn lr_at(base: u32, j: u32, n: u32) -> vec4<f32> {
  if (KV_RANK == 0u || j >= n) {
    return vec4<f32>(0.0);
  }
  return p_sh[base + j];
}

// pa_sh index of the tile's block that holds token j (< n), for head block hb.
fn pa_at(hb: u32, j: u32) -> u32 {
  return ((hb * p.tile + j) / BLOCK_TOKENS) * 2u;
}

// Low-rank formats, thread t < 32 (one per block and head block of a full tile: tile / 16 blocks per
// head block, tile · blocks <= P_CAP): Σ_k p_k·A[k] of V's factors over its block's probabilities
// into pa_sh, after turning them into probabilities first where `m` is given (exact modes: the
// block's scores minus the head block's max, exponentiated). A block stays with one thread so its
// 16 A words are read once per head block, not once per row by each of the head_dim / 4 P·V threads.
fn stage_pa(n: u32, g: u32, t: u32, blocks: u32, exact: bool, m_a: vec4<f32>, m_b: vec4<f32>) {
  let per = p.tile / BLOCK_TOKENS;
  let hb = t / per;
  let j0 = (t % per) * BLOCK_TOKENS;
  if (hb >= blocks || j0 >= n) {
    return;
  }
  let m = select(m_a, m_b, hb == 1u);
  let base = hb * p.tile + j0;
  let f = kv_fac((bt_sh[j0 / BLOCK_TOKENS] * p.kv_heads + g) * BLOCK_TOKENS);
  var u0 = vec4<f32>(0.0);
  var u1 = vec4<f32>(0.0);
  for (var k = 0u; k < min(BLOCK_TOKENS, n - j0); k++) {
    var pr = p_sh[base + k];
    if (exact) {
      pr = exp(pr - m);
      p_sh[base + k] = pr;
    }
    if (f != 0xffffffffu) {
      let a = kv_v_af(f, k);
      u0 += pr * a.x;
      u1 += pr * a.y;
    }
  }
  let i = pa_at(hb, j0);
  pa_sh[i] = u0;
  pa_sh[i + 1u] = u1;
}

// Token i of the ones a thread scores in the step from j0: WG apart, so a SIMD group reads adjacent
// rows.
fn tok(j0: u32, t: u32, i: u32) -> u32 {
  return j0 + t + i * WG;
}

// Token row (the fragment loads' first argument) of the tile's token `j` for KV head `g`.
fn kv_row(g: u32, j: u32, hd4: u32) -> u32 {
  return (bt_sh[j / BLOCK_TOKENS] * p.kv_heads + g) * BLOCK_TOKENS + j % BLOCK_TOKENS;
}

// Unscaled scores of the K rows at ka..kd (4 tokens, the columns) against the 4 query heads whose
// q starts at q_sh[qb] (the lanes); the low-rank formats' term is the caller's (lr_at).
fn scores4(ka: u32, kb: u32, kc: u32, kd: u32, qb: u32, hd4: u32) -> mat4x4<f32> {
  var s = mat4x4<f32>();
  // A compressed row's shared words (scale, outliers) once per row, not per 4 channels.
  let ra = kv_k_row(ka);
  let rb = kv_k_row(kb);
  let rc = kv_k_row(kc);
  let rd = kv_k_row(kd);
  for (var d4 = 0u; d4 < hd4; d4++) {
    let q0 = q_sh[qb + d4];
    let q1 = q_sh[qb + hd4 + d4];
    let q2 = q_sh[qb + 2u * hd4 + d4];
    let q3 = q_sh[qb + 3u * hd4 + d4];
    let k0 = kv_k4r(ra, d4);
    let k1 = kv_k4r(rb, d4);
    let k2 = kv_k4r(rc, d4);
    let k3 = kv_k4r(rd, d4);
    s += mat4x4<f32>(
      vec4<f32>(dot(q0, k0), dot(q1, k0), dot(q2, k0), dot(q3, k0)),
      vec4<f32>(dot(q0, k1), dot(q1, k1), dot(q2, k1), dot(q3, k1)),
      vec4<f32>(dot(q0, k2), dot(q1, k2), dot(q2, k2), dot(q3, k2)),
      vec4<f32>(dot(q0, k3), dot(q1, k3), dot(q2, k3), dot(q3, k3)),
    );
  }
  return s;
}

// scores4 for 2 tokens: the tail of a tile, where 4 per thread would mostly redo the last token.
// Soft-capping of scaled scores, cap · tanh(x / cap), with tanh as 1 − 2 / (e^(2y) + 1), which
// saturates to ±1 instead of overflowing for large |y|; cap 0 leaves x as it is.
fn softcap(x: vec4<f32>) -> vec4<f32> {
  if (p.softcap <= 0.0) {
    return x;
  }
  return p.softcap * (1.0 - 2.0 / (exp(2.0 * x / p.softcap) + 1.0));
}

fn capped4(x: mat4x4<f32>) -> mat4x4<f32> {
  return mat4x4<f32>(softcap(x[0]), softcap(x[1]), softcap(x[2]), softcap(x[3]));
}

fn capped2(x: mat2x4<f32>) -> mat2x4<f32> {
  return mat2x4<f32>(softcap(x[0]), softcap(x[1]));
}

// Scores of 2 tokens for both head blocks (n_rep > 4): each K load serves 8 heads, where two
// scores2 calls would load every K cell twice.
struct Scores2x2 {
  a: mat2x4<f32>,
  b: mat2x4<f32>,
}

fn scores2x2(ka: u32, kb: u32, hd4: u32) -> Scores2x2 {
  let ra = kv_k_row(ka);
  let rb = kv_k_row(kb);
  var sa = mat2x4<f32>();
  var sb = mat2x4<f32>();
  for (var d4 = 0u; d4 < hd4; d4++) {
    let k0 = kv_k4r(ra, d4);
    let k1 = kv_k4r(rb, d4);
    let q0 = q_sh[d4];
    let q1 = q_sh[hd4 + d4];
    let q2 = q_sh[2u * hd4 + d4];
    let q3 = q_sh[3u * hd4 + d4];
    sa += mat2x4<f32>(
      vec4<f32>(dot(q0, k0), dot(q1, k0), dot(q2, k0), dot(q3, k0)),
      vec4<f32>(dot(q0, k1), dot(q1, k1), dot(q2, k1), dot(q3, k1)),
    );
    let q4 = q_sh[4u * hd4 + d4];
    let q5 = q_sh[5u * hd4 + d4];
    let q6 = q_sh[6u * hd4 + d4];
    let q7 = q_sh[7u * hd4 + d4];
    sb += mat2x4<f32>(
      vec4<f32>(dot(q4, k0), dot(q5, k0), dot(q6, k0), dot(q7, k0)),
      vec4<f32>(dot(q4, k1), dot(q5, k1), dot(q6, k1), dot(q7, k1)),
    );
  }
  return Scores2x2(sa, sb);
}

fn scores2(ka: u32, kb: u32, qb: u32, hd4: u32) -> mat2x4<f32> {
  var s = mat2x4<f32>();
  let ra = kv_k_row(ka);
  let rb = kv_k_row(kb);
  for (var d4 = 0u; d4 < hd4; d4++) {
    let q0 = q_sh[qb + d4];
    let q1 = q_sh[qb + hd4 + d4];
    let q2 = q_sh[qb + 2u * hd4 + d4];
    let q3 = q_sh[qb + 3u * hd4 + d4];
    let k0 = kv_k4r(ra, d4);
    let k1 = kv_k4r(rb, d4);
    s += mat2x4<f32>(
      vec4<f32>(dot(q0, k0), dot(q1, k0), dot(q2, k0), dot(q3, k0)),
      vec4<f32>(dot(q0, k1), dot(q1, k1), dot(q2, k1), dot(q3, k1)),
    );
  }
  return s;
}

// Takes the scaled scores x of token j for the head block whose probabilities start at p_sh[base]
// (j >= n: a lane redoing the tile's last token, without its low-rank term: taken as masked, so it
// touches no max, flag or store). Async: stores e^(x - phi) and checks the window; exact: stores x
// and tracks the lane's max. A `masked` token (before the sliding window, or a token tree's slot
// off the row's path) scores NEG_BIG: probability 0, no overflow, no max. A tile (or split) whose
// keys are all masked gets the max NEG_BIG and probabilities e^0 = 1, which the next tile's
// rescale e^(NEG_BIG - max) (or the merge's weight) zeroes: the row's own key, always seen, is in
// the last tile of the last split.
fn take(j: u32, n: u32, x_in: vec4<f32>, base: u32, live: vec4<bool>, masked: bool,
        lm: ptr<function, vec4<f32>>, overflow: ptr<function, bool>) {
  let x = select(x_in, vec4<f32>(NEG_BIG), masked || j >= n);
  if (MODE == 1u) {
    let e = x - p.phi;
    *overflow = *overflow || any(live & (e > vec4<f32>(OVERFLOW_B)));
    if (j < n) {
      p_sh[base + j] = exp(min(e, vec4<f32>(OVERFLOW_B)));
    }
  } else {
    *lm = max(*lm, x);
    if (j < n) {
      p_sh[base + j] = x;
    }
  }
}

// Max over the 8 per-8-thread maxima of one head block (constant addresses: plain loads).
fn max8(b: u32) -> vec4<f32> {
  return max(
    max(max(red8[b], red8[b + 1u]), max(red8[b + 2u], red8[b + 3u])),
    max(max(red8[b + 4u], red8[b + 5u]), max(red8[b + 6u], red8[b + 7u])),
  );
}

// acc's column h scaled by al[h] (rescaling head h's accumulator when its max grows).
fn scale_cols(acc: mat4x4<f32>, al: vec4<f32>) -> mat4x4<f32> {
  return mat4x4<f32>(acc[0] * al.x, acc[1] * al.y, acc[2] * al.z, acc[3] * al.w);
}

// pr[h] · v in column h: one token's contribution to 4 heads' outputs.
fn outer(v: vec4<f32>, pr: vec4<f32>) -> mat4x4<f32> {
  return mat4x4<f32>(v * pr.x, v * pr.y, v * pr.z, v * pr.w);
}

// Writes one head's partial record (thread t holds vec4 t of o, thread 0 the header) and, in a
// single pass, that head's output vec4 t at out[o_at].
fn put(rec: u32, o_at: u32, t: u32, o: vec4<f32>, c: f32, l: f32) {
  if (MODE != 2u) {
    partials[rec + 1u + t] = o;
    if (t == 0u) {
      partials[rec] = vec4<f32>(c, l, 0.0, 0.0);
    }
  }
  if (p.direct != 0u || MODE == 2u) {
    out[o_at] = o / l;
  }
}

var<workgroup> flag_sh: u32;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  if (MODE == 2u) {
    if (t == 0u) {
      flag_sh = flag_take(wid.z);
    }
    if (workgroupUniformLoad(&flag_sh) == 0u) {
      return;
    }
    for (var g = 0u; g < p.kv_heads; g++) {
      if (g > 0u) {
        // The previous head's P·V must be done with p_sh and bt_sh, its put with q_sh.
        workgroupBarrier();
      }
      attend(0u, g, wid.z, t);
    }
    return;
  }
  attend(wid.x, wid.y, wid.z, t);
}

// Split `split` of row `row` for KV head `g` (mode 2: the whole context as one split).
fn attend(split: u32, g: u32, row: u32, t: u32) {
  let hd4 = p.head_dim / 4u;
  let n_rep = p.heads / p.kv_heads;
  // Query heads go in blocks of 4: A = heads 0..3, B = heads 4..7 when n_rep > 4.
  let two = n_rep > 4u;
  let blocks = select(1u, 2u, two);
  let keys = row_keys(row, p.window);
  let ctx_len = keys.end;
  let bt_off = row_info[row].y;
  // Low-rank KV formats leave out the factors of the row's own block (its future rows shaped them).
  kv_own_block = block_table[bt_off + (ctx_len - 1u) / BLOCK_TOKENS];
  let lo = keys.lo;
  let c0 = lo - lo % BLOCK_TOKENS + split * p.chunk;
  let c1 = select(min(c0 + p.chunk, ctx_len), ctx_len, MODE == 2u);
  let rec_len = hd4 + 1u;
  // Record of (row, head g·n_rep + h, split) = rec0 + h · head_stride.
  let head_stride = p.splits * rec_len;
  let rec0 = ((row * p.heads + g * n_rep) * p.splits + split) * rec_len;

  if (c0 >= ctx_len) {
    // A split past the sequence end: an empty partial, so the merge may read every split.
    for (var i = t; i < n_rep * rec_len; i += WG) {
      let c = i % rec_len;
      partials[rec0 + (i / rec_len) * head_stride + c] =
        select(vec4<f32>(0.0), vec4<f32>(NEG_BIG, 0.0, 0.0, 0.0), c == 0u);
    }
    return;
  }

  // Stage q (heads past n_rep, the padding of the last block, are zero) and the first tile's
  // blocks.
  let q0 = (row * p.heads + g * n_rep) * hd4;
  for (var i = t; i < blocks * 4u * hd4; i += WG) {
    q_sh[i] = select(vec4<f32>(0.0), q[q0 + i], i / hd4 < n_rep);
  }
  stage_blocks(bt_off, c0, min(p.tile, c1 - c0), t);
  if (KV_RANK > 0u) {
    stage_lr(bt_off, c0, min(p.tile, c1 - c0), g, q0, n_rep, hd4, blocks, t);
  }
  workgroupBarrier();

  let live_a = vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(n_rep);
  let live_b = vec4<u32>(4u, 5u, 6u, 7u) < vec4<u32>(n_rep);
  let qb_b = 4u * hd4;
  let tile_b = p.tile;
  // Accumulators [dims half][head block]: column h holds this thread's 4 dims of head h.
  var acc_a = mat4x4<f32>();
  var acc_b = mat4x4<f32>();
  // Sums and maxima, one lane per head.
  var l_a = vec4<f32>(0.0);
  var l_b = vec4<f32>(0.0);
  var m_a = vec4<f32>(NEG_BIG);
  var m_b = vec4<f32>(NEG_BIG);
  var overflow = false;

  for (var t0 = c0; t0 < c1; t0 += p.tile) {
    let n = min(p.tile, c1 - t0);
    if (t0 != c0) {
      // The previous tile's P·V must be done with p_sh and bt_sh before they are rewritten.
      workgroupBarrier();
      stage_blocks(bt_off, t0, n, t);
      if (KV_RANK > 0u) {
        stage_lr(bt_off, t0, n, g, q0, n_rep, hd4, blocks, t);
      }
      workgroupBarrier();
    }

    // Scores: one thread per token. The step is uniform (lanes past the tile's end redo its last
    // token and skip the stores) so every q_sh load serves all lanes.
    var lm_a = vec4<f32>(NEG_BIG);
    var lm_b = vec4<f32>(NEG_BIG);
    var j0 = 0u;
    loop {
      if (j0 >= n) {
        break;
      }
      // Tokens per thread in this step: 4 while more than 2·WG remain of the tile (one head
      // block), else 2.
      let k = select(2u, 4u, !two && n - j0 > 2u * WG);
      let ja = tok(j0, t, 0u);
      let jb = tok(j0, t, 1u);
      let ka = kv_row(g, min(ja, n - 1u), hd4);
      let kb = kv_row(g, min(jb, n - 1u), hd4);
      if (two) {
        var sc = scores2x2(ka, kb, hd4);
        if (KV_RANK > 0u) {
          sc.a += mat2x4<f32>(lr_at(0u, ja, n), lr_at(0u, jb, n));
          sc.b += mat2x4<f32>(lr_at(tile_b, ja, n), lr_at(tile_b, jb, n));
        }
        let xa = capped2(sc.a * p.scale);
        let xb = capped2(sc.b * p.scale);
        take(ja, n, xa[0], 0u, live_a, key_hidden(keys, t0 + min(ja, n - 1u)), &lm_a, &overflow);
        take(jb, n, xa[1], 0u, live_a, key_hidden(keys, t0 + min(jb, n - 1u)), &lm_a, &overflow);
        take(ja, n, xb[0], tile_b, live_b, key_hidden(keys, t0 + min(ja, n - 1u)), &lm_b, &overflow);
        take(jb, n, xb[1], tile_b, live_b, key_hidden(keys, t0 + min(jb, n - 1u)), &lm_b, &overflow);
        j0 += 2u * WG;
      } else if (k == 4u) {
        let jc = tok(j0, t, 2u);
        let jd = tok(j0, t, 3u);
        let kc = kv_row(g, min(jc, n - 1u), hd4);
        let kd = kv_row(g, min(jd, n - 1u), hd4);
        for (var hb = 0u; hb < blocks; hb++) {
          let live = select(live_a, live_b, hb == 1u);
          var lm = select(lm_a, lm_b, hb == 1u);
          var sc = scores4(ka, kb, kc, kd, hb * qb_b, hd4);
          if (KV_RANK > 0u) {
            let lb = hb * tile_b;
            sc += mat4x4<f32>(lr_at(lb, ja, n), lr_at(lb, jb, n), lr_at(lb, jc, n), lr_at(lb, jd, n));
          }
          let x = capped4(sc * p.scale);
          take(ja, n, x[0], hb * tile_b, live, key_hidden(keys, t0 + min(ja, n - 1u)), &lm, &overflow);
          take(jb, n, x[1], hb * tile_b, live, key_hidden(keys, t0 + min(jb, n - 1u)), &lm, &overflow);
          take(jc, n, x[2], hb * tile_b, live, key_hidden(keys, t0 + min(jc, n - 1u)), &lm, &overflow);
          take(jd, n, x[3], hb * tile_b, live, key_hidden(keys, t0 + min(jd, n - 1u)), &lm, &overflow);
          if (hb == 0u) {
            lm_a = lm;
          } else {
            lm_b = lm;
          }
        }
        j0 += 4u * WG;
      } else {
        for (var hb = 0u; hb < blocks; hb++) {
          let live = select(live_a, live_b, hb == 1u);
          var lm = select(lm_a, lm_b, hb == 1u);
          var sc = scores2(ka, kb, hb * qb_b, hd4);
          if (KV_RANK > 0u) {
            sc += mat2x4<f32>(lr_at(hb * tile_b, ja, n), lr_at(hb * tile_b, jb, n));
          }
          let x = capped2(sc * p.scale);
          take(ja, n, x[0], hb * tile_b, live, key_hidden(keys, t0 + min(ja, n - 1u)), &lm, &overflow);
          take(jb, n, x[1], hb * tile_b, live, key_hidden(keys, t0 + min(jb, n - 1u)), &lm, &overflow);
          if (hb == 0u) {
            lm_a = lm;
          } else {
            lm_b = lm;
          }
        }
        j0 += 2u * WG;
      }
    }

    if (MODE != 1u) {
      // The tile's max per head, in two stages (8 threads reduce 8 maxima each, then everyone
      // reads those 8) to keep lavapipe's gathers few; then rescale what is accumulated and turn
      // this thread's own scores into probabilities.
      red[t] = lm_a;
      red[WG + t] = lm_b;
      workgroupBarrier();
      if (t < 8u) {
        var ra = red[8u * t];
        var rb = red[WG + 8u * t];
        for (var i = 1u; i < 8u; i++) {
          ra = max(ra, red[8u * t + i]);
          rb = max(rb, red[WG + 8u * t + i]);
        }
        red8[t] = ra;
        red8[8u + t] = rb;
      }
      workgroupBarrier();
      let mt_a = max(m_a, max8(0u));
      let mt_b = max(m_b, max8(8u));
      let al_a = exp(m_a - mt_a);
      let al_b = exp(m_b - mt_b);
      m_a = mt_a;
      m_b = mt_b;
      acc_a = scale_cols(acc_a, al_a);
      acc_b = scale_cols(acc_b, al_b);
      l_a *= al_a;
      l_b *= al_b;
      if (KV_RANK > 0u) {
        stage_pa(n, g, t, blocks, true, m_a, m_b);
      } else {
        for (var j = t; j < n; j += WG) {
          p_sh[j] = exp(p_sh[j] - m_a);
          if (two) {
            p_sh[tile_b + j] = exp(p_sh[tile_b + j] - m_b);
          }
        }
      }
    }
    workgroupBarrier();
    if (MODE == 1u && KV_RANK > 0u) {
      // The async scores wrote probabilities token by token, across threads: one more barrier.
      stage_pa(n, g, t, blocks, false, m_a, m_b);
      workgroupBarrier();
    }

    // P·V, block by block (one block-table entry per 16 tokens).
    if (t < hd4) {
      for (var b0 = 0u; b0 < n; b0 += BLOCK_TOKENS) {
        let base = (bt_sh[b0 / BLOCK_TOKENS] * p.kv_heads + g) * BLOCK_TOKENS;
        let kn = min(BLOCK_TOKENS, n - b0);
        // A compressed block's words shared by its rows' channels 4t..4t+3 (low-rank B), once.
        let blk = kv_v_blk(base, t);
        for (var k = 0u; k < kn; k++) {
          let v = kv_v4b(blk, base + k, t);
          let pa = p_sh[b0 + k];
          acc_a += outer(v, pa);
          l_a += pa;
          if (two) {
            let pb = p_sh[tile_b + b0 + k];
            acc_b += outer(v, pb);
            l_b += pb;
          }
        }
        if (KV_RANK > 0u) {
          // Low-rank formats: one rank-2 update with the block's B and its Σ p·A (pa_sh).
          let vb0 = kv_v_b(blk, 0u);
          let vb1 = kv_v_b(blk, 1u);
          let ia = pa_at(0u, b0);
          acc_a += outer(vb0, pa_sh[ia]) + outer(vb1, pa_sh[ia + 1u]);
          if (two) {
            let ib = pa_at(1u, b0);
            acc_b += outer(vb0, pa_sh[ib]) + outer(vb1, pa_sh[ib + 1u]);
          }
        }
      }
    }
  }

  if (MODE == 1u) {
    if (overflow) {
      flag_set(row);
    }
    m_a = vec4<f32>(p.phi);
    m_b = vec4<f32>(p.phi);
  }
  if (t < hd4) {
    // out[row, g·n_rep + h] at out0 + h · hd4.
    let out0 = (row * p.heads + g * n_rep) * hd4 + t;
    put(rec0, out0, t, acc_a[0], m_a.x, l_a.x);
    if (n_rep > 1u) {
      put(rec0 + head_stride, out0 + 1u * hd4, t, acc_a[1], m_a.y, l_a.y);
    }
    if (n_rep > 2u) {
      put(rec0 + 2u * head_stride, out0 + 2u * hd4, t, acc_a[2], m_a.z, l_a.z);
    }
    if (n_rep > 3u) {
      put(rec0 + 3u * head_stride, out0 + 3u * hd4, t, acc_a[3], m_a.w, l_a.w);
    }
    if (n_rep > 4u) {
      put(rec0 + 4u * head_stride, out0 + 4u * hd4, t, acc_b[0], m_b.x, l_b.x);
    }
    if (n_rep > 5u) {
      put(rec0 + 5u * head_stride, out0 + 5u * hd4, t, acc_b[1], m_b.y, l_b.y);
    }
    if (n_rep > 6u) {
      put(rec0 + 6u * head_stride, out0 + 6u * hd4, t, acc_b[2], m_b.z, l_b.z);
    }
    if (n_rep > 7u) {
      put(rec0 + 7u * head_stride, out0 + 7u * hd4, t, acc_b[3], m_b.w, l_b.w);
    }
  }
}

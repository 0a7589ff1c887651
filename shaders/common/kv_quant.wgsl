// KV-cache fragment: quantized K and V (src/kernels/kv-dtype.ts has the format), after the
// wrapper's `const KV_BITS`, `const KV_OUTLIERS` and `const KV_RANK`. A token row of one KV head
// is u32 words: codes (channel d at word d·KV_BITS/32, bit (d·KV_BITS) % 32), the (scale, min) f16
// pair, then KV_OUTLIERS words (channel in the low 16 bits, f16 residual in the high ones, channel
// 0xffff for none). x = code · scale + min (+ the residual for an outlier channel). With
// KV_RANK > 0 the 16 rows of a (block, KV head) are followed by its low-rank factors, A
// [16][KV_RANK] then B [KV_RANK][head_dim] f16, and x += Σ_j A[t][j] · B[j][d] unless the row's
// block is kv_own_block. The loads decode straight from the cache: there is no f16 copy of it
// anywhere.
alias KvCell = u32;

const KVQ_MASK: u32 = (1u << KV_BITS) - 1u;
const KVQ_BLOCK: u32 = 16u;

// The physical block of the query a kernel is reading keys for (set by the attention kernels):
// its own block's rows after it are its future, so that block's factors are left out. Only
// low-rank formats look at it.
var<private> kv_own_block: u32 = 0xffffffffu;

// Words per row: codes, the (scale, min) word, the outliers.
fn kvq_code_words() -> u32 {
  return (p.head_dim * KV_BITS + 31u) / 32u;
}

fn kvq_row_words() -> u32 {
  return kvq_code_words() + 1u + KV_OUTLIERS;
}

// Words of one (block, KV head): 16 rows, then the factors.
fn kvq_group_words() -> u32 {
  return KVQ_BLOCK * kvq_row_words() + KV_RANK * (KVQ_BLOCK + p.head_dim) / 2u;
}

// First word of token row `row` ((block · kv_heads + kv_head) · 16 + token).
fn kvq_row_base(row: u32) -> u32 {
  if (KV_RANK == 0u) {
    return row * kvq_row_words();
  }
  return (row / KVQ_BLOCK) * kvq_group_words() + (row % KVQ_BLOCK) * kvq_row_words();
}

// First factor word of the (block, KV head) of `row`.
fn kvq_factor_base(row: u32) -> u32 {
  return (row / KVQ_BLOCK) * kvq_group_words() + KVQ_BLOCK * kvq_row_words();
}

// Whether a load of `row` adds the low-rank term.
fn kvq_lowrank_on(row: u32) -> bool {
  return KV_RANK > 0u && row / KVQ_BLOCK / p.kv_heads != kv_own_block;
}

// Codes of channels 4·d4..4·d4+3 from their word w: dequantized with sm = (scale, min).
fn kvq_dequant4(w: u32, d4: u32, sm: vec2<f32>) -> vec4<f32> {
  let x = w >> ((4u * d4 * KV_BITS) % 32u);
  let c = vec4<u32>(x, x >> KV_BITS, x >> (2u * KV_BITS), x >> (3u * KV_BITS)) & vec4<u32>(KVQ_MASK);
  return vec4<f32>(c) * sm.x + sm.y;
}

// The residual of outlier word o if its channel falls in 4·d4..4·d4+3, in that lane.
fn kvq_patch4(o: u32, d4: u32) -> vec4<f32> {
  let ch = o & 0xffffu;
  let r = unpack2x16float(o >> 16u).x;
  return select(vec4<f32>(0.0), vec4<f32>(r), vec4<u32>(ch) == vec4<u32>(4u * d4) + vec4<u32>(0u, 1u, 2u, 3u));
}

fn kvq_dequant1(w: u32, d: u32, sm: vec2<f32>) -> f32 {
  return f32((w >> ((d * KV_BITS) % 32u)) & KVQ_MASK) * sm.x + sm.y;
}

fn kvq_patch1(o: u32, d: u32) -> f32 {
  return select(0.0, unpack2x16float(o >> 16u).x, (o & 0xffffu) == d);
}

// Word index (from the factor base) of A[t][j] (j even: A[t][j], A[t][j + 1] in one word) and of
// B[j][d] (d even).
fn kvq_a_word(t: u32, j: u32) -> u32 {
  return (t * KV_RANK + j) / 2u;
}

fn kvq_b_word(j: u32, d: u32) -> u32 {
  return (KVQ_BLOCK * KV_RANK + j * p.head_dim + d) / 2u;
}

// A K row's words that every 4-channel load of it needs, read once (split-K attention's scores
// read a row 4 channels at a time over head_dim / 4 steps): its first word, (scale, min), the
// outliers' channels (0xffffffff: none, a channel no load matches) and residuals. kv_k4r leaves
// the low-rank term out: the attention kernels add it per key as q·(A[t]·B) = A[t]·(B·q), with B·q
// once per (block, query head) from kv_fac / kv_k_b4 and A[t] from kv_k_af, so a key costs
// KV_RANK MACs instead of B's words per 4 channels. The split-K views have rank 2.
struct KvRow {
  base: u32,
  sm: vec2<f32>,
  oc: vec4<u32>,
  ores: vec4<f32>,
}

const KVQ_NONE: u32 = 0xffffffffu;

fn kv_k_row(row: u32) -> KvRow {
  let r = kvq_row_base(row);
  let cw = kvq_code_words();
  var oc = vec4<u32>(KVQ_NONE);
  var ores = vec4<f32>(0.0);
  for (var i = 0u; i < KV_OUTLIERS; i++) {
    let w = k_cache[r + cw + 1u + i];
    oc[i] = w & 0xffffu;
    ores[i] = unpack2x16float(w >> 16u).x;
  }
  return KvRow(r, unpack2x16float(k_cache[r + cw]), oc, ores);
}

// Channels 4·d4..4·d4+3 of the row: codes and outliers, without the low-rank term.
fn kv_k4r(r: KvRow, d4: u32) -> vec4<f32> {
  var x = kvq_dequant4(k_cache[r.base + (4u * d4 * KV_BITS) / 32u], d4, r.sm);
  let ch = vec4<u32>(4u * d4) + vec4<u32>(0u, 1u, 2u, 3u);
  for (var o = 0u; o < KV_OUTLIERS; o++) {
    x += select(vec4<f32>(0.0), vec4<f32>(r.ores[o]), vec4<u32>(r.oc[o]) == ch);
  }
  return x;
}

// Factor base of the (block, KV head) whose first row is `row0`, in K or V (the same layout),
// KVQ_NONE where its factors do not apply (the query's own block).
fn kv_fac(row0: u32) -> u32 {
  return select(KVQ_NONE, kvq_factor_base(row0), kvq_lowrank_on(row0));
}

// A[t][0..1] of the K factors at base `f` (not KVQ_NONE).
fn kv_k_af(f: u32, t: u32) -> vec2<f32> {
  return unpack2x16float(k_cache[f + kvq_a_word(t, 0u)]);
}

// B[j][4·d4..4·d4+3] of the K factors at base `f`.
fn kv_k_b4(f: u32, j: u32, d4: u32) -> vec4<f32> {
  let b = f + kvq_b_word(j, 4u * d4);
  return vec4<f32>(unpack2x16float(k_cache[b]), unpack2x16float(k_cache[b + 1u]));
}

// The whole element, low-rank term included (for kernels that read single rows).
fn kv_k4(row: u32, d4: u32) -> vec4<f32> {
  let r = kv_k_row(row);
  var x = kv_k4r(r, d4);
  if (KV_RANK > 0u) {
    let f = kv_fac(row - row % KVQ_BLOCK);
    if (f != KVQ_NONE) {
      let a = kv_k_af(f, row % KVQ_BLOCK);
      x += a.x * kv_k_b4(f, 0u, d4) + a.y * kv_k_b4(f, 1u, d4);
    }
  }
  return x;
}

// B[0..1][4·d4..4·d4+3] of one (block, KV head) of V (split-K attention's P·V reads a block's
// rows 4 channels per thread: their factor words are the same for all 16), zero where the block's
// factors do not apply. kv_v4b leaves the low-rank term out: P·V adds it per block,
// Σ_t p_t·A[t]·B = (Σ_t p_t·A[t])·B, with Σ_t p_t·A[t] summed once per block for all channels
// (kv_fac / kv_v_af) and B from kv_v_b.
struct KvBlk {
  b0: vec4<f32>,
  b1: vec4<f32>,
  // The factor base, KVQ_NONE where the block's factors do not apply.
  f: u32,
}

// `row0`: the block's first row for the KV head.
fn kv_v_blk(row0: u32, d4: u32) -> KvBlk {
  var blk = KvBlk(vec4<f32>(0.0), vec4<f32>(0.0), KVQ_NONE);
  if (kvq_lowrank_on(row0)) {
    let f = kvq_factor_base(row0);
    blk.f = f;
    let b0 = f + kvq_b_word(0u, 4u * d4);
    let b1 = f + kvq_b_word(1u, 4u * d4);
    blk.b0 = vec4<f32>(unpack2x16float(v_cache[b0]), unpack2x16float(v_cache[b0 + 1u]));
    blk.b1 = vec4<f32>(unpack2x16float(v_cache[b1]), unpack2x16float(v_cache[b1 + 1u]));
  }
  return blk;
}

fn kv_v_b(blk: KvBlk, j: u32) -> vec4<f32> {
  return select(blk.b1, blk.b0, j == 0u);
}

// A[t][0..1] of the V factors at base `f` (not KVQ_NONE).
fn kv_v_af(f: u32, t: u32) -> vec2<f32> {
  return unpack2x16float(v_cache[f + kvq_a_word(t, 0u)]);
}

// Channels 4·d4..4·d4+3 of a V row of the block `blk` was read for: codes and outliers.
fn kv_v4b(blk: KvBlk, row: u32, d4: u32) -> vec4<f32> {
  let cw = kvq_code_words();
  let r = kvq_row_base(row);
  var x = kvq_dequant4(v_cache[r + (4u * d4 * KV_BITS) / 32u], d4, unpack2x16float(v_cache[r + cw]));
  for (var o = 0u; o < KV_OUTLIERS; o++) {
    x += kvq_patch4(v_cache[r + cw + 1u + o], d4);
  }
  return x;
}

fn kv_v4(row: u32, d4: u32) -> vec4<f32> {
  let blk = kv_v_blk(row - row % KVQ_BLOCK, d4);
  var x = kv_v4b(blk, row, d4);
  if (KV_RANK > 0u && blk.f != KVQ_NONE) {
    let a = kv_v_af(blk.f, row % KVQ_BLOCK);
    x += a.x * blk.b0 + a.y * blk.b1;
  }
  return x;
}

fn kv_k1(row: u32, d: u32) -> f32 {
  let cw = kvq_code_words();
  let r = kvq_row_base(row);
  var x = kvq_dequant1(k_cache[r + (d * KV_BITS) / 32u], d, unpack2x16float(k_cache[r + cw]));
  for (var o = 0u; o < KV_OUTLIERS; o++) {
    x += kvq_patch1(k_cache[r + cw + 1u + o], d);
  }
  if (kvq_lowrank_on(row)) {
    let f = kvq_factor_base(row);
    let t = row % KVQ_BLOCK;
    for (var j = 0u; j < KV_RANK; j++) {
      let a = unpack2x16float(k_cache[f + kvq_a_word(t, j)])[j % 2u];
      x += a * unpack2x16float(k_cache[f + kvq_b_word(j, d)])[d % 2u];
    }
  }
  return x;
}

fn kv_v1(row: u32, d: u32) -> f32 {
  let cw = kvq_code_words();
  let r = kvq_row_base(row);
  var x = kvq_dequant1(v_cache[r + (d * KV_BITS) / 32u], d, unpack2x16float(v_cache[r + cw]));
  for (var o = 0u; o < KV_OUTLIERS; o++) {
    x += kvq_patch1(v_cache[r + cw + 1u + o], d);
  }
  if (kvq_lowrank_on(row)) {
    let f = kvq_factor_base(row);
    let t = row % KVQ_BLOCK;
    for (var j = 0u; j < KV_RANK; j++) {
      let a = unpack2x16float(v_cache[f + kvq_a_word(t, j)])[j % 2u];
      x += a * unpack2x16float(v_cache[f + kvq_b_word(j, d)])[d % 2u];
    }
  }
  return x;
}

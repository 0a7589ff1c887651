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

fn kv_k4(row: u32, d4: u32) -> vec4<f32> {
  let cw = kvq_code_words();
  let r = kvq_row_base(row);
  var x = kvq_dequant4(k_cache[r + (4u * d4 * KV_BITS) / 32u], d4, unpack2x16float(k_cache[r + cw]));
  for (var o = 0u; o < KV_OUTLIERS; o++) {
    x += kvq_patch4(k_cache[r + cw + 1u + o], d4);
  }
  if (kvq_lowrank_on(row)) {
    let f = kvq_factor_base(row);
    let t = row % KVQ_BLOCK;
    for (var j = 0u; j < KV_RANK; j++) {
      let a = unpack2x16float(k_cache[f + kvq_a_word(t, j)])[j % 2u];
      let b = kvq_b_word(j, 4u * d4);
      x += a * vec4<f32>(unpack2x16float(k_cache[f + b]), unpack2x16float(k_cache[f + b + 1u]));
    }
  }
  return x;
}

fn kv_v4(row: u32, d4: u32) -> vec4<f32> {
  let cw = kvq_code_words();
  let r = kvq_row_base(row);
  var x = kvq_dequant4(v_cache[r + (4u * d4 * KV_BITS) / 32u], d4, unpack2x16float(v_cache[r + cw]));
  for (var o = 0u; o < KV_OUTLIERS; o++) {
    x += kvq_patch4(v_cache[r + cw + 1u + o], d4);
  }
  if (kvq_lowrank_on(row)) {
    let f = kvq_factor_base(row);
    let t = row % KVQ_BLOCK;
    for (var j = 0u; j < KV_RANK; j++) {
      let a = unpack2x16float(v_cache[f + kvq_a_word(t, j)])[j % 2u];
      let b = kvq_b_word(j, 4u * d4);
      x += a * vec4<f32>(unpack2x16float(v_cache[f + b]), unpack2x16float(v_cache[f + b + 1u]));
    }
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

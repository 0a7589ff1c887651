// KV-cache fragment: quantized K and V (src/kernels/kv-dtype.ts has the format), after the
// wrapper's `const KV_BITS` and `const KV_OUTLIERS`. A token row of one KV head is u32 words:
// codes (channel d at word d·KV_BITS/32, bit (d·KV_BITS) % 32), the (scale, min) f16 pair, then
// KV_OUTLIERS words (channel in the low 16 bits, f16 residual in the high ones, channel 0xffff for
// none). x = code · scale + min (+ the residual for an outlier channel). The loads decode straight
// from the cache: there is no f16 copy of it anywhere.
alias KvCell = u32;

const KVQ_MASK: u32 = (1u << KV_BITS) - 1u;

// Words per row: codes, the (scale, min) word, the outliers.
fn kvq_code_words() -> u32 {
  return (p.head_dim * KV_BITS + 31u) / 32u;
}

fn kvq_row_words() -> u32 {
  return kvq_code_words() + 1u + KV_OUTLIERS;
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

fn kv_k4(row: u32, d4: u32) -> vec4<f32> {
  let cw = kvq_code_words();
  let r = row * (cw + 1u + KV_OUTLIERS);
  var x = kvq_dequant4(k_cache[r + (4u * d4 * KV_BITS) / 32u], d4, unpack2x16float(k_cache[r + cw]));
  for (var o = 0u; o < KV_OUTLIERS; o++) {
    x += kvq_patch4(k_cache[r + cw + 1u + o], d4);
  }
  return x;
}

fn kv_v4(row: u32, d4: u32) -> vec4<f32> {
  let cw = kvq_code_words();
  let r = row * (cw + 1u + KV_OUTLIERS);
  var x = kvq_dequant4(v_cache[r + (4u * d4 * KV_BITS) / 32u], d4, unpack2x16float(v_cache[r + cw]));
  for (var o = 0u; o < KV_OUTLIERS; o++) {
    x += kvq_patch4(v_cache[r + cw + 1u + o], d4);
  }
  return x;
}

fn kv_k1(row: u32, d: u32) -> f32 {
  let cw = kvq_code_words();
  let r = row * (cw + 1u + KV_OUTLIERS);
  var x = kvq_dequant1(k_cache[r + (d * KV_BITS) / 32u], d, unpack2x16float(k_cache[r + cw]));
  for (var o = 0u; o < KV_OUTLIERS; o++) {
    x += kvq_patch1(k_cache[r + cw + 1u + o], d);
  }
  return x;
}

fn kv_v1(row: u32, d: u32) -> f32 {
  let cw = kvq_code_words();
  let r = row * (cw + 1u + KV_OUTLIERS);
  var x = kvq_dequant1(v_cache[r + (d * KV_BITS) / 32u], d, unpack2x16float(v_cache[r + cw]));
  for (var o = 0u; o < KV_OUTLIERS; o++) {
    x += kvq_patch1(v_cache[r + cw + 1u + o], d);
  }
  return x;
}

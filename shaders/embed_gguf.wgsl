// embed_gguf: out[m, :] = W[ids[m], :] · scale decoded from a GGUF block table (token_embd kept in its
// file format: the same layout and format fragment as matmul_gguf, see src/quant/gguf-pack.ts),
// for the token ids that fall in this part (rows row_start .. row_start + rows). Each weight is
// formed in f32 exactly as matmul_gguf forms it.
// Prepended: common/gguf_block.wgsl and the format fragment (one pipeline per format).
// Bindings: params, qw (block words tiled by 8 rows), dplane (f16 d per block; a placeholder
// without DPLANE), ids [m] u32, out [m, hidden] f32 as vec4s, hplane (HW u32s per block; a
// placeholder where HW = 0).
// Work: a thread owns one chunk of 8 weights (block t / NCH, chunk t % NCH); x covers the row's
// chunks in 64-wide workgroups, y is the token row. `scale` is 1, or Gemma's √hidden (one f32
// product per weight, as embed.wgsl applies it).

struct Params {
  m: u32,
  hidden: u32,
  row_start: u32,
  rows: u32,
  scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qw: array<u32>;
@group(0) @binding(2) var<storage, read> dplane: array<u32>;
@group(0) @binding(3) var<storage, read> ids: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> hplane: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let nb = p.hidden / BK;
  let t = gid.x;
  let m = gid.y;
  if (t >= nb * NCH || m >= p.m) {
    return;
  }
  let id = ids[m];
  if (id < p.row_start || id >= p.row_start + p.rows) {
    return;
  }
  let n = id - p.row_start;
  let b = t / NCH;
  let c = t % NCH;
  let wb = gguf_wbase(n, b, nb);
  var d = 0.0;
  if (DPLANE) {
    let pair = unpack2x16float(dplane[((n >> 3u) * ((nb + 1u) / 2u) + (b >> 1u)) * 8u + (n & 7u)]);
    d = select(pair.x, pair.y, (b & 1u) == 1u);
  }
  let w = gguf_dq(wb, gguf_head(wb, d, gguf_hwords(n, b, nb)), c);
  let o = gguf_xoff(c);
  let base = m * (p.hidden / 4u) + b * (BK / 4u);
  out[base + o.x] = w.lo * p.scale;
  out[base + o.y] = w.hi * p.scale;
}

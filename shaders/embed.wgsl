// embed_{f32,f16,bf16}: out[m, :] = E[ids[m], :] for the token ids that fall in this weight part
// (rows row_start .. row_start + rows of the embedding table, which may be the tied LM head, so
// it is stored in the tiled matrix layout of common/tiled.wgsl), times `scale` (1, or Gemma's
// √hidden already rounded to the table's dtype). Prepended with a weight fragment.
// Bindings: params, weights (tiled vec4<u32> words), ids [m] u32, out [m, hidden] f32.
// Work: x covers hidden in 64-wide workgroups, y is the token row.

struct Params {
  m: u32,
  hidden: u32,
  row_start: u32,
  rows: u32,
  kw: u32,
  scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> weights: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let j = gid.x;
  let m = gid.y;
  if (j >= p.hidden || m >= p.m) {
    return;
  }
  let id = ids[m];
  if (id < p.row_start || id >= p.row_start + p.rows) {
    return;
  }
  let w = weights[tiled_word(id - p.row_start, j / EPW, p.kw)];
  out[m * p.hidden + j] = word_elem(w, j % EPW) * p.scale;
}

// gather_cols: y[r, j] = x[r, perm[j]]: X's columns in the order of an int4 weight whose groups
// were made contiguous along K (GPTQ act-order checkpoints store g_idx, a group per input column;
// the importer sorts the columns by group, so the activations must be permuted the same way).
// Bindings: params, perm [k] u32, x [m, k] f32, y [m, k] f32. One thread per element, 2-D grid.

struct Params {
  // m · k
  count: u32,
  k: u32,
  grid_x: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> perm: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.y * p.grid_x * 64u + gid.x;
  if (i >= p.count) {
    return;
  }
  let r = i / p.k;
  y[i] = x[r * p.k + perm[i - r * p.k]];
}

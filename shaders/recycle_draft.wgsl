// recycle_draft: a chain of guesses per logit row from Token Recycling's table (recycle_topk), built
// on the GPU so that the next step's draft comes back with this step's ids: starting from the id
// the row chose, each guess is the best candidate in the table row of the guess before it,
// drafts[r·depth + j] for j < depth; NONE from the first token without a table row (a table row
// never written holds NONE, and NONE has none).
// Bindings: params, ids [rows] u32 (the id each logit row chose), table [n, k] u32,
// drafts [rows, depth] u32. Work: one thread per logit row.

struct Params {
  n: u32,
  k: u32,
  rows: u32,
  depth: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<u32>;
@group(0) @binding(3) var<storage, read_write> drafts: array<u32>;

const NONE: u32 = 0xffffffffu;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let r = gid.x;
  if (r >= p.rows) {
    return;
  }
  var t = ids[r];
  for (var j = 0u; j < p.depth; j++) {
    t = select(NONE, table[min(t, p.n - 1u) * p.k], t < p.n);
    drafts[r * p.depth + j] = t;
  }
}

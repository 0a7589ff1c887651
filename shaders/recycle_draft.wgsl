// recycle_draft: a token tree of guesses per logit row from Token Recycling's table (recycle_topk),
// built on the GPU so that the next step's draft comes back with this step's ids. The tree has a
// static shape (one entry per node, in topological order: the parent's index + 1, 0 for the root,
// in the low 16 bits, the node's rank among its parent's candidates in the high 16): a node's
// token is candidate `rank` of its parent's token's table row, the root being the id the row
// chose; drafts[r·nodes + i] for node i, NONE where the parent has no token or no table row (a
// table row never written holds NONE, and NONE has none).
// Bindings: params, ids [rows] u32 (the id each logit row chose), table [n, k] u32,
// drafts [rows, nodes] u32, shape [nodes] u32. Work: one thread per logit row.

struct Params {
  n: u32,
  k: u32,
  rows: u32,
  nodes: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<u32>;
@group(0) @binding(3) var<storage, read_write> drafts: array<u32>;
@group(0) @binding(4) var<storage, read> shape: array<u32>;

const NONE: u32 = 0xffffffffu;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let r = gid.x;
  if (r >= p.rows) {
    return;
  }
  let base = r * p.nodes;
  for (var i = 0u; i < p.nodes; i++) {
    let s = shape[i];
    let parent = s & 0xffffu;
    let rank = min(s >> 16u, p.k - 1u);
    // A parent's token is already written: it comes before its children.
    let pt = select(drafts[base + parent - 1u], ids[r], parent == 0u);
    drafts[base + i] = select(NONE, table[min(pt, p.n - 1u) * p.k + rank], pt < p.n);
  }
}

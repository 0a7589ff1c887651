// stream_read: the bandwidth probe of `kiln bench kernels`. Every thread XORs its own contiguous
// run of `per_thread` 16-byte words (per-thread contiguous runs measured fastest on CPU adapters,
// and on GPUs each step of a warp still touches whole cache lines), then writes one word so the
// reads cannot be optimised away. Bytes read / time = the achievable read bandwidth that every
// other kernel's roofline fraction is measured against.

struct Params {
  words: u32,
  per_thread: u32,
  grid_x: u32,
  _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> sink: array<vec4<u32>>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let thread = (wid.y * p.grid_x + wid.x) * 64u + t;
  let start = thread * p.per_thread;
  let end = min(start + p.per_thread, p.words);
  var acc = vec4<u32>(0u);
  for (var i = start; i < end; i++) {
    acc ^= src[i];
  }
  // Almost never true; keeps the loads alive without a write per thread.
  if (all(acc == vec4<u32>(0x9e3779b9u))) {
    sink[0] = acc;
  }
}

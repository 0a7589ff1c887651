// attention_prefill: the rows of a step (a prefill chunk, plus any decode or tree rows batched with
// it) attend over the paged KV cache as in attention.wgsl (the same keys per row, the same online
// softmax), 16 query rows of one head per workgroup instead of one. attention.wgsl reads every key
// once per row and head; here a key is read once per 16 rows, and each thread keeps a 4-row x
// 4-key tile of scores and a 4-row x 4-channel tile of outputs in registers, so every K or V load
// feeds 4 rows' products and every staged q or p value 4 keys' or channels': on lavapipe, where a
// per-lane load costs far more than a multiply-add, and on a GPU, where K/V traffic bounds a long
// prefill, that is what the one-row kernel lacks.
// Segments: the rows of a tile that share a sequence (block-table offset) and, in the low-rank
// formats, the block of their own position (kv_own_block: a block's factors are left out for its
// own rows) are one segment; a tile walks its segments one after another (a prefill chunk's tile is
// one segment; a tile where sequences meet, or decode rows batched together, is several). Each
// segment reads keys [lowest window start, highest end) of its rows; each (row, key) pair is
// masked as in attention.wgsl (causal end, sliding window, token-tree mask). Those keys are all
// live: the lowest row's window needs them and the step wrote every slot up to the highest end.
// Bindings as attention.wgsl, with q and out as vec4 cells and the KV fragment's vec4 view
// (common/kv4_*.wgsl or common/kv_quant.wgsl): head_dim a multiple of 4, at most 256.
// Work: 64 threads per (query head, 16-row tile). Per 64-key tile: q staged in chunks of 128
// channels; thread (rg = t / 16, kg = t % 16) scores rows 4rg.. against keys 4kg..; one thread per
// row turns its 64 scores into weights (running max and sum); thread (rg, u = t % 16) adds
// weight · V into rows 4rg.. at channels 4(u + 16i), i < 4.

struct Params {
  heads: u32,
  kv_heads: u32,
  head_dim: u32,
  scale: f32,
  window: u32,
  softcap: f32,
  // Rows of the step (the grid's y covers them in tiles of 16).
  rows: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> block_table: array<u32>;
@group(0) @binding(3) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> k_cache: array<KvCell>;
@group(0) @binding(5) var<storage, read> v_cache: array<KvCell>;
@group(0) @binding(6) var<storage, read_write> out: array<vec4<f32>>;

const BR: u32 = 16u;
const BC: u32 = 64u;
// q channels staged at a time, in vec4s (128 channels: 8 KiB for 16 rows).
const QC: u32 = 32u;
const BLOCK_TOKENS: u32 = 16u;
const NEG_BIG: f32 = -1.0e30;
// Score of a masked (row, key) pair: below any real score and below NEG_BIG.
const HIDDEN: f32 = -3.0e38;

var<workgroup> q_sh: array<vec4<f32>, 512>;
// Scores, then weights: [key][row group] vec4 of the group's 4 rows.
var<workgroup> s_sh: array<vec4<f32>, 256>;
var<workgroup> krow_sh: array<u32, 64>;
var<workgroup> m_sh: array<f32, 16>;
var<workgroup> l_sh: array<f32, 16>;
var<workgroup> alpha_sh: array<f32, 16>;

// Token row of key `j` for `kv_head` (the first argument of the fragment's loads).
fn kv_row(bt_off: u32, kv_head: u32, j: u32) -> u32 {
  let block = block_table[bt_off + j / BLOCK_TOKENS];
  return (block * p.kv_heads + kv_head) * BLOCK_TOKENS + j % BLOCK_TOKENS;
}

// Physical block of the row's last visible slot (its own, or its deepest tree node's).
fn own_block(row: u32) -> u32 {
  let keys = row_keys(row, p.window);
  return block_table[row_info[row].y + (keys.end - 1u) / BLOCK_TOKENS];
}

// Channels 4·d4.. of a key row: codes and outliers (kv_k4r), plus the low-rank term A[t]·B where
// the key's block has factors that apply (kv_fac: f, else 0xffffffff; a: the row's A[t]).
fn key4(kr: KvRow, f: u32, a: vec2<f32>, d4: u32) -> vec4<f32> {
  var x = kv_k4r(kr, d4);
  if (KV_RANK > 0u && f != 0xffffffffu) {
    x += a.x * kv_k_b4(f, 0u, d4) + a.y * kv_k_b4(f, 1u, d4);
  }
  return x;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let head = wid.x;
  let row0 = wid.y * BR;
  let tile_end = min(row0 + BR, p.rows);
  let kv_head = head / (p.heads / p.kv_heads);
  let hd4 = p.head_dim / 4u;
  let rg = t / 16u;
  let lane = t % 16u;

  var seg = row0;
  while (seg < tile_end) {
    // The segment: rows from `seg` that share its sequence (and own block, low-rank formats).
    let bt_off = row_info[seg].y;
    let own = own_block(seg);
    var seg_end = seg + 1u;
    while (seg_end < tile_end && row_info[seg_end].y == bt_off && (KV_RANK == 0u || own_block(seg_end) == own)) {
      seg_end++;
    }
    kv_own_block = own;
    var klo = 0xffffffffu;
    var kend = 0u;
    for (var r = seg; r < seg_end; r++) {
      let keys = row_keys(r, p.window);
      klo = min(klo, keys.lo);
      kend = max(kend, keys.end);
    }
    // This thread's rows (4rg..4rg+3 of the tile) and whether each is in the segment.
    var rk: array<RowKeys, 4>;
    var live: array<bool, 4>;
    for (var i = 0u; i < 4u; i++) {
      let r = row0 + 4u * rg + i;
      live[i] = r >= seg && r < seg_end;
      if (live[i]) {
        rk[i] = row_keys(r, p.window);
      }
    }
    // Threads whose 4 rows are all outside the segment skip the products (a decode row batched
    // into a prefill step is a segment of one row: 16 threads work, the other 48 only wait at the
    // barriers; on lavapipe a SIMD batch of 8 threads shares its rows, so it skips whole).
    let any_live = live[0] || live[1] || live[2] || live[3];
    if (t < BR) {
      m_sh[t] = NEG_BIG;
      l_sh[t] = 0.0;
    }
    var acc: array<vec4<f32>, 16>;
    for (var i = 0u; i < 16u; i++) {
      acc[i] = vec4<f32>(0.0);
    }

    for (var tile = klo; tile < kend; tile += BC) {
      let n_keys = min(BC, kend - tile);
      var s: array<f32, 16>;
      for (var i = 0u; i < 16u; i++) {
        s[i] = 0.0;
      }
      for (var dc = 0u; dc < hd4; dc += QC) {
        // The previous tile's (or chunk's) readers of q_sh, s_sh and krow_sh are done.
        workgroupBarrier();
        for (var x = t; x < BR * QC; x += 64u) {
          let r = row0 + x / QC;
          let d4 = dc + x % QC;
          var v = vec4<f32>(0.0);
          if (r >= seg && r < seg_end && d4 < hd4) {
            v = q[(r * p.heads + head) * hd4 + d4];
          }
          q_sh[x] = v;
        }
        if (dc == 0u && t < n_keys) {
          krow_sh[t] = kv_row(bt_off, kv_head, tile + t);
        }
        workgroupBarrier();
        if (any_live) {
          // This thread's 4 keys (past the tile's end: its last key again, masked below), each
          // row's shared words (scale, outliers, low-rank weights) read once per chunk.
          var kr: array<KvRow, 4>;
          var kf: array<u32, 4>;
          var ka: array<vec2<f32>, 4>;
          for (var j = 0u; j < 4u; j++) {
            let key_row = krow_sh[min(4u * lane + j, n_keys - 1u)];
            kr[j] = kv_k_row(key_row);
            kf[j] = kv_fac(key_row - key_row % BLOCK_TOKENS);
            ka[j] = vec2<f32>(0.0);
            if (KV_RANK > 0u && kf[j] != 0xffffffffu) {
              ka[j] = kv_k_af(kf[j], key_row % BLOCK_TOKENS);
            }
          }
          let nd = min(QC, hd4 - dc);
          for (var d = 0u; d < nd; d++) {
            var qv: array<vec4<f32>, 4>;
            for (var i = 0u; i < 4u; i++) {
              qv[i] = q_sh[(4u * rg + i) * QC + d];
            }
            for (var j = 0u; j < 4u; j++) {
              let kx = key4(kr[j], kf[j], ka[j], dc + d);
              for (var i = 0u; i < 4u; i++) {
                s[4u * i + j] += dot(qv[i], kx);
              }
            }
          }
        }
      }
      // Scale, cap and mask this thread's 16 scores into s_sh.
      for (var j = 0u; j < 4u; j++) {
        let c = 4u * lane + j;
        var col = vec4<f32>(HIDDEN);
        for (var i = 0u; i < 4u; i++) {
          let key = tile + c;
          if (live[i] && c < n_keys && key < rk[i].end && !key_hidden(rk[i], key)) {
            var sc = s[4u * i + j] * p.scale;
            if (p.softcap > 0.0) {
              // tanh as 1 − 2 / (e^(2y) + 1): saturates instead of overflowing for large |y|.
              sc = p.softcap * (1.0 - 2.0 / (exp(2.0 * sc / p.softcap) + 1.0));
            }
            col[i] = sc;
          }
        }
        s_sh[c * 4u + rg] = col;
      }
      workgroupBarrier();
      // One thread per row of the segment: the tile's weights, the running max and sum.
      if (t < BR && row0 + t >= seg && row0 + t < seg_end) {
        let g = t / 4u;
        let comp = t % 4u;
        let m_old = m_sh[t];
        var m_new = m_old;
        for (var c = 0u; c < n_keys; c++) {
          m_new = max(m_new, s_sh[c * 4u + g][comp]);
        }
        var sum = 0.0;
        for (var c = 0u; c < n_keys; c++) {
          let sc = s_sh[c * 4u + g][comp];
          var w = 0.0;
          if (sc > NEG_BIG) {
            w = exp(sc - m_new);
          }
          s_sh[c * 4u + g][comp] = w;
          sum += w;
        }
        let alpha = exp(m_old - m_new);
        alpha_sh[t] = alpha;
        l_sh[t] = l_sh[t] * alpha + sum;
        m_sh[t] = m_new;
      }
      workgroupBarrier();
      let alpha4 = vec4<f32>(alpha_sh[4u * rg], alpha_sh[4u * rg + 1u], alpha_sh[4u * rg + 2u], alpha_sh[4u * rg + 3u]);
      for (var k = 0u; k < 4u; k++) {
        for (var i = 0u; i < 4u; i++) {
          acc[4u * i + k] *= alpha4[i];
        }
      }
      for (var c = 0u; c < select(0u, n_keys, any_live); c++) {
        let w = s_sh[c * 4u + rg];
        let vr = krow_sh[c];
        for (var k = 0u; k < 4u; k++) {
          let d4 = lane + 16u * k;
          if (d4 < hd4) {
            let v = kv_v4(vr, d4);
            for (var i = 0u; i < 4u; i++) {
              acc[4u * i + k] += w[i] * v;
            }
          }
        }
      }
    }
    workgroupBarrier();
    for (var i = 0u; i < 4u; i++) {
      let r = row0 + 4u * rg + i;
      if (live[i]) {
        let inv = 1.0 / l_sh[4u * rg + i];
        for (var k = 0u; k < 4u; k++) {
          let d4 = lane + 16u * k;
          if (d4 < hd4) {
            out[(r * p.heads + head) * hd4 + d4] = acc[4u * i + k] * inv;
          }
        }
      }
    }
    // The next segment resets m_sh and l_sh only after every row of this one is written.
    workgroupBarrier();
    seg = seg_end;
  }
}

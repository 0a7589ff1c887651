// repetition_penalty: the CTRL / Hugging Face repetition penalty, in place: for each id in row r's
// context list, logits[r, id] is divided by the penalty when positive and multiplied otherwise
// (as applyRepetitionPenalty in src/engine/sampling/cpu.ts). The ids of a row must be unique (each is
// applied once); ids >= n are skipped. NaN stays NaN.
// Bindings: params {n}, logits [rows, n] f32 (read_write), penalty rows [rows] {start u32,
// count u32, penalty f32, pad u32}, tokens u32 (row r's ids are tokens[start .. start + count)).
// Work: one 64-thread workgroup per row, threads stride over the row's ids; no two threads touch
// the same logit because the ids are unique.

struct Params {
  n: u32,
}

struct PenaltyRow {
  start: u32,
  count: u32,
  penalty: f32,
  pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;
@group(0) @binding(2) var<storage, read> rows: array<PenaltyRow>;
@group(0) @binding(3) var<storage, read> tokens: array<u32>;

const WG: u32 = 64u;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let r = wid.x;
  let row = rows[r];
  for (var i = t; i < row.count; i += WG) {
    let id = tokens[row.start + i];
    if (id < p.n) {
      let at = r * p.n + id;
      let v = logits[at];
      logits[at] = select(v * row.penalty, v / row.penalty, v > 0.0);
    }
  }
}

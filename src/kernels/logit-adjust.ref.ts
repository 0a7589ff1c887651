/**
 * Float64 twin of the logit_adjust kernel (shaders/logit_adjust.wgsl): each row's edits added to
 * their logits, every token outside the row's mask set to -Infinity, then the min-p cut (logits
 * below the maximum plus T·ln(min_p) set to -Infinity; the kernel computes max + offset in f32). The kernel adds in f32:
 * its result is this sum rounded to f32 (one rounding of an exact-in-f64 sum of two f32 values).
 */
export interface LogitAdjustRow {
  /** Token id -> added to its logit (unique ids). */
  edits: ReadonlyMap<number, number>;
  /** Bit i of word i >> 5 set: token i allowed; null: every token. */
  mask: Int32Array | Uint32Array | null;
  /** T·ln(min_p): logits below the row's maximum plus this become -Infinity (absent: no cut). */
  minPOffset?: number;
}

/** Applies `row` to one logits row in place (float64). */
export function logitAdjustRef(logits: Float64Array | Float32Array, row: LogitAdjustRow): void {
  const n = logits.length;
  for (const [id, add] of row.edits) {
    if (id < n) logits[id] = (logits[id] as number) + add;
  }
  const mask = row.mask;
  if (mask) {
    for (let i = 0; i < n; i++) {
      if ((((mask[i >> 5] as number) >>> (i & 31)) & 1) === 0) logits[i] = -Infinity;
    }
  }
  const offset = row.minPOffset;
  if (offset === undefined || !(offset > -Infinity)) return;
  let max = -Infinity;
  for (let i = 0; i < n; i++) if ((logits[i] as number) > max) max = logits[i] as number;
  const cut = max + offset;
  for (let i = 0; i < n; i++) if ((logits[i] as number) < cut) logits[i] = -Infinity;
}

/**
 * GEAR's recent window for the low-rank KV formats (kv-dtype.ts): a block filled across steps
 * (decode, or a prefill chunk that ends mid-block) has its earlier rows only as codes by the time
 * its last row arrives, and its low-rank factors need the rows themselves. So such a block borrows
 * a lane of the window: [lanes][K, V][kvHeads][16][headDim] f32 per layer (PagedKvCache.window),
 * into which kv_lowrank copies each row as it is written; the step that writes the block's last
 * row computes the factors from the lane (earlier rows) and its own stage (its rows), and the lane
 * goes back. The rows are still quantized the moment they are written (attention reads the codes,
 * as for every other block), so a block that finds no lane only misses its factors.
 *
 * This class is the CPU side: which block holds which lane. It sees only the slots of each step,
 * in the order the steps run, and keeps a lane valid while its block's rows arrive in order from
 * row 0 (a row written again, as after a rejected speculative guess, restarts the count there);
 * a gap drops the lane. Lanes of blocks whose sequence ended are taken back least recently
 * written first when a new block needs one. A copy-on-write copy gives the new block a copy of
 * the lane (`fork`).
 */
/** Tokens per block (cache.ts's BLOCK_TOKENS; not imported: cache.ts imports this file). */
const BLOCK_TOKENS = 16;

/** The lane id of a row that has none. */
export const NO_LANE = 0xffffffff;

/** Lanes of the window: partly filled blocks at once (one per sequence decoding, at most). */
export const KV_WINDOW_LANES = 8;

interface LaneState {
  lane: number;
  /** Rows [0, filled) of the block are in the lane. */
  filled: number;
}

export class KvWindow {
  /** Block -> its lane; Map order is least recently written first. */
  private readonly held = new Map<number, LaneState>();
  private readonly free: number[] = [];
  /** Lanes of blocks completed by the last step: they go back at the next `assign`. */
  private done: number[] = [];

  constructor(readonly lanes: number = KV_WINDOW_LANES) {
    for (let l = lanes - 1; l >= 0; l--) this.free.push(l);
  }

  /**
   * The lane of each row of a step (NO_LANE where it needs none or none is left), given the
   * rows' slots (block · 16 + offset), in the order the steps run.
   */
  assign(slots: ArrayLike<number>, out: Uint32Array = new Uint32Array(slots.length)): Uint32Array {
    this.free.push(...this.done);
    this.done = [];
    const touched = new Set<number>();
    for (let i = 0; i < slots.length;) {
      // A run: consecutive rows of one block at consecutive offsets (one sequence's rows).
      const s0 = slots[i] as number;
      const block = Math.floor(s0 / BLOCK_TOKENS);
      const o0 = s0 % BLOCK_TOKENS;
      let n = 1;
      while (i + n < slots.length && slots[i + n] === s0 + n && o0 + n < BLOCK_TOKENS) n++;
      const o1 = o0 + n - 1;
      let st = this.held.get(block);
      let lane = NO_LANE;
      if (o0 === 0 && o1 === BLOCK_TOKENS - 1) {
        // Written whole by this step: kv_lowrank takes every row from the step's stage.
        if (st) this.release(block, st.lane);
      } else {
        if (o0 === 0 && !st) st = this.take(block, touched);
        if (st && o0 <= st.filled) {
          st.filled = o1 + 1;
          lane = st.lane;
          touched.add(block);
          this.held.delete(block);
          this.held.set(block, st);
          if (st.filled === BLOCK_TOKENS) {
            this.held.delete(block);
            this.done.push(st.lane);
          }
        } else if (st) {
          this.release(block, st.lane);
        }
      }
      out.fill(lane, i, i + n);
      i += n;
    }
    return out;
  }

  /**
   * `dst` became a copy of `src` (copy-on-write): the lane `dst` gets, with `src`'s rows to copy
   * into it, or null (then `dst` has no lane and its factors are skipped).
   */
  fork(src: number, dst: number): { from: number; to: number } | null {
    const old = this.held.get(dst);
    if (old) this.release(dst, old.lane);
    const st = this.held.get(src);
    if (!st) return null;
    const to = this.take(dst, new Set([src]));
    if (!to) return null;
    to.filled = st.filled;
    return { from: st.lane, to: to.lane };
  }

  private take(block: number, keep: ReadonlySet<number>): LaneState | undefined {
    let lane = this.free.pop();
    if (lane === undefined) {
      for (const [b, st] of this.held) {
        if (keep.has(b)) continue;
        this.held.delete(b);
        lane = st.lane;
        break;
      }
    }
    if (lane === undefined) return undefined;
    const st = { lane, filled: 0 };
    this.held.set(block, st);
    return st;
  }

  private release(block: number, lane: number): void {
    this.held.delete(block);
    this.free.push(lane);
  }
}

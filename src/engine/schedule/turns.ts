/**
 * Turns on the GPU state: steps and exclusive work (teacher-forced logits, calibration, profiling,
 * kernel tuning, warm-up) queue for it in arrival order, so only one of them uses the forward
 * model and the KV buffers at a time. A hold's step inputs come from the KV sequence of its own
 * built here, so exclusive work never builds step inputs itself.
 */
import type { BlockManager } from '../kv/block-manager.js';
import { pushSlidingRows, type SlidingPool } from '../kv/sliding-pool.js';
import type { Hold } from './types.js';

export class Turns {
  private turns: Promise<void> = Promise.resolve();
  /** Turns asked for and not yet given: a pipelined burst yields to them. */
  waiters = 0;

  /** Waits for the GPU state (after everything queued before) and returns its release. */
  async take(): Promise<() => void> {
    const prev = this.turns;
    let release!: () => void;
    this.turns = new Promise<void>((r) => (release = r));
    this.waiters++;
    try {
      await prev;
    } finally {
      this.waiters--;
    }
    return release;
  }
}

/**
 * The Hold over KV sequence `id` (blocks taken as its inputs ask for them), which frees them and
 * calls `release` (the turn's) once released.
 */
export function makeHold(
  blocks: BlockManager,
  sliding: SlidingPool | null,
  id: number,
  release: () => void,
): Hold {
  let released = false;
  return {
    input: (tokens, start, logitRows) => {
      const end = start + tokens.length;
      const have = blocks.has(id) ? blocks.numTokens(id) : 0;
      if (end > have) {
        // Positions before `start` not yet held (a profile at a long context) get filler ids.
        const fill = Array.from({ length: end - have }, (_, i) =>
          have + i >= start ? (tokens[have + i - start] as number) : 0,
        );
        if (have === 0) {
          blocks.admit(id, fill.slice(0, 1));
          blocks.appendSlots(id, fill.slice(1));
        } else blocks.appendSlots(id, fill);
      }
      // A hold's length is unknown: it reserves a whole sequence's share of a sliding pool.
      if (sliding && !sliding.has(id)) sliding.reserve(id, Infinity);
      const rows = { slidingSlots: [] as number[], slidingBlockTable: [] as number[] };
      pushSlidingRows(rows, sliding, id, start, end, blocks.blockTable(id).length);
      return {
        tokens,
        positions: tokens.map((_, i) => start + i),
        slots: tokens.map((_, i) => blocks.slotFor(id, start + i)),
        blockTableOffsets: tokens.map(() => 0),
        blockTable: blocks.blockTable(id),
        logitRows: logitRows ?? [tokens.length - 1],
        ...(sliding ? rows : {}),
      };
    },
    release: () => {
      if (released) return;
      released = true;
      if (blocks.has(id)) blocks.free(id);
      if (sliding?.has(id)) sliding.free(id);
      release();
    },
  };
}

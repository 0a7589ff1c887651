/** stream_read: the streaming-read bandwidth probe; see stream_read.wgsl beside this file. */
import { MAX_GRID, packParams } from '../../src/kernels/shader.js';
import { baselineSource } from './source.js';
import { type Dispatch, type DispatchBuilder } from '../../src/gpu/dispatch.js';

/** 16-byte words each thread reads: 4 KiB runs, long enough to stream, short enough to spread. */
const WORDS_PER_THREAD = 256;

export function streamRead(
  b: DispatchBuilder,
  a: { /** vec4<u32> words */ src: GPUBuffer; /** ≥ 16 bytes */ sink: GPUBuffer; words: number },
): Dispatch {
  const groups = Math.ceil(a.words / (64 * WORDS_PER_THREAD));
  const gridX = Math.min(groups, MAX_GRID);
  return b.make(
    'stream_read',
    () => baselineSource('stream_read'),
    packParams([
      ['u32', a.words],
      ['u32', WORDS_PER_THREAD],
      ['u32', gridX],
      ['u32', 0],
    ]),
    [a.src, a.sink],
    [gridX, Math.ceil(groups / gridX), 1],
  );
}

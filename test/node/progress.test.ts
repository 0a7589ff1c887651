import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createByteProgress, formatDecimalBytes, formatEta, formatRate } from '../../src/node/progress.js';

/** A writable that records output and claims (or not) to be a terminal. */
function sink(isTTY: boolean): { stream: NodeJS.WriteStream; text: () => string } {
  let out = '';
  const w = new Writable({
    write(chunk: Buffer, _enc, cb) {
      out += chunk.toString();
      cb();
    },
  });
  Object.assign(w, { isTTY, columns: 160 });
  return { stream: w as unknown as NodeJS.WriteStream, text: () => out };
}

describe('createByteProgress', () => {
  it('prints nothing when the stream is not a terminal', () => {
    const s = sink(false);
    const p = createByteProgress('pull', { stream: s.stream });
    p.update(1e6, 2e6, 'model.safetensors');
    p.stop();
    expect(s.text()).toBe('');
  });

  it('prints nothing when disabled, even on a terminal', () => {
    const s = sink(true);
    const p = createByteProgress('pull', { stream: s.stream, enabled: false });
    p.update(1e6, 2e6);
    p.stop();
    expect(s.text()).toBe('');
  });

  it('draws label, sizes in MB, rate, ETA and detail on a terminal', () => {
    const s = sink(true);
    let t = 0;
    const p = createByteProgress('pull', { stream: s.stream, now: () => t });
    p.update(0, 268_900_000, 'model.safetensors');
    expect(s.text()).toContain('-- MB/s'); // no rate before half a second of samples
    t = 10_000;
    p.update(113_000_000, 268_900_000, 'model.safetensors');
    p.stop();
    p.stop();
    p.update(1, 1); // after stop: ignored
    const text = s.text();
    expect(text).toContain('pull');
    expect(text).toContain('113.0 MB/268.9 MB');
    expect(text).toContain('11.3 MB/s');
    expect(text).toContain('ETA 14s');
    expect(text).toContain('model.safetensors');
    expect(text).toContain(' 42%');
  });
});

describe('formatting', () => {
  it('formats bytes in decimal units', () => {
    expect(formatDecimalBytes(512)).toBe('512 B');
    expect(formatDecimalBytes(2_500)).toBe('2.5 kB');
    expect(formatDecimalBytes(269_060_552)).toBe('269.1 MB');
    expect(formatDecimalBytes(2_471_645_608)).toBe('2.47 GB');
    expect(formatRate(12_345_678)).toBe('12.3 MB/s');
    expect(formatRate(Infinity)).toBe('0 B/s');
  });

  it('formats ETAs', () => {
    expect(formatEta(NaN)).toBe('--');
    expect(formatEta(45.2)).toBe('45s');
    expect(formatEta(185)).toBe('3m05s');
    expect(formatEta(7620)).toBe('2h07m');
  });
});

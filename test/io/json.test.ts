import { describe, expect, it } from 'vitest';
import { describeValue, isJsonObject } from '../../src/io/json.js';

describe('isJsonObject', () => {
  it('accepts objects only: not null, arrays or primitives', () => {
    expect(isJsonObject({})).toBe(true);
    expect(isJsonObject({ a: 1 })).toBe(true);
    for (const v of [null, undefined, [], [1], 'x', 1, true]) expect(isJsonObject(v)).toBe(false);
  });
});

describe('describeValue', () => {
  it('renders values as short JSON for messages', () => {
    expect(describeValue(undefined)).toBe('missing');
    expect(describeValue(null)).toBe('null');
    expect(describeValue('F32')).toBe('"F32"');
    expect(describeValue([2, -1])).toBe('[2,-1]');
    expect(describeValue(10n)).toBe('10');
    const long = describeValue('x'.repeat(100));
    expect(long).toBe(`"${'x'.repeat(56)}...`);
    expect(long).toHaveLength(60);
  });

  it('never cuts a surrogate pair in half', () => {
    const s = describeValue('a'.repeat(55) + '\u{1F600}'.repeat(10));
    expect(s).toBe(`"${'a'.repeat(55)}...`);
    expect(describeValue('a'.repeat(56) + '\u{1F600}'.repeat(10))).toBe(`"${'a'.repeat(56)}...`);
  });
});

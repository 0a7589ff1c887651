import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { InvalidModelFileError, UnsupportedModelError } from '../../src/errors.js';
import type { ByteSource } from '../../src/io/byte-source.js';
import { checkReadRange } from '../../src/io/byte-source.js';
import { parseGgufHeader, type GgufLimits } from '../../src/io/gguf.js';
import { ggufTypeByName, type GgufTypeInfo } from '../../src/io/gguf-types.js';
import { encodeGguf, gv, type GgufFileToWrite } from '../../src/io/gguf-writer.js';
import { openLocalModelDir } from '../../src/node/fs-model-dir.js';
import { repoRoot } from '../helpers/shared.js';

const root = mkdtempSync(join(tmpdir(), 'kiln-gguf-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

function type(name: string): GgufTypeInfo {
  const t = ggufTypeByName(name);
  if (!t) throw new Error(name);
  return t;
}

/** An in-memory ByteSource that records the largest read it served (the parser's memory bound). */
function memorySource(bytes: Uint8Array, name = 'x.gguf'): ByteSource & { largestRead: number } {
  const s = {
    name,
    size: bytes.length,
    largestRead: 0,
    read(offset: number, length: number): Promise<Uint8Array> {
      checkReadRange(name, bytes.length, offset, length);
      s.largestRead = Math.max(s.largestRead, length);
      return Promise.resolve(bytes.slice(offset, offset + length));
    },
    close: () => Promise.resolve(),
  };
  return s;
}

/** A ByteSource of `size` bytes whose first bytes are `head` and the rest zeros, never allocated. */
function hugeSource(head: Uint8Array, size: number): ByteSource & { largestRead: number } {
  const s = {
    name: 'huge.gguf',
    size,
    largestRead: 0,
    read(offset: number, length: number): Promise<Uint8Array> {
      checkReadRange('huge.gguf', size, offset, length);
      s.largestRead = Math.max(s.largestRead, length);
      const out = new Uint8Array(length);
      if (offset < head.length) out.set(head.subarray(offset, Math.min(head.length, offset + length)));
      return Promise.resolve(out);
    },
    close: () => Promise.resolve(),
  };
  return s;
}

const f32 = (values: number[]) => new Uint8Array(Float32Array.from(values).buffer);

function sample(): GgufFileToWrite {
  return {
    metadata: [
      ['general.architecture', gv.str('llama')],
      ['llama.block_count', gv.u32(1)],
      ['general.name', gv.str('ünïcode ✓')],
      ['tokenizer.ggml.tokens', gv.strs(['<unk>', 'a', 'b'])],
      ['tokenizer.ggml.scores', gv.f32s([0, -1.5, -2])],
      ['flag', gv.bool(true)],
      ['big', { type: 'u64', value: 2n ** 60n }],
    ],
    tensors: [
      { name: 'wa', type: type('F32'), dims: [3, 2], data: f32([1, 2, 3, 4, 5, 6]) },
      { name: 'wq', type: type('Q8_0'), dims: [32], data: new Uint8Array(34).fill(7) },
      { name: 'wh', type: type('F16'), dims: [5], data: new Uint8Array(10).fill(1) },
    ],
  };
}

async function parse(bytes: Uint8Array, limits?: Partial<GgufLimits>) {
  return parseGgufHeader(memorySource(bytes), limits);
}

/** The error message a parse of `bytes` ends in (it must be one line and a Kiln error). */
async function errorOf(bytes: Uint8Array | ByteSource, cls = InvalidModelFileError): Promise<string> {
  const src = bytes instanceof Uint8Array ? memorySource(bytes) : bytes;
  const e = await parseGgufHeader(src).then(
    () => null,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(cls);
  const msg = (e as Error).message;
  expect(msg).not.toContain('\n');
  return msg;
}

/** Byte offset of the first occurrence of `needle` in `hay`. */
function indexOf(hay: Uint8Array, needle: Uint8Array): number {
  outer: for (let i = 0; i + needle.length <= hay.length; i++) {
    for (let j = 0; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
    return i;
  }
  throw new Error('not found');
}
const enc = (s: string) => new TextEncoder().encode(s);
/** The byte offset right after the tensor-table name string of tensor `name`. */
function afterTensorName(bytes: Uint8Array, name: string): number {
  const needle = new Uint8Array(8 + name.length);
  new DataView(needle.buffer).setBigUint64(0, BigInt(name.length), true);
  needle.set(enc(name), 8);
  return indexOf(bytes, needle) + needle.length;
}

describe('GGUF reader', () => {
  it('reads what the writer wrote: metadata types, tensor table, alignment and offsets', async () => {
    const bytes = encodeGguf(sample());
    const h = await parse(bytes);
    expect(h.version).toBe(3);
    expect(h.alignment).toBe(32);
    expect(h.dataStart % 32).toBe(0);
    expect(h.metadata.string('general.architecture')).toBe('llama');
    expect(h.metadata.string('general.name')).toBe('ünïcode ✓');
    expect(h.metadata.uint('llama.block_count')).toBe(1);
    expect(h.metadata.optionalBool('flag')).toBe(true);
    expect(h.metadata.get('big')).toEqual({ type: 'u64', value: 2n ** 60n });
    expect(h.metadata.optionalStringArray('tokenizer.ggml.tokens')).toEqual(['<unk>', 'a', 'b']);
    expect(Array.from(h.metadata.optionalNumberArray('tokenizer.ggml.scores') ?? [])).toEqual([0, -1.5, -2]);
    expect([...h.tensors.keys()]).toEqual(['wa', 'wq', 'wh']);
    const a = h.tensors.get('wa')!;
    expect(a).toMatchObject({ dims: [3, 2], elements: 6, byteLength: 24, fileOffset: h.dataStart });
    expect(new Float32Array(bytes.slice(a.fileOffset, a.fileOffset + 24).buffer)).toEqual(
      Float32Array.from([1, 2, 3, 4, 5, 6]),
    );
    const q = h.tensors.get('wq')!;
    expect(q.fileOffset).toBe(h.dataStart + 32);
    expect(q.byteLength).toBe(34);
    expect(h.tensors.get('wh')!.fileOffset).toBe(h.dataStart + 96);
    // Accessors name the key and what they found.
    expect(() => h.metadata.uint('general.name')).toThrow(
      /x.gguf: metadata general.name is string .*expected an integer/,
    );
    expect(() => h.metadata.string('missing.key')).toThrow(
      /metadata missing.key is missing, expected a string/,
    );
  });

  it('honours general.alignment and reads version 2', async () => {
    const bytes = encodeGguf({ ...sample(), alignment: 64 });
    const h = await parse(bytes);
    expect(h.alignment).toBe(64);
    expect(h.tensors.get('wq')!.fileOffset).toBe(h.dataStart + 64);
    const v2 = bytes.slice();
    v2[4] = 2;
    expect((await parse(v2)).version).toBe(2);
  });

  it('reads a big header through a bounded window', async () => {
    const tokens = Array.from({ length: 200_000 }, (_, i) => `tok${i}`);
    const bytes = encodeGguf({ metadata: [['tokenizer.ggml.tokens', gv.strs(tokens)]], tensors: [] });
    const src = memorySource(bytes);
    const h = await parseGgufHeader(src);
    expect(h.metadata.optionalStringArray('tokenizer.ggml.tokens')?.[199_999]).toBe('tok199999');
    expect(bytes.length).toBeGreaterThan((4 * 2 ** 20) / 2);
    expect(src.largestRead).toBeLessThanOrEqual(4 * 2 ** 20);
  });

  describe('hostile files end in one clear error', () => {
    const good = encodeGguf(sample());

    it('not GGUF, unknown and unsupported versions, big-endian', async () => {
      expect(await errorOf(enc('PK\x03\x04 not a gguf file at all......'))).toMatch(
        /not a GGUF file: it starts with "PK\\x3\\x4"/,
      );
      const v9 = good.slice();
      v9[4] = 9;
      expect(await errorOf(v9)).toMatch(/GGUF version 9 is unknown/);
      const v1 = good.slice();
      v1[4] = 1;
      expect(await errorOf(v1, UnsupportedModelError)).toMatch(/version 1 is not supported/);
      const be = good.slice();
      be.set([0, 0, 0, 3], 4);
      expect(await errorOf(be, UnsupportedModelError)).toMatch(/big-endian/);
    });

    it('truncated anywhere', async () => {
      expect(await errorOf(good.slice(0, 10))).toMatch(/too short for a GGUF header/);
      // Every cut inside the header or the data is refused with a message naming the place.
      const h = await parse(good);
      const wh = h.tensors.get('wh')!;
      const cuts = [30, 60, 100, 200, h.dataStart - 5, h.dataStart + 10, wh.fileOffset + wh.byteLength - 1];
      for (const cut of cuts) {
        const msg = await errorOf(good.slice(0, cut));
        expect(msg).toMatch(/truncated/);
      }
    });

    it('counts past the file: tensors, metadata pairs, array lengths, string lengths', async () => {
      const tc = good.slice();
      new DataView(tc.buffer).setBigUint64(8, 2n ** 40n, true);
      expect(await errorOf(tc)).toMatch(
        /tensor_count is 1099511627776, but the \d+ bytes left in the file hold at most \d+/,
      );
      const kv = good.slice();
      new DataView(kv.buffer).setBigUint64(16, 2n ** 63n, true);
      expect(await errorOf(kv)).toMatch(/metadata_kv_count is 9223372036854775808/);
      // The tokens array's length field sits right after its item type.
      const arr = good.slice();
      const at = afterTensorName(arr, 'tokenizer.ggml.tokens') + 8;
      new DataView(arr.buffer).setBigUint64(at, 2n ** 33n, true);
      expect(await errorOf(arr)).toMatch(
        /the length of array metadata tokenizer.ggml.tokens is 8589934592, but/,
      );
      const str = good.slice();
      const s = afterTensorName(str, 'general.name') + 4;
      new DataView(str.buffer).setBigUint64(s, 2n ** 50n, true);
      expect(await errorOf(str)).toMatch(
        /metadata general.name claims 1125899906842624 bytes but only \d+ remain/,
      );
    });

    it('limits on strings and arrays hold even when the file is big enough', async () => {
      const bytes = encodeGguf({ metadata: [['t', gv.strs(['a', 'b', 'c', 'd'])]], tensors: [] });
      await expect(parse(bytes, { maxArrayLength: 3 })).rejects.toThrow(
        /array metadata t is 4, over the limit of 3/,
      );
      await expect(
        parse(encodeGguf({ metadata: [['s', gv.str('x'.repeat(100))]], tensors: [] }), {
          maxStringBytes: 99,
        }),
      ).rejects.toThrow(/metadata s is 100 bytes, over the 99-byte limit/);
    });

    it('unknown value types, tensor types and bad bools', async () => {
      const vt = good.slice();
      new DataView(vt.buffer).setUint32(afterTensorName(vt, 'llama.block_count'), 13, true);
      expect(await errorOf(vt)).toMatch(/metadata llama.block_count has unknown value type 13/);
      const tt = good.slice();
      // Tensor "a": name, n_dims (4), two dims (16), then the type.
      new DataView(tt.buffer).setUint32(afterTensorName(tt, 'wa') + 4 + 16, 4, true);
      expect(await errorOf(tt)).toMatch(/tensor "wa" has unknown element type 4/);
      const b = good.slice();
      b[afterTensorName(b, 'flag') + 4] = 2;
      expect(await errorOf(b)).toMatch(/metadata flag is a bool stored as 2/);
    });

    it('bad tensor entries: dimensions, blocks, alignment, duplicates, overlaps', async () => {
      const nd = good.slice();
      new DataView(nd.buffer).setUint32(afterTensorName(nd, 'wa'), 7, true);
      expect(await errorOf(nd)).toMatch(/tensor "wa" has 7 dimensions, expected 1..4/);
      const zero = good.slice();
      new DataView(zero.buffer).setBigUint64(afterTensorName(zero, 'wa') + 4, 0n, true);
      expect(await errorOf(zero)).toMatch(/tensor "wa": dimension 0 is 0/);
      const block = good.slice();
      new DataView(block.buffer).setBigUint64(afterTensorName(block, 'wq') + 4, 33n, true);
      expect(await errorOf(block)).toMatch(
        /tensor "wq": its first dimension 33 is not a multiple of Q8_0's block of 32/,
      );
      const mis = good.slice();
      new DataView(mis.buffer).setBigUint64(afterTensorName(mis, 'wq') + 4 + 8 + 4, 8n, true);
      expect(await errorOf(mis)).toMatch(/tensor "wq": offset 8 is not a multiple of the alignment 32/);
      const over = good.slice();
      new DataView(over.buffer).setBigUint64(afterTensorName(over, 'wh') + 4 + 8 + 4, 0n, true);
      expect(await errorOf(over)).toMatch(/tensor "w[ah]" at data offset 0 overlaps tensor "w[ah]"/);
      const dup = encodeGguf({
        metadata: [],
        tensors: [
          { name: 'w', type: type('F32'), dims: [1], data: f32([1]) },
          { name: 'w', type: type('F32'), dims: [1], data: f32([1]) },
        ],
      });
      expect(await errorOf(dup)).toMatch(/tensor "w" appears twice/);
      const dupKey = encodeGguf({
        metadata: [
          ['k', gv.u32(1)],
          ['k', gv.u32(2)],
        ],
        tensors: [],
      });
      expect(await errorOf(dupKey)).toMatch(/metadata key "k" appears twice/);
      const align = encodeGguf({ metadata: [['general.alignment', gv.u32(48)]], tensors: [] });
      expect(await errorOf(align)).toMatch(/general.alignment is u32 .*48.*expected a u32 power of two/);
      const longName = encodeGguf({
        metadata: [],
        tensors: [{ name: 'n'.repeat(64), type: type('F32'), dims: [1], data: f32([1]) }],
      });
      expect(await errorOf(longName)).toMatch(/name is over 63 bytes/);
    });

    it('a tensor table promising terabytes, in bounded memory', async () => {
      // A valid header whose one tensor claims 2^40 f32 elements; the "file" is 1 GiB of zeros
      // that is never allocated: the reader must refuse from the table alone.
      const head = encodeGguf({
        metadata: [['general.architecture', gv.str('llama')]],
        tensors: [{ name: 'w', type: type('F32'), dims: [1], data: f32([0]) }],
      });
      const dimAt = afterTensorName(head, 'w') + 4;
      new DataView(head.buffer).setBigUint64(dimAt, 2n ** 40n, true);
      const src = hugeSource(head, 2 ** 30);
      expect(await errorOf(src)).toMatch(
        /tensor "w" \(F32 \[1099511627776\], 4398046511104 bytes at data offset 0\) runs past the \d+-byte data section/,
      );
      expect(src.largestRead).toBeLessThanOrEqual(4 * 2 ** 20);
      // Element counts past 2^53 are refused before any size is computed.
      const two = encodeGguf({
        metadata: [],
        tensors: [{ name: 'w', type: type('F32'), dims: [1, 1], data: f32([0]) }],
      });
      const at = afterTensorName(two, 'w') + 4;
      new DataView(two.buffer).setBigUint64(at, 2n ** 30n, true);
      new DataView(two.buffer).setBigUint64(at + 8, 2n ** 30n, true);
      expect(await errorOf(hugeSource(two, 2 ** 30))).toMatch(
        /tensor "w": dimensions \[1073741824, 1073741824...\] hold more than 2\^53 elements/,
      );
      // A string that claims nearly all of a 1 GiB file is refused by the string cap, not read.
      const s = encodeGguf({ metadata: [['x', gv.str('abc')]], tensors: [] });
      new DataView(s.buffer).setBigUint64(24 + 8 + 1 + 4, BigInt(2 ** 30 - 100), true);
      const hs = hugeSource(s, 2 ** 30);
      expect(await errorOf(hs)).toMatch(
        /metadata x is 1073741724 bytes, over the 16777216-byte limit for strings/,
      );
      expect(hs.largestRead).toBeLessThanOrEqual(4 * 2 ** 20);
    });
  });

  it("parses llama.cpp's vocab files from disk through the Node ByteSource", async () => {
    const dir = resolve(repoRoot, '..', 'shared', 'gguf-vocab');
    const files = readdirSync(dir).filter((f) => f.endsWith('.gguf'));
    expect(files.length).toBeGreaterThanOrEqual(3);
    const md = openLocalModelDir(dir);
    for (const f of files) {
      const src = await md.open(f);
      try {
        const h = await parseGgufHeader(src);
        expect(h.metadata.optionalStringArray('tokenizer.ggml.tokens')?.length).toBeGreaterThan(1000);
        expect(h.metadata.string('tokenizer.ggml.model')).toMatch(/^(llama|gpt2)$/);
      } finally {
        await src.close();
      }
    }
    // The parse works on a real file written to disk as well.
    const p = join(root, 'w.gguf');
    writeFileSync(p, encodeGguf(sample()));
    const src = await openLocalModelDir(root).open('w.gguf');
    expect((await parseGgufHeader(src)).tensors.size).toBe(3);
    await src.close();
  });
});

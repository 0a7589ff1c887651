import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { InvalidModelFileError, KilnError, UnsupportedModelError } from '../../src/errors.js';
import type { ModelDir } from '../../src/io/byte-source.js';
import {
  DTYPE_BYTES,
  decodeToFloat32,
  encodeFromFloat32,
  type SafetensorsDtype,
} from '../../src/io/dtype.js';
import { findDuplicateJsonKey, parseSafetensorsHeader } from '../../src/io/safetensors.js';
import { openCheckpoint } from '../../src/io/safetensors-checkpoint.js';
import {
  encodeSafetensors,
  encodeSafetensorsIndex,
  type TensorToWrite,
} from '../../src/io/safetensors-writer.js';
import { openLocalModelDir } from '../../src/node/fs-model-dir.js';

const root = mkdtempSync(join(tmpdir(), 'kiln-safetensors-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

let counter = 0;
/** A fresh folder under the temp root holding `files`. */
function folder(files: Record<string, Uint8Array | string>): string {
  const dir = join(root, `case${counter++}`);
  mkdirSync(dir);
  for (const [name, data] of Object.entries(files)) writeFileSync(join(dir, name), data);
  return dir;
}

/** Bytes of a safetensors file with an arbitrary header (string or object) and data section. */
function rawFile(
  header: string | object,
  data: Uint8Array = new Uint8Array(0),
  lengthOverride?: bigint,
): Uint8Array {
  const json = new TextEncoder().encode(typeof header === 'string' ? header : JSON.stringify(header));
  return rawBytes(json, data, lengthOverride);
}

function rawBytes(headerBytes: Uint8Array, data: Uint8Array, lengthOverride?: bigint): Uint8Array {
  const out = new Uint8Array(8 + headerBytes.byteLength + data.byteLength);
  new DataView(out.buffer).setBigUint64(0, lengthOverride ?? BigInt(headerBytes.byteLength), true);
  out.set(headerBytes, 8);
  out.set(data, 8 + headerBytes.byteLength);
  return out;
}

/** Writes `bytes` as a real file and parses its header through the Node ModelDir. */
async function parse(bytes: Uint8Array, opts?: { maxHeaderBytes?: number }) {
  const dir = openLocalModelDir(folder({ 'x.safetensors': bytes }));
  const src = await dir.open('x.safetensors');
  try {
    return await parseSafetensorsHeader(src, opts);
  } finally {
    await src.close();
  }
}

const f32Entry = (begin: number, end: number, shape: number[] = [(end - begin) / 4]) => ({
  dtype: 'F32',
  shape,
  data_offsets: [begin, end],
});

function bytesOf(n: number, seed = 1): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (i * 31 + seed * 7) & 0xff;
  return out;
}

describe('parseSafetensorsHeader rejects hostile files', () => {
  const cases: [string, Uint8Array, RegExp][] = [
    ['a file shorter than 8 bytes', new Uint8Array(5), /5 bytes, too short/],
    [
      'a header length past the end of the file',
      rawFile('{}', new Uint8Array(0), 1000n),
      /header length 1000 runs past/,
    ],
    [
      'a header length over the 100 MB cap',
      rawFile('{}', new Uint8Array(0), 100_000_001n),
      /100000001 exceeds/,
    ],
    [
      'a u64 header length beyond 2^53',
      rawFile('{}', new Uint8Array(0), 0xffffffffffffffffn),
      /18446744073709551615 is not/,
    ],
    [
      'a header that is not UTF-8',
      rawBytes(new Uint8Array([0x7b, 0xff, 0xfe, 0x7d]), new Uint8Array(0)),
      /not valid UTF-8/,
    ],
    ['a header that is not JSON', rawFile('{"a": '), /not valid JSON/],
    ['an array header', rawFile('[1, 2]'), /\[1,2\], expected a JSON object/],
    ['a null header', rawFile('null'), /null, expected a JSON object/],
    [
      'a duplicate tensor',
      rawFile(`{"a":${JSON.stringify(f32Entry(0, 4))},"a":${JSON.stringify(f32Entry(0, 4))}}`, bytesOf(4)),
      /repeats the key "a"/,
    ],
    [
      'a duplicate hidden by an escape',
      rawFile(
        `{"a":${JSON.stringify(f32Entry(0, 4))},"\\u0061":${JSON.stringify(f32Entry(0, 4))}}`,
        bytesOf(4),
      ),
      /repeats the key "a"/,
    ],
    [
      'a duplicate field in an entry',
      rawFile('{"a":{"dtype":"F32","dtype":"U8","shape":[4],"data_offsets":[0,4]}}', bytesOf(4)),
      /repeats the key "dtype"/,
    ],
    ['a duplicate __metadata__ key', rawFile('{"__metadata__":{"k":"1","k":"2"}}'), /repeats the key "k"/],
    [
      'a numeric __metadata__',
      rawFile({ __metadata__: 3 }),
      /__metadata__ is 3, expected a string-to-string map/,
    ],
    ['an array __metadata__', rawFile({ __metadata__: ['a'] }), /__metadata__ is \["a"\]/],
    [
      'a non-string __metadata__ value',
      rawFile({ __metadata__: { format: 1 } }),
      /__metadata__.format is 1, expected a string/,
    ],
    ['a non-object entry', rawFile({ w: 5 }), /tensor "w" is 5, expected an object/],
    [
      'an entry with an extra field',
      rawFile({ w: { ...f32Entry(0, 4), extra: 1 } }, bytesOf(4)),
      /fields \[data_offsets, dtype, extra, shape\]/,
    ],
    [
      'an entry without shape',
      rawFile({ w: { dtype: 'F32', data_offsets: [0, 4] } }, bytesOf(4)),
      /tensor "w" has fields \[data_offsets, dtype\]/,
    ],
    [
      'a non-string dtype',
      rawFile({ w: { ...f32Entry(0, 4), dtype: 4 } }, bytesOf(4)),
      /tensor "w": dtype is 4/,
    ],
    [
      'a shape that is not an array',
      rawFile({ w: { ...f32Entry(0, 4), shape: 4 } }, bytesOf(4)),
      /tensor "w": shape is 4, expected an array/,
    ],
    [
      'a negative dimension',
      rawFile({ w: f32Entry(0, 4, [-1]) }, bytesOf(4)),
      /shape\[0\] is -1, expected a non-negative integer/,
    ],
    ['a fractional dimension', rawFile({ w: f32Entry(0, 4, [1, 0.5]) }, bytesOf(4)), /shape\[1\] is 0.5/],
    [
      'a string dimension',
      rawFile({ w: f32Entry(0, 4, ['1' as unknown as number]) }, bytesOf(4)),
      /shape\[0\] is "1"/,
    ],
    ['a negative offset', rawFile({ w: f32Entry(-4, 0, [1]) }, bytesOf(4)), /data_offsets\[0\] is -4/],
    ['a fractional offset', rawFile({ w: f32Entry(0, 4.5, [1]) }, bytesOf(4)), /data_offsets\[1\] is 4.5/],
    [
      'a string offset',
      rawFile({ w: { ...f32Entry(0, 4), data_offsets: ['0', 4] } }, bytesOf(4)),
      /data_offsets\[0\] is "0"/,
    ],
    [
      'three offsets',
      rawFile({ w: { ...f32Entry(0, 4), data_offsets: [0, 4, 8] } }, bytesOf(4)),
      /data_offsets is \[0,4,8\], expected \[begin, end\]/,
    ],
    ['end before begin', rawFile({ w: f32Entry(8, 4, [1]) }, bytesOf(8)), /\[8, 4\] end before they begin/],
    [
      'a byte range that does not match the shape',
      rawFile({ w: f32Entry(0, 8, [3]) }, bytesOf(8)),
      /cover 8 bytes, but F32 \[3\] needs 12/,
    ],
    [
      'a shape whose size overflows',
      rawFile({ w: f32Entry(0, 0, [2 ** 52, 2 ** 52, 16]) }),
      /cover 0 bytes, but F32 .* needs 1[0-9]{30,}/,
    ],
    [
      'offsets past the end (truncated file)',
      rawFile({ w: f32Entry(0, 16) }, bytesOf(12)),
      /run past the 12-byte data section .*truncated/,
    ],
    [
      'overlapping tensors',
      rawFile({ a: f32Entry(0, 8), b: f32Entry(4, 12) }, bytesOf(12)),
      /tensor "b" at \[4, 12\] overlaps tensor "a"/,
    ],
    [
      'a gap between tensors',
      rawFile({ a: f32Entry(0, 4), b: f32Entry(8, 12) }, bytesOf(12)),
      /gap of 4 bytes .* before tensor "b"/,
    ],
    ['a gap at the start', rawFile({ a: f32Entry(4, 8) }, bytesOf(8)), /gap of 4 bytes .* before tensor "a"/],
    [
      'bytes after the last tensor',
      rawFile({ a: f32Entry(0, 4) }, bytesOf(9)),
      /cover 4 bytes but the data section holds 9/,
    ],
    [
      'an empty tensor inside another',
      rawFile({ a: f32Entry(0, 8), e: f32Entry(4, 4, [0]) }, bytesOf(8)),
      /tensor "e" at \[4, 4\] overlaps tensor "a"/,
    ],
  ];
  for (const [what, bytes, message] of cases) {
    it(`rejects ${what}`, async () => {
      const err = await parse(bytes).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(InvalidModelFileError);
      expect((err as Error).message).toMatch(message);
      expect((err as Error).message).toContain('x.safetensors');
    });
  }

  it('rejects an unknown dtype as unsupported, naming the tensor and dtype', async () => {
    const err = await parse(rawFile({ 'model.w': { ...f32Entry(0, 4), dtype: 'F128' } }, bytesOf(4))).catch(
      (e) => e,
    );
    expect(err).toBeInstanceOf(UnsupportedModelError);
    expect((err as Error).message).toMatch(/x\.safetensors: tensor "model\.w" has unknown dtype "F128"/);
  });

  it('applies a custom header cap', async () => {
    await expect(parse(rawFile({ a: f32Entry(0, 4) }, bytesOf(4)), { maxHeaderBytes: 16 })).rejects.toThrow(
      /exceeds the 16-byte limit/,
    );
  });
});

describe('parseSafetensorsHeader accepts valid files', () => {
  it('reads metadata, scalars, empty tensors and absolute offsets', async () => {
    const header = {
      __metadata__: { format: 'pt', note: 'x' },
      s: { dtype: 'F32', shape: [], data_offsets: [0, 4] },
      e: { dtype: 'F16', shape: [0, 7], data_offsets: [4, 4] },
      w: { dtype: 'U8', shape: [2, 3], data_offsets: [4, 10] },
    };
    const json = JSON.stringify(header);
    const h = await parse(rawFile(header, bytesOf(10)));
    expect(h.metadata).toEqual({ format: 'pt', note: 'x' });
    expect(h.dataStart).toBe(8 + json.length);
    expect(h.tensors.get('s')).toMatchObject({
      dtype: 'F32',
      shape: [],
      byteLength: 4,
      fileOffset: h.dataStart,
    });
    expect(h.tensors.get('e')).toMatchObject({ shape: [0, 7], byteLength: 0, fileOffset: h.dataStart + 4 });
    expect(h.tensors.get('w')).toMatchObject({ shape: [2, 3], byteLength: 6, fileOffset: h.dataStart + 4 });
    expect(h.tensors.get('w')!.file).toMatch(/x\.safetensors$/);
  });

  it('accepts an empty file body, null metadata and keeps a "__proto__" metadata key', async () => {
    expect((await parse(rawFile('{}'))).tensors.size).toBe(0);
    expect((await parse(rawFile('{"__metadata__":null}'))).metadata).toEqual({});
    const h = await parse(rawFile('{"__metadata__":{"__proto__":"p","k":"v"}}'));
    expect(Object.entries(h.metadata)).toEqual([
      ['__proto__', 'p'],
      ['k', 'v'],
    ]);
  });

  it('finds duplicate keys only where they are keys', () => {
    expect(
      findDuplicateJsonKey('{"a":"a","b":["a","a"],"c":{"a":1},"d":"{\\"a\\":1,\\"a\\":2}"}'),
    ).toBeUndefined();
    expect(findDuplicateJsonKey('[{"a":1},{"a":2}]')).toBeUndefined();
    expect(findDuplicateJsonKey('{"x":[{"a":1,"b":2,"a":3}]}')).toBe('a');
    expect(findDuplicateJsonKey('{"\\"":1,"\\u0022":2}')).toBe('"');
  });
});

const ALL_DTYPES: SafetensorsDtype[] = [
  'F64',
  'F32',
  'F16',
  'BF16',
  'I64',
  'I32',
  'I16',
  'I8',
  'U64',
  'U32',
  'U16',
  'U8',
  'BOOL',
];

function sample(dtype: SafetensorsDtype, shape: number[], seed: number): TensorToWrite {
  const n = shape.reduce((a, b) => a * b, 1);
  return { name: `t.${dtype}.${seed}`, dtype, shape, data: bytesOf(n * DTYPE_BYTES[dtype], seed) };
}

describe('encodeSafetensors', () => {
  it('round-trips every dtype, an empty tensor, a scalar and metadata', async () => {
    const tensors = ALL_DTYPES.map((d, i) => sample(d, [i + 1, 3], i));
    tensors.push({ name: 'empty', dtype: 'F32', shape: [4, 0], data: new Uint8Array(0) });
    tensors.push({
      name: 'scalar',
      dtype: 'BF16',
      shape: [],
      data: encodeFromFloat32('BF16', new Float32Array([1.5])),
    });
    const metadata = { format: 'pt', 'kiln.note': 'héllo "quoted"' };
    const bytes = encodeSafetensors(tensors, metadata);
    const dir = openLocalModelDir(folder({ 'model.safetensors': bytes }));
    const ckpt = await openCheckpoint(dir);
    try {
      expect(ckpt.metadata).toEqual(metadata);
      expect(ckpt.tensors.size).toBe(tensors.length);
      for (const t of tensors) {
        const info = ckpt.get(t.name);
        expect(info.dtype).toBe(t.dtype);
        expect(info.shape).toEqual(t.shape);
        // The reference layout aligns every tensor to its element size.
        expect(info.fileOffset % DTYPE_BYTES[t.dtype]).toBe(0);
        expect(await ckpt.readTensor(info)).toEqual(t.data);
      }
      expect(decodeToFloat32('BF16', await ckpt.readTensor(ckpt.get('scalar')))).toEqual(
        new Float32Array([1.5]),
      );
    } finally {
      await ckpt.close();
    }
  });

  it('pads the header to 8 bytes and orders by element size, then name', async () => {
    const bytes = encodeSafetensors([
      sample('U8', [3], 1),
      sample('F64', [1], 2),
      sample('F32', [2], 3),
      sample('I32', [1], 4),
    ]);
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    expect((8 + n) % 8).toBe(0);
    const text = new TextDecoder().decode(bytes.subarray(8, 8 + n));
    expect(text).toMatch(/ *$/);
    expect(text.startsWith('{"t.F64.2":{"dtype":"F64","shape":[1],"data_offsets":[0,8]},"t.F32.3"')).toBe(
      true,
    );
    const h = await parse(bytes);
    expect([...h.tensors.values()].sort((a, b) => a.fileOffset - b.fileOffset).map((t) => t.name)).toEqual([
      't.F64.2',
      't.F32.3',
      't.I32.4',
      't.U8.1',
    ]);
  });

  it('keeps integer-like names and no metadata when none is given', async () => {
    const h = await parse(
      encodeSafetensors([sample('F32', [1], 1), { ...sample('F32', [1], 2), name: '0' }]),
    );
    expect(h.metadata).toEqual({});
    expect([...h.tensors.keys()]).toEqual(['0', 't.F32.1']);
  });

  it('validates its input', () => {
    expect(() =>
      encodeSafetensors([{ name: 'w', dtype: 'F32', shape: [3], data: new Uint8Array(8) }]),
    ).toThrow(/tensor "w": data is 8 bytes, expected 12 for F32 \[3\]/);
    expect(() => encodeSafetensors([sample('U8', [1], 1), sample('U8', [1], 1)])).toThrow(
      /reserved or repeated/,
    );
    expect(() => encodeSafetensors([{ ...sample('U8', [1], 1), shape: [-1] }])).toThrow(KilnError);
  });

  it('writes an index like transformers', () => {
    expect(encodeSafetensorsIndex({ b: 'model-2.safetensors', a: 'model-1.safetensors' }, 12)).toBe(
      '{\n  "metadata": {\n    "total_size": 12\n  },\n  "weight_map": {\n' +
        '    "a": "model-1.safetensors",\n    "b": "model-2.safetensors"\n  }\n}\n',
    );
  });
});

describe('Checkpoint reads', () => {
  it('reads tensors at misaligned offsets correctly', async () => {
    // Hand-built like a non-reference writer: 3 bytes of U8 first, so the F32 and F16 data are misaligned.
    const f32 = encodeFromFloat32('F32', new Float32Array([1.5, -2, 3.25]));
    const f16 = encodeFromFloat32('F16', new Float32Array([0.5, -1]));
    const header = `{"b":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},"f":{"dtype":"F32","shape":[3],"data_offsets":[3,15]},"h":{"dtype":"F16","shape":[2],"data_offsets":[15,19]}}`;
    const data = new Uint8Array([9, 8, 7, ...f32, ...f16]);
    const ckpt = await openCheckpoint(
      openLocalModelDir(folder({ 'model.safetensors': rawFile(header, data) })),
    );
    try {
      expect(ckpt.get('f').fileOffset % 4).not.toBe(0);
      expect(decodeToFloat32('F32', await ckpt.readTensor(ckpt.get('f')))).toEqual(
        new Float32Array([1.5, -2, 3.25]),
      );
      expect(decodeToFloat32('F16', await ckpt.readTensor(ckpt.get('h')))).toEqual(
        new Float32Array([0.5, -1]),
      );
      expect(await ckpt.readTensor(ckpt.get('b'))).toEqual(new Uint8Array([9, 8, 7]));
    } finally {
      await ckpt.close();
    }
  });

  it('streams chunks that reassemble exactly', async () => {
    const big = sample('F32', [250], 5); // 1000 bytes
    const ckpt = await openCheckpoint(
      openLocalModelDir(folder({ 'model.safetensors': encodeSafetensors([big, sample('U8', [0], 1)]) })),
    );
    try {
      const info = ckpt.get(big.name);
      for (const max of [1, 7, 13, 64, 1000, 4096]) {
        const out = new Uint8Array(info.byteLength);
        let expected = 0;
        for await (const { offset, bytes } of ckpt.readTensorChunks(info, max)) {
          expect(offset).toBe(expected);
          expect(bytes.byteLength).toBeLessThanOrEqual(max);
          if (max >= 8 && offset + bytes.byteLength < info.byteLength) expect(bytes.byteLength % 8).toBe(0);
          out.set(bytes, offset);
          expected += bytes.byteLength;
        }
        expect(expected).toBe(info.byteLength);
        expect(out).toEqual(big.data);
      }
      const chunks = [];
      for await (const c of ckpt.readTensorChunks(ckpt.get('t.U8.1'), 16)) chunks.push(c);
      expect(chunks).toEqual([]);
      const bad = ckpt.readTensorChunks(info, 0)[Symbol.asyncIterator]();
      await expect(bad.next()).rejects.toThrow(/maxChunkBytes is 0/);
    } finally {
      await ckpt.close();
    }
  });

  it('names the missing tensor and location, and refuses reads after close', async () => {
    const path = folder({ 'model.safetensors': encodeSafetensors([sample('F32', [2], 1)]) });
    const ckpt = await openCheckpoint(openLocalModelDir(path));
    expect(ckpt.has('nope')).toBe(false);
    expect(() => ckpt.get('nope')).toThrow(`missing tensor nope in ${path}`);
    const info = ckpt.get('t.F32.1');
    await ckpt.close();
    await ckpt.close();
    await expect(ckpt.readTensor(info)).rejects.toThrow(/closed/);
  });

  it('says which files it looked for in a folder without a checkpoint', async () => {
    const path = folder({ 'other.safetensors': encodeSafetensors([]) });
    await expect(openCheckpoint(openLocalModelDir(path))).rejects.toThrow(
      `no checkpoint in ${path}: looked for model.safetensors and model.safetensors.index.json`,
    );
  });
});

describe('sharded checkpoints', () => {
  const a1 = sample('F32', [4], 1);
  const a2 = sample('F16', [3, 2], 2);
  const b1 = sample('BF16', [5], 3);
  const shard1 = encodeSafetensors([a1, a2], { format: 'pt', shard: '1' });
  const shard2 = encodeSafetensors([b1], { format: 'pt', shard: '2', extra: 'y' });
  const S1 = 'model-00001-of-00002.safetensors';
  const S2 = 'model-00002-of-00002.safetensors';
  const goodMap = { [a1.name]: S1, [a2.name]: S1, [b1.name]: S2 };
  const total = a1.data.byteLength + a2.data.byteLength + b1.data.byteLength;

  function sharded(
    index: string | object,
    shards: Record<string, Uint8Array> = { [S1]: shard1, [S2]: shard2 },
  ) {
    const text = typeof index === 'string' ? index : JSON.stringify(index);
    return openLocalModelDir(folder({ 'model.safetensors.index.json': text, ...shards }));
  }

  it('opens two shards, reads from both and opens each shard once', async () => {
    const inner = sharded(encodeSafetensorsIndex(goodMap, total));
    const opened: string[] = [];
    const counting: ModelDir = {
      location: inner.location,
      exists: (f) => inner.exists(f),
      readText: (f) => inner.readText(f),
      open: (f) => {
        opened.push(f);
        return inner.open(f);
      },
    };
    const ckpt = await openCheckpoint(counting);
    try {
      expect(opened.sort()).toEqual([S1, S2]);
      expect([...ckpt.tensors.keys()].sort()).toEqual([a1.name, a2.name, b1.name].sort());
      expect(ckpt.metadata).toEqual({ format: 'pt', shard: '1', extra: 'y' });
      for (const t of [a1, a2, b1]) expect(await ckpt.readTensor(ckpt.get(t.name))).toEqual(t.data);
      expect(ckpt.get(b1.name).file).toMatch(new RegExp(`${S2}$`));
      expect(opened.length).toBe(2);
    } finally {
      await ckpt.close();
    }
  });

  it('accepts an index without metadata', async () => {
    const ckpt = await openCheckpoint(sharded({ weight_map: goodMap }));
    expect(ckpt.tensors.size).toBe(3);
    await ckpt.close();
  });

  const bad: [string, () => ModelDir, RegExp][] = [
    [
      'an index that is not JSON',
      () => sharded('{"weight_map": '),
      /model.safetensors.index.json in .* is not valid JSON/,
    ],
    [
      'an index without weight_map',
      () => sharded({ metadata: {} }),
      /weight_map is missing, expected an object/,
    ],
    ['a weight_map that is a list', () => sharded({ weight_map: [S1] }), /weight_map is \[/],
    [
      'a non-string shard name',
      () => sharded({ weight_map: { ...goodMap, [b1.name]: 2 } }),
      /weight_map\["t.BF16.3"\] is 2, expected a file name/,
    ],
    [
      'an index pointing to a missing shard',
      () => sharded({ weight_map: goodMap }, { [S1]: shard1 }),
      new RegExp(`lists shard ${S2}, which is missing`),
    ],
    [
      'a tensor missing from its shard',
      () => sharded({ weight_map: { ...goodMap, 'x.weight': S2 } }),
      new RegExp(`maps tensor x.weight to ${S2}, which lacks it`),
    ],
    [
      'a tensor the index does not list',
      () => sharded({ weight_map: { [a1.name]: S1, [b1.name]: S2 } }),
      /tensor t.F16.2 is in .* but .* does not list it/,
    ],
    [
      'a tensor mapped to the wrong shard',
      () => sharded({ weight_map: { ...goodMap, [a2.name]: S2 } }),
      new RegExp(`tensor t.F16.2 is in ${S1} but .* maps it to ${S2}`),
    ],
    [
      'path traversal',
      () => sharded({ weight_map: { ...goodMap, [b1.name]: '../x.safetensors' } }),
      /"\.\.\/x\.safetensors", expected a plain file name/,
    ],
    [
      'an absolute shard path',
      () => sharded({ weight_map: { ...goodMap, [b1.name]: '/etc/passwd' } }),
      /"\/etc\/passwd", expected a plain file name/,
    ],
    [
      'a backslash path',
      () => sharded({ weight_map: { ...goodMap, [b1.name]: '..\\x.safetensors' } }),
      /expected a plain file name/,
    ],
    [
      'a shard name with a drive colon',
      () => sharded({ weight_map: { ...goodMap, [b1.name]: 'c:x.safetensors' } }),
      /"c:x\.safetensors", expected a plain file name inside the model folder, ending in \.safetensors/,
    ],
    [
      'a hidden shard name',
      () => sharded({ weight_map: { ...goodMap, [b1.name]: '.x.safetensors' } }),
      /"\.x\.safetensors", expected a plain file name/,
    ],
    [
      'a shard that is not a .safetensors file',
      () => sharded({ weight_map: { ...goodMap, [b1.name]: 'pytorch_model.bin' } }),
      /"pytorch_model\.bin", expected a plain file name inside the model folder, ending in \.safetensors/,
    ],
    [
      'a tensor in two shards',
      () => sharded({ weight_map: goodMap }, { [S1]: shard1, [S2]: encodeSafetensors([b1, a1]) }),
      new RegExp(`tensor t.F32.1 appears in both ${S1} and ${S2}`),
    ],
    [
      'a wrong total_size',
      () => sharded(encodeSafetensorsIndex(goodMap, total + 1)),
      new RegExp(`total_size is ${total + 1}, but the shards' tensors hold ${total} bytes`),
    ],
    [
      'a non-numeric total_size',
      () => sharded({ metadata: { total_size: '12' }, weight_map: goodMap }),
      /total_size is "12", expected a non-negative integer/,
    ],
    [
      'a duplicate key in the index',
      () => sharded(`{"weight_map":{"${a1.name}":"${S1}","${a1.name}":"${S1}"}}`),
      /repeats the key "t.F32.1"/,
    ],
    [
      'a corrupt shard',
      () =>
        sharded({ weight_map: goodMap }, { [S1]: shard1, [S2]: shard2.subarray(0, shard2.byteLength - 1) }),
      new RegExp(`${S2}: .*`),
    ],
  ];
  for (const [what, make, message] of bad) {
    it(`rejects ${what}`, async () => {
      const err = await openCheckpoint(make()).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(InvalidModelFileError);
      expect((err as Error).message).toMatch(message);
    });
  }

  it('prefers model.safetensors when both layouts are present', async () => {
    const single = encodeSafetensors([sample('U8', [2], 9)]);
    const dir = openLocalModelDir(
      folder({ 'model.safetensors': single, 'model.safetensors.index.json': '{broken', [S1]: shard1 }),
    );
    const ckpt = await openCheckpoint(dir);
    expect([...ckpt.tensors.keys()]).toEqual(['t.U8.9']);
    await ckpt.close();
  });
});

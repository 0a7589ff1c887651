import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, test } from 'vitest';
import { encodeFromFloat32 } from '../../src/io/dtype.js';
import { encodeSafetensors, type TensorToWrite } from '../../src/io/safetensors-writer.js';
import { writeSafetensorsFile } from '../../src/node/safetensors-file.js';
import { randomF32 } from '../helpers/random.js';

const dir = mkdtempSync(join(tmpdir(), 'kiln-st-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const tensors: TensorToWrite[] = [
  { name: 'b.bf16', dtype: 'BF16', shape: [3, 5], data: encodeFromFloat32('BF16', randomF32(15, 1)) },
  { name: 'a.f32', dtype: 'F32', shape: [7], data: encodeFromFloat32('F32', randomF32(7, 2)) },
  { name: 'c.u8', dtype: 'U8', shape: [3], data: Uint8Array.from([1, 2, 3]) },
  { name: 'empty', dtype: 'F16', shape: [0, 4], data: new Uint8Array(0) },
];

test('streaming one tensor at a time writes the same bytes as the in-memory writer', async () => {
  const path = join(dir, 'model.safetensors');
  const byName = new Map(tensors.map((t) => [t.name, t.data]));
  const order: string[] = [];
  const size = await writeSafetensorsFile(
    path,
    tensors.map(({ name, dtype, shape }) => ({ name, dtype, shape })),
    (t) => {
      order.push(t.name);
      return byName.get(t.name) as Uint8Array;
    },
    { format: 'pt' },
  );
  const want = encodeSafetensors(tensors, { format: 'pt' });
  expect(new Uint8Array(readFileSync(path))).toEqual(want);
  expect(size).toBe(want.byteLength);
  // Produced in file order: largest element size first, then by name.
  expect(order).toEqual(['a.f32', 'b.bf16', 'empty', 'c.u8']);
  expect(existsSync(`${path}.part`)).toBe(false);
});

test('a failing or wrong-sized producer leaves no file behind', async () => {
  const path = join(dir, 'bad.safetensors');
  const specs = tensors.map(({ name, dtype, shape }) => ({ name, dtype, shape }));
  await expect(writeSafetensorsFile(path, specs, () => new Uint8Array(3))).rejects.toThrow(
    /a\.f32 produced 3 bytes, expected 28/,
  );
  await expect(
    writeSafetensorsFile(path, specs, () => {
      throw new Error('quantizer failed');
    }),
  ).rejects.toThrow('quantizer failed');
  expect(existsSync(path)).toBe(false);
  expect(existsSync(`${path}.part`)).toBe(false);
});

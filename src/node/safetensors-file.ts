/**
 * Writes a safetensors file one tensor at a time: the header first (its layout is known from the
 * shapes alone), then each tensor's bytes as `produce` makes them, so converters and quantizers
 * never hold a whole model in memory. The file appears under its name only once complete.
 */
import { open, rename, rm } from 'node:fs/promises';
import { KilnError } from '../errors.js';
import { planSafetensors, type TensorSpec } from '../io/safetensors-writer.js';

export async function writeSafetensorsFile<T extends TensorSpec>(
  path: string,
  tensors: readonly T[],
  produce: (tensor: T) => Uint8Array | Promise<Uint8Array>,
  metadata?: Record<string, string>,
): Promise<number> {
  const plan = planSafetensors(tensors, metadata);
  const part = `${path}.part`;
  const fh = await open(part, 'w');
  try {
    await fh.write(plan.header);
    for (const t of plan.order) {
      const data = await produce(t);
      if (data.byteLength !== t.byteLength) {
        throw new KilnError(
          `${path}: tensor ${t.name} produced ${data.byteLength} bytes, expected ${t.byteLength}`,
        );
      }
      await fh.write(data);
    }
    await fh.close();
    await rename(part, path);
    return plan.header.byteLength + plan.dataBytes;
  } catch (e) {
    await fh.close().catch(() => undefined);
    await rm(part, { force: true });
    throw e;
  }
}

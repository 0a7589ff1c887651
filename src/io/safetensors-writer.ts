/**
 * Writes safetensors files the way the reference writer lays them out (tensor order, alignment,
 * header padding), in memory or planned for streaming one tensor at a time, and the index of a
 * sharded checkpoint as transformers writes it.
 */
import { KilnError } from '../errors.js';
import { DTYPE_BYTES, isSafetensorsDtype, type SafetensorsDtype } from './dtype.js';
import { describeValue } from './json.js';
import { METADATA_KEY } from './safetensors.js';

/** One tensor to write with {@link encodeSafetensors}. */
export interface TensorToWrite {
  name: string;
  dtype: SafetensorsDtype;
  shape: readonly number[];
  /** Little-endian C-order elements: exactly prod(shape) * sizeof(dtype) bytes. */
  data: Uint8Array;
}

const utf8 = new TextEncoder();

/** A tensor to be written, without its bytes (see {@link planSafetensors}). */
export type TensorSpec = Omit<TensorToWrite, 'data'>;

/** Where each tensor of a file being written goes. */
export interface SafetensorsPlan<T extends TensorSpec> {
  /** The first bytes of the file: the u64 header length and the space-padded JSON header. */
  header: Uint8Array<ArrayBuffer>;
  /** The tensors in file order, each with its byte length. */
  order: (T & { byteLength: number })[];
  /** Bytes after the header. */
  dataBytes: number;
}

/**
 * Lays out a safetensors file the way the reference writer does: tensors ordered by decreasing
 * element size then name (so each starts aligned to its element size), and the header padded with
 * spaces so the data section starts at a multiple of 8. Writers then emit `header` and each
 * tensor's bytes in `order`, which lets a large file be streamed one tensor at a time.
 */
export function planSafetensors<T extends TensorSpec>(
  tensors: readonly T[],
  metadata?: Record<string, string>,
): SafetensorsPlan<T> {
  const seen = new Set<string>();
  const sized = tensors.map((t) => {
    const where = `safetensors writer: tensor ${JSON.stringify(t.name)}`;
    if (t.name === METADATA_KEY || seen.has(t.name)) {
      throw new KilnError(`${where}: name is reserved or repeated`);
    }
    seen.add(t.name);
    if (!isSafetensorsDtype(t.dtype))
      throw new KilnError(`${where}: unknown dtype ${describeValue(t.dtype)}`);
    let count = 1;
    for (const d of t.shape) {
      if (!Number.isSafeInteger(d) || d < 0) {
        throw new KilnError(`${where}: shape [${t.shape.join(', ')}] is not valid`);
      }
      count *= d;
    }
    return { ...t, byteLength: count * DTYPE_BYTES[t.dtype] };
  });
  const order = sized.sort(
    (a, b) => DTYPE_BYTES[b.dtype] - DTYPE_BYTES[a.dtype] || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0),
  );
  // Built by hand: a JS object would move integer-like tensor names ("0") to the front.
  const parts: string[] = [];
  if (metadata !== undefined) {
    const entries = Object.entries(metadata).map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`);
    parts.push(`"${METADATA_KEY}":{${entries.join(',')}}`);
  }
  let offset = 0;
  for (const t of order) {
    const end = offset + t.byteLength;
    parts.push(
      `${JSON.stringify(t.name)}:{"dtype":${JSON.stringify(t.dtype)},"shape":${JSON.stringify(t.shape)},` +
        `"data_offsets":[${offset},${end}]}`,
    );
    offset = end;
  }
  const json = utf8.encode(`{${parts.join(',')}}`);
  const headerLen = json.byteLength + ((8 - (json.byteLength % 8)) % 8);
  const header = new Uint8Array(8 + headerLen);
  new DataView(header.buffer).setBigUint64(0, BigInt(headerLen), true);
  header.set(json, 8);
  header.fill(0x20, 8 + json.byteLength);
  return { header, order, dataBytes: offset };
}

/** Serializes tensors as one safetensors file in memory (see {@link planSafetensors}). */
export function encodeSafetensors(
  tensors: readonly TensorToWrite[],
  metadata?: Record<string, string>,
): Uint8Array<ArrayBuffer> {
  const { header, order, dataBytes } = planSafetensors(tensors, metadata);
  const out = new Uint8Array(header.byteLength + dataBytes);
  out.set(header);
  let pos = header.byteLength;
  for (const t of order) {
    if (t.data.byteLength !== t.byteLength) {
      throw new KilnError(
        `safetensors writer: tensor ${JSON.stringify(t.name)}: data is ${t.data.byteLength} bytes, expected ${t.byteLength} for ${t.dtype} [${t.shape.join(', ')}]`,
      );
    }
    out.set(t.data, pos);
    pos += t.byteLength;
  }
  return out;
}

/**
 * The text of a `model.safetensors.index.json` as transformers writes it (2-space indent, sorted
 * tensor names, trailing newline).
 */
export function encodeSafetensorsIndex(
  weightMap: Readonly<Record<string, string>>,
  totalSize: number,
): string {
  const names = Object.keys(weightMap).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const lines = names.map((n) => `    ${JSON.stringify(n)}: ${JSON.stringify(weightMap[n])}`);
  return (
    `{\n  "metadata": {\n    "total_size": ${totalSize}\n  },\n  "weight_map": {\n` +
    `${lines.join(',\n')}\n  }\n}\n`
  );
}

/**
 * The GGUF container (ggml's single-file format, versions 2 and 3, little-endian) and our own
 * validating reader. The header is untrusted input that decides how much we allocate and which bytes
 * we read, so nothing in it is used before it is checked: counts and string lengths against the
 * bytes left in the file and against fixed caps, value and element types against the format's
 * lists, every tensor's size against its type's block geometry (gguf-types.ts), its offset against
 * the alignment, the data section and every other tensor. The header is read through a window over
 * the ByteSource, so a multi-GB file (on disk, or over HTTP Range requests) is never read whole.
 *
 * This file reads the header's structure (magic, version, the tensor table, where the data lies);
 * the bounded primitive and value reads are gguf-read.ts, the metadata's types and typed access
 * gguf-metadata.ts (both re-exported here).
 */
import { UnsupportedModelError } from '../errors.js';
import type { ByteSource } from './byte-source.js';
import { GgufMetadata, type GgufValue } from './gguf-metadata.js';
import {
  Cursor,
  DEFAULT_GGUF_LIMITS,
  fail,
  readCount,
  readString,
  readValue,
  valueType,
  type GgufLimits,
} from './gguf-read.js';
import { ggufTensorBytes, ggufTypeById, type GgufTypeInfo } from './gguf-types.js';
import { describeValue } from './json.js';

export {
  GGUF_VALUE_TYPES,
  GgufMetadata,
  type GgufArrayValues,
  type GgufItemType,
  type GgufValue,
  type GgufValueType,
} from './gguf-metadata.js';
export { DEFAULT_GGUF_LIMITS, type GgufLimits } from './gguf-read.js';

/** One tensor of the file. */
export interface GgufTensorInfo {
  name: string;
  type: GgufTypeInfo;
  /** ggml's `ne`: the fastest-varying dimension first (a [rows, cols] matrix is [cols, rows]). */
  dims: number[];
  elements: number;
  byteLength: number;
  /** Absolute byte offset of the tensor's first block in the file. */
  fileOffset: number;
}

/** A parsed GGUF header. */
export interface GgufHeader {
  /** The ByteSource's name, for messages. */
  file: string;
  version: 2 | 3;
  metadata: GgufMetadata;
  /** In file-table order. */
  tensors: Map<string, GgufTensorInfo>;
  alignment: number;
  /** Absolute offset of the data section. */
  dataStart: number;
}

/** GGUF's default alignment of the data section and of each tensor when general.alignment is absent. */
export const GGUF_DEFAULT_ALIGNMENT = 32;
/** ggml's GGML_MAX_DIMS. */
export const GGUF_MAX_DIMS = 4;
/** ggml's GGML_MAX_NAME: tensor names are shorter than this many bytes. */
export const GGUF_MAX_NAME_BYTES = 64;

const GGUF_MAGIC = 0x46554747; // "GGUF" read as a little-endian u32

/**
 * Reads and validates the header of a GGUF file: magic, version (2 or 3), metadata, the tensor
 * table, the alignment and where every tensor lies. Throws InvalidModelFileError naming the file and
 * the field for anything malformed, truncated or inconsistent, UnsupportedModelError for what is
 * well-formed but not read by Kiln (version 1, big-endian files, nested arrays).
 */
export async function parseGgufHeader(
  src: ByteSource,
  limits: Partial<GgufLimits> = {},
): Promise<GgufHeader> {
  const lim: GgufLimits = { ...DEFAULT_GGUF_LIMITS, ...limits };
  const c = new Cursor(src, lim.maxHeaderBytes);
  const file = src.name;
  if (src.size < 24) fail(file, `file is ${src.size} bytes, too short for a GGUF header (24 bytes)`);
  await c.need(8, 'the magic and version');
  const magic = c.u32();
  if (magic !== GGUF_MAGIC) {
    const b = [0, 1, 2, 3].map((i) => (magic >>> (8 * i)) & 0xff);
    const shown = b.map((x) => (x >= 0x20 && x < 0x7f ? String.fromCharCode(x) : `\\x${x.toString(16)}`));
    fail(file, `not a GGUF file: it starts with "${shown.join('')}", expected "GGUF"`);
  }
  const version = c.u32();
  if (version !== 2 && version !== 3) {
    // A big-endian file stores the version byte-swapped: 3 reads as 0x03000000.
    const swapped =
      ((version & 0xff) << 24) |
      (((version >>> 8) & 0xff) << 16) |
      (((version >>> 16) & 0xff) << 8) |
      (version >>> 24);
    if (swapped === 2 || swapped === 3) {
      throw new UnsupportedModelError(`${file}: a big-endian GGUF file; Kiln reads little-endian GGUF`);
    }
    if (version === 1) {
      throw new UnsupportedModelError(
        `${file}: GGUF version 1 is not supported (convert it again with current llama.cpp)`,
      );
    }
    fail(file, `GGUF version ${version} is unknown (Kiln reads versions 2 and 3)`);
  }
  // A tensor-table entry takes at least 8 (name length) + 1 (name) + 4 (n_dims) + 8 (one dim) +
  // 4 (type) + 8 (offset) bytes and a metadata pair 8 (key length) + 1 (key) + 4 (type) + 1 (value),
  // which bounds both counts by the file before anything is allocated for them.
  const tensorCount = await readCount(c, 'tensor_count', 33, Number.MAX_SAFE_INTEGER);
  const kvCount = await readCount(c, 'metadata_kv_count', 14, Number.MAX_SAFE_INTEGER);

  const entries = new Map<string, GgufValue>();
  for (let i = 0; i < kvCount; i++) {
    const key = await readString(c, `metadata key #${i}`, lim);
    if (key === '') fail(file, `metadata key #${i} is empty`);
    if (entries.has(key)) fail(file, `metadata key ${JSON.stringify(key)} appears twice`);
    await c.need(4, `the type of metadata ${key}`);
    const type = valueType(c, c.u32(), `metadata ${key}`);
    entries.set(key, await readValue(c, type, `metadata ${key}`, lim));
  }
  const metadata = new GgufMetadata(file, entries);

  let alignment = GGUF_DEFAULT_ALIGNMENT;
  const al = entries.get('general.alignment');
  if (al !== undefined) {
    if (al.type !== 'u32' || al.value === 0 || (al.value & (al.value - 1)) !== 0) {
      fail(
        file,
        `metadata general.alignment is ${al.type} ${describeValue(al.type === 'array' ? '[...]' : String(al.value))}, expected a u32 power of two`,
      );
    }
    alignment = al.value;
  }

  const infos: {
    name: string;
    type: GgufTypeInfo;
    dims: number[];
    elements: number;
    bytes: number;
    offset: bigint;
  }[] = [];
  const names = new Set<string>();
  for (let i = 0; i < tensorCount; i++) {
    const name = await readString(c, `the name of tensor #${i}`, lim);
    const where = `tensor ${JSON.stringify(name)}`;
    if (name === '') fail(file, `tensor #${i} has an empty name`);
    if (new TextEncoder().encode(name).length >= GGUF_MAX_NAME_BYTES) {
      fail(file, `${where}: name is over ${GGUF_MAX_NAME_BYTES - 1} bytes`);
    }
    if (names.has(name)) fail(file, `${where} appears twice in the tensor table`);
    names.add(name);
    await c.need(4, `the dimension count of ${where}`);
    const nDims = c.u32();
    if (nDims < 1 || nDims > GGUF_MAX_DIMS)
      fail(file, `${where} has ${nDims} dimensions, expected 1..${GGUF_MAX_DIMS}`);
    await c.need(8 * nDims + 12, `the dimensions, type and offset of ${where}`);
    const dims: number[] = [];
    let elements = 1n;
    for (let d = 0; d < nDims; d++) {
      const n = c.u64();
      if (n === 0n) fail(file, `${where}: dimension ${d} is 0`);
      elements *= n;
      // Past 2^53 elements no size is representable; a real tensor is far smaller than the file.
      if (elements > BigInt(Number.MAX_SAFE_INTEGER)) {
        fail(file, `${where}: dimensions [${[...dims, n].join(', ')}...] hold more than 2^53 elements`);
      }
      dims.push(Number(n));
    }
    const typeId = c.u32();
    const type = ggufTypeById(typeId);
    if (!type) fail(file, `${where} has unknown element type ${typeId}`);
    const bytes = dims[0]! % type.blockElems === 0 ? ggufTensorBytes(type, Number(elements)) : null;
    if (bytes === null) {
      fail(
        file,
        `${where}: its first dimension ${dims[0]} is not a multiple of ${type.name}'s block of ${type.blockElems}`,
      );
    }
    const offset = c.u64();
    if (offset % BigInt(alignment) !== 0n) {
      fail(file, `${where}: offset ${offset} is not a multiple of the alignment ${alignment}`);
    }
    infos.push({ name, type, dims, elements: Number(elements), bytes, offset });
  }
  const dataStart = Math.ceil(c.pos / alignment) * alignment;
  const dataSize = src.size - dataStart;
  if (tensorCount > 0 && dataSize < 0) {
    fail(file, `truncated: the data section starts at ${dataStart} but the file is ${src.size} bytes`);
  }

  const tensors = new Map<string, GgufTensorInfo>();
  for (const t of infos) {
    const end = t.offset + BigInt(t.bytes);
    if (end > BigInt(Math.max(dataSize, 0))) {
      fail(
        file,
        `tensor ${JSON.stringify(t.name)} (${t.type.name} [${t.dims.join(', ')}], ${t.bytes} bytes at data offset ${t.offset}) ` +
          `runs past the ${Math.max(dataSize, 0)}-byte data section (file is ${src.size} bytes, truncated?)`,
      );
    }
    tensors.set(t.name, {
      name: t.name,
      type: t.type,
      dims: t.dims,
      elements: t.elements,
      byteLength: t.bytes,
      fileOffset: dataStart + Number(t.offset),
    });
  }
  // Tensors may leave gaps (alignment padding) but never share bytes.
  const sorted = [...tensors.values()].sort((a, b) => a.fileOffset - b.fileOffset);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!;
    const cur = sorted[i]!;
    if (cur.fileOffset < prev.fileOffset + prev.byteLength && cur.byteLength > 0) {
      fail(
        file,
        `tensor ${JSON.stringify(cur.name)} at data offset ${cur.fileOffset - dataStart} overlaps tensor ` +
          `${JSON.stringify(prev.name)} (data offsets ${prev.fileOffset - dataStart}..${prev.fileOffset - dataStart + prev.byteLength})`,
      );
    }
  }
  return { file, version, metadata, tensors, alignment, dataStart };
}

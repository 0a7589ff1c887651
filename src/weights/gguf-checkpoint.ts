/**
 * A GGUF file seen as a Checkpoint under the architecture's transformers tensor names, so the
 * loader, every float path and the reference model read it like a safetensors folder: GGUF's
 * F32/F16/BF16 tensors are the safetensors dtypes of the same bytes (ggml's [cols, rows] `ne` is
 * the row-major [rows, cols] shape), and the rows llama.cpp's converter permuted (Llama-family q
 * and k) are put back in transformers' order while reading. A block-quantized tensor reads as its
 * raw rows of blocks, dtype U8 [rows, bytes per row] (rows un-permuted alike), for the GGUF weight
 * source (gguf.ts), which finds its type through {@link GgufCheckpoint.ggufTensor}.
 */
import { KilnError, UnsupportedModelError } from '../errors.js';
import type { ByteSource } from '../io/byte-source.js';
import { decodeToFloat32, type SafetensorsDtype } from '../io/dtype.js';
import type { GgufHeader, GgufTensorInfo } from '../io/gguf.js';
import type { Checkpoint } from '../io/safetensors-checkpoint.js';
import type { TensorInfo } from '../io/safetensors.js';
import { ggufArchitecture, ggufRowPermutation, ggufTensorName } from '../model/gguf-config.js';
import type { ModelSpec } from '../model/spec.js';
import { expectedTensors, modelTensors, normTensors } from '../model/tensors.js';

/** GGUF element types that are safetensors dtypes byte for byte. */
const FLOAT_TYPES: Readonly<Record<string, SafetensorsDtype>> = { F32: 'F32', F16: 'F16', BF16: 'BF16' };

export interface GgufCheckpoint extends Checkpoint {
  readonly gguf: GgufHeader;
  /** The GGUF tensor behind a transformers name, or undefined when the file has none. */
  ggufTensor(name: string): GgufTensorInfo | undefined;
}

/** Rows `[h·d, (h+1)·d)` of a head in GGUF order (halves interleaved) back in transformers' order. */
function unpermuteHeads(bytes: Uint8Array, rowBytes: number, headDim: number): Uint8Array {
  const out = new Uint8Array(bytes.length);
  const half = headDim / 2;
  const rows = bytes.length / rowBytes;
  for (let r = 0; r < rows; r++) {
    const head = Math.floor(r / headDim);
    const w = r % headDim;
    // transformers row (i, j) of a head, i < 2, j < half, was written at GGUF row (j, i).
    const i = Math.floor(w / half);
    const j = w % half;
    const from = head * headDim + 2 * j + i;
    out.set(bytes.subarray(from * rowBytes, (from + 1) * rowBytes), r * rowBytes);
  }
  return out;
}

/**
 * transformers' w of Gemma norm weights the converter stored as x = w + 1 (rounded to the
 * checkpoint's dtype): x - 1, exact in float64 and, for x in [0.5, 2] (every real norm weight we
 * know of), exact in f32 too, so the (1 + w) the loader and the reference form in f32 is x itself.
 */
export function gemmaNormValues(stored: Float32Array): Float32Array {
  return Float32Array.from(stored, (x) => x - 1);
}

class OpenGgufCheckpoint implements GgufCheckpoint {
  readonly metadata: Readonly<Record<string, string>> = {};
  private closed = false;
  private readonly ggufOf = new Map<string, GgufTensorInfo>();
  private readonly permutation = new Map<string, number>();
  /** Norm weights stored as w + 1 (Gemma), presented as F32 w: their file dtype. */
  private readonly plusOne = new Map<string, SafetensorsDtype>();

  constructor(
    readonly gguf: GgufHeader,
    private readonly src: ByteSource,
    spec: ModelSpec,
    readonly tensors: Map<string, TensorInfo>,
  ) {
    const arch = ggufArchitecture(gguf);
    const norms = arch.normsPlusOne ? normTensors(modelTensors(spec)) : new Set<string>();
    for (const name of expectedTensors(spec).keys()) {
      const g = ggufTensorName(arch.name, name);
      const t = g === undefined ? undefined : gguf.tensors.get(g);
      if (g === undefined || t === undefined) continue;
      this.ggufOf.set(name, t);
      const perm = ggufRowPermutation(gguf, spec, g);
      if (perm > 0) this.permutation.set(name, perm);
      const dtype = Object.hasOwn(FLOAT_TYPES, t.type.name) ? FLOAT_TYPES[t.type.name] : undefined;
      if (norms.has(name)) {
        if (dtype === undefined) {
          throw new UnsupportedModelError(
            `tensor ${t.name} in ${gguf.file} is ${t.type.name}; a norm weight must be F32, F16 or BF16`,
          );
        }
        this.plusOne.set(name, dtype);
        tensors.set(name, {
          name,
          dtype: 'F32',
          shape: [...t.dims].reverse(),
          byteLength: t.elements * 4,
          fileOffset: t.fileOffset,
          file: src.name,
        });
        continue;
      }
      const rows = t.elements / (t.dims[0] as number);
      tensors.set(name, {
        name,
        // Block tensors are their raw bytes, one row of blocks per row: U8 [rows, bytes per row].
        dtype: dtype ?? 'U8',
        shape: dtype !== undefined ? [...t.dims].reverse() : [rows, t.byteLength / rows],
        byteLength: t.byteLength,
        fileOffset: t.fileOffset,
        file: src.name,
      });
    }
  }

  get location(): string {
    return this.gguf.file;
  }

  ggufTensor(name: string): GgufTensorInfo | undefined {
    return this.ggufOf.get(name);
  }

  get(name: string): TensorInfo {
    const info = this.tensors.get(name);
    if (info) return info;
    const gname = ggufTensorName(ggufArchitecture(this.gguf).name, name);
    throw new UnsupportedModelError(
      `missing tensor ${gname ?? name}${gname ? ` (${name})` : ''} in ${this.location}`,
    );
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  private check(info: TensorInfo): void {
    if (this.closed)
      throw new KilnError(`checkpoint ${this.location} is closed (reading tensor ${info.name})`);
    const known = this.tensors.get(info.name);
    if (known?.fileOffset !== info.fileOffset || known.byteLength !== info.byteLength) {
      throw new KilnError(`tensor ${info.name} does not belong to checkpoint ${this.location}`);
    }
  }

  /** Bytes of one row ([rows, cols]) or, for a vector, of one element. */
  private rowBytes(info: TensorInfo): number {
    return info.byteLength / (info.shape[0] ?? 1);
  }

  /** A norm stored as w + 1, read whole and presented as F32 w. */
  private async readPlusOne(info: TensorInfo, fileDtype: SafetensorsDtype): Promise<Uint8Array> {
    const t = this.ggufOf.get(info.name) as GgufTensorInfo;
    const stored = decodeToFloat32(fileDtype, await this.src.read(t.fileOffset, t.byteLength));
    return new Uint8Array(gemmaNormValues(stored).buffer);
  }

  async readTensor(info: TensorInfo): Promise<Uint8Array> {
    this.check(info);
    if (info.byteLength === 0) return new Uint8Array(0);
    const plusOne = this.plusOne.get(info.name);
    if (plusOne !== undefined) return this.readPlusOne(info, plusOne);
    const bytes = await this.src.read(info.fileOffset, info.byteLength);
    const perm = this.permutation.get(info.name);
    return perm === undefined ? bytes : unpermuteHeads(bytes, this.rowBytes(info), perm);
  }

  async *readTensorChunks(
    info: TensorInfo,
    maxChunkBytes: number,
    from = 0,
  ): AsyncIterable<{ offset: number; bytes: Uint8Array }> {
    if (!Number.isSafeInteger(maxChunkBytes) || maxChunkBytes <= 0) {
      throw new KilnError(`maxChunkBytes is ${maxChunkBytes}, expected a positive integer`);
    }
    this.check(info);
    const plusOne = this.plusOne.get(info.name);
    if (plusOne !== undefined) {
      // Norm weights are one row of hidden (or head_dim) values: converted whole, then chunked.
      if (!Number.isSafeInteger(from) || from < 0 || from > info.byteLength || from % 4 !== 0)
        throw new KilnError(`from is ${from}, expected a byte offset within tensor ${info.name}`);
      const all = await this.readPlusOne(info, plusOne);
      const step = Math.max(4, maxChunkBytes - (maxChunkBytes % 4));
      for (let offset = from; offset < all.byteLength; offset += step) {
        yield { offset, bytes: all.subarray(offset, Math.min(all.byteLength, offset + step)) };
      }
      return;
    }
    const perm = this.permutation.get(info.name);
    // A permuted tensor is read in whole heads, since its rows move only within their head.
    const unit = perm === undefined ? 8 : perm * this.rowBytes(info);
    if (
      !Number.isSafeInteger(from) ||
      from < 0 ||
      from > info.byteLength ||
      (perm !== undefined && from % unit !== 0)
    )
      throw new KilnError(
        `from is ${from}, expected a byte offset within tensor ${info.name} (whole heads if permuted)`,
      );
    const step = Math.max(unit, maxChunkBytes - (maxChunkBytes % unit));
    for (let offset = from; offset < info.byteLength; offset += step) {
      const length = Math.min(step, info.byteLength - offset);
      const bytes = await this.src.read(info.fileOffset + offset, length);
      yield { offset, bytes: perm === undefined ? bytes : unpermuteHeads(bytes, this.rowBytes(info), perm) };
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.src.close();
  }
}

/**
 * A Checkpoint over a parsed GGUF file for the model `spec` describes. The source stays open until
 * `close()`.
 */
export function ggufCheckpoint(gguf: GgufHeader, src: ByteSource, spec: ModelSpec): GgufCheckpoint {
  return new OpenGgufCheckpoint(gguf, src, spec, new Map());
}

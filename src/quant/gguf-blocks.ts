/**
 * CPU twins of GGUF's tensor element types: `dequantizeGguf` is the float64 value of every element
 * exactly as ggml defines the block layouts (ggml computes in f32; float64 holds every product of
 * an f16 scale and the small integers exactly, so this is the reference, not an approximation),
 * and `quantizeGguf` writes valid blocks with a plain round-to-nearest quantizer per format (for
 * tests and conversion; it is not llama.cpp's error-minimising optimiser, so its blocks decode
 * with more error than llama.cpp's). Layouts: gguf-legacy.ts, gguf-kquants.ts, gguf-iq4.ts.
 */
import { InvalidModelFileError, UnsupportedModelError } from '../errors.js';
import { bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits } from '../io/dtype.js';
import { ggufTensorBytes, ggufTypeByName, type GgufTypeInfo } from '../io/gguf-types.js';
import type { BlockCodec } from './gguf-codec.js';
import { IQ4_NL, IQ4_XS } from './gguf-iq4.js';
import { Q2_K, Q3_K, Q4_K, Q5_K, Q6_K } from './gguf-kquants.js';
import { Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 } from './gguf-legacy.js';

const scratch = new DataView(new ArrayBuffer(4));

const F32: BlockCodec = {
  decode(src, off, out, o) {
    for (let i = 0; i < 4; i++) scratch.setUint8(i, src[off + i] as number);
    out[o] = scratch.getFloat32(0, true);
  },
  encode(x, xo, dst, off) {
    scratch.setFloat32(0, x[xo] as number, true);
    for (let i = 0; i < 4; i++) dst[off + i] = scratch.getUint8(i);
  },
};

function half(toF32: (bits: number) => number, fromF32: (v: number) => number): BlockCodec {
  return {
    decode(src, off, out, o) {
      out[o] = toF32((src[off] as number) | ((src[off + 1] as number) << 8));
    },
    encode(x, xo, dst, off) {
      const bits = fromF32(x[xo] as number);
      dst[off] = bits & 0xff;
      dst[off + 1] = bits >>> 8;
    },
  };
}

const CODECS: ReadonlyMap<string, BlockCodec> = new Map([
  ['F32', F32],
  ['F16', half(f16BitsToF32, f32ToF16Bits)],
  ['BF16', half(bf16BitsToF32, f32ToBf16Bits)],
  ['Q4_0', Q4_0],
  ['Q4_1', Q4_1],
  ['Q5_0', Q5_0],
  ['Q5_1', Q5_1],
  ['Q8_0', Q8_0],
  ['Q2_K', Q2_K],
  ['Q3_K', Q3_K],
  ['Q4_K', Q4_K],
  ['Q5_K', Q5_K],
  ['Q6_K', Q6_K],
  ['IQ4_NL', IQ4_NL],
  ['IQ4_XS', IQ4_XS],
]);

/** The GGUF element types Kiln decodes (names as ggml spells them). */
export const GGUF_CODEC_TYPES: readonly string[] = [...CODECS.keys()];

/** True when Kiln can decode (and encode) tensors of this type. */
export function ggufCodecSupported(type: GgufTypeInfo | string): boolean {
  return CODECS.has(typeof type === 'string' ? type : type.name);
}

function resolve(type: GgufTypeInfo | string): { info: GgufTypeInfo; codec: BlockCodec } {
  const name = typeof type === 'string' ? type : type.name;
  const info = typeof type === 'string' ? ggufTypeByName(type) : type;
  const codec = CODECS.get(name);
  if (!info || !codec) {
    throw new UnsupportedModelError(
      `GGUF tensor type ${name} is not supported (supported: ${GGUF_CODEC_TYPES.join(', ')})`,
    );
  }
  return { info, codec };
}

/**
 * The float64 values of the first `count` elements stored at `bytes` in `type`. `count` must be a
 * whole number of blocks (ggml's rule for every tensor row), and `bytes` must hold them.
 */
export function dequantizeGguf(type: GgufTypeInfo | string, bytes: Uint8Array, count: number): Float64Array {
  const { info, codec } = resolve(type);
  const need = ggufTensorBytes(info, count);
  if (need === null) {
    throw new InvalidModelFileError(
      `GGUF ${info.name} tensor of ${count} elements: not a whole number of ${info.blockElems}-element blocks`,
    );
  }
  if (bytes.byteLength < need) {
    throw new InvalidModelFileError(
      `GGUF ${info.name} tensor of ${count} elements needs ${need} bytes, got ${bytes.byteLength}`,
    );
  }
  const out = new Float64Array(count);
  const blocks = count / info.blockElems;
  for (let b = 0; b < blocks; b++) codec.decode(bytes, b * info.blockBytes, out, b * info.blockElems);
  return out;
}

/**
 * `values` encoded as `type` blocks (round to nearest; see the file comment). The length must be
 * a whole number of blocks and every value finite.
 */
export function quantizeGguf(type: GgufTypeInfo | string, values: Float32Array): Uint8Array {
  const { info, codec } = resolve(type);
  const bytes = ggufTensorBytes(info, values.length);
  if (bytes === null) {
    throw new RangeError(
      `GGUF ${info.name}: ${values.length} values are not a whole number of ${info.blockElems}-element blocks`,
    );
  }
  for (let i = 0; i < values.length; i++) {
    if (!Number.isFinite(values[i] as number)) {
      throw new RangeError(`GGUF ${info.name}: value ${i} is not finite`);
    }
  }
  const out = new Uint8Array(bytes);
  const blocks = values.length / info.blockElems;
  for (let b = 0; b < blocks; b++) codec.encode(values, b * info.blockElems, out, b * info.blockBytes);
  return out;
}

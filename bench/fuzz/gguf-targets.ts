/**
 * Fuzz target of GGUF models as Kiln opens them (src/io/gguf-split.ts, src/model/gguf-config.ts):
 * a small valid file of each architecture with its own keys (Gemma's windows and soft-caps,
 * Phi-3's LongRoPE tensors), whole or split into two shards, with one metadata value replaced by a
 * hostile one, a key removed, a shard dropped or the bytes mutated. A case ends in a ModelSpec
 * (whose tensors lie inside the file and whose layers all have a window) or a Kiln error class.
 */
import fc from 'fast-check';
import type { GgufValue } from '../../src/io/gguf.js';
import { openGguf } from '../../src/io/gguf-split.js';
import { ggufTypeByName } from '../../src/io/gguf-types.js';
import { encodeGguf, gv, type GgufTensorToWrite } from '../../src/io/gguf-writer.js';
import { ggufModelSpec } from '../../src/model/gguf-config.js';
import { boundedDir, check, outcome, type FuzzTarget } from './harness.js';
import { mutatedBytes } from './mutate.js';

const ARCHES = ['llama', 'qwen3', 'gemma2', 'gemma3', 'phi3'] as const;

/** A valid model file's metadata and tensors (4 heads of 8, 2 layers, vocabulary 16). */
function base(arch: (typeof ARCHES)[number]): { meta: [string, GgufValue][]; tensors: GgufTensorToWrite[] } {
  const k = (key: string) => `${arch}.${key}`;
  const f32 = ggufTypeByName('F32')!;
  const meta: [string, GgufValue][] = [
    ['general.architecture', gv.str(arch)],
    [k('block_count'), gv.u32(2)],
    [k('context_length'), gv.u32(64)],
    [k('embedding_length'), gv.u32(32)],
    [k('feed_forward_length'), gv.u32(48)],
    [k('attention.head_count'), gv.u32(4)],
    [k('attention.head_count_kv'), gv.u32(2)],
    [k('attention.key_length'), gv.u32(8)],
    [k('rope.dimension_count'), gv.u32(arch === 'phi3' ? 6 : 8)],
    [k('rope.freq_base'), gv.f32(10000)],
    [k('attention.layer_norm_rms_epsilon'), gv.f32(1e-6)],
  ];
  const tensors: GgufTensorToWrite[] = [
    { name: 'token_embd.weight', type: f32, dims: [32, 16], data: new Uint8Array(32 * 16 * 4) },
  ];
  if (arch === 'gemma2' || arch === 'gemma3') {
    meta.push([k('attention.sliding_window'), gv.u32(4)], [k('final_logit_softcapping'), gv.f32(30)]);
  }
  if (arch === 'phi3') {
    meta.push(
      [k('rope.scaling.original_context_length'), gv.u32(16)],
      [k('rope.scaling.attn_factor'), gv.f32(1.2)],
    );
    for (const w of ['long', 'short']) {
      const data = new Uint8Array(new Float32Array([1, 1.5, 2]).buffer);
      tensors.push({ name: `rope_factors_${w}.weight`, type: f32, dims: [3], data });
    }
  }
  return { meta, tensors };
}

/** Values that break type, size and range checks of metadata. */
const hostileValue: fc.Arbitrary<GgufValue> = fc.oneof(
  fc.constantFrom(0, 1, 3, 7, 65535, 2 ** 31, 2 ** 32 - 1).map((v) => gv.u32(v)),
  fc.constantFrom(0, -1, 0.5, 1e-30, 1e30, Number.NaN, Infinity).map((v) => gv.f32(v)),
  fc.constantFrom(-1, 0, 2).map((v): GgufValue => ({ type: 'i32', value: v })),
  fc.constantFrom('', 'linear', 'longrope', 'yarn', 'gemma3', 'phi3', 'llama').map((v) => gv.str(v)),
  fc.boolean().map((v) => gv.bool(v)),
  fc
    .array(fc.boolean(), { maxLength: 4 })
    .map((v): GgufValue => ({ type: 'array', itemType: 'bool', value: v })),
  fc.constant<GgufValue>({ type: 'u64', value: 2n ** 63n }),
);

/** Keys a case may hit: the file's own and the ones rules read when present. */
const EXTRA_KEYS = [
  'attention.sliding_window_pattern',
  'rope.freq_base_swa',
  'rope.scaling.type',
  'rope.scaling.factor',
  'attn_logit_softcapping',
  'vocab_size',
];
const SPLIT_KEYS = ['split.no', 'split.count', 'split.tensors.count'];

interface GgufInput {
  arch: (typeof ARCHES)[number];
  split: boolean;
  /** Which key (by index into the keys a case may hit), what value (undefined: removed), which shard. */
  edit: { key: number; value: GgufValue | undefined; shard: number } | null;
  dropShard: boolean;
  /** The first file's bytes mutated too. */
  bytes: boolean;
}

function files(i: GgufInput): Record<string, Uint8Array> {
  const { meta, tensors } = base(i.arch);
  const keys = [...meta.map(([k]) => k), ...EXTRA_KEYS.map((k) => `${i.arch}.${k}`), ...SPLIT_KEYS];
  const shards = i.split
    ? [
        { meta: [...meta], tensors: tensors.slice(0, 1) },
        { meta: [] as [string, GgufValue][], tensors: tensors.slice(1) },
      ]
    : [{ meta: [...meta], tensors }];
  if (i.split) {
    shards.forEach((s, no) =>
      s.meta.push(
        ['split.no', { type: 'u16', value: no }],
        ['split.count', { type: 'u16', value: 2 }],
        ['split.tensors.count', { type: 'i32', value: tensors.length }],
      ),
    );
  }
  if (i.edit) {
    const s = shards[i.edit.shard % shards.length]!;
    const key = keys[i.edit.key % keys.length]!;
    const entries = new Map(s.meta);
    if (i.edit.value === undefined) entries.delete(key);
    else entries.set(key, i.edit.value);
    s.meta = [...entries];
  }
  const names = i.split ? ['m-00001-of-00002.gguf', 'm-00002-of-00002.gguf'] : ['m.gguf'];
  const out: Record<string, Uint8Array> = {};
  shards.forEach((s, no) => {
    if (!(i.dropShard && no === 1)) out[names[no]!] = encodeGguf({ metadata: s.meta, tensors: s.tensors });
  });
  return out;
}

const ggufInput = fc
  .record({
    arch: fc.constantFrom(...ARCHES),
    split: fc.boolean(),
    edit: fc.option(
      fc.record({ key: fc.nat(40), value: fc.option(hostileValue, { nil: undefined }), shard: fc.nat(1) }),
      { nil: null },
    ),
    dropShard: fc.boolean(),
    bytes: fc.boolean(),
  })
  .chain((i) => {
    const f = files(i);
    const first = Object.keys(f)[0]!;
    const mutated = i.bytes ? mutatedBytes(f[first]!) : fc.constant(f[first]!);
    return mutated.map((b) => ({ first, files: { ...f, [first]: b } }));
  });

export const ggufModelTarget: FuzzTarget<{ first: string; files: Record<string, Uint8Array> }> = {
  name: 'GGUF model (metadata of each architecture, split shards)',
  input: ggufInput,
  run: ({ first, files: f }) =>
    outcome(async () => {
      const { header, source } = await openGguf(boundedDir(f), first);
      try {
        const spec = await ggufModelSpec(header, (t) => source.read(t.fileOffset, t.byteLength));
        check(spec.layerWindows.length === spec.numLayers, 'a window per layer');
        for (const t of header.tensors.values()) {
          check(t.fileOffset + t.byteLength <= source.size, `${t.name} outside the shards`);
        }
      } finally {
        await source.close();
      }
    }),
};

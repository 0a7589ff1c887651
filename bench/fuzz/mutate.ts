/**
 * Mutation arbitraries shared by the fuzz targets: edits of bytes (flips, overwrites, cuts,
 * insertions), of text (the same at character level), and of parsed JSON (a field replaced by a
 * hostile value, deleted, or a stray field added). Each starts from a valid input, so most cases
 * reach deep into a parser instead of failing at its first check.
 */
import fc from 'fast-check';

/** JSON values chosen to break size and type checks: 0, negatives, floats, huge and unsafe numbers, wrong types. */
export const hostileJsonValue: fc.Arbitrary<unknown> = fc.oneof(
  fc.constantFrom(
    0,
    -1,
    1,
    2,
    0.5,
    -0,
    1e-300,
    1e308,
    2 ** 31,
    2 ** 32 + 1,
    2 ** 53,
    2 ** 53 + 2,
    Number.MAX_SAFE_INTEGER,
    -(2 ** 53),
    null,
    true,
    false,
    '',
    '4',
    '__proto__',
    '../evil.safetensors',
    'model.safetensors',
    [],
    [1],
    [-1, 2],
    {},
    { __proto__: null },
  ),
  fc.integer(),
  fc.double({ noNaN: true, noDefaultInfinity: true }),
  fc.string({ maxLength: 12 }),
  fc.jsonValue({ maxDepth: 2 }),
);

type Json = unknown;
type JsonEdit =
  | { kind: 'set'; path: number; value: Json }
  | { kind: 'delete'; path: number }
  | { kind: 'add'; key: string; value: Json };

const jsonEdit: fc.Arbitrary<JsonEdit> = fc.oneof(
  {
    weight: 5,
    arbitrary: fc.record({ kind: fc.constant('set' as const), path: fc.nat(), value: hostileJsonValue }),
  },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('delete' as const), path: fc.nat() }) },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('add' as const),
      key: fc.oneof(fc.string({ maxLength: 8 }), fc.constantFrom('__proto__', 'constructor', '')),
      value: hostileJsonValue,
    }),
  },
);

/** Every path to an object member or array element of `v`, parents before children. */
function paths(
  v: Json,
  prefix: (string | number)[] = [],
  out: (string | number)[][] = [],
): (string | number)[][] {
  if (Array.isArray(v)) {
    v.forEach((x, i) => {
      out.push([...prefix, i]);
      paths(x, [...prefix, i], out);
    });
  } else if (typeof v === 'object' && v !== null) {
    for (const k of Object.keys(v)) {
      out.push([...prefix, k]);
      paths((v as Record<string, Json>)[k], [...prefix, k], out);
    }
  }
  return out;
}

function applyJsonEdit(root: Json, edit: JsonEdit): Json {
  // A copy: constants are shared between cases, and a value set twice would make a cycle.
  const e = 'value' in edit ? { ...edit, value: structuredClone(edit.value) } : edit;
  if (e.kind === 'add') {
    if (typeof root === 'object' && root !== null && !Array.isArray(root)) {
      // defineProperty so that "__proto__" becomes an own key, as JSON.parse would make it.
      Object.defineProperty(root, e.key, {
        value: e.value,
        enumerable: true,
        writable: true,
        configurable: true,
      });
    }
    return root;
  }
  const all = paths(root);
  if (all.length === 0) return e.kind === 'set' ? e.value : root;
  const path = all[e.path % all.length] as (string | number)[];
  let parent = root as Record<string | number, Json>;
  for (const p of path.slice(0, -1)) parent = parent[p] as Record<string | number, Json>;
  const last = path[path.length - 1] as string | number;
  if (e.kind === 'set') parent[last] = e.value;
  else if (Array.isArray(parent)) parent.splice(last as number, 1);
  else delete parent[last];
  return root;
}

/** `base` (deep-copied) with 1-4 JSON edits applied. */
export function mutatedJson(base: Json): fc.Arbitrary<Json> {
  return fc
    .array(jsonEdit, { minLength: 1, maxLength: 4 })
    .map((edits) => edits.reduce<Json>((v, e) => applyJsonEdit(v, e), structuredClone(base)));
}

type ByteEdit =
  | { kind: 'flip'; at: number; bit: number }
  | { kind: 'set'; at: number; value: number }
  | { kind: 'cut'; at: number }
  | { kind: 'insert'; at: number; bytes: Uint8Array }
  | { kind: 'u32'; at: number; value: number };

const byteEdit: fc.Arbitrary<ByteEdit> = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), bit: fc.nat(7) }),
  fc.record({ kind: fc.constant('set' as const), at: fc.nat(), value: fc.nat(255) }),
  fc.record({ kind: fc.constant('cut' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ maxLength: 16 }) }),
  fc.record({
    kind: fc.constant('u32' as const),
    // Small offsets are where the headers live.
    at: fc.oneof(fc.nat(64), fc.nat()),
    value: fc.oneof(
      fc.constantFrom(0, 1, 0xffffffff, 0x7fffffff, 0x80000000, 1 << 24, (1 << 24) + 1),
      fc.nat(),
    ),
  }),
);

function applyByteEdit(b: Uint8Array, e: ByteEdit): Uint8Array {
  if (b.length === 0) return e.kind === 'insert' ? e.bytes : b;
  const at = e.at % b.length;
  switch (e.kind) {
    case 'flip':
      b[at] = (b[at] as number) ^ (1 << e.bit);
      return b;
    case 'set':
      b[at] = e.value;
      return b;
    case 'cut':
      return b.slice(0, at);
    case 'insert': {
      const out = new Uint8Array(b.length + e.bytes.length);
      out.set(b.subarray(0, at));
      out.set(e.bytes, at);
      out.set(b.subarray(at), at + e.bytes.length);
      return out;
    }
    case 'u32':
      if (at + 4 <= b.length) new DataView(b.buffer, b.byteOffset).setUint32(at, e.value >>> 0, true);
      return b;
  }
}

/** A copy of `base` with 1-4 byte edits. */
export function mutatedBytes(base: Uint8Array): fc.Arbitrary<Uint8Array> {
  return fc
    .array(byteEdit, { minLength: 1, maxLength: 4 })
    .map((edits) => edits.reduce<Uint8Array>((b, e) => applyByteEdit(b, e), base.slice()));
}

/** A copy of `text` with 1-4 character edits (deletions, insertions of JSON/Jinja punctuation or any character). */
export function mutatedText(text: string): fc.Arbitrary<string> {
  const piece = fc.oneof(
    fc.constantFrom(
      '{',
      '}',
      '[',
      ']',
      '"',
      ',',
      ':',
      '\\',
      '{%',
      '%}',
      '{{',
      '}}',
      '\u0000',
      '\ud800',
      'é',
      '1e999',
    ),
    fc.string({ maxLength: 4, unit: 'binary' }),
  );
  const edit = fc.record({ at: fc.nat(), del: fc.nat(3), ins: fc.option(piece, { nil: '' }) });
  return fc.array(edit, { minLength: 1, maxLength: 4 }).map((edits) =>
    edits.reduce((t, e) => {
      const at = t.length === 0 ? 0 : e.at % (t.length + 1);
      return t.slice(0, at) + e.ins + t.slice(at + e.del);
    }, text),
  );
}

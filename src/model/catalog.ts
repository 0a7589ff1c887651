/**
 * The catalog of known-good models: small, safetensors checkpoints of registered architectures,
 * pinned to a commit so `kiln pull <alias>` always fetches the same bytes. The data lives in
 * models/catalog.json (so it can be edited without touching code); this module checks it once on load
 * and gives it types. Browser-safe: bundlers inline the JSON through the import attribute.
 */
import catalogJson from '../../models/catalog.json' with { type: 'json' };
import { InvalidModelFileError } from '../errors.js';
import { ARCHITECTURES } from './registry.js';
import { isCommitHash, parseHubId } from '../io/hub-id.js';
import { isJsonObject } from '../io/json.js';

/** One catalog model. Sizes and counts are what the pinned revision holds. */
export interface CatalogEntry {
  /** Hub id, `org/name`. */
  id: string;
  /** Short lower-case names accepted in place of `id` (e.g. `smollm2-135m`). */
  aliases: string[];
  /** A 40-hex commit where one was confirmed, else a branch such as `main`. */
  revision: string;
  /** A registered architecture (src/model/registry.ts). */
  architecture: string;
  /** Total parameter count. */
  parameters: number;
  /** Weight dtype of the checkpoint as published. */
  dtype: 'f32' | 'f16' | 'bf16';
  /** Bytes of the *.safetensors weights (the bulk of a download; config and tokenizer add a few MB). */
  sizeBytes: number;
  /** max_position_embeddings of the config. */
  contextLength: number;
  /** tokenizer_config.json carries a chat template. */
  chatTemplate: boolean;
  /** The Hub requires accepting a license (and a token) before download. */
  gated: boolean;
  /** SPDX-style license id as the model card states it. */
  license: string;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  tieWordEmbeddings: boolean;
  /** Provenance: where each value was confirmed and what could not be. */
  notes: string;
}

const DTYPES: readonly CatalogEntry['dtype'][] = ['f32', 'f16', 'bf16'];
const ALIAS = /^[a-z0-9][a-z0-9.-]*$/;

function fail(i: number, field: string, why: string): never {
  throw new InvalidModelFileError(`models/catalog.json: entry ${i} field "${field}" ${why}`);
}

/**
 * Checks a parsed catalog document and returns its entries. Exported so tests (and tools that edit
 * the catalog) can validate a document the same way the module does on load.
 */
export function parseCatalog(doc: unknown): CatalogEntry[] {
  if (!isJsonObject(doc) || !Array.isArray(doc.models)) {
    throw new InvalidModelFileError('models/catalog.json: expected { "models": [...] }');
  }
  const seen = new Set<string>();
  return (doc.models as unknown[]).map((raw, i): CatalogEntry => {
    if (!isJsonObject(raw)) fail(i, '(entry)', 'is not an object');
    const str = (k: string): string => {
      const v = raw[k];
      if (typeof v !== 'string' || v.length === 0) fail(i, k, 'must be a non-empty string');
      return v;
    };
    const int = (k: string): number => {
      const v = raw[k];
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0)
        fail(i, k, 'must be a positive integer');
      return v;
    };
    const bool = (k: string): boolean => {
      const v = raw[k];
      if (typeof v !== 'boolean') fail(i, k, 'must be true or false');
      return v;
    };
    const id = str('id');
    const revision = str('revision');
    if (parseHubId(`${id}@${revision}`)?.repo !== id)
      fail(i, 'id', `"${id}@${revision}" is not a valid Hub id`);
    const architecture = str('architecture');
    const names = ARCHITECTURES.map((a) => a.name);
    if (!names.includes(architecture)) fail(i, 'architecture', `must be one of ${names.join(', ')}`);
    const dtype = str('dtype') as CatalogEntry['dtype'];
    if (!DTYPES.includes(dtype)) fail(i, 'dtype', `must be one of ${DTYPES.join(', ')}`);
    const aliasesRaw = raw.aliases;
    if (!Array.isArray(aliasesRaw)) fail(i, 'aliases', 'must be an array');
    const aliases = aliasesRaw.map((a: unknown) => {
      if (typeof a !== 'string' || !ALIAS.test(a))
        fail(i, 'aliases', `has an invalid alias ${JSON.stringify(a)}`);
      return a;
    });
    for (const key of [id.toLowerCase(), ...aliases]) {
      if (seen.has(key)) fail(i, 'aliases', `reuses "${key}", already taken by an earlier entry`);
      seen.add(key);
    }
    const entry: CatalogEntry = {
      id,
      aliases,
      revision,
      architecture,
      parameters: int('parameters'),
      dtype,
      sizeBytes: int('sizeBytes'),
      contextLength: int('contextLength'),
      chatTemplate: bool('chatTemplate'),
      gated: bool('gated'),
      license: str('license'),
      hiddenSize: int('hiddenSize'),
      numLayers: int('numLayers'),
      numHeads: int('numHeads'),
      numKvHeads: int('numKvHeads'),
      tieWordEmbeddings: bool('tieWordEmbeddings'),
      notes: str('notes'),
    };
    if (entry.numHeads % entry.numKvHeads !== 0) fail(i, 'numKvHeads', 'must divide numHeads');
    return entry;
  });
}

/** Every catalog model, checked on load. */
export const CATALOG: readonly CatalogEntry[] = Object.freeze(parseCatalog(catalogJson));

/** True when a revision pins exact bytes (a commit) rather than following a branch. */
export function isPinned(entry: CatalogEntry): boolean {
  return isCommitHash(entry.revision);
}

/**
 * Finds a catalog model by Hub id (case-insensitive; an `@revision` suffix is ignored) or by alias
 * (`smollm2-135m`). Returns undefined when nothing matches.
 */
export function findCatalogEntry(idOrAlias: string): CatalogEntry | undefined {
  const key = idOrAlias.trim().toLowerCase();
  const repo = key.includes('/') ? key.split('@')[0] : undefined;
  return CATALOG.find((e) => e.aliases.includes(key) || e.id.toLowerCase() === (repo ?? key));
}

/** `org/name@revision` of a catalog entry, ready for pullModel/resolveModel. */
export function catalogHubId(entry: CatalogEntry): string {
  return `${entry.id}@${entry.revision}`;
}

/**
 * A model argument with a catalog alias (`smollm2-135m`, any case) replaced by its pinned Hub id
 * (`org/name@commit`); anything else, a Hub id included, is returned unchanged. The one rule for
 * aliases on the command line (`kiln pull`, `kiln run -m`) and in createEngine.
 */
export function catalogAliasToHubId(arg: string): string {
  const entry = arg.includes('/') ? undefined : findCatalogEntry(arg);
  return entry ? catalogHubId(entry) : arg;
}

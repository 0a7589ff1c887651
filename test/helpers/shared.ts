import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root. */
export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

/**
 * Real checkpoints live beside the project in ../shared/models (never committed here). Tests that
 * need them read from this folder and fail loudly when it is missing instead of skipping.
 */
export function sharedModel(...parts: string[]): string {
  const p = join(repoRoot, '..', 'shared', 'models', ...parts);
  if (!existsSync(p))
    throw new Error(`missing shared model file ${p}: the shared/ folder must sit beside the project`);
  return p;
}

/** A real tokenizer's file in ../shared/tokenizers (tokenizer.json, tokenizer_config.json). */
export function sharedTokenizer(...parts: string[]): string {
  const p = join(repoRoot, '..', 'shared', 'tokenizers', ...parts);
  if (!existsSync(p))
    throw new Error(`missing shared tokenizer file ${p}: the shared/ folder must sit beside the project`);
  return p;
}

/** The files `kiln convert llama2c` writes into a model folder. */
export const CONVERTED_FILES: readonly string[] = [
  'config.json',
  'generation_config.json',
  'model.safetensors',
  'tokenizer.json',
  'tokenizer_config.json',
];

/** Reads the real files the fuzz targets start from, beside the project in ../shared. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { FuzzData } from './harness.js';

/** `shared` is the shared data folder (models/, tokenizers/). */
export function loadFuzzData(shared: string): FuzzData {
  const template = (name: string): string => {
    const config = JSON.parse(
      readFileSync(join(shared, 'tokenizers', name, 'tokenizer_config.json'), 'utf8'),
    ) as {
      chat_template: string;
    };
    return config.chat_template;
  };
  return {
    tokenizerModel: new Uint8Array(readFileSync(join(shared, 'models', 'babyllama-tok105', 'tok105.model'))),
    chatTemplates: ['llama3', 'qwen3', 'gemma3'].map(template),
  };
}

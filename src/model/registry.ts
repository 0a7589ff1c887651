/**
 * Every architecture Kiln runs, one row each; the file of each says what sets it apart. Adding an
 * architecture whose ops exist is its file in arch/ plus its row here.
 */
import { UnsupportedModelError } from '../errors.js';
import type { Architecture } from './architecture.js';
import { gemma2 } from './arch/gemma2.js';
import { gemma3 } from './arch/gemma3.js';
import { llama } from './arch/llama.js';
import { mistral } from './arch/mistral.js';
import { phi3 } from './arch/phi3.js';
import { qwen2 } from './arch/qwen2.js';
import { qwen3 } from './arch/qwen3.js';
import { smollm3 } from './arch/smollm3.js';
import type { ModelSpec } from './spec.js';

export const ARCHITECTURES: readonly Architecture[] = [
  llama,
  mistral,
  qwen2,
  qwen3,
  smollm3,
  phi3,
  gemma2,
  gemma3,
];

/** The architecture implementing a config.json `architectures[0]` class, if any. */
export function architectureForClass(hfClass: string): Architecture | undefined {
  return ARCHITECTURES.find((a) => a.hfClasses.includes(hfClass));
}

/** The architecture registered under `name` (a model_type), if any. */
export function architectureNamed(name: string): Architecture | undefined {
  return ARCHITECTURES.find((a) => a.name === name);
}

/** The architecture that read `spec` from its config. */
export function architectureOf(spec: ModelSpec): Architecture {
  const arch = architectureNamed(spec.architecture);
  if (!arch)
    throw new UnsupportedModelError(`architecture ${JSON.stringify(spec.architecture)} is not registered`);
  return arch;
}

/** Every supported config.json class name, for messages. */
export function supportedClasses(): string[] {
  return ARCHITECTURES.flatMap((a) => [...a.hfClasses]);
}

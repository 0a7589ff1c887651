/**
 * Loads xgrammar's WebAssembly build (@mlc-ai/web-xgrammar) in Node. The package is a UMD bundle
 * marked as an ES module whose Emscripten glue probes Node through `require` and `__filename`,
 * which an ES module does not have ("require is not defined" on import). Evaluated here as the
 * CommonJS module it is written as, with those two provided, it runs unchanged; its console is
 * captured so that the reason of a grammar it refuses (printed, then "Aborted()") reaches the error.
 */
import { readFileSync } from 'node:fs';
import * as nodeModule from 'node:module';
import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import type { XgrammarModule } from '../engine/sampling/grammar.js';

let loaded: Promise<XgrammarModule> | null = null;

export function loadXgrammarNode(): Promise<XgrammarModule> {
  loaded ??= (async () => {
    const require = createRequire(import.meta.url);
    const path = require.resolve('@mlc-ai/web-xgrammar');
    const source = readFileSync(path, 'utf8');
    let lastError: string | null = null;
    // The reason comes first, then "Aborted()": keep the first line since the last take.
    const record = (...args: unknown[]) => {
      lastError ??= args.map(String).join(' ');
    };
    const quiet = { ...console, error: record, warn: record };
    const module = { exports: {} as Record<string, unknown> };
    // Its Node branch also does `await import('module')`, which code evaluated from text cannot
    // do under every loader (vitest's): that one import is handed in.
    const dynamicImport = "await import('module')";
    if (!source.includes(dynamicImport)) {
      throw new Error(`@mlc-ai/web-xgrammar changed: ${path} no longer has ${dynamicImport}`);
    }
    const body = source.split(dynamicImport).join('__nodeModule');
    const factory = new Function(
      'exports',
      'module',
      'require',
      '__filename',
      '__dirname',
      'console',
      '__nodeModule',
      body,
    ) as (...args: unknown[]) => void;
    factory(module.exports, module, createRequire(path), path, dirname(path), quiet, nodeModule);
    const xg = module.exports as unknown as XgrammarModule;
    return {
      TokenizerInfo: xg.TokenizerInfo,
      GrammarCompiler: xg.GrammarCompiler,
      GrammarMatcher: xg.GrammarMatcher,
      Grammar: xg.Grammar,
      takeLastError: () => {
        const e = lastError?.replace(/^\[FATAL\] [^:]*:\d+: /, '') ?? null;
        lastError = null;
        return e;
      },
    };
  })();
  return loaded;
}

/**
 * The core must run unchanged in a browser: bundle the public entry (src/index.ts) for the browser
 * with Vite and check that nothing Node-only (node: built-ins, Dawn, fs, process) is reachable.
 * Running the bundle in headless Chromium belongs to the web app's tests.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { build, type Rollup } from 'vite';
import { expect, test } from 'vitest';
import { repoRoot } from './helpers/shared.js';

test('src/index.ts bundles for the browser with no Node-only module', async () => {
  const outDir = mkdtempSync(join(tmpdir(), 'kiln-bundle-'));
  const externalized: string[] = [];
  try {
    await build({
      root: repoRoot,
      logLevel: 'silent',
      configFile: false,
      build: {
        outDir,
        emptyOutDir: true,
        minify: false,
        lib: { entry: join(repoRoot, 'src', 'index.ts'), formats: ['es'], fileName: 'kiln' },
        rollupOptions: {
          onwarn(warning: Rollup.RollupLog) {
            externalized.push(warning.message);
          },
        },
      },
      plugins: [
        {
          name: 'forbid-node-modules',
          enforce: 'pre',
          resolveId(id: string, importer: string | undefined) {
            if (/^(node:|fs$|path$|os$|crypto$|webgpu$)/.test(id)) {
              throw new Error(`${importer ?? '?'} imports the Node-only module ${id}`);
            }
            return null;
          },
        },
      ],
    });
    const files = readdirSync(outDir);
    // xgrammar's WebAssembly glue (its own chunk, loaded on the first constrained request) probes
    // Node behind `typeof process` checks that a browser never passes; everything else must be clean.
    const isXgrammar = (text: string) =>
      text.includes('GrammarMatcher') && text.includes('ENVIRONMENT_IS_NODE');
    // Its Node branch's `url` / `module` imports become Vite's browser stubs, imported by it alone.
    const code = files
      .filter((f) => !f.startsWith('__vite-browser-external'))
      .map((f) => readFileSync(join(outDir, f), 'utf8'))
      .filter((text) => !isXgrammar(text))
      .join('\n');
    expect(code).toContain('createEngine');
    expect(files.length).toBeGreaterThan(1);
    // (Libraries may probe `typeof process` themselves; our own code is kept off `process` by ESLint.)
    expect(code).not.toMatch(/__vite-browser-external|\brequire\(/);
    expect(
      externalized.filter(
        (m) => /externalized for browser compatibility/.test(m) && !m.includes('@mlc-ai/web-xgrammar'),
      ),
    ).toEqual([]);
  } finally {
    rmSync(outDir, { recursive: true, force: true });
  }
});

/**
 * Builds the browser app (web/) into dist/web: `npm run build` (with the library), `npm run dev:web`
 * for a dev server. The engine's sources are imported from src/ directly; the worker entry is
 * bundled by Vite from `new Worker(new URL('./worker.ts', import.meta.url))`.
 */
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';

const here = fileURLToPath(new URL('.', import.meta.url));

export default defineConfig({
  root: here,
  // Relative asset URLs, so the built app works from any path it is hosted under.
  base: './',
  build: {
    outDir: fileURLToPath(new URL('../dist/web', import.meta.url)),
    emptyOutDir: true,
    target: 'es2022',
    sourcemap: true,
  },
  worker: { format: 'es' },
  server: { host: '127.0.0.1' },
  preview: { host: '127.0.0.1' },
});

/**
 * The layer rule of ARCHITECTURE.md, checked on every import of src/ and bench/: a file may import
 * from its own room or from rooms below it, never from a room above, and no two files import each
 * other through any chain (no cycles, inside a room or across rooms).
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, test } from 'vitest';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

/** Rooms from the bottom up; a room may import only from itself and the rooms before it. */
export const LAYERS: readonly (readonly string[])[] = [
  ['src/errors.ts', 'src/version.ts'],
  ['src/io'],
  ['src/quant'],
  ['src/gpu'],
  ['src/kernels'],
  ['src/model'],
  ['src/weights'],
  ['src/tuner'],
  ['src/api'],
  ['src/engine'],
  ['src/worker'],
  ['src/index.ts'],
  ['src/node'],
  ['bench'],
  ['src/cli'],
];

function walk(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    return statSync(p).isDirectory() ? walk(p) : /\.ts$/.test(name) ? [p] : [];
  });
}

const repoPath = (p: string) => relative(root, p).split(sep).join('/');

/** The room of a repo-relative path and its rank (position in LAYERS). */
function roomOf(path: string): { room: string; rank: number } {
  for (const [rank, rooms] of LAYERS.entries()) {
    for (const room of rooms) {
      if (path === room || path.startsWith(`${room}/`)) return { room, rank };
    }
  }
  throw new Error(`${path} is in no room of LAYERS: add it to ARCHITECTURE.md's layer order and here`);
}

/** Relative imports of a file (static, re-exports and dynamic), as repo-relative .ts paths. */
function importsOf(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  const out: string[] = [];
  const re =
    /(?:^|[\s;])(?:import|export)\s[^'";]*?from\s*['"](\.[^'"]+)['"]|import\(\s*['"](\.[^'"]+)['"]\s*\)/g;
  for (const m of text.matchAll(re)) {
    const spec = (m[1] ?? m[2]) as string;
    if (!/\.(js|ts)$/.test(spec)) continue; // JSON data (models/catalog.json) sits outside the rooms
    out.push(repoPath(resolve(dirname(file), spec.replace(/\.js$/, '.ts'))));
  }
  return out;
}

const files = [...walk(join(root, 'src')), ...walk(join(root, 'bench'))].map(repoPath);
const graph = new Map(files.map((f) => [f, importsOf(join(root, f))]));

describe('layers', () => {
  test('every file sits in a room of the layer order', () => {
    for (const f of files) expect(() => roomOf(f)).not.toThrow();
  });

  test('no import runs up a layer', () => {
    const upward: string[] = [];
    for (const [file, deps] of graph) {
      const from = roomOf(file);
      for (const dep of deps) {
        const to = roomOf(dep);
        if (to.rank > from.rank) upward.push(`${file} -> ${dep} (${from.room} imports ${to.room})`);
      }
    }
    expect(upward).toEqual([]);
  });

  test('no import cycle between files', () => {
    const cycles: string[] = [];
    const state = new Map<string, 'open' | 'done'>();
    const stack: string[] = [];
    const visit = (f: string) => {
      state.set(f, 'open');
      stack.push(f);
      for (const d of graph.get(f) ?? []) {
        if (!graph.has(d)) continue;
        if (state.get(d) === 'open') cycles.push([...stack.slice(stack.indexOf(d)), d].join(' -> '));
        else if (!state.has(d)) visit(d);
      }
      stack.pop();
      state.set(f, 'done');
    };
    for (const f of graph.keys()) if (!state.has(f)) visit(f);
    expect(cycles).toEqual([]);
  });

  test('the checker sees imports of every form', () => {
    // Guards the regex: a file known to import both ways must show its imports.
    expect(graph.get('src/index.ts')?.length).toBeGreaterThan(5);
    expect(files.length).toBeGreaterThan(100);
  });
});

/**
 * The file-size rule of ARCHITECTURE.md: a source file (.ts or .wgsl under src/, bench/ and
 * shaders/) stays near 500 lines, split by concept when it grows. The limit checked is 550, so a
 * file a little over 500 is not a failure while its split is planned; a file past it must be one
 * algorithm that reads best whole and say so, with the phrase "One algorithm in one file" and why
 * in its opening comment. Generated files (`*.gen.ts`) are not sources.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect, test } from 'vitest';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const ROOTS = ['src', 'bench', 'shaders'];
const MAX_LINES = 550;
/** How far into a file its opening comment may state the exemption. */
const HEAD_LINES = 15;
const EXEMPTION = 'One algorithm in one file';

function walk(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) return walk(p);
    return /\.(ts|wgsl)$/.test(name) && !/\.gen\.ts$/.test(name) ? [p] : [];
  });
}

/** Lines as `wc -l` counts them (newline characters). */
function lineCount(text: string): number {
  let n = 0;
  for (let i = text.indexOf('\n'); i >= 0; i = text.indexOf('\n', i + 1)) n++;
  return n;
}

test(`every source file has at most ${MAX_LINES} lines or says it is one algorithm`, () => {
  const files = ROOTS.flatMap((r) => walk(join(root, r)));
  expect(files.length).toBeGreaterThan(100);
  const over: string[] = [];
  for (const file of files) {
    const text = readFileSync(file, 'utf8');
    const lines = lineCount(text);
    if (lines <= MAX_LINES) continue;
    const head = text.split('\n').slice(0, HEAD_LINES).join('\n');
    if (head.includes(EXEMPTION)) continue;
    over.push(`${relative(root, file).split(sep).join('/')} (${lines} lines)`);
  }
  expect(
    over,
    `split these by concept, or state "${EXEMPTION}" and why in the first ${HEAD_LINES} lines`,
  ).toEqual([]);
});

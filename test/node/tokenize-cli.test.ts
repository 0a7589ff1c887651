/**
 * `kiln tokenize` end to end (bin/kiln.js over dist/, built by `npm test`): llama.cpp's vocab
 * fixtures through the CLI for every GGUF vocab in ../shared/gguf-vocab, a Hugging Face folder,
 * BOS with and without --no-special, and a hostile GGUF file ending in one `kiln:` line; and
 * `kiln run --model file.gguf` giving the ids of the folder the file was written from.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { openLocalModelDir } from '../../src/node/fs-model-dir.js';
import { KilnTokenizer } from '../../src/io/tokenizer.js';
import { writeTestModel } from '../helpers/checkpoints.js';
import { writeGgufFromFolder } from '../helpers/gguf.js';
import { repoRoot } from '../helpers/shared.js';

const KILN = join(repoRoot, 'bin', 'kiln.js');
const vocabDir = resolve(repoRoot, '..', 'shared', 'gguf-vocab');
const tmp = mkdtempSync(join(tmpdir(), 'kiln-tokenize-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

async function kiln(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [KILN, ...args], {
      cwd: repoRoot,
      timeout: 120_000,
      // Never the real Hub.
      env: { ...process.env, HF_ENDPOINT: 'http://127.0.0.1:9', HF_TOKEN: '' },
    });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code?: number; stdout?: string; stderr?: string };
    return { code: err.code ?? -1, stdout: err.stdout ?? '', stderr: err.stderr ?? '' };
  }
}

async function ids(model: string, text: string, special = true): Promise<number[]> {
  const r = await kiln([
    'tokenize',
    '--model',
    model,
    '--text',
    text,
    '--json',
    ...(special ? [] : ['--no-special']),
  ]);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  const lines = r.stdout.split('\n').filter((l) => l !== '');
  expect(lines).toHaveLength(1);
  return (JSON.parse(lines[0] as string) as { ids: number[] }).ids;
}

function fixtures(file: string): { text: string; ids: number[] }[] {
  const texts = readFileSync(join(vocabDir, `${file}.inp`), 'utf8').split('\n__ggml_vocab_test__\n');
  texts.pop();
  const lines = readFileSync(join(vocabDir, `${file}.out`), 'utf8').split('\n');
  return texts.map((text, i) => {
    const line = (lines[i] ?? '').trim();
    return { text, ids: line === '' ? [] : line.split(/\s+/).map(Number) };
  });
}

describe('kiln tokenize', () => {
  for (const file of readdirSync(vocabDir).filter((f) => f.endsWith('.gguf'))) {
    it(`${file}: llama.cpp's fixture ids through the CLI`, async () => {
      // Every fourth fixture (each run starts a process), always including the long mixed one.
      const cases = fixtures(file).filter((_, i, all) => i % 4 === 0 || i === all.length - 1);
      for (const c of cases) {
        expect({ text: c.text, ids: await ids(join(vocabDir, file), c.text, false) }).toEqual(c);
      }
    }, 120_000);
  }

  it('adds BOS unless --no-special, as the vocab asks', async () => {
    const spm = join(vocabDir, 'ggml-vocab-llama-spm.gguf');
    expect(await ids(spm, 'Hello world')).toEqual([1, 15043, 3186]);
    expect(await ids(spm, 'Hello world', false)).toEqual([15043, 3186]);
    expect(await ids(join(vocabDir, 'ggml-vocab-gpt-2.gguf'), 'Hello world')).toEqual([15496, 995]);
  });

  it('a Hugging Face folder: the ids of its tokenizer.json', async () => {
    const folder = resolve(repoRoot, '..', 'shared', 'tokenizers', 'llama3');
    const tok = await KilnTokenizer.load(openLocalModelDir(folder));
    const text = "Hello, y'all! 3333 🦙";
    expect(await ids(folder, text)).toEqual(tok.encode(text));
    expect(await ids(folder, text, false)).toEqual(tok.encode(text, { addSpecialTokens: false }));
    // The human-readable form: one "id -> piece" line per token.
    const r = await kiln(['tokenize', '-m', folder, '-t', 'Hello']);
    expect(r.stdout.trim().split('\n')).toHaveLength(tok.encode('Hello').length);
  });

  it('a hostile GGUF file ends in one kiln: line', async () => {
    const good = readFileSync(join(vocabDir, 'ggml-vocab-gpt-2.gguf'));
    const bad = join(tmp, 'bad.gguf');
    writeFileSync(bad, good.subarray(0, 5000));
    const r = await kiln(['tokenize', '--model', bad, '--text', 'x', '--json']);
    expect(r.code).not.toBe(0);
    expect(r.stdout).toBe('');
    const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(
      /^kiln: .*bad\.gguf: the length of array metadata tokenizer\.ggml\.tokens is 50257, but .* \(truncated or corrupt\)$/,
    );
  });
});

describe('kiln run --model file.gguf', () => {
  it('prints the greedy ids of the folder the file was written from', async () => {
    const folder = join(tmp, 'model');
    writeTestModel(folder, { architecture: 'LlamaForCausalLM', kvHeads: 2 });
    const file = await writeGgufFromFolder(folder);
    const run = async (model: string) => {
      const r = await kiln([
        'run',
        '--model',
        model,
        '--prompt',
        'Once upon a time',
        '--max-tokens',
        '10',
        '--json',
        '--quiet',
        '--no-tune',
      ]);
      expect(r.code, r.stderr).toBe(0);
      return JSON.parse(r.stdout) as { token_ids: number[]; prompt_token_ids: number[]; weights?: string };
    };
    const [a, b] = [await run(folder), await run(file)];
    expect(a.token_ids.length).toBe(10);
    expect(b.prompt_token_ids).toEqual(a.prompt_token_ids);
    expect(b.token_ids).toEqual(a.token_ids);
  }, 240_000);
});

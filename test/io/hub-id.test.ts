import { describe, expect, it } from 'vitest';
import { hubApiUrl, hubFileUrl, isCommitHash, parseHubId } from '../../src/io/hub-id.js';

describe('parseHubId', () => {
  it('parses org/name with the default revision', () => {
    expect(parseHubId('HuggingFaceTB/SmolLM2-135M-Instruct')).toEqual({
      repo: 'HuggingFaceTB/SmolLM2-135M-Instruct',
      revision: 'main',
    });
    expect(parseHubId('Qwen/Qwen2.5-0.5B-Instruct')?.repo).toBe('Qwen/Qwen2.5-0.5B-Instruct');
    expect(parseHubId('a/b')).toEqual({ repo: 'a/b', revision: 'main' });
    expect(parseHubId('my_org/model_v1.0')).not.toBeNull();
  });

  it('parses branches, tags, commits and PR refs', () => {
    expect(parseHubId('org/name@v1.0')).toEqual({ repo: 'org/name', revision: 'v1.0' });
    expect(parseHubId('org/name@dev-branch')?.revision).toBe('dev-branch');
    const commit = '0123456789abcdef0123456789abcdef01234567';
    expect(parseHubId(`org/name@${commit}`)?.revision).toBe(commit);
    expect(parseHubId('org/name@refs/pr/1')?.revision).toBe('refs/pr/1');
  });

  it.each([
    '',
    'name',
    'org/',
    '/name',
    'org/name/extra',
    'org//name',
    './a/b',
    '../a',
    '/abs/path',
    'org/../name',
    'org/..',
    'org/na..me',
    'org/na--me',
    'org/-name',
    'org/name-',
    'org/.name',
    'org/name.',
    'org/na me',
    'org/name$',
    'or:g/name',
    'org\\name',
    'org/name@',
    'org/name@a..b',
    'org/name@a b',
    'org/name@.hidden',
    'org/name@branch.lock',
    'org/name@a@b',
    'org/name@refs//pr',
    'org/name@~1',
    'org/name@x^',
    `org/${'n'.repeat(97)}`,
  ])('rejects %j', (s) => {
    expect(parseHubId(s)).toBeNull();
  });

  it('accepts names up to 96 characters', () => {
    expect(parseHubId(`org/${'n'.repeat(96)}`)).not.toBeNull();
  });
});

describe('isCommitHash', () => {
  it('accepts exactly 40 lower-case hex digits', () => {
    expect(isCommitHash('a'.repeat(40))).toBe(true);
    expect(isCommitHash('a'.repeat(39))).toBe(false);
    expect(isCommitHash('A'.repeat(40))).toBe(false);
    expect(isCommitHash('main')).toBe(false);
  });
});

describe('Hub URLs', () => {
  it('builds resolve URLs, encoding the revision whole and the path by segment', () => {
    expect(hubFileUrl('https://huggingface.co', 'org/name', 'main', 'config.json')).toBe(
      'https://huggingface.co/org/name/resolve/main/config.json',
    );
    expect(hubFileUrl('https://hf-mirror.example/', 'org/name', 'refs/pr/1', 'sub dir/a#b.json')).toBe(
      'https://hf-mirror.example/org/name/resolve/refs%2Fpr%2F1/sub%20dir/a%23b.json',
    );
  });

  it('builds the model-info API URL with blobs=true', () => {
    expect(hubApiUrl('https://huggingface.co', 'org/name', 'main')).toBe(
      'https://huggingface.co/api/models/org/name/revision/main?blobs=true',
    );
    expect(hubApiUrl('http://127.0.0.1:8080//', 'org/name', 'v1.0')).toBe(
      'http://127.0.0.1:8080/api/models/org/name/revision/v1.0?blobs=true',
    );
  });
});

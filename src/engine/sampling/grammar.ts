/**
 * Constrained decoding's CPU half: grammars (GrammarSpec) compiled against the model's vocabulary
 * by xgrammar (@mlc-ai/web-xgrammar, its WebAssembly build, as WebLLM uses) and one matcher per
 * sequence that gives the bitmask of the tokens allowed next and accepts the token drawn. The mask
 * is applied on the GPU (the logit_adjust kernel) before argmax or sampling.
 *
 * xgrammar is loaded on the first grammar a request brings, so engines that never constrain never
 * pay for it. Its bundle probes Node through `require` and `__filename`; the Node entry passes a
 * loader that provides them (src/node/xgrammar.ts), a browser bundle imports it as is.
 */
import type * as Xgrammar from '@mlc-ai/web-xgrammar';
import type { GrammarSpec } from '../../api/types.js';
import { InvalidRequestError } from '../../errors.js';
import type { KilnTokenizer } from '../../io/tokenizer.js';

/** The part of @mlc-ai/web-xgrammar Kiln uses. */
export interface XgrammarModule {
  TokenizerInfo: typeof Xgrammar.TokenizerInfo;
  GrammarCompiler: typeof Xgrammar.GrammarCompiler;
  GrammarMatcher: typeof Xgrammar.GrammarMatcher;
  Grammar: typeof Xgrammar.Grammar;
  /**
   * The last fatal message the WebAssembly module printed (it aborts the call with a bare
   * "Aborted()", the reason goes to its console), where the loader captures it.
   */
  takeLastError?: () => string | null;
}

/** Loads xgrammar (EngineOptions.loadXgrammar overrides this in Node). */
export async function importXgrammar(): Promise<XgrammarModule> {
  const mod = (await import('@mlc-ai/web-xgrammar')) as Partial<XgrammarModule> & {
    default?: XgrammarModule;
  };
  if (mod.GrammarCompiler) return mod as XgrammarModule;
  if (mod.default?.GrammarCompiler) return mod.default;
  // Its UMD bundle, evaluated as an ES module, publishes itself on the global object.
  const g = (globalThis as { xgrammar?: XgrammarModule }).xgrammar;
  if (g?.GrammarCompiler) return g;
  throw new InvalidRequestError('the grammar engine (@mlc-ai/web-xgrammar) could not be loaded');
}

/** A stable key of a grammar (compiled grammars are cached by it). */
function keyOf(spec: GrammarSpec): string {
  return JSON.stringify(spec);
}

/** One sequence's matcher: the mask of allowed next tokens, and the tokens drawn. */
export class TokenMatcher {
  constructor(
    private readonly m: Xgrammar.GrammarMatcher,
    /** Words of 32 token bits per mask row (ceil(vocab / 32)). */
    readonly maskWords: number,
  ) {}

  /** Bit i of word i >> 5 is set when token i may come next. */
  async mask(): Promise<Int32Array> {
    const m = await this.m.getNextTokenBitmask();
    return m.length === this.maskWords ? m : m.subarray(0, this.maskWords);
  }

  /** Advances past `id`; false if the grammar did not allow it (it is then not consumed). */
  accept(id: number): boolean {
    return this.m.acceptToken(id);
  }

  get terminated(): boolean {
    return this.m.isTerminated();
  }

  dispose(): void {
    this.m.dispose();
  }
}

/** The model's grammar compiler: built on the first grammar, then shared by every request. */
export class GrammarCompiler {
  private ready: Promise<{ xg: XgrammarModule; compiler: Xgrammar.GrammarCompiler }> | null = null;
  private readonly cache = new Map<string, Promise<Xgrammar.CompiledGrammar>>();
  private static readonly CACHE = 64;

  constructor(
    private readonly tokenizer: KilnTokenizer,
    /** The model's vocabulary size (the LM head's rows; may exceed the tokenizer's). */
    private readonly vocabSize: number,
    private readonly stopIds: readonly number[],
    private readonly load: () => Promise<XgrammarModule>,
  ) {}

  private init() {
    this.ready ??= (async () => {
      const xg = await this.load();
      const tok = this.tokenizer;
      const vocab: string[] = [];
      for (let id = 0; id < this.vocabSize; id++) vocab.push(tok.idToToken(id) ?? '');
      const enc = tok.vocabEncoding;
      const info = await xg.TokenizerInfo.createTokenizerInfo(
        vocab,
        enc.type,
        enc.prependSpace,
        this.vocabSize,
        [...this.stopIds],
      );
      return { xg, compiler: await xg.GrammarCompiler.createGrammarCompiler(info, true) };
    })();
    return this.ready;
  }

  /** Compiles `spec` (cached); a grammar xgrammar refuses is an InvalidRequestError naming why. */
  compile(spec: GrammarSpec): Promise<Xgrammar.CompiledGrammar> {
    const key = keyOf(spec);
    let c = this.cache.get(key);
    if (!c) {
      c = this.compileNow(spec);
      this.cache.set(key, c);
      c.catch(() => this.cache.delete(key));
      if (this.cache.size > GrammarCompiler.CACHE) {
        const oldest = this.cache.keys().next().value as string;
        void this.cache.get(oldest)?.then(
          (g) => g.dispose(),
          () => undefined,
        );
        this.cache.delete(oldest);
      }
    }
    return c;
  }

  private async compileNow(spec: GrammarSpec): Promise<Xgrammar.CompiledGrammar> {
    const { xg, compiler } = await this.init();
    xg.takeLastError?.();
    try {
      switch (spec.type) {
        case 'json':
          return await compiler.compileBuiltinJSONGrammar();
        case 'json_schema': {
          const schema = JSON.stringify(spec.schema);
          // Compact JSON (no free whitespace: a model cannot pad its answer forever); strict: no
          // properties beyond the schema's unless it allows them.
          if (!spec.prefix && !spec.suffix) {
            return await compiler.compileJSONSchema(schema, false, -1, [', ', ': '], true);
          }
          const json = await xg.Grammar.fromJSONSchema(schema, false, -1, [', ', ': '], true);
          const ebnf = `${json.toString()}\nkiln_wrapped ::= ${ebnfString(spec.prefix ?? '')} root ${ebnfString(spec.suffix ?? '')}\n`;
          json.dispose();
          return await compiler.compileGrammar(ebnf, 'kiln_wrapped');
        }
        case 'regex':
          return await compiler.compileStructuralTag({
            type: 'structural_tag',
            format: { type: 'regex', pattern: spec.pattern },
          });
        case 'ebnf':
          return await compiler.compileGrammar(spec.grammar);
      }
    } catch (e) {
      const why = xg.takeLastError?.() ?? (e instanceof Error ? e.message : String(e));
      throw new InvalidRequestError(`the ${spec.type} grammar cannot be compiled: ${why}`, { cause: e });
    }
  }

  /** A fresh matcher of `spec` for one sequence. */
  async matcher(spec: GrammarSpec): Promise<TokenMatcher> {
    const compiled = await this.compile(spec);
    const { xg } = await this.init();
    const m = await xg.GrammarMatcher.createGrammarMatcher(compiled);
    return new TokenMatcher(m, Math.ceil(this.vocabSize / 32));
  }
}

/** A string literal of xgrammar's EBNF ("" when empty). */
function ebnfString(text: string): string {
  return text === '' ? '""' : JSON.stringify(text);
}

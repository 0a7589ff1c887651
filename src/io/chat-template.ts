/**
 * A chat template (Jinja, parsed and run by @huggingface/jinja) rendered under limits. The template
 * comes from the model folder, so it is untrusted code: rendering is synchronous and cannot be
 * interrupted, and an unbounded `range(10**9)`, nested loops or a huge string repetition would
 * hang or exhaust the page, the worker or the server. Every evaluation step is counted, `range` is
 * bounded, and a string or list past the output limit stops the render with
 * {@link TemplateLimitError}. Real templates stay far below the limits (Qwen3's takes about 54 steps per
 * message: 21,474 for 400 messages).
 */
import { Environment, Interpreter, Template } from '@huggingface/jinja';

/** Evaluation steps one render may take. */
export const MAX_TEMPLATE_STEPS = 1_000_000;
/** Elements `range()` may produce. */
export const MAX_TEMPLATE_RANGE = 100_000;
/** Characters in any string (or elements in any list) a render may build. */
export const MAX_TEMPLATE_CHARS = 4 * 2 ** 20;

/** A render that went past one of the limits above (the template's fault, not the caller's). */
export class TemplateLimitError extends Error {
  override name = 'TemplateLimitError';
}

/**
 * The library's runtime classes as far as this file uses them: its published index.d.ts re-exports
 * them from an extensionless path that NodeNext resolution cannot follow, so they type as unknown.
 */
interface RuntimeValue {
  value: unknown;
}
interface JinjaEnvironment {
  set(name: string, value: unknown): RuntimeValue;
}
interface JinjaInterpreter {
  run(program: unknown): RuntimeValue;
  evaluate(statement: unknown, environment: JinjaEnvironment): RuntimeValue;
  /** Runs a block's statements: a loop calls it once per iteration, even for an empty body. */
  evaluateBlock(statements: unknown, environment: JinjaEnvironment): RuntimeValue;
}
const InterpreterBase = Interpreter as unknown as new (env: JinjaEnvironment) => JinjaInterpreter;
const EnvironmentClass = Environment as unknown as new () => JinjaEnvironment;

class BoundedInterpreter extends InterpreterBase {
  private steps = 0;

  constructor(
    env: JinjaEnvironment,
    private readonly maxSteps: number,
  ) {
    super(env);
  }

  private step(): void {
    if (++this.steps > this.maxSteps) {
      throw new TemplateLimitError(`the render took more than ${this.maxSteps} steps`);
    }
  }

  override evaluateBlock(statements: unknown, environment: JinjaEnvironment): RuntimeValue {
    this.step();
    return super.evaluateBlock(statements, environment);
  }

  override evaluate(statement: unknown, environment: JinjaEnvironment): RuntimeValue {
    this.step();
    const v = super.evaluate(statement, environment);
    const size = typeof v.value === 'string' || Array.isArray(v.value) ? v.value.length : 0;
    if (size > MAX_TEMPLATE_CHARS) {
      throw new TemplateLimitError(
        `the render built a value of ${size} elements (limit ${MAX_TEMPLATE_CHARS})`,
      );
    }
    return v;
  }
}

function range(start: number, stop?: number, step = 1): number[] {
  if (stop === undefined) [start, stop] = [0, start];
  if (![start, stop, step].every(Number.isInteger)) throw new Error('range() takes integers');
  if (step === 0) throw new Error('range() step must not be zero');
  const n = Math.max(0, Math.ceil((stop - start) / step));
  if (n > MAX_TEMPLATE_RANGE) {
    throw new TemplateLimitError(`range() of ${n} elements (limit ${MAX_TEMPLATE_RANGE})`);
  }
  return Array.from({ length: n }, (_, i) => start + i * step);
}

/** Python's strftime for the fields templates use (Llama 3.1's "%d %b %Y"), at the local time. */
function strftimeNow(format: string): string {
  const d = new Date();
  const pad = (n: number): string => String(n).padStart(2, '0');
  const month = (style: 'short' | 'long'): string =>
    new Intl.DateTimeFormat('en-US', { month: style }).format(d);
  const fields: Record<string, () => string> = {
    '%Y': () => String(d.getFullYear()),
    '%m': () => pad(d.getMonth() + 1),
    '%d': () => pad(d.getDate()),
    '%b': () => month('short'),
    '%B': () => month('long'),
    '%H': () => pad(d.getHours()),
    '%M': () => pad(d.getMinutes()),
    '%S': () => pad(d.getSeconds()),
    '%%': () => '%',
  };
  return format.replace(/%[YmdbBHMS%]/g, (t) => (fields[t] as () => string)());
}

/** A parsed chat template; throws the parser's error on invalid Jinja. */
export class ChatTemplate {
  private readonly template: Template;
  private readonly maxSteps: number;
  /**
   * The template reads a message's own `tools` field (Phi-4-mini: the system message carries the
   * tools as JSON text) rather than, or beside, the `tools` variable.
   */
  readonly readsMessageTools: boolean;

  /** `maxSteps` lowers the step budget (tests); it defaults to {@link MAX_TEMPLATE_STEPS}. */
  constructor(text: string, opts: { maxSteps?: number } = {}) {
    this.template = new Template(text);
    this.maxSteps = Math.min(opts.maxSteps ?? MAX_TEMPLATE_STEPS, MAX_TEMPLATE_STEPS);
    this.readsMessageTools = /message\s*(?:\[\s*['"]tools['"]\s*\]|\.tools\b)/.test(text);
  }

  /**
   * Renders with `context` as the template's variables, plus the globals transformers provides
   * (true/false/none in both spellings, raise_exception, range, strftime_now).
   * @throws TemplateLimitError past a limit; the template's own errors otherwise.
   */
  render(context: Record<string, unknown>): string {
    const env = new EnvironmentClass();
    const globals: Record<string, unknown> = {
      false: false,
      true: true,
      none: null,
      False: false,
      True: true,
      None: null,
      raise_exception: (message: unknown) => {
        throw new Error(String(message));
      },
      range,
      strftime_now: strftimeNow,
      ...context,
    };
    for (const [k, v] of Object.entries(globals)) env.set(k, v);
    const out = new BoundedInterpreter(env, this.maxSteps).run(this.template.parsed).value;
    return typeof out === 'string' ? out : String(out);
  }
}

/**
 * The conversation as a template that reads tools from the system message expects it (Phi-4-mini,
 * as its model card shows): the functions' JSON text (name, description, parameters, without
 * OpenAI's `{type: "function"}` wrapper) in the first system message's `tools`, a system message
 * with no text added in front when the conversation has none.
 */
export function withToolsInSystemMessage<M extends { role: string }>(
  messages: readonly M[],
  tools: readonly unknown[],
): (M | { role: 'system'; content: string; tools: string })[] {
  const functions = tools.map((t) =>
    typeof t === 'object' && t !== null && 'function' in t ? (t as { function: unknown }).function : t,
  );
  const text = JSON.stringify(functions);
  const copy = messages.map((m) => ({ ...m }));
  const first = copy[0];
  if (first?.role === 'system') return [{ ...first, tools: text }, ...copy.slice(1)];
  return [{ role: 'system', content: '', tools: text }, ...copy];
}

/**
 * Tool calls in a streamed reply: text is passed on until it may be the start of a call, then held
 * and parsed at the end, so a client never sees half a call as content. The call formats and their
 * parsers are tools.ts's.
 */
import { toToolCalls, type ToolFormat } from './tools.js';
import type { ToolParam } from './types.js';

/**
 * Streamed text of a reply that may hold tool calls: text is passed on until it may be the start
 * of a call (the format's opener, or for a bare-JSON format a reply opening with "{"); from there
 * it is kept, and at the end parsed into calls (or released as text if it holds none).
 */
export class ToolStream {
  private held = '';
  private inCall = false;
  private sent = false;

  constructor(
    private readonly format: ToolFormat,
    private readonly tools: readonly ToolParam[],
  ) {}

  /** Text safe to stream now. */
  push(text: string): string {
    if (this.inCall) {
      this.held += text;
      return '';
    }
    const all = this.held + text;
    const opener = this.format.opener;
    if (opener === null) {
      // A bare JSON call can only be the whole reply.
      if (this.sent) return text;
      const lead = all.trimStart();
      if (
        lead === '' ||
        '<|python_tag|>'.startsWith(lead) ||
        lead.startsWith('{') ||
        lead.startsWith('<|python_tag|>')
      ) {
        this.held = all;
        this.inCall = lead.length > 0 && (lead.startsWith('{') || lead.startsWith('<|python_tag|>'));
        return '';
      }
      this.held = '';
      this.sent = true;
      return all;
    }
    const at = all.indexOf(opener);
    if (at >= 0) {
      this.inCall = true;
      this.held = all.slice(at);
      this.sent ||= at > 0;
      return all.slice(0, at);
    }
    // Keep back a tail that could begin the opener.
    let keep = 0;
    for (let k = Math.min(opener.length - 1, all.length); k > 0; k--) {
      if (opener.startsWith(all.slice(all.length - k))) {
        keep = k;
        break;
      }
    }
    this.held = all.slice(all.length - keep);
    const out = all.slice(0, all.length - keep);
    this.sent ||= out.length > 0;
    return out;
  }

  /** At the end: the calls, or the held text released. */
  end(): { text: string; calls: ReturnType<typeof toToolCalls> } {
    const parsed = this.inCall ? this.format.parse(this.held, this.tools) : null;
    if (parsed) return { text: parsed.content, calls: toToolCalls(parsed.calls) };
    return { text: this.held, calls: [] };
  }
}

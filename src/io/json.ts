/** Small helpers for checking parsed JSON (config files, headers, API answers) and naming bad values. */

/** A parsed JSON object (not an array, not null). */
export type JsonObject = Record<string, unknown>;

/** True when `v` is a JSON object: an object that is neither null nor an array. */
export function isJsonObject(v: unknown): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * A short rendering of a value for error messages: "missing" for undefined, otherwise its JSON
 * (strings quoted), cut to 60 characters so a huge value cannot flood the message.
 */
export function describeValue(v: unknown): string {
  if (v === undefined) return 'missing';
  let s: string | undefined;
  try {
    s = JSON.stringify(v);
  } catch {
    // BigInt and cyclic values have no JSON form.
  }
  s ??= String(v);
  if (s.length <= 60) return s;
  // Never cut between the two halves of a surrogate pair.
  const cut = /[\uD800-\uDBFF]/.test(s.charAt(56)) ? 56 : 57;
  return `${s.slice(0, cut)}...`;
}

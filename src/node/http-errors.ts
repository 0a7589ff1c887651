/**
 * The server's errors as OpenAI sends them: an HttpError carries the status and the
 * {"error": {"message", "type", "param", "code"}} fields; anything thrown maps onto one (a request
 * the API refused is a 400 naming its field, a device being recovered a 503 with Retry-After,
 * fastify's body errors 413/415/400), and anything unexpected becomes a 500 that carries no stack.
 */
import type { FastifyReply } from 'fastify';
import { OpenAiRequestError } from '../api/openai/validate.js';
import { GpuDeviceError, InvalidRequestError, KilnError } from '../errors.js';

/** An error with its HTTP status and OpenAI error fields. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
  ) {
    super(message);
  }
}

/** Seconds a client is asked to wait while the engine recovers from a device loss. */
export const RECOVERY_RETRY_AFTER_S = 2;

export const recoveringError = (message: string) =>
  new HttpError(503, message, 'server_error', null, 'device_recovering');

export const badRequest = (message: string, param: string | null = null, code: string | null = null) =>
  new HttpError(400, message, 'invalid_request_error', param, code);

export function sendError(reply: FastifyReply, e: HttpError): void {
  // A full queue drains within about a request's time; ask clients to come back in a second.
  if (e.status === 429) void reply.header('retry-after', '1');
  if (e.status === 503) void reply.header('retry-after', String(RECOVERY_RETRY_AFTER_S));
  void reply
    .code(e.status)
    .header('content-type', 'application/json')
    .send({ error: { message: e.message, type: e.type, param: e.param, code: e.code } });
}

/** Maps anything thrown to an HttpError; unexpected errors become a 500 without details. */
export function toHttpError(e: unknown, log: (line: string) => void): HttpError {
  if (e instanceof HttpError) return e;
  if (e instanceof OpenAiRequestError) return badRequest(e.message, e.param, e.code);
  if (e instanceof InvalidRequestError) return badRequest(e.message);
  if (e instanceof GpuDeviceError && e.retriable) return recoveringError(e.message);
  const f = e as { statusCode?: number; code?: string; message?: string };
  if (f.code === 'FST_ERR_CTP_BODY_TOO_LARGE')
    return new HttpError(413, 'request body too large', 'invalid_request_error', null, 'request_too_large');
  if (f.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') {
    return new HttpError(
      415,
      'the request body must be JSON (Content-Type: application/json)',
      'invalid_request_error',
      null,
      'unsupported_media_type',
    );
  }
  if (f.code === 'FST_ERR_CTP_EMPTY_JSON_BODY') return badRequest(f.message ?? 'bad body');
  if (f.statusCode === 400) return badRequest(f.message ?? 'malformed request');
  if (e instanceof KilnError) log(`request failed: ${e.message}`);
  else log(`internal error: ${(e as Error)?.message ?? String(e)}`);
  return new HttpError(500, 'internal server error', 'server_error');
}

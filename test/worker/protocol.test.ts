/**
 * Errors cross the worker boundary as data (structured clone keeps no class): the page rebuilds
 * them as their Kiln class, and a request cut off by a device loss the worker recovers from stays
 * retriable, so a caller of WorkerEngine can tell "send it again" from a real failure.
 */
import { expect, test } from 'vitest';
import { GpuDeviceError, InvalidRequestError } from '../../src/errors.js';
import { deserializeError, serializeError } from '../../src/worker/protocol.js';

const across = (e: unknown) => deserializeError(structuredClone(serializeError(e)));

test('a retriable device-loss error stays retriable; other errors keep their class and message', () => {
  const cut = across(GpuDeviceError.lostRetriable('unknown: the GPU process exited'));
  expect(cut).toBeInstanceOf(GpuDeviceError);
  expect((cut as GpuDeviceError).retriable).toBe(true);
  expect(cut.message).toMatch(/lost \(unknown: the GPU process exited\) .* can be retried$/);

  const lost = across(new GpuDeviceError('the GPU device was lost and could not be recovered: no adapter'));
  expect(lost).toBeInstanceOf(GpuDeviceError);
  expect((lost as GpuDeviceError).retriable).toBe(false);

  const bad = across(new InvalidRequestError('maxTokens is -1; expected an integer >= 0'));
  expect(bad).toBeInstanceOf(InvalidRequestError);
  expect(bad.message).toBe('maxTokens is -1; expected an integer >= 0');

  const plain = across(new TypeError('x is not a function'));
  expect(plain).not.toBeInstanceOf(GpuDeviceError);
  expect(plain.name).toBe('TypeError');
  expect(serializeError('text')).toEqual({ name: 'Error', message: 'text' });
});

/**
 * Kiln's error classes. Every failure a user can cause (a bad file, an unsupported config, a prompt
 * too long, a device too small) is one of these, with a message that names the offending field,
 * file or limit; the CLI prints `message` alone (no stack) unless --verbose.
 */
export class KilnError extends Error {
  override name = 'KilnError';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/** A checkpoint, index, config or tokenizer file that is malformed, truncated or hostile. */
export class InvalidModelFileError extends KilnError {
  override name = 'InvalidModelFileError';
}

/** A well-formed model that uses something Kiln does not implement (architecture, rope type, dtype). */
export class UnsupportedModelError extends KilnError {
  override name = 'UnsupportedModelError';
}

/** A request the model cannot serve, such as a prompt longer than the context. */
export class InvalidRequestError extends KilnError {
  override name = 'InvalidRequestError';
}

/** No adapter, a device that could not be created, or a device lost while in use. */
export class GpuDeviceError extends KilnError {
  override name = 'GpuDeviceError';
  /**
   * True when the device was lost and the engine is getting a new one: the same request, sent
   * again, runs once it has (a server answers 503 with Retry-After).
   */
  retriable = false;

  /** The error of a request cut off by a device loss the engine recovers from. */
  static lostRetriable(reason: string, options?: { cause?: unknown }): GpuDeviceError {
    const e = new GpuDeviceError(
      `the GPU device was lost (${reason}) and Kiln is recovering it; the request can be retried`,
      options,
    );
    e.retriable = true;
    return e;
  }
}

/** The model (or one of its tensors) does not fit the device's limits. */
export class DeviceMemoryError extends KilnError {
  override name = 'DeviceMemoryError';
}

/** A download from the Hub (or a compatible endpoint) failed or did not verify. */
export class DownloadError extends KilnError {
  override name = 'DownloadError';
}

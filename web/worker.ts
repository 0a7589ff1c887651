/**
 * The Web Worker entry: the engine runs here, behind the message protocol of src/worker/protocol.ts,
 * so the page's main thread never waits on model loading or inference.
 */
import { serveEngine } from '../src/worker/handler.js';
import type { Endpoint, WorkerEvent, WorkerRequest } from '../src/worker/protocol.js';

// The project's TypeScript lib is DOM, which types `self` as a Window; in a dedicated worker it is
// the worker's global scope, whose postMessage/addEventListener are exactly this endpoint.
serveEngine(self as unknown as Endpoint<WorkerRequest, WorkerEvent>);

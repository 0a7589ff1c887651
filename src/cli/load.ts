/**
 * The engine that the model options describe, loaded with download and load progress bars and
 * with background kernel tuning cached per adapter (warnings on stderr).
 */
import type { Engine } from '../engine/engine.js';
import { InvalidRequestError } from '../errors.js';
import type { Q4GroupSize } from '../quant/q4.js';
import type { LoadProgress } from '../weights/loader.js';
import type { PullProgress } from '../node/hub-client.js';
import { createEngine } from '../node/index.js';
import { createByteProgress } from '../node/progress.js';
import { FileTuneStore } from '../node/tune-store.js';
import type { ModelFlags } from './options.js';

/**
 * `background` false (one-shot commands: run, eval, bench) applies the cached choices and tunes
 * nothing: such a command has no idle time, and tuning between its steps would slow the very run
 * it serves. Long-lived ones (serve, chat) tune while no request runs.
 */
export async function loadEngine(o: ModelFlags, background = true): Promise<Engine> {
  if (o.maxDraft !== undefined && !o.speculative) {
    throw new InvalidRequestError('--max-draft needs --speculative');
  }
  if (o.chainDrafts && !o.speculative) throw new InvalidRequestError('--chain-drafts needs --speculative');
  const pullBar = createByteProgress('download', { enabled: !o.quiet });
  const loadBar = createByteProgress('loading', { enabled: !o.quiet });
  try {
    return await createEngine({
      model: o.model,
      ...(o.context ? { contextLength: o.context } : {}),
      ...(o.memoryLimit ? { memoryLimitBytes: o.memoryLimit * 2 ** 20 } : {}),
      ...(o.attention ? { attentionSoftmax: o.attention } : {}),
      ...(o.sampler ? { sampling: o.sampler } : {}),
      ...(o.activations ? { activations: o.activations } : {}),
      ...(o.kvCache ? { kvCache: o.kvCache } : {}),
      ...(o.quant ? { quant: o.quant } : {}),
      ...(o.kernelDefaults ? { kernelDefaults: o.kernelDefaults } : {}),
      ...(o.pipelineDepth ? { pipelineDepth: o.pipelineDepth } : {}),
      ...(o.slidingKv ? { slidingKv: o.slidingKv } : {}),
      ...(o.speculative
        ? {
            speculative: {
              method: o.speculative,
              ...(o.maxDraft ? { maxDraft: o.maxDraft } : {}),
              ...(o.chainDrafts ? { tree: false } : {}),
            },
          }
        : {}),
      quantOptions: {
        ...(o.groupSize ? { groupSize: o.groupSize as Q4GroupSize } : {}),
        ...(o.quantSym ? { symmetric: true } : {}),
        ...(o.quantLmHead ? { lmHead: true } : {}),
      },
      tune: o.tune
        ? { budgetMs: o.tuneBudget * 1000, store: new FileTuneStore(), warn: tuneWarn, background }
        : false,
      pull: { onProgress: (p: PullProgress) => pullBar.update(p.bytes, p.total, p.file) },
      onProgress: (p: LoadProgress) => loadBar.update(p.loadedBytes, p.totalBytes, p.tensor),
    });
  } finally {
    pullBar.stop();
    loadBar.stop();
  }
}

function tuneWarn(m: string): void {
  process.stderr.write(`kiln: ${m}\n`);
}

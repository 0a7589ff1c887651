/**
 * `kiln bench kernels`: runs bench/kernels.ts on Dawn's adapter, prints a table (and the
 * physical framing: the tokens/s bound of each benchmark model) and optionally writes the JSON.
 */
import { writeFileSync } from 'node:fs';
import { benchKernels, type BenchRow } from './kernels.js';
import { attentionSuite } from './attention.js';
import { matmulGgufSuite } from './matmul-gguf.js';
import { matmulQ4Suite } from './matmul-q4.js';
import { acquireNodeGpu } from '../src/node/dawn.js';

function shapeText(s: BenchRow['shape']): string {
  return Object.entries(s)
    .map(([k, v]) => `${k}=${v}`)
    .join(' ');
}

export async function cmdBenchKernels(o: { json?: string; quick?: boolean; only?: string }): Promise<void> {
  const ctx = await acquireNodeGpu();
  try {
    const out = process.stderr;
    out.write(`adapter: ${ctx.adapter.description || ctx.adapter.device}\n`);
    out.write(
      `${'kernel'.padEnd(18)} ${'variant'.padEnd(34)} ${'ms'.padStart(9)} ${'GB/s'.padStart(8)} ${'GFLOP/s'.padStart(8)} ${'roof'.padStart(6)} ${'err'.padStart(9)} ok  shape\n`,
    );
    const report = await benchKernels(ctx, {
      quick: o.quick ?? false,
      extra: { matmul_q4: matmulQ4Suite, matmul_gguf: matmulGgufSuite, attention: attentionSuite },
      ...(o.only ? { only: o.only.split(',').map((s) => s.trim()) } : {}),
      onRow: (r) =>
        out.write(
          `${r.kernel.padEnd(18)} ${r.variant.padEnd(34)} ${r.ms.toFixed(3).padStart(9)} ${r.gbps.toFixed(2).padStart(8)} ${r.gflops.toFixed(2).padStart(8)} ${r.roofline_fraction.toFixed(2).padStart(6)} ${r.max_rel_err.toExponential(1).padStart(9)} ${r.ok ? 'ok' : 'NO'}  ${shapeText(r.shape)}\n`,
        ),
    });
    out.write(
      `\nbandwidth (stream_read): ${report.bandwidth_gbps.toFixed(2)} GB/s (${report.timer} timing)\n`,
    );
    for (const b of report.bounds) {
      out.write(
        `${b.model} (${b.weights}): ${(b.bytes_per_token / 1e6).toFixed(1)} MB of weights per token -> at most ${b.tokens_per_s_bound} tokens/s at this bandwidth\n`,
      );
    }
    const failed = report.rows.filter((r) => !r.ok);
    if (o.json) writeFileSync(o.json, JSON.stringify(report, null, 2) + '\n');
    else process.stdout.write(JSON.stringify(report) + '\n');
    if (failed.length > 0) {
      out.write(`${failed.length} row(s) failed their reference check\n`);
      process.exitCode = 1;
    }
  } finally {
    ctx.close();
  }
}

/**
 * The adapter signature tuned results are keyed by: what identifies the GPU, driver path and
 * granted capabilities (DESIGN-NOTES §6: vendor, architecture, device, description, features,
 * limits, runtime version). A result tuned under any other signature is foreign and never used.
 */
import type { GpuContext } from '../gpu/device.js';
import { KILN_VERSION } from '../version.js';

export interface AdapterSignature {
  vendor: string;
  architecture: string;
  device: string;
  description: string;
  /** The browser's user agent (its WebGPU implementation); empty in Node. */
  userAgent: string;
  subgroupMinSize: number;
  subgroupMaxSize: number;
  features: string[];
  limits: Record<string, number>;
  kiln: string;
}

/** Limits a kernel variant's validity or speed depends on. */
const SIGNATURE_LIMITS = [
  'maxStorageBufferBindingSize',
  'maxBufferSize',
  'maxComputeWorkgroupStorageSize',
  'maxComputeInvocationsPerWorkgroup',
  'maxComputeWorkgroupSizeX',
  'maxComputeWorkgroupsPerDimension',
] as const;

export function adapterSignature(ctx: GpuContext): AdapterSignature {
  const a = ctx.adapter;
  const info = ctx.device.adapterInfo as GPUAdapterInfo | undefined;
  const nav = (globalThis as { navigator?: { userAgent?: string } }).navigator;
  const limits: Record<string, number> = {};
  for (const l of SIGNATURE_LIMITS) limits[l] = ctx.limits[l];
  return {
    vendor: a.vendor,
    architecture: a.architecture,
    device: a.device,
    description: a.description,
    userAgent: typeof nav?.userAgent === 'string' && !nav.userAgent.startsWith('Node') ? nav.userAgent : '',
    subgroupMinSize: info?.subgroupMinSize ?? 0,
    subgroupMaxSize: info?.subgroupMaxSize ?? 0,
    features: [...ctx.device.features].map(String).sort(),
    limits,
    kiln: KILN_VERSION,
  };
}

/** A short stable id of a signature (FNV-1a over its canonical JSON), for file and store names. */
export function signatureId(s: AdapterSignature): string {
  const text = canonicalJson(s);
  let h1 = 0x811c9dc5;
  let h2 = 0x01000193;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    h1 = Math.imul(h1 ^ c, 0x01000193) >>> 0;
    h2 = Math.imul(h2 ^ c, 0x5bd1e995) >>> 0;
  }
  return h1.toString(16).padStart(8, '0') + h2.toString(16).padStart(8, '0');
}

/** JSON with object keys sorted, so equal values give equal text. */
export function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  if (v && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o)
      .sort()
      .filter((k) => o[k] !== undefined)
      .map((k) => `${JSON.stringify(k)}:${canonicalJson(o[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v);
}

/** A readable adapter name for reports. */
export function adapterName(s: AdapterSignature): string {
  return [s.vendor, s.architecture, s.description || s.device].filter(Boolean).join(' / ');
}

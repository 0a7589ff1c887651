/** Kiln's version (kept equal to package.json's by a test): part of the tuning cache's key. */
export const KILN_VERSION = '0.1.0';

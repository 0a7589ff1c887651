// The seeded generator lives with the benchmarks, which build their synthetic weights from it too.
export { randomF32 } from '../../bench/random.js';

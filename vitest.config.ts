import { defineConfig } from 'vitest/config';

// GPU tests share one lavapipe device per worker; lavapipe already uses every core,
// so running files in parallel only adds contention and memory.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 600_000,
    hookTimeout: 120_000,
    pool: 'forks',
    fileParallelism: false,
    reporters: ['default'],
  },
});

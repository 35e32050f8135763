import { expect } from 'vitest';
import type { ParityEntry } from '../../model/infinity/parity.js';

/** Every entry whose key starts with `prefix` is under its tolerance, and there are `count` of them. */
export function expectEntries(entries: readonly ParityEntry[], prefix: string, count: number): void {
  const mine = entries.filter((e) => e.key.startsWith(prefix));
  expect(mine.map((e) => e.key)).toHaveLength(count);
  for (const e of mine) expect(e.error, `${e.key}: max|err|/max|ref|`).toBeLessThan(e.tol);
}

export function printEntries(title: string, entries: readonly ParityEntry[]): void {
  const lines = entries.map((e) => `  ${e.key.padEnd(14)} ${e.error.toExponential(2)}`);
  console.log(`${title}: max|err|/max|ref| per key (tolerance ${entries[0]?.tol})\n${lines.join('\n')}`);
}

// Command-line options of the bench families (`npm run bench -- --only infinity --width 2048 …`).
// Each family reads the flags it knows; an option given a value it cannot use is an error naming the flag.

export function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

export function hasFlag(name: string): boolean {
  return process.argv.includes(name);
}

/** A positive integer flag, or `fallback` when absent. */
export function intArg(name: string, fallback: number): number {
  const text = arg(name);
  if (text === undefined) return fallback;
  const v = Number(text);
  if (!Number.isInteger(v) || v < 1) throw new Error(`bench: ${name} must be a positive integer, got "${text}"`);
  return v;
}

/** A finite number flag (cfg, τ), or undefined when absent. */
export function numberArg(name: string): number | undefined {
  const text = arg(name);
  if (text === undefined) return undefined;
  const v = Number(text);
  if (!Number.isFinite(v)) throw new Error(`bench: ${name} must be a number, got "${text}"`);
  return v;
}

/** A non-negative integer flag (warm-up runs may be 0), or `fallback` when absent. */
export function countArg(name: string, fallback: number): number {
  const text = arg(name);
  if (text === undefined) return fallback;
  const v = Number(text);
  if (!Number.isInteger(v) || v < 0) throw new Error(`bench: ${name} must be a non-negative integer, got "${text}"`);
  return v;
}

/** A flag restricted to `allowed` values, or `fallback` when absent. */
export function choiceArg<T extends string>(name: string, allowed: readonly T[], fallback: T): T {
  const text = arg(name);
  if (text === undefined) return fallback;
  if (!(allowed as readonly string[]).includes(text)) throw new Error(`bench: ${name} must be one of ${allowed.join(', ')}, got "${text}"`);
  return text as T;
}

/** A comma-separated list of positive integers (`--vae-sizes 256,512`). */
export function intListArg(name: string, fallback: number[]): number[] {
  const text = arg(name);
  if (text === undefined) return fallback;
  const out = text.split(',').map(Number);
  if (out.length === 0 || out.some((v) => !Number.isInteger(v) || v < 1)) throw new Error(`bench: ${name} must be positive integers separated by commas, got "${text}"`);
  return out;
}

export const GB = 1e9;
export const fmtGB = (bytes: number): string => `${(bytes / GB).toFixed(2)} GB`;

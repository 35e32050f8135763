// Errors the engine throws. Each names what failed (kernel, shapes, limit) so a user can act on it.

/** A GPU-side failure: validation error, out-of-memory, device loss. Names the kernel(s) involved. */
export class GpuError extends Error {
  constructor(message: string, readonly kernel?: string) {
    super(message);
    this.name = 'GpuError';
  }
}

/** A launcher was given tensors that do not fit together. */
export class ShapeError extends Error {
  constructor(kernel: string, detail: string) {
    super(`${kernel}: ${detail}`);
    this.name = 'ShapeError';
  }
}

/** A request beyond what the device allows: names the limit and by how much it is exceeded. */
export class LimitError extends Error {
  constructor(what: string, limitName: string, requested: number, limit: number) {
    super(
      `${what}: needs ${limitName} ≥ ${requested} but the device allows ${limit} ` +
        `(over by ${requested - limit}${requested > 1 << 20 ? ` bytes, ${((requested - limit) / 2 ** 20).toFixed(1)} MiB` : ''})`,
    );
    this.name = 'LimitError';
  }
}

export function shapeStr(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

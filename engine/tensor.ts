// A tensor is a GPU buffer range plus a shape and a dtype. Views share the buffer of their parent and
// never own it; only the tensor that allocated a buffer releases it.

import { type DType, itemSize, f16ArrayToF32, bf16ArrayToF32 } from './dtype.js';
import { ShapeError, shapeStr } from './errors.js';
import type { Gpu } from './device.js';

export type HostArray = Float32Array | Int32Array | Uint32Array | Uint16Array;

export function numelOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) throw new ShapeError('tensor', `invalid shape ${shapeStr(shape)}`);
    n *= d;
  }
  return n;
}

type Ownership = 'pool' | 'exact' | 'view';

export class Tensor {
  private disposed = false;

  constructor(
    readonly gpu: Gpu,
    readonly buffer: GPUBuffer,
    readonly byteOffset: number,
    readonly shape: readonly number[],
    readonly dtype: DType,
    private readonly ownership: Ownership,
    readonly label = 'tensor',
  ) {}

  get numel(): number {
    return numelOf(this.shape);
  }

  get rank(): number {
    return this.shape.length;
  }

  /** Bytes of the elements themselves (halves may end on a 2-byte boundary). */
  get byteLength(): number {
    return this.numel * itemSize(this.dtype);
  }

  /** Size of a GPU binding of this tensor: WebGPU bindings are multiples of 4 bytes. */
  get bindingSize(): number {
    return Math.max(4, Math.ceil(this.byteLength / 4) * 4);
  }

  get isDisposed(): boolean {
    return this.disposed;
  }

  /** Elements per row of dim 0. */
  get rowSize(): number {
    return this.shape.length === 0 ? 1 : this.numel / Math.max(1, this.shape[0]);
  }

  /** Rows [start, start+count) along dim 0, sharing the buffer. */
  rows(start: number, count: number): Tensor {
    const n = this.shape[0];
    if (this.shape.length === 0 || start < 0 || count < 0 || start + count > n) {
      throw new ShapeError('Tensor.rows', `rows [${start}, ${start + count}) outside ${shapeStr(this.shape)}`);
    }
    const offset = this.byteOffset + start * this.rowSize * itemSize(this.dtype);
    return new Tensor(this.gpu, this.buffer, offset, [count, ...this.shape.slice(1)], this.dtype, 'view', this.label);
  }

  /**
   * Same data, another shape with the same element count. One dim may be -1. The result is a view: disposing
   * it frees nothing (this tensor still owns the buffer). To hand a fresh result on under another shape, use `as`.
   */
  reshape(shape: readonly number[]): Tensor {
    return new Tensor(this.gpu, this.buffer, this.byteOffset, this.resolve(shape, 'Tensor.reshape'), this.dtype, 'view', this.label);
  }

  /**
   * This tensor under another shape, taking over its ownership: the result frees the buffer when disposed and
   * this tensor is spent (for functions that return `kernel(…).as(shape)`, where a view would leak the buffer).
   */
  as(shape: readonly number[]): Tensor {
    this.assertAlive();
    const moved = new Tensor(this.gpu, this.buffer, this.byteOffset, this.resolve(shape, 'Tensor.as'), this.dtype, this.ownership, this.label);
    this.disposed = true;
    return moved;
  }

  private resolve(shape: readonly number[], where: string): number[] {
    const known = shape.filter((d) => d !== -1).reduce((a, b) => a * b, 1);
    const resolved = shape.map((d) => (d === -1 ? this.numel / known : d));
    if (numelOf(resolved) !== this.numel) throw new ShapeError(where, `cannot reshape ${shapeStr(this.shape)} to ${shapeStr(shape)}`);
    return resolved;
  }

  /** Raw contents: Float32Array / Int32Array / Uint32Array, or Uint16Array bits for f16 and bf16. */
  async readRaw(): Promise<HostArray> {
    this.assertAlive();
    const bytes = await this.gpu.readBytes(this.buffer, this.byteOffset, this.byteLength);
    switch (this.dtype) {
      case 'f32':
        return new Float32Array(bytes.buffer, bytes.byteOffset, this.numel);
      case 'i32':
        return new Int32Array(bytes.buffer, bytes.byteOffset, this.numel);
      case 'u32':
        return new Uint32Array(bytes.buffer, bytes.byteOffset, this.numel);
      default:
        return new Uint16Array(bytes.buffer, bytes.byteOffset, this.numel);
    }
  }

  /** Contents as numbers: floats (halves widened exactly) as Float32Array, integers as their own arrays. */
  async read(): Promise<Float32Array | Int32Array | Uint32Array> {
    const raw = await this.readRaw();
    if (this.dtype === 'f16') return f16ArrayToF32(raw as Uint16Array);
    if (this.dtype === 'bf16') return bf16ArrayToF32(raw as Uint16Array);
    return raw as Float32Array | Int32Array | Uint32Array;
  }

  /** Float contents as Float32Array (throws for integer tensors). */
  async readF32(): Promise<Float32Array> {
    if (this.dtype === 'i32' || this.dtype === 'u32') throw new ShapeError('Tensor.readF32', `tensor "${this.label}" is ${this.dtype}`);
    return (await this.read()) as Float32Array;
  }

  /** Overwrites the contents from host data of the same element count. */
  write(data: HostArray): void {
    this.assertAlive();
    if (data.length !== this.numel) {
      throw new ShapeError('Tensor.write', `"${this.label}" has ${this.numel} elements ${shapeStr(this.shape)}, got ${data.length}`);
    }
    this.gpu.writeBytes(this.buffer, this.byteOffset, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  }

  /** Returns the buffer to the pool (or frees it). Views only mark themselves disposed. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    if (this.ownership === 'pool') this.gpu.pool.release(this.buffer);
    else if (this.ownership === 'exact') this.gpu.destroyBuffer(this.buffer);
  }

  assertAlive(): void {
    if (this.disposed) throw new ShapeError('tensor', `"${this.label}" was used after dispose()`);
  }

  toString(): string {
    return `Tensor(${this.label}, ${this.dtype}, ${shapeStr(this.shape)})`;
  }
}

// Packs a kernel's uniform parameters. Every params struct in our WGSL is a flat list of 4-byte scalars
// (u32, i32, f32), so sequential packing matches WGSL's uniform layout exactly.

export const MAX_PARAM_BYTES = 256;

export class Params {
  private readonly data = new DataView(new ArrayBuffer(MAX_PARAM_BYTES));
  private length = 0;

  u32(...values: number[]): this {
    for (const v of values) {
      if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new RangeError(`Params.u32: ${v} is not a u32`);
      this.data.setUint32(this.claim(), v, true);
    }
    return this;
  }

  i32(...values: number[]): this {
    for (const v of values) {
      if (!Number.isInteger(v) || v < -0x80000000 || v > 0x7fffffff) throw new RangeError(`Params.i32: ${v} is not an i32`);
      this.data.setInt32(this.claim(), v, true);
    }
    return this;
  }

  f32(...values: number[]): this {
    for (const v of values) this.data.setFloat32(this.claim(), v, true);
    return this;
  }

  get byteLength(): number {
    return this.length;
  }

  bytes(): Uint8Array {
    return new Uint8Array(this.data.buffer, 0, this.length);
  }

  private claim(): number {
    if (this.length + 4 > MAX_PARAM_BYTES) throw new RangeError(`Params: more than ${MAX_PARAM_BYTES} bytes`);
    const at = this.length;
    this.length += 4;
    return at;
  }
}

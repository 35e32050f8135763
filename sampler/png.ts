// Decoder output → 8-bit RGB → PNG, and atomic file writes. Pixels follow upstream exactly:
// uint8(((clamp(y, −1, 1) + 1) / 2) · 255) with truncation, every step in f32 like the PyTorch tensors.

import { randomBytes } from 'node:crypto';
import { open, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { encode } from 'fast-png';

/** An 8-bit RGB image, rows top to bottom, pixels interleaved R, G, B. */
export interface RgbImage {
  width: number;
  height: number;
  data: Uint8Array;
}

const f32 = Math.fround;

/** One pixel value of the decoder's output (any float) → 0…255, upstream's rounding. */
export function toByte(y: number): number {
  const c = Math.min(1, Math.max(-1, f32(y)));
  return Math.trunc(f32(f32(f32(c + 1) / 2) * 255));
}

/** Image `index` of a decoder output [B, 3, H, W] (host f32) → RgbImage. */
export function rgbFromPlanar(data: Float32Array, shape: readonly number[], index = 0): RgbImage {
  const [B, C, H, W] = shape;
  if (shape.length !== 4 || C !== 3 || index < 0 || index >= B) throw new RangeError(`image ${index} of a [${shape.join(', ')}] decoder output (expected [B, 3, H, W])`);
  const plane = H * W;
  const base = index * 3 * plane;
  const out = new Uint8Array(plane * 3);
  for (let p = 0; p < plane; p++) {
    out[3 * p] = toByte(data[base + p]);
    out[3 * p + 1] = toByte(data[base + plane + p]);
    out[3 * p + 2] = toByte(data[base + 2 * plane + p]);
  }
  return { width: W, height: H, data: out };
}

/** PNG bytes of an RGB image (deterministic: the same pixels and text give the same bytes). */
export function encodePng(image: RgbImage, text?: Record<string, string>): Uint8Array {
  return encode({ width: image.width, height: image.height, data: image.data, channels: 3, depth: 8, ...(text ? { text } : {}) });
}

/** `out.png` → `out-3.png` (the i-th file of a batch); a name without an extension gets `.png`. */
export function indexedPath(path: string, index: number): string {
  const m = /^(.*?)(\.[^./\\]+)?$/.exec(path)!;
  return `${m[1]}-${index}${m[2] ?? '.png'}`;
}

/**
 * Writes every file or none: each goes to a temporary file beside its target, and only when all are
 * written and synced are they renamed into place. On an error the temporary files are removed.
 */
export async function writeFilesAtomically(files: ReadonlyArray<{ path: string; data: Uint8Array }>): Promise<void> {
  const temps: string[] = [];
  try {
    for (const f of files) {
      const temp = join(dirname(f.path), `.${basename(f.path)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
      temps.push(temp);
      const handle = await open(temp, 'wx');
      try {
        await handle.writeFile(f.data);
        await handle.sync();
      } finally {
        await handle.close();
      }
    }
    for (let i = 0; i < files.length; i++) await rename(temps[i], files[i].path);
  } catch (err) {
    await Promise.all(temps.map((t) => unlink(t).catch(() => undefined)));
    throw err;
  }
}

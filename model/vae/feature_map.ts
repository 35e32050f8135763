// Feature maps of one image split into channel chunks, each small enough for one GPU binding.
// A 1024² decoder map is far larger than a binding (256 ch × 1024² f32 = 1 GiB vs 128 MiB on lavapipe),
// and NCHW maps cannot be cut into row bands without strided bindings — but channel ranges are contiguous.
// So: convolutions accumulate over input chunks (with weight slices along Cin, made once and cached),
// GroupNorm runs per chunk (chunks hold whole channel groups, so statistics are exact), and nearest
// up-sampling and residual adds run chunk by chunk. Small maps are a single chunk and take the plain path.

import type { Gpu } from '../../engine/device.js';
import { LimitError } from '../../engine/errors.js';
import type { Tensor } from '../../engine/tensor.js';
import { conv2d } from '../../kernels/conv.js';
import { unary } from '../../kernels/elementwise.js';
import { copyColumns } from '../../kernels/layout.js';
import { gatedResidual, groupNorm } from '../../kernels/norms.js';
import { resize } from '../../kernels/resize.js';

export interface Chunk {
  /** First channel of this chunk. */
  c0: number;
  /** [1, count, H, W]. */
  t: Tensor;
}

export interface FeatureMap {
  C: number;
  H: number;
  W: number;
  chunks: Chunk[];
}

interface ConvW {
  weight: Tensor;
  bias: Tensor | null;
}

interface NormW {
  weight: Tensor;
  bias: Tensor;
}

/** A VAE decoder ResNet block: GN → swish → 3×3 conv, twice, plus the (1×1 when channels change) shortcut. */
export interface ResBlockWeights {
  norm1: NormW;
  conv1: ConvW;
  norm2: NormW;
  conv2: ConvW;
  shortcut: ConvW | null;
}

export class FeatureOps {
  /** Largest chunk in bytes; defaults to the device's binding limit (tests lower it to force splitting). */
  readonly maxChunkBytes: number;
  private readonly weightSlices = new Map<Tensor, Map<string, Tensor>>();

  constructor(
    readonly gpu: Gpu,
    maxChunkBytes?: number,
    private readonly groups = 32,
  ) {
    this.maxChunkBytes = Math.min(maxChunkBytes ?? Infinity, gpu.limits.maxStorageBufferBindingSize);
  }

  /** Channel ranges for a C×H×W map: whole GroupNorm groups per chunk, each chunk within the byte cap. */
  plan(C: number, H: number, W: number): Array<[number, number]> {
    const perChannel = H * W * 4;
    const unit = C % this.groups === 0 ? C / this.groups : 1;
    const fit = Math.floor(this.maxChunkBytes / perChannel);
    // Prefer chunk starts on multiples of 8 channels, so per-channel vectors (bias, norm weights) can be
    // bound as views at 32-byte-aligned offsets.
    const step = unit * (8 / gcd(unit, 8));
    const size = fit >= step ? Math.floor(fit / step) * step : Math.floor(fit / unit) * unit;
    if (size === 0) {
      throw new LimitError(`VAE feature map ${C}×${H}×${W}: one channel group`, 'maxStorageBufferBindingSize', unit * perChannel, this.maxChunkBytes);
    }
    const out: Array<[number, number]> = [];
    for (let c = 0; c < C; c += size) out.push([c, Math.min(size, C - c)]);
    return out;
  }

  /** Wraps a [1, C, H, W] tensor, splitting it when it is over the cap. */
  wrap(t: Tensor): FeatureMap {
    const [, C, H, W] = t.shape;
    const plan = this.plan(C, H, W);
    if (plan.length === 1) return { C, H, W, chunks: [{ c0: 0, t }] };
    const flat = t.reshape([C, H * W]);
    const chunks = plan.map(([c0, n]) => {
      const piece = this.gpu.empty([1, n, H, W], 'f32', 'vae-chunk');
      this.gpu.copy(flat.rows(c0, n), piece.reshape([n, H * W]));
      return { c0, t: piece };
    });
    return { C, H, W, chunks };
  }

  /** 3×3 (padding 1) or 1×1 (padding 0) convolution, stride 1. */
  conv(x: FeatureMap, w: ConvW, padding: number): FeatureMap {
    const [Cout, Cin] = w.weight.shape;
    if (Cin !== x.C) throw new LimitError(`conv input channels`, 'Cin', x.C, Cin); // unreachable after fromWeights checks
    const { H, W } = x;
    const chunks: Chunk[] = [];
    for (const [o0, on] of this.plan(Cout, H, W)) {
      let acc: Tensor | null = null;
      for (const inChunk of x.chunks) {
        const ws = this.weightSlice(w.weight, o0, on, inChunk.c0, inChunk.t.shape[1]);
        const bias = acc === null && w.bias ? (on === Cout ? w.bias : this.slice(w.bias, o0, on)) : null;
        const y = conv2d(this.gpu, inChunk.t, ws, bias, { padding });
        if (acc === null) acc = y;
        else {
          gatedResidual(this.gpu, acc, y, null); // acc += y in place (a separate out would alias acc)
          y.dispose();
        }
      }
      chunks.push({ c0: o0, t: acc! });
    }
    return { C: Cout, H, W, chunks };
  }

  groupNormSwish(x: FeatureMap, n: NormW, groups: number, eps: number): FeatureMap {
    const perGroup = x.C / groups;
    return {
      ...x,
      chunks: x.chunks.map(({ c0, t }) => {
        const count = t.shape[1];
        const whole = count === x.C;
        return {
          c0,
          t: groupNorm(this.gpu, t, {
            groups: whole ? groups : count / perGroup,
            weight: whole ? n.weight : n.weight.rows(c0, count),
            bias: whole ? n.bias : n.bias.rows(c0, count),
            eps,
            swish: true,
          }),
        };
      }),
    };
  }

  upsampleNearest2x(x: FeatureMap): FeatureMap {
    const H = 2 * x.H;
    const W = 2 * x.W;
    const chunks: Chunk[] = [];
    for (const [c0, n] of this.plan(x.C, H, W)) {
      // The finer plan need not nest in the coarser one: fill the output chunk from every source chunk
      // that overlaps it, each resized straight into its channel rows of the output.
      const out = this.gpu.empty([1, n, H, W], 'f32', 'vae-upsample');
      const outRows = out.reshape([n, H * W]);
      for (const src of x.chunks) {
        const sn = src.t.shape[1];
        const a = Math.max(c0, src.c0);
        const b = Math.min(c0 + n, src.c0 + sn);
        if (a >= b) continue;
        const view = a === src.c0 && b === src.c0 + sn ? src.t : src.t.reshape([sn, x.H * x.W]).rows(a - src.c0, b - a).reshape([1, b - a, x.H, x.W]);
        const dst = b - a === n ? out : outRows.rows(a - c0, b - a).reshape([1, b - a, H, W]);
        resize(this.gpu, view, H, W, 'nearest', { out: dst });
      }
      chunks.push({ c0, t: out });
    }
    return { C: x.C, H, W, chunks };
  }

  // ---- decoder building blocks shared by the BSQ-VAE and VAR VQ-VAE decoders (each consumes its input) ----

  /** conv_in on a [1, C, h, w] latent (wrapped in chunks when it is over the cap; split copies are freed). */
  convIn(latent: Tensor, w: ConvW): FeatureMap {
    const input = this.wrap(latent);
    const h = this.conv(input, w, 1);
    if (input.chunks[0].t !== latent) this.free(input);
    return h;
  }

  resBlock(x: FeatureMap, b: ResBlockWeights, eps: number): FeatureMap {
    const n1 = this.groupNormSwish(x, b.norm1, this.groups, eps);
    const h1 = this.conv(n1, b.conv1, 1);
    this.free(n1);
    const n2 = this.groupNormSwish(h1, b.norm2, this.groups, eps);
    this.free(h1);
    const h2 = this.conv(n2, b.conv2, 1);
    this.free(n2);
    const skip = b.shortcut ? this.conv(x, b.shortcut, 0) : x;
    const out = this.addInto(h2, skip);
    if (skip !== x) this.free(skip);
    this.free(x);
    return out;
  }

  /** Nearest ×2 then a 3×3 conv. */
  upsampleConv(x: FeatureMap, w: ConvW): FeatureMap {
    const big = this.upsampleNearest2x(x);
    this.free(x);
    const out = this.conv(big, w, 1);
    this.free(big);
    return out;
  }

  /** norm_out → swish → conv_out → clamp to [−1, 1], as one tensor. */
  outputHead(x: FeatureMap, norm: NormW, w: ConvW, eps: number): Tensor {
    const n = this.groupNormSwish(x, norm, this.groups, eps);
    this.free(x);
    const out = this.conv(n, w, 1);
    this.free(n);
    return this.clampUnitToTensor(out);
  }

  /** Decodes a batch [B, C, h, w] one image at a time into [B, 3, stride·h, stride·w]. */
  decodeBatch(latent: Tensor, stride: number, decodeOne: (one: Tensor) => Tensor, label: string): Tensor {
    const [B, C, h, w] = latent.shape;
    const image = this.gpu.empty([B, 3, stride * h, stride * w], 'f32', label);
    for (let b = 0; b < B; b++) {
      const one = decodeOne(latent.reshape([B, C * h * w]).rows(b, 1).reshape([1, C, h, w]));
      this.gpu.copy(one, image.reshape([B, 3 * stride * stride * h * w]).rows(b, 1).reshape(one.shape));
      one.dispose();
    }
    return image;
  }

  /** a += b chunk by chunk (same plan, since same C, H, W). Returns a. */
  addInto(a: FeatureMap, b: FeatureMap): FeatureMap {
    a.chunks.forEach((c, i) => gatedResidual(this.gpu, c.t, b.chunks[i].t, null));
    return a;
  }

  /** Clamps to [−1, 1] and returns one [1, C, H, W] tensor (the RGB output always fits one binding). */
  clampUnitToTensor(x: FeatureMap): Tensor {
    if (x.chunks.length !== 1) throw new LimitError('VAE output', 'maxStorageBufferBindingSize', x.C * x.H * x.W * 4, this.maxChunkBytes);
    const out = unary(this.gpu, 'clamp', x.chunks[0].t, { alpha: 1 });
    this.free(x);
    return out;
  }

  /** Frees the cached weight slices. */
  dispose(): void {
    for (const slices of this.weightSlices.values()) for (const t of slices.values()) t.dispose();
    this.weightSlices.clear();
  }

  free(x: FeatureMap): void {
    for (const c of x.chunks) c.t.dispose();
  }

  /** w[o0:o0+on, c0:c0+cn] of a [Cout, Cin, k, k] weight: a view when it is the whole Cin, else a cached copy. */
  private weightSlice(w: Tensor, o0: number, on: number, c0: number, cn: number): Tensor {
    const [Cout, Cin, k] = w.shape;
    if (cn === Cin) return on === Cout ? w : this.slice(w, o0, on);
    return this.cached(w, `${o0}:${on}:${c0}:${cn}`, () =>
      copyColumns(this.gpu, w.reshape([Cout, Cin * k * k]).rows(o0, on), c0 * k * k, cn * k * k).as([on, cn, k, k]),
    );
  }

  /** Rows [r0, r0+n) of a weight or bias: a view when its offset can be bound, else a cached aligned copy. */
  private slice(t: Tensor, r0: number, n: number): Tensor {
    const view = t.rows(r0, n);
    if (view.byteOffset % this.gpu.limits.minStorageBufferOffsetAlignment === 0) return view;
    const cols = t.numel / t.shape[0];
    return this.cached(t, `rows:${r0}:${n}`, () => copyColumns(this.gpu, t.reshape([1, t.numel]), r0 * cols, n * cols).reshape(view.shape));
  }

  private cached(t: Tensor, key: string, make: () => Tensor): Tensor {
    let cache = this.weightSlices.get(t);
    if (!cache) this.weightSlices.set(t, (cache = new Map()));
    let slice = cache.get(key);
    if (!slice) cache.set(key, (slice = make()));
    return slice;
  }
}

function gcd(a: number, b: number): number {
  return b === 0 ? a : gcd(b, a % b);
}

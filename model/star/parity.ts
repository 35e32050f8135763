// Teacher-forced parity against a fixture made by the official STAR code (fixtures/README.md, star-tiny):
// the recorded token indices replace the sampler, every recorded tensor is recomputed here and measured as
// max|engine − golden| / max|golden|. Used by `stagevar parity` and by the tests.
//
// Per scale s: x_in.s (block 0's input), hidden.s.l and cross.s.l (each block's output and its row-0
// cross-attention output), logits.s (raw head output, both rows), then the forced idx.s go through the
// VQ-VAE: fhat.s and next.s. After the last scale: latent (= f_hat) and image (the decoded [0, 1] image).
// Not recorded but derived: cfg.s, the fused CFG head (1+t)·cond − t·uncond against the same mix of the
// golden logits with the fixture's t = cfg_t[s] (what upstream hands to top-k/top-p).

import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Gpu } from '../../engine/device.js';
import type { Tensor } from '../../engine/tensor.js';
import { parityTolerance, type ParityEntry, relMaxError } from '../parity/measure.js';
import { Checkpoint } from '../weights/checkpoint.js';
import { StarModel } from './model.js';
import { VarVqvae } from './vqvae.js';

export type { ParityEntry };

export interface StarParityOptions {
  /** Pass bar per key (default parityTolerance(precision): 1e-3 on f32, where it lands near 1e-5; 1e-2 on f16). */
  tol?: number;
  /** Activation and KV cache dtypes of the replay (default f32, the reference path). */
  activations?: 'f32' | 'f16';
  cacheDtype?: 'f32' | 'f16';
  /** Called as each key is measured. */
  onEntry?: (entry: ParityEntry) => void;
  /** Largest VQ-VAE decoder feature-map chunk (tests lower it to exercise the split path). */
  maxChunkBytes?: number;
}

interface FixtureConfig {
  patch_nums: number[];
  batch?: number;
  /** CFG weight per scale. */
  cfg_t?: number[];
}


export async function runStarParity(gpu: Gpu, dir: string, options: StarParityOptions = {}): Promise<ParityEntry[]> {
  const tol = options.tol ?? parityTolerance(options);
  const config = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8')) as FixtureConfig;
  const patchNums = config.patch_nums;
  // The model first: it refuses a bad precision option before opening anything.
  const model = await StarModel.load(gpu, join(dir, 'model.safetensors'), {
    ...(options.activations ? { activations: options.activations } : {}),
    ...(options.cacheDtype ? { cacheDtype: options.cacheDtype } : {}),
  });
  let vq: VarVqvae;
  let golden: Checkpoint;
  try {
    vq = await VarVqvae.load(gpu, join(dir, 'vae.safetensors'), { maxChunkBytes: options.maxChunkBytes });
  } catch (err) {
    model.dispose();
    throw err;
  }
  try {
    golden = await Checkpoint.open(join(dir, 'golden.safetensors'));
  } catch (err) {
    model.dispose();
    vq.dispose();
    throw err;
  }
  const live: Tensor[] = [];
  const keep = <T extends Tensor>(t: T): T => (live.push(t), t);
  const entries: ParityEntry[] = [];
  const measure = async (key: string, got: Tensor | Float32Array, expected?: Float32Array) => {
    if (!expected && !golden.has(key)) return; // fixtures may record fewer keys; measure what is there
    const want = expected ?? (await golden.getTensorF32(key));
    const data = got instanceof Float32Array ? got : await got.readF32();
    const entry = { key, error: relMaxError(data, want), tol };
    entries.push(entry);
    options.onEntry?.(entry);
  };
  const int32 = async (key: string) => {
    const bytes = await golden.readTensorBytes(key);
    return new Int32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
  };
  const upload = async (key: string) => {
    const info = golden.info(key);
    return keep(gpu.upload(await golden.getTensorF32(key), info.shape, 'f32', key));
  };

  try {
    const hidden = await upload('text.hidden');
    const pooled = await upload('text.pooled');
    const mask = await int32('text.mask');
    const batch = config.batch ?? hidden.shape[0] / 2;
    const gen = model.begin({ text: { hidden, mask, pooled }, patchNums, batch });
    const P = patchNums[patchNums.length - 1];
    const fhat = keep(vq.newFhat(batch, P));
    let next: Tensor | null = null;
    try {
      for (let s = 0; s < patchNums.length; s++) {
        const pn = patchNums[s];
        const x = model.scaleInput(gen, s, next, gen.allRows());
        next?.dispose();
        await measure(`x_in.${s}`, x);
        const layers: Tensor[] = [];
        const crosses: Tensor[] = [];
        const copyOf = (t: Tensor) => {
          const c = gpu.empty(t.shape, 'f32', 'parity-copy');
          gpu.copy(t, c);
          return c;
        };
        const out = model.forward(x, gen, gen.step(s), {
          onLayer: (_, t) => layers.push(copyOf(t)),
          onCross: (_, t) => crosses.push(copyOf(t)),
        });
        x.dispose();
        const logits = model.head(out);
        await measure(`logits.${s}`, logits);
        logits.dispose();
        const t = config.cfg_t?.[s];
        if (t !== undefined && golden.has(`logits.${s}`)) {
          const raw = await golden.getTensorF32(`logits.${s}`);
          const half = raw.length / 2;
          const mix = Float32Array.from(raw.subarray(0, half), (c, i) => (1 + t) * c - t * raw[half + i]);
          const guided = model.guidedHead(out, t);
          await measure(`cfg.${s}`, guided, mix);
          guided.dispose();
        }
        out.dispose();
        for (let l = 0; l < layers.length; l++) {
          await measure(`hidden.${s}.${l}`, layers[l]);
          await measure(`cross.${s}.${l}`, crosses[l]);
        }
        for (const t of [...layers, ...crosses]) t.dispose();

        const idx = gpu.upload(await int32(`idx.${s}`), [batch * pn * pn], 'i32', `idx.${s}`);
        const h = vq.codes(idx, batch, pn);
        idx.dispose();
        next = vq.addScale(fhat, s, patchNums, h);
        h.dispose();
        await measure(`fhat.${s}`, fhat);
        if (next) await measure(`next.${s}`, next);
      }
      await measure('latent', fhat);
      const image = vq.decode(fhat);
      await measure('image', image);
      image.dispose();
    } finally {
      gen.dispose();
    }
    return entries;
  } finally {
    for (const t of live) t.dispose();
    model.dispose();
    vq.dispose();
    await golden.close();
  }
}

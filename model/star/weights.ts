// Loads a STAR transformer state dict onto the GPU, after model/arch.ts has said what it is (so a VQ-VAE,
// an Infinity checkpoint or a CLIP file fails with "this is X, not a STAR transformer"). Matrices keep
// their stored dtype unless asked otherwise (linear reads f32/f16/bf16 weights); vectors and tables the
// elementwise kernels read are f32. Unused tensors (class_emb, the optional sampler head) are not loaded.

import type { Gpu } from '../../engine/device.js';
import type { Tensor } from '../../engine/tensor.js';
import { copyRows } from '../../kernels/layout.js';
import { expectArchitecture, type StarArch } from '../arch.js';
import { loadTensorToGpu, readTensorF32, type GpuFloat, type TensorSource } from '../weights/gpu_load.js';
import { starConfig, type StarConfig } from './config.js';

export interface StarLayerWeights {
  // Self-attention: mat_qkv split by rows into q, k, v; k has no bias of its own (zero_k_bias if stored).
  wq: Tensor;
  wk: Tensor;
  wv: Tensor;
  qBias: Tensor;
  kBias: Tensor | null;
  vBias: Tensor;
  /** exp(min(scale_mul_1H11, ln 100)) per head, multiplied into the normalised q. */
  selfScale: Tensor;
  projW: Tensor;
  projB: Tensor;
  // Cross-attention: q from the image stream, k and v (mat_kv split by rows) from the text states.
  crossQW: Tensor;
  crossQBias: Tensor;
  crossKW: Tensor;
  crossVW: Tensor;
  crossKBias: Tensor | null;
  crossVBias: Tensor;
  crossScale: Tensor;
  crossProjW: Tensor;
  crossProjB: Tensor;
  fc1W: Tensor;
  fc1B: Tensor;
  fc2W: Tensor;
  fc2B: Tensor;
}

export interface StarWeights {
  /** pos_start [C]: added to the start token only. */
  posStart: Tensor;
  wordEmbedW: Tensor;
  wordEmbedB: Tensor;
  /** lvl_embed rows, one [C] tensor per scale. */
  levels: Tensor[];
  encoderProjW: Tensor;
  encoderProjB: Tensor;
  headW: Tensor;
  headB: Tensor;
  layers: StarLayerWeights[];
  /** Every tensor allocated here (for dispose). */
  owned: Tensor[];
}

export type StarWeightSource = TensorSource & { names(): string[] };

export interface StarLoadOptions {
  /** GPU dtype of the matrices (default: as stored). Vectors are always f32. */
  matrixDtype?: GpuFloat;
  /** Names the file in errors. */
  file?: string;
}

const LN_100 = Math.fround(Math.log(100));

/** Detects (and insists on) a STAR transformer among the tensors of a source. */
export function starArchitecture(source: StarWeightSource, file?: string): StarArch {
  const tensors = source.names().map((name) => ({ name, shape: source.info(name).shape }));
  return expectArchitecture(tensors, 'star', file !== undefined ? { file } : {});
}

/** exp(min(s, ln 100)) in f32, as upstream's `scale_mul_1H11.clamp_max(max_scale_mul).exp()`. */
export function attentionScales(scaleMul: Float32Array): Float32Array {
  return Float32Array.from(scaleMul, (s) => Math.exp(Math.min(s, LN_100)));
}

export async function loadStarWeights(
  gpu: Gpu,
  source: StarWeightSource,
  options: StarLoadOptions = {},
): Promise<{ arch: StarArch; config: StarConfig; weights: StarWeights }> {
  const arch = starArchitecture(source, options.file);
  const config = starConfig(arch);
  const p = arch.prefix ?? '';
  const { width: C, heads: H, textWidth: Dt, pooledWidth: Dp, codeDim, ffnWidth: F, vocab: V } = config;
  const owned: Tensor[] = [];
  const fail = (err: unknown): never => {
    for (const t of owned) t.dispose();
    throw err;
  };
  const load = async (name: string, shape: number[], dtype: GpuFloat): Promise<Tensor> => {
    const t = await loadTensorToGpu(gpu, source, p + name, { dtype, expectShape: shape, label: name });
    owned.push(t);
    return t;
  };
  const matrix = (name: string, shape: number[]) => load(name, shape, options.matrixDtype ?? 'keep');
  const vector = (name: string, shape: number[]) => load(name, shape, 'f32');
  const optionalVector = async (name: string, n: number) => (source.has(p + name) ? vector(name, [n]) : null);
  const scales = async (name: string) => {
    const s = attentionScales(await readTensorF32(source, p + name, [1, H, 1, 1]));
    const t = gpu.upload(s, [H], 'f32', name, true);
    owned.push(t);
    return t;
  };
  // Row blocks of a fused matrix: views where the offset binds, else exact copies.
  const rowBlock = (w: Tensor, start: number, count: number): Tensor => {
    const view = w.rows(start, count);
    if (view.byteOffset % gpu.limits.minStorageBufferOffsetAlignment === 0) return view;
    const copy = gpu.persistent(view.shape, w.dtype, `${w.label}[${start}:${start + count}]`);
    copyRows(gpu, w, copy, { srcRow: start, rows: count });
    owned.push(copy);
    return copy;
  };

  try {
    const posStart = (await vector('pos_start', [1, 1, C])).reshape([C]);
    const lvl = await vector('lvl_embed.weight', [config.levels, C]);
    const levels = Array.from({ length: config.levels }, (_, i) => {
      const t = gpu.persistent([C], 'f32', `lvl_embed[${i}]`);
      copyRows(gpu, lvl, t.reshape([1, C]), { srcRow: i, rows: 1 });
      owned.push(t);
      return t;
    });
    const weights: StarWeights = {
      posStart,
      wordEmbedW: await vector('word_embed.weight', [C, codeDim]),
      wordEmbedB: await vector('word_embed.bias', [C]),
      levels,
      encoderProjW: await matrix('encoder_proj.weight', [C, Dp]),
      encoderProjB: await vector('encoder_proj.bias', [C]),
      headW: await matrix('head_logits.weight', [V, C]),
      headB: await vector('head_logits.bias', [V]),
      layers: [],
      owned,
    };
    for (let l = 0; l < config.depth; l++) {
      const b = `blocks.${l}.`;
      const qkv = await matrix(`${b}attn.mat_qkv.weight`, [3 * C, C]);
      const kv = await matrix(`${b}cross_attn.mat_kv.weight`, [2 * C, Dt]);
      weights.layers.push({
        wq: rowBlock(qkv, 0, C),
        wk: rowBlock(qkv, C, C),
        wv: rowBlock(qkv, 2 * C, C),
        qBias: await vector(`${b}attn.q_bias`, [C]),
        kBias: await optionalVector(`${b}attn.zero_k_bias`, C),
        vBias: await vector(`${b}attn.v_bias`, [C]),
        selfScale: await scales(`${b}attn.scale_mul_1H11`),
        projW: await matrix(`${b}attn.proj.weight`, [C, C]),
        projB: await vector(`${b}attn.proj.bias`, [C]),
        crossQW: await matrix(`${b}cross_attn.mat_q.weight`, [C, C]),
        crossQBias: await vector(`${b}cross_attn.q_bias`, [C]),
        crossKW: rowBlock(kv, 0, C),
        crossVW: rowBlock(kv, C, C),
        crossKBias: await optionalVector(`${b}cross_attn.zero_k_bias`, C),
        crossVBias: await vector(`${b}cross_attn.v_bias`, [C]),
        crossScale: await scales(`${b}cross_attn.scale_mul_1H11`),
        crossProjW: await matrix(`${b}cross_attn.proj.weight`, [C, C]),
        crossProjB: await vector(`${b}cross_attn.proj.bias`, [C]),
        fc1W: await matrix(`${b}ffn.fc1.weight`, [F, C]),
        fc1B: await vector(`${b}ffn.fc1.bias`, [F]),
        fc2W: await matrix(`${b}ffn.fc2.weight`, [C, F]),
        fc2B: await vector(`${b}ffn.fc2.bias`, [C]),
      });
    }
    return { arch, config, weights };
  } catch (err) {
    return fail(err);
  }
}

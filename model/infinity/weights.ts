// Infinity's tensors on the GPU. Linear weights keep their stored dtype (bf16 in the fixtures and f32 in
// the released .pth; matmul reads f16/bf16 through packed loads) or are converted on request; everything
// the small kernels read (biases, norms, embeddings, AdaLN tables) is f32. Fused weights are split by
// row views, never copied: mat_qkv → q|k|v, mat_kv → k|v, shared_ada_lin → its six C-row blocks.

import type { Gpu } from '../../engine/device.js';
import type { Tensor } from '../../engine/tensor.js';
import { checkTensorShape, loadTensorToGpu, readTensorF32, type GpuFloat, type TensorSource } from '../weights/gpu_load.js';
import { WeightsError, formatShape } from '../weights/errors.js';
import { persistentRows } from './views.js';
import { expectedShapes, inferInfinityConfig, optionalZeroBiases, type ConfigOptions, type InfinityConfig } from './config.js';

export interface LayerWeights {
  /** ada_gss as six f32 [C] vectors: γ1, γ2, s1, s2, b1, b2. */
  adaGss: Tensor[];
  /** exp(min(scale_mul_1H11, ln 100)) per head, f32 [H]: the cosine-attention logit scale on q. */
  qScale: Tensor;
  wq: Tensor;
  wk: Tensor;
  wv: Tensor;
  qBias: Tensor;
  /** The `zero_k_bias` buffer when the checkpoint has one (all zeros upstream), else null. */
  kBias: Tensor | null;
  vBias: Tensor;
  projW: Tensor;
  projB: Tensor;
  caNormW: Tensor;
  caNormB: Tensor;
  caQW: Tensor;
  caQB: Tensor;
  caKW: Tensor;
  caVW: Tensor;
  caKBias: Tensor | null;
  caVBias: Tensor;
  caProjW: Tensor;
  caProjB: Tensor;
  fc1W: Tensor;
  fc1B: Tensor;
  fc2W: Tensor;
  fc2B: Tensor;
}

export interface InfinityWeights {
  /** Learned unconditional text features [textMaxLen, textWidth], before text_norm. */
  cfgUncond: Tensor;
  textNormW: Tensor;
  /** The pooling query `mat_q` [Hp·dp] on the host: it is repeated per sequence at conditioning time. */
  poolQuery: Float32Array;
  poolKW: Tensor;
  poolVW: Tensor;
  poolKBias: Tensor | null;
  poolVBias: Tensor;
  poolProjW: Tensor;
  poolProjB: Tensor;
  textCa0W: Tensor;
  textCa0B: Tensor;
  textCa2W: Tensor;
  textCa2B: Tensor;
  posStart: Tensor;
  lvlEmbed: Tensor;
  wordEmbedW: Tensor;
  wordEmbedB: Tensor;
  /** shared_ada_lin.1 split into its six [C, C] row blocks (γ1, γ2, s1, s2, b1, b2) and [C] biases. */
  sharedAda: Array<{ w: Tensor; b: Tensor }>;
  /** head_nm.ada_lin.1 split: scale rows, then shift rows. */
  headAdaScale: { w: Tensor; b: Tensor };
  headAdaShift: { w: Tensor; b: Tensor };
  headW: Tensor;
  headB: Tensor;
  layers: LayerWeights[];
  /** Every tensor allocated (views excluded), for dispose. */
  owned: Tensor[];
}

export interface LoadOptions extends ConfigOptions {
  /** GPU dtype of linear weights: as stored (default) or converted. */
  linearDtype?: GpuFloat;
}

/** Shapes of every tensor of a source (for config inference). */
export function shapeTable(source: TensorSource & { names(): string[] }): Map<string, number[]> {
  return new Map(source.names().map((n) => [n, source.info(n).shape]));
}

/** Upstream flash-attention builds store scale_mul as (1, 1, H, 1); both carry H values. */
function checkScaleMul(source: TensorSource, name: string, heads: number): void {
  if (!source.has(name)) return void checkTensorShape(source, name, [1, heads, 1, 1]);
  const s = source.info(name).shape;
  const ok = s.length === 4 && s.reduce((a, b) => a * b, 1) === heads && s.filter((d) => d !== 1).length <= 1;
  if (!ok) {
    throw new WeightsError(`shape mismatch: expected ${formatShape([1, heads, 1, 1])}, file has ${formatShape(s)}`, {
      code: 'shape-mismatch',
      tensor: name,
    });
  }
}

export async function loadInfinityWeights(
  gpu: Gpu,
  source: TensorSource & { names(): string[] },
  options: LoadOptions = {},
): Promise<{ config: InfinityConfig; weights: InfinityWeights }> {
  const config = inferInfinityConfig(shapeTable(source), options);
  const shapes = expectedShapes(config);
  const zeroBiases = optionalZeroBiases(config);
  // Validate everything before allocating anything: a bad file fails fast and leaks nothing.
  for (const [name, shape] of shapes) {
    if (name.endsWith('sa.scale_mul_1H11')) checkScaleMul(source, name, config.heads);
    else checkTensorShape(source, name, shape);
  }
  for (const [name, shape] of zeroBiases) if (source.has(name)) checkTensorShape(source, name, shape);

  const owned: Tensor[] = [];
  const linearDtype = options.linearDtype ?? 'keep';
  const linear = async (name: string) => {
    const t = await loadTensorToGpu(gpu, source, name, { dtype: linearDtype });
    owned.push(t);
    return t;
  };
  const small = async (name: string) => {
    const t = await loadTensorToGpu(gpu, source, name, { dtype: 'f32' });
    owned.push(t);
    return t;
  };
  const vector = async (name: string) => (await small(name)).reshape([-1]);
  const optional = async (name: string) => (source.has(name) ? vector(name) : null);
  const C = config.width;
  const part = (t: Tensor, block: number, rows: number) => persistentRows(gpu, t, block * rows, rows, owned);
  /** A small tensor as n equal f32 vectors. */
  const blocks = async (name: string, n: number) => {
    const flat = await vector(name);
    const len = flat.numel / n;
    return Array.from({ length: n }, (_, k) => part(flat, k, len));
  };

  try {
    return { config, weights: await loadAll() };
  } catch (err) {
    gpu.flush();
    for (const t of owned) t.dispose(); // a read failure half-way must not leak what was uploaded
    throw err;
  }

  async function loadAll(): Promise<InfinityWeights> {
    const layers: LayerWeights[] = [];
    for (let l = 0; l < config.depth; l++) {
      const p = config.layerPrefix(l);
      const scaleMul = await readTensorF32(source, `${p}sa.scale_mul_1H11`);
      const maxScale = Math.log(100);
      const qScale = gpu.upload(Float32Array.from(scaleMul, (s) => Math.exp(Math.min(s, maxScale))), [config.heads], 'f32', `${p}q_scale`, true);
      owned.push(qScale);
      const qkv = await linear(`${p}sa.mat_qkv.weight`);
      const caKv = await linear(`${p}ca.mat_kv.weight`);
      layers.push({
        adaGss: await blocks(`${p}ada_gss`, 6),
        qScale,
        wq: part(qkv, 0, C),
        wk: part(qkv, 1, C),
        wv: part(qkv, 2, C),
        qBias: await vector(`${p}sa.q_bias`),
        kBias: await optional(`${p}sa.zero_k_bias`),
        vBias: await vector(`${p}sa.v_bias`),
        projW: await linear(`${p}sa.proj.weight`),
        projB: await vector(`${p}sa.proj.bias`),
        caNormW: await vector(`${p}ca_norm.weight`),
        caNormB: await vector(`${p}ca_norm.bias`),
        caQW: await linear(`${p}ca.mat_q.weight`),
        caQB: await vector(`${p}ca.mat_q.bias`),
        caKW: part(caKv, 0, C),
        caVW: part(caKv, 1, C),
        caKBias: await optional(`${p}ca.zero_k_bias`),
        caVBias: await vector(`${p}ca.v_bias`),
        caProjW: await linear(`${p}ca.proj.weight`),
        caProjB: await vector(`${p}ca.proj.bias`),
        fc1W: await linear(`${p}ffn.fc1.weight`),
        fc1B: await vector(`${p}ffn.fc1.bias`),
        fc2W: await linear(`${p}ffn.fc2.weight`),
        fc2B: await vector(`${p}ffn.fc2.bias`),
      });
    }

    const poolKv = await linear('text_proj_for_sos.ca.mat_kv.weight');
    const sharedAdaAll = await linear('shared_ada_lin.1.weight');
    const sharedAdaW = Array.from({ length: 6 }, (_, k) => part(sharedAdaAll, k, C));
    const sharedAdaB = await blocks('shared_ada_lin.1.bias', 6);
    const headAdaAll = await linear('head_nm.ada_lin.1.weight');
    const headAdaW = [part(headAdaAll, 0, C), part(headAdaAll, 1, C)];
    const headAdaB = await blocks('head_nm.ada_lin.1.bias', 2);
    const weights: InfinityWeights = {
      cfgUncond: await small('cfg_uncond'),
      textNormW: await vector('text_norm.weight'),
      poolQuery: await readTensorF32(source, 'text_proj_for_sos.ca.mat_q'),
      poolKW: part(poolKv, 0, C),
      poolVW: part(poolKv, 1, C),
      poolKBias: await optional('text_proj_for_sos.ca.zero_k_bias'),
      poolVBias: await vector('text_proj_for_sos.ca.v_bias'),
      poolProjW: await linear('text_proj_for_sos.ca.proj.weight'),
      poolProjB: await vector('text_proj_for_sos.ca.proj.bias'),
      textCa0W: await linear('text_proj_for_ca.0.weight'),
      textCa0B: await vector('text_proj_for_ca.0.bias'),
      textCa2W: await linear('text_proj_for_ca.2.weight'),
      textCa2B: await vector('text_proj_for_ca.2.bias'),
      posStart: await vector('pos_start'),
      lvlEmbed: await small('lvl_embed.weight'),
      wordEmbedW: await linear('word_embed.weight'),
      wordEmbedB: await vector('word_embed.bias'),
      sharedAda: sharedAdaW.map((w, k) => ({ w, b: sharedAdaB[k] })),
      headAdaScale: { w: headAdaW[0], b: headAdaB[0] },
      headAdaShift: { w: headAdaW[1], b: headAdaB[1] },
      headW: await linear('head.weight'),
      headB: await vector('head.bias'),
      layers,
      owned,
    };
    return weights;
  }
}

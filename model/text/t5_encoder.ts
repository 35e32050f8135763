// The T5 encoder (Infinity's Flan-T5-XL text encoder; HF `T5EncoderModel`), f32 activations:
//   x = shared[ids]                                   no √d scaling
//   per block: x += o(attn(rms(x)))                   q, k, v, o bias-free, NO 1/√d_kv score scaling,
//                                                     + relative position bias of block 0 (every block) + pad mask
//              x += wo(act(wi_0·rms(x)) ⊙ wi_1·rms(x)) gated FFN (gelu_new = tanh GELU for flan-t5)
//   out = final_layer_norm(x)                         RMS norms: no mean, no bias
//
// Layout: linears and norms run on the compact rows of all prompts (Σ lens rows, no padding work). Only the
// attention needs a rectangle: q, k and v are scattered into zeroed [B, Lmax] buffers, attended with the key
// padding mask and one [H, Lmax, Lmax] bias (it depends on k − q only, so one table fits every left-aligned
// prompt), and gathered back. The compact result is what Infinity consumes (`kv_compact` + `lens`).
// Because pad keys are masked and the bias is translation-invariant, a prompt's rows equal an unpadded run.

import { join } from 'node:path';
import type { Gpu } from '../../engine/device.js';
import type { Tensor } from '../../engine/tensor.js';
import { attentionMasked } from '../../kernels/attention.js';
import { add, mul } from '../../kernels/elementwise.js';
import { gatherRows, scatterRows } from '../../kernels/layout.js';
import { linear } from '../../kernels/matmul.js';
import { rmsNorm } from '../../kernels/norms.js';
import { WeightsError } from '../weights/errors.js';
import type { GpuFloat } from '../weights/gpu_load.js';
import { type JsonConfig, WeightLoader, configNumber, configString, countLayers, openHfWeights, readConfig, shapeOf } from './hf_weights.js';

export interface T5Config {
  layers: number;
  /** d_model. */
  width: number;
  heads: number;
  headDim: number;
  /** heads · d_kv (need not equal d_model). */
  inner: number;
  ffn: number;
  gated: boolean;
  activation: 'gelu_tanh' | 'gelu_erf';
  eps: number;
  buckets: number;
  maxDistance: number;
  vocab: number;
  padId: number;
}

interface T5Block {
  ln0: Tensor;
  q: Tensor;
  k: Tensor;
  v: Tensor;
  o: Tensor;
  ln1: Tensor;
  /** wi_0 (gated) or wi (plain). */
  wi0: Tensor;
  wi1: Tensor | null;
  wo: Tensor;
}

export interface T5LoadOptions {
  /** GPU dtype of the matrices and the embedding table (default: as stored). Norms stay f32. */
  weights?: GpuFloat;
}

export interface T5EncodeOptions {
  /**
   * true (default): each prompt is its own sequence (pad keys masked), output compact [Σ lens, C].
   * false: prompts are right-padded with the pad id to the longest and the pads are attended like tokens,
   * as HF does without an attention mask; output [B·Lmax, C] and every lens entry is Lmax.
   */
  mask?: boolean;
  /** Also return the residual stream after the embedding and after each block (before the final norm). */
  collectLayers?: boolean;
}

export interface T5Output {
  /** [Σ lens, C] f32: prompt i's rows follow prompt i−1's (Infinity's kv_compact). */
  hidden: Tensor;
  lens: number[];
  /** With collectLayers: [embedding, block 0, …, block n−1], each [Σ lens, C] like `hidden`. */
  layers?: Tensor[];
}

/** HF `_relative_position_bucket` for rel = key − query, reproducing its float32 arithmetic. */
export function t5RelativeBucket(rel: number, numBuckets: number, maxDistance: number, bidirectional = true): number {
  let buckets = numBuckets;
  let bucket = 0;
  let n: number;
  if (bidirectional) {
    buckets = Math.floor(buckets / 2);
    if (rel > 0) bucket += buckets;
    n = Math.abs(rel);
  } else {
    n = Math.max(-rel, 0);
  }
  const maxExact = Math.floor(buckets / 2);
  if (n < maxExact) return bucket + n;
  // torch computes log(n / maxExact) / log(maxDistance / maxExact) · (buckets − maxExact) on f32 tensors and
  // truncates; fround at each step keeps the rare exact-integer cases (n = 16, 32, 64) on the same side.
  const f = Math.fround;
  const ratio = f(Math.log(f(n / maxExact)));
  const scaled = f(f(ratio / f(Math.log(maxDistance / maxExact))) * (buckets - maxExact));
  return bucket + Math.min(maxExact + Math.trunc(scaled), buckets - 1);
}

/** bias[h, q, k] = table[bucket(k − q), h] for L tokens; table is relative_attention_bias.weight [buckets, H]. */
export function t5PositionBias(table: Float32Array, heads: number, numBuckets: number, maxDistance: number, L: number): Float32Array {
  const byRel = new Int32Array(2 * L - 1);
  for (let r = -(L - 1); r <= L - 1; r++) byRel[r + L - 1] = t5RelativeBucket(r, numBuckets, maxDistance);
  const out = new Float32Array(heads * L * L);
  for (let h = 0; h < heads; h++) {
    for (let q = 0; q < L; q++) {
      const row = (h * L + q) * L;
      for (let k = 0; k < L; k++) out[row + k] = table[byRel[k - q + L - 1] * heads + h];
    }
  }
  return out;
}

/** HF T5Config: `feed_forward_proj` "gated-gelu" means gated + gelu_new; a stored `dense_act_fn` wins (HF sets it last). */
function ffnKind(config: JsonConfig, file: string): { gated: boolean | undefined; activation: 'gelu_tanh' | 'gelu_erf' } {
  const proj = configString(config, 'feed_forward_proj') ?? 'relu';
  const parts = proj.split('-');
  let act = proj === 'gated-gelu' ? 'gelu_new' : parts[parts.length - 1];
  act = configString(config, 'dense_act_fn') ?? act;
  const gatedFlag = config.is_gated_act;
  const gated = typeof gatedFlag === 'boolean' ? gatedFlag : parts.length > 1 ? parts[0] === 'gated' : undefined;
  const tanh = ['gelu_new', 'gelu_pytorch_tanh', 'gelu_fast', 'gelu_accurate'];
  if (tanh.includes(act)) return { gated, activation: 'gelu_tanh' };
  if (act === 'gelu') return { gated, activation: 'gelu_erf' };
  throw new WeightsError(`unsupported T5 feed-forward activation "${act}" (feed_forward_proj "${proj}"); supported: gelu, ${tanh.join(', ')}`, {
    code: 'unsupported',
    file,
  });
}

export class T5Encoder {
  private biasCache: { len: number; tensor: Tensor } | null = null;

  private constructor(
    readonly gpu: Gpu,
    readonly config: T5Config,
    private readonly embed: Tensor,
    private readonly blocks: T5Block[],
    private readonly finalNorm: Tensor,
    /** relative_attention_bias.weight of block 0, [buckets, H], on the host (bias tables are built per length). */
    private readonly relTable: Float32Array,
    private readonly weights: WeightLoader,
  ) {}

  /** Loads the encoder of a HF T5 folder (config.json + model.safetensors or a sharded index). Decoder tensors are never read. */
  static async load(gpu: Gpu, dir: string, opts: T5LoadOptions = {}): Promise<T5Encoder> {
    const configPath = join(dir, 'config.json');
    const config = await readConfig(configPath);
    const ckpt = await openHfWeights(dir, ['encoder.', 'shared.']);
    try {
      const embedName = ckpt.has('shared.weight') ? 'shared.weight' : 'encoder.embed_tokens.weight';
      const [vocab, width] = shapeOf(ckpt, embedName);
      const p = (l: number) => `encoder.block.${l}.layer`;
      const layers = countLayers(ckpt, 'encoder.block.');
      if (layers === 0) throw new WeightsError('no encoder blocks (encoder.block.{i}.*)', { code: 'missing-tensor', file: ckpt.path });
      const inner = shapeOf(ckpt, `${p(0)}.0.SelfAttention.q.weight`)[0];
      const heads = configNumber(config, configPath, 'num_heads');
      if (!Number.isInteger(heads) || heads < 1 || inner % heads !== 0) {
        throw new WeightsError(`num_heads ${heads} does not divide the attention width ${inner} of ${p(0)}.0.SelfAttention.q.weight`, { code: 'bad-header', file: configPath });
      }
      const { gated: gatedConfig, activation } = ffnKind(config, configPath);
      const gated = ckpt.has(`${p(0)}.1.DenseReluDense.wi_0.weight`);
      if (gatedConfig !== undefined && gatedConfig !== gated) {
        throw new WeightsError(`config says ${gatedConfig ? 'gated' : 'plain'} FFN but the weights have ${gated ? 'wi_0/wi_1' : 'wi'}`, { code: 'bad-header', file: configPath });
      }
      const ffn = shapeOf(ckpt, `${p(0)}.1.DenseReluDense.${gated ? 'wi_0' : 'wi'}.weight`)[0];
      const relName = `${p(0)}.0.SelfAttention.relative_attention_bias.weight`;
      const buckets = shapeOf(ckpt, relName)[0];
      const cfg: T5Config = {
        layers,
        width,
        heads,
        headDim: inner / heads,
        inner,
        ffn,
        gated,
        activation,
        eps: configNumber(config, configPath, 'layer_norm_epsilon', 1e-6),
        buckets,
        maxDistance: configNumber(config, configPath, 'relative_attention_max_distance', 128),
        vocab,
        padId: configNumber(config, configPath, 'pad_token_id', 0),
      };

      // Every shape first, so a bad file fails before anything is uploaded.
      const w = new WeightLoader(gpu, ckpt, opts.weights ?? 'keep');
      type Entry = [name: string, shape: number[]];
      const names = (l: number): Record<Exclude<keyof T5Block, 'wi1'>, Entry> & { wi1: Entry | null } => ({
        ln0: [`${p(l)}.0.layer_norm.weight`, [width]],
        q: [`${p(l)}.0.SelfAttention.q.weight`, [inner, width]],
        k: [`${p(l)}.0.SelfAttention.k.weight`, [inner, width]],
        v: [`${p(l)}.0.SelfAttention.v.weight`, [inner, width]],
        o: [`${p(l)}.0.SelfAttention.o.weight`, [width, inner]],
        ln1: [`${p(l)}.1.layer_norm.weight`, [width]],
        wi0: [`${p(l)}.1.DenseReluDense.${gated ? 'wi_0' : 'wi'}.weight`, [ffn, width]],
        wi1: gated ? [`${p(l)}.1.DenseReluDense.wi_1.weight`, [ffn, width]] : null,
        wo: [`${p(l)}.1.DenseReluDense.wo.weight`, [width, ffn]],
      });
      w.check(relName, [buckets, heads]);
      w.check('encoder.final_layer_norm.weight', [width]);
      for (let l = 0; l < layers; l++) for (const e of Object.values(names(l))) if (e) w.check(e[0], e[1]);

      try {
        const relTable = await w.host(relName, [buckets, heads]);
        const embed = await w.matrix(embedName, [vocab, width]);
        const blocks: T5Block[] = [];
        for (let l = 0; l < layers; l++) {
          const n = names(l);
          blocks.push({
            ln0: await w.f32(...n.ln0),
            q: await w.matrix(...n.q),
            k: await w.matrix(...n.k),
            v: await w.matrix(...n.v),
            o: await w.matrix(...n.o),
            ln1: await w.f32(...n.ln1),
            wi0: await w.matrix(...n.wi0),
            wi1: n.wi1 ? await w.matrix(...n.wi1) : null,
            wo: await w.matrix(...n.wo),
          });
        }
        const finalNorm = await w.f32('encoder.final_layer_norm.weight', [width]);
        return new T5Encoder(gpu, cfg, embed, blocks, finalNorm, relTable, w);
      } catch (err) {
        w.disposeAll();
        throw err;
      }
    } finally {
      await ckpt.close();
    }
  }

  /** Encodes prompts given as token ids (EOS included, as the tokenizer returns them). Records GPU work; read the tensors to wait. */
  encode(idsPerPrompt: readonly (readonly number[])[], opts: T5EncodeOptions = {}): T5Output {
    const { gpu, config: c } = this;
    const mask = opts.mask ?? true;
    if (idsPerPrompt.length === 0) throw new Error('T5Encoder.encode: no prompts');
    idsPerPrompt.forEach((ids, i) => {
      if (ids.length === 0) throw new Error(`T5Encoder.encode: prompt ${i} has no tokens (the tokenizer always appends EOS)`);
      for (const id of ids) {
        if (!Number.isInteger(id) || id < 0 || id >= c.vocab) throw new Error(`T5Encoder.encode: prompt ${i} has token id ${id} outside [0, ${c.vocab})`);
      }
    });
    const lmax = Math.max(...idsPerPrompt.map((p) => p.length));
    const seqs = mask ? idsPerPrompt : idsPerPrompt.map((p) => [...p, ...new Array<number>(lmax - p.length).fill(c.padId)]);
    const lens = seqs.map((p) => p.length);
    const B = seqs.length;
    const N = lens.reduce((a, b) => a + b, 0);
    const ragged = lens.some((l) => l !== lmax);

    const ids = gpu.upload(Int32Array.from(seqs.flat()), [N], 'i32', 't5-ids');
    let x = gatherRows(gpu, this.embed, ids);
    ids.dispose();
    const layers = opts.collectLayers ? [x] : undefined;
    const bias = this.positionBias(lmax);

    // The key mask is passed even when nothing is padded: one attention variant (mask + bias) serves every
    // call, and on lavapipe each extra variant costs tens of seconds of shader compilation.
    const keyMaskHost = new Int32Array(B * lmax);
    lens.forEach((len, b) => keyMaskHost.fill(1, b * lmax, b * lmax + len));
    const keyMask = gpu.upload(keyMaskHost, [B, lmax], 'i32', 't5-key-mask');
    // Ragged batches: where each compact row lives in the [B·Lmax] rectangle, and the rectangle buffers,
    // zeroed once (pad rows stay zero: masked keys get weight 0, but 0 · NaN garbage would not be 0).
    let rect: { index: Tensor; q: Tensor; k: Tensor; v: Tensor } | null = null;
    if (ragged) {
      const index = new Int32Array(N);
      let r = 0;
      lens.forEach((len, b) => {
        for (let t = 0; t < len; t++) index[r++] = b * lmax + t;
      });
      const zeros = new Float32Array(B * lmax * c.inner);
      rect = {
        index: gpu.upload(index, [N], 'i32', 't5-rect-index'),
        q: gpu.upload(zeros, [B * lmax, c.inner], 'f32', 't5-q-rect'),
        k: gpu.upload(zeros, [B * lmax, c.inner], 'f32', 't5-k-rect'),
        v: gpu.upload(zeros, [B * lmax, c.inner], 'f32', 't5-v-rect'),
      };
    }

    for (const blk of this.blocks) {
      // Self-attention sub-layer.
      let h = rmsNorm(gpu, x, { weight: blk.ln0, eps: c.eps });
      const q = linear(gpu, h, blk.q, null);
      const k = linear(gpu, h, blk.k, null);
      const v = linear(gpu, h, blk.v, null);
      h.dispose();
      let att: Tensor;
      if (rect) {
        scatterRows(gpu, q, rect.index, rect.q);
        scatterRows(gpu, k, rect.index, rect.k);
        scatterRows(gpu, v, rect.index, rect.v);
        const shape = [B, lmax, c.inner];
        const o = attentionMasked(gpu, rect.q.reshape(shape), rect.k.reshape(shape), rect.v.reshape(shape), {
          heads: c.heads,
          scale: 1,
          keyMask,
          bias,
        });
        att = gatherRows(gpu, o.reshape([B * lmax, c.inner]), rect.index);
        o.dispose();
      } else {
        // Equal lengths: the compact rows already are the rectangle.
        const shape = [B, lmax, c.inner];
        att = attentionMasked(gpu, q.reshape(shape), k.reshape(shape), v.reshape(shape), { heads: c.heads, scale: 1, keyMask, bias });
      }
      q.dispose();
      k.dispose();
      v.dispose();
      const proj = linear(gpu, att.reshape([N, c.inner]), blk.o, null);
      att.dispose();
      let next = add(gpu, x, proj);
      proj.dispose();
      if (!layers) x.dispose(); // the block input: the embedding or the previous block's output
      x = next;

      // Feed-forward sub-layer.
      h = rmsNorm(gpu, x, { weight: blk.ln1, eps: c.eps });
      let inner: Tensor;
      const a = linear(gpu, h, blk.wi0, null, { activation: c.activation });
      if (blk.wi1) {
        const u = linear(gpu, h, blk.wi1, null);
        inner = mul(gpu, a, u);
        a.dispose();
        u.dispose();
      } else inner = a;
      h.dispose();
      const f = linear(gpu, inner, blk.wo, null);
      inner.dispose();
      next = add(gpu, x, f);
      f.dispose();
      x.dispose(); // the mid-layer residual, never collected
      if (layers) layers.push(next);
      x = next;
    }
    keyMask.dispose();
    if (rect) for (const t of Object.values(rect)) t.dispose();

    const hidden = rmsNorm(gpu, x, { weight: this.finalNorm, eps: c.eps });
    if (!layers) x.dispose();
    return layers ? { hidden, lens, layers } : { hidden, lens };
  }

  /** The [H, L, L] bias for L tokens, kept for the next call of the same length (pooled, so replacing it is safe). */
  private positionBias(len: number): Tensor {
    if (this.biasCache?.len === len) return this.biasCache.tensor;
    this.biasCache?.tensor.dispose();
    const { heads, buckets, maxDistance } = this.config;
    const tensor = this.gpu.upload(t5PositionBias(this.relTable, heads, buckets, maxDistance, len), [heads, len, len], 'f32', 't5-position-bias');
    this.biasCache = { len, tensor };
    return tensor;
  }

  /** Block 0's relative_attention_bias.weight [buckets, H] (a copy). */
  get relativeBiasTable(): Float32Array {
    return this.relTable.slice();
  }

  dispose(): void {
    this.biasCache?.tensor.dispose();
    this.biasCache = null;
    this.weights.disposeAll();
  }
}

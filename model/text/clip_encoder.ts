// The CLIP text tower (STAR's SD-2 OpenCLIP-H encoder in HF `CLIPTextModel` layout), f32 activations:
//   x = token_embedding[ids] + position_embedding[0..L)
//   per layer: x += out_proj(attn(LN1(x)))     causal, + key padding mask, scale 1/√D, biases everywhere
//              x += fc2(act(fc1(LN2(x))))      act from config hidden_act: "gelu" (erf, SD-2) or "quick_gelu"
//   last_hidden_state = final_layer_norm(x); pooled = last_hidden_state at the EOS row
// The masks are applied as transformers does: a pad query attends to the real tokens before it only.

import { access } from 'node:fs/promises';
import { join } from 'node:path';
import type { Gpu } from '../../engine/device.js';
import type { Tensor } from '../../engine/tensor.js';
import { attentionMasked } from '../../kernels/attention.js';
import { add, scale, silu } from '../../kernels/elementwise.js';
import { gatherRows } from '../../kernels/layout.js';
import { linear } from '../../kernels/matmul.js';
import { layerNorm } from '../../kernels/norms.js';
import { WeightsError } from '../weights/errors.js';
import type { GpuFloat } from '../weights/gpu_load.js';
import { type JsonConfig, WeightLoader, configNumber, configString, countLayers, openHfWeights, readConfig, shapeOf } from './hf_weights.js';

export type ClipActivation = 'gelu_erf' | 'gelu_tanh' | 'quick_gelu';

export interface ClipConfig {
  layers: number;
  width: number;
  heads: number;
  headDim: number;
  mlp: number;
  vocab: number;
  /** Rows of the position table: the longest input (77). */
  positions: number;
  eps: number;
  activation: ClipActivation;
  /** 2 selects transformers' legacy pooling rule (argmax of the ids); otherwise the first id equal to it. */
  eosTokenId: number;
}

interface Affine {
  w: Tensor;
  b: Tensor;
}

interface ClipLayer {
  ln1: Affine;
  q: Affine;
  k: Affine;
  v: Affine;
  out: Affine;
  ln2: Affine;
  fc1: Affine;
  fc2: Affine;
}

export interface ClipLoadOptions {
  /** GPU dtype of the matrices and the token table (default: as stored). Norms, biases, positions stay f32. */
  weights?: GpuFloat;
}

export interface ClipEncodeOptions {
  /** Apply the key padding mask from `attentionMask` (default true); the causal mask always applies. */
  mask?: boolean;
  /** Also return hidden_states: the embedding sum, then each layer's output (before the final LN). */
  outputHiddenStates?: boolean;
}

export interface ClipOutput {
  /** [B, L, C]. */
  lastHidden: Tensor;
  /** [B, C]: lastHidden at eosIndex. */
  pooled: Tensor;
  /** The row pooled for each prompt. */
  eosIndex: number[];
  /** With outputHiddenStates: layers + 1 tensors [B, L, C]. */
  hiddenStates?: Tensor[];
}

const ACTIVATIONS: Record<string, ClipActivation> = {
  gelu: 'gelu_erf',
  gelu_new: 'gelu_tanh',
  gelu_pytorch_tanh: 'gelu_tanh',
  gelu_fast: 'gelu_tanh',
  quick_gelu: 'quick_gelu',
};

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

/** The folder holding config.json: `dir` itself or its `text_encoder/` (a diffusers pipeline or a fixture root). */
async function modelFolder(dir: string): Promise<string> {
  if (await exists(join(dir, 'config.json'))) return dir;
  if (await exists(join(dir, 'text_encoder', 'config.json'))) return join(dir, 'text_encoder');
  return dir; // readConfig then names the missing dir/config.json
}

/** Transformers' pooling row: legacy argmax(ids) (first maximum) when eos_token_id is 2, else the first EOS (0 if none). */
export function clipPoolIndex(ids: readonly number[], eosTokenId: number): number {
  let best = 0;
  if (eosTokenId === 2) {
    for (let t = 1; t < ids.length; t++) if (ids[t] > ids[best]) best = t;
    return best;
  }
  const first = ids.indexOf(eosTokenId);
  return first < 0 ? 0 : first;
}

export class ClipTextEncoder {
  private constructor(
    readonly gpu: Gpu,
    readonly config: ClipConfig,
    private readonly tokens: Tensor,
    private readonly positions: Tensor,
    private readonly layers: ClipLayer[],
    private readonly finalNorm: Affine,
    private readonly weights: WeightLoader,
  ) {}

  /** Loads a HF CLIP text model folder (config.json + model.safetensors or an index), or a folder holding `text_encoder/`. */
  static async load(gpu: Gpu, dir: string, opts: ClipLoadOptions = {}): Promise<ClipTextEncoder> {
    const folder = await modelFolder(dir);
    const configPath = join(folder, 'config.json');
    let config: JsonConfig = await readConfig(configPath);
    // A full CLIPModel config nests the text tower's settings.
    if (typeof config.text_config === 'object' && config.text_config !== null) config = config.text_config as JsonConfig;
    const ckpt = await openHfWeights(folder);
    try {
      const pre = ckpt.has('text_model.embeddings.token_embedding.weight') ? 'text_model.' : '';
      const [vocab, width] = shapeOf(ckpt, `${pre}embeddings.token_embedding.weight`);
      const positions = shapeOf(ckpt, `${pre}embeddings.position_embedding.weight`)[0];
      const lp = `${pre}encoder.layers.`;
      const layerCount = countLayers(ckpt, lp);
      if (layerCount === 0) throw new WeightsError(`no layers (${lp}{i}.*)`, { code: 'missing-tensor', file: ckpt.path });
      const mlp = shapeOf(ckpt, `${lp}0.mlp.fc1.weight`)[0];
      const heads = configNumber(config, configPath, 'num_attention_heads');
      if (!Number.isInteger(heads) || heads < 1 || width % heads !== 0) {
        throw new WeightsError(`num_attention_heads ${heads} does not divide the width ${width}`, { code: 'bad-header', file: configPath });
      }
      const actName = configString(config, 'hidden_act') ?? 'quick_gelu'; // CLIPTextConfig's default
      const activation = ACTIVATIONS[actName];
      if (!activation) {
        throw new WeightsError(`unsupported hidden_act "${actName}" (supported: ${Object.keys(ACTIVATIONS).join(', ')})`, { code: 'unsupported', file: configPath });
      }
      const cfg: ClipConfig = {
        layers: layerCount,
        width,
        heads,
        headDim: width / heads,
        mlp,
        vocab,
        positions,
        eps: configNumber(config, configPath, 'layer_norm_eps', 1e-5),
        activation,
        eosTokenId: configNumber(config, configPath, 'eos_token_id', 49407),
      };

      type Entry = [name: string, shape: number[]];
      const affine = (name: string, out: number, inp?: number): [Entry, Entry] => [
        [`${name}.weight`, inp === undefined ? [out] : [out, inp]],
        [`${name}.bias`, [out]],
      ];
      const names = (l: number): Record<keyof ClipLayer, [Entry, Entry]> => ({
        ln1: affine(`${lp}${l}.layer_norm1`, width),
        q: affine(`${lp}${l}.self_attn.q_proj`, width, width),
        k: affine(`${lp}${l}.self_attn.k_proj`, width, width),
        v: affine(`${lp}${l}.self_attn.v_proj`, width, width),
        out: affine(`${lp}${l}.self_attn.out_proj`, width, width),
        ln2: affine(`${lp}${l}.layer_norm2`, width),
        fc1: affine(`${lp}${l}.mlp.fc1`, mlp, width),
        fc2: affine(`${lp}${l}.mlp.fc2`, width, mlp),
      });
      const w = new WeightLoader(gpu, ckpt, opts.weights ?? 'keep');
      const finalNames = affine(`${pre}final_layer_norm`, width);
      for (const [n, s] of finalNames) w.check(n, s);
      for (let l = 0; l < layerCount; l++) for (const pair of Object.values(names(l))) for (const [n, s] of pair) w.check(n, s);

      // Matrices in the requested dtype; LN weights and all biases f32.
      const load = async ([[wn, ws], [bn, bs]]: [Entry, Entry], matrix: boolean): Promise<Affine> => ({
        w: matrix ? await w.matrix(wn, ws) : await w.f32(wn, ws),
        b: await w.f32(bn, bs),
      });
      try {
        const tokens = await w.matrix(`${pre}embeddings.token_embedding.weight`, [vocab, width]);
        const pos = await w.f32(`${pre}embeddings.position_embedding.weight`, [positions, width]);
        const layers: ClipLayer[] = [];
        for (let l = 0; l < layerCount; l++) {
          const n = names(l);
          layers.push({
            ln1: await load(n.ln1, false),
            q: await load(n.q, true),
            k: await load(n.k, true),
            v: await load(n.v, true),
            out: await load(n.out, true),
            ln2: await load(n.ln2, false),
            fc1: await load(n.fc1, true),
            fc2: await load(n.fc2, true),
          });
        }
        const finalNorm = await load(finalNames, false);
        return new ClipTextEncoder(gpu, cfg, tokens, pos, layers, finalNorm, w);
      } catch (err) {
        w.disposeAll();
        throw err;
      }
    } finally {
      await ckpt.close();
    }
  }

  /**
   * Encodes B rows of L token ids (L ≤ positions; 77 from the tokenizer) with their attention masks
   * (1 = token, 0 = pad; null = no padding mask). Records GPU work; read the tensors to wait.
   */
  encode(ids: readonly (readonly number[])[], attentionMask: readonly (readonly number[])[] | null, opts: ClipEncodeOptions = {}): ClipOutput {
    const { gpu, config: c } = this;
    const B = ids.length;
    if (B === 0) throw new Error('ClipTextEncoder.encode: no prompts');
    const L = ids[0].length;
    if (L < 1 || L > c.positions) throw new Error(`ClipTextEncoder.encode: ${L} tokens per row, the model has ${c.positions} positions`);
    ids.forEach((row, b) => {
      if (row.length !== L) throw new Error(`ClipTextEncoder.encode: row ${b} has ${row.length} ids, row 0 has ${L}`);
      for (const id of row) if (!Number.isInteger(id) || id < 0 || id >= c.vocab) throw new Error(`ClipTextEncoder.encode: row ${b} has token id ${id} outside [0, ${c.vocab})`);
    });

    // Key padding mask. All ones when there is none: one attention variant (causal + mask) serves every call,
    // and on lavapipe each extra variant costs tens of seconds of shader compilation.
    let maskHost = new Int32Array(B * L).fill(1);
    if ((opts.mask ?? true) && attentionMask) {
      if (attentionMask.length !== B || attentionMask.some((r) => r.length !== L)) {
        throw new Error(`ClipTextEncoder.encode: attentionMask must be [${B}][${L}] like ids`);
      }
      maskHost = Int32Array.from(attentionMask.flat(), (m) => (m ? 1 : 0));
    }
    const keyMask = gpu.upload(maskHost, [B, L], 'i32', 'clip-key-mask');

    const idT = gpu.upload(Int32Array.from(ids.flat()), [B, L], 'i32', 'clip-ids');
    const tok = gatherRows(gpu, this.tokens, idT);
    idT.dispose();
    let x = add(gpu, tok, this.positions.rows(0, L));
    tok.dispose();
    const hiddenStates = opts.outputHiddenStates ? [x] : undefined;

    for (const layer of this.layers) {
      let h = layerNorm(gpu, x, { weight: layer.ln1.w, bias: layer.ln1.b, eps: c.eps });
      const q = linear(gpu, h, layer.q.w, layer.q.b);
      const k = linear(gpu, h, layer.k.w, layer.k.b);
      const v = linear(gpu, h, layer.v.w, layer.v.b);
      h.dispose();
      const o = attentionMasked(gpu, q, k, v, { heads: c.heads, scale: 1 / Math.sqrt(c.headDim), causal: true, keyMask });
      q.dispose();
      k.dispose();
      v.dispose();
      const proj = linear(gpu, o, layer.out.w, layer.out.b);
      o.dispose();
      let next = add(gpu, x, proj);
      proj.dispose();
      if (!hiddenStates) x.dispose(); // the layer input: the embedding sum or the previous layer's output
      x = next;

      h = layerNorm(gpu, x, { weight: layer.ln2.w, bias: layer.ln2.b, eps: c.eps });
      const a = this.mlpIn(h, layer.fc1);
      h.dispose();
      const f = linear(gpu, a, layer.fc2.w, layer.fc2.b);
      a.dispose();
      next = add(gpu, x, f);
      f.dispose();
      x.dispose(); // the mid-layer residual, never collected
      if (hiddenStates) hiddenStates.push(next);
      x = next;
    }
    keyMask.dispose();

    const lastHidden = layerNorm(gpu, x, { weight: this.finalNorm.w, bias: this.finalNorm.b, eps: c.eps });
    if (!hiddenStates) x.dispose();
    const eosIndex = ids.map((row) => clipPoolIndex(row, c.eosTokenId));
    const rows = gpu.upload(Int32Array.from(eosIndex, (t, b) => b * L + t), [B], 'i32', 'clip-pool-rows');
    const pooled = gatherRows(gpu, lastHidden.reshape([B * L, c.width]), rows);
    rows.dispose();
    return hiddenStates ? { lastHidden, pooled, eosIndex, hiddenStates } : { lastHidden, pooled, eosIndex };
  }

  /** act(fc1(h)). GELU forms fuse into the matmul; quick_gelu x·σ(1.702x) is silu(1.702x)/1.702 from contract ops. */
  private mlpIn(h: Tensor, fc1: Affine): Tensor {
    const { gpu } = this;
    const act = this.config.activation;
    if (act !== 'quick_gelu') return linear(gpu, h, fc1.w, fc1.b, { activation: act });
    const y = linear(gpu, h, fc1.w, fc1.b);
    const t = scale(gpu, y, 1.702);
    y.dispose();
    const s = silu(gpu, t);
    t.dispose();
    const out = scale(gpu, s, 1 / 1.702);
    s.dispose();
    return out;
  }

  dispose(): void {
    this.weights.disposeAll();
  }
}

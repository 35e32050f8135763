// STAR's text conditioning (spec star.md §2): per prompt the CLIP-H text tower's last_hidden_state for the
// 77 positions, the tokenizer's mask (1 on BOS…EOS) and the pooled state at EOS; the unconditional rows are
// the same for the prompt "". Sources: the CLIP text encoder + its tokenizer (a Hugging Face folder with
// `text_encoder/` and `tokenizer/`, or the two folders), or precomputed features (`--text-features`).
// Only the valid positions matter downstream (pads are −∞ in cross-attention and CLIP is causal), so
// features files hold the valid rows only, packed as for Infinity.

import type { Gpu } from '../engine/device.js';
import { ClipTextEncoder } from '../model/text/clip_encoder.js';
import { ClipTokenizer } from '../model/text/clip_tokenizer.js';
import { detectTokenizer } from '../model/text/tokenizer.js';
import type { StarTextInput } from '../model/star/generation.js';
import { mustExist, promptOf, type TextFeatures } from './text.js';

/** Text of some prompts: their valid positions (packed) and the pooled vector of each. */
export interface StarTextFeatures extends TextFeatures {
  /** [prompts, pooledWidth]: the state at EOS (CLIP's pooler_output). */
  pooled: Float32Array;
  pooledWidth: number;
}

/** The pooled vector of packed CLIP states: the last valid row of each prompt (its EOS). */
export function pooledFromFeatures(f: TextFeatures): Float32Array {
  const out = new Float32Array(f.lens.length * f.width);
  let end = 0;
  f.lens.forEach((len, i) => {
    end += len;
    out.set(f.features.subarray((end - 1) * f.width, end * f.width), i * f.width);
  });
  return out;
}

/** CLIP tokenizer + text tower, as STAR encodes prompts. */
export class ClipPromptEncoder {
  readonly name = 'clip';

  private constructor(
    private readonly encoder: ClipTextEncoder,
    private readonly tokenizer: ClipTokenizer,
  ) {}

  /** `dir` holds `text_encoder/` (+ `tokenizer/`), or is the text encoder folder itself; `tokenizer` overrides. */
  static async load(gpu: Gpu, dir: string, o: { tokenizer?: string; onWarning?: (message: string) => void } = {}): Promise<ClipPromptEncoder> {
    await mustExist(dir, 'text encoder folder');
    const found = await detectTokenizer(o.tokenizer ?? dir).catch(async (err: Error) => {
      // A diffusers layout keeps the tokenizer beside the text encoder: dir/../tokenizer.
      if (o.tokenizer) throw err;
      return detectTokenizer(`${dir}/..`).catch(() => {
        throw new Error(`${err.message} (STAR needs SD-2's CLIP tokenizer: vocab.json + merges.txt; pass --tokenizer DIR)`);
      });
    });
    if (found.kind !== 'clip') throw new Error(`${found.dir}: found a ${found.kind} tokenizer; STAR needs the CLIP tokenizer (vocab.json + merges.txt)`);
    const tokenizer = await ClipTokenizer.fromDirectory(found.dir, o.onWarning ? { onWarning: o.onWarning } : {});
    const encoder = await ClipTextEncoder.load(gpu, dir);
    if (tokenizer.contextLength > encoder.config.positions) {
      encoder.dispose();
      throw new Error(`${found.dir}: the tokenizer pads to ${tokenizer.contextLength} tokens but the text encoder has ${encoder.config.positions} positions`);
    }
    return new ClipPromptEncoder(encoder, tokenizer);
  }

  get width(): number {
    return this.encoder.config.width;
  }

  /** Last hidden states of the valid tokens (packed) and the pooled vectors of the prompts. */
  async encode(prompts: readonly string[]): Promise<StarTextFeatures> {
    const encoded = prompts.map((p) => this.tokenizer.encode(p));
    const out = this.encoder.encode(
      encoded.map((e) => e.ids),
      encoded.map((e) => e.attentionMask ?? e.ids.map(() => 1)),
    );
    try {
      const [B, L, C] = out.lastHidden.shape;
      const hidden = await out.lastHidden.readF32();
      const pooled = await out.pooled.readF32();
      const lens = encoded.map((e) => e.length);
      const features = new Float32Array(lens.reduce((a, b) => a + b, 0) * C);
      let at = 0;
      for (let b = 0; b < B; b++) {
        features.set(hidden.subarray(b * L * C, (b * L + lens[b]) * C), at * C);
        at += lens[b];
      }
      return { features, lens, width: C, pooled, pooledWidth: C };
    } finally {
      out.lastHidden.dispose();
      out.pooled.dispose();
      for (const t of out.hiddenStates ?? []) t.dispose();
    }
  }

  dispose(): void {
    this.encoder.dispose();
  }
}

/** Features of prompt i (valid rows and its pooled vector). */
function row(f: StarTextFeatures, i: number): { states: Float32Array; len: number; pooled: Float32Array } {
  const p = promptOf(f, i);
  return { states: p.features, len: p.lens[0], pooled: f.pooled.subarray(i * f.pooledWidth, (i + 1) * f.pooledWidth) };
}

/**
 * The GPU text rows of a generation: image b's prompt for rows 0…B−1, then (with guidance) the negative
 * text ("" unless given) for rows B…2B−1, each padded to the longest with mask 0.
 */
export function starTextInput(gpu: Gpu, prompts: StarTextFeatures, promptOfImage: readonly number[], negative: StarTextFeatures | null): StarTextInput {
  const rows = [...promptOfImage.map((i) => row(prompts, i))];
  if (negative) for (let b = 0; b < promptOfImage.length; b++) rows.push(row(negative, negative.lens.length === 1 ? 0 : promptOfImage[b]));
  const C = prompts.width;
  const Cp = prompts.pooledWidth;
  if (negative && (negative.width !== C || negative.pooledWidth !== Cp)) throw new Error(`negative text is ${negative.width} wide but the prompts are ${C}`);
  const T = Math.max(...rows.map((r) => r.len));
  const hidden = new Float32Array(rows.length * T * C);
  const pooled = new Float32Array(rows.length * Cp);
  const mask = new Int32Array(rows.length * T);
  rows.forEach((r, i) => {
    hidden.set(r.states, i * T * C);
    pooled.set(r.pooled, i * Cp);
    mask.fill(1, i * T, i * T + r.len);
  });
  return {
    hidden: gpu.upload(hidden, [rows.length, T, C], 'f32', 'star-text'),
    pooled: gpu.upload(pooled, [rows.length, Cp], 'f32', 'star-pooled'),
    mask,
  };
}

// Per-generation state of STAR: the start tokens (pooled text → encoder_proj, + pos_start), the per-token
// text states and their mask, the text keys/values of each layer (computed once per text row, on first
// use), the RoPE table of every scale, and the self-attention KV cache. A StarStep says which sequence
// rows run, over how many tokens, with which RoPE phases, and whose text the cross-attention reads.

import type { Gpu } from '../../engine/device.js';
import type { Tensor } from '../../engine/tensor.js';
import { scaleStarts } from './config.js';
import { KvCache, type RowRange } from '../kv_cache.js';
import type { ActivationDType } from '../precision.js';
import { scaleRopeTable } from './rope.js';

export type { RowRange } from '../kv_cache.js';

export interface StarTextInput {
  /** Per-token text states [rows, T, textWidth] f32 (CLIP `last_hidden_state`), one per sequence row. */
  hidden: Tensor;
  /** Host mask [rows·T]: 1 = valid token, 0 = padding (becomes −inf in cross-attention). */
  mask: ArrayLike<number>;
  /** Pooled text [rows, pooledWidth] f32 (the state at EOS): the start token's source. */
  pooled: Tensor;
}

/** One forward step: `tokens` new tokens for each row of `rows`. */
export interface StarStep {
  rows: RowRange;
  tokens: number;
  /** cos/sin [tokens, headDim/2, 2] (token t of every row uses row t) or [rows·tokens, …] (one table per row). */
  rope: Tensor;
  /**
   * The text row whose cross-attention output is added to every row of the step. Upstream's
   * `cross_attn(...)[0]` takes batch row 0 of the forward, i.e. the step's first row (the prompt when both
   * CFG branches run); a policy running the unconditional rows alone sees the "" text there.
   */
  textRow: number;
}

/** Text keys/values of one text row: per layer [validTokens, C] (k L2-normalised per head). */
export interface CrossText {
  k: Tensor[];
  v: Tensor[];
}

export class StarGeneration {
  /** First token index of each scale (and the total at the end). */
  readonly starts: number[];
  private readonly ropes = new Map<number, Tensor>();
  /** @internal Filled by StarModel.crossText. */
  readonly crossTexts = new Map<number, CrossText>();

  constructor(
    private readonly gpu: Gpu,
    /** Prompts B. */
    readonly batch: number,
    /** Sequence rows: 2B with guidance (prompts, then their unconditional rows), else B. */
    readonly rows: number,
    readonly patchNums: readonly number[],
    readonly text: StarTextInput,
    /** Start token of every row without the level embedding: encoder_proj(pooled) + pos_start, [rows, C]. */
    readonly sos: Tensor,
    readonly cache: KvCache,
    private readonly headDim: number,
    private readonly theta: number,
    private readonly normalize: number,
    /** Storage dtype of what feeds and leaves the layers' linears (the residual stream is always f32). */
    readonly activations: ActivationDType = 'f32',
  ) {
    this.starts = scaleStarts(patchNums);
  }

  get scales(): number {
    return this.patchNums.length;
  }

  get guidance(): boolean {
    return this.rows === 2 * this.batch;
  }

  /** Text tokens per row (valid and padding). */
  get textTokens(): number {
    return this.text.hidden.shape[1];
  }

  allRows(): RowRange {
    return { start: 0, count: this.rows };
  }

  condRows(): RowRange {
    return { start: 0, count: this.batch };
  }

  uncondRows(): RowRange {
    if (!this.guidance) throw new Error('this generation has no unconditional rows (guidance off)');
    return { start: this.batch, count: this.batch };
  }

  /** Prompt of a sequence row: the unconditional row B+i belongs to prompt i. */
  promptOf(row: number): number {
    return row % this.batch;
  }

  /** cos/sin table of scale si (uploaded once). */
  scaleRope(si: number): Tensor {
    let t = this.ropes.get(si);
    if (!t) {
      const pn = this.patchNums[si];
      if (pn === undefined) throw new Error(`scale ${si} outside the ${this.scales} scales`);
      const table = scaleRopeTable(pn, this.headDim, this.theta, this.normalize);
      t = this.gpu.upload(table, [pn * pn, this.headDim / 2, 2], 'f32', `star-rope-${si}`, true);
      this.ropes.set(si, t);
    }
    return t;
  }

  /** The step of scale si over `rows` (all rows by default): every token of the scale. */
  step(si: number, rows: RowRange = this.allRows()): StarStep {
    const pn = this.patchNums[si];
    if (pn === undefined) throw new Error(`scale ${si} outside the ${this.scales} scales`);
    return { rows, tokens: pn * pn, rope: this.scaleRope(si), textRow: rows.start };
  }

  /**
   * A step of `rows` over `tokens` tokens of their own (e.g. StageVAR's projected rows): the RoPE table gives
   * their phases, [tokens, headDim/2, 2] shared by every row or [rows·tokens, headDim/2, 2] one per row
   * (StarModel.ropeTable, or rows of scaleRope); the caller keeps it alive while the step runs.
   */
  customStep(rows: RowRange, rope: Tensor, tokens = rope.shape[0], textRow = rows.start): StarStep {
    if (rope.shape[0] !== tokens && rope.shape[0] !== rows.count * tokens) {
      throw new Error(`RoPE table ${rope} fits neither ${tokens} tokens nor ${rows.count}·${tokens} (one table per row)`);
    }
    return { rows, tokens, rope, textRow };
  }

  dispose(): void {
    for (const t of this.ropes.values()) t.dispose();
    this.ropes.clear();
    for (const c of this.crossTexts.values()) for (const t of [...c.k, ...c.v]) t.dispose();
    this.crossTexts.clear();
    this.sos.dispose();
    this.cache.dispose();
  }
}

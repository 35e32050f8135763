// Per-generation state: the text conditioning (constant for the whole generation), the RoPE table of
// the schedule, and the KV cache. A ScaleStep says which sequence rows run, how many tokens each row
// brings and where their RoPE phases start in the table; the model's building blocks take one, so a
// sampler can run a scale on some rows only, or chunk by chunk on projected rows. The generation also
// carries the activation dtype its layers run with (see model.ts, "Precision").

import type { Gpu } from '../../engine/device.js';
import type { Tensor } from '../../engine/tensor.js';
import { scaleStarts, type Grid } from '../../sampler/schedule.js';
import { KvCache, type RowRange } from '../kv_cache.js';
import type { ActivationDType } from '../precision.js';
import { ropePositions, ropeTable } from './rope.js';
import { disposeConditioning, type Conditioning } from './text.js';

export type { RowRange } from '../kv_cache.js';

/** Storage dtype of the activations that feed and leave the linears (the residual stream is always f32). */
export type { ActivationDType };

/** One forward step of some sequence rows over `tokens` new tokens per row. */
export interface ScaleStep {
  rows: RowRange;
  tokens: number;
  /** Index in the RoPE table of this step's first token; token t uses row ropeOffset + t. */
  ropeOffset: number;
  /** A cos/sin table of its own ([≥ ropeOffset + tokens, headDim/2, 2], e.g. from `model.ropeTableFor`)
   *  instead of the schedule's, for tokens whose positions are not a run of the schedule. */
  ropeTable?: Tensor;
}

export class Generation {
  readonly starts: number[];

  constructor(
    private readonly gpu: Gpu,
    /** Prompts B. */
    readonly batch: number,
    readonly conditioning: Conditioning,
    readonly schedule: readonly Grid[],
    /** cos/sin [tokens of the schedule, headDim/2, 2]. */
    readonly rope: Tensor,
    readonly cache: KvCache,
    /** f16: norm outputs, q/k/v, attention outputs and the FFN hidden are stored as f16 (needs shader-f16). */
    readonly activations: ActivationDType = 'f32',
  ) {
    this.starts = scaleStarts(schedule);
  }

  /** Sequence rows: B, or 2B when the unconditional branch runs. */
  get rows(): number {
    return this.conditioning.rows;
  }

  get guidance(): boolean {
    return this.rows === 2 * this.batch;
  }

  allRows(): RowRange {
    return { start: 0, count: this.rows };
  }

  condRows(): RowRange {
    return { start: 0, count: this.batch };
  }

  uncondRows(): RowRange {
    if (!this.guidance) throw new Error('this generation has no unconditional branch (guidance off)');
    return { start: this.batch, count: this.batch };
  }

  /** Prompt index of a sequence row (the unconditional row B+i belongs to prompt i). */
  promptOf(row: number): number {
    return row % this.batch;
  }

  /** The step of scale `si` over `rows` (all rows by default), every token of the scale. */
  step(si: number, rows: RowRange = this.allRows()): ScaleStep {
    if (!Number.isInteger(si) || si < 0 || si >= this.schedule.length) throw new Error(`scale ${si} outside the schedule's 0..${this.schedule.length - 1}`);
    if (rows.start < 0 || rows.count < 1 || rows.start + rows.count > this.rows) throw new Error(`rows [${rows.start}, ${rows.start + rows.count}) outside the ${this.rows} sequence rows`);
    const [h, w] = this.schedule[si];
    return { rows, tokens: h * w, ropeOffset: this.starts[si] };
  }

  /** Frees the generation's tensors (recorded work is submitted first: persistent buffers are destroyed). */
  dispose(): void {
    this.gpu.flush();
    disposeConditioning(this.conditioning);
    this.rope.dispose();
    this.cache.dispose();
  }
}

/** The RoPE table of a schedule on the GPU (positions on the template's final 1M grid). */
export function ropeTensor(gpu: Gpu, schedule: readonly Grid[], finalGrid: Grid, headDim: number): Tensor {
  const positions = ropePositions(schedule, finalGrid);
  const table = ropeTable(positions, headDim);
  return gpu.upload(table, [positions.length / 2, headDim / 2, 2], 'f32', 'rope-table', true);
}

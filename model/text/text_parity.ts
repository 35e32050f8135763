// Parity of the text encoders against the fixtures made with the official Hugging Face code
// (../shared/fixtures/t5-tiny, clip-tiny; their README says what every golden key holds). Each check
// returns one entry per golden key: max|engine − golden| / max|golden| over the compared rows, and the
// tolerance it must stay under (1e-4 for f32 arithmetic; integer keys must match exactly).

import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Gpu } from '../../engine/device.js';
import { type SafetensorsFile, openSafetensors } from '../weights/safetensors.js';
import { ClipTextEncoder, type ClipOutput } from './clip_encoder.js';
import { type ParityEntry, relMaxError } from '../parity/measure.js';
import { T5Encoder, t5PositionBias, t5RelativeBucket } from './t5_encoder.js';

export type { ParityEntry };

const F32_TOL = 1e-4;

async function readArray(file: SafetensorsFile, name: string): Promise<Float32Array | Int32Array> {
  const a = await file.readTensorToArray(name);
  if (a instanceof Float32Array || a instanceof Int32Array) return a;
  return file.readTensorF32(name);
}

/** Splits a [B, L] row-major array into rows. */
function rowsOf(a: ArrayLike<number>, B: number, L: number): number[][] {
  return Array.from({ length: B }, (_, b) => Array.from({ length: L }, (_, t) => a[b * L + t]));
}

/** Indices n of the keys `${prefix}${n}`, sorted. */
function indexedKeys(file: SafetensorsFile, prefix: string): number[] {
  return file
    .names()
    .filter((n) => n.startsWith(prefix) && /^\d+$/.test(n.slice(prefix.length)))
    .map((n) => Number(n.slice(prefix.length)))
    .sort((a, b) => a - b);
}

/** Rows [start, start + n) of a [*, C] array. */
function slice(a: Float32Array, start: number, n: number, C: number): Float32Array {
  return a.subarray(start * C, (start + n) * C);
}

/** T5 fixture (t5-tiny layout): per-input hidden states, per-layer states, position bias and buckets, the padded batch. */
export async function runT5Parity(gpu: Gpu, dir: string): Promise<ParityEntry[]> {
  const golden = await openSafetensors(join(dir, 'golden.safetensors'));
  const encoder = await T5Encoder.load(gpu, dir);
  const out: ParityEntry[] = [];
  try {
    const C = encoder.config.width;
    const inputs = indexedKeys(golden, 'ids.');
    const ids = await Promise.all(inputs.map(async (i) => [...(await readArray(golden, `ids.${i}`))]));

    // All inputs in one ragged batch: each golden `hidden.{i}` was computed alone, so this also checks the masking.
    const layersInput = layersInputOf(golden, inputs, ids);
    const run = encoder.encode(ids, { collectLayers: layersInput !== null });
    const hidden = (await run.hidden.read()) as Float32Array;
    const starts = run.lens.map((_, i) => run.lens.slice(0, i).reduce((a, b) => a + b, 0));
    for (const [j, i] of inputs.entries()) {
      const key = `hidden.${i}`;
      if (!golden.has(key)) continue;
      const got = slice(hidden, starts[j], run.lens[j], C);
      out.push({ key, error: relMaxError(got, await readArray(golden, key)), tol: F32_TOL });
    }
    if (layersInput !== null && run.layers) {
      const j = inputs.indexOf(layersInput);
      for (const [n, t] of run.layers.entries()) {
        const key = n === 0 ? 'layers.emb' : `layers.${n - 1}`;
        if (!golden.has(key)) continue;
        const got = slice((await t.read()) as Float32Array, starts[j], run.lens[j], C);
        out.push({ key, error: relMaxError(got, await readArray(golden, key)), tol: F32_TOL });
      }
    }
    for (const t of run.layers ?? []) t.dispose();
    run.hidden.dispose();

    // Bucket and bias tables (host arithmetic, compared per key).
    const { heads, buckets, maxDistance } = encoder.config;
    const relTable = encoder.relativeBiasTable;
    for (const i of indexedKeys(golden, 'position_bias.')) {
      const L = golden.entry(`position_bias.${i}`).shape[1];
      out.push({ key: `position_bias.${i}`, error: relMaxError(t5PositionBias(relTable, heads, buckets, maxDistance, L), await readArray(golden, `position_bias.${i}`)), tol: F32_TOL });
    }
    for (const i of indexedKeys(golden, 'buckets.')) {
      const L = golden.entry(`buckets.${i}`).shape[0];
      const got = new Int32Array(L * L);
      for (let q = 0; q < L; q++) for (let k = 0; k < L; k++) got[q * L + k] = t5RelativeBucket(k - q, buckets, maxDistance);
      out.push({ key: `buckets.${i}`, error: relMaxError(got, await readArray(golden, `buckets.${i}`)), tol: 0 });
    }

    // The padded batch: with the mask only real rows are meaningful; without it every row is a real token.
    if (golden.has('batch.ids')) {
      const [B, L] = golden.entry('batch.ids').shape;
      const batchIds = rowsOf(await readArray(golden, 'batch.ids'), B, L);
      const maskRows = rowsOf(await readArray(golden, 'batch.mask'), B, L);
      const prompts = batchIds.map((row, b) => {
        const n = maskRows[b].reduce((a, m) => a + (m ? 1 : 0), 0);
        if (maskRows[b].some((m, t) => (m !== 0) !== t < n)) throw new Error(`batch.mask row ${b} is not right-padded`);
        return row.slice(0, n);
      });
      if (golden.has('batch.hidden')) {
        const r = encoder.encode(prompts);
        const got = (await r.hidden.read()) as Float32Array;
        r.hidden.dispose();
        // Scatter the compact rows into the [B, L] layout; pad rows are left out of the comparison.
        const full = new Float32Array(B * L * C);
        let row = 0;
        r.lens.forEach((len, b) => {
          full.set(got.subarray(row * C, (row + len) * C), b * L * C);
          row += len;
        });
        const real = (rr: number) => maskRows[Math.floor(rr / L)][rr % L] !== 0;
        out.push({ key: 'batch.hidden', error: relMaxError(full, await readArray(golden, 'batch.hidden'), C, real), tol: F32_TOL });
      }
      if (golden.has('batch.hidden_nomask')) {
        const r = encoder.encode(batchIds, { mask: false });
        const got = (await r.hidden.read()) as Float32Array;
        r.hidden.dispose();
        out.push({ key: 'batch.hidden_nomask', error: relMaxError(got, await readArray(golden, 'batch.hidden_nomask')), tol: F32_TOL });
      }
    }
  } finally {
    encoder.dispose();
    await golden.close();
  }
  return out;
}

/** Which input `layers.*` belongs to: the file's `layers_input` metadata, else the one input of that length. */
function layersInputOf(golden: SafetensorsFile, inputs: number[], ids: number[][]): number | null {
  if (!golden.has('layers.emb')) return null;
  const meta = golden.metadata?.layers_input;
  if (meta !== undefined && inputs.includes(Number(meta))) return Number(meta);
  const rows = golden.entry('layers.emb').shape[0];
  const same = inputs.filter((_, j) => ids[j].length === rows);
  if (same.length !== 1) throw new Error(`golden layers.* (${rows} rows): no "layers_input" metadata and ${same.length} inputs of that length`);
  return same[0];
}

/** CLIP fixture (clip-tiny layout): masked and unmasked last_hidden_state, pooled vector, EOS rows, per-layer states of one row. */
export async function runClipParity(gpu: Gpu, dir: string): Promise<ParityEntry[]> {
  const golden = await openSafetensors(join(dir, 'golden.safetensors'));
  const encoder = await ClipTextEncoder.load(gpu, dir);
  const out: ParityEntry[] = [];
  try {
    const C = encoder.config.width;
    const [B, L] = golden.entry('input_ids').shape;
    const ids = rowsOf(await readArray(golden, 'input_ids'), B, L);
    const mask = golden.has('attention_mask') ? rowsOf(await readArray(golden, 'attention_mask'), B, L) : null;
    const hsRow = await hiddenStatesRow(dir, golden);

    const r = encoder.encode(ids, mask, { mask: true, outputHiddenStates: hsRow !== null });
    // The padding mask is applied as transformers applies it, so pad rows are compared too.
    out.push({ key: 'last_hidden_state', error: relMaxError(await r.lastHidden.read(), await readArray(golden, 'last_hidden_state')), tol: F32_TOL });
    if (golden.has('pooler_output')) {
      out.push({ key: 'pooler_output', error: relMaxError(await r.pooled.read(), await readArray(golden, 'pooler_output')), tol: F32_TOL });
    }
    if (golden.has('eos_index')) out.push({ key: 'eos_index', error: relMaxError(r.eosIndex, await readArray(golden, 'eos_index')), tol: 0 });
    if (hsRow !== null && r.hiddenStates) {
      for (const [k, t] of r.hiddenStates.entries()) {
        const key = `hidden_states.${k}`;
        if (!golden.has(key)) continue;
        const got = slice((await t.read()) as Float32Array, hsRow * L, L, C);
        out.push({ key, error: relMaxError(got, await readArray(golden, key)), tol: F32_TOL });
      }
    }
    release(r);

    if (golden.has('last_hidden_state_nomask')) {
      const n = encoder.encode(ids, null, { mask: false });
      out.push({ key: 'last_hidden_state_nomask', error: relMaxError(await n.lastHidden.read(), await readArray(golden, 'last_hidden_state_nomask')), tol: F32_TOL });
      release(n);
    }
  } finally {
    encoder.dispose();
    await golden.close();
  }
  return out;
}

function release(o: ClipOutput): void {
  for (const t of [o.lastHidden, o.pooled, ...(o.hiddenStates ?? [])]) t.dispose();
}

/** golden.json's `hidden_states_row` (null when the fixture has no hidden_states.* keys). */
async function hiddenStatesRow(dir: string, golden: SafetensorsFile): Promise<number | null> {
  if (!golden.has('hidden_states.0')) return null;
  const path = join(dir, 'golden.json');
  let row: unknown;
  try {
    row = (JSON.parse(await readFile(path, 'utf8')) as { hidden_states_row?: unknown }).hidden_states_row;
  } catch (cause) {
    throw new Error(`${path}: cannot read hidden_states_row (${(cause as Error).message})`, { cause });
  }
  if (typeof row !== 'number' || !Number.isInteger(row)) throw new Error(`${path}: hidden_states_row is ${JSON.stringify(row)}, not a row index`);
  return row;
}

// `stagevar convert` and `stagevar inspect`, driven through commander as the CLI runs them. A failing
// command throws (the launcher turns that into exit code 1) and leaves no output file behind.
import { existsSync, truncateSync } from 'node:fs';
import { copyFile, mkdtemp, readFile, readdir, rm, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { register as registerConvert } from '../../cli/commands/convert.js';
import { inspectCommand, register as registerInspect } from '../../cli/commands/inspect.js';
import { convertCheckpoint } from '../../model/weights/convert.js';
import { bytesToF32, f32ToBf16Bits, f32ToF16Bits, type Dtype } from '../../model/weights/dtype_convert.js';
import { WeightsError } from '../../model/weights/errors.js';
import { openSafetensors, type SafetensorsFile } from '../../model/weights/safetensors.js';

const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = resolve(here, '..', '..');
const pthDir = resolve(here, '..', 'data', 'pth');
function fixture(...parts: string[]): string {
  const p = resolve(repoRoot, '../shared/fixtures', ...parts);
  if (!existsSync(p)) throw new Error(`fixture missing: ${p} (tests read ../shared/fixtures beside the repository)`);
  return p;
}

interface ExpectedTensor {
  dtype: Dtype;
  shape: number[];
  values: number[];
}
let expected: Record<string, Record<string, ExpectedTensor>>;
let dir: string;
beforeAll(async () => {
  expected = JSON.parse(await readFile(join(pthDir, 'expected.json'), 'utf8')).files;
  dir = await mkdtemp(join(tmpdir(), 'stagevar-cli-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

let stderr: string;
let stdout: string;
beforeAll(() => {
  vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
    stderr += String(chunk);
    return true;
  });
  vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
    stdout += String(chunk);
    return true;
  });
});
afterEach(() => {
  stderr = '';
  stdout = '';
});
afterAll(() => {
  vi.restoreAllMocks();
});

/** Runs `stagevar <args>` through commander with only our two commands registered. */
async function run(...args: string[]): Promise<void> {
  const program = new Command().exitOverride();
  registerConvert(program);
  registerInspect(program);
  await program.parseAsync(['node', 'stagevar', ...args]);
}

async function valuesOf(file: SafetensorsFile, name: string): Promise<number[]> {
  const e = file.entry(name);
  const bytes = await file.readTensorBytes(name);
  if (e.dtype === 'I64') return Array.from(new BigInt64Array(bytes.buffer), Number);
  if (e.dtype === 'I32') return Array.from(new Int32Array(bytes.buffer));
  return Array.from(bytesToF32(e.dtype, bytes));
}

async function withOutput(path: string, check: (file: SafetensorsFile) => Promise<void>): Promise<void> {
  const file = await openSafetensors(path);
  try {
    await check(file);
  } finally {
    await file.close();
  }
}

describe('convert', () => {
  it('--key vae: names lose the prefix, dtypes and values stay', async () => {
    const out = join(dir, 'vae.safetensors');
    await run('convert', join(pthDir, 'vae_ckpt.pth'), out, '--key', 'vae');
    expect(stderr).toMatch(/wrote .*vae\.safetensors: 6 tensors/);
    await withOutput(out, async (file) => {
      expect(file.names().sort()).toEqual(['mask', 'norm.bias', 'norm.weight', 'proj.bias', 'proj.weight', 'scale']);
      expect(file.metadata).toEqual({ format: 'pt' });
      for (const name of file.names()) {
        const want = expected['vae_ckpt.pth']![`vae.${name}`]!;
        expect(file.entry(name).dtype).toBe(want.dtype);
        expect(file.entry(name).shape).toEqual(want.shape);
        expect(await valuesOf(file, name)).toEqual(want.values);
      }
    });
  });

  it('keeps every dtype and materialises views, 0-d tensors and parameters', async () => {
    const out = join(dir, 'mixed.safetensors');
    await run('convert', join(pthDir, 'mixed.pth'), out, '--quiet');
    await withOutput(out, async (file) => {
      const want = expected['mixed.pth']!;
      expect(file.names().sort()).toEqual(Object.keys(want).sort());
      for (const [name, w] of Object.entries(want)) {
        expect(file.entry(name).dtype, name).toBe(w.dtype);
        expect(file.entry(name).shape, name).toEqual(w.shape);
        expect(await valuesOf(file, name), name).toEqual(w.values);
      }
    });
  });

  it('--dtype f16 rounds float tensors to nearest even and leaves integers alone', async () => {
    const out = join(dir, 'mixed-f16.safetensors');
    await run('convert', join(pthDir, 'mixed.pth'), out, '--dtype', 'f16', '--quiet');
    await withOutput(out, async (file) => {
      const want = expected['mixed.pth']!;
      for (const [name, w] of Object.entries(want)) {
        const isFloat = w.dtype === 'F32' || w.dtype === 'F16' || w.dtype === 'BF16';
        expect(file.entry(name).dtype, name).toBe(isFloat ? 'F16' : w.dtype);
        if (isFloat) {
          const bits = new Uint16Array((await file.readTensorBytes(name)).buffer);
          expect(Array.from(bits), name).toEqual(w.values.map(f32ToF16Bits));
        }
      }
      expect(file.entry('i64').dtype).toBe('I64');
    });
  });

  it('--dtype bf16 then back to f32 from a safetensors input', async () => {
    const bf16 = join(dir, 'flat-bf16.safetensors');
    const f32 = join(dir, 'flat-f32.safetensors');
    await run('convert', join(pthDir, 'flat_state.pth'), bf16, '--dtype', 'bf16', '--quiet');
    await run('convert', bf16, f32, '--dtype', 'f32', '--quiet');
    await withOutput(f32, async (file) => {
      const want = expected['flat_state.pth']!['proj.weight']!;
      expect(file.entry('proj.weight').dtype).toBe('F32');
      const roundTrip = want.values.map((v) => bytesToF32('BF16', new Uint8Array(new Uint16Array([f32ToBf16Bits(v)]).buffer))[0]);
      expect(await valuesOf(file, 'proj.weight')).toEqual(roundTrip);
      expect(file.entry('mask').dtype).toBe('I64');
    });
  });

  it('--key trainer.var_wo_ddp with --only', async () => {
    const out = join(dir, 'star.safetensors');
    await run('convert', join(pthDir, 'star_snapshot.pth'), out, '--key', 'trainer.var_wo_ddp', '--only', 'proj.', 'scale', '--quiet');
    await withOutput(out, async (file) => {
      expect(file.names().sort()).toEqual(['proj.bias', 'proj.weight', 'scale']);
      expect(file.entry('scale').shape).toEqual([]);
    });
  });

  it('shows progress on stderr', async () => {
    await run('convert', join(pthDir, 'flat_state.pth'), join(dir, 'progress.safetensors'));
    expect(stderr).toMatch(/convert: [\d.]+%/);
    expect(stdout).toBe('');
  });

  it('a forbidden global fails and leaves no output and no temporary file', async () => {
    const before = await readdir(dir);
    const out = join(dir, 'never.safetensors');
    await expect(run('convert', join(pthDir, 'forbidden_global.pth'), out)).rejects.toThrow(/forbidden global "datetime\.date"/);
    expect(existsSync(out)).toBe(false);
    expect(await readdir(dir)).toEqual(before);
  });

  it('a truncated input fails at open and leaves no output', async () => {
    const src = join(dir, 'corrupt-src.safetensors');
    await copyFile(join(dir, 'mixed.safetensors'), src);
    await truncate(src, (await readFile(src)).byteLength - 4);
    const out = join(dir, 'corrupt-out.safetensors');
    const err = await run('convert', src, out).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WeightsError);
    expect(String(err)).toMatch(/corrupt-src\.safetensors, tensor ".*", byte offset \d+/);
    expect(existsSync(out)).toBe(false);
  });

  it('an input that shrinks halfway through the conversion leaves no output and no temporary file', async () => {
    const src = join(dir, 'shrinking.safetensors');
    await copyFile(join(dir, 'mixed.safetensors'), src);
    const out = join(dir, 'shrinking-out.safetensors');
    const before = await readdir(dir);
    let shrunk = false;
    const err = await convertCheckpoint(src, out, {
      chunkBytes: 8,
      onProgress: (p) => {
        if (!shrunk && p.index === 3) {
          shrunk = true;
          truncateSync(src, 200);
        }
      },
    }).catch((e: unknown) => e);
    expect(shrunk).toBe(true);
    expect(err).toBeInstanceOf(WeightsError);
    expect(String(err)).toMatch(/shrinking\.safetensors, tensor ".*", byte offset \d+: file ends early/);
    expect(existsSync(out)).toBe(false);
    expect(await readdir(dir)).toEqual(before);
  });

  it('refuses to overwrite its input and rejects unknown dtypes', async () => {
    const path = join(dir, 'mixed.safetensors');
    await expect(run('convert', path, path)).rejects.toThrow(/overwrite the input/);
    await expect(run('convert', path, join(dir, 'x.safetensors'), '--dtype', 'int4')).rejects.toThrow(/unknown target dtype "int4"/);
    expect(existsSync(join(dir, 'x.safetensors'))).toBe(false);
  });
});

describe('inspect', () => {
  it('--json on the t5-tiny folder', async () => {
    await run('inspect', fixture('t5-tiny'), '--json');
    const report = JSON.parse(stdout);
    expect(report).toMatchObject({ kind: 't5-encoder', depth: 3, width: 64, heads: 4, format: 'sharded-safetensors', tensors: 47 });
  });

  it('--json on an Infinity model file', async () => {
    const report = JSON.parse(await inspectCommand(fixture('infinity-tiny', 'model.safetensors'), { json: true }));
    expect(report).toMatchObject({ kind: 'infinity', depth: 4, width: 256, heads: 2, chunks: 2, bits: 32, patchify: false, text_width: 256 });
    expect(report.dtypes.BF16.tensors).toBe(106);
  });

  it('--json on a fixture folder lists its components', async () => {
    const report = JSON.parse(await inspectCommand(fixture('star-tiny'), { json: true }));
    expect(report.components.map((c: { kind: string }) => c.kind).sort()).toEqual(['star', 'star-vqvae', 'unknown']);
  });

  it('a .pth with --key', async () => {
    const report = JSON.parse(await inspectCommand(join(pthDir, 'star_snapshot.pth'), { json: true, key: 'trainer.var_wo_ddp' }));
    expect(report).toMatchObject({ format: 'pth', tensors: 6, kind: 'unknown' });
  });

  it('human-readable output', async () => {
    await run('inspect', fixture('clip-tiny', 'text_encoder'));
    expect(stdout).toMatch(/kind: +clip-text/);
    expect(stdout).toMatch(/tensors: 52, .*F32 52/);
  });

  it('a truncated file fails (non-zero exit) naming file, tensor and offset', async () => {
    const copy = join(dir, 'truncated-vae.safetensors');
    await copyFile(fixture('star-tiny', 'vae.safetensors'), copy);
    await truncate(copy, 5_000_000);
    const err = await run('inspect', copy, '--json').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WeightsError);
    expect(String(err)).toMatch(/truncated-vae\.safetensors, tensor "[^"]+", byte offset \d+: data .* extends beyond the end of the file/);
    expect(stdout).toBe('');
  });
});

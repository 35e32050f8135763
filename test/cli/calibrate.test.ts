// `stagevar calibrate` on the infinity-tiny weights (size 256, scales 5 and 6 stand in for the refinement
// stage): writes a table and a policy file that `--policy` accepts; bad flags fail before the GPU.

import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { calibrateCommand, type CalibrateFlags } from '../../cli/commands/calibrate.js';
import { openSafetensors } from '../../model/weights/safetensors.js';
import { writeSafetensors } from '../../model/weights/safetensors_writer.js';
import { loadPolicy } from '../../sampler/policy.js';
import { checkPolicyFlags } from '../../sampler/policy_cli.js';
import { scaleSchedule } from '../../sampler/schedule.js';
import { fixture } from '../helpers.js';

const dir = fixture('infinity-tiny');
let scratch: string;
let flags: CalibrateFlags;

beforeAll(async () => {
  scratch = await mkdtemp(join(tmpdir(), 'stagevar-calibrate-'));
  const golden = await openSafetensors(join(dir, 'golden.safetensors'));
  const kv = await golden.readTensorF32('text.kv_compact');
  await golden.close();
  const features = join(scratch, 'features.safetensors');
  await writeSafetensors(features, [
    { name: 'features', dtype: 'F32', shape: [7, 256], data: kv },
    { name: 'lens', dtype: 'I32', shape: [2], data: new Int32Array([3, 4]) },
  ]);
  flags = {
    model: join(dir, 'model.safetensors'), vae: join(dir, 'vae.safetensors'), textFeatures: features, size: '256', ratio: '1:1', cfg: '3', tau: '1', seed: '5',
    scales: '5,6', alpha: '0.9,0.99', branch: 'uncond', out: join(scratch, 'policy.json'), table: join(scratch, 'table.json'),
  };
});

afterAll(async () => {
  await rm(scratch, { recursive: true, force: true });
});

describe('stagevar calibrate', () => {
  it('writes a rank table and a policy file that --policy takes', async () => {
    const spy = vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
    try {
      await calibrateCommand(flags);
    } finally {
      spy.mockRestore();
    }
    const table = JSON.parse(await readFile(flags.table!, 'utf8'));
    expect(table.images).toBe(2);
    expect(Object.keys(table.rank_ratio)).toEqual(['0.9', '0.99']);
    expect(Object.keys(table.rank_ratio['0.9'])).toEqual(['5', '6']);
    const policy = await loadPolicy(flags.out!);
    expect(policy.scales[6]).toMatchObject({ cfg: 0, tokens: { kind: 'rp', ratios: table.rank_ratio['0.9']['6'] } });
    const checked = await checkPolicyFlags({ policy: flags.out! }, { schedule: scaleSchedule(1, '0.06M'), cfg: 3, tau: 1, chunks: 2, depth: 4 });
    expect(checked.plans[5].branches).toBe('uncond');
    expect(checked.plans[6].tokens).toMatchObject({ kind: 'random-projection' });
  });

  it.each([
    [{ alpha: '1.5' }, /--alpha 1.5 must be in \(0, 1\]/],
    [{ scales: '9' }, /--scales: 9 is not a scale index 1…6 of size 256/],
    [{ scales: undefined }, /size 256 has no refinement-stage scale/],
    [{ branch: 'both' }, /--branch must be uncond or cond/],
    [{ cfg: '1' }, /--branch uncond needs guidance/],
  ])('rejects %j before the GPU', async (change, message) => {
    await expect(calibrateCommand({ ...flags, ...change } as CalibrateFlags)).rejects.toThrow(message);
  });
});

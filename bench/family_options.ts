// Flags of the `infinity` and `load8b` bench families. Defaults fit lavapipe (a few GFLOP/s, minutes);
// `--full` selects the released sizes for a real GPU.
//
// infinity:  --family 2b|8b (default 2b)       2B: 32 bits per token; 8B: 14-bit VAE × 2×2 patchify = 56 bits
//            --width C --depth L --heads H     default 512, 4 (2B) / 5 (8B), C/128; depth must be a multiple
//                                              of the family's layers per block chunk (4 / 5)
//            --full                            the released size: 2B 2048/32/16, 8B 3584/40/28, and --size 1024,
//                                              --vae-ch 128, --vae-sizes 1024 unless given
//            --size 256|512|768|1024           schedule 0.06M / 0.25M / 0.60M / 1M (default 512 = 0.25M)
//            --ratio H:W (1:1)  --batch B (1)  --no-cfg (default: CFG, 2·B rows)  --text-tokens N (32)
//            --linear-dtype f16|bf16|f32 (f16) --runs N (1 timed pass after a warm-up)
//            --vae-ch N (32; upstream 128)     --vae-sizes 256 (output sizes, e.g. 256,512)  --vae-runs N (1)  --no-decoder
// policies:  --size 256|512|768|1024 (1024)    --ratio H:W  --seed N (1)  --cfg X  --tau X (default: the Engine's)
//  (--e2e)    --policies a,b (stagevar,fastvar; vanilla always first)  --alpha A  --warmup N (1)  --runs N (3)
//            --max-seconds S                   fewer timed runs (≥ 1) if vanilla's first generation says they would not fit
//            --model M --vae V [--text-encoder T]   real files (default: the built-in demo model)
//            --synthetic 2b|8b                 random weights at the family's real names and shapes, random text
//                                              features; with --full the released size (2B 2048/32/16, 8B
//                                              3584/40/28) and the real decoder (--vae-ch 128, --vae-blocks 3),
//                                              else --width (512) --depth (chunk) --heads (C/128), --vae-ch 32;
//                                              --linear-dtype f16|bf16|f32 (f16)  --text-tokens N (30)
//                                              --activations f32|f16 --cache-dtype f32|f16 (f32: the reference path)
//                                              --vae-blocks N (3; fewer = a cheaper decoder for dry runs, 0 =
//                                              width ch everywhere and one ResBlock, the demo decoder's shape)
// load8b:    --chunks N (1 of 8 block chunks)  --shards N (4)  --dtype f32|bf16 (f32, as released)
//            --linear-dtype f16|bf16|f32 (f16) --dir DIR (default: a temp folder; the files are deleted after)

import { arg, choiceArg, countArg, hasFlag, intArg, intListArg, numberArg } from './args.js';
import type { InfinityBenchOptions } from './infinity.js';
import type { Load8bOptions } from './load8b.js';
import type { PolicyBenchOptions } from './policies.js';
import { FULL_SIZE, type Family } from './synthetic_infinity.js';

const LINEAR = ['f16', 'bf16', 'f32'] as const;

export function infinityOptions(): InfinityBenchOptions {
  const family: Family = choiceArg('--family', ['2b', '8b'] as const, '2b');
  const full = hasFlag('--full');
  const real = FULL_SIZE[family];
  const width = intArg('--width', full ? real.width : 512);
  const size = Number(choiceArg('--size', ['256', '512', '768', '1024'] as const, full ? '1024' : '512'));
  return {
    family,
    width,
    depth: intArg('--depth', full ? real.depth : real.layersPerChunk),
    heads: intArg('--heads', full ? real.heads : Math.max(1, Math.round(width / 128))),
    size,
    ratio: arg('--ratio') ?? '1:1',
    batch: intArg('--batch', 1),
    cfg: !hasFlag('--no-cfg'),
    textTokens: intArg('--text-tokens', 32),
    linearDtype: choiceArg('--linear-dtype', LINEAR, 'f16'),
    runs: intArg('--runs', 1),
    decoder: hasFlag('--no-decoder')
      ? null
      : { ch: intArg('--vae-ch', full ? 128 : 32), sizes: intListArg('--vae-sizes', full ? [1024] : [256]), runs: intArg('--vae-runs', 1) },
  };
}

export function policiesOptions(): PolicyBenchOptions {
  const o: PolicyBenchOptions = {
    size: Number(choiceArg('--size', ['256', '512', '768', '1024'] as const, '1024')),
    warmup: countArg('--warmup', 1),
    runs: intArg('--runs', 3),
  };
  const set = <K extends keyof PolicyBenchOptions>(key: K, value: PolicyBenchOptions[K] | undefined) => {
    if (value !== undefined) o[key] = value;
  };
  set('ratio', arg('--ratio'));
  set('seed', arg('--seed') === undefined ? undefined : intArg('--seed', 1));
  set('cfg', numberArg('--cfg'));
  set('tau', numberArg('--tau'));
  set('policies', arg('--policies')?.split(','));
  set('alpha', arg('--alpha'));
  set('prompt', arg('--prompt'));
  set('budgetMs', arg('--max-seconds') === undefined ? undefined : intArg('--max-seconds', 1) * 1000);
  const synthetic = arg('--synthetic');
  if (synthetic !== undefined) {
    if (arg('--model') !== undefined) throw new Error('bench: give --synthetic or --model, not both');
    const family: Family = choiceArg('--synthetic', ['2b', '8b'] as const, '2b');
    const full = hasFlag('--full');
    const real = FULL_SIZE[family];
    const width = intArg('--width', full ? real.width : 512);
    o.synthetic = {
      family,
      width,
      depth: intArg('--depth', full ? real.depth : real.layersPerChunk),
      heads: intArg('--heads', full ? real.heads : Math.max(1, Math.round(width / 128))),
      linearDtype: choiceArg('--linear-dtype', LINEAR, 'f16'),
      textTokens: intArg('--text-tokens', 30),
      vaeCh: intArg('--vae-ch', full ? 128 : 32),
      vaeBlocks: countArg('--vae-blocks', 3),
    };
    const activations = arg('--activations') === undefined ? undefined : choiceArg('--activations', ['f32', 'f16'] as const, 'f32');
    const cacheDtype = arg('--cache-dtype') === undefined ? undefined : choiceArg('--cache-dtype', ['f32', 'f16'] as const, 'f32');
    if (activations) o.synthetic.activations = activations;
    if (cacheDtype) o.synthetic.cacheDtype = cacheDtype;
  } else if (arg('--model') !== undefined) {
    set('model', arg('--model'));
    set('vae', arg('--vae'));
    set('textEncoder', arg('--text-encoder'));
  }
  return o;
}

export function load8bOptions(): Load8bOptions {
  const dtype = choiceArg('--dtype', ['f32', 'bf16'] as const, 'f32');
  const dir = arg('--dir');
  return {
    chunks: intArg('--chunks', 1),
    shards: intArg('--shards', 4),
    dtype: dtype === 'f32' ? 'F32' : 'BF16',
    linearDtype: choiceArg('--linear-dtype', LINEAR, 'f16'),
    ...(dir ? { dir } : {}),
  };
}

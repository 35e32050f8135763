import { afterAll, describe, it } from 'vitest';
import { binary, binaryRef, type BinaryOp, unary, unaryRef, type UnaryOp } from '../../kernels/elementwise.js';
import { expectClose, poisoned, randomArray, releaseTestGpu, rng, runSeed, testGpu } from '../helpers.js';

afterAll(releaseTestGpu);

// Each op is a handful of f32 operations (tanh/erf approximations included, ≤ 2e-7 relative),
// so 1e-5 relative + 1e-6 absolute (for outputs near zero) bounds the rounding.
describe(`elementwise (seed ${runSeed})`, () => {
  const sizes = [1, 7, 255, 256, 257, 100_003];
  const unaries: UnaryOp[] = ['gelu_tanh', 'gelu_erf', 'silu', 'scale', 'clamp'];
  for (const op of unaries) {
    it.each(sizes)(`${op} on %i elements`, async (n) => {
      const gpu = await testGpu();
      const rand = rng(runSeed + n);
      const x = randomArray(n, rand, -9, 9);
      const out = poisoned(gpu, [n]);
      const alpha = op === 'clamp' ? 4.5 : -1.75; // clamp's bound must be positive; ±9 inputs hit both sides
      unary(gpu, op, gpu.upload(x, [n], 'f32'), { alpha, out });
      expectClose(await out.read(), unaryRef(op, x, alpha), { what: op, rtol: 1e-5, atol: 1e-6 });
    });
  }
  const binaries: BinaryOp[] = ['add', 'mul'];
  for (const op of binaries) {
    it.each([
      [[1], [1]],
      [[5, 33], [33]],
      [[3, 7, 129], [7, 129]],
      [[1001, 3], [1001, 3]],
    ])(`${op} %j with %j`, async (ashape, bshape) => {
      const gpu = await testGpu();
      const rand = rng(runSeed + ashape.length);
      const na = ashape.reduce((a, b) => a * b, 1);
      const nb = bshape.reduce((a, b) => a * b, 1);
      const a = randomArray(na, rand);
      const b = randomArray(nb, rand);
      const out = poisoned(gpu, ashape);
      binary(gpu, op, gpu.upload(a, ashape, 'f32'), gpu.upload(b, bshape, 'f32'), { alpha: 0.5, beta: -2, out });
      expectClose(await out.read(), binaryRef(op, a, b, 0.5, -2), { what: op });
    });
  }
});

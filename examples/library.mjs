// Library use: build an Engine, load the built-in demo model (or your Infinity weights), generate, save.
//   node examples/library.mjs [out.png]
// With real weights: await engine.loadInfinity({ model, vae, textEncoder }) and pass { prompt } instead.
import { Engine, encodePng } from 'stagevar';
import { writeFile } from 'node:fs/promises';

const engine = await Engine.create();
try {
  await engine.loadDemo();
  const abort = new AbortController();
  const result = await engine.generate({
    prompt: 'a lighthouse at dawn',
    seed: 7,
    size: 256,
    signal: abort.signal,
    onProgress: (p) => {
      if (p.phase === 'scale') console.error(`scale ${p.stats.scale + 1}/${p.scales}: ${p.stats.tokens} tokens, ${p.stats.ms.toFixed(0)} ms`);
    },
  });
  const [image] = result.images;
  await writeFile(process.argv[2] ?? 'library.png', encodePng(image));
  console.log(`${image.width}×${image.height} in ${result.stats.totalMs.toFixed(0)} ms, peak GPU memory ${(result.stats.peakBytes / 2 ** 20).toFixed(1)} MiB`);
} finally {
  engine.dispose();
}

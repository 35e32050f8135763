// `stagevar info`: what GPU the engine would use, with its limits and features.
import type { Command } from 'commander';
import { Gpu } from '../../engine/device.js';

export function register(program: Command): void {
  program
    .command('info')
    .description('print the WebGPU adapter, backend, limits and features the engine uses')
    .option('--backend <name>', 'Dawn backend (vulkan, metal, d3d12, …); env STAGEVAR_BACKEND')
    .option('--adapter <name>', 'substring of the adapter name to use; env STAGEVAR_ADAPTER')
    .option('--json', 'print JSON')
    .action(async (opts: { backend?: string; adapter?: string; json?: boolean }) => {
      const gpu = await Gpu.create({ backend: opts.backend, adapter: opts.adapter });
      try {
        const limits: Record<string, number> = {};
        for (const key of LIMIT_KEYS) limits[key] = (gpu.limits as unknown as Record<string, number>)[key];
        const report = { adapter: gpu.adapter, tuning: gpu.tuning, subgroupMinSize: gpu.subgroupMinSize, features: [...gpu.features].sort(), limits };
        if (opts.json) {
          process.stdout.write(JSON.stringify(report, null, 2) + '\n');
          return;
        }
        const a = gpu.adapter;
        const lines = [
          `adapter:   ${a.description || a.device} (${a.vendor}${a.architecture ? `, ${a.architecture}` : ''})`,
          `backend:   ${a.backend}`,
          `features:  ${report.features.join(', ')}`,
          `f16 math:  ${gpu.hasF16 ? 'yes (shader-f16)' : 'no (f16/bf16 weights still load, widened to f32)'}`,
          `kernels:   ${gpu.tuning === 'gpu' ? 'GPU-tuned (workgroup-memory tiles)' : 'CPU-tuned (register blocks, subgroup shuffles)'}${a.software ? ', software adapter' : ''}; env STAGEVAR_KERNELS=cpu|gpu overrides`,
          'limits:',
          ...Object.entries(limits).map(([k, v]) => `  ${k.padEnd(36)} ${formatLimit(k, v)}`),
        ];
        process.stdout.write(lines.join('\n') + '\n');
      } finally {
        gpu.destroy();
      }
    });
}

const LIMIT_KEYS = [
  'maxBufferSize',
  'maxStorageBufferBindingSize',
  'maxComputeWorkgroupStorageSize',
  'maxComputeInvocationsPerWorkgroup',
  'maxComputeWorkgroupSizeX',
  'maxComputeWorkgroupSizeY',
  'maxComputeWorkgroupSizeZ',
  'maxComputeWorkgroupsPerDimension',
  'maxStorageBuffersPerShaderStage',
  'minStorageBufferOffsetAlignment',
  'minUniformBufferOffsetAlignment',
];

function formatLimit(key: string, v: number): string {
  return key.endsWith('Size') && v >= 1 << 20 ? `${v} (${(v / 2 ** 20).toFixed(0)} MiB)` : String(v);
}

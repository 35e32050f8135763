export interface BenchRow { kernel: string; shape: string; dtype: string; ms: number; gflops: number; gbps: number }

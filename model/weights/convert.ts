// Checkpoint → safetensors conversion (`stagevar convert`): reads any source the Checkpoint view
// understands (.pth zip, safetensors, sharded), optionally picks a sub-dictionary and re-types float
// tensors, and streams everything into an atomically written safetensors file. Memory stays bounded
// by one chunk (plus its converted copy and the writer's buffer), whatever the checkpoint size.

import { resolve } from 'node:path';
import { Checkpoint, type OpenCheckpointOptions } from './checkpoint.js';
import { convertFloatBytes, isConvertibleFloat, type Dtype, type FloatDtype } from './dtype_convert.js';
import { WeightsError } from './errors.js';
import { writeSafetensors, type TensorToWrite } from './safetensors_writer.js';

export interface ConvertOptions extends OpenCheckpointOptions {
  /** Target dtype of float tensors; integer and bool tensors always keep theirs. Default: keep. */
  dtype?: FloatDtype;
  chunkBytes?: number;
  onProgress?: (progress: ConvertProgress) => void;
}

export interface ConvertProgress {
  tensor: string;
  index: number;
  count: number;
  /** Bytes written to the output so far and in total. */
  bytesWritten: number;
  totalBytes: number;
}

export interface ConvertResult {
  tensors: number;
  bytesRead: number;
  bytesWritten: number;
  dtypes: Partial<Record<Dtype, number>>;
}

/** The dtype a tensor gets in the output. */
export function targetDtype(source: Dtype, requested: FloatDtype | undefined): Dtype {
  return requested !== undefined && isConvertibleFloat(source) ? requested : source;
}

export async function convertCheckpoint(input: string, output: string, options: ConvertOptions = {}): Promise<ConvertResult> {
  if (resolve(input) === resolve(output)) {
    throw new WeightsError('output would overwrite the input', { code: 'bad-argument', file: output });
  }
  const checkpoint = await Checkpoint.open(input, options);
  try {
    const infos = checkpoint.tensors();
    if (infos.length === 0) {
      throw new WeightsError('nothing to convert: no tensors selected', { code: 'missing-tensor', file: input });
    }
    const dtypes: Partial<Record<Dtype, number>> = {};
    let bytesRead = 0;
    const tensors: TensorToWrite[] = infos.map((info) => {
      const dtype = targetDtype(info.dtype, options.dtype);
      dtypes[dtype] = (dtypes[dtype] ?? 0) + 1;
      bytesRead += info.byteLength;
      return {
        name: info.name,
        dtype,
        shape: info.shape,
        data: async (emit) => {
          // Chunks hold whole elements, so each one converts on its own.
          for await (const chunk of checkpoint.tensorChunks(info.name, { chunkBytes: options.chunkBytes })) {
            await emit(dtype === info.dtype ? chunk.bytes : convertFloatBytes(info.dtype, dtype as FloatDtype, chunk.bytes));
          }
        },
      };
    });
    let bytesWritten = 0;
    await writeSafetensors(output, tensors, {
      metadata: { format: 'pt' },
      onProgress: (p) => {
        bytesWritten = p.totalBytes;
        options.onProgress?.(p);
      },
    });
    return { tensors: infos.length, bytesRead, bytesWritten, dtypes };
  } finally {
    await checkpoint.close();
  }
}

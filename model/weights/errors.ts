// One error type for everything that can go wrong while reading or writing weight files, so callers
// (CLI, model builders, tests) can tell "this file is bad" apart from programming errors, and so
// every message names where the problem is: the file, the tensor and the byte offset when known.

export type WeightsErrorCode =
  | 'io' // the operating system refused or the file ended early
  | 'truncated' // a byte range lies (partly) beyond the end of the file
  | 'out-of-range' // a view or offset points outside its storage
  | 'bad-header' // safetensors header: length, JSON or structure
  | 'unknown-dtype'
  | 'shape-mismatch' // shape × item size ≠ byte range, or a tensor has another shape than expected
  | 'overlap' // two tensors share bytes
  | 'missing-tensor'
  | 'duplicate-tensor'
  | 'bad-zip'
  | 'compressed-entry'
  | 'bad-pickle'
  | 'forbidden-global'
  | 'unsupported'
  | 'bad-argument';

export interface WeightsErrorDetails {
  code: WeightsErrorCode;
  file?: string;
  tensor?: string;
  /** Absolute byte offset in `file` where the problem was found. */
  offset?: number;
  cause?: unknown;
}

export class WeightsError extends Error {
  readonly code: WeightsErrorCode;
  readonly file: string | undefined;
  readonly tensor: string | undefined;
  readonly offset: number | undefined;

  constructor(message: string, details: WeightsErrorDetails) {
    super(formatWeightsMessage(message, details), details.cause === undefined ? undefined : { cause: details.cause });
    this.name = 'WeightsError';
    this.code = details.code;
    this.file = details.file;
    this.tensor = details.tensor;
    this.offset = details.offset;
  }
}

function formatWeightsMessage(message: string, d: WeightsErrorDetails): string {
  const where: string[] = [];
  if (d.file !== undefined) where.push(d.file);
  if (d.tensor !== undefined) where.push(`tensor "${d.tensor}"`);
  if (d.offset !== undefined) where.push(`byte offset ${d.offset}`);
  return where.length > 0 ? `${where.join(', ')}: ${message}` : message;
}

/** Shapes print as `[2, 3]`, the way they appear in error messages next to each other. */
export function formatShape(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

// A data-only unpickler for the subset of Python pickles that torch.save writes for state dicts.
//
// Python's pickle can call any importable function; loading an untrusted checkpoint with it runs
// arbitrary code. Here a GLOBAL is only ever looked up in a fixed allow-list of names that torch.save
// emits (OrderedDict, the tensor rebuild helpers, storage classes, …); each allowed callable has a
// TypeScript implementation that builds plain data, and anything else stops the load with an error
// naming the global. Unpickling never recurses, so hostile nesting cannot overflow the stack.

import type { Dtype } from './dtype_convert.js';
import { WeightsError } from './errors.js';

// ---------------------------------------------------------------- the values a pickle can produce

export type PyKey = string | number | bigint | boolean | null;

export type PyValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | PyValue[]
  | PyTuple
  | PyDict
  | PySet
  | PyGlobal
  | TorchStorageRef
  | TorchTensorRef;

export class PyTuple {
  constructor(readonly items: PyValue[]) {}
}

/** dict and OrderedDict; insertion order is kept, as in Python. */
export class PyDict {
  readonly map = new Map<PyKey, PyValue>();
  /** Instance attributes set by BUILD (a state dict's `_metadata`); kept but not interpreted. */
  attributes: PyValue = null;
}

export class PySet {
  constructor(readonly items: PyValue[]) {}
}

/** A reference to an allow-listed global that is data, not code (a storage class, torch.float16…). */
export class PyGlobal {
  constructor(
    readonly module: string,
    readonly name: string,
  ) {}
  get qualifiedName(): string {
    return `${this.module}.${this.name}`;
  }
}

/** A storage as the persistent id names it; pth.ts maps it to a zip entry. */
export class TorchStorageRef {
  constructor(
    readonly dtype: Dtype,
    readonly key: string,
    readonly location: string,
    /** Number of elements of `dtype` in the storage. */
    readonly numel: number,
  ) {}
}

/** A tensor view over a storage: element offset, sizes and strides (in elements). */
export class TorchTensorRef {
  constructor(
    readonly storage: TorchStorageRef,
    readonly storageOffset: number,
    readonly shape: number[],
    readonly stride: number[],
    readonly requiresGrad: boolean,
    readonly isParameter: boolean,
  ) {}
}

// ---------------------------------------------------------------- the allow-list

/** Storage classes of `torch.save` → element type. Complex and quantized storages are not listed. */
export const TORCH_STORAGE_DTYPES: Readonly<Record<string, Dtype>> = {
  DoubleStorage: 'F64',
  FloatStorage: 'F32',
  HalfStorage: 'F16',
  BFloat16Storage: 'BF16',
  LongStorage: 'I64',
  IntStorage: 'I32',
  ShortStorage: 'I16',
  CharStorage: 'I8',
  ByteStorage: 'U8',
  BoolStorage: 'BOOL',
};

const TORCH_DTYPE_NAMES = [
  'float64', 'float32', 'float16', 'bfloat16', 'int64', 'int32', 'int16', 'int8', 'uint8', 'bool',
  'double', 'float', 'half', 'long', 'int', 'short',
];

/** Globals that are data only: referencing them is fine, calling them is an error. */
const MARKER_GLOBALS = new Set<string>([
  ...Object.keys(TORCH_STORAGE_DTYPES).map((n) => `torch.${n}`),
  ...TORCH_DTYPE_NAMES.map((n) => `torch.${n}`),
  'torch.Tensor',
  'torch._tensor.Tensor',
  'torch.nn.parameter.Parameter',
]);

interface CallContext {
  fail(message: string): never;
}

type PyCallable = (args: PyValue[], context: CallContext) => PyValue;

function expectInt(value: PyValue, what: string, context: CallContext): number {
  if (typeof value === 'number' && Number.isSafeInteger(value) && value >= 0) return value;
  return context.fail(`${what} must be a non-negative integer, got ${describe(value)}`);
}

function expectIntTuple(value: PyValue, what: string, context: CallContext): number[] {
  const items = value instanceof PyTuple ? value.items : Array.isArray(value) ? value : undefined;
  if (!items) return context.fail(`${what} must be a tuple, got ${describe(value)}`);
  return items.map((v, i) => expectInt(v, `${what}[${i}]`, context));
}

function rebuildTensor(args: PyValue[], context: CallContext): TorchTensorRef {
  const [storage, offset, size, stride, requiresGrad] = args;
  if (!(storage instanceof TorchStorageRef)) {
    return context.fail(`tensor rebuild expects a storage, got ${describe(storage ?? null)}`);
  }
  if (args.length < 4) return context.fail(`tensor rebuild needs at least 4 arguments, got ${args.length}`);
  const shape = expectIntTuple(size!, 'size', context);
  const strides = expectIntTuple(stride!, 'stride', context);
  if (shape.length !== strides.length) {
    return context.fail(`size has ${shape.length} dims but stride has ${strides.length}`);
  }
  return new TorchTensorRef(storage, expectInt(offset!, 'storage_offset', context), shape, strides, requiresGrad === true, false);
}

function rebuildParameter(args: PyValue[], context: CallContext): TorchTensorRef {
  const data = args[0];
  if (!(data instanceof TorchTensorRef)) return context.fail(`parameter rebuild expects a tensor, got ${describe(data ?? null)}`);
  return new TorchTensorRef(data.storage, data.storageOffset, data.shape, data.stride, args[1] === true, true);
}

const CALLABLE_GLOBALS: Readonly<Record<string, PyCallable>> = {
  'collections.OrderedDict': (args, context) => {
    const dict = new PyDict();
    const items = args[0];
    if (items === undefined) return dict;
    const pairs = Array.isArray(items) ? items : items instanceof PyTuple ? items.items : undefined;
    if (!pairs) return context.fail(`OrderedDict expects a list of pairs, got ${describe(items)}`);
    for (const pair of pairs) {
      const kv = pair instanceof PyTuple ? pair.items : Array.isArray(pair) ? pair : undefined;
      if (!kv || kv.length !== 2) return context.fail('OrderedDict expects (key, value) pairs');
      dict.map.set(toKey(kv[0]!, context), kv[1]!);
    }
    return dict;
  },
  'torch._utils._rebuild_tensor_v2': rebuildTensor,
  'torch._utils._rebuild_tensor': rebuildTensor,
  'torch._utils._rebuild_parameter': rebuildParameter,
  'torch._utils._rebuild_parameter_with_state': rebuildParameter,
  // Tensors with Python attributes or of a Tensor subclass: (rebuild function, type, args, state).
  'torch._tensor._rebuild_from_type_v2': (args, context) => {
    const [func, , innerArgs] = args;
    if (!(func instanceof PyGlobal)) return context.fail(`_rebuild_from_type_v2 expects a function, got ${describe(func ?? null)}`);
    if (!(innerArgs instanceof PyTuple)) return context.fail('_rebuild_from_type_v2 expects an argument tuple');
    return callGlobal(func, innerArgs.items, context);
  },
  'torch.Size': (args, context) => new PyTuple(expectIntTuple(args[0] ?? new PyTuple([]), 'torch.Size', context)),
  'torch.device': (args) => (typeof args[0] === 'string' ? args[0] : 'cpu'),
  // Protocol 2 spells a Python 3 `bytes` object as _codecs.encode(text, 'latin1').
  '_codecs.encode': (args, context) => {
    const [text, encoding] = args;
    if (typeof text !== 'string' || (encoding !== 'latin1' && encoding !== 'latin-1')) {
      return context.fail('_codecs.encode is only allowed as (str, "latin1")');
    }
    const bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i) & 0xff;
    return bytes;
  },
};

function callGlobal(global: PyGlobal, args: PyValue[], context: CallContext): PyValue {
  const implementation = CALLABLE_GLOBALS[global.qualifiedName];
  if (!implementation) return context.fail(`global ${global.qualifiedName} is not callable here`);
  return implementation(args, context);
}

export function isAllowedGlobal(module: string, name: string): boolean {
  const qualified = `${module}.${name}`;
  return MARKER_GLOBALS.has(qualified) || Object.prototype.hasOwnProperty.call(CALLABLE_GLOBALS, qualified);
}

// ---------------------------------------------------------------- helpers

function describe(value: PyValue): string {
  if (value === null) return 'None';
  if (Array.isArray(value)) return 'list';
  if (value instanceof Uint8Array) return 'bytes';
  if (typeof value === 'object') return value.constructor.name;
  return typeof value;
}

/** Dict keys become JS primitives; tuple keys (rare) a text form, nested at most a few levels. */
function toKey(value: PyValue, context: CallContext, depth = 0): PyKey {
  if (value === null || typeof value !== 'object') return value;
  if (value instanceof PyTuple) {
    if (depth >= 8) return context.fail('dict key nested too deeply');
    return `(${value.items.map((v) => String(toKey(v, context, depth + 1))).join(', ')})`;
  }
  return context.fail(`unhashable dict key of type ${describe(value)}`);
}

// ---------------------------------------------------------------- the machine

export interface UnpickleOptions {
  /** Name used in error messages. */
  file: string;
  /** Byte position of the pickle inside `file`, so offsets in errors are absolute. */
  baseOffset?: number;
  /** Resolves BINPERSID ids (torch: storages). Without it a persistent id is an error. */
  persistentLoad?: (pid: PyValue, context: CallContext) => PyValue;
}

const MAX_LONG_BYTES = 64;

/** Unpickles `bytes` with the allow-list above. Throws WeightsError on anything else. */
export function unpickle(bytes: Uint8Array, options: UnpickleOptions): PyValue {
  const base = options.baseOffset ?? 0;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const latin1 = new TextDecoder('latin1');
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  let pos = 0;
  let opcodeAt = 0;
  let stack: PyValue[] = [];
  const marks: PyValue[][] = [];
  const memo = new Map<number, PyValue>();

  const fail = (message: string, code: 'bad-pickle' | 'forbidden-global' | 'unsupported' = 'bad-pickle'): never => {
    throw new WeightsError(`pickle: ${message}`, { code, file: options.file, offset: base + opcodeAt });
  };
  const context: CallContext = { fail: (message) => fail(message) };

  const need = (n: number): number => {
    if (n < 0 || pos + n > bytes.byteLength) fail(`opcode needs ${n} bytes but the pickle ends`);
    const at = pos;
    pos += n;
    return at;
  };
  const take = (n: number): Uint8Array => bytes.subarray(need(n), pos);
  const readU8 = (): number => view.getUint8(need(1));
  const readU16 = (): number => view.getUint16(need(2), true);
  const readU32 = (): number => view.getUint32(need(4), true);
  const readI32 = (): number => view.getInt32(need(4), true);
  const readU64 = (): number => {
    const value = view.getBigUint64(need(8), true);
    if (value > BigInt(bytes.byteLength)) fail(`length ${value} exceeds the pickle`);
    return Number(value);
  };
  const readLine = (): string => {
    const end = bytes.indexOf(0x0a, pos);
    if (end < 0) fail('unterminated text line');
    const line = latin1.decode(bytes.subarray(pos, end));
    pos = end + 1;
    return line;
  };
  const decodeUtf8 = (raw: Uint8Array): string => {
    try {
      return utf8.decode(raw);
    } catch {
      return fail('string is not valid UTF-8');
    }
  };

  const pop = (): PyValue => {
    if (stack.length === 0) fail('stack underflow');
    return stack.pop()!;
  };
  const top = (): PyValue => {
    if (stack.length === 0) fail('stack underflow');
    return stack[stack.length - 1]!;
  };
  const popMark = (): PyValue[] => {
    const items = stack;
    const previous = marks.pop();
    if (previous === undefined) fail('MARK missing');
    stack = previous!;
    return items;
  };
  const memoGet = (index: number): PyValue => {
    if (!memo.has(index)) fail(`memo entry ${index} missing`);
    return memo.get(index)!;
  };
  const intFromBytes = (raw: Uint8Array): number | bigint => {
    if (raw.byteLength > MAX_LONG_BYTES) fail(`integer of ${raw.byteLength} bytes`, 'unsupported');
    if (raw.byteLength === 0) return 0;
    let value = 0n;
    for (let i = raw.byteLength - 1; i >= 0; i--) value = (value << 8n) | BigInt(raw[i]!);
    if (raw[raw.byteLength - 1]! & 0x80) value -= 1n << BigInt(8 * raw.byteLength);
    return value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value;
  };
  const parseTextInt = (line: string): number | bigint | boolean => {
    if (line === '00') return false; // protocol 0 spells booleans as I00 / I01
    if (line === '01') return true;
    const digits = line.endsWith('L') ? line.slice(0, -1) : line;
    if (!/^[-+]?\d{1,40}$/.test(digits)) fail(`bad integer literal "${line}"`);
    const value = BigInt(digits);
    return value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value;
  };
  const resolveGlobal = (module: string, name: string): PyGlobal => {
    if (!isAllowedGlobal(module, name)) {
      fail(`forbidden global "${module}.${name}": only the globals torch.save uses for tensors and state dicts are allowed`, 'forbidden-global');
    }
    return new PyGlobal(module, name);
  };
  const call = (callee: PyValue, args: PyValue): PyValue => {
    if (!(callee instanceof PyGlobal)) return fail(`cannot call a ${describe(callee)}`);
    if (!(args instanceof PyTuple)) return fail(`call arguments must be a tuple, got ${describe(args)}`);
    return callGlobal(callee, args.items, context);
  };
  const setItems = (target: PyValue, items: PyValue[]): void => {
    if (!(target instanceof PyDict)) fail(`cannot set items on a ${describe(target)}`);
    if (items.length % 2 !== 0) fail('odd number of items for a dict');
    for (let i = 0; i < items.length; i += 2) (target as PyDict).map.set(toKey(items[i]!, context), items[i + 1]!);
  };
  const appendItems = (target: PyValue, items: PyValue[]): void => {
    // A loop, not push(...items): spreading a huge APPENDS batch would overflow the argument limit.
    const list = Array.isArray(target) ? target : target instanceof PySet ? target.items : undefined;
    if (!list) return fail(`cannot append to a ${describe(target)}`);
    for (const item of items) list.push(item);
  };

  while (true) {
    opcodeAt = pos;
    if (pos >= bytes.byteLength) fail('pickle ends without STOP');
    const op = bytes[pos++]!;
    switch (op) {
      case 0x80: {
        const protocol = readU8();
        if (protocol < 2 || protocol > 5) fail(`protocol ${protocol} is not supported (torch.save writes 2)`, 'unsupported');
        break;
      }
      case 0x95: // FRAME (protocol 4): only a read-ahead hint
        readU64();
        break;
      case 0x2e: // STOP
        if (stack.length !== 1) fail(`STOP with ${stack.length} values on the stack`);
        if (marks.length !== 0) fail('STOP inside an open MARK');
        return stack[0]!;
      case 0x28: // MARK
        marks.push(stack);
        stack = [];
        break;
      case 0x7d: // EMPTY_DICT
        stack.push(new PyDict());
        break;
      case 0x5d: // EMPTY_LIST
        stack.push([]);
        break;
      case 0x29: // EMPTY_TUPLE
        stack.push(new PyTuple([]));
        break;
      case 0x8f: // EMPTY_SET
        stack.push(new PySet([]));
        break;
      case 0x4e: // NONE
        stack.push(null);
        break;
      case 0x88:
        stack.push(true);
        break;
      case 0x89:
        stack.push(false);
        break;
      case 0x4a: // BININT
        stack.push(readI32());
        break;
      case 0x4b: // BININT1
        stack.push(readU8());
        break;
      case 0x4d: // BININT2
        stack.push(readU16());
        break;
      case 0x49: // INT (text)
        stack.push(parseTextInt(readLine()));
        break;
      case 0x4c: // LONG (text)
        stack.push(parseTextInt(readLine()));
        break;
      case 0x8a: // LONG1
        stack.push(intFromBytes(take(readU8())));
        break;
      case 0x8b: {
        const length = readI32();
        if (length < 0) fail('negative LONG4 length');
        stack.push(intFromBytes(take(length)));
        break;
      }
      case 0x47: // BINFLOAT, big-endian
        stack.push(view.getFloat64(need(8), false));
        break;
      case 0x46: {
        const value = Number(readLine());
        if (Number.isNaN(value)) fail('bad float literal');
        stack.push(value);
        break;
      }
      case 0x58: // BINUNICODE
        stack.push(decodeUtf8(take(readU32())));
        break;
      case 0x8c: // SHORT_BINUNICODE
        stack.push(decodeUtf8(take(readU8())));
        break;
      case 0x8d: // BINUNICODE8
        stack.push(decodeUtf8(take(readU64())));
        break;
      case 0x54: {
        // BINSTRING (Python 2 str): bytes taken as latin-1 text
        const length = readI32();
        if (length < 0) fail('negative BINSTRING length');
        stack.push(latin1.decode(take(length)));
        break;
      }
      case 0x55: // SHORT_BINSTRING
        stack.push(latin1.decode(take(readU8())));
        break;
      case 0x42: // BINBYTES
        stack.push(take(readU32()).slice());
        break;
      case 0x43: // SHORT_BINBYTES
        stack.push(take(readU8()).slice());
        break;
      case 0x8e: // BINBYTES8
      case 0x96: // BYTEARRAY8
        stack.push(take(readU64()).slice());
        break;
      case 0x74: {
        // TUPLE. popMark() replaces `stack`, so take the items before touching it.
        const items = popMark();
        stack.push(new PyTuple(items));
        break;
      }
      case 0x85:
        stack.push(new PyTuple([pop()]));
        break;
      case 0x86: {
        const b = pop();
        const a = pop();
        stack.push(new PyTuple([a, b]));
        break;
      }
      case 0x87: {
        const c = pop();
        const b = pop();
        const a = pop();
        stack.push(new PyTuple([a, b, c]));
        break;
      }
      case 0x6c: {
        // LIST
        const items = popMark();
        stack.push(items);
        break;
      }
      case 0x64: {
        // DICT
        const items = popMark();
        const dict = new PyDict();
        setItems(dict, items);
        stack.push(dict);
        break;
      }
      case 0x91: {
        // FROZENSET
        const items = popMark();
        stack.push(new PySet(items));
        break;
      }
      case 0x61: {
        // APPEND
        const item = pop();
        appendItems(top(), [item]);
        break;
      }
      case 0x65: {
        // APPENDS
        const items = popMark();
        appendItems(top(), items);
        break;
      }
      case 0x90: {
        // ADDITEMS
        const items = popMark();
        appendItems(top(), items);
        break;
      }
      case 0x73: {
        // SETITEM
        const value = pop();
        const key = pop();
        setItems(top(), [key, value]);
        break;
      }
      case 0x75: {
        // SETITEMS
        const items = popMark();
        setItems(top(), items);
        break;
      }
      case 0x30: // POP
        if (stack.length > 0) stack.pop();
        else popMark();
        break;
      case 0x31: // POP_MARK
        popMark();
        break;
      case 0x32: // DUP
        stack.push(top());
        break;
      case 0x71: // BINPUT
        memo.set(readU8(), top());
        break;
      case 0x72: // LONG_BINPUT
        memo.set(readU32(), top());
        break;
      case 0x70: // PUT (text)
        memo.set(Number(parseTextInt(readLine())), top());
        break;
      case 0x94: // MEMOIZE
        memo.set(memo.size, top());
        break;
      case 0x68: // BINGET
        stack.push(memoGet(readU8()));
        break;
      case 0x6a: // LONG_BINGET
        stack.push(memoGet(readU32()));
        break;
      case 0x67: // GET (text)
        stack.push(memoGet(Number(parseTextInt(readLine()))));
        break;
      case 0x63: {
        // GLOBAL "module\nname\n"
        const module = readLine();
        const name = readLine();
        stack.push(resolveGlobal(module, name));
        break;
      }
      case 0x93: {
        // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== 'string' || typeof name !== 'string') fail('STACK_GLOBAL needs two strings');
        stack.push(resolveGlobal(module as string, name as string));
        break;
      }
      case 0x52: {
        // REDUCE
        const args = pop();
        const callee = pop();
        stack.push(call(callee, args));
        break;
      }
      case 0x81: {
        // NEWOBJ: cls.__new__(cls, *args) — only for allow-listed classes, implemented as a call
        const args = pop();
        const cls = pop();
        stack.push(call(cls, args));
        break;
      }
      case 0x92: {
        // NEWOBJ_EX
        const kwargs = pop();
        const args = pop();
        const cls = pop();
        if (!(kwargs instanceof PyDict) || kwargs.map.size > 0) fail('NEWOBJ_EX with keyword arguments');
        stack.push(call(cls, args));
        break;
      }
      case 0x62: {
        // BUILD: __setstate__ — kept as inert attributes on dicts, ignored on tensors
        const state = pop();
        const target = top();
        if (target instanceof PyDict) target.attributes = state;
        else if (!(target instanceof TorchTensorRef)) fail(`BUILD on a ${describe(target)}`);
        break;
      }
      case 0x51: {
        // BINPERSID
        const pid = pop();
        if (!options.persistentLoad) fail('persistent id without a loader');
        stack.push(options.persistentLoad!(pid, context));
        break;
      }
      case 0x50: {
        // PERSID (text)
        const pid = readLine();
        if (!options.persistentLoad) fail('persistent id without a loader');
        stack.push(options.persistentLoad!(pid, context));
        break;
      }
      default:
        fail(`opcode 0x${op.toString(16).padStart(2, '0')} is not supported`, 'unsupported');
    }
  }
}

// ---------------------------------------------------------------- walking results

/** Looks a key up in a PyDict (string keys, then integer keys written as text). */
export function dictGet(dict: PyDict, key: string): PyValue | undefined {
  if (dict.map.has(key)) return dict.map.get(key);
  if (/^-?\d+$/.test(key)) {
    const numeric = Number(key);
    if (dict.map.has(numeric)) return dict.map.get(numeric);
  }
  return undefined;
}

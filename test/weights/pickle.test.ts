// The data-only unpickler: opcodes torch.save emits, the allow-list, and hostile input.
import { describe, expect, it } from 'vitest';
import { WeightsError } from '../../model/weights/errors.js';
import {
  PyDict,
  PyTuple,
  TorchStorageRef,
  TorchTensorRef,
  dictGet,
  unpickle,
  type PyValue,
} from '../../model/weights/pickle.js';
import { flattenTensors } from '../../model/weights/pth.js';

/** Emits pickle opcodes by hand. */
class PickleBuilder {
  private readonly out: number[] = [];
  raw(...bytes: number[]): this {
    for (const b of bytes) this.out.push(b);
    return this;
  }
  repeat(byte: number, count: number): this {
    for (let i = 0; i < count; i++) this.out.push(byte);
    return this;
  }
  text(s: string): this {
    for (const b of new TextEncoder().encode(s)) this.out.push(b);
    return this;
  }
  u32(n: number): this {
    return this.raw(n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff);
  }
  proto(n = 2): this {
    return this.raw(0x80, n);
  }
  str(s: string): this {
    const bytes = new TextEncoder().encode(s);
    this.raw(0x58).u32(bytes.byteLength);
    return this.raw(...bytes);
  }
  int(n: number): this {
    if (n >= 0 && n < 256) return this.raw(0x4b, n);
    return this.raw(0x4a).u32(n);
  }
  global(module: string, name: string): this {
    return this.raw(0x63).text(`${module}\n${name}\n`);
  }
  mark(): this {
    return this.raw(0x28);
  }
  tuple(): this {
    return this.raw(0x74);
  }
  emptyTuple(): this {
    return this.raw(0x29);
  }
  reduce(): this {
    return this.raw(0x52);
  }
  emptyDict(): this {
    return this.raw(0x7d);
  }
  setitem(): this {
    return this.raw(0x73);
  }
  bytes(): Uint8Array {
    return new Uint8Array(this.out);
  }
  stop(): Uint8Array {
    this.out.push(0x2e);
    return this.bytes();
  }
}

const load = (bytes: Uint8Array, persistentLoad?: (pid: PyValue) => PyValue): PyValue =>
  unpickle(bytes, { file: 'test.pkl', ...(persistentLoad ? { persistentLoad } : {}) });

function errorOf(fn: () => unknown): WeightsError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(WeightsError);
    return err as WeightsError;
  }
  throw new Error('expected an error');
}

describe('values', () => {
  it('reads scalars of every encoding', () => {
    const b = new PickleBuilder().proto().raw(0x5d); // a list of everything
    b.raw(0x4e, 0x61, 0x88, 0x61, 0x89, 0x61); // None, True, False
    b.raw(0x4b, 200, 0x61).raw(0x4d, 0x34, 0x12, 0x61).raw(0x4a).u32(-5 >>> 0).raw(0x61);
    b.raw(0x8a, 2, 0xff, 0x7f, 0x61); // LONG1 32767
    b.raw(0x8a, 1, 0xff, 0x61); // LONG1 -1
    b.raw(0x8a, 9, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x61); // 2^64 → bigint
    b.raw(0x47, 0x40, 0x09, 0x21, 0xfb, 0x54, 0x44, 0x2d, 0x18, 0x61); // BINFLOAT π (big-endian)
    b.str('héllo').raw(0x61);
    b.raw(0x8c, 2).text('ab').raw(0x61); // SHORT_BINUNICODE
    b.raw(0x43, 3, 1, 2, 3, 0x61); // SHORT_BINBYTES
    b.raw(0x49).text('01\n').raw(0x61); // protocol-0 True
    const value = load(b.stop()) as PyValue[];
    expect(value).toEqual([null, true, false, 200, 0x1234, -5, 32767, -1, 2n ** 64n, Math.PI, 'héllo', 'ab', new Uint8Array([1, 2, 3]), true]);
  });

  it('builds tuples, dicts and shares memoised objects', () => {
    const b = new PickleBuilder().proto().emptyDict().raw(0x71, 0); // BINPUT 0
    b.mark().str('a').raw(0x5d, 0x71, 1).str('b').raw(0x68, 1).str('t').int(1).int(2).raw(0x86).raw(0x75); // SETITEMS
    const dict = load(b.stop()) as PyDict;
    expect(dict).toBeInstanceOf(PyDict);
    expect(dictGet(dict, 'a')).toBe(dictGet(dict, 'b')); // same list object
    expect((dictGet(dict, 't') as PyTuple).items).toEqual([1, 2]);
  });

  it('calls OrderedDict and keeps BUILD state as inert attributes', () => {
    const b = new PickleBuilder().proto().global('collections', 'OrderedDict').emptyTuple().reduce();
    b.str('k').int(7).setitem();
    b.emptyDict().str('_metadata').emptyDict().setitem().raw(0x62); // BUILD
    const dict = load(b.stop()) as PyDict;
    expect([...dict.map]).toEqual([['k', 7]]);
    expect(dict.attributes).toBeInstanceOf(PyDict);
  });

  it('understands protocol 4 framing, MEMOIZE and STACK_GLOBAL', () => {
    const b = new PickleBuilder().proto(4).raw(0x95, 20, 0, 0, 0, 0, 0, 0, 0);
    b.raw(0x8c, 11).text('collections').raw(0x94).raw(0x8c, 11).text('OrderedDict').raw(0x94, 0x93, 0x94);
    b.emptyTuple().reduce().raw(0x94);
    expect(load(b.stop())).toBeInstanceOf(PyDict);
  });

  it('turns _codecs.encode(str, latin1) into bytes', () => {
    const b = new PickleBuilder().proto().global('_codecs', 'encode').str('\u00ff\u0001').str('latin1').raw(0x86).reduce();
    expect(load(b.stop())).toEqual(new Uint8Array([255, 1]));
  });

  it('rebuilds tensors, parameters and typed tensors over persistent storages', () => {
    const storage = (b: PickleBuilder): PickleBuilder =>
      b.mark().str('storage').global('torch', 'HalfStorage').str('3').str('cpu').int(24).tuple().raw(0x51);
    const b = new PickleBuilder().proto().raw(0x5d);
    // _rebuild_tensor_v2(storage, 2, (2, 3), (1, 2), False, OrderedDict())
    b.global('torch._utils', '_rebuild_tensor_v2').mark();
    storage(b).int(2).int(2).int(3).raw(0x86).int(1).int(2).raw(0x86).raw(0x89);
    b.global('collections', 'OrderedDict').emptyTuple().reduce().tuple().reduce().raw(0x61);
    // _rebuild_parameter(_rebuild_tensor_v2(storage, 0, (4,), (1,), True, {}), True, {})
    b.global('torch._utils', '_rebuild_parameter').mark().global('torch._utils', '_rebuild_tensor_v2').mark();
    storage(b).int(0).int(4).raw(0x85).int(1).raw(0x85).raw(0x88).emptyDict().tuple().reduce();
    b.raw(0x88).emptyDict().tuple().reduce().raw(0x61);
    // _rebuild_from_type_v2(_rebuild_tensor_v2, torch._tensor.Tensor, (storage, 0, (), (), False, {}), {})
    b.global('torch._tensor', '_rebuild_from_type_v2').mark().global('torch._utils', '_rebuild_tensor_v2');
    b.global('torch._tensor', 'Tensor').mark();
    storage(b).int(5).emptyTuple().emptyTuple().raw(0x89).emptyDict().tuple().emptyDict().tuple().reduce().raw(0x61);
    const storages = new Map<string, TorchStorageRef>();
    const [plain, param, scalar] = load(b.stop(), (pid) => {
      const [, , key, location, numel] = (pid as PyTuple).items as [string, unknown, string, string, number];
      let s = storages.get(key);
      if (!s) storages.set(key, (s = new TorchStorageRef('F16', key, location, numel)));
      return s;
    }) as TorchTensorRef[];
    expect(plain).toBeInstanceOf(TorchTensorRef);
    expect(plain!.shape).toEqual([2, 3]);
    expect(plain!.stride).toEqual([1, 2]);
    expect(plain!.storageOffset).toBe(2);
    expect(param!.isParameter).toBe(true);
    expect(param!.requiresGrad).toBe(true);
    expect(scalar!.shape).toEqual([]);
    expect(scalar!.storageOffset).toBe(5);
    expect(plain!.storage).toBe(param!.storage);
  });
});

describe('the allow-list', () => {
  it('refuses os.system before anything can run, naming the global', () => {
    const bytes = new PickleBuilder().proto().global('os', 'system').str('echo pwned').raw(0x85).reduce().stop();
    const err = errorOf(() => load(bytes));
    expect(err.code).toBe('forbidden-global');
    expect(err.message).toMatch(/^test\.pkl, byte offset 2: pickle: forbidden global "os\.system"/);
  });

  it('refuses STACK_GLOBAL builtins.eval', () => {
    const bytes = new PickleBuilder().proto(4).raw(0x8c, 8).text('builtins').raw(0x8c, 4).text('eval').raw(0x93).stop();
    expect(errorOf(() => load(bytes)).message).toMatch(/forbidden global "builtins\.eval"/);
  });

  it('refuses near-misses of allowed names', () => {
    for (const [module, name] of [
      ['torch', 'load'],
      ['torch._utils', '_rebuild_device_tensor_from_numpy'],
      ['torch', 'ComplexFloatStorage'],
      ['collections', 'defaultdict'],
      ['numpy.core.multiarray', '_reconstruct'],
    ] as const) {
      const err = errorOf(() => load(new PickleBuilder().proto().global(module, name).stop()));
      expect(err.code).toBe('forbidden-global');
      expect(err.message).toContain(`"${module}.${name}"`);
    }
  });

  it('does not call data-only globals', () => {
    const bytes = new PickleBuilder().proto().global('torch', 'FloatStorage').emptyTuple().reduce().stop();
    expect(errorOf(() => load(bytes)).message).toMatch(/global torch\.FloatStorage is not callable/);
  });

  it('needs a loader for persistent ids', () => {
    const bytes = new PickleBuilder().proto().str('x').raw(0x51).stop();
    expect(errorOf(() => load(bytes)).message).toMatch(/persistent id without a loader/);
  });
});

describe('hostile input', () => {
  const cases: Array<[string, Uint8Array, RegExp]> = [
    ['stack underflow', new PickleBuilder().proto().raw(0x61).stop(), /stack underflow/],
    ['no STOP', new PickleBuilder().proto().raw(0x4e).bytes(), /ends without STOP/],
    ['string longer than the pickle', new PickleBuilder().proto().raw(0x58).u32(1000).stop(), /needs 1000 bytes but the pickle ends/],
    ['invalid UTF-8', new PickleBuilder().proto().raw(0x8c, 2, 0xc3, 0x28).stop(), /not valid UTF-8/],
    ['unknown memo', new PickleBuilder().proto().raw(0x68, 9).stop(), /memo entry 9 missing/],
    ['code-running opcode INST', new PickleBuilder().proto().raw(0x69).text('os\nsystem\n').stop(), /opcode 0x69 is not supported/],
    ['protocol 6', new PickleBuilder().proto(6).raw(0x4e).stop(), /protocol 6 is not supported/],
    ['huge integer', new PickleBuilder().proto().raw(0x8b).u32(100).raw(...new Array(100).fill(1)).stop(), /integer of 100 bytes/],
    ['unhashable key', new PickleBuilder().proto().emptyDict().raw(0x5d).int(1).setitem().stop(), /unhashable dict key/],
    ['extra values at STOP', new PickleBuilder().proto().raw(0x4e, 0x4e).stop(), /STOP with 2 values/],
    ['mark left open', new PickleBuilder().proto().mark().raw(0x4e).stop(), /STOP inside an open MARK/],
    ['bad tensor arguments', new PickleBuilder().proto().global('torch._utils', '_rebuild_tensor_v2').mark().int(1).int(2).tuple().reduce().stop(), /expects a storage/],
  ];
  for (const [name, bytes, pattern] of cases) {
    it(name, () => {
      const err = errorOf(() => load(bytes));
      expect(err.message).toMatch(pattern);
      expect(err.file).toBe('test.pkl');
      expect(err.offset).toBeGreaterThanOrEqual(0);
    });
  }

  it('stops shared objects that multiply into exponentially many paths', () => {
    // l0 = [None]; l(k+1) = [lk, lk], 40 levels: 2^40 paths to walk.
    const b = new PickleBuilder().proto().raw(0x5d, 0x4e, 0x61, 0x71, 0, 0x30);
    for (let k = 0; k < 40; k++) b.raw(0x5d, 0x68, k, 0x61, 0x68, k, 0x61, 0x71, k + 1, 0x30);
    const root = load(b.raw(0x68, 40).stop());
    expect(() => flattenTensors(root, 'test.pkl')).toThrow(/values reachable; the pickle's structure is implausible/);
  });

  it('refuses deeply nested tuple keys', () => {
    const b = new PickleBuilder().proto().emptyDict().int(1);
    for (let k = 0; k < 100_000; k++) b.raw(0x85); // TUPLE1, 100k deep
    b.int(2).setitem();
    expect(errorOf(() => load(b.stop())).message).toMatch(/dict key nested too deeply/);
  });

  it('survives self-referencing containers and deep nesting without recursion', () => {
    // l = []; l.append(l)
    const cyclic = load(new PickleBuilder().proto().raw(0x5d, 0x71, 0, 0x68, 0, 0x61).stop()) as PyValue[];
    expect(cyclic[0]).toBe(cyclic);
    expect(flattenTensors(cyclic, 'test.pkl').size).toBe(0);
    const depth = 100_000;
    const deep = new PickleBuilder().proto().repeat(0x5d, depth).repeat(0x61, depth - 1).stop();
    const nested = load(deep);
    expect(Array.isArray(nested)).toBe(true);
    expect(() => flattenTensors(nested, 'test.pkl')).toThrow(/nested deeper than 64 levels/);
  });
});

// Writes GGUF v3 files (see format.ts) with the tensor data streamed in, one tensor
// at a time, so a multi-gigabyte model never sits in memory.
import { closeSync, openSync, writeSync } from 'node:fs';
import { endianness } from 'node:os';

import {
  GGML_TYPE,
  GGML_TYPE_BYTES,
  GGUF_DEFAULT_ALIGNMENT,
  GGUF_MAGIC,
  GGUF_VALUE_TYPE,
  GGUF_VERSION,
  type GgmlType,
  type GgufScalarType,
  type GgufValue,
} from './format.js';

if (endianness() !== 'LE') throw new Error('gguf writer: big-endian hosts are not supported');

export interface GgufTensor {
  name: string;
  type: GgmlType;
  /** Row-major shape, outermost first (as numpy and safetensors write it); GGUF stores it reversed. */
  shape: readonly number[];
  /** Produces the tensor's bytes, in order, through `emit`; the total must match type and shape. */
  write: (emit: (bytes: Uint8Array) => void) => void;
}

/** ggml's limits: names are char[64] with the terminating NUL, at most 4 dimensions. */
const MAX_NAME_BYTES = 63;
const MAX_DIMS = 4;

export class GgufError extends Error {
  constructor(readonly file: string, message: string) {
    super(`${file}: ${message}`);
    this.name = 'GgufError';
  }
}

export function tensorBytes(t: Pick<GgufTensor, 'type' | 'shape'>): number {
  return t.shape.reduce((n, d) => n * d, 1) * GGML_TYPE_BYTES[t.type];
}

const alignUp = (n: number, a: number) => Math.ceil(n / a) * a;

/** Accumulates little-endian header bytes. */
class HeaderBuilder {
  private parts: Buffer[] = [];
  length = 0;

  private push(b: Buffer): void {
    this.parts.push(b);
    this.length += b.length;
  }

  bytes(b: Buffer): void {
    this.push(b);
  }

  scalar(type: GgufScalarType, v: number | bigint | string | boolean, what: string): void {
    const num = (lo: number, hi: number, int: boolean): number => {
      if (typeof v !== 'number' || (int && !Number.isInteger(v)) || v < lo || v > hi) {
        throw new RangeError(`${what}: ${String(v)} is not a valid ${type}`);
      }
      return v;
    };
    const big = (lo: bigint, hi: bigint): bigint => {
      const b = typeof v === 'bigint' ? v : typeof v === 'number' && Number.isSafeInteger(v) ? BigInt(v) : undefined;
      if (b === undefined || b < lo || b > hi) throw new RangeError(`${what}: ${String(v)} is not a valid ${type}`);
      return b;
    };
    let b: Buffer;
    switch (type) {
      case 'u8': b = Buffer.alloc(1); b.writeUInt8(num(0, 0xff, true)); break;
      case 'i8': b = Buffer.alloc(1); b.writeInt8(num(-0x80, 0x7f, true)); break;
      case 'u16': b = Buffer.alloc(2); b.writeUInt16LE(num(0, 0xffff, true)); break;
      case 'i16': b = Buffer.alloc(2); b.writeInt16LE(num(-0x8000, 0x7fff, true)); break;
      case 'u32': b = Buffer.alloc(4); b.writeUInt32LE(num(0, 0xffffffff, true)); break;
      case 'i32': b = Buffer.alloc(4); b.writeInt32LE(num(-0x80000000, 0x7fffffff, true)); break;
      case 'f32': b = Buffer.alloc(4); b.writeFloatLE(num(-Infinity, Infinity, false)); break;
      case 'f64': b = Buffer.alloc(8); b.writeDoubleLE(num(-Infinity, Infinity, false)); break;
      case 'u64': b = Buffer.alloc(8); b.writeBigUInt64LE(big(0n, 2n ** 64n - 1n)); break;
      case 'i64': b = Buffer.alloc(8); b.writeBigInt64LE(big(-(2n ** 63n), 2n ** 63n - 1n)); break;
      case 'bool':
        if (typeof v !== 'boolean') throw new TypeError(`${what}: ${String(v)} is not a bool`);
        b = Buffer.from([v ? 1 : 0]);
        break;
      case 'string':
        if (typeof v !== 'string') throw new TypeError(`${what}: ${String(v)} is not a string`);
        this.string(v);
        return;
    }
    this.push(b);
  }

  u32(n: number): void {
    this.scalar('u32', n, 'u32');
  }

  u64(n: number): void {
    this.scalar('u64', n, 'u64');
  }

  string(s: string): void {
    const b = Buffer.from(s, 'utf8');
    this.u64(b.length);
    this.push(b);
  }

  value(v: GgufValue, key: string): void {
    this.u32(GGUF_VALUE_TYPE[v.type]);
    if (v.type === 'array') {
      this.u32(GGUF_VALUE_TYPE[v.itemType]);
      this.u64(v.values.length);
      v.values.forEach((x, i) => this.scalar(v.itemType, x, `${key}[${i}]`));
    } else {
      this.scalar(v.type, v.value, key);
    }
  }

  concat(): Buffer {
    return Buffer.concat(this.parts, this.length);
  }
}

/** Buffers the tensor data writes into large sequential writes. */
class DataSink {
  private buf = Buffer.alloc(1 << 22);
  private used = 0;
  written = 0;

  constructor(private readonly fd: number) {}

  write(bytes: Uint8Array): void {
    this.written += bytes.length;
    if (bytes.length >= this.buf.length) {
      this.flush();
      writeSync(this.fd, bytes);
      return;
    }
    if (this.used + bytes.length > this.buf.length) this.flush();
    this.buf.set(bytes, this.used);
    this.used += bytes.length;
  }

  zeros(n: number): void {
    if (n > 0) this.write(new Uint8Array(n));
  }

  flush(): void {
    if (this.used > 0) writeSync(this.fd, this.buf, 0, this.used);
    this.used = 0;
  }
}

/**
 * Writes a GGUF file: `metadata` in the given order (general.alignment, if given, must
 * be a u32 power of two and sets the data alignment), then the tensors in the given
 * order. Returns the total file size in bytes.
 */
export function writeGguf(path: string, metadata: ReadonlyArray<[string, GgufValue]>, tensors: readonly GgufTensor[]): number {
  const keys = new Set<string>();
  let alignment = GGUF_DEFAULT_ALIGNMENT;
  for (const [key, v] of metadata) {
    if (keys.has(key)) throw new GgufError(path, `metadata key ${key} given twice`);
    keys.add(key);
    if (key === 'general.alignment') {
      const a = v.type === 'u32' ? Number(v.value) : NaN;
      if (!(a > 0 && (a & (a - 1)) === 0)) throw new GgufError(path, 'general.alignment must be a u32 power of two');
      alignment = a;
    }
  }
  const names = new Set<string>();
  for (const t of tensors) {
    if (names.has(t.name)) throw new GgufError(path, `tensor ${t.name} given twice`);
    names.add(t.name);
    if (Buffer.byteLength(t.name) > MAX_NAME_BYTES) throw new GgufError(path, `tensor name ${t.name} is longer than ${MAX_NAME_BYTES} bytes`);
    if (t.shape.length < 1 || t.shape.length > MAX_DIMS || !t.shape.every((d) => Number.isSafeInteger(d) && d > 0)) {
      throw new GgufError(path, `tensor ${t.name}: bad shape [${t.shape.join(', ')}] (1 to ${MAX_DIMS} positive dimensions)`);
    }
  }

  const h = new HeaderBuilder();
  h.bytes(Buffer.from(GGUF_MAGIC, 'ascii'));
  h.u32(GGUF_VERSION);
  h.u64(tensors.length);
  h.u64(metadata.length);
  for (const [key, v] of metadata) {
    h.string(key);
    h.value(v, key);
  }
  const offsets: number[] = [];
  let at = 0;
  for (const t of tensors) {
    h.string(t.name);
    h.u32(t.shape.length);
    for (let d = t.shape.length - 1; d >= 0; d--) h.u64(t.shape[d]); // ne[0] is the innermost dimension
    h.u32(GGML_TYPE[t.type]);
    h.u64(at);
    offsets.push(at);
    at = alignUp(at + tensorBytes(t), alignment);
  }

  const fd = openSync(path, 'w');
  try {
    const header = h.concat();
    writeSync(fd, header);
    const sink = new DataSink(fd);
    sink.zeros(alignUp(header.length, alignment) - header.length);
    tensors.forEach((t, i) => {
      const start = sink.written;
      t.write((bytes) => sink.write(bytes));
      const got = sink.written - start;
      if (got !== tensorBytes(t)) {
        throw new GgufError(path, `tensor ${t.name}: wrote ${got} bytes, ${t.type}[${t.shape.join(', ')}] needs ${tensorBytes(t)}`);
      }
      const next = i + 1 < tensors.length ? offsets[i + 1] : alignUp(offsets[i] + got, alignment);
      sink.zeros(next - offsets[i] - got);
    });
    sink.flush();
    return alignUp(header.length, alignment) + at;
  } finally {
    closeSync(fd);
  }
}

// Reads safetensors files without loading them whole: the header is parsed and
// every tensor's byte range validated on open, tensor data is read on demand.
import { closeSync, existsSync, fstatSync, openSync, readdirSync, readFileSync, readSync } from 'node:fs';
import { join } from 'node:path';

import {
  DTYPE_BYTES,
  SafetensorsError,
  bf16BitsToF32,
  f16BitsToF32,
  isDType,
  numel,
  type TensorInfo,
} from './format.js';

/** Headers larger than this are refused rather than allocated (the official limit is 100 MB). */
const MAX_HEADER_BYTES = 100_000_000;

function readExact(fd: number, file: string, length: number, position: number, what: string): Buffer {
  const buf = Buffer.alloc(length);
  let got = 0;
  while (got < length) {
    const n = readSync(fd, buf, got, length - got, position + got);
    if (n === 0) throw new SafetensorsError(file, `truncated while reading ${what}`);
    got += n;
  }
  return buf;
}

function parseHeader(file: string, json: string, dataBytes: number): { tensors: TensorInfo[]; metadata: Record<string, string> } {
  let header: unknown;
  try {
    header = JSON.parse(json);
  } catch (e) {
    throw new SafetensorsError(file, `header is not valid JSON (${(e as Error).message})`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) {
    throw new SafetensorsError(file, 'header is not a JSON object');
  }
  const metadata: Record<string, string> = {};
  const tensors: TensorInfo[] = [];
  for (const [name, entry] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) {
        throw new SafetensorsError(file, '__metadata__ is not an object');
      }
      for (const [k, v] of Object.entries(entry)) {
        if (typeof v !== 'string') throw new SafetensorsError(file, `__metadata__.${k} is not a string`);
        metadata[k] = v;
      }
      continue;
    }
    const e = entry as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof entry !== 'object' || entry === null) throw new SafetensorsError(file, 'header entry is not an object', name);
    if (!isDType(e.dtype)) throw new SafetensorsError(file, `unsupported dtype ${JSON.stringify(e.dtype)}`, name);
    const isDim = (d: unknown) => Number.isSafeInteger(d) && (d as number) >= 0;
    if (!Array.isArray(e.shape) || !e.shape.every(isDim)) {
      throw new SafetensorsError(file, `bad shape ${JSON.stringify(e.shape)}`, name);
    }
    const off = e.data_offsets;
    if (!Array.isArray(off) || off.length !== 2 || !off.every(isDim) || off[1] < off[0]) {
      throw new SafetensorsError(file, `bad data_offsets ${JSON.stringify(off)}`, name);
    }
    const shape = e.shape as number[];
    const [begin, end] = off as number[];
    const want = numel(shape) * DTYPE_BYTES[e.dtype];
    if (end - begin !== want) {
      throw new SafetensorsError(file, `data_offsets span ${end - begin} bytes but ${e.dtype}[${shape.join(', ')}] needs ${want}`, name);
    }
    if (end > dataBytes) {
      throw new SafetensorsError(file, `data ends at byte ${end} but the file holds only ${dataBytes} data bytes (truncated?)`, name);
    }
    tensors.push({ name, dtype: e.dtype, shape, begin, end });
  }
  // Like the official reader: tensors must tile the data section exactly, without gaps or overlap.
  const sorted = [...tensors].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let at = 0;
  for (const t of sorted) {
    if (t.begin !== at) {
      throw new SafetensorsError(file, `data starts at byte ${t.begin}, expected ${at} (tensors overlap or leave a gap)`, t.name);
    }
    at = t.end;
  }
  if (at !== dataBytes) throw new SafetensorsError(file, `tensors cover ${at} data bytes but the file holds ${dataBytes}`);
  return { tensors, metadata };
}

/** One safetensors file: header parsed and validated, tensor data read on demand. */
export class SafetensorsFile {
  readonly tensors: ReadonlyMap<string, TensorInfo>;
  readonly metadata: Readonly<Record<string, string>>;
  private readonly dataStart: number;

  private constructor(readonly path: string, tensors: TensorInfo[], metadata: Record<string, string>, dataStart: number) {
    this.tensors = new Map(tensors.map((t) => [t.name, t]));
    this.metadata = metadata;
    this.dataStart = dataStart;
  }

  static open(path: string): SafetensorsFile {
    let fd: number;
    try {
      fd = openSync(path, 'r');
    } catch (e) {
      throw new SafetensorsError(path, `cannot open (${(e as Error).message})`);
    }
    try {
      const size = fstatSync(fd).size;
      if (size < 8) throw new SafetensorsError(path, `file is ${size} bytes, too short for the 8-byte header length`);
      const n = readExact(fd, path, 8, 0, 'the header length').readBigUInt64LE(0);
      if (n > BigInt(size - 8)) {
        throw new SafetensorsError(path, `header length ${n} exceeds the file size ${size} (truncated or not safetensors)`);
      }
      if (n > BigInt(MAX_HEADER_BYTES)) throw new SafetensorsError(path, `header length ${n} is implausibly large`);
      const len = Number(n);
      const json = readExact(fd, path, len, 8, 'the header').toString('utf8');
      const { tensors, metadata } = parseHeader(path, json, size - 8 - len);
      return new SafetensorsFile(path, tensors, metadata, 8 + len);
    } finally {
      closeSync(fd);
    }
  }

  names(): string[] {
    return [...this.tensors.keys()];
  }

  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (!t) throw new SafetensorsError(this.path, 'not in this file', name);
    return t;
  }

  /** The tensor's raw bytes, exactly as stored. */
  readBytes(name: string): Buffer {
    const t = this.info(name);
    const fd = openSync(this.path, 'r');
    try {
      return readExact(fd, this.path, t.end - t.begin, this.dataStart + t.begin, `tensor ${name}`);
    } finally {
      closeSync(fd);
    }
  }

  /** Decodes an F64/F32/F16/BF16 tensor into `out` (float64 or float32), row-major. */
  readInto<T extends Float64Array | Float32Array>(name: string, out: T): T {
    const t = this.info(name);
    const n = numel(t.shape);
    if (out.length !== n) throw new SafetensorsError(this.path, `output holds ${out.length} values, the tensor ${n}`, name);
    const b = this.readBytes(name);
    switch (t.dtype) {
      case 'F64':
        for (let i = 0; i < n; i++) out[i] = b.readDoubleLE(8 * i);
        break;
      case 'F32':
        for (let i = 0; i < n; i++) out[i] = b.readFloatLE(4 * i);
        break;
      case 'F16':
        for (let i = 0; i < n; i++) out[i] = f16BitsToF32(b.readUInt16LE(2 * i));
        break;
      case 'BF16':
        for (let i = 0; i < n; i++) out[i] = bf16BitsToF32(b.readUInt16LE(2 * i));
        break;
      default:
        throw new SafetensorsError(this.path, `cannot decode dtype ${t.dtype} as floats`, name);
    }
    return out;
  }

  readF64(name: string): Float64Array {
    return this.readInto(name, new Float64Array(numel(this.info(name).shape)));
  }

  readF32(name: string): Float32Array {
    return this.readInto(name, new Float32Array(numel(this.info(name).shape)));
  }
}

export const INDEX_FILE = 'model.safetensors.index.json';

/**
 * All tensors of a model or adapter directory: the shards named by
 * model.safetensors.index.json (weight_map: tensor -> file) when present, otherwise
 * every *.safetensors file in it. A tensor name may appear only once.
 */
export class TensorStore {
  private readonly owner = new Map<string, SafetensorsFile>();

  private constructor(readonly dir: string, readonly files: SafetensorsFile[]) {}

  static openDir(dir: string): TensorStore {
    const indexPath = join(dir, INDEX_FILE);
    if (existsSync(indexPath)) return TensorStore.openIndexed(dir, indexPath);
    let names: string[];
    try {
      names = readdirSync(dir).filter((f) => f.endsWith('.safetensors')).sort();
    } catch (e) {
      throw new SafetensorsError(dir, `cannot list the directory (${(e as Error).message})`);
    }
    if (names.length === 0) throw new SafetensorsError(dir, 'no *.safetensors files and no ' + INDEX_FILE);
    const store = new TensorStore(dir, names.map((f) => SafetensorsFile.open(join(dir, f))));
    for (const file of store.files) {
      for (const name of file.tensors.keys()) {
        const prev = store.owner.get(name);
        if (prev) throw new SafetensorsError(file.path, `also present in ${prev.path}`, name);
        store.owner.set(name, file);
      }
    }
    return store;
  }

  private static openIndexed(dir: string, indexPath: string): TensorStore {
    let weightMap: unknown;
    try {
      weightMap = (JSON.parse(readFileSync(indexPath, 'utf8')) as { weight_map?: unknown }).weight_map;
    } catch (e) {
      throw new SafetensorsError(indexPath, `cannot read the index (${(e as Error).message})`);
    }
    if (typeof weightMap !== 'object' || weightMap === null || Array.isArray(weightMap)) {
      throw new SafetensorsError(indexPath, 'weight_map is missing or not an object');
    }
    const entries = Object.entries(weightMap as Record<string, unknown>);
    const shardNames = [...new Set(entries.map(([, f]) => f))];
    for (const f of shardNames) {
      if (typeof f !== 'string' || f.includes('/') || f.includes('\\')) {
        throw new SafetensorsError(indexPath, `weight_map names a bad shard ${JSON.stringify(f)}`);
      }
    }
    const shards = new Map((shardNames as string[]).map((f) => [f, SafetensorsFile.open(join(dir, f))]));
    const store = new TensorStore(dir, [...shards.values()]);
    for (const [name, f] of entries) {
      const shard = shards.get(f as string)!;
      if (!shard.tensors.has(name)) throw new SafetensorsError(shard.path, `listed in ${INDEX_FILE} but absent from the shard`, name);
      store.owner.set(name, shard);
    }
    for (const shard of store.files) {
      for (const name of shard.tensors.keys()) {
        if (store.owner.get(name) !== shard) {
          throw new SafetensorsError(shard.path, `present in the shard but not mapped to it by ${INDEX_FILE}`, name);
        }
      }
    }
    return store;
  }

  has(name: string): boolean {
    return this.owner.has(name);
  }

  names(): string[] {
    return [...this.owner.keys()];
  }

  file(name: string): SafetensorsFile {
    const f = this.owner.get(name);
    if (!f) throw new SafetensorsError(this.dir, 'missing', name);
    return f;
  }

  info(name: string): TensorInfo {
    return this.file(name).info(name);
  }

  /** Reads a tensor as float64 after checking its shape when `shape` is given. */
  readF64(name: string, shape?: readonly number[]): Float64Array {
    const f = this.file(name);
    const t = f.info(name);
    if (shape && (shape.length !== t.shape.length || shape.some((d, i) => d !== t.shape[i]))) {
      throw new SafetensorsError(f.path, `shape [${t.shape.join(', ')}], expected [${shape.join(', ')}]`, name);
    }
    return f.readF64(name);
  }
}

// Writes safetensors files one tensor at a time, in bounded chunks, so that a
// multi-gigabyte model never has to exist in memory at once.
import { closeSync, mkdirSync, openSync, writeFileSync, writeSync } from 'node:fs';
import { endianness } from 'node:os';
import { join } from 'node:path';

import { DTYPE_BYTES, SafetensorsError, f32ToF16Bits, numel, type FloatDType } from './format.js';
import { INDEX_FILE } from './reader.js';

/** Fills `out` with the tensor's values starting at flat element `start` (row-major). */
export type TensorFill = (out: Float32Array, start: number) => void;

/** The tensor's bytes exactly as stored (already in `dtype`, little-endian), read when written. */
export interface RawTensorBytes {
  bytes: () => Uint8Array;
}

export interface TensorToWrite {
  name: string;
  dtype: FloatDType;
  shape: readonly number[];
  /** All values at once, a fill callback the writer calls chunk by chunk, in order, or raw bytes (copied as they are). */
  data: ArrayLike<number> | TensorFill | RawTensorBytes;
}

function isRaw(data: TensorToWrite['data']): data is RawTensorBytes {
  return typeof data === 'object' && data !== null && typeof (data as Partial<RawTensorBytes>).bytes === 'function';
}

/** Elements converted and written per chunk. */
const CHUNK = 1 << 18;

// Typed-array views write host byte order; safetensors is little-endian.
if (endianness() !== 'LE') throw new Error('safetensors writer: big-endian hosts are not supported');

/** Encodes `values` into `out` (a chunk-sized byte view); returns the bytes used. */
function encodeChunk(values: Float32Array, dtype: FloatDType, out: Uint8Array): number {
  const n = values.length;
  if (dtype === 'F32') {
    out.set(new Uint8Array(values.buffer, values.byteOffset, 4 * n));
    return 4 * n;
  }
  const u16 = new Uint16Array(out.buffer, out.byteOffset, n);
  if (dtype === 'BF16') {
    const bits = new Uint32Array(values.buffer, values.byteOffset, n);
    for (let i = 0; i < n; i++) {
      const b = bits[i];
      // NaN: keep it a NaN (rounding could carry it into infinity); else round to nearest even.
      u16[i] = (b & 0x7fffffff) > 0x7f800000 ? (b >>> 16) | 0x40 : (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
    }
  } else {
    for (let i = 0; i < n; i++) u16[i] = f32ToF16Bits(values[i]);
  }
  return 2 * n;
}

function checkTensor(path: string, t: TensorToWrite): void {
  if (!t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new SafetensorsError(path, `bad shape [${t.shape.join(', ')}]`, t.name);
  }
  if (typeof t.data !== 'function' && !isRaw(t.data) && t.data.length !== numel(t.shape)) {
    throw new SafetensorsError(path, `${t.data.length} values given for shape [${t.shape.join(', ')}]`, t.name);
  }
}

/** The header JSON padded with spaces so that the data section starts 8-byte aligned. */
function headerBytes(tensors: readonly TensorToWrite[], metadata?: Record<string, string>): Buffer {
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  let at = 0;
  for (const t of tensors) {
    const bytes = numel(t.shape) * DTYPE_BYTES[t.dtype];
    header[t.name] = { dtype: t.dtype, shape: [...t.shape], data_offsets: [at, at + bytes] };
    at += bytes;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8);
  const out = Buffer.alloc(8 + Buffer.byteLength(json));
  out.writeBigUInt64LE(BigInt(Buffer.byteLength(json)), 0);
  out.write(json, 8, 'utf8');
  return out;
}

/** Writes one .safetensors file with the tensors in the given order. Returns the data bytes written. */
export function writeSafetensors(path: string, tensors: readonly TensorToWrite[], metadata?: Record<string, string>): number {
  const seen = new Set<string>();
  for (const t of tensors) {
    checkTensor(path, t);
    if (seen.has(t.name)) throw new SafetensorsError(path, 'given twice', t.name);
    seen.add(t.name);
  }
  const fd = openSync(path, 'w');
  let total = 0;
  try {
    const header = headerBytes(tensors, metadata);
    writeSync(fd, header);
    const values = new Float32Array(CHUNK);
    const encoded = new Uint8Array(CHUNK * 4);
    for (const t of tensors) {
      const n = numel(t.shape);
      const data = t.data;
      if (isRaw(data)) {
        const raw = data.bytes();
        if (raw.length !== n * DTYPE_BYTES[t.dtype]) {
          throw new SafetensorsError(path, `${raw.length} raw bytes given for ${t.dtype} [${t.shape.join(', ')}]`, t.name);
        }
        writeSync(fd, raw);
        total += raw.length;
        continue;
      }
      for (let start = 0; start < n; start += CHUNK) {
        const chunk = values.subarray(0, Math.min(CHUNK, n - start));
        if (typeof data === 'function') data(chunk, start);
        else for (let i = 0; i < chunk.length; i++) chunk[i] = data[start + i];
        const bytes = encodeChunk(chunk, t.dtype, encoded);
        writeSync(fd, encoded, 0, bytes);
        total += bytes;
      }
    }
  } finally {
    closeSync(fd);
  }
  return total;
}

export interface ShardOptions {
  /** Start a new shard before a tensor that would take a shard past this many data bytes. */
  maxShardBytes: number;
  metadata?: Record<string, string>;
}

/**
 * Writes the tensors into model-0000i-of-0000n.safetensors shards plus
 * model.safetensors.index.json ({metadata: {total_size}, weight_map}), as
 * Hugging Face does. Returns the shard file names.
 */
export function writeShardedSafetensors(dir: string, tensors: readonly TensorToWrite[], opts: ShardOptions): string[] {
  mkdirSync(dir, { recursive: true });
  const groups: TensorToWrite[][] = [];
  let size = 0;
  let totalSize = 0;
  for (const t of tensors) {
    const bytes = numel(t.shape) * DTYPE_BYTES[t.dtype];
    if (groups.length === 0 || (size > 0 && size + bytes > opts.maxShardBytes)) {
      groups.push([]);
      size = 0;
    }
    groups[groups.length - 1].push(t);
    size += bytes;
    totalSize += bytes;
  }
  const pad = (i: number) => String(i).padStart(5, '0');
  const names = groups.map((_, i) => `model-${pad(i + 1)}-of-${pad(groups.length)}.safetensors`);
  const weightMap: Record<string, string> = {};
  groups.forEach((g, i) => {
    writeSafetensors(join(dir, names[i]), g, opts.metadata);
    for (const t of g) weightMap[t.name] = names[i];
  });
  writeFileSync(join(dir, INDEX_FILE), JSON.stringify({ metadata: { total_size: totalSize }, weight_map: weightMap }, null, 2) + '\n');
  return names;
}

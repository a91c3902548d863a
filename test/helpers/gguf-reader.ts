// A small GGUF v3 reader for tests, written from the format description in
// llama.cpp's ggml/src/gguf.cpp independently of tools/gguf/writer.ts.
import { readFileSync } from 'node:fs';

export interface ReadTensor {
  name: string;
  /** ne[], innermost first, as stored. */
  ne: number[];
  ggmlType: number;
  offset: number;
  /** The tensor's bytes (from the data section start + offset). */
  data: Buffer;
}

export interface ReadGguf {
  version: number;
  metadata: Map<string, { type: number; value: unknown }>;
  tensors: Map<string, ReadTensor>;
  alignment: number;
  dataStart: number;
  fileSize: number;
}

const TYPE_SIZE: Record<number, number> = { 0: 4, 1: 2, 30: 2 }; // F32, F16, BF16

export function readGguf(path: string): ReadGguf {
  const b = readFileSync(path);
  let at = 0;
  const u32 = () => { const v = b.readUInt32LE(at); at += 4; return v; };
  const u64 = () => { const v = b.readBigUInt64LE(at); at += 8; return Number(v); };
  const string = () => { const n = u64(); const s = b.toString('utf8', at, at + n); at += n; return s; };
  const scalar = (type: number): unknown => {
    switch (type) {
      case 0: return b.readUInt8(at++);
      case 1: return b.readInt8(at++);
      case 2: { const v = b.readUInt16LE(at); at += 2; return v; }
      case 3: { const v = b.readInt16LE(at); at += 2; return v; }
      case 4: return u32();
      case 5: { const v = b.readInt32LE(at); at += 4; return v; }
      case 6: { const v = b.readFloatLE(at); at += 4; return v; }
      case 7: { const v = b.readUInt8(at++); if (v > 1) throw new Error(`bad bool ${v}`); return v === 1; }
      case 8: return string();
      case 10: { const v = b.readBigUInt64LE(at); at += 8; return v; }
      case 11: { const v = b.readBigInt64LE(at); at += 8; return v; }
      case 12: { const v = b.readDoubleLE(at); at += 8; return v; }
      default: throw new Error(`unknown value type ${type} at byte ${at}`);
    }
  };
  if (b.toString('ascii', 0, 4) !== 'GGUF') throw new Error('bad magic');
  at = 4;
  const version = u32();
  const nTensors = u64();
  const nKv = u64();
  const metadata = new Map<string, { type: number; value: unknown }>();
  for (let i = 0; i < nKv; i++) {
    const key = string();
    const type = u32();
    if (type === 9) {
      const itemType = u32();
      const n = u64();
      const values = Array.from({ length: n }, () => scalar(itemType));
      metadata.set(key, { type, value: { itemType, values } });
    } else {
      metadata.set(key, { type, value: scalar(type) });
    }
  }
  const infos: Omit<ReadTensor, 'data'>[] = [];
  for (let i = 0; i < nTensors; i++) {
    const name = string();
    const nDims = u32();
    const ne = Array.from({ length: nDims }, () => u64());
    const ggmlType = u32();
    const offset = u64();
    infos.push({ name, ne, ggmlType, offset });
  }
  const alignment = (metadata.get('general.alignment')?.value as number | undefined) ?? 32;
  const dataStart = Math.ceil(at / alignment) * alignment;
  const tensors = new Map<string, ReadTensor>();
  for (const t of infos) {
    const size = t.ne.reduce((n, d) => n * d, 1) * TYPE_SIZE[t.ggmlType];
    if (t.offset % alignment !== 0) throw new Error(`${t.name}: offset ${t.offset} is not aligned to ${alignment}`);
    if (dataStart + t.offset + size > b.length) throw new Error(`${t.name}: data runs past the end of the file`);
    tensors.set(t.name, { ...t, data: b.subarray(dataStart + t.offset, dataStart + t.offset + size) });
  }
  return { version, metadata, tensors, alignment, dataStart, fileSize: b.length };
}

/** The value of a scalar key, or the values of an array key. */
export function metaValue(g: ReadGguf, key: string): unknown {
  const m = g.metadata.get(key);
  if (!m) throw new Error(`metadata key ${key} is absent`);
  return m.type === 9 ? (m.value as { values: unknown[] }).values : m.value;
}

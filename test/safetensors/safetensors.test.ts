import assert from 'node:assert/strict';
import { readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';

import { bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits } from '../../lib/safetensors/format.js';
import { SafetensorsFile, TensorStore } from '../../lib/safetensors/reader.js';
import { writeSafetensors, writeShardedSafetensors, type TensorToWrite } from '../../lib/safetensors/writer.js';
import { tempDir } from '../helpers/tmp.js';

test('f16 encoding rounds to nearest even, with subnormals, overflow and NaN', () => {
  const cases: [number, number][] = [
    [0, 0x0000], [-0, 0x8000], [1, 0x3c00], [-2, 0xc000], [0.1, 0x2e66], [65504, 0x7bff],
    [65519, 0x7bff], [65520, 0x7c00], [1e9, 0x7c00], [-Infinity, 0xfc00],
    [2 ** -24, 0x0001], [2 ** -25, 0x0000], [3 * 2 ** -25, 0x0002], [2 ** -14, 0x0400], [2 ** -14 - 2 ** -25, 0x0400],
    [1 + 2 ** -11, 0x3c00], [1 + 3 * 2 ** -11, 0x3c02], [1 + 2 ** -11 + 2 ** -20, 0x3c01],
  ];
  for (const [x, bits] of cases) assert.equal(f32ToF16Bits(x), bits, `f16(${x})`);
  assert.equal(f32ToF16Bits(NaN), 0x7e00);
  // Every finite half survives the round trip exactly.
  for (let h = 0; h < 0x10000; h++) {
    if ((h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0) continue;
    const back = f32ToF16Bits(f16BitsToF32(h));
    if (back !== h) assert.fail(`f16 0x${h.toString(16)} -> ${f16BitsToF32(h)} -> 0x${back.toString(16)}`);
  }
});

test('bf16 encoding rounds float32 to nearest even', () => {
  const cases: [number, number][] = [
    [1, 0x3f80], [-1, 0xbf80], [1 + 2 ** -8, 0x3f80], [1 + 3 * 2 ** -8, 0x3f82], [1 + 2 ** -8 + 2 ** -20, 0x3f81],
    [3.4028234663852886e38, 0x7f80], [Infinity, 0x7f80], [2 ** -133, 0x0001],
  ];
  for (const [x, bits] of cases) assert.equal(f32ToBf16Bits(x), bits, `bf16(${x})`);
  assert.ok(Number.isNaN(bf16BitsToF32(f32ToBf16Bits(NaN))));
});

test('write then read F32, F16 and BF16 tensors; header padded to 8 bytes', () => {
  const dir = tempDir();
  const path = join(dir, 'a.safetensors');
  const values = [0, 1, -2.5, 0.1, 65504, 1e-6, 3.14159, -1e30, 7];
  const tensors: TensorToWrite[] = [
    { name: 'f32', dtype: 'F32', shape: [3, 3], data: values },
    { name: 'f16', dtype: 'F16', shape: [9], data: values },
    { name: 'bf16', dtype: 'BF16', shape: [1, 9], data: Float32Array.from(values) },
    { name: 'streamed', dtype: 'F32', shape: [3], data: (out, start) => out.forEach((_, i) => (out[i] = start + i + 0.5)) },
    { name: 'empty', dtype: 'BF16', shape: [0, 4], data: [] },
  ];
  writeSafetensors(path, tensors, { format: 'pt' });
  const bytes = readFileSync(path);
  assert.equal((8 + Number(bytes.readBigUInt64LE(0))) % 8, 0);

  const f = SafetensorsFile.open(path);
  assert.deepEqual(f.metadata, { format: 'pt' });
  assert.deepEqual(f.names(), ['f32', 'f16', 'bf16', 'streamed', 'empty']);
  assert.deepEqual(f.info('bf16').shape, [1, 9]);
  assert.deepEqual([...f.readF64('f32')], values.map(Math.fround));
  assert.deepEqual([...f.readF64('f16')], values.map((v) => f16BitsToF32(f32ToF16Bits(v))));
  assert.deepEqual([...f.readF64('bf16')], values.map((v) => bf16BitsToF32(f32ToBf16Bits(v))));
  assert.deepEqual([...f.readF32('streamed')], [0.5, 1.5, 2.5]);
  assert.equal(f.readF64('empty').length, 0);
  // The stored bits are the scalar encoders' (the writer has its own vectorised bf16 path).
  assert.deepEqual([...new Uint16Array(Uint8Array.from(f.readBytes('bf16')).buffer)], values.map(f32ToBf16Bits));
});

test('sharded writing splits by size and the index maps every tensor', () => {
  const dir = tempDir();
  const tensors: TensorToWrite[] = ['a', 'b', 'c', 'd'].map((name, i) => ({ name, dtype: 'F32', shape: [10], data: new Float32Array(10).fill(i) }));
  const shards = writeShardedSafetensors(dir, tensors, { maxShardBytes: 80 });
  assert.deepEqual(shards, ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']);
  const index = JSON.parse(readFileSync(join(dir, 'model.safetensors.index.json'), 'utf8'));
  assert.equal(index.metadata.total_size, 160);
  assert.equal(index.weight_map.c, shards[1]);
  const store = TensorStore.openDir(dir);
  assert.deepEqual(store.names().sort(), ['a', 'b', 'c', 'd']);
  assert.deepEqual([...store.readF64('d')], new Array(10).fill(3));
  assert.throws(() => store.readF64('a', [2, 5]), /tensor a: shape \[10\], expected \[2, 5\]/);
  assert.throws(() => store.readF64('zz'), /tensor zz: missing/);
});

/** Writes a file with a hand-made header (data bytes `dataBytes` long). */
function rawFile(path: string, header: unknown, dataBytes: number): void {
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(path, Buffer.concat([len, json, Buffer.alloc(dataBytes)]));
}

test('bad files are refused with errors naming the file and the tensor', () => {
  const dir = tempDir();
  const p = join(dir, 'bad.safetensors');

  writeSafetensors(p, [{ name: 'w', dtype: 'F32', shape: [4], data: [1, 2, 3, 4] }]);
  truncateSync(p, readFileSync(p).length - 1);
  assert.throws(() => SafetensorsFile.open(p), (e: Error) => e.message.includes(p) && /tensor w: .*truncated/.test(e.message));

  writeFileSync(p, Buffer.from([1, 2, 3]));
  assert.throws(() => SafetensorsFile.open(p), /too short/);

  const big = Buffer.alloc(16);
  big.writeBigUInt64LE(1000n);
  writeFileSync(p, big);
  assert.throws(() => SafetensorsFile.open(p), /header length 1000 exceeds the file size/);

  rawFile(p, { w: { dtype: 'F32', shape: [2], data_offsets: [0, 12] } }, 12);
  assert.throws(() => SafetensorsFile.open(p), /tensor w: data_offsets span 12 bytes but F32\[2\] needs 8/);

  rawFile(p, { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } }, 12);
  assert.throws(() => SafetensorsFile.open(p), /tensor b: .*overlap/);

  rawFile(p, { w: { dtype: 'Q4', shape: [2], data_offsets: [0, 2] } }, 2);
  assert.throws(() => SafetensorsFile.open(p), /tensor w: unsupported dtype "Q4"/);

  rawFile(p, { w: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } }, 10);
  assert.throws(() => SafetensorsFile.open(p), /tensors cover 8 data bytes but the file holds 10/);

  writeFileSync(p, Buffer.concat([Buffer.from([2, 0, 0, 0, 0, 0, 0, 0]), Buffer.from('{x')]));
  assert.throws(() => SafetensorsFile.open(p), /header is not valid JSON/);

  assert.throws(() => SafetensorsFile.open(join(dir, 'absent.safetensors')), /absent\.safetensors: cannot open/);
});

test('a directory store refuses duplicate tensors and index entries the shard lacks', () => {
  const dup = tempDir();
  writeSafetensors(join(dup, 'a.safetensors'), [{ name: 'w', dtype: 'F32', shape: [1], data: [1] }]);
  writeSafetensors(join(dup, 'b.safetensors'), [{ name: 'w', dtype: 'F32', shape: [1], data: [2] }]);
  assert.throws(() => TensorStore.openDir(dup), /b\.safetensors: tensor w: also present in .*a\.safetensors/);

  const idx = tempDir();
  writeShardedSafetensors(idx, [{ name: 'w', dtype: 'F32', shape: [1], data: [1] }], { maxShardBytes: 100 });
  const indexPath = join(idx, 'model.safetensors.index.json');
  const index = JSON.parse(readFileSync(indexPath, 'utf8'));
  index.weight_map.v = index.weight_map.w;
  writeFileSync(indexPath, JSON.stringify(index));
  assert.throws(() => TensorStore.openDir(idx), /tensor v: listed in model\.safetensors\.index\.json but absent/);

  assert.throws(() => TensorStore.openDir(tempDir()), /no \*\.safetensors files/);
});

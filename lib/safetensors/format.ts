// The safetensors format: dtypes, the header schema and the float conversions
// shared by the reader and the writer. File layout: u64 little-endian header
// length N, N bytes of JSON header (padded with spaces to 8-byte alignment),
// then the tensor bytes, each tensor at [begin, end) relative to the data start.

export type DType = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

/** Dtypes whose values the reader decodes and the writer encodes. */
export type FloatDType = 'F32' | 'F16' | 'BF16';

export const DTYPE_BYTES: Readonly<Record<DType, number>> = {
  F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1,
};

export function isDType(s: unknown): s is DType {
  return typeof s === 'string' && Object.hasOwn(DTYPE_BYTES, s);
}

export function isFloatDType(s: unknown): s is FloatDType {
  return s === 'F32' || s === 'F16' || s === 'BF16';
}

/** A validation or I/O failure; the message names the file and, where known, the tensor. */
export class SafetensorsError extends Error {
  constructor(readonly file: string, message: string, readonly tensor?: string) {
    super(tensor === undefined ? `${file}: ${message}` : `${file}: tensor ${tensor}: ${message}`);
    this.name = 'SafetensorsError';
  }
}

export interface TensorInfo {
  name: string;
  dtype: DType;
  shape: number[];
  /** Byte range relative to the start of the data section. */
  begin: number;
  end: number;
}

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** float32 -> bfloat16 bits, round to nearest even; NaN stays a (quiet) NaN. */
export function f32ToBf16Bits(x: number): number {
  f32[0] = x;
  const bits = u32[0];
  if ((bits & 0x7f800000) === 0x7f800000 && (bits & 0x7fffff) !== 0) return ((bits >>> 16) | 0x40) & 0xffff;
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
}

export function bf16BitsToF32(h: number): number {
  u32[0] = h << 16;
  return f32[0];
}

function roundHalfEven(x: number): number {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5 || (d === 0.5 && f % 2 === 1)) return f + 1;
  return f;
}

/**
 * float32 -> IEEE binary16 bits, round to nearest even, with subnormals, overflow to
 * infinity and NaN preserved. The input is first rounded to float32 so that f16 and
 * bf16 both round from the same float32 value (no double rounding from float64).
 */
export function f32ToF16Bits(x: number): number {
  const v = Math.fround(x);
  if (Number.isNaN(v)) return 0x7e00;
  const sign = v < 0 || Object.is(v, -0) ? 0x8000 : 0;
  const a = Math.abs(v);
  // 65520 is halfway between 65504 (max f16) and 65536; the tie rounds to even = infinity.
  if (a >= 65520) return sign | 0x7c00;
  if (a < 2 ** -14) return sign | roundHalfEven(a * 2 ** 24); // subnormal; 1024 becomes the least normal
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e--; // log2 can be off by one near powers of two
  else if (2 ** (e + 1) <= a) e++;
  let m = roundHalfEven((a / 2 ** e - 1) * 1024);
  if (m === 1024) {
    m = 0;
    e++;
  }
  return sign | ((e + 15) << 10) | m;
}

export function f16BitsToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const e = (h >>> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return sign * m * 2 ** -24;
  if (e === 31) return m === 0 ? sign * Infinity : NaN;
  return sign * (1 + m / 1024) * 2 ** (e - 15);
}

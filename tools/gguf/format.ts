// The GGUF container (version 3), as llama.cpp's ggml/src/gguf.cpp reads it:
//   u32 magic "GGUF", u32 version, u64 tensor count, u64 metadata count,
//   metadata: (string key, u32 value type, value) ...,
//   tensor infos: (string name, u32 n_dims, u64 ne[n_dims] innermost first, u32 ggml type, u64 offset) ...,
//   padding to `general.alignment` (32 by default), tensor data, each tensor at an aligned offset.
// Strings are u64 length + UTF-8 bytes; everything is little-endian.

export const GGUF_MAGIC = 'GGUF';
export const GGUF_VERSION = 3;
export const GGUF_DEFAULT_ALIGNMENT = 32;

/** gguf_type: the value types of metadata. */
export const GGUF_VALUE_TYPE = {
  u8: 0,
  i8: 1,
  u16: 2,
  i16: 3,
  u32: 4,
  i32: 5,
  f32: 6,
  bool: 7,
  string: 8,
  array: 9,
  u64: 10,
  i64: 11,
  f64: 12,
} as const;

export type GgufScalarType = Exclude<keyof typeof GGUF_VALUE_TYPE, 'array'>;

/** A metadata value with its GGUF type spelled out (a JS number alone does not say u32 or f32). */
export type GgufValue =
  | { type: Exclude<GgufScalarType, 'string' | 'bool'>; value: number | bigint }
  | { type: 'string'; value: string }
  | { type: 'bool'; value: boolean }
  | { type: 'array'; itemType: GgufScalarType; values: readonly (number | bigint | string | boolean)[] };

export const u32 = (value: number): GgufValue => ({ type: 'u32', value });
export const i32 = (value: number): GgufValue => ({ type: 'i32', value });
export const f32 = (value: number): GgufValue => ({ type: 'f32', value });
export const bool = (value: boolean): GgufValue => ({ type: 'bool', value });
export const str = (value: string): GgufValue => ({ type: 'string', value });
export const arr = (itemType: GgufScalarType, values: readonly (number | bigint | string | boolean)[]): GgufValue => ({
  type: 'array',
  itemType,
  values,
});

/** ggml_type ids of the unquantized types the writer stores. */
export const GGML_TYPE = { F32: 0, F16: 1, BF16: 30 } as const;
export type GgmlType = keyof typeof GGML_TYPE;
export const GGML_TYPE_BYTES: Readonly<Record<GgmlType, number>> = { F32: 4, F16: 2, BF16: 2 };

/** llama_ftype (general.file_type): what most of the weights are stored as. */
export const LLAMA_FILE_TYPE: Readonly<Record<GgmlType, number>> = { F32: 0, F16: 1, BF16: 32 };

/** llama_token_type, for tokenizer.ggml.token_type. */
export const LLAMA_TOKEN_TYPE = { normal: 1, unknown: 2, control: 3, userDefined: 4, unused: 5, byte: 6 } as const;

import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';

import { TensorStore } from '../../lib/safetensors/reader.js';
import { buildConfig } from '../../tools/fixtures/config.js';
import { makeModel } from '../../tools/fixtures/model.js';
import { convertDeepseekV2 } from '../../tools/gguf/deepseek2.js';
import { arr, bool, f32, str, u32, type GgufValue } from '../../tools/gguf/format.js';
import { writeGguf, type GgufTensor } from '../../tools/gguf/writer.js';
import { editedModel, presetModel } from '../helpers/fixtures.js';
import { metaValue, readGguf } from '../helpers/gguf-reader.js';
import { tempDir } from '../helpers/tmp.js';

const bytesOf = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

test('gguf: metadata of every type and tensors round-trip through an independent reader', () => {
  const path = join(tempDir(), 'a.gguf');
  const meta: Array<[string, GgufValue]> = [
    ['general.architecture', str('test')],
    ['general.alignment', u32(64)],
    ['a.u8', { type: 'u8', value: 255 }],
    ['a.i8', { type: 'i8', value: -128 }],
    ['a.u16', { type: 'u16', value: 65535 }],
    ['a.i16', { type: 'i16', value: -32768 }],
    ['a.u32', u32(4294967295)],
    ['a.i32', { type: 'i32', value: -5 }],
    ['a.f32', f32(0.5)],
    ['a.f64', { type: 'f64', value: Math.PI }],
    ['a.u64', { type: 'u64', value: 2n ** 64n - 1n }],
    ['a.i64', { type: 'i64', value: -(2n ** 63n) }],
    ['a.bool', bool(true)],
    ['a.str', str('héllo')],
    ['a.strs', arr('string', ['x', '', 'yz'])],
    ['a.f32s', arr('f32', [1, -2.5])],
    ['a.empty', arr('i32', [])],
  ];
  const m23 = Float32Array.from({ length: 6 }, (_, i) => i - 2.5);
  const v3 = Uint16Array.from([0x3f80, 0xbf80, 0x0001]);
  const tensors: GgufTensor[] = [
    { name: 'm', type: 'F32', shape: [2, 3], write: (emit) => emit(bytesOf(m23)) },
    // Emitted in pieces: the writer must concatenate them.
    { name: 'v', type: 'BF16', shape: [3], write: (emit) => { emit(bytesOf(v3.subarray(0, 1))); emit(bytesOf(v3.subarray(1))); } },
    { name: 'h', type: 'F16', shape: [1, 2, 1, 5], write: (emit) => emit(new Uint8Array(20).fill(7)) },
  ];
  const size = writeGguf(path, meta, tensors);
  const g = readGguf(path);
  assert.equal(g.version, 3);
  assert.equal(g.fileSize, size);
  assert.equal(g.alignment, 64);
  assert.equal(g.dataStart % 64, 0);
  assert.deepEqual([...g.metadata.keys()], meta.map(([k]) => k), 'keys in order');
  assert.equal(metaValue(g, 'a.u8'), 255);
  assert.equal(metaValue(g, 'a.i8'), -128);
  assert.equal(metaValue(g, 'a.u16'), 65535);
  assert.equal(metaValue(g, 'a.i16'), -32768);
  assert.equal(metaValue(g, 'a.u32'), 4294967295);
  assert.equal(metaValue(g, 'a.i32'), -5);
  assert.equal(metaValue(g, 'a.f32'), 0.5);
  assert.equal(metaValue(g, 'a.f64'), Math.PI);
  assert.equal(metaValue(g, 'a.u64'), 2n ** 64n - 1n);
  assert.equal(metaValue(g, 'a.i64'), -(2n ** 63n));
  assert.equal(metaValue(g, 'a.bool'), true);
  assert.equal(metaValue(g, 'a.str'), 'héllo');
  assert.deepEqual(metaValue(g, 'a.strs'), ['x', '', 'yz']);
  assert.deepEqual(metaValue(g, 'a.f32s'), [1, -2.5]);
  assert.deepEqual(metaValue(g, 'a.empty'), []);
  assert.equal(g.metadata.get('a.u32')?.type, 4);
  assert.equal(g.metadata.get('a.f32')?.type, 6);

  const m = g.tensors.get('m')!;
  assert.deepEqual(m.ne, [3, 2], 'ne[0] is the innermost (last row-major) dimension');
  assert.equal(m.ggmlType, 0);
  assert.deepEqual(new Float32Array(Uint8Array.from(m.data).buffer), m23);
  const v = g.tensors.get('v')!;
  assert.equal(v.ggmlType, 30);
  assert.deepEqual(new Uint16Array(Uint8Array.from(v.data).buffer), v3);
  const h = g.tensors.get('h')!;
  assert.deepEqual(h.ne, [5, 1, 2, 1]);
  assert.equal(h.ggmlType, 1);
  assert.ok(h.data.every((x) => x === 7));
  for (const t of g.tensors.values()) assert.equal(t.offset % 64, 0, `${t.name} aligned`);
});

test('gguf: the writer refuses a wrong byte count, duplicates, bad shapes and out-of-range values', () => {
  const path = join(tempDir(), 'bad.gguf');
  const t = (over: Partial<GgufTensor>): GgufTensor => ({ name: 't', type: 'F32', shape: [2], write: (emit) => emit(new Uint8Array(8)), ...over });
  assert.throws(() => writeGguf(path, [], [t({ write: (emit) => emit(new Uint8Array(4)) })]), /wrote 4 bytes, F32\[2\] needs 8/);
  assert.throws(() => writeGguf(path, [], [t({}), t({})]), /tensor t given twice/);
  assert.throws(() => writeGguf(path, [['k', u32(1)], ['k', u32(2)]], []), /key k given twice/);
  assert.throws(() => writeGguf(path, [], [t({ shape: [] })]), /bad shape/);
  assert.throws(() => writeGguf(path, [], [t({ shape: [1, 1, 1, 1, 2] })]), /bad shape/);
  assert.throws(() => writeGguf(path, [], [t({ name: 'x'.repeat(64) })]), /longer than 63 bytes/);
  assert.throws(() => writeGguf(path, [['k', u32(-1)]], []), /not a valid u32/);
  assert.throws(() => writeGguf(path, [['k', u32(1.5)]], []), /not a valid u32/);
  assert.throws(() => writeGguf(path, [['general.alignment', u32(24)]], []), /power of two/);
});

test('gguf deepseek2: metadata, names, shapes and the kv_b split match llama.cpp\'s converter', () => {
  const dir = presetModel('tiny', 'bf16');
  const cfg = buildConfig('tiny');
  const path = join(tempDir(), 'tiny.gguf');
  convertDeepseekV2(dir, path);
  const g = readGguf(path);
  const meta = (k: string) => metaValue(g, k);
  assert.equal(meta('general.architecture'), 'deepseek2');
  assert.equal(meta('general.file_type'), 32, 'mostly BF16');
  assert.equal(meta('deepseek2.block_count'), cfg.num_hidden_layers);
  assert.equal(meta('deepseek2.attention.head_count_kv'), 1);
  assert.equal(meta('deepseek2.attention.q_lora_rank'), 0, 'required even when null');
  assert.equal(g.metadata.get('deepseek2.attention.q_lora_rank')?.type, 4, 'u32');
  assert.equal(meta('deepseek2.attention.key_length'), cfg.kv_lora_rank + cfg.qk_rope_head_dim);
  assert.equal(meta('deepseek2.attention.value_length'), cfg.kv_lora_rank);
  assert.equal(meta('deepseek2.attention.key_length_mla'), cfg.qk_nope_head_dim + cfg.qk_rope_head_dim);
  assert.equal(meta('deepseek2.attention.value_length_mla'), cfg.v_head_dim);
  assert.equal(meta('deepseek2.leading_dense_block_count'), 1);
  assert.equal(meta('deepseek2.expert_shared_count'), 2);
  assert.equal(meta('deepseek2.expert_weights_norm'), false);
  assert.equal(meta('deepseek2.rope.scaling.type'), 'yarn');
  assert.equal(meta('deepseek2.rope.scaling.factor'), 4);
  assert.equal(meta('deepseek2.rope.scaling.original_context_length'), 64);
  assert.equal(meta('deepseek2.rope.scaling.yarn_log_multiplier'), Math.fround(0.1 * 0.707));
  const tokens = meta('tokenizer.ggml.tokens') as string[];
  assert.equal(tokens.length, cfg.vocab_size);
  assert.equal(new Set(tokens).size, tokens.length, 'distinct token texts');
  const types = meta('tokenizer.ggml.token_type') as number[];
  assert.deepEqual([types[0], types[1], types[2]], [3, 3, 1], 'BOS and EOS are control tokens');

  const expected = ['token_embd.weight', 'output_norm.weight', 'output.weight'];
  for (let l = 0; l < cfg.num_hidden_layers; l++) {
    const common = ['attn_norm', 'attn_q', 'attn_kv_a_mqa', 'attn_kv_a_norm', 'attn_k_b', 'attn_v_b', 'attn_output', 'ffn_norm'];
    const ffn = l === 0 ? ['ffn_gate', 'ffn_up', 'ffn_down'] : ['ffn_gate_inp', 'ffn_gate_exps', 'ffn_up_exps', 'ffn_down_exps', 'ffn_gate_shexp', 'ffn_up_shexp', 'ffn_down_shexp'];
    expected.push(...[...common, ...ffn].map((n) => `blk.${l}.${n}.weight`));
  }
  assert.deepEqual([...g.tensors.keys()].sort(), expected.sort());

  const store = TensorStore.openDir(dir);
  const t = (n: string) => g.tensors.get(n)!;
  const bf16 = (n: string) => new Uint16Array(Uint8Array.from(t(n).data).buffer);
  const hfBits = (n: string) => new Uint16Array(Uint8Array.from(store.file(n).readBytes(n)).buffer);
  // Shapes as llama.cpp's loader creates them (ggml order, innermost first).
  const { hidden_size: H, num_attention_heads: heads, kv_lora_rank: R, qk_nope_head_dim: nope, v_head_dim: vd } = cfg;
  const M = cfg.n_routed_experts;
  const I = cfg.moe_intermediate_size;
  assert.deepEqual(t('blk.1.attn_k_b.weight').ne, [nope, R, heads]);
  assert.deepEqual(t('blk.1.attn_v_b.weight').ne, [R, vd, heads]);
  assert.deepEqual(t('blk.1.ffn_gate_exps.weight').ne, [H, I, M]);
  assert.deepEqual(t('blk.1.ffn_down_exps.weight').ne, [I, H, M]);
  assert.deepEqual(t('blk.1.ffn_gate_shexp.weight').ne, [H, 2 * I]);
  assert.deepEqual(t('token_embd.weight').ne, [H, cfg.vocab_size]);
  assert.equal(t('blk.1.attn_k_b.weight').ggmlType, 30, 'k_b stays BF16');
  assert.equal(t('blk.1.attn_norm.weight').ggmlType, 0, 'norms in F32');
  assert.equal(t('blk.1.ffn_gate_inp.weight').ggmlType, 0, 'router in F32');

  // kv_b_proj[h*(nope+v) + d, r]: k part -> k_b[h, r, d], v part -> v_b[h, d - nope, r].
  const kv = hfBits('model.layers.1.self_attn.kv_b_proj.weight');
  const kB = bf16('blk.1.attn_k_b.weight');
  const vB = bf16('blk.1.attn_v_b.weight');
  for (let h = 0; h < heads; h++) {
    for (let d = 0; d < nope + vd; d++) {
      for (let r = 0; r < R; r++) {
        const src = kv[(h * (nope + vd) + d) * R + r];
        const dst = d < nope ? kB[(h * R + r) * nope + d] : vB[(h * vd + (d - nope)) * R + r];
        if (src !== dst) assert.fail(`kv_b split wrong at head ${h} row ${d} col ${r}`);
      }
    }
  }
  // Experts stacked in id order.
  const down = bf16('blk.2.ffn_down_exps.weight');
  for (let e = 0; e < M; e++) {
    const one = hfBits(`model.layers.2.mlp.experts.${e}.down_proj.weight`);
    assert.deepEqual(down.subarray(e * H * I, (e + 1) * H * I), one, `expert ${e}`);
  }
  // Widened tensors hold exactly the stored values.
  const norm = new Float32Array(Uint8Array.from(t('blk.0.attn_kv_a_norm.weight').data).buffer);
  assert.deepEqual(norm, store.file('model.layers.0.self_attn.kv_a_layernorm.weight').readF32('model.layers.0.self_attn.kv_a_layernorm.weight'));
  assert.deepEqual(bf16('output.weight'), hfBits('lm_head.weight'));
});

test('gguf deepseek2: q_lora models map to attn_q_a/_norm/_b; F16 k_b/v_b are widened to F32', () => {
  const root = tempDir();
  // tinyQLora's yarn (mscale != mscale_all_dim) is refused below, so take its q path without rope scaling.
  const cfg = buildConfig('tinyQLora', { rope_scaling: null });
  makeModel(join(root, 'm'), cfg, { dtype: 'f16', seed: 2 });
  convertDeepseekV2(join(root, 'm'), join(root, 'm.gguf'));
  const g = readGguf(join(root, 'm.gguf'));
  assert.equal(metaValue(g, 'deepseek2.attention.q_lora_rank'), 12);
  assert.equal(metaValue(g, 'general.file_type'), 1, 'mostly F16');
  assert.equal(metaValue(g, 'deepseek2.expert_weights_scale'), 1.5);
  assert.ok(!g.metadata.has('deepseek2.rope.scaling.type'));
  assert.deepEqual(g.tensors.get('blk.1.attn_q_a.weight')!.ne, [cfg.hidden_size, 12]);
  assert.deepEqual(g.tensors.get('blk.1.attn_q_b.weight')!.ne, [12, cfg.num_attention_heads * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim)]);
  assert.equal(g.tensors.get('blk.1.attn_q_a_norm.weight')!.ggmlType, 0);
  assert.ok(!g.tensors.has('blk.1.attn_q.weight'));
  assert.equal(g.tensors.get('blk.1.attn_k_b.weight')!.ggmlType, 0, 'F16 k_b widened to F32');
  assert.equal(g.tensors.get('blk.1.attn_q_a.weight')!.ggmlType, 1, 'other F16 weights copied as F16');
  const store = TensorStore.openDir(join(root, 'm'));
  const kv = store.file('model.layers.1.self_attn.kv_b_proj.weight').readF32('model.layers.1.self_attn.kv_b_proj.weight');
  const vB = new Float32Array(Uint8Array.from(g.tensors.get('blk.1.attn_v_b.weight')!.data).buffer);
  const { kv_lora_rank: R, qk_nope_head_dim: nope, v_head_dim: vd } = cfg;
  assert.equal(vB[0], kv[nope * R], 'v_b[0, 0, 0] = kv_b[nope, 0]');
  assert.equal(vB[vd * R + 3], kv[(nope + vd + nope) * R + 3], 'v_b[1, 0, 3] = kv_b[(nope+v)+nope, 3]');
});

test('gguf deepseek2: widenToF32 stores every tensor as F32 holding exactly the stored values', () => {
  const dir = presetModel('tiny', 'bf16');
  const path = join(tempDir(), 'f32.gguf');
  convertDeepseekV2(dir, path, { widenToF32: true });
  const g = readGguf(path);
  assert.equal(metaValue(g, 'general.file_type'), 0);
  for (const t of g.tensors.values()) assert.equal(t.ggmlType, 0, `${t.name} is F32`);
  const store = TensorStore.openDir(dir);
  const f32Of = (n: string) => new Float32Array(Uint8Array.from(g.tensors.get(n)!.data).buffer);
  const hf = (n: string) => store.file(n).readF32(n);
  assert.deepEqual(f32Of('output.weight'), hf('lm_head.weight'));
  const cfg = buildConfig('tiny');
  const per = cfg.moe_intermediate_size * cfg.hidden_size;
  assert.deepEqual(f32Of('blk.1.ffn_up_exps.weight').subarray(3 * per, 4 * per), hf('model.layers.1.mlp.experts.3.up_proj.weight'));
  const kv = hf('model.layers.2.self_attn.kv_b_proj.weight');
  const R = cfg.kv_lora_rank;
  assert.equal(f32Of('blk.2.attn_k_b.weight')[1 * cfg.qk_nope_head_dim + 2], kv[2 * R + 1], 'k_b[0, r=1, d=2] = kv_b[d=2, r=1]');
});

test('gguf deepseek2: configs llama.cpp computes differently are refused', () => {
  const root = tempDir();
  const bad = (name: string, over: Parameters<typeof buildConfig>[1], preset: Parameters<typeof buildConfig>[0] = 'tiny') => {
    const dir = join(root, name);
    makeModel(dir, buildConfig(preset, over), { dtype: 'bf16', seed: 1 });
    return () => convertDeepseekV2(dir, join(root, `${name}.gguf`));
  };
  assert.throws(bad('qlora', {}, 'tinyQLora'), /mscale 1 != mscale_all_dim 0.8/);
  assert.throws(bad('grouped', {}, 'tinyGrouped'), /moe_layer_freq/);
  assert.throws(bad('groups', { topk_method: 'group_limited_greedy', n_group: 4, topk_group: 2 }), /group_limited_greedy/);
  assert.throws(bad('noshared', { n_shared_experts: 0 }), /shared experts/);
  // A checkpoint whose tensors disagree with its config.
  const edited = editedModel(presetModel('tiny', 'bf16'), (t) => t, (cfg) => { cfg.moe_intermediate_size = 17; });
  assert.throws(() => convertDeepseekV2(edited, join(root, 'edited.gguf')), /experts\.0\.gate_proj\.weight has shape \[16, 32\], the config implies \[17, 32\]/);
});

// A Hugging Face DeepSeek-V2 checkpoint (config.json + safetensors) as a GGUF file
// for llama.cpp's `deepseek2` architecture, following its converter
// (conversion/deepseek.py DeepseekV2Model in the llama.cpp bundled with node-llama-cpp
// 3.21.1) and its loader (src/models/deepseek2.cpp):
// - MLA as llama.cpp runs it: one KV head of kv_lora_rank + rope dims, and kv_b_proj split
//   per head into attn_k_b (k part, transposed: [heads, rank, nope]) and attn_v_b
//   ([heads, v, rank]); both kept BF16 (F16 ones abort its CPU scheduler);
// - the routed experts stacked into ffn_{gate,up,down}_exps [experts, out, in];
// - norms and the router in F32 (exact from BF16), as the converter does;
// - q_lora_rank is required unless the layer count is one of V2-Lite's: written as 0 when null;
// - a token list of vocab_size placeholders with the config's BOS/EOS, so token ids pass
//   through unchanged (the peer benchmark feeds token ids, never text).
// Configs llama.cpp would compute differently are refused rather than converted wrong.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { TensorStore } from '../../lib/safetensors/reader.js';
import type { DType } from '../../lib/safetensors/format.js';
import type { DeepseekV2Config } from '../fixtures/config.js';
import { LLAMA_FILE_TYPE, LLAMA_TOKEN_TYPE, arr, bool, f32, str, u32, type GgmlType, type GgufValue } from './format.js';
import { writeGguf, type GgufTensor } from './writer.js';

/** The shape keys every DeepSeek-V2 config.json has. */
type ShapeKey =
  | 'model_type'
  | 'vocab_size'
  | 'hidden_size'
  | 'num_hidden_layers'
  | 'intermediate_size'
  | 'moe_intermediate_size'
  | 'n_routed_experts'
  | 'num_experts_per_tok'
  | 'num_attention_heads'
  | 'q_lora_rank'
  | 'kv_lora_rank'
  | 'qk_nope_head_dim'
  | 'qk_rope_head_dim'
  | 'v_head_dim';

/** config.json as read here: the shape keys, the rest optional with HF's defaults; rope_scaling as
 * published (`type`, or `rope_type` in newer transformers). */
export type HfDeepseekV2Config = Pick<DeepseekV2Config, ShapeKey> &
  Partial<Omit<DeepseekV2Config, ShapeKey | 'rope_scaling'>> & {
    rope_scaling?: {
      type?: string;
      rope_type?: string;
      factor?: number;
      original_max_position_embeddings?: number;
      beta_fast?: number;
      beta_slow?: number;
      mscale?: number;
      mscale_all_dim?: number;
    } | null;
  };

const ARCH = 'deepseek2';

function refuse(what: string): never {
  throw new Error(`gguf deepseek2: ${what}`);
}

/** Throws unless llama.cpp's deepseek2 computes what HF's DeepSeek-V2 computes for `cfg`. */
export function checkSupported(cfg: HfDeepseekV2Config): void {
  if (cfg.model_type !== 'deepseek_v2') refuse(`model_type ${JSON.stringify(cfg.model_type)} is not deepseek_v2`);
  if ((cfg.moe_layer_freq ?? 1) !== 1) refuse('moe_layer_freq != 1 has no deepseek2 equivalent (only leading dense layers)');
  if ((cfg.scoring_func ?? 'softmax') !== 'softmax') refuse(`scoring_func ${cfg.scoring_func} is not softmax`);
  const topk = cfg.topk_method ?? 'greedy';
  // llama.cpp's group selection ranks groups by their top-2 sum (V3), V2's by their max.
  if (!(topk === 'greedy' || (topk === 'group_limited_greedy' && (cfg.n_group ?? 1) <= 1))) {
    refuse(`topk_method ${topk} with n_group ${cfg.n_group} is computed differently by llama.cpp`);
  }
  if ((cfg.hidden_act ?? 'silu') !== 'silu') refuse(`hidden_act ${cfg.hidden_act} is not silu`);
  if (cfg.attention_bias) refuse('attention_bias is not supported');
  if (!cfg.n_routed_experts) refuse('a model without routed experts is not a deepseek2 MoE');
  if (!cfg.n_shared_experts) refuse('deepseek2 requires shared experts (n_shared_experts >= 1)');

}

/** The deepseek2 metadata, in the order llama.cpp's converter writes it. */
export function deepseek2Metadata(cfg: HfDeepseekV2Config, fileType: GgmlType, name = 'expertweave'): Array<[string, GgufValue]> {
  checkSupported(cfg);
  const rank = cfg.kv_lora_rank;
  const rope = cfg.qk_rope_head_dim;
  const norm = cfg.norm_topk_prob ?? false;
  const meta: Array<[string, GgufValue]> = [
    ['general.architecture', str(ARCH)],
    ['general.name', str(name)],
    [`${ARCH}.block_count`, u32(cfg.num_hidden_layers)],
    [`${ARCH}.context_length`, u32(cfg.max_position_embeddings ?? 2048)],
    [`${ARCH}.embedding_length`, u32(cfg.hidden_size)],
    [`${ARCH}.feed_forward_length`, u32(cfg.intermediate_size)],
    [`${ARCH}.attention.head_count`, u32(cfg.num_attention_heads)],
    // MLA runs as MQA over the latent: one KV head of rank + rope dims.
    [`${ARCH}.attention.head_count_kv`, u32(1)],
    [`${ARCH}.rope.freq_base`, f32(cfg.rope_theta ?? 10000)],
    [`${ARCH}.attention.layer_norm_rms_epsilon`, f32(cfg.rms_norm_eps ?? 1e-6)],
    [`${ARCH}.expert_count`, u32(cfg.n_routed_experts)],
    [`${ARCH}.expert_used_count`, u32(cfg.num_experts_per_tok)],
    [`${ARCH}.expert_gating_func`, u32(1)], // LLAMA_EXPERT_GATING_FUNC_TYPE_SOFTMAX
    [`${ARCH}.leading_dense_block_count`, u32(cfg.first_k_dense_replace ?? 0)],
    [`${ARCH}.vocab_size`, u32(cfg.vocab_size)],
    [`${ARCH}.attention.q_lora_rank`, u32(cfg.q_lora_rank ?? 0)],
    [`${ARCH}.attention.kv_lora_rank`, u32(rank)],
    [`${ARCH}.attention.key_length`, u32(rank + rope)],
    [`${ARCH}.attention.value_length`, u32(rank)],
    [`${ARCH}.attention.key_length_mla`, u32(cfg.qk_nope_head_dim + rope)],
    [`${ARCH}.attention.value_length_mla`, u32(cfg.v_head_dim)],
    [`${ARCH}.expert_feed_forward_length`, u32(cfg.moe_intermediate_size)],
    [`${ARCH}.expert_shared_count`, u32(cfg.n_shared_experts ?? 0)],
    // HF V2 either normalises the top-k weights or scales them, never both; llama.cpp does
    // whatever both keys say, so the scale is 1 when normalising.
    [`${ARCH}.expert_weights_scale`, f32(norm ? 1 : cfg.routed_scaling_factor ?? 1)],
    [`${ARCH}.expert_weights_norm`, bool(norm)],
    [`${ARCH}.rope.dimension_count`, u32(rope)],
  ];
  const rs = cfg.rope_scaling;
  const rsType = rs ? rs.type ?? rs.rope_type : undefined;
  if (rs && rsType === 'yarn') {
    if (!(rs.factor && rs.factor > 0) || !rs.original_max_position_embeddings) refuse('yarn rope_scaling needs factor and original_max_position_embeddings');
    // llama.cpp takes mscale == mscale_all_dim (true of every released V2); else cos/sin scale differently.
    const all = rs.mscale_all_dim ?? 0;
    if ((rs.mscale ?? 1) !== all || all === 0) {
      refuse(`yarn with mscale ${rs.mscale} != mscale_all_dim ${rs.mscale_all_dim} (or 0) is not what llama.cpp computes`);
    }
    meta.push(
      [`${ARCH}.rope.scaling.type`, str('yarn')],
      [`${ARCH}.rope.scaling.factor`, f32(rs.factor)],
      [`${ARCH}.rope.scaling.original_context_length`, u32(rs.original_max_position_embeddings)],
      [`${ARCH}.rope.scaling.yarn_beta_fast`, f32(rs.beta_fast ?? 32)],
      [`${ARCH}.rope.scaling.yarn_beta_slow`, f32(rs.beta_slow ?? 1)],
      // The converter stores 0.1 * mscale_all_dim and the loader divides by 0.1 again.
      [`${ARCH}.rope.scaling.yarn_log_multiplier`, f32(0.1 * all)],
    );
  } else if (rs && rsType === 'linear') {
    if (!(rs.factor && rs.factor > 0)) refuse('linear rope_scaling needs a factor');
    meta.push([`${ARCH}.rope.scaling.type`, str('linear')], [`${ARCH}.rope.scaling.factor`, f32(rs.factor)]);
  } else if (rs) {
    refuse(`rope_scaling type ${rsType} is not supported`);
  }
  meta.push(['general.file_type', u32(LLAMA_FILE_TYPE[fileType])], ...passThroughVocab(cfg));
  return meta;
}

/**
 * A byte-level BPE token list of placeholders with no merges: ids map to themselves,
 * BOS/EOS are control tokens. (An SPM list would need the 256 <0xXX> byte tokens: its
 * byte fallback throws on any text it cannot match, and node-llama-cpp tokenizes a few
 * strings at load; BPE simply drops what it cannot match.)
 */
function passThroughVocab(cfg: HfDeepseekV2Config): Array<[string, GgufValue]> {
  const V = cfg.vocab_size;
  const special = new Set([cfg.bos_token_id, cfg.eos_token_id].filter((t): t is number => typeof t === 'number'));
  for (const t of special) if (!(t >= 0 && t < V)) refuse(`special token id ${t} is outside the vocabulary of ${V}`);
  const meta: Array<[string, GgufValue]> = [
    ['tokenizer.ggml.model', str('gpt2')],
    ['tokenizer.ggml.pre', str('default')],
    // Printable ASCII only: GPT-2's byte-level decoding maps these characters to themselves.
    ['tokenizer.ggml.tokens', arr('string', Array.from({ length: V }, (_, i) => `<t${i}>`))],
    ['tokenizer.ggml.token_type', arr('i32', Array.from({ length: V }, (_, i) => (special.has(i) ? LLAMA_TOKEN_TYPE.control : LLAMA_TOKEN_TYPE.normal)))],
    ['tokenizer.ggml.merges', arr('string', [])],
  ];
  if (typeof cfg.bos_token_id === 'number') meta.push(['tokenizer.ggml.bos_token_id', u32(cfg.bos_token_id)]);
  if (typeof cfg.eos_token_id === 'number') meta.push(['tokenizer.ggml.eos_token_id', u32(cfg.eos_token_id)]);
  meta.push(['tokenizer.ggml.add_bos_token', bool(false)], ['tokenizer.ggml.add_eos_token', bool(false)]);
  return meta;
}

const STORED_AS: Partial<Record<DType, GgmlType>> = { F32: 'F32', F16: 'F16', BF16: 'BF16' };

export interface ConvertOptions {
  /** general.name (default "expertweave"). */
  name?: string;
  /** Every tensor widened to F32 (exact): llama.cpp then computes with f32 activations, as ExpertWeave does. */
  widenToF32?: boolean;
}

/** The tensors of `store` under llama.cpp's names, with their data streamed from the checkpoint. */
export function deepseek2Tensors(cfg: HfDeepseekV2Config, store: TensorStore, opts: ConvertOptions = {}): GgufTensor[] {
  checkSupported(cfg);
  const widen = opts.widenToF32 ?? false;
  const H = cfg.hidden_size;
  const heads = cfg.num_attention_heads;
  const nope = cfg.qk_nope_head_dim;
  const vDim = cfg.v_head_dim;
  const rank = cfg.kv_lora_rank;

  const info = (name: string, shape: readonly number[]) => {
    if (!store.has(name)) refuse(`tensor ${name} is missing from the checkpoint`);
    const t = store.info(name);
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      refuse(`tensor ${name} has shape [${t.shape.join(', ')}], the config implies [${shape.join(', ')}]`);
    }
    const type = STORED_AS[t.dtype];
    if (!type) refuse(`tensor ${name} is ${t.dtype}; only F32, F16 and BF16 convert`);
    return { type, dtype: t.dtype };
  };
  /** A weight widened to F32 (exact from F16/BF16). */
  const asF32 = (gguf: string, hf: string, shape: number[]): GgufTensor => {
    info(hf, shape);
    return {
      name: gguf,
      type: 'F32',
      shape,
      write: (emit) => {
        const v = store.file(hf).readF32(hf);
        emit(new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
      },
    };
  };
  /** A weight copied byte for byte (or widened). */
  const copy = (gguf: string, hf: string, shape: number[]): GgufTensor =>
    widen
      ? asF32(gguf, hf, shape)
      : { name: gguf, type: info(hf, shape).type, shape, write: (emit) => emit(store.file(hf).readBytes(hf)) };
  /** Routed experts e = 0..M-1 of one projection stacked into [M, out, in]. */
  const experts = (gguf: string, l: number, proj: string, out: number, inp: number): GgufTensor => {
    const names = Array.from({ length: cfg.n_routed_experts }, (_, e) => `model.layers.${l}.mlp.experts.${e}.${proj}.weight`);
    const types = new Set(names.map((n) => info(n, [out, inp]).type));
    if (types.size !== 1) refuse(`layer ${l} ${proj}: the experts are stored in different dtypes`);
    const one = (n: string): Uint8Array => {
      if (!widen) return store.file(n).readBytes(n);
      const v = store.file(n).readF32(n);
      return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
    };
    return {
      name: gguf,
      type: widen ? 'F32' : [...types][0],
      shape: [cfg.n_routed_experts, out, inp],
      write: (emit) => names.forEach((n) => emit(one(n))),
    };
  };
  /** kv_b_proj [heads * (nope + v), rank] split per head into k_b [heads, rank, nope] and v_b [heads, v, rank]. */
  const kvB = (l: number): GgufTensor[] => {
    const hf = `model.layers.${l}.self_attn.kv_b_proj.weight`;
    const { type } = info(hf, [heads * (nope + vDim), rank]);
    const outType: GgmlType = widen || type === 'F16' ? 'F32' : type; // F16 k_b/v_b abort llama.cpp; F32 is exact
    /** The kv_b_proj elements as 16- or 32-bit words (element order is all the split needs). */
    const load = (): Uint16Array | Uint32Array => {
      const bytes = outType === type ? store.file(hf).readBytes(hf) : new Uint8Array(store.file(hf).readF32(hf).buffer);
      const aligned = bytes.byteOffset % 4 === 0 ? bytes : Uint8Array.from(bytes);
      return outType === 'F32'
        ? new Uint32Array(aligned.buffer, aligned.byteOffset, aligned.byteLength / 4)
        : new Uint16Array(aligned.buffer, aligned.byteOffset, aligned.byteLength / 2);
    };
    const asBytes = (w: Uint16Array | Uint32Array) => new Uint8Array(w.buffer, w.byteOffset, w.byteLength);
    const kB: GgufTensor = {
      name: `blk.${l}.attn_k_b.weight`,
      type: outType,
      shape: [heads, rank, nope],
      write: (emit) => {
        const src = load();
        const out = new (src.constructor as Uint16ArrayConstructor | Uint32ArrayConstructor)(rank * nope);
        for (let h = 0; h < heads; h++) {
          const base = h * (nope + vDim) * rank; // head h's first k row
          for (let d = 0; d < nope; d++) {
            for (let r = 0; r < rank; r++) out[r * nope + d] = src[base + d * rank + r];
          }
          emit(asBytes(out));
        }
      },
    };
    const vB: GgufTensor = {
      name: `blk.${l}.attn_v_b.weight`,
      type: outType,
      shape: [heads, vDim, rank],
      write: (emit) => {
        const src = load();
        for (let h = 0; h < heads; h++) {
          const from = (h * (nope + vDim) + nope) * rank;
          emit(asBytes(src.subarray(from, from + vDim * rank)));
        }
      },
    };
    return [kB, vB];
  };

  const qHead = nope + cfg.qk_rope_head_dim;
  const tensors: GgufTensor[] = [copy('token_embd.weight', 'model.embed_tokens.weight', [cfg.vocab_size, H])];
  for (let l = 0; l < cfg.num_hidden_layers; l++) {
    const p = `model.layers.${l}`;
    const b = `blk.${l}`;
    tensors.push(asF32(`${b}.attn_norm.weight`, `${p}.input_layernorm.weight`, [H]));
    if (cfg.q_lora_rank) {
      tensors.push(
        copy(`${b}.attn_q_a.weight`, `${p}.self_attn.q_a_proj.weight`, [cfg.q_lora_rank, H]),
        asF32(`${b}.attn_q_a_norm.weight`, `${p}.self_attn.q_a_layernorm.weight`, [cfg.q_lora_rank]),
        copy(`${b}.attn_q_b.weight`, `${p}.self_attn.q_b_proj.weight`, [heads * qHead, cfg.q_lora_rank]),
      );
    } else {
      tensors.push(copy(`${b}.attn_q.weight`, `${p}.self_attn.q_proj.weight`, [heads * qHead, H]));
    }
    tensors.push(
      copy(`${b}.attn_kv_a_mqa.weight`, `${p}.self_attn.kv_a_proj_with_mqa.weight`, [rank + cfg.qk_rope_head_dim, H]),
      asF32(`${b}.attn_kv_a_norm.weight`, `${p}.self_attn.kv_a_layernorm.weight`, [rank]),
      ...kvB(l),
      copy(`${b}.attn_output.weight`, `${p}.self_attn.o_proj.weight`, [H, heads * vDim]),
      asF32(`${b}.ffn_norm.weight`, `${p}.post_attention_layernorm.weight`, [H]),
    );
    if (l < (cfg.first_k_dense_replace ?? 0)) {
      const I = cfg.intermediate_size;
      tensors.push(
        copy(`${b}.ffn_gate.weight`, `${p}.mlp.gate_proj.weight`, [I, H]),
        copy(`${b}.ffn_up.weight`, `${p}.mlp.up_proj.weight`, [I, H]),
        copy(`${b}.ffn_down.weight`, `${p}.mlp.down_proj.weight`, [H, I]),
      );
    } else {
      const I = cfg.moe_intermediate_size;
      const S = I * (cfg.n_shared_experts ?? 0);
      tensors.push(
        asF32(`${b}.ffn_gate_inp.weight`, `${p}.mlp.gate.weight`, [cfg.n_routed_experts, H]),
        experts(`${b}.ffn_gate_exps.weight`, l, 'gate_proj', I, H),
        experts(`${b}.ffn_up_exps.weight`, l, 'up_proj', I, H),
        experts(`${b}.ffn_down_exps.weight`, l, 'down_proj', H, I),
        copy(`${b}.ffn_gate_shexp.weight`, `${p}.mlp.shared_experts.gate_proj.weight`, [S, H]),
        copy(`${b}.ffn_up_shexp.weight`, `${p}.mlp.shared_experts.up_proj.weight`, [S, H]),
        copy(`${b}.ffn_down_shexp.weight`, `${p}.mlp.shared_experts.down_proj.weight`, [H, S]),
      );
    }
  }
  tensors.push(asF32('output_norm.weight', 'model.norm.weight', [H]));
  // Tied embeddings: llama.cpp falls back to token_embd when output.weight is absent.
  if (!cfg.tie_word_embeddings) tensors.push(copy('output.weight', 'lm_head.weight', [cfg.vocab_size, H]));
  return tensors;
}

/** Converts the checkpoint in `modelDir` to `outPath`. Returns the file size in bytes. */
export function convertDeepseekV2(modelDir: string, outPath: string, opts: ConvertOptions = {}): number {
  const cfg = JSON.parse(readFileSync(join(modelDir, 'config.json'), 'utf8')) as HfDeepseekV2Config;
  const store = TensorStore.openDir(modelDir);
  const tensors = deepseek2Tensors(cfg, store, opts);
  // general.file_type: the type most of the weights (the experts) are stored as.
  const counts = new Map<GgmlType, number>();
  for (const t of tensors) counts.set(t.type, (counts.get(t.type) ?? 0) + t.shape.reduce((a, d) => a * d, 1));
  const fileType = [...counts.entries()].sort((a, b) => b[1] - a[1])[0][0];
  return writeGguf(outPath, deepseek2Metadata(cfg, fileType, opts.name), tensors);
}

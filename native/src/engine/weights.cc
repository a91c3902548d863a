#include "engine/weights.h"

#include <cstdio>
#include <set>

#include "engine/tensor_names.h"
#include "kernels/cpu/cpu_kernels.h"
#include "memory/expert_pool.h"
#include "util/error.h"

namespace ew {
namespace {

// Binds tensors by name with exact shapes and remembers which ones the config explains.
class Binder {
 public:
  explicit Binder(const TensorStore& store) : store_(store) {}
  TensorView bind(const std::string& name, std::vector<int64_t> shape) {
    used_.insert(name);
    return store_.get_checked(name, shape);
  }
  bool explained(const std::string& name) const { return used_.count(name) != 0; }

 private:
  const TensorStore& store_;
  std::set<std::string> used_;
};

MlpWeights bind_mlp(Binder& b, const std::string& prefix, int64_t H, int64_t W) {
  MlpWeights m;
  m.gate = b.bind(prefix + "gate_proj.weight", {W, H});
  m.up = b.bind(prefix + "up_proj.weight", {W, H});
  m.down = b.bind(prefix + "down_proj.weight", {H, W});
  return m;
}

AttentionWeights bind_mla(Binder& b, const std::string& p, const ModelConfig& c) {
  const int64_t H = c.hidden_size, heads = c.num_attention_heads;
  AttentionWeights a;
  if (c.q_lora_rank == 0) {
    a.q_proj = b.bind(p + "q_proj.weight", {heads * c.q_head_dim(), H});
  } else {
    a.q_a_proj = b.bind(p + "q_a_proj.weight", {c.q_lora_rank, H});
    a.q_a_layernorm = b.bind(p + "q_a_layernorm.weight", {c.q_lora_rank});
    a.q_b_proj = b.bind(p + "q_b_proj.weight", {heads * c.q_head_dim(), c.q_lora_rank});
  }
  a.kv_a_proj_with_mqa = b.bind(p + "kv_a_proj_with_mqa.weight", {c.kv_lora_rank + c.qk_rope_head_dim, H});
  a.kv_a_layernorm = b.bind(p + "kv_a_layernorm.weight", {c.kv_lora_rank});
  a.kv_b_proj = b.bind(p + "kv_b_proj.weight", {heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank});
  a.o_proj = b.bind(p + "o_proj.weight", {H, heads * c.v_head_dim});
  return a;
}

AttentionWeights bind_gqa(Binder& b, const std::string& p, const ModelConfig& c) {
  const int64_t H = c.hidden_size, q = c.num_attention_heads * c.head_dim, kv = c.num_key_value_heads * c.head_dim;
  AttentionWeights a;
  a.q_proj = b.bind(p + "q_proj.weight", {q, H});
  a.k_proj = b.bind(p + "k_proj.weight", {kv, H});
  a.v_proj = b.bind(p + "v_proj.weight", {kv, H});
  a.o_proj = b.bind(p + "o_proj.weight", {H, q});
  if (c.qk_norm) {
    a.q_norm = b.bind(p + "q_norm.weight", {c.head_dim});
    a.k_norm = b.bind(p + "k_norm.weight", {c.head_dim});
  }
  return a;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// DeepSeek-V3's multi-token-prediction layers: model.layers.{L}.* with
// num_hidden_layers <= L < num_hidden_layers + num_nextn_predict_layers.
bool is_mtp_tensor(const ModelConfig& cfg, const std::string& name) {
  if (cfg.num_nextn_predict_layers <= 0 || name.rfind("model.layers.", 0) != 0) return false;
  long long l = -1;
  int used = 0;
  if (std::sscanf(name.c_str(), "model.layers.%lld.%n", &l, &used) != 1 || used == 0) return false;
  return l >= cfg.num_hidden_layers && l < cfg.num_hidden_layers + cfg.num_nextn_predict_layers;
}

}  // namespace

ModelWeights load_model_weights(const std::string& model_dir, const ModelConfig& cfg, const PoolOptions& pool) {
  if (pool.max_adapter_slots < 0)
    fail("load_model_weights: max_adapter_slots must be >= 0, got ", pool.max_adapter_slots);
  ModelWeights w;
  w.store = TensorStore::open_dir(model_dir);
  Binder b(*w.store);
  const int64_t H = cfg.hidden_size, V = cfg.vocab_size, M = cfg.n_routed_experts, I = cfg.moe_intermediate_size;

  w.embed = b.bind("model.embed_tokens.weight", {V, H});
  w.norm = b.bind("model.norm.weight", {H});
  if (cfg.tie_word_embeddings) {
    w.lm_head = w.embed;
    // A checkpoint may still carry the tied copy; transformers ignores it too.
    if (w.store->has("lm_head.weight")) b.bind("lm_head.weight", {V, H});
  } else {
    w.lm_head = b.bind("lm_head.weight", {V, H});
  }

  // Routed experts: views first (all shapes and the common dtype checked), copies later.
  std::vector<std::vector<TensorView>> experts;  // [moe layer][expert * 3 + mat]
  w.layers.resize(static_cast<size_t>(cfg.num_hidden_layers));
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    LayerWeights& L = w.layers[l];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    L.input_layernorm = b.bind(p + "input_layernorm.weight", {H});
    L.post_attention_layernorm = b.bind(p + "post_attention_layernorm.weight", {H});
    L.attn = cfg.gqa() ? bind_gqa(b, p + "self_attn.", cfg) : bind_mla(b, p + "self_attn.", cfg);
    L.is_moe = cfg.is_moe_layer(l);
    if (!L.is_moe) {
      L.dense = bind_mlp(b, p + "mlp.", H, cfg.intermediate_size);
      continue;
    }
    L.moe_index = static_cast<int>(experts.size());
    const std::string block = moe_block_prefix(cfg, l);
    L.router = b.bind(block + ".gate.weight", {M, H});
    if (cfg.topk_method == TopkMethod::NoauxTc) {
      // Checkpoints keep it in fp32; another dtype is widened once (the route op reads fp32).
      L.router_bias = b.bind(block + ".gate.e_score_correction_bias", {M});
      if (L.router_bias.dtype != DType::F32) {
        std::vector<float>& f = w.converted.emplace_back(static_cast<size_t>(M));
        convert_to_f32(L.router_bias.data, L.router_bias.dtype, 0, M, f.data());
        L.router_bias = TensorView{f.data(), DType::F32, {M}};
      }
    }
    if (cfg.n_shared_experts > 0) {
      L.has_shared = true;
      L.shared = bind_mlp(b, p + "mlp.shared_experts.", H, cfg.n_shared_experts * I);
    }
    std::vector<TensorView>& ex = experts.emplace_back();
    for (int64_t e = 0; e < M; ++e) {
      for (int m = 0; m < kExpertMats; ++m) {
        const std::string name = expert_tensor_name(cfg, l, e, static_cast<ExpertMat>(m));
        ex.push_back(b.bind(name, m == 2 ? std::vector<int64_t>{H, I} : std::vector<int64_t>{I, H}));
        if (ex.back().dtype != ex.front().dtype)
          fail("tensor ", name, " is ", dtype_name(ex.back().dtype), " but ", expert_tensor_name(cfg, l, 0, ExpertMat::Gate),
               " is ", dtype_name(ex.front().dtype), ": all routed experts must share one dtype (in ",
               w.store->file_of(name), ")");
      }
    }
    if (experts.size() > 1 && ex.front().dtype != experts.front().front().dtype)
      fail("routed experts of layer ", l, " are ", dtype_name(ex.front().dtype), " but earlier MoE layers are ",
           dtype_name(experts.front().front().dtype), ": all routed experts must share one dtype");
  }

  // Everything stored must be explained by the config: a leftover tensor means the
  // config and the checkpoint disagree (more layers or experts than configured, ...).
  std::vector<std::string> extra;
  size_t mtp_tensors = 0, mtp_bytes = 0;
  for (const std::string& n : w.store->names()) {
    if (b.explained(n) || ends_with(n, ".rotary_emb.inv_freq")) continue;
    if (is_mtp_tensor(cfg, n)) {
      ++mtp_tensors;
      mtp_bytes += w.store->get(n).nbytes();
      continue;
    }
    extra.push_back(n);
  }
  if (!extra.empty()) {
    std::string list;
    for (size_t i = 0; i < extra.size() && i < 5; ++i) list += (i ? ", " : "") + extra[i];
    if (extra.size() > 5) list += ", ...";
    fail(model_dir, ": ", extra.size(), " tensor(s) not used by config.json (", cfg.num_hidden_layers, " layers, ", M,
         " routed experts): ", list);
  }

  if (mtp_tensors > 0)
    std::fprintf(stderr,
                 "expertweave: %s: not loading the %lld multi-token-prediction layer(s) from model.layers.%lld "
                 "(%zu tensors, %.1f MB): they serve speculative decoding only, which is not supported\n",
                 model_dir.c_str(), static_cast<long long>(cfg.num_nextn_predict_layers),
                 static_cast<long long>(cfg.num_hidden_layers), mtp_tensors, mtp_bytes / 1e6);

  if (!experts.empty()) {
    const int n = static_cast<int>(experts.size());
    const DType dt = experts.front().front().dtype;
    w.experts = pool.make_store ? pool.make_store(n, static_cast<int>(M), pool.max_adapter_slots, H, I, dt)
                                : std::make_unique<ExpertPool>(n, static_cast<int>(M), pool.max_adapter_slots, H, I, dt);
    for (size_t li = 0; li < experts.size(); ++li) {
      const int layer = static_cast<int>(li);
      w.experts->map_slots(layer, 0, static_cast<int>(M));
      for (int64_t e = 0; e < M; ++e)
        for (int m = 0; m < kExpertMats; ++m) {
          const TensorView& v = experts[li][e * kExpertMats + m];
          w.experts->write_slot(layer, static_cast<ExpertMat>(m), static_cast<int>(e), v);
          w.store->release_pages(v.data, v.nbytes());  // the pool holds them now
        }
    }
  }
  return w;
}

}  // namespace ew

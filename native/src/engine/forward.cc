#include "engine/forward.h"

#include <algorithm>
#include <cstring>

#include "util/error.h"

namespace ew {

RouterParams router_params(const ModelConfig& cfg) {
  RouterParams p;
  p.n_experts = static_cast<int32_t>(cfg.n_routed_experts);
  p.top_k = static_cast<int32_t>(cfg.num_experts_per_tok);
  p.method = cfg.topk_method;
  p.n_group = static_cast<int32_t>(cfg.n_group);
  p.topk_group = static_cast<int32_t>(cfg.topk_group);
  p.norm_topk_prob = cfg.norm_topk_prob;
  p.routed_scaling_factor = static_cast<float>(cfg.routed_scaling_factor);
  return p;
}

ForwardPass::ForwardPass(const ModelConfig& cfg, const ModelWeights& w, Backend& backend)
    : cfg_(cfg), w_(w), be_(backend), rope_(make_rope_table(cfg)), router_(router_params(cfg)) {}

void ForwardPass::attention(int layer, const std::vector<float>& xn, const StepTokens& st, KvCache& kv,
                            float* out) {
  const AttentionWeights& a = w_.layers[layer].attn;
  const int64_t T = static_cast<int64_t>(st.ids.size()), heads = cfg_.num_attention_heads;
  const int64_t nope = cfg_.qk_nope_head_dim, rope = cfg_.qk_rope_head_dim, R = cfg_.kv_lora_rank;
  const int64_t qd = cfg_.q_head_dim(), width = R + rope;
  const float eps = static_cast<float>(cfg_.rms_norm_eps);

  std::vector<float> q(static_cast<size_t>(T * heads * qd));
  if (cfg_.q_lora_rank > 0) {
    std::vector<float> qa(static_cast<size_t>(T * cfg_.q_lora_rank));
    be_.matmul(xn.data(), T, a.q_a_proj, qa.data());
    be_.rms_norm(qa.data(), cfg_.q_lora_rank, T, cfg_.q_lora_rank, a.q_a_layernorm, eps, qa.data(),
                 cfg_.q_lora_rank);
    be_.matmul(qa.data(), T, a.q_b_proj, q.data());
  } else {
    be_.matmul(xn.data(), T, a.q_proj, q.data());
  }
  std::vector<float> kva(static_cast<size_t>(T * width));  // [c_kv | k_pe] per token
  be_.matmul(xn.data(), T, a.kv_a_proj_with_mqa, kva.data());
  be_.rms_norm(kva.data(), width, T, R, a.kv_a_layernorm, eps, kva.data(), width);
  be_.rope(q.data() + nope, T, heads * qd, heads, qd, st.pos.data(), rope_);
  be_.rope(kva.data() + R, T, width, 1, rope, st.pos.data(), rope_);
  for (int64_t t = 0; t < T; ++t)
    std::memcpy(kv.entry(layer, st.seq[t], st.pos[t]), &kva[t * width], static_cast<size_t>(width) * sizeof(float));

  MlaAttentionArgs args;
  args.q = q.data();
  args.T = T;
  args.n_heads = heads;
  args.nope = nope;
  args.rope = rope;
  args.v_dim = cfg_.v_head_dim;
  args.rank = R;
  args.kv_b = a.kv_b_proj;
  args.cache = &kv;
  args.layer = layer;
  args.seq = st.seq.data();
  args.pos = st.pos.data();
  args.scale = rope_.softmax_scale;
  std::vector<float> heads_out(static_cast<size_t>(T * heads * cfg_.v_head_dim));
  args.out = heads_out.data();
  be_.mla_attention(args);
  be_.matmul(heads_out.data(), T, a.o_proj, out);
}

void ForwardPass::ffn(int layer, const std::vector<float>& xn, const StepTokens& st, const RerouteTables& tables,
                      float* out) {
  const LayerWeights& L = w_.layers[layer];
  const int64_t T = static_cast<int64_t>(st.ids.size()), H = cfg_.hidden_size;
  if (!L.is_moe) {
    be_.mlp(xn.data(), T, L.dense.gate, L.dense.up, L.dense.down, out);
    return;
  }
  const int k = router_.top_k;
  std::vector<int32_t> slots(static_cast<size_t>(T * k));
  std::vector<float> weights(static_cast<size_t>(T * k));
  be_.route(xn.data(), T, H, L.router, router_, tables.view(L.moe_index), st.adapter_rows.data(), slots.data(),
            weights.data());
  std::vector<int32_t> distinct = slots;
  std::sort(distinct.begin(), distinct.end());
  expert_groups_ += std::unique(distinct.begin(), distinct.end()) - distinct.begin();
  be_.grouped_experts(xn.data(), T, *w_.experts, L.moe_index, slots.data(), weights.data(), k, out);
  if (L.has_shared) {
    std::vector<float> shared(static_cast<size_t>(T * H));
    be_.mlp(xn.data(), T, L.shared.gate, L.shared.up, L.shared.down, shared.data());
    for (int64_t i = 0; i < T * H; ++i) out[i] += shared[i];
  }
}

std::vector<float> ForwardPass::run(const StepTokens& st, KvCache& kv, const RerouteTables& tables) {
  const int64_t T = static_cast<int64_t>(st.ids.size()), H = cfg_.hidden_size, V = cfg_.vocab_size;
  const float eps = static_cast<float>(cfg_.rms_norm_eps);
  std::vector<float> x(static_cast<size_t>(T * H)), xn(x.size()), delta(x.size());
  expert_groups_ = 0;
  be_.embed(w_.embed, st.ids.data(), T, x.data());
  for (int layer = 0; layer < static_cast<int>(cfg_.num_hidden_layers); ++layer) {
    const LayerWeights& L = w_.layers[layer];
    be_.rms_norm(x.data(), H, T, H, L.input_layernorm, eps, xn.data(), H);
    attention(layer, xn, st, kv, delta.data());
    for (size_t i = 0; i < x.size(); ++i) x[i] += delta[i];
    be_.rms_norm(x.data(), H, T, H, L.post_attention_layernorm, eps, xn.data(), H);
    ffn(layer, xn, st, tables, delta.data());
    for (size_t i = 0; i < x.size(); ++i) x[i] += delta[i];
  }
  const int64_t n_out = static_cast<int64_t>(st.logit_rows.size());
  std::vector<float> last(static_cast<size_t>(n_out * H));
  for (int64_t i = 0; i < n_out; ++i)
    be_.rms_norm(&x[st.logit_rows[i] * H], H, 1, H, w_.norm, eps, &last[i * H], H);
  std::vector<float> logits(static_cast<size_t>(n_out * V));
  be_.matmul(last.data(), n_out, w_.lm_head, logits.data());
  return logits;
}

}  // namespace ew

#include "engine/forward.h"

#include <algorithm>

#include "util/error.h"

namespace ew {
namespace {

// Runs attention over token chunks whose workspace (on the GPU, the scores or partial sums
// of every head over max_ctx positions) fits ForwardPass::kMaxAttentionWorkspace; each
// token's result is the same in any chunk.
template <typename Bytes, typename Run>
void in_token_chunks(int64_t T, Arena& arena, Bytes workspace_bytes, Run run) {
  int64_t chunk = T;
  while (chunk > 1 && workspace_bytes(chunk) > ForwardPass::kMaxAttentionWorkspace) chunk = (chunk + 1) / 2;
  void* ws = arena.take(workspace_bytes(chunk));
  for (int64_t t0 = 0; t0 < T; t0 += chunk) run(t0, std::min(chunk, T - t0), ws);
}

// Layer `layer` of the paged cache, addressed through the step's block tables.
KvLayerView layer_view(const PagedKvCache& cache, int layer, const StepInputs& in) {
  KvLayerView v;
  v.data = static_cast<uint8_t*>(cache.data) +
           static_cast<size_t>(layer) * cache.block_size * cache.width * dtype_size(cache.dtype);
  v.block_stride = static_cast<int64_t>(cache.n_layers) * cache.block_size * cache.width;
  v.block_size = cache.block_size;
  v.width = static_cast<int32_t>(cache.width);
  v.block_tables = in.block_tables;
  v.max_blocks = static_cast<int32_t>(in.max_blocks);
  v.dtype = cache.dtype;
  return v;
}

}  // namespace

RouterParams router_params(const ModelConfig& cfg) {
  RouterParams p;
  p.n_experts = static_cast<int32_t>(cfg.n_routed_experts);
  p.top_k = static_cast<int32_t>(cfg.num_experts_per_tok);
  p.scoring = cfg.scoring_func == ScoringFunc::Sigmoid ? RouterScoring::Sigmoid : RouterScoring::Softmax;
  p.groups = cfg.topk_method == TopkMethod::GroupLimitedGreedy ? GroupRule::BestScore
             : cfg.topk_method == TopkMethod::NoauxTc          ? GroupRule::TopTwoSum
                                                               : GroupRule::None;
  p.n_group = static_cast<int32_t>(cfg.n_group);
  p.topk_group = static_cast<int32_t>(cfg.topk_group);
  const float rsf = static_cast<float>(cfg.routed_scaling_factor);
  switch (cfg.family) {
    case ModelFamily::DeepseekV2:  // MoEGate: normalised (k > 1) or scaled, never both
      p.normalize = cfg.norm_topk_prob && p.top_k > 1;
      p.norm_eps = 1e-20f;
      p.scale = p.normalize ? 1.f : rsf;
      break;
    case ModelFamily::DeepseekV3:  // normalised when k > 1, then always scaled
      p.normalize = cfg.norm_topk_prob && p.top_k > 1;
      p.norm_eps = 1e-20f;
      p.scale = rsf;
      break;
    case ModelFamily::Qwen3Moe:  // norm_topk_prob, also for k = 1, no epsilon
    case ModelFamily::Mixtral:   // always renormalised over the chosen (norm_topk_prob set at parse)
      p.normalize = cfg.norm_topk_prob;
      break;
  }
  return p;
}

ForwardPass::ForwardPass(const ModelConfig& cfg, const ModelTensors& w, Ops& ops, float softmax_scale)
    : cfg_(cfg), w_(w), ops_(ops), router_(router_params(cfg)) {
  if (static_cast<int64_t>(w.layers.size()) != cfg.num_hidden_layers)
    fail("forward pass: ", w.layers.size(), " layers of tensors for a config of ", cfg.num_hidden_layers);
  mla_.n_heads = static_cast<int32_t>(cfg.num_attention_heads);
  mla_.nope = static_cast<int32_t>(cfg.qk_nope_head_dim);
  mla_.rope = static_cast<int32_t>(cfg.qk_rope_head_dim);
  mla_.v_dim = static_cast<int32_t>(cfg.v_head_dim);
  mla_.kv_rank = static_cast<int32_t>(cfg.kv_lora_rank);
  mla_.softmax_scale = softmax_scale;
  gqa_.n_heads = static_cast<int32_t>(cfg.num_attention_heads);
  gqa_.kv_heads = static_cast<int32_t>(cfg.num_key_value_heads);
  gqa_.head_dim = static_cast<int32_t>(cfg.head_dim);
  gqa_.softmax_scale = softmax_scale;
}

// MLA (DeepSeek), absorbed: the cache holds each token's normed c_kv and rotated k_pe.
void ForwardPass::mla_attention(int layer, const StepInputs& in, const PagedKvCache& cache, Arena& arena, float* xn,
                                float* x) {
  const LayerTensors& L = w_.layers[layer];
  const int64_t T = in.T, H = cfg_.hidden_size, heads = cfg_.num_attention_heads, qd = cfg_.q_head_dim();
  const int64_t nope = cfg_.qk_nope_head_dim, R = cfg_.kv_lora_rank, rd = cfg_.qk_rope_head_dim, width = R + rd;
  const int64_t vd = cfg_.v_head_dim;
  const float eps = static_cast<float>(cfg_.rms_norm_eps);

  ops_.rms_norm(x, H, L.input_norm, eps, xn, H, T, H);
  float* q = arena.take_n<float>(T * heads * qd);
  if (cfg_.q_lora_rank > 0) {
    const int64_t qr = cfg_.q_lora_rank;
    float* qa = arena.take_n<float>(T * qr);
    ops_.matmul(xn, T, L.q_a, qr, H, qa);
    ops_.rms_norm(qa, qr, L.q_a_norm, eps, qa, qr, T, qr);
    ops_.matmul(qa, T, L.q_b, heads * qd, qr, q);
  } else {
    ops_.matmul(xn, T, L.q_proj, heads * qd, H, q);
  }
  float* kva = arena.take_n<float>(T * width);  // [c_kv | k_pe] per token
  ops_.matmul(xn, T, L.kv_a, width, H, kva);
  ops_.rms_norm(kva, width, L.kv_a_norm, eps, kva, width, T, R);
  ops_.rope(q + nope, T, heads, heads * qd, qd, rd, in.cos, in.sin);
  ops_.rope(kva + R, T, 1, width, rd, rd, in.cos, in.sin);

  const KvLayerView cv = layer_view(cache, layer, in);  // width: run() checked it is R + rd
  ops_.kv_write(cv, kva, T, in.seq, in.pos);

  float* attn = arena.take_n<float>(T * heads * vd);
  in_token_chunks(
      T, arena, [&](int64_t n) { return ops_.mla_workspace_bytes(n, mla_, in.max_ctx); },
      [&](int64_t t0, int64_t n, void* ws) {
        ops_.mla_attention(q + t0 * heads * qd, n, cv, in.seq + t0, in.pos + t0, L.kv_b, mla_, in.max_ctx,
                           attn + t0 * heads * vd, ws);
      });
  ops_.matmul(attn, T, L.o_proj, H, heads * vd, x, /*accumulate=*/true);
}

// GQA (Qwen3-MoE, Mixtral): keys and values projected side by side into the cache row
// layout [K | V], Qwen3's per-head RMSNorm on q and k, rotate_half RoPE on both, then
// attention of each query head over its KV head.
void ForwardPass::gqa_attention(int layer, const StepInputs& in, const PagedKvCache& cache, Arena& arena, float* xn,
                                float* x) {
  const LayerTensors& L = w_.layers[layer];
  const int64_t T = in.T, H = cfg_.hidden_size, heads = cfg_.num_attention_heads, kvh = cfg_.num_key_value_heads;
  const int64_t D = cfg_.head_dim, qd = heads * D, kvd = kvh * D;
  const float eps = static_cast<float>(cfg_.rms_norm_eps);

  ops_.rms_norm(x, H, L.input_norm, eps, xn, H, T, H);
  float* q = arena.take_n<float>(T * qd);
  float* kv = arena.take_n<float>(T * 2 * kvd);  // [k | v] per token: the cache entry
  ops_.matmul(xn, T, L.q_proj, qd, H, q);
  ops_.matmul_pair(xn, T, L.k_proj, kvd, L.v_proj, kvd, H, kv);
  if (cfg_.qk_norm) {
    ops_.rms_norm(q, D, L.q_norm, eps, q, D, T * heads, D);  // every head of every token is one row
    for (int64_t g = 0; g < kvh; ++g) ops_.rms_norm(kv + g * D, 2 * kvd, L.k_norm, eps, kv + g * D, 2 * kvd, T, D);
  }
  ops_.rope(q, T, heads, qd, D, D, in.cos, in.sin, RopeLayout::RotateHalf);
  ops_.rope(kv, T, kvh, 2 * kvd, D, D, in.cos, in.sin, RopeLayout::RotateHalf);

  const KvLayerView cv = layer_view(cache, layer, in);  // width: run() checked it is 2 * kvd
  ops_.kv_write(cv, kv, T, in.seq, in.pos);

  float* attn = arena.take_n<float>(T * qd);
  in_token_chunks(
      T, arena, [&](int64_t n) { return ops_.gqa_workspace_bytes(n, gqa_, in.max_ctx); },
      [&](int64_t t0, int64_t n, void* ws) {
        ops_.gqa_attention(q + t0 * qd, n, cv, in.seq + t0, in.pos + t0, gqa_, in.max_ctx, attn + t0 * qd, ws);
      });
  ops_.matmul(attn, T, L.o_proj, H, qd, x, /*accumulate=*/true);
}

// x += FFN(RMSNorm(x)): the routed experts and the shared experts summed into one delta
// first (routed, then shared), then added to x; a dense layer's MLP likewise.
void ForwardPass::ffn(int layer, const StepInputs& in, const RerouteTablesView& tables, Arena& arena, float* xn,
                      float* x, const SlotObserver* observe) {
  const LayerTensors& L = w_.layers[layer];
  const int64_t T = in.T, H = cfg_.hidden_size;
  ops_.rms_norm(x, H, L.post_norm, static_cast<float>(cfg_.rms_norm_eps), xn, H, T, H);
  float* delta = arena.take_n<float>(T * H);
  bool have = false;
  if (L.moe) {
    const int64_t M = router_.n_experts, k = router_.top_k;
    float* logits = arena.take_n<float>(T * M);
    // fp32 at every batch size: bf16-rounded activations could flip a near-tie in the
    // top-k, and with it whole experts.
    ops_.matmul_exact(xn, T, L.router, M, H, logits);
    int32_t* slots = arena.take_n<int32_t>(T * k);
    float* weights = arena.take_n<float>(T * k);
    const RerouteTableView tv{tables.data + static_cast<int64_t>(L.moe_index) * tables.n_rows * tables.n_experts,
                              tables.n_rows, tables.n_experts};
    ops_.route(logits, T, router_, tv, in.rows, slots, weights, nullptr,
               static_cast<const float*>(L.router_bias.data));
    if (observe) (*observe)(L.moe_index, slots, T * k);
    void* ws = arena.take(ops_.moe_workspace_bytes(T, k, L.experts));
    ops_.moe(xn, T, k, slots, weights, L.experts, delta, /*accumulate=*/false, ws);
    have = true;
  }
  if (L.mlp_width > 0) {
    const int64_t W = L.mlp_width;
    float* gu = arena.take_n<float>(T * 2 * W);
    float* a = arena.take_n<float>(T * W);
    ops_.matmul_pair(xn, T, L.gate, W, L.up, W, H, gu);
    ops_.silu_mul(gu, gu + W, 2 * W, a, T, W);
    ops_.matmul(a, T, L.down, H, W, delta, /*accumulate=*/have);
    have = true;
  }
  if (have) ops_.add(x, delta, T * H);
}

float* ForwardPass::run(const StepInputs& in, const PagedKvCache& cache, const RerouteTablesView& tables,
                        Arena& arena, float* logits, const SlotObserver* observe) {
  const int64_t T = in.T, H = cfg_.hidden_size, V = cfg_.vocab_size;
  if (T <= 0) fail("forward pass: a step needs at least one token");
  if (cache.width != cfg_.kv_cache_width() || cache.n_layers != cfg_.num_hidden_layers)
    fail("forward pass: KV cache of ", cache.n_layers, " layers x ", cache.width, " for a config of ",
         cfg_.num_hidden_layers, " x ", cfg_.kv_cache_width());
  if (cfg_.num_moe_layers() > 0 && tables.n_experts != router_.n_experts)
    fail("forward pass: reroute tables of ", tables.n_experts, " experts for a router of ", router_.n_experts);
  float* x = arena.take_n<float>(T * H);
  float* xn = arena.take_n<float>(T * H);
  ops_.embed(in.ids, T, w_.embed, V, H, x);
  for (int l = 0; l < static_cast<int>(w_.layers.size()); ++l) {
    const Arena::Mark m = arena.mark();  // the layer's intermediates go back before the next layer
    if (cfg_.gqa())
      gqa_attention(l, in, cache, arena, xn, x);
    else
      mla_attention(l, in, cache, arena, xn, x);
    arena.rewind(m);
    ffn(l, in, tables, arena, xn, x, observe);
    arena.rewind(m);
  }
  if (in.n_out == 0) return nullptr;
  float* last = arena.take_n<float>(in.n_out * H);
  ops_.gather_rows(x, H, in.out_rows, in.n_out, H, last);
  ops_.rms_norm(last, H, w_.norm, static_cast<float>(cfg_.rms_norm_eps), last, H, in.n_out, H);
  if (!logits) logits = arena.take_n<float>(in.n_out * V);
  ops_.matmul(last, in.n_out, w_.lm_head, V, H, logits);
  return logits;
}

}  // namespace ew

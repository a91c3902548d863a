#include "engine/cpu_runner.h"

#include "engine/rope_config.h"
#include "util/error.h"

namespace ew {
namespace {

Weight view(const TensorView& t) { return {t.data, t.dtype}; }

}  // namespace

ModelTensors host_model_tensors(const ModelWeights& w) {
  if (w.experts && w.experts->device_memory())
    fail("CPU runner: the routed experts live in device memory; the CPU needs a host expert pool");
  ModelTensors m;
  m.embed = view(w.embed);
  m.norm = view(w.norm);
  m.lm_head = view(w.lm_head);
  for (const LayerWeights& L : w.layers) {
    LayerTensors t;
    t.input_norm = view(L.input_layernorm);
    t.post_norm = view(L.post_attention_layernorm);
    t.q_proj = view(L.attn.q_proj);
    t.q_a = view(L.attn.q_a_proj);
    t.q_a_norm = view(L.attn.q_a_layernorm);
    t.q_b = view(L.attn.q_b_proj);
    t.kv_a = view(L.attn.kv_a_proj_with_mqa);
    t.kv_a_norm = view(L.attn.kv_a_layernorm);
    t.kv_b = view(L.attn.kv_b_proj);
    t.o_proj = view(L.attn.o_proj);
    const MlpWeights* mlp = L.is_moe ? (L.has_shared ? &L.shared : nullptr) : &L.dense;
    if (mlp) {
      t.gate = view(mlp->gate);
      t.up = view(mlp->up);
      t.down = view(mlp->down);
      t.mlp_width = mlp->gate.dim(0);
    }
    t.moe = L.is_moe;
    if (L.is_moe) {
      t.moe_index = L.moe_index;
      t.router = view(L.router);
      t.experts = moe_weights(*w.experts, L.moe_index);
    }
    m.layers.push_back(t);
  }
  return m;
}

CpuRunner::CpuRunner(const ModelConfig& cfg, const ModelWeights& w, CpuPath path)
    : tensors_(host_model_tensors(w)),
      rope_(make_rope_table(cfg)),
      ops_(path),
      forward_(cfg, tensors_, ops_, rope_.softmax_scale),
      arena_(host_arena_memory()) {}

StepLogits CpuRunner::run(const StepTokens& st, const std::vector<uint8_t>&, KvCache& kv,
                          const RerouteTables& tables) {
  const int64_t V = forward_.config().vocab_size;
  const StepMetadata meta = pack_step_metadata(st, kv, rope_);
  if (!kv.has_host_storage()) fail("CPU runner: the KV cache has no host storage");
  const LatentCache lc{kv.block_layer(0, 0), kv.n_layers(), kv.block_size(), kv.width()};
  const RerouteTablesView tv{tables.data().data(), tables.n_rows(), tables.n_experts()};
  StepLogits out;
  out.rows.resize(static_cast<size_t>(meta.n_out * V));
  for (int64_t i = 0; i < meta.n_out; ++i) out.row_of.push_back(i);
  arena_.reset();
  forward_.run(step_inputs(meta, meta.bytes.data()), lc, tv, arena_, out.rows.data(), observe_ ? &observe_ : nullptr);
  return out;
}

}  // namespace ew

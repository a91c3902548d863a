#include "engine/model_tensors.h"

namespace ew {
namespace {

// One MoE layer of an expert store as the moe op reads it.
MoeWeights moe_weights(const ExpertStore& store, int moe_layer) {
  MoeWeights m;
  m.gate = store.base(moe_layer, ExpertMat::Gate);
  m.up = store.base(moe_layer, ExpertMat::Up);
  m.down = store.base(moe_layer, ExpertMat::Down);
  m.dtype = store.dtype();
  m.n_slots = store.capacity();
  m.H = store.hidden();
  m.I = store.width();
  return m;
}

}  // namespace

ModelTensors model_tensors(const ModelWeights& w, const TensorPlacement& p) {
  ModelTensors m;
  m.embed = p.place(w.embed);
  m.norm = p.place(w.norm);
  m.lm_head = p.place(w.lm_head);
  for (const LayerWeights& L : w.layers) {
    LayerTensors t;
    t.input_norm = p.place(L.input_layernorm);
    t.post_norm = p.place(L.post_attention_layernorm);
    t.q_proj = p.place(L.attn.q_proj);
    t.q_a = p.place(L.attn.q_a_proj);
    t.q_a_norm = p.place(L.attn.q_a_layernorm);
    t.q_b = p.place(L.attn.q_b_proj);
    t.kv_a = p.place(L.attn.kv_a_proj_with_mqa);
    t.kv_a_norm = p.place(L.attn.kv_a_layernorm);
    t.kv_b = p.place(L.attn.kv_b_proj);
    if (L.attn.k_proj.data) p.place_gate_up(L.attn.k_proj, L.attn.v_proj, &t.k_proj, &t.v_proj);  // [k | v] in one pass
    t.q_norm = p.place(L.attn.q_norm);
    t.k_norm = p.place(L.attn.k_norm);
    t.o_proj = p.place(L.attn.o_proj);
    const MlpWeights* mlp = L.is_moe ? (L.has_shared ? &L.shared : nullptr) : &L.dense;
    if (mlp) {
      p.place_gate_up(mlp->gate, mlp->up, &t.gate, &t.up);
      t.down = p.place(mlp->down);
      t.mlp_width = mlp->gate.dim(0);
    }
    t.moe = L.is_moe;
    if (L.is_moe) {
      t.moe_index = L.moe_index;
      t.router = p.place(L.router);
      t.router_bias = p.place(L.router_bias);
      t.experts = moe_weights(*w.experts, L.moe_index);
    }
    m.layers.push_back(t);
  }
  return m;
}

}  // namespace ew

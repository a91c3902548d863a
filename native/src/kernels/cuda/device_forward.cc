#include "kernels/cuda/device_forward.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>

#include "engine/step_metadata.h"
#include "kernels/cuda/router_cuda.h"
#include "util/error.h"

namespace ew {
namespace cuda {
namespace {

constexpr size_t kMaxGraphs = 64;

cudaStream_t cs(void* s) { return static_cast<cudaStream_t>(s); }

}  // namespace

struct DeviceForward::Graph {
  cudaGraphExec_t exec = nullptr;
  float* logits = nullptr;
  int32_t* ids = nullptr;
  float* lp = nullptr;
  ~Graph() {
    if (exec) cudaGraphExecDestroy(exec);
  }
};

DeviceModel upload_model(const ModelWeights& w, const ExpertStore& pool,
                         std::vector<DeviceBuffer>& storage) {
  if (!pool.device_memory()) fail("upload_model: the routed experts must live in device memory (ExpertPoolCuda)");
  auto up = [&](const TensorView& t) -> DevTensor {
    if (!t.data) return {};
    storage.emplace_back(t.nbytes());
    storage.back().upload(t.data, t.nbytes());
    return {storage.back().data(), t.dtype};
  };
  // gate [W, H] and up [W, H] as one [2W, H] matrix: one GEMV reads both.
  auto fused = [&](const MlpWeights& m, const std::string& where) -> DevTensor {
    if (m.gate.dtype != m.up.dtype)
      fail(where, ": gate_proj is ", dtype_name(m.gate.dtype), " but up_proj is ", dtype_name(m.up.dtype),
           ": the CUDA backend needs them in one dtype");
    storage.emplace_back(m.gate.nbytes() + m.up.nbytes());
    storage.back().upload(m.gate.data, m.gate.nbytes());
    storage.back().upload(m.up.data, m.up.nbytes(), m.gate.nbytes());
    return {storage.back().data(), m.gate.dtype};
  };
  DeviceModel d;
  d.embed = up(w.embed);
  d.norm = up(w.norm);
  d.lm_head = up(w.lm_head);
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const LayerWeights& L = w.layers[l];
    const std::string where = "layer " + std::to_string(l);
    DeviceLayer D;
    D.input_norm = up(L.input_layernorm);
    D.post_norm = up(L.post_attention_layernorm);
    D.q_proj = up(L.attn.q_proj);
    D.q_a = up(L.attn.q_a_proj);
    D.q_a_norm = up(L.attn.q_a_layernorm);
    D.q_b = up(L.attn.q_b_proj);
    D.kv_a = up(L.attn.kv_a_proj_with_mqa);
    D.kv_a_norm = up(L.attn.kv_a_layernorm);
    D.kv_b = up(L.attn.kv_b_proj);
    D.o_proj = up(L.attn.o_proj);
    const MlpWeights* mlp = L.is_moe ? (L.has_shared ? &L.shared : nullptr) : &L.dense;
    if (mlp) {
      D.gate_up = fused(*mlp, where);
      D.down = up(mlp->down);
      D.mlp_width = mlp->gate.dim(0);
    }
    D.moe = L.is_moe;
    if (L.is_moe) {
      D.moe_index = L.moe_index;
      D.router = up(L.router);
      D.experts.gate = pool.base(L.moe_index, ExpertMat::Gate);
      D.experts.up = pool.base(L.moe_index, ExpertMat::Up);
      D.experts.down = pool.base(L.moe_index, ExpertMat::Down);
      D.experts.dtype = pool.dtype();
      D.experts.n_slots = pool.capacity();
      D.experts.H = pool.hidden();
      D.experts.I = pool.width();
    }
    d.layers.push_back(D);
  }
  return d;
}

DeviceForward::DeviceForward(const ModelConfig& cfg, DeviceModel model, const KvCache& kv, int n_reroute_rows,
                             std::vector<DeviceBuffer> storage)
    : cfg_(cfg), m_(std::move(model)), storage_(std::move(storage)), rope_(make_rope_table(cfg)),
      router_(router_params(cfg)) {
  if (static_cast<int64_t>(m_.layers.size()) != cfg.num_hidden_layers)
    fail("DeviceForward: ", m_.layers.size(), " layers for a config of ", cfg.num_hidden_layers);
  if (kv.width() != cfg.kv_cache_width() || kv.n_layers() != cfg.num_hidden_layers)
    fail("DeviceForward: KV cache geometry does not match the config");
  n_layers_ = kv.n_layers();
  block_size_ = kv.block_size();
  layer_floats_ = static_cast<int64_t>(block_size_) * kv.width();
  cache_ = DeviceBuffer(static_cast<size_t>(kv.total_blocks()) * n_layers_ * layer_floats_ * sizeof(float));
  cache_.fill_bytes(0);
  n_rows_ = n_reroute_rows;
  reroute_ = DeviceBuffer(static_cast<size_t>(cfg.num_moe_layers()) * n_rows_ * cfg.n_routed_experts * sizeof(int32_t));
  EW_CUDA_CHECK(cudaDeviceSynchronize());  // the fill ran on the legacy stream
}

DeviceForward::~DeviceForward() {
  graphs_.clear();
  if (meta_pinned_) cudaFreeHost(meta_pinned_);
}

std::string DeviceForward::device_name() const { return "cuda: " + device_description(); }

void DeviceForward::reset_scratch() {
  scratch_.reset();
  if (scratch_.base() != scratch_base_) {  // reallocated: captured addresses are stale
    graphs_.clear();
    scratch_base_ = scratch_.base();
  }
}

void DeviceForward::drop_graphs() {
  graphs_.clear();
  seen_.clear();
}

void DeviceForward::prepare(const StepTokens& st, const KvCache& kv, const RerouteTables& tables) {
  if (tables.n_rows() != n_rows_ || tables.n_experts() != cfg_.n_routed_experts)
    fail("DeviceForward: reroute tables of ", tables.n_rows(), " rows x ", tables.n_experts(), " experts, expected ",
         n_rows_, " x ", cfg_.n_routed_experts);
  const StepMetadata meta = pack_step_metadata(st, kv, rope_);
  const size_t total = meta.bytes.size();
  // The device copy lives at a fixed address (graphs read it); growing it drops them.
  if (meta_.bytes() < total) {
    drop_graphs();
    meta_ = DeviceBuffer(total + total / 2);
  }
  if (meta_pinned_bytes_ < meta_.bytes()) {
    if (meta_pinned_) EW_CUDA_CHECK(cudaFreeHost(meta_pinned_));
    meta_pinned_ = nullptr;
    EW_CUDA_CHECK(cudaMallocHost(&meta_pinned_, meta_.bytes()));
    meta_pinned_bytes_ = meta_.bytes();
  }
  std::memcpy(meta_pinned_, meta.bytes.data(), total);
  EW_CUDA_CHECK(cudaMemcpyAsync(meta_.data(), meta_pinned_, total, cudaMemcpyHostToDevice, cs(stream_.get())));

  Plan p;
  p.T = meta.T, p.n_out = meta.n_out, p.n_seqs = meta.n_seqs;
  p.max_ctx = meta.max_ctx, p.max_blocks = meta.max_blocks, p.decode = meta.decode;
  const auto* base = static_cast<const uint8_t*>(meta_.data());
  auto i32 = [&](StepMetadata::Section sec) { return reinterpret_cast<const int32_t*>(base + meta.offset[sec]); };
  p.ids = i32(StepMetadata::kIds);
  p.seq = i32(StepMetadata::kSeq);
  p.pos = i32(StepMetadata::kPos);
  p.rows = i32(StepMetadata::kRows);
  p.out_rows = i32(StepMetadata::kOutRows);
  p.tables = i32(StepMetadata::kTables);
  p.cos = reinterpret_cast<const float*>(base + meta.offset[StepMetadata::kCos]);
  p.sin = reinterpret_cast<const float*>(base + meta.offset[StepMetadata::kSin]);
  plan_ = p;

  if (tables.version() != reroute_version_ && reroute_.bytes() > 0) {
    // Pageable source: the copy is staged before this call returns, so the host table
    // may change afterwards (the engine changes it only between steps anyway).
    EW_CUDA_CHECK(cudaMemcpyAsync(reroute_.data(), tables.data().data(), reroute_.bytes(), cudaMemcpyHostToDevice,
                                  cs(stream_.get())));
    reroute_version_ = tables.version();
  }
}

void DeviceForward::attention(const DeviceLayer& L, int layer, float* xn, float* x) {
  void* s = stream_.get();
  const Plan& p = plan_;
  const int64_t T = p.T, H = cfg_.hidden_size, heads = cfg_.num_attention_heads, qd = cfg_.q_head_dim();
  const int64_t nope = cfg_.qk_nope_head_dim, R = cfg_.kv_lora_rank, rd = cfg_.qk_rope_head_dim, width = R + rd;
  const int64_t vd = cfg_.v_head_dim;
  const float eps = static_cast<float>(cfg_.rms_norm_eps);

  rmsnorm(x, H, L.input_norm.p, L.input_norm.dt, xn, H, T, H, eps, s);
  float* q = scratch_.take_n<float>(T * heads * qd);
  if (cfg_.q_lora_rank > 0) {
    const int64_t qr = cfg_.q_lora_rank;
    float* qa = scratch_.take_n<float>(T * qr);
    matmul(xn, T, L.q_a.p, L.q_a.dt, qr, H, qa, s);
    rmsnorm(qa, qr, L.q_a_norm.p, L.q_a_norm.dt, qa, qr, T, qr, eps, s);
    matmul(qa, T, L.q_b.p, L.q_b.dt, heads * qd, qr, q, s);
  } else {
    matmul(xn, T, L.q_proj.p, L.q_proj.dt, heads * qd, H, q, s);
  }
  float* kva = scratch_.take_n<float>(T * width);  // [c_kv | k_pe] per token
  matmul(xn, T, L.kv_a.p, L.kv_a.dt, width, H, kva, s);
  rmsnorm(kva, width, L.kv_a_norm.p, L.kv_a_norm.dt, kva, width, T, R, eps, s);
  rope(q + nope, T, heads, heads * qd, qd, rd, p.cos, p.sin, s);
  rope(kva + R, T, 1, width, rd, rd, p.cos, p.sin, s);

  LatentCacheView cv;
  cv.data = cache_.as<float>() + static_cast<int64_t>(layer) * layer_floats_;
  cv.block_stride = static_cast<int64_t>(n_layers_) * layer_floats_;
  cv.block_size = block_size_;
  cv.width = static_cast<int32_t>(width);
  cv.block_tables = p.tables;
  cv.max_blocks = static_cast<int32_t>(p.max_blocks);
  kv_write(cv, kva, T, p.seq, p.pos, s);

  const MlaShape sh{static_cast<int32_t>(heads), static_cast<int32_t>(nope), static_cast<int32_t>(rd),
                    static_cast<int32_t>(vd), static_cast<int32_t>(R), rope_.softmax_scale};
  float* attn = scratch_.take_n<float>(T * heads * vd);
  void* ws = scratch_.take(mla_workspace_bytes(T, sh, p.max_ctx));
  mla_attention(q, T, cv, p.seq, p.pos, L.kv_b.p, L.kv_b.dt, sh, p.max_ctx, attn, ws, s);
  matmul(attn, T, L.o_proj.p, L.o_proj.dt, H, heads * vd, x, s, /*accumulate=*/true);
}

// x += FFN(xn). The routed sum and the shared experts go into one delta first, then into
// x, in the CPU forward pass's order (engine/forward.cc).
void DeviceForward::ffn(const DeviceLayer& L, float* xn, float* x, int32_t* record_slots) {
  void* s = stream_.get();
  const Plan& p = plan_;
  const int64_t T = p.T, H = cfg_.hidden_size;
  const float eps = static_cast<float>(cfg_.rms_norm_eps);
  rmsnorm(x, H, L.post_norm.p, L.post_norm.dt, xn, H, T, H, eps, s);
  float* delta = scratch_.take_n<float>(T * H);
  bool have = false;
  if (L.moe) {
    const int64_t M = cfg_.n_routed_experts, k = router_.top_k;
    float* rlogits = scratch_.take_n<float>(T * M);
    // fp32 at every batch size: bf16-rounded activations (the tensor-core path) could
    // flip a near-tie in the top-k, and with it whole experts.
    matmul_exact(xn, T, L.router.p, L.router.dt, M, H, rlogits, s);
    int32_t* slots = scratch_.take_n<int32_t>(T * k);
    float* weights = scratch_.take_n<float>(T * k);
    const RerouteTableView tv{reroute_.as<int32_t>() + static_cast<int64_t>(L.moe_index) * n_rows_ * M, n_rows_,
                              static_cast<int32_t>(M)};
    route_topk_reroute(rlogits, T, router_, tv, p.rows, slots, weights, nullptr, s);
    if (record_slots)
      EW_CUDA_CHECK(cudaMemcpyAsync(record_slots + static_cast<int64_t>(L.moe_index) * T * k, slots,
                                    static_cast<size_t>(T * k) * 4, cudaMemcpyDeviceToDevice, cs(s)));
    void* ws = scratch_.take(moe_workspace_bytes(T, k, L.experts.n_slots, L.experts.H, L.experts.I));
    moe_forward(xn, T, k, slots, weights, L.experts, delta, /*accumulate=*/false, ws, s);
    have = true;
  }
  if (L.mlp_width > 0) {
    const int64_t W = L.mlp_width;
    float* gu = scratch_.take_n<float>(T * 2 * W);
    float* a = scratch_.take_n<float>(T * W);
    matmul(xn, T, L.gate_up.p, L.gate_up.dt, 2 * W, H, gu, s);
    silu_mul(gu, gu + W, 2 * W, a, T, W, s);
    matmul(a, T, L.down.p, L.down.dt, H, W, delta, s, /*accumulate=*/have);
    have = true;
  }
  if (have) add_inplace(x, delta, T * H, s);
}

void DeviceForward::forward(int32_t* record_slots) {
  void* s = stream_.get();
  const Plan& p = plan_;
  const int64_t T = p.T, H = cfg_.hidden_size, V = cfg_.vocab_size;
  float* x = scratch_.take_n<float>(T * H);
  float* xn = scratch_.take_n<float>(T * H);
  embed(p.ids, T, m_.embed.p, m_.embed.dt, V, H, x, s);
  for (int l = 0; l < static_cast<int>(m_.layers.size()); ++l) {
    attention(m_.layers[l], l, xn, x);
    ffn(m_.layers[l], xn, x, record_slots);
  }
  logits_ = nullptr, out_ids_ = nullptr, out_lp_ = nullptr;
  if (p.n_out == 0) return;
  float* last = scratch_.take_n<float>(p.n_out * H);
  gather_rows(x, H, p.out_rows, p.n_out, H, last, s);
  rmsnorm(last, H, m_.norm.p, m_.norm.dt, last, H, p.n_out, H, static_cast<float>(cfg_.rms_norm_eps), s);
  logits_ = scratch_.take_n<float>(p.n_out * V);
  matmul(last, p.n_out, m_.lm_head.p, m_.lm_head.dt, V, H, logits_, s);
  out_ids_ = scratch_.take_n<int32_t>(p.n_out);
  out_lp_ = scratch_.take_n<float>(p.n_out);
  argmax_rows(logits_, p.n_out, V, out_ids_, out_lp_, s);
}

void DeviceForward::enqueue(bool use_graph) {
  const Plan& p = plan_;
  if (p.T == 0) fail("DeviceForward::enqueue: no step prepared");
  const GraphKey key{p.T, p.n_out, p.max_ctx};
  if (use_graph && p.decode) {
    auto it = graphs_.find(key);
    if (it != graphs_.end()) {
      Graph& g = *it->second;
      EW_CUDA_CHECK(cudaGraphLaunch(g.exec, cs(stream_.get())));
      logits_ = g.logits, out_ids_ = g.ids, out_lp_ = g.lp;
      return;
    }
    int& seen = seen_[key];
    if (seen++ >= 1) {  // the first run sized the scratch: capture now
      reset_scratch();
      if (graphs_.size() >= kMaxGraphs) graphs_.clear();
      auto g = std::make_unique<Graph>();
      cudaGraph_t graph = nullptr;
      bool ok = cudaStreamBeginCapture(cs(stream_.get()), cudaStreamCaptureModeThreadLocal) == cudaSuccess;
      if (ok) {
        try {
          forward(nullptr);
        } catch (...) {
          ok = false;
        }
        ok = cudaStreamEndCapture(cs(stream_.get()), &graph) == cudaSuccess && ok;
        ok = ok && cudaGraphInstantiate(&g->exec, graph, 0) == cudaSuccess;
        if (graph) cudaGraphDestroy(graph);
      }
      cudaGetLastError();  // a failed capture leaves an error behind; the eager path reports real ones
      if (ok) {
        g->logits = logits_, g->ids = out_ids_, g->lp = out_lp_;
        EW_CUDA_CHECK(cudaGraphLaunch(g->exec, cs(stream_.get())));
        graphs_[key] = std::move(g);
        return;
      }
      seen = -(1 << 30);  // this shape does not capture: always eager
    }
  }
  reset_scratch();
  forward(nullptr);
}

StepLogits DeviceForward::collect(const std::vector<uint8_t>& need_whole) {
  const int64_t n = plan_.n_out, V = cfg_.vocab_size;
  if (static_cast<int64_t>(need_whole.size()) != n)
    fail("DeviceForward::collect: ", need_whole.size(), " flags for ", n, " logit rows");
  StepLogits out;
  out.row_of.assign(static_cast<size_t>(n), -1);
  out.greedy.assign(static_cast<size_t>(n), -1);
  out.greedy_logprob.assign(static_cast<size_t>(n), 0.f);
  const cudaStream_t s = cs(stream_.get());
  if (n > 0) {
    EW_CUDA_CHECK(cudaMemcpyAsync(out.greedy.data(), out_ids_, n * 4, cudaMemcpyDeviceToHost, s));
    EW_CUDA_CHECK(cudaMemcpyAsync(out.greedy_logprob.data(), out_lp_, n * 4, cudaMemcpyDeviceToHost, s));
    int64_t whole = 0;
    for (int64_t i = 0; i < n; ++i)
      if (need_whole[i]) out.row_of[i] = whole++;
    out.rows.resize(static_cast<size_t>(whole * V));
    if (whole == n) {
      EW_CUDA_CHECK(cudaMemcpyAsync(out.rows.data(), logits_, n * V * 4, cudaMemcpyDeviceToHost, s));
    } else {
      for (int64_t i = 0; i < n; ++i)
        if (out.row_of[i] >= 0)
          EW_CUDA_CHECK(cudaMemcpyAsync(out.rows.data() + out.row_of[i] * V, logits_ + i * V, V * 4,
                                        cudaMemcpyDeviceToHost, s));
    }
  }
  stream_.sync();
  return out;
}

StepLogits DeviceForward::run(const StepTokens& st, const std::vector<uint8_t>& need_whole, KvCache& kv,
                              const RerouteTables& tables) {
  prepare(st, kv, tables);
  enqueue(/*use_graph=*/true);
  return collect(need_whole);
}

std::vector<int> DeviceForward::distinct_slots() {
  const int64_t n_moe = cfg_.num_moe_layers(), per = plan_.T * router_.top_k;
  std::vector<int> out;
  if (n_moe == 0) return out;
  DeviceBuffer rec(static_cast<size_t>(n_moe * per) * 4);
  reset_scratch();
  forward(rec.as<int32_t>());
  stream_.sync();
  std::vector<int32_t> slots(static_cast<size_t>(n_moe * per));
  rec.download(slots.data(), slots.size() * 4);
  for (int64_t l = 0; l < n_moe; ++l) {
    std::vector<int32_t> v(slots.begin() + l * per, slots.begin() + (l + 1) * per);
    std::sort(v.begin(), v.end());
    out.push_back(static_cast<int>(std::unique(v.begin(), v.end()) - v.begin()));
  }
  return out;
}

}  // namespace cuda
}  // namespace ew

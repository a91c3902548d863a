#include "kernels/cuda/cuda_backend.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <unordered_map>

#include "engine/sampler.h"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/cuda/rope_tables.h"
#include "kernels/cuda/router_cuda.h"
#include "util/error.h"

namespace ew {
namespace cuda {

namespace {

class CudaBackend final : public Backend {
 public:
  CudaBackend() {
    if (!device_available()) fail("CUDA backend: no CUDA device available");
    name_ = "cuda: " + device_description();
  }
  std::string name() const override { return name_; }

  void matmul(const float* x, int64_t T, const TensorView& W, float* y) override {
    if (W.shape.size() != 2) fail("cuda matmul: weight must be 2-D, got ", shape_str(W.shape));
    if (T <= 0) return;
    const int64_t N = W.dim(0), K = W.dim(1);
    begin();
    float* dx = put(x, T * K);
    float* dy = scratch_.take_n<float>(T * N);
    cuda::matmul(dx, T, weight(W), W.dtype, N, K, dy, nullptr);
    get(y, dy, T * N);
  }

  void embed(const TensorView& table, const int32_t* ids, int64_t T, float* y) override {
    if (table.shape.size() != 2) fail("cuda embed: table must be 2-D, got ", shape_str(table.shape));
    const int64_t V = table.dim(0), D = table.dim(1);
    for (int64_t t = 0; t < T; ++t)
      if (ids[t] < 0 || ids[t] >= V) fail("embed: token id ", ids[t], " out of range [0, ", V, ")");
    if (T <= 0) return;
    begin();
    int32_t* did = put(ids, T);
    float* dy = scratch_.take_n<float>(T * D);
    cuda::embed(did, T, weight(table), table.dtype, V, D, dy, nullptr);
    get(y, dy, T * D);
  }

  void rms_norm(const float* x, int64_t ldx, int64_t T, int64_t n, const TensorView& w, float eps, float* y,
                int64_t ldy) override {
    if (T <= 0) return;
    if (w.numel() != n) fail("cuda rms_norm: weight has ", w.numel(), " elements, rows have ", n);
    begin();
    const int64_t xspan = (T - 1) * ldx + n, yspan = (T - 1) * ldy + n;
    float* dx = put(x, xspan);
    // y is downloaded as one span: upload it first so the gaps between rows keep their values.
    float* dy = (y == x && ldy == ldx) ? dx : put(y, yspan);
    cuda::rmsnorm(dx, ldx, weight(w), w.dtype, dy, ldy, T, n, eps, nullptr);
    get(y, dy, yspan);
  }

  void rope(float* v, int64_t T, int64_t ld, int64_t n_vec, int64_t stride, const int64_t* positions,
            const RopeTable& table) override {
    if (T <= 0 || n_vec <= 0) return;
    begin();
    rope_cos_sin(table, positions, T, cos_, sin_);
    const int64_t span = (T - 1) * ld + (n_vec - 1) * stride + table.dim;
    float* dv = put(v, span);
    float* dc = put(cos_.data(), static_cast<int64_t>(cos_.size()));
    float* ds = put(sin_.data(), static_cast<int64_t>(sin_.size()));
    cuda::rope(dv, T, n_vec, ld, stride, table.dim, dc, ds, nullptr);
    get(v, dv, span);
  }

  void mla_attention(const MlaAttentionArgs& a) override {
    const int64_t T = a.T, R = a.rank, width = R + a.rope;
    if (a.cache->width() != width) fail("mla_attention: cache width ", a.cache->width(), " != kv_lora_rank + rope ", width);
    if (a.kv_b.shape != std::vector<int64_t>{a.n_heads * (a.nope + a.v_dim), R})
      fail("mla_attention: kv_b_proj has shape ", shape_str(a.kv_b.shape));
    if (T <= 0) return;
    // Gather each sequence's cache rows 0..max pos into one device array (block size 1).
    std::vector<int64_t> seqs, len;
    std::vector<int32_t> tok_seq(static_cast<size_t>(T)), tok_pos(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) {
      const auto it = std::find(seqs.begin(), seqs.end(), a.seq[t]);
      const size_t s = static_cast<size_t>(it - seqs.begin());
      if (it == seqs.end()) seqs.push_back(a.seq[t]), len.push_back(0);
      len[s] = std::max(len[s], a.pos[t] + 1);
      tok_seq[t] = static_cast<int32_t>(s);
      tok_pos[t] = static_cast<int32_t>(a.pos[t]);
    }
    const int64_t max_len = *std::max_element(len.begin(), len.end());
    std::vector<int32_t> table(seqs.size() * static_cast<size_t>(max_len), 0);
    rows_.clear();
    for (size_t s = 0; s < seqs.size(); ++s)
      for (int64_t p = 0; p < len[s]; ++p) {
        table[s * max_len + p] = static_cast<int32_t>(rows_.size() / width);
        const float* e = a.cache->entry(a.layer, seqs[s], p);
        rows_.insert(rows_.end(), e, e + width);
      }
    begin();
    LatentCacheView cv;
    cv.data = put(rows_.data(), static_cast<int64_t>(rows_.size()));
    cv.block_stride = width;
    cv.block_size = 1;
    cv.width = static_cast<int32_t>(width);
    cv.block_tables = put(table.data(), static_cast<int64_t>(table.size()));
    cv.max_blocks = static_cast<int32_t>(max_len);
    MlaShape sh{static_cast<int32_t>(a.n_heads), static_cast<int32_t>(a.nope), static_cast<int32_t>(a.rope),
                static_cast<int32_t>(a.v_dim), static_cast<int32_t>(R), a.scale};
    float* dq = put(a.q, T * a.n_heads * (a.nope + a.rope));
    int32_t* ds = put(tok_seq.data(), T);
    int32_t* dp = put(tok_pos.data(), T);
    float* dout = scratch_.take_n<float>(T * a.n_heads * a.v_dim);
    void* ws = scratch_.take(mla_workspace_bytes(T, sh, max_len));
    cuda::mla_attention(dq, T, cv, ds, dp, weight(a.kv_b), a.kv_b.dtype, sh, max_len, dout, ws, nullptr);
    get(a.out, dout, T * a.n_heads * a.v_dim);
  }

  void route(const float* x, int64_t T, int64_t H, const TensorView& W, const RouterParams& p,
             const RerouteTableView& table, const int32_t* adapter_rows, int32_t* slots, float* weights) override {
    if (T <= 0) return;
    for (int64_t t = 0; t < T; ++t)
      if (adapter_rows && (adapter_rows[t] < 0 || adapter_rows[t] >= table.n_rows))
        fail("router: adapter row ", adapter_rows[t], " out of range [0, ", table.n_rows, ")");
    const int64_t M = p.n_experts, k = p.top_k;
    begin();
    float* dx = put(x, T * H);
    float* logits = scratch_.take_n<float>(T * M);
    cuda::matmul(dx, T, weight(W), W.dtype, M, H, logits, nullptr);
    RerouteTableView dt = table;
    if (table.table) dt.table = put(table.table, static_cast<int64_t>(table.n_rows) * table.n_experts);
    const int32_t* drows = adapter_rows ? put(adapter_rows, T) : nullptr;
    int32_t* dslots = scratch_.take_n<int32_t>(T * k);
    float* dw = scratch_.take_n<float>(T * k);
    route_topk_reroute(logits, T, p, dt, drows, dslots, dw, nullptr, nullptr);
    get(slots, dslots, T * k);
    get(weights, dw, T * k);
  }

  void mlp(const float* x, int64_t T, const TensorView& gate, const TensorView& up, const TensorView& down,
           float* y) override {
    if (T <= 0) return;
    const int64_t Wd = gate.dim(0), H = gate.dim(1);
    begin();
    float* dx = put(x, T * H);
    float* g = scratch_.take_n<float>(T * Wd);
    float* u = scratch_.take_n<float>(T * Wd);
    float* dy = scratch_.take_n<float>(T * H);
    cuda::matmul(dx, T, weight(gate), gate.dtype, Wd, H, g, nullptr);
    cuda::matmul(dx, T, weight(up), up.dtype, Wd, H, u, nullptr);
    cuda::silu_mul(g, u, Wd, g, T, Wd, nullptr);
    cuda::matmul(g, T, weight(down), down.dtype, H, Wd, dy, nullptr);
    get(y, dy, T * H);
  }

  void grouped_experts(const float* x, int64_t T, const ExpertPool& pool, int layer, const int32_t* slots,
                       const float* weights, int k, float* y) override {
    const int64_t H = pool.hidden(), I = pool.width(), P = T * k;
    for (int64_t i = 0; i < P; ++i)
      if (slots[i] < 0 || slots[i] >= pool.capacity())
        fail("grouped experts: slot ", slots[i], " out of range [0, ", pool.capacity(), ") in MoE layer ", layer);
    if (T <= 0) return;
    // Stage the used slots as a compact pool [n_used, ...] and renumber the choices.
    std::vector<int32_t> used(slots, slots + P);
    std::sort(used.begin(), used.end());
    used.erase(std::unique(used.begin(), used.end()), used.end());
    std::vector<int32_t> local(static_cast<size_t>(P));
    for (int64_t i = 0; i < P; ++i)
      local[i] = static_cast<int32_t>(std::lower_bound(used.begin(), used.end(), slots[i]) - used.begin());
    begin();
    const int32_t n = static_cast<int32_t>(used.size());
    MoeWeights mw;
    mw.dtype = pool.dtype();
    mw.n_slots = n;
    mw.H = H, mw.I = I;
    const ExpertMat mats[3] = {ExpertMat::Gate, ExpertMat::Up, ExpertMat::Down};
    const void** dst[3] = {&mw.gate, &mw.up, &mw.down};
    for (int m = 0; m < 3; ++m) {
      const size_t bytes = pool.mat_bytes(mats[m]);
      auto* d = static_cast<uint8_t*>(scratch_.take(bytes * n));
      for (int32_t s = 0; s < n; ++s)
        EW_CUDA_CHECK(upload_bytes(d + bytes * s, pool.slot_data(layer, mats[m], used[s]), bytes));
      *dst[m] = d;
    }
    float* dx = put(x, T * H);
    int32_t* dslots = put(local.data(), P);
    float* dw = put(weights, P);
    float* dy = scratch_.take_n<float>(T * H);
    void* ws = scratch_.take(moe_workspace_bytes(T, k, n, H, I));
    moe_forward(dx, T, k, dslots, dw, mw, dy, false, ws, nullptr);
    get(y, dy, T * H);
  }

  int32_t sample(const float* logits, int64_t V, const SamplingParams& p, int64_t position) override {
    return sample_token(logits, V, p, position);  // the logits are host memory already
  }

 private:
  // Each op is synchronous (it ends with a blocking download), so its scratch is free again.
  void begin() { scratch_.reset(); }
  static int upload_bytes(void* dst, const void* src, size_t bytes) {
    return static_cast<int>(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
  }
  template <typename T>
  T* put(const T* host, int64_t n) {
    T* d = scratch_.take_n<T>(static_cast<size_t>(n));
    EW_CUDA_CHECK(upload_bytes(d, host, static_cast<size_t>(n) * sizeof(T)));
    return d;
  }
  template <typename T>
  void get(T* host, const T* dev, int64_t n) {
    EW_CUDA_CHECK(cudaMemcpy(host, dev, static_cast<size_t>(n) * sizeof(T), cudaMemcpyDeviceToHost));
  }
  const void* weight(const TensorView& w) {
    auto it = weights_.find(w.data);
    if (it != weights_.end() && it->second.bytes() == w.nbytes()) return it->second.data();
    DeviceBuffer b(w.nbytes());
    b.upload(w.data, w.nbytes());
    return (weights_[w.data] = std::move(b)).data();
  }

  std::string name_;
  Scratch scratch_;
  std::unordered_map<const void*, DeviceBuffer> weights_;
  std::vector<float> cos_, sin_, rows_;
};

}  // namespace
}  // namespace cuda

std::unique_ptr<Backend> make_cuda_backend() { return std::make_unique<cuda::CudaBackend>(); }

}  // namespace ew

// The CPU implementation of Backend: thin forwarding to the CPU kernels.
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/mlp.h"
#include "kernels/cpu/norm.h"
#include "util/thread_pool.h"

namespace ew {
namespace {

class CpuBackend final : public Backend {
 public:
  std::string name() const override { return "cpu"; }
  void matmul(const float* x, int64_t T, const TensorView& W, float* y) override { matmul_cpu(x, T, W, y); }
  void embed(const TensorView& table, const int32_t* ids, int64_t T, float* y) override {
    embed_cpu(table, ids, T, y);
  }
  void rms_norm(const float* x, int64_t ldx, int64_t T, int64_t n, const TensorView& w, float eps, float* y,
                int64_t ldy) override {
    ThreadPool::global().parallel_for(
        T, [&](int64_t b, int64_t e) { rms_norm_cpu(x + b * ldx, ldx, e - b, n, w, eps, y + b * ldy, ldy); },
        16);
  }
  void rope(float* v, int64_t T, int64_t ld, int64_t n_vec, int64_t stride, const int64_t* positions,
            const RopeTable& table) override {
    for (int64_t t = 0; t < T; ++t) apply_rope_cpu(v + t * ld, n_vec, stride, positions[t], table);
  }
  void mla_attention(const MlaAttentionArgs& args) override { mla_attention_cpu(args); }
  void route(const float* x, int64_t T, int64_t H, const TensorView& W, const RouterParams& p,
             const RerouteTableView& table, const int32_t* adapter_rows, int32_t* slots, float* weights) override {
    scratch_.resize(static_cast<size_t>(T * p.n_experts));
    route_tokens_cpu(x, T, H, W, p, table, adapter_rows, slots, weights, nullptr, scratch_.data());
  }
  void mlp(const float* x, int64_t T, const TensorView& gate, const TensorView& up, const TensorView& down,
           float* y) override {
    mlp_cpu(x, T, gate, up, down, y);
  }
  void grouped_experts(const float* x, int64_t T, const ExpertStore& pool, int layer, const int32_t* slots,
                       const float* weights, int k, float* y) override {
    grouped_experts_cpu(x, T, pool, layer, slots, weights, k, y);
  }

 private:
  std::vector<float> scratch_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace ew

// CpuOps: the op set (kernels/ops.h) on the host, the reference every other backend is
// tested against. Each op is defined in the file of its name (embed.cc, rms_norm.cc,
// matmul.cc, elementwise.cc, rope.cc, kv_write.cc, mla_attention.cc,
// gqa_attention.cc, route.cc, moe.cc, argmax.cc) and runs its inner loops on one dispatch path (cpu_kernels.h), the
// process's best by default; tests make one CpuOps per path. Loops run on the global
// ThreadPool; within one path every result is bitwise independent of the batch and the
// thread count.
#pragma once
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/ops.h"

namespace ew {

// Token p of step-local sequence seq in one layer of the block-paged cache (KvLayerView).
inline uint8_t* cache_entry(const KvLayerView& c, int32_t seq, int64_t p) {
  const int32_t block = c.block_tables[static_cast<int64_t>(seq) * c.max_blocks + p / c.block_size];
  const int64_t at = block * c.block_stride + (p % c.block_size) * c.width;
  return static_cast<uint8_t*>(c.data) + static_cast<size_t>(at) * dtype_size(c.dtype);
}

class CpuOps final : public Ops {
 public:
  explicit CpuOps(CpuPath path = cpu_path()) : path_(path) {}
  CpuPath path() const { return path_; }
  std::string name() const override { return std::string("cpu (") + cpu_path_name(path_) + ")"; }

  void embed(const int32_t* ids, int64_t T, Weight table, int64_t vocab, int64_t D, float* y) override;
  void rms_norm(const float* x, int64_t ldx, Weight w, float eps, float* y, int64_t ldy, int64_t T,
                int64_t D) override;
  void matmul(const float* x, int64_t T, Weight W, int64_t N, int64_t K, float* y, bool accumulate = false) override;
  void matmul_exact(const float* x, int64_t T, Weight W, int64_t N, int64_t K, float* y, bool accumulate = false) override;
  void matmul_pair(const float* x, int64_t T, Weight A, int64_t Na, Weight B, int64_t Nb, int64_t K,
                   float* y) override;
  void silu_mul(const float* g, const float* u, int64_t ld, float* out, int64_t T, int64_t D) override;
  void add(float* y, const float* x, int64_t n) override;
  void gather_rows(const float* x, int64_t ld, const int32_t* rows, int64_t n, int64_t D, float* y) override;
  void rope(float* x, int64_t T, int64_t n_vec, int64_t ld, int64_t vec_stride, int64_t rot_dim,
            const float* cos_rows, const float* sin_rows, RopeLayout layout = RopeLayout::Interleaved) override;
  void kv_write(const KvLayerView& cache, const float* rows, int64_t T, const int32_t* seq,
                const int32_t* pos) override;
  size_t mla_workspace_bytes(int64_t T, const MlaShape& s, int64_t max_ctx) const override;
  void mla_attention(const float* q, int64_t T, const KvLayerView& cache, const int32_t* seq,
                     const int32_t* pos, Weight w_kvb, const MlaShape& s, int64_t max_ctx, float* out,
                     void* workspace) override;
  size_t gqa_workspace_bytes(int64_t T, const GqaShape& s, int64_t max_ctx) const override;
  void gqa_attention(const float* q, int64_t T, const KvLayerView& cache, const int32_t* seq, const int32_t* pos,
                     const GqaShape& s, int64_t max_ctx, float* out, void* workspace) override;
  void route(float* logits, int64_t T, const RouterParams& p, const RerouteTableView& table,
             const int32_t* adapter_rows, int32_t* out_slots, float* out_weights, int32_t* out_ids,
             const float* correction_bias = nullptr) override;
  size_t moe_workspace_bytes(int64_t T, int64_t k, const MoeWeights& w) const override;
  void moe(const float* x, int64_t T, int64_t k, const int32_t* slots, const float* weights, const MoeWeights& w,
           float* y, bool accumulate, void* workspace) override;
  void argmax(const float* logits, int64_t rows, int64_t V, int32_t* ids, float* logprob) override;

 private:
  CpuPath path_;
};

}  // namespace ew

// CudaOps: the op set (kernels/ops.h) on one CUDA stream; every pointer is device memory
// and every op only enqueues work (no host synchronisation), so a whole forward step can be
// captured as a CUDA graph. Each op is defined in the file of its name (embed.cu,
// rms_norm.cu, matmul.cu, elementwise.cu, rope.cu, kv_write.cu, mla_attention.cu,
// gqa_attention.cu, route.cu, moe.cu, argmax.cu) beside its CPU twin in
// kernels/cpu/; native/tests/cuda_ops_test.cc
// checks each against the twin. Shape errors throw ew::Error before any launch; launch
// failures throw ew::Error naming the kernel. Plain C++ interface: callers need no CUDA headers.
//
// Where the results stand against the CPU twin:
//  - matmul: T <= 64 is a bandwidth-bound GEMV (one warp per output row, 16-byte weight
//    loads applied to up to 8 tokens in registers) whose reduction order depends only on K,
//    so a token's row is bitwise the same alone or in any batch of <= 64 tokens. T > 64 runs
//    bf16 tensor-core tiles (activations rounded to bf16, fp32 accumulation; sm_80+, else
//    the GEMV serves every T). matmul_exact is the GEMV at every T (tokens in groups of 64
//    over the grid): bitwise batch independent, equal to matmul's result for T <= 64.
//  - moe, mla_attention, gqa_attention, route, argmax: per-token results independent of the
//    batch (see each file); fp32 throughout, in an order different from the CPU's.
//  - rope, embed and kv_write are bitwise equal to the CPU twin; route's ids and slots equal it.
#pragma once
#include <cstdint>

#include "kernels/ops.h"

namespace ew {
namespace cuda {

class CudaOps final : public Ops {
 public:
  explicit CudaOps(void* stream = nullptr) : stream_(stream) {}  // a cudaStream_t; null: the legacy stream
  void* stream() const { return stream_; }
  std::string name() const override { return "cuda"; }

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
  // head_dim <= 256 (Qwen3-MoE and Mixtral: 128), n_heads / kv_heads <= 16.
  size_t gqa_workspace_bytes(int64_t T, const GqaShape& s, int64_t max_ctx) const override;
  void gqa_attention(const float* q, int64_t T, const KvLayerView& cache, const int32_t* seq, const int32_t* pos,
                     const GqaShape& s, int64_t max_ctx, float* out, void* workspace) override;
  // Adapter rows are validated on the host (the engine does): a row out of range yields slot
  // -1, which moe skips. Supports 1 <= M <= 384 (grouped: groups of a power-of-two number
  // of lanes, ceil(M / 32) experts per lane) and top_k <= min(M, 32).
  void route(float* logits, int64_t T, const RouterParams& p, const RerouteTableView& table,
             const int32_t* adapter_rows, int32_t* out_slots, float* out_weights, int32_t* out_ids,
             const float* correction_bias = nullptr) override;
  size_t moe_workspace_bytes(int64_t T, int64_t k, const MoeWeights& w) const override;
  void moe(const float* x, int64_t T, int64_t k, const int32_t* slots, const float* weights, const MoeWeights& w,
           float* y, bool accumulate, void* workspace) override;
  void argmax(const float* logits, int64_t rows, int64_t V, int32_t* ids, float* logprob) override;

 private:
  void* stream_;
};

// Parts of the ops exposed for tests and benchmarks.
// moe's align step: (t, j) entries sorted by slot into groups of block_m; sorted_ids
// [moe_max_padded] holds t*k+j (padding: n_entries), block_slot [max_padded / block_m] the
// slot of each group, n_blocks [1] the groups used.
int64_t moe_max_padded(int64_t T, int64_t k, int32_t n_slots, int block_m);
void moe_align(const int32_t* slots, int64_t n_entries, int32_t n_slots, int block_m, int32_t* sorted_ids,
               int32_t* block_slot, int32_t* n_blocks, void* stream);
// How many blocks mla_attention splits each token's positions over (1: no split); a
// function of the arguments only (no device query).
int mla_position_splits(int64_t T, const MlaShape& s, int64_t max_ctx);
// The same for gqa_attention.
int gqa_position_splits(int64_t T, const GqaShape& s, int64_t max_ctx);

}  // namespace cuda
}  // namespace ew

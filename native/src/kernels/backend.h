// The op set the forward pass is written against. The CPU backend
// (kernels/cpu/cpu_backend.cc) is the reference; a CUDA backend implements the
// similar op set with everything resident on the GPU (kernels/cuda/device_forward.h).
// Pointers are host memory.
// Every op must keep the batch-independence contract: a token's outputs depend
// only on its own inputs (and its own sequence's cache), never on the batch.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "engine/engine.h"
#include "engine/tensor.h"
#include "kernels/cpu/mla_attention.h"
#include "kernels/cpu/rope.h"
#include "kernels/router.h"
#include "memory/expert_store.h"

namespace ew {

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;

  // y[T, N] = x[T, K] . W[N, K]^T
  virtual void matmul(const float* x, int64_t T, const TensorView& W, float* y) = 0;
  // y[t] = table[ids[t]] as fp32
  virtual void embed(const TensorView& table, const int32_t* ids, int64_t T, float* y) = 0;
  // Row-wise RMSNorm with strides (y may alias x).
  virtual void rms_norm(const float* x, int64_t ldx, int64_t T, int64_t n, const TensorView& w, float eps,
                        float* y, int64_t ldy) = 0;
  // RoPE in place on n_vec vectors per token: token t's vector i at v + t*ld + i*stride, at positions[t].
  virtual void rope(float* v, int64_t T, int64_t ld, int64_t n_vec, int64_t stride, const int64_t* positions,
                    const RopeTable& table) = 0;
  virtual void mla_attention(const MlaAttentionArgs& args) = 0;
  // Fused router: softmax, top-k and reroute to expert slots (kernels/router.h).
  virtual void route(const float* x, int64_t T, int64_t H, const TensorView& W, const RouterParams& p,
                     const RerouteTableView& table, const int32_t* adapter_rows, int32_t* slots,
                     float* weights) = 0;
  // y[T, H] = SiLU-gated MLP of x.
  virtual void mlp(const float* x, int64_t T, const TensorView& gate, const TensorView& up,
                   const TensorView& down, float* y) = 0;
  // y[t] = sum_j weights[t*k+j] * Expert_{slots[t*k+j]}(x[t]), summed in j order.
  virtual void grouped_experts(const float* x, int64_t T, const ExpertStore& pool, int layer,
                               const int32_t* slots, const float* weights, int k, float* y) = 0;
};

std::unique_ptr<Backend> make_cpu_backend();

}  // namespace ew

// The CUDA kernels of the forward pass, as plain C++ calls (callers need no CUDA headers).
// Conventions: every pointer is device memory; activations are fp32 row-major; weights are
// [out, in] row-major in f32, f16 or bf16 (accumulation always fp32); `stream` is a
// cudaStream_t (null: the default stream). Shape errors throw ew::Error before any launch;
// launch failures throw ew::Error naming the kernel.
#pragma once
#include <cstddef>
#include <cstdint>

#include "engine/tensor.h"

namespace ew {
namespace cuda {

// ---- dense projections: y[T, N] = x[T, K] . W[N, K]^T ----
// T <= 64: bandwidth-bound GEMV: one warp per output row, 16-byte weight loads, each
// applied to up to 8 tokens (later groups of 8 re-read the row from L1/L2). Each element's
// reduction order depends only on K, so a token's result is the same alone or in any batch
// of <= 64 tokens. T > 64: bf16 tensor-core tiles
// (x rounded to bf16, fp32 accumulation; needs sm_80, else the GEMV serves every T).
// accumulate: y += instead of y =. Fast path: K % 8 == 0 and 16-byte aligned x and W.
void matmul(const float* x, int64_t T, const void* W, DType wtype, int64_t N, int64_t K, float* y, void* stream,
            bool accumulate = false);
// The GEMV path (fp32 activations, fp32 accumulation) for every T, tokens in groups of 64
// over the grid: a token's result is bitwise the same alone or in any batch, and equals
// matmul's for T <= 64. For projections whose rounding decides something discrete, e.g.
// the router logits (bf16-rounded activations in matmul's T > 64 path can flip a top-k).
void matmul_exact(const float* x, int64_t T, const void* W, DType wtype, int64_t N, int64_t K, float* y,
                  void* stream, bool accumulate = false);

// ---- elementwise ----
// y[t, :D] = w * x / sqrt(mean(x^2) + eps) per row; rows at the given strides (in floats),
// so the c_kv part of a [T, 576] row can be normed in place. w: [D] of wtype.
void rmsnorm(const float* x, int64_t x_stride, const void* w, DType wtype, float* y, int64_t y_stride, int64_t T,
             int64_t D, float eps, void* stream);
// DeepSeek RoPE in place on n_vec vectors of rot_dim per token at x + t*token_stride +
// i*vec_stride: pair (2j, 2j+1) rotated by frequency j (the CPU kernel's layout, see
// kernels/cpu/rope.h). cos_rows/sin_rows: [T, rot_dim/2], the token's cos/sin with yarn
// mscale applied, computed on the host in double (rope_cos_sin in kernels/rope_tables.h).
void rope(float* x, int64_t T, int64_t n_vec, int64_t token_stride, int64_t vec_stride, int64_t rot_dim,
          const float* cos_rows, const float* sin_rows, void* stream);
// y[t, :] = float(table[ids[t], :]); ids outside [0, vocab) give zero rows (validated on the host).
void embed(const int32_t* ids, int64_t T, const void* table, DType wtype, int64_t vocab, int64_t D, float* y,
           void* stream);
void add_inplace(float* y, const float* x, int64_t n, void* stream);  // y += x
// y[i, :D] = x[rows[i] * ld + :D] for i < n (y dense); rows in device memory, in range.
void gather_rows(const float* x, int64_t ld, const int32_t* rows, int64_t n, int64_t D, float* y, void* stream);
// out[t, i] = silu(g[t, i]) * u[t, i] with row strides (floats) for g/u (gate|up fused rows).
void silu_mul(const float* g, const float* u, int64_t in_stride, float* out, int64_t T, int64_t D, void* stream);

// ---- grouped MoE over expert slots (slot space: base experts + adapter slots) ----
struct MoeWeights {
  const void* gate = nullptr;  // slot s at gate + s * I*H elements: [cap, I, H]
  const void* up = nullptr;    // [cap, I, H]
  const void* down = nullptr;  // [cap, H, I]
  DType dtype = DType::BF16;
  int32_t n_slots = 0;  // capacity: slots >= n_slots or < 0 are skipped (contribute nothing)
  int64_t H = 0, I = 0;
};
// Bytes of scratch moe_forward needs for T tokens with top-k.
size_t moe_workspace_bytes(int64_t T, int64_t k, int32_t n_slots, int64_t H, int64_t I);
// y[t] (+)= sum_j weights[t*k+j] * Expert_{slots[t*k+j]}(x[t]), summed in j order.
// Steps: align (count per slot, padded prefix sums, sorted (t, j) ids, slot per block),
// gate+up with SiLU*up for all slots in one launch, down scaled by the routing weight
// into per-(t, j) rows, and a combine that sums each token's k rows in j order: the
// output of a token depends only on its own routing, never on the rest of the batch.
void moe_forward(const float* x, int64_t T, int64_t k, const int32_t* slots, const float* weights,
                 const MoeWeights& w, float* y, bool accumulate, void* workspace, void* stream);
// The align step alone (exposed for tests and the benchmark): sorted_ids [max_padded]
// holds t*k+j (padding: T*k), block_slot [max_blocks], n_blocks [1].
int64_t moe_max_padded(int64_t T, int64_t k, int32_t n_slots, int block_m);
void moe_align(const int32_t* slots, int64_t n_entries, int32_t n_slots, int block_m, int32_t* sorted_ids,
               int32_t* block_slot, int32_t* n_blocks, void* stream);

// ---- MLA attention over the block-paged latent cache ----
struct LatentCacheView {
  float* data = nullptr;        // this layer's blocks
  int64_t block_stride = 0;     // floats between consecutive blocks of this layer
  int32_t block_size = 0;       // tokens per block
  int32_t width = 0;            // kv_lora_rank + rope_dim (576)
  const int32_t* block_tables = nullptr;  // [n_seqs, max_blocks]
  int32_t max_blocks = 0;
};
// Copies latent rows [T, width] (normed c_kv | rotated k_pe) into the cache at
// (tok_seq[t], tok_pos[t]).
void kv_write(const LatentCacheView& cache, const float* latent, int64_t T, const int32_t* tok_seq,
              const int32_t* tok_pos, void* stream);
struct MlaShape {
  int32_t n_heads = 0, nope = 0, rope = 0, v_dim = 0, kv_rank = 0;
  float softmax_scale = 0.f;
};
size_t mla_workspace_bytes(int64_t T, const MlaShape& s, int64_t max_ctx);
// How many blocks mla_attention splits each token's positions over (1: no split): > 1 only
// when T * ceil(n_heads / 16) blocks would leave SMs idle and max_ctx >= 256. Exposed for
// tests and benchmarks; a function of the arguments only (no device query).
int mla_position_splits(int64_t T, const MlaShape& s, int64_t max_ctx);
// Absorbed MLA for T query tokens (decode and prefill alike): token t attends causally to
// cache positions [0, tok_pos[t]] of its sequence (its own entry written by kv_write first).
// q: [T, n_heads, nope + rope] (rope part rotated); w_kvb: [n_heads * (nope + v_dim), kv_rank];
// out: [T, n_heads * v_dim]. max_ctx >= every tok_pos + 1 (sizes the score scratch).
void mla_attention(const float* q, int64_t T, const LatentCacheView& cache, const int32_t* tok_seq,
                   const int32_t* tok_pos, const void* w_kvb, DType wtype, const MlaShape& s, int64_t max_ctx,
                   float* out, void* workspace, void* stream);

// ---- sampling ----
// Greedy: out_ids[r] = argmax logits[r, :V] (ties: lower id); out_logprob (may be null) =
// log softmax at that id.
void argmax_rows(const float* logits, int64_t rows, int64_t V, int32_t* out_ids, float* out_logprob, void* stream);

}  // namespace cuda
}  // namespace ew

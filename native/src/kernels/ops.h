// The op set every backend implements and the forward pass (engine/forward.h) is written
// against, once for all backends. CpuOps (kernels/cpu/cpu_ops.h) is the reference;
// CudaOps (kernels/cuda/cuda_ops.h) runs the same ops on a GPU stream. Each op lives in one
// file per side under the same name (cpu/moe.cc beside cuda/moe.cu, ...), and
// native/tests/cuda_ops_test.cc checks every CUDA op against its CPU twin.
//
// Conventions, the same on every backend:
//  - Pointers are in the backend's memory (host for CpuOps, device for CudaOps); activations
//    are fp32 row-major; weights are row-major [out, in] of any DType, accumulated in fp32.
//  - Shapes travel as plain integers; row strides (ld*) are in elements.
//  - `accumulate`: the op adds to its output instead of overwriting it.
//  - Ops that need temporary memory say how much (*_workspace_bytes); the caller passes
//    that many bytes (256-byte aligned) from its scratch arena.
//  - Batch independence: a token's outputs depend only on its own inputs (and its own
//    sequence's cache), never on which other tokens share the call. On the CPU this holds
//    bitwise; the CUDA ops say where it does (kernels/cuda/cuda_ops.h).
//  - Parameters are kernel-level structs (RouterParams, MlaShape, GqaShape, RoPE cos/sin rows) that
//    the engine fills from the model config; no op sees the config.
// Errors (bad shapes, launch failures) throw ew::Error naming the op.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "util/tensor.h"

namespace ew {

// A weight in the backend's memory; its shape comes with the op.
struct Weight {
  const void* data = nullptr;
  DType dtype = DType::F32;
};

// The fused router's rule, one for every family (the engine fills it from the config,
// engine/forward.h's router_params):
//  1. scores: softmax over the n_experts logits, or sigmoid of each;
//  2. choice: top_k of the scores, plus the per-expert correction bias when one is given
//     (DeepSeek-V3's e_score_correction_bias: it chooses, it never weights), within the
//     topk_group best of n_group equal groups of consecutive experts when grouped:
//       GroupRule::BestScore (V2 group_limited_greedy): a group scores its best; the
//         closed groups' experts count 0;
//       GroupRule::TopTwoSum (V3 noaux_tc): a group scores the sum of its two best; the
//         closed groups' experts are never chosen (-inf, as DeepSeek's inference code and vLLM);
//     ties go to the lower id (and the lower group);
//  3. weights: the chosen experts' unbiased scores, divided by (their sum + norm_eps) when
//     normalize, then multiplied by scale.
// The families: V2 normalize = norm_topk_prob && k > 1 with eps 1e-20, scale =
// routed_scaling_factor only when not normalising; V3 the same normalisation, then always
// scaled; Qwen3 normalize = norm_topk_prob (eps 0, scale 1); Mixtral always normalises.
enum class RouterScoring : uint8_t { Softmax, Sigmoid };
enum class GroupRule : uint8_t { None, BestScore, TopTwoSum };
struct RouterParams {
  int32_t n_experts = 0;  // M
  int32_t top_k = 0;
  RouterScoring scoring = RouterScoring::Softmax;
  GroupRule groups = GroupRule::None;
  int32_t n_group = 1, topk_group = 1;
  bool normalize = false;
  float norm_eps = 0.f;
  float scale = 1.f;
};

// One MoE layer's reroute table: table[row * n_experts + e] = the expert slot that serves
// base expert e for adapter row `row` (row 0, the base model, is the identity).
// A null table means no remap (slots are the base ids).
struct RerouteTableView {
  const int32_t* table = nullptr;
  int32_t n_rows = 0;     // adapter rows, the base row included
  int32_t n_experts = 0;  // routed experts of the base model (M)
};

// One MoE layer's routed experts in the expert store's slot layout (memory/expert_store.h):
// slot s of each matrix at base + s * (I * H) elements.
struct MoeWeights {
  const void* gate = nullptr;  // [n_slots, I, H]
  const void* up = nullptr;    // [n_slots, I, H]
  const void* down = nullptr;  // [n_slots, H, I]
  DType dtype = DType::BF16;
  int32_t n_slots = 0;  // slots < 0 or >= n_slots contribute nothing (CUDA) or are refused (CPU)
  int64_t H = 0, I = 0;
};

// One layer of the block-paged KV cache: token p of step-local sequence s is the `width`
// elements of `dtype` at (in elements)
//   data + block_tables[s * max_blocks + p / block_size] * block_stride + (p % block_size) * width.
// MLA's entry is the latent (c_kv | rotated k_pe); GQA's the keys (rotated), then the
// values, kv_heads * head_dim each. dtype: F32, or BF16 (written rounded to nearest even,
// read into fp32 arithmetic; CudaOps::mla_attention reads F32 only).
struct KvLayerView {
  void* data = nullptr;      // this layer's part of block 0
  int64_t block_stride = 0;  // elements between consecutive blocks (all layers of a block are adjacent)
  int32_t block_size = 0;    // tokens per block
  int32_t width = 0;         // elements per token: kv_lora_rank + rope_dim (576 for V2-Lite), or 2 * kv_heads * head_dim
  const int32_t* block_tables = nullptr;  // [n_seqs, max_blocks]
  int32_t max_blocks = 0;
  DType dtype = DType::F32;
};

// Grouped-query attention's shape: n_heads query heads of head_dim; query head h reads
// KV head h / (n_heads / kv_heads) of the cache (whose width is 2 * kv_heads * head_dim).
struct GqaShape {
  int32_t n_heads = 0, kv_heads = 0, head_dim = 0;
  float softmax_scale = 0.f;
};

// How RoPE pairs a vector's dims: DeepSeek's checkpoints rotate interleaved pairs
// (2j, 2j+1); Qwen3-MoE and Mixtral rotate_half (j, j + rot_dim/2), as HF's apply_rotary_pos_emb.
enum class RopeLayout : uint8_t { Interleaved, RotateHalf };

// MLA attention's shape: n_heads query heads of nope + rope dims over the shared latent
// (kv_rank + rope per position), values of v_dim per head.
struct MlaShape {
  int32_t n_heads = 0, nope = 0, rope = 0, v_dim = 0, kv_rank = 0;
  float softmax_scale = 0.f;
};

class Ops {
 public:
  virtual ~Ops() = default;
  virtual std::string name() const = 0;

  // y[t, :D] = float(table[ids[t], :D]).
  virtual void embed(const int32_t* ids, int64_t T, Weight table, int64_t vocab, int64_t D, float* y) = 0;
  // y[t, :D] = w * x / sqrt(mean(x^2) + eps) row by row, rows at strides ldx / ldy; y may alias x.
  virtual void rms_norm(const float* x, int64_t ldx, Weight w, float eps, float* y, int64_t ldy, int64_t T,
                        int64_t D) = 0;
  // y[T, N] (+)= x[T, K] . W[N, K]^T. May use reduced-precision activations for large T
  // (CUDA tensor cores); matmul_exact never does (fp32 activations at every T), for
  // projections whose rounding decides something discrete (router logits).
  virtual void matmul(const float* x, int64_t T, Weight W, int64_t N, int64_t K, float* y,
                      bool accumulate = false) = 0;
  virtual void matmul_exact(const float* x, int64_t T, Weight W, int64_t N, int64_t K, float* y,
                            bool accumulate = false) = 0;
  // y[t, 0:Na] = x . A^T and y[t, Na:Na+Nb] = x . B^T (row stride Na + Nb) in one pass over
  // both matrices: the gate and up projections of a gated MLP. Each element is what
  // matmul gives for it.
  virtual void matmul_pair(const float* x, int64_t T, Weight A, int64_t Na, Weight B, int64_t Nb, int64_t K,
                           float* y) = 0;
  // out[t, i] = silu(g[t, i]) * u[t, i], g and u at row stride ld, out dense [T, D].
  virtual void silu_mul(const float* g, const float* u, int64_t ld, float* out, int64_t T, int64_t D) = 0;
  // y[i] += x[i].
  virtual void add(float* y, const float* x, int64_t n) = 0;
  // y[i, :D] = x[rows[i] * ld + :D] for i < n.
  virtual void gather_rows(const float* x, int64_t ld, const int32_t* rows, int64_t n, int64_t D, float* y) = 0;
  // RoPE in place on n_vec vectors of rot_dim per token, vector i of token t at
  // x + t * ld + i * vec_stride: pair j (of `layout`) rotated by the token's cos/sin j.
  // cos_rows / sin_rows: [T, rot_dim / 2] (kernels/rope_rows.h).
  virtual void rope(float* x, int64_t T, int64_t n_vec, int64_t ld, int64_t vec_stride, int64_t rot_dim,
                    const float* cos_rows, const float* sin_rows, RopeLayout layout = RopeLayout::Interleaved) = 0;
  // Copies each token's cache entry (rows [T, width] fp32: MLA's latent, GQA's keys | values)
  // into the cache at (seq[t], pos[t]) (step-local sequences), converted to the cache's dtype.
  virtual void kv_write(const KvLayerView& cache, const float* rows, int64_t T, const int32_t* seq,
                        const int32_t* pos) = 0;
  // Absorbed MLA for T query tokens: token t attends causally to positions [0, pos[t]] of
  // its sequence in `cache` (its own entry written first). q: [T, n_heads, nope + rope]
  // (rope part rotated); w_kvb: [n_heads * (nope + v_dim), kv_rank]; out: [T, n_heads * v_dim].
  // max_ctx > every pos[t] (it sizes the workspace).
  virtual size_t mla_workspace_bytes(int64_t T, const MlaShape& s, int64_t max_ctx) const = 0;
  virtual void mla_attention(const float* q, int64_t T, const KvLayerView& cache, const int32_t* seq,
                             const int32_t* pos, Weight w_kvb, const MlaShape& s, int64_t max_ctx, float* out,
                             void* workspace) = 0;
  // Grouped-query attention for T query tokens: token t attends causally to positions
  // [0, pos[t]] of its sequence in `cache` (its own entry written first). q: [T, n_heads,
  // head_dim] (normed and rotated); out: [T, n_heads * head_dim]. max_ctx > every pos[t].
  virtual size_t gqa_workspace_bytes(int64_t T, const GqaShape& s, int64_t max_ctx) const = 0;
  virtual void gqa_attention(const float* q, int64_t T, const KvLayerView& cache, const int32_t* seq,
                             const int32_t* pos, const GqaShape& s, int64_t max_ctx, float* out, void* workspace) = 0;
  // The fused router step (RouterParams) from the router logits [T, M] (overwritten: they
  // may be turned into scores in place): scores, top-k and the reroute of each chosen base
  // id through the token's adapter row (adapter_rows null: row 0).
  //   out_slots[t*k + j] = table[row_t * M + id_j], out_weights[t*k + j] = weight of id_j,
  // ids in descending order of choice; out_ids (may be null) gets the ids before the remap.
  // correction_bias: [M] fp32 in the backend's memory, or null.
  virtual void route(float* logits, int64_t T, const RouterParams& p, const RerouteTableView& table,
                     const int32_t* adapter_rows, int32_t* out_slots, float* out_weights, int32_t* out_ids,
                     const float* correction_bias = nullptr) = 0;
  // y[t] (+)= sum_j weights[t*k+j] * Expert_{slots[t*k+j]}(x[t]), summed in j order, with
  // Expert_s(x) = down_s . (silu(gate_s . x) * (up_s . x)).
  virtual size_t moe_workspace_bytes(int64_t T, int64_t k, const MoeWeights& w) const = 0;
  virtual void moe(const float* x, int64_t T, int64_t k, const int32_t* slots, const float* weights,
                   const MoeWeights& w, float* y, bool accumulate, void* workspace) = 0;
  // Greedy rows: ids[r] = the first maximum of logits[r, :V] (ties to the lower id; NaNs
  // never win except at id 0, as the host sampler scans); logprob (may be null) = the log
  // softmax there.
  virtual void argmax(const float* logits, int64_t rows, int64_t V, int32_t* ids, float* logprob) = 0;
};

}  // namespace ew

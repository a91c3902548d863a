// CudaOps::route, the fused router step from the logits: one warp per token. Lane l holds experts [l*V, l*V + V) in registers (V = ceil(M / 32);
// ids >= M are padding: zero probability, never chosen):
// the softmax max and sum are butterfly reductions, each of the k top-k rounds is a
// butterfly argmax (ties to the lower id, so all lanes agree and the CPU reference
// is matched), and lane j keeps round j's winner so the k results are normalised
// and stored in parallel, with the reroute lookup in the store itself.
#include <cuda_runtime.h>

#include <cfloat>

#include "kernels/cuda/cuda_ops.h"
#include "util/error.h"

namespace ew {
namespace cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 4;
constexpr unsigned kFull = 0xffffffffu;

struct Best {
  float v;
  int id;
};

__device__ __forceinline__ Best better(Best a, Best b) {
  return (b.v > a.v || (b.v == a.v && b.id < a.id)) ? b : a;
}

// Butterfly argmax over lanes [0, width) groups: every lane ends with its group's best.
__device__ __forceinline__ Best warp_argmax(Best b, int width) {
  for (int off = width / 2; off > 0; off /= 2) {
    Best o{__shfl_xor_sync(kFull, b.v, off), __shfl_xor_sync(kFull, b.id, off)};
    b = better(b, o);
  }
  return b;
}

// Group-limited selection (when grouped), then k argmax rounds; lane j ends with round j's
// (weight, id). Every lane of the warp must call it (full-warp shuffles).
template <int V>
__device__ __forceinline__ void select_topk(float (&p)[V], int lane, int M, int k, bool grouped, int n_group,
                                            int topk_group, float* my_w, int* my_id) {
  if (grouped) {
    // Lanes of one group are adjacent; its max is a butterfly over those lanes. The
    // topk_group best groups are found by argmax rounds over the lanes' group maxima
    // (ties to the lower group: its lanes and ids are lower).
    const int lanes_per_group = (M / n_group) / V;
    float gmax = p[0];
#pragma unroll
    for (int i = 1; i < V; ++i) gmax = fmaxf(gmax, p[i]);
    for (int off = lanes_per_group / 2; off > 0; off /= 2) gmax = fmaxf(gmax, __shfl_xor_sync(kFull, gmax, off));
    const int my_group = lane / lanes_per_group;
    bool keep = false;
    float cand = gmax;
    for (int r = 0; r < topk_group; ++r) {
      Best b = warp_argmax({cand, my_group}, kWarp);
      if (b.id == my_group) {
        keep = true;
        cand = -FLT_MAX;
      }
    }
    if (!keep)
#pragma unroll
      for (int i = 0; i < V; ++i) p[i] = 0.f;
  }
  for (int j = 0; j < k; ++j) {
    Best local{p[0], lane * V};
#pragma unroll
    for (int i = 1; i < V; ++i)
      if (p[i] > local.v) local = {p[i], lane * V + i};
    const Best b = warp_argmax(local, kWarp);
    if (lane == j) {
      *my_w = b.v;
      *my_id = b.id;
    }
    if (b.id / V == lane) {
#pragma unroll
      for (int i = 0; i < V; ++i)
        if (lane * V + i == b.id) p[i] = -FLT_MAX;  // taken: never chosen again
    }
  }
}

template <int V>
__global__ void route_kernel(const float* __restrict__ logits, int64_t T, int M, int k, bool grouped, int n_group,
                             int topk_group, bool normalise, float scale, const int32_t* __restrict__ table,
                             int n_rows, const int32_t* __restrict__ adapter_rows, int32_t* __restrict__ out_slots,
                             float* __restrict__ out_weights, int32_t* __restrict__ out_ids) {
  const int lane = threadIdx.x % kWarp;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (t >= T) return;  // whole warps exit together: T is uniform across a warp's lanes

  const float* row_logits = logits + t * M;
  float p[V];
  float mx = -FLT_MAX;
#pragma unroll
  for (int i = 0; i < V; ++i) {
    p[i] = lane * V + i < M ? row_logits[lane * V + i] : -FLT_MAX;
    mx = fmaxf(mx, p[i]);
  }
  for (int off = kWarp / 2; off > 0; off /= 2) mx = fmaxf(mx, __shfl_xor_sync(kFull, mx, off));
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < V; ++i) {
    p[i] = expf(p[i] - mx);
    sum += p[i];
  }
  for (int off = kWarp / 2; off > 0; off /= 2) sum += __shfl_xor_sync(kFull, sum, off);
  const float inv = 1.f / sum;
#pragma unroll
  for (int i = 0; i < V; ++i) p[i] = lane * V + i < M ? p[i] * inv : -FLT_MAX;  // padding: below every real p

  float my_w = 0.f;
  int my_id = 0;
  if (!(sum > 0.f)) {
    // A NaN or +inf logit (sum NaN) or only -inf logits (sum 0): the CPU router's softmax
    // gives NaN everywhere and it keeps ids 0..k-1 with NaN weights. The comparisons in
    // select_topk would let lanes disagree on NaN and could pick a padding id past the
    // reroute table. sum is the same on every lane (a butterfly), so this branch is uniform.
    my_id = lane;
    my_w = __int_as_float(0x7fc00000);  // quiet NaN
  } else {
    select_topk<V>(p, lane, M, k, grouped, n_group, topk_group, &my_w, &my_id);
  }

  float denom = 1.f;
  if (normalise) {
    float s = 0.f;  // summed in j order, as the CPU router does (a butterfly would round differently)
    for (int j = 0; j < k; ++j) s += __shfl_sync(kFull, my_w, j);
    denom = s + 1e-20f;
  }
  if (lane < k) {
    const int64_t o = t * k + lane;
    const int32_t row = adapter_rows ? adapter_rows[t] : 0;
    int32_t slot = my_id;
    if (table) slot = (row >= 0 && row < n_rows) ? table[static_cast<int64_t>(row) * M + my_id] : -1;
    out_slots[o] = slot;
    out_weights[o] = normalise ? my_w / denom : my_w * scale;
    if (out_ids) out_ids[o] = my_id;
  }
}

template <int V>
void launch(const float* logits, int64_t T, const RouterParams& p, bool grouped, const RerouteTableView& rt,
            const int32_t* rows, int32_t* slots, float* weights, int32_t* ids, cudaStream_t stream) {
  const int64_t blocks = (T + kWarpsPerBlock - 1) / kWarpsPerBlock;
  route_kernel<V><<<static_cast<unsigned>(blocks), kWarpsPerBlock * kWarp, 0, stream>>>(
      logits, T, p.n_experts, p.top_k, grouped, p.n_group, p.topk_group, p.norm_topk_prob && p.top_k > 1,
      p.routed_scaling_factor, rt.table, rt.n_rows, rows, slots, weights, ids);
}

}  // namespace

void CudaOps::route(float* logits, int64_t T, const RouterParams& p, const RerouteTableView& reroute,
                    const int32_t* adapter_rows, int32_t* out_slots, float* out_weights, int32_t* out_ids) {
  const int M = p.n_experts;
  const int V = (M + kWarp - 1) / kWarp;
  if (M < 1 || V > 8) fail("CUDA router: ", M, " experts unsupported (1 to 256)");
  if (p.top_k < 1 || p.top_k > kWarp || p.top_k > M) fail("CUDA router: top_k ", p.top_k, " out of [1, 32]");
  if (reroute.table && reroute.n_experts != M)
    fail("CUDA router: reroute table has ", reroute.n_experts, " experts per row, router has ", M);
  const bool grouped = p.group_limited && p.n_group > 1;
  if (grouped) {
    // Groups are whole lanes: needs M a multiple of 32 (no padding lanes).
    const int per = p.n_group > 0 && M % p.n_group == 0 && M % kWarp == 0 ? M / p.n_group : 0;
    const int lanes = per % V == 0 ? per / V : 0;
    if (lanes == 0 || (lanes & (lanes - 1)) != 0 || p.topk_group < 1 || p.topk_group > p.n_group ||
        p.top_k > p.topk_group * per)
      fail("CUDA router: group_limited_greedy with ", M, " experts, n_group ", p.n_group, ", topk_group ",
           p.topk_group, " unsupported");
  }
  if (T <= 0) return;
  auto s = static_cast<cudaStream_t>(stream_);
  switch (V) {
    case 1: launch<1>(logits, T, p, grouped, reroute, adapter_rows, out_slots, out_weights, out_ids, s); break;
    case 2: launch<2>(logits, T, p, grouped, reroute, adapter_rows, out_slots, out_weights, out_ids, s); break;
    case 3: launch<3>(logits, T, p, grouped, reroute, adapter_rows, out_slots, out_weights, out_ids, s); break;
    case 4: launch<4>(logits, T, p, grouped, reroute, adapter_rows, out_slots, out_weights, out_ids, s); break;
    case 5: launch<5>(logits, T, p, grouped, reroute, adapter_rows, out_slots, out_weights, out_ids, s); break;
    case 6: launch<6>(logits, T, p, grouped, reroute, adapter_rows, out_slots, out_weights, out_ids, s); break;
    case 7: launch<7>(logits, T, p, grouped, reroute, adapter_rows, out_slots, out_weights, out_ids, s); break;
    case 8: launch<8>(logits, T, p, grouped, reroute, adapter_rows, out_slots, out_weights, out_ids, s); break;
  }
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) fail("CUDA router: launch failed: ", cudaGetErrorString(err));
}

}  // namespace cuda
}  // namespace ew

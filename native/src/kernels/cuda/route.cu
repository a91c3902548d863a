// CudaOps::route, the fused router step from the logits (kernels/ops.h's RouterParams):
// one warp per token. Lane l holds experts [l*V, l*V + V) in registers (V = ceil(M / 32);
// ids >= M are padding, never candidates): the softmax max and sum are butterfly
// reductions (sigmoid is per element), a group's score (its best, or the sum of its two
// best) is a butterfly over its lanes, and each of the k top-k rounds is a butterfly
// argmax over the untaken experts (ties to the lower id, so all lanes agree and the CPU
// twin is matched); lane j keeps round j's winner and its unbiased score, so the k
// results are normalised and stored in parallel, with the reroute lookup in the store.
#include <cuda_runtime.h>

#include <cfloat>
#include <climits>

#include "kernels/cuda/cuda_ops.h"
#include "util/error.h"

namespace ew {
namespace cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 4;
constexpr int kMaxV = 12;  // M <= 384 (Kimi-K2)
constexpr unsigned kFull = 0xffffffffu;

struct Best {
  float v;
  int id;
};

__device__ __forceinline__ Best better(Best a, Best b) {
  return (b.v > a.v || (b.v == a.v && b.id < a.id)) ? b : a;
}

// Butterfly argmax over the warp: every lane ends with the best.
__device__ __forceinline__ Best warp_argmax(Best b) {
  for (int off = kWarp / 2; off > 0; off /= 2) {
    Best o{__shfl_xor_sync(kFull, b.v, off), __shfl_xor_sync(kFull, b.id, off)};
    b = better(b, o);
  }
  return b;
}

struct Params {
  int M, k;
  bool sigmoid;
  GroupRule groups;
  int n_group, topk_group;
  bool normalize;
  float norm_eps, scale;
};

// Closes the groups outside the topk_group best: their real experts' choice values
// become 0 (BestScore) or -inf (TopTwoSum). Every lane must call it.
template <int V>
__device__ __forceinline__ void close_groups(float (&c)[V], int lane, const Params& p) {
  // Lanes of one group are adjacent (whole lanes, a power of two of them: checked on the host).
  const int lanes_per_group = (p.M / p.n_group) / V;
  float a = -INFINITY, b = -INFINITY;  // the lane's best two
#pragma unroll
  for (int i = 0; i < V; ++i) {
    if (lane * V + i >= p.M) continue;
    if (c[i] > a) {
      b = a;
      a = c[i];
    } else if (c[i] > b) {
      b = c[i];
    }
  }
  for (int off = lanes_per_group / 2; off > 0; off /= 2) {
    const float oa = __shfl_xor_sync(kFull, a, off), ob = __shfl_xor_sync(kFull, b, off);
    b = fmaxf(fminf(a, oa), fmaxf(b, ob));
    a = fmaxf(a, oa);
  }
  const int my_group = lane / lanes_per_group;  // >= n_group: a group of padding lanes
  float cand = my_group < p.n_group ? (p.groups == GroupRule::TopTwoSum ? a + b : a) : -INFINITY;
  bool keep = false;
  for (int r = 0; r < p.topk_group; ++r) {
    // Groups never taken twice: a taken group drops below every real one.
    const Best w = warp_argmax({keep ? -INFINITY : cand, keep ? INT_MAX : my_group});
    if (w.id == my_group) keep = true;
  }
  if (!keep) {
    const float closed = p.groups == GroupRule::TopTwoSum ? -INFINITY : 0.f;
#pragma unroll
    for (int i = 0; i < V; ++i)
      if (lane * V + i < p.M) c[i] = closed;
  }
}

template <int V>
__global__ void route_kernel(const float* __restrict__ logits, int64_t T, Params p, const float* __restrict__ bias,
                             const int32_t* __restrict__ table, int n_rows, const int32_t* __restrict__ adapter_rows,
                             int32_t* __restrict__ out_slots, float* __restrict__ out_weights,
                             int32_t* __restrict__ out_ids) {
  const int lane = threadIdx.x % kWarp;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (t >= T) return;  // whole warps exit together: T is uniform across a warp's lanes
  const int M = p.M, k = p.k;

  const float* row_logits = logits + t * M;
  float s[V];  // scores
  bool nan = false;
  if (!p.sigmoid) {
    float mx = -FLT_MAX;
#pragma unroll
    for (int i = 0; i < V; ++i) {
      s[i] = lane * V + i < M ? row_logits[lane * V + i] : -FLT_MAX;
      mx = fmaxf(mx, s[i]);
    }
    for (int off = kWarp / 2; off > 0; off /= 2) mx = fmaxf(mx, __shfl_xor_sync(kFull, mx, off));
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < V; ++i) {
      s[i] = expf(s[i] - mx);
      sum += s[i];
    }
    for (int off = kWarp / 2; off > 0; off /= 2) sum += __shfl_xor_sync(kFull, sum, off);
    const float inv = 1.f / sum;
#pragma unroll
    for (int i = 0; i < V; ++i) s[i] *= inv;
    // A NaN or +inf logit (sum NaN) or only -inf logits (sum 0): the CPU twin's scores hold
    // a NaN. sum is the same on every lane (a butterfly), so the branch below is uniform.
    nan = !(sum > 0.f);
  } else {
    bool mine = false;
#pragma unroll
    for (int i = 0; i < V; ++i) {
      s[i] = lane * V + i < M ? 1.f / (1.f + expf(-row_logits[lane * V + i])) : 0.f;
      mine = mine || isnan(s[i]);
    }
    nan = __any_sync(kFull, mine);
  }

  float my_w = 0.f;
  int my_id = 0;
  if (nan) {
    // The CPU twin's rule: ids 0..k-1 with NaN weights, never an id past the reroute table.
    my_id = lane;
    my_w = __int_as_float(0x7fc00000);  // quiet NaN
  } else {
    float c[V];  // choice values: scores (+ bias), closed groups filled
#pragma unroll
    for (int i = 0; i < V; ++i) c[i] = s[i] + (bias && lane * V + i < M ? bias[lane * V + i] : 0.f);
    if (p.groups != GroupRule::None && p.n_group > 1) close_groups<V>(c, lane, p);
    unsigned taken = 0;
    for (int j = 0; j < k; ++j) {
      Best local{-INFINITY, INT_MAX};
#pragma unroll
      for (int i = 0; i < V; ++i)
        if (lane * V + i < M && !(taken >> i & 1u) && (c[i] > local.v || local.id == INT_MAX))
          local = {c[i], lane * V + i};
      const Best b = warp_argmax(local);
      // The winner's weight: its unbiased score (bias), else the (masked) value it won with.
      float w = b.v;
      if (bias) {
        float own = 0.f;
#pragma unroll
        for (int i = 0; i < V; ++i)
          if (lane * V + i == b.id) own = s[i];
        w = __shfl_sync(kFull, own, b.id / V);
      }
      if (lane == j) {
        my_w = w;
        my_id = b.id;
      }
      if (b.id / V == lane) taken |= 1u << (b.id - lane * V);
    }
  }

  if (p.normalize) {
    float sum = 0.f;  // summed in j order, as the CPU twin does (a butterfly would round differently)
    for (int j = 0; j < k; ++j) sum += __shfl_sync(kFull, my_w, j);
    my_w = my_w / (sum + p.norm_eps);
  }
  if (lane < k) {
    const int64_t o = t * k + lane;
    const int32_t row = adapter_rows ? adapter_rows[t] : 0;
    int32_t slot = my_id;
    if (table) slot = (row >= 0 && row < n_rows) ? table[static_cast<int64_t>(row) * M + my_id] : -1;
    out_slots[o] = slot;
    out_weights[o] = my_w * p.scale;
    if (out_ids) out_ids[o] = my_id;
  }
}

template <int V>
void launch(const float* logits, int64_t T, const Params& p, const float* bias, const RerouteTableView& rt,
            const int32_t* rows, int32_t* slots, float* weights, int32_t* ids, cudaStream_t stream) {
  const int64_t blocks = (T + kWarpsPerBlock - 1) / kWarpsPerBlock;
  route_kernel<V><<<static_cast<unsigned>(blocks), kWarpsPerBlock * kWarp, 0, stream>>>(
      logits, T, p, bias, rt.table, rt.n_rows, rows, slots, weights, ids);
}

}  // namespace

void CudaOps::route(float* logits, int64_t T, const RouterParams& rp, const RerouteTableView& reroute,
                    const int32_t* adapter_rows, int32_t* out_slots, float* out_weights, int32_t* out_ids,
                    const float* bias) {
  const int M = rp.n_experts;
  const int V = (M + kWarp - 1) / kWarp;
  if (M < 1 || V > kMaxV) fail("CUDA router: ", M, " experts unsupported (1 to ", kMaxV * kWarp, ")");
  if (rp.top_k < 1 || rp.top_k > kWarp || rp.top_k > M) fail("CUDA router: top_k ", rp.top_k, " out of [1, 32]");
  if (reroute.table && reroute.n_experts != M)
    fail("CUDA router: reroute table has ", reroute.n_experts, " experts per row, router has ", M);
  const Params p{M,         rp.top_k,      rp.scoring == RouterScoring::Sigmoid, rp.groups, rp.n_group, rp.topk_group,
                 rp.normalize, rp.norm_eps, rp.scale};
  if (p.groups != GroupRule::None && p.n_group > 1) {
    // Groups are whole lanes, a power of two of them (padding lanes then form whole groups too).
    const int per = M % p.n_group == 0 ? M / p.n_group : 0;
    const int lanes = per > 0 && per % V == 0 ? per / V : 0;
    const int min_per = p.groups == GroupRule::TopTwoSum ? 2 : 1;
    if (lanes == 0 || (lanes & (lanes - 1)) != 0 || per < min_per || p.topk_group < 1 ||
        p.topk_group > p.n_group || p.k > p.topk_group * per)
      fail("CUDA router: grouped routing with ", M, " experts, n_group ", p.n_group, ", topk_group ", p.topk_group,
           " unsupported (each group must be a power of two of ", V, "-expert lanes)");
  }
  if (T <= 0) return;
  auto s = static_cast<cudaStream_t>(stream_);
  switch (V) {
#define EW_ROUTE_CASE(n) \
  case n: launch<n>(logits, T, p, bias, reroute, adapter_rows, out_slots, out_weights, out_ids, s); break;
    EW_ROUTE_CASE(1) EW_ROUTE_CASE(2) EW_ROUTE_CASE(3) EW_ROUTE_CASE(4) EW_ROUTE_CASE(5) EW_ROUTE_CASE(6)
    EW_ROUTE_CASE(7) EW_ROUTE_CASE(8) EW_ROUTE_CASE(9) EW_ROUTE_CASE(10) EW_ROUTE_CASE(11) EW_ROUTE_CASE(12)
#undef EW_ROUTE_CASE
  }
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) fail("CUDA router: launch failed: ", cudaGetErrorString(err));
}

}  // namespace cuda
}  // namespace ew

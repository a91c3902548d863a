// CpuOps::route, the fused router step from the logits: for each token one pass that does
// softmax (in place over the logits), top-k (greedy or group-limited), the weight
// normalisation and the reroute of every chosen base id to its adapter's slot.
// Matches the DeepSeek-V2 reference (MoEGate): softmax in fp32; group-limited greedy
// keeps the topk_group groups with the largest max score and treats the experts of
// the other groups as score 0; weights are divided by (sum + 1e-20) when
// norm_topk_prob and top_k > 1, else multiplied by routed_scaling_factor.
// A null reroute.table means no remap (slots = base ids); a null adapter_rows means
// every token uses row 0.
#include <cmath>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/route.h"
#include "kernels/cpu/matmul.h"
#include "util/error.h"

namespace ew {
namespace {

constexpr int kMaxTopK = 64;
constexpr int kMaxGroups = 64;

void softmax_inplace(float* p, int M) {
  float mx = p[0];
  for (int e = 1; e < M; ++e) mx = p[e] > mx ? p[e] : mx;
  float sum = 0.f;
  for (int e = 0; e < M; ++e) {
    p[e] = std::exp(p[e] - mx);
    sum += p[e];
  }
  const float inv = 1.f / sum;
  for (int e = 0; e < M; ++e) p[e] *= inv;
}

// Bit g set: group g takes part in the top-k. Groups are kept by their max score,
// ties to the lower group index.
uint64_t select_groups(const float* p, int M, int n_group, int topk_group) {
  const int per = M / n_group;
  float gmax[kMaxGroups];
  for (int g = 0; g < n_group; ++g) {
    float m = p[g * per];
    for (int i = 1; i < per; ++i) m = p[g * per + i] > m ? p[g * per + i] : m;
    gmax[g] = m;
  }
  uint64_t keep = 0;
  for (int r = 0; r < topk_group; ++r) {
    int best = -1;
    for (int g = 0; g < n_group; ++g)
      if (!(keep >> g & 1) && (best < 0 || gmax[g] > gmax[best])) best = g;
    keep |= uint64_t{1} << best;
  }
  return keep;
}

void check_params(const RouterParams& p, const RerouteTableView& rt, const int32_t* adapter_rows, int64_t T) {
  const int M = p.n_experts;
  if (M <= 0 || p.top_k <= 0 || p.top_k > M || p.top_k > kMaxTopK)
    fail("route: top_k ", p.top_k, " must be in [1, min(", M, ", ", kMaxTopK, ")]");
  if (p.group_limited &&
      (p.n_group <= 0 || p.n_group > kMaxGroups || M % p.n_group != 0 || p.topk_group <= 0 ||
       p.topk_group > p.n_group || p.top_k > p.topk_group * (M / p.n_group)))
    fail("route: group_limited_greedy needs n_group dividing ", M, " (<= ", kMaxGroups,
         "), 1 <= topk_group <= n_group and top_k <= topk_group * group size; got n_group ", p.n_group,
         ", topk_group ", p.topk_group, ", top_k ", p.top_k);
  if (rt.table && rt.n_experts != M)
    fail("route: reroute table has ", rt.n_experts, " experts per row, router has ", M);
  if (!adapter_rows) return;
  const int32_t rows = rt.table ? rt.n_rows : 1;
  for (int64_t t = 0; t < T; ++t)
    if (adapter_rows[t] < 0 || adapter_rows[t] >= rows)
      fail("route: token ", t, " has adapter row ", adapter_rows[t], ", reroute table has ", rows, " rows");
}

}  // namespace

void CpuOps::route(float* logits, int64_t T, const RouterParams& p, const RerouteTableView& reroute,
                   const int32_t* adapter_rows, int32_t* out_slots, float* out_weights, int32_t* out_ids) {
  check_params(p, reroute, adapter_rows, T);
  if (T == 0) return;
  const int M = p.n_experts, k = p.top_k;

  const bool grouped = p.group_limited && p.n_group > 1;
  const int per_group = grouped ? M / p.n_group : M;
  const bool normalise = p.norm_topk_prob && k > 1;
  for (int64_t t = 0; t < T; ++t) {
    float* prob = logits + t * M;
    softmax_inplace(prob, M);
    const uint64_t groups = grouped ? select_groups(prob, M, p.n_group, p.topk_group) : ~uint64_t{0};

    // Insertion into a descending list of k: ascending ids displace an entry only
    // when strictly greater, so equal scores keep the lower id first.
    float top_w[kMaxTopK];
    int32_t top_id[kMaxTopK];
    int n = 0;
    for (int e = 0; e < M; ++e) {
      const float s = (groups >> (e / per_group) & 1) ? prob[e] : 0.f;
      if (n == k && !(s > top_w[k - 1])) continue;
      int j = n < k ? n++ : k - 1;
      for (; j > 0 && s > top_w[j - 1]; --j) {
        top_w[j] = top_w[j - 1];
        top_id[j] = top_id[j - 1];
      }
      top_w[j] = s;
      top_id[j] = e;
    }

    float denom = 1.f;
    if (normalise) {
      float sum = 0.f;
      for (int j = 0; j < k; ++j) sum += top_w[j];
      denom = sum + 1e-20f;
    }
    const float scale = static_cast<float>(p.routed_scaling_factor);
    const int32_t* row =
        reroute.table ? reroute.table + static_cast<int64_t>(adapter_rows ? adapter_rows[t] : 0) * M : nullptr;
    int32_t* slots = out_slots + t * k;
    float* weights = out_weights + t * k;
    for (int j = 0; j < k; ++j) {
      slots[j] = row ? row[top_id[j]] : top_id[j];
      weights[j] = normalise ? top_w[j] / denom : top_w[j] * scale;
      if (out_ids) out_ids[t * k + j] = top_id[j];
    }
  }
}

void route_tokens_cpu(const float* x, int64_t T, int64_t H, const TensorView& W, const RouterParams& p,
                      const RerouteTableView& reroute, const int32_t* adapter_rows, int32_t* out_slots,
                      float* out_weights, int32_t* out_ids, float* scratch) {
  if (W.shape.size() != 2 || W.shape[0] != p.n_experts || W.shape[1] != H)
    fail("route_tokens_cpu: router weight has shape ", shape_str(W.shape), ", expected [", p.n_experts, ", ", H, "]");
  CpuOps ops;
  ops.matmul_exact(x, T, Weight{W.data, W.dtype}, p.n_experts, H, scratch);
  ops.route(scratch, T, p, reroute, adapter_rows, out_slots, out_weights, out_ids);
}

}  // namespace ew

// CpuOps::route, the fused router step from the logits (kernels/ops.h's RouterParams):
// for each token one pass that turns the logits into scores in place (softmax or
// sigmoid, fp32), chooses the top-k (optionally on bias-corrected scores, optionally
// within the best groups), weights and normalises them, and reroutes every chosen base
// id to its adapter's slot. Ties go to the lower id and the lower group.
// A token whose scores hold a NaN (a NaN logit; for softmax also +inf or all -inf) gets
// ids 0..k-1 with NaN weights, as the CUDA twin does: never an id outside [0, M).
// A null reroute.table means no remap (slots = base ids); a null adapter_rows means
// every token uses row 0.
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/route.h"
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

void sigmoid_inplace(float* p, int M) {
  for (int e = 0; e < M; ++e) p[e] = 1.f / (1.f + std::exp(-p[e]));
}

// A group's score over the choice values: its best (BestScore) or the sum of its two
// best, best first (TopTwoSum).
float group_score(const float* c, int per, GroupRule rule) {
  float a = c[0], b = -INFINITY;  // best, second best
  for (int i = 1; i < per; ++i) {
    if (c[i] > a) {
      b = a;
      a = c[i];
    } else if (c[i] > b) {
      b = c[i];
    }
  }
  return rule == GroupRule::TopTwoSum ? a + b : a;
}

// Bit g set: group g stays open. The topk_group best group scores, ties to the lower group.
uint64_t select_groups(const float* c, int M, const RouterParams& p) {
  const int per = M / p.n_group;
  float gs[kMaxGroups];
  for (int g = 0; g < p.n_group; ++g) gs[g] = group_score(c + g * per, per, p.groups);
  uint64_t keep = 0;
  for (int r = 0; r < p.topk_group; ++r) {
    int best = -1;
    for (int g = 0; g < p.n_group; ++g)
      if (!(keep >> g & 1) && (best < 0 || gs[g] > gs[best])) best = g;
    keep |= uint64_t{1} << best;
  }
  return keep;
}

void check_params(const RouterParams& p, const RerouteTableView& rt, const int32_t* adapter_rows, int64_t T) {
  const int M = p.n_experts;
  if (M <= 0 || p.top_k <= 0 || p.top_k > M || p.top_k > kMaxTopK)
    fail("route: top_k ", p.top_k, " must be in [1, min(", M, ", ", kMaxTopK, ")]");
  if (p.groups != GroupRule::None) {
    const int min_per = p.groups == GroupRule::TopTwoSum ? 2 : 1;
    if (p.n_group <= 0 || p.n_group > kMaxGroups || M % p.n_group != 0 || M / p.n_group < min_per ||
        p.topk_group <= 0 || p.topk_group > p.n_group || p.top_k > p.topk_group * (M / p.n_group))
      fail("route: grouped routing needs n_group dividing ", M, " (<= ", kMaxGroups, ", groups of at least ", min_per,
           "), 1 <= topk_group <= n_group and top_k <= topk_group * group size; got n_group ", p.n_group,
           ", topk_group ", p.topk_group, ", top_k ", p.top_k);
  }
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
                   const int32_t* adapter_rows, int32_t* out_slots, float* out_weights, int32_t* out_ids,
                   const float* bias) {
  check_params(p, reroute, adapter_rows, T);
  if (T == 0) return;
  const int M = p.n_experts, k = p.top_k;
  const bool grouped = p.groups != GroupRule::None && p.n_group > 1;
  const int per_group = grouped ? M / p.n_group : M;
  const float closed = p.groups == GroupRule::TopTwoSum ? -INFINITY : 0.f;
  std::vector<float> choice(bias ? static_cast<size_t>(M) : 0);
  for (int64_t t = 0; t < T; ++t) {
    float* score = logits + t * M;
    if (p.scoring == RouterScoring::Softmax)
      softmax_inplace(score, M);
    else
      sigmoid_inplace(score, M);
    bool nan = false;
    for (int e = 0; e < M; ++e) nan = nan || std::isnan(score[e]);
    const float* c = score;
    if (bias) {
      for (int e = 0; e < M; ++e) choice[e] = score[e] + bias[e];
      c = choice.data();
    }
    const uint64_t groups = grouped && !nan ? select_groups(c, M, p) : ~uint64_t{0};

    // Insertion into a descending list of k: ascending ids displace an entry only
    // when strictly greater, so equal values keep the lower id first.
    float top_c[kMaxTopK];
    int32_t top_id[kMaxTopK];
    int n = 0;
    if (nan) {
      for (int j = 0; j < k; ++j) top_id[j] = j;
      n = k;
    }
    for (int e = 0; e < M && !nan; ++e) {
      const float s = (groups >> (e / per_group) & 1) ? c[e] : closed;
      if (n == k && !(s > top_c[k - 1])) continue;
      int j = n < k ? n++ : k - 1;
      for (; j > 0 && s > top_c[j - 1]; --j) {
        top_c[j] = top_c[j - 1];
        top_id[j] = top_id[j - 1];
      }
      top_c[j] = s;
      top_id[j] = e;
    }

    // Weights: the unbiased scores of the chosen (V2 without a bias: the masked score it chose on).
    float w[kMaxTopK];
    for (int j = 0; j < k; ++j)
      w[j] = nan ? NAN : bias ? score[top_id[j]] : (groups >> (top_id[j] / per_group) & 1) ? score[top_id[j]] : closed;
    if (p.normalize) {
      float sum = 0.f;
      for (int j = 0; j < k; ++j) sum += w[j];
      const float denom = sum + p.norm_eps;
      for (int j = 0; j < k; ++j) w[j] = w[j] / denom;
    }
    const int32_t* row =
        reroute.table ? reroute.table + static_cast<int64_t>(adapter_rows ? adapter_rows[t] : 0) * M : nullptr;
    int32_t* slots = out_slots + t * k;
    float* weights = out_weights + t * k;
    for (int j = 0; j < k; ++j) {
      slots[j] = row ? row[top_id[j]] : top_id[j];
      weights[j] = w[j] * p.scale;
      if (out_ids) out_ids[t * k + j] = top_id[j];
    }
  }
}

void route_tokens_cpu(const float* x, int64_t T, int64_t H, const TensorView& W, const RouterParams& p,
                      const RerouteTableView& reroute, const int32_t* adapter_rows, int32_t* out_slots,
                      float* out_weights, int32_t* out_ids, float* scratch, const float* correction_bias) {
  if (W.shape.size() != 2 || W.shape[0] != p.n_experts || W.shape[1] != H)
    fail("route_tokens_cpu: router weight has shape ", shape_str(W.shape), ", expected [", p.n_experts, ", ", H, "]");
  CpuOps ops;
  ops.matmul_exact(x, T, Weight{W.data, W.dtype}, p.n_experts, H, scratch);
  ops.route(scratch, T, p, reroute, adapter_rows, out_slots, out_weights, out_ids, correction_bias);
}

}  // namespace ew

// route_tokens_cpu against a naive reference: softmax in double, a full stable sort
// (score descending, id ascending), group masking done the slow way, and the reroute
// looked up per (token, expert).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "engine/reroute_table.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/route.h"
#include "test.h"

using namespace ew;

namespace {

struct RefRoute {
  std::vector<int32_t> ids;
  std::vector<double> weights;
};

// logits: [M] from the same matmul the router uses (the reduction order is not under
// test); bias: [M] or null (DeepSeek-V3's e_score_correction_bias).
RefRoute reference_route(const float* logits, const RouterParams& p, const float* bias = nullptr) {
  const int M = p.n_experts;
  std::vector<double> score(M);
  if (p.scoring == RouterScoring::Softmax) {
    double mx = -INFINITY, sum = 0;
    for (int e = 0; e < M; ++e) mx = std::max(mx, double(logits[e]));
    for (int e = 0; e < M; ++e) sum += score[e] = std::exp(double(logits[e]) - mx);
    for (auto& v : score) v /= sum;
  } else {
    for (int e = 0; e < M; ++e) score[e] = 1 / (1 + std::exp(-double(logits[e])));
  }
  std::vector<double> choice = score;
  if (bias)
    for (int e = 0; e < M; ++e) choice[e] += bias[e];
  std::vector<double> masked = choice;
  if (p.groups != GroupRule::None && p.n_group > 1) {
    const int per = M / p.n_group;
    std::vector<int> groups(p.n_group);
    std::iota(groups.begin(), groups.end(), 0);
    auto gscore = [&](int g) {
      std::vector<double> v(choice.begin() + g * per, choice.begin() + (g + 1) * per);
      std::sort(v.rbegin(), v.rend());
      return p.groups == GroupRule::TopTwoSum ? v[0] + v[1] : v[0];
    };
    std::stable_sort(groups.begin(), groups.end(), [&](int a, int b) { return gscore(a) > gscore(b); });
    const double closed = p.groups == GroupRule::TopTwoSum ? -INFINITY : 0.0;
    for (int r = p.topk_group; r < p.n_group; ++r)
      for (int i = 0; i < per; ++i) masked[groups[r] * per + i] = closed;
  }
  std::vector<int32_t> order(M);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return masked[a] > masked[b]; });
  RefRoute r;
  r.ids.assign(order.begin(), order.begin() + p.top_k);
  for (int32_t id : r.ids) r.weights.push_back(bias ? score[id] : masked[id]);
  if (p.normalize) {
    double s = 0;
    for (double w : r.weights) s += w;
    for (double& w : r.weights) w /= s + p.norm_eps;
  }
  for (double& w : r.weights) w *= p.scale;
  return r;
}

struct Case {
  int64_t T, H;
  RouterParams p;
  std::vector<float> x, w;
  TensorView W() const { return {w.data(), DType::F32, {p.n_experts, H}}; }
};

Case random_case(uint32_t seed, int64_t T, int64_t H, int M, int k) {
  Case c{T, H, {}, {}, {}};
  c.p.n_experts = M;
  c.p.top_k = k;
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  c.x.resize(T * H);
  c.w.resize(M * H);
  for (auto& v : c.x) v = nd(rng);
  for (auto& v : c.w) v = nd(rng) * 0.3f;
  return c;
}

// Runs the router (identity reroute) and checks ids exactly and weights closely.
void check_against_reference(const Case& c, const float* bias = nullptr) {
  const int M = c.p.n_experts, k = c.p.top_k;
  std::vector<float> scratch(c.T * M), w(c.T * k), logits(c.T * M);
  std::vector<int32_t> slots(c.T * k), ids(c.T * k);
  route_tokens_cpu(c.x.data(), c.T, c.H, c.W(), c.p, {}, nullptr, slots.data(), w.data(), ids.data(),
                   scratch.data(), bias);
  matmul_cpu_raw(c.x.data(), c.T, c.w.data(), DType::F32, c.p.n_experts, c.H, logits.data());
  for (int64_t t = 0; t < c.T; ++t) {
    RefRoute ref = reference_route(logits.data() + t * M, c.p, bias);
    for (int j = 0; j < k; ++j) {
      CHECK_EQ(ids[t * k + j], ref.ids[j]);
      CHECK_EQ(slots[t * k + j], ref.ids[j]);
      CHECK_NEAR(w[t * k + j], ref.weights[j], 1e-6);
    }
  }
}

std::vector<float> ewtest_random_bias(int M, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 0.5f);
  std::vector<float> b(M);
  for (auto& v : b) v = nd(rng);
  return b;
}

}  // namespace

TEST(router_greedy_matches_reference) {
  Case c = random_case(1, 37, 48, 64, 6);
  check_against_reference(c);
  c.p.scale = 2.5f;
  check_against_reference(c);
}

TEST(router_greedy_normalised_weights_sum_to_one) {
  Case c = random_case(2, 19, 32, 16, 4);
  c.p.normalize = true;
  c.p.norm_eps = 1e-20f;
  check_against_reference(c);
  std::vector<float> scratch(c.T * 16), w(c.T * 4);
  std::vector<int32_t> slots(c.T * 4);
  route_tokens_cpu(c.x.data(), c.T, c.H, c.W(), c.p, {}, nullptr, slots.data(), w.data(), nullptr, scratch.data());
  for (int64_t t = 0; t < c.T; ++t) CHECK_NEAR(w[t * 4] + w[t * 4 + 1] + w[t * 4 + 2] + w[t * 4 + 3], 1.0, 1e-6);
}

TEST(router_top1_normalised_is_exactly_one_and_scaled_is_the_probability_times_scale) {
  // Qwen3-MoE normalises top-1 too (weight exactly 1); DeepSeek-V2 scales it instead.
  Case c = random_case(3, 5, 16, 8, 1);
  c.p.normalize = true;
  check_against_reference(c);
  std::vector<float> scratch(c.T * 8), w(c.T);
  std::vector<int32_t> slots(c.T);
  route_tokens_cpu(c.x.data(), c.T, c.H, c.W(), c.p, {}, nullptr, slots.data(), w.data(), nullptr, scratch.data());
  for (float v : w) CHECK_EQ(v, 1.f);
  c.p.normalize = false;
  c.p.scale = 3.f;
  check_against_reference(c);
}

TEST(router_group_limited_matches_reference) {
  for (int topk_group : {1, 2, 3}) {
    Case c = random_case(10 + topk_group, 41, 40, 64, 6);
    c.p.groups = GroupRule::BestScore;
    c.p.n_group = 8;
    c.p.topk_group = topk_group;
    check_against_reference(c);
    // The chosen ids really come from at most topk_group groups when they hold enough experts.
    std::vector<float> scratch(c.T * 64), w(c.T * 6);
    std::vector<int32_t> slots(c.T * 6);
    route_tokens_cpu(c.x.data(), c.T, c.H, c.W(), c.p, {}, nullptr, slots.data(), w.data(), nullptr,
                     scratch.data());
    for (int64_t t = 0; t < c.T; ++t) {
      uint32_t used = 0;
      for (int j = 0; j < 6; ++j) used |= 1u << (slots[t * 6 + j] / 8);
      CHECK(__builtin_popcount(used) <= topk_group);
    }
  }
}

TEST(router_ties_go_to_the_lower_id) {
  // Rows 3, 5, 9 and 12 of W are equal and the largest: their probabilities tie exactly.
  const int M = 16, H = 8, k = 3;
  std::vector<float> w(M * H, 0.f), x(H, 1.f);
  for (int e : {12, 9, 5, 3})
    for (int h = 0; h < H; ++h) w[e * H + h] = 0.5f;
  w[7 * H] = 0.1f;  // the next best, never reached
  TensorView W{w.data(), DType::F32, {M, H}};
  RouterParams p;
  p.n_experts = M;
  p.top_k = k;
  std::vector<float> scratch(M), wts(k);
  std::vector<int32_t> slots(k);
  route_tokens_cpu(x.data(), 1, H, W, p, {}, nullptr, slots.data(), wts.data(), nullptr, scratch.data());
  CHECK_EQ(slots[0], 3);
  CHECK_EQ(slots[1], 5);
  CHECK_EQ(slots[2], 9);
  CHECK_EQ(wts[0], wts[2]);

  // Tied groups too: with all scores equal, group 0 wins, so ids 0..k-1.
  std::vector<float> zero(M * H, 0.f);
  TensorView Z{zero.data(), DType::F32, {M, H}};
  p.groups = GroupRule::BestScore;
  p.n_group = 4;
  p.topk_group = 1;
  route_tokens_cpu(x.data(), 1, H, Z, p, {}, nullptr, slots.data(), wts.data(), nullptr, scratch.data());
  CHECK_EQ(slots[0], 0);
  CHECK_EQ(slots[1], 1);
  CHECK_EQ(slots[2], 2);
}

TEST(router_reroutes_through_each_tokens_row) {
  Case c = random_case(20, 64, 32, 16, 4);
  const int M = 16, k = 4, rows = 4;
  RerouteTables tables(2, rows, M);
  // Row 1 remaps experts 0..7 to slots 16..23, row 2 remaps odd experts to 40 + e, row 3 stays identity.
  for (int e = 0; e < 8; ++e) tables.set(1, 1, e, 16 + e);
  for (int e = 1; e < M; e += 2) tables.set(1, 2, e, 40 + e);
  std::vector<int32_t> rows_of(c.T);
  for (int64_t t = 0; t < c.T; ++t) rows_of[t] = static_cast<int32_t>(t % rows);

  std::vector<float> scratch(c.T * M), w(c.T * k), w_base(c.T * k);
  std::vector<int32_t> slots(c.T * k), ids(c.T * k), base_slots(c.T * k);
  route_tokens_cpu(c.x.data(), c.T, c.H, c.W(), c.p, tables.view(1), rows_of.data(), slots.data(), w.data(),
                   ids.data(), scratch.data());
  route_tokens_cpu(c.x.data(), c.T, c.H, c.W(), c.p, {}, nullptr, base_slots.data(), w_base.data(), nullptr,
                   scratch.data());
  int remapped = 0;
  for (int64_t t = 0; t < c.T; ++t)
    for (int j = 0; j < k; ++j) {
      const int32_t id = ids[t * k + j];
      CHECK_EQ(id, base_slots[t * k + j]);        // routing ignores the adapter
      CHECK_EQ(w[t * k + j], w_base[t * k + j]);  // and so do the weights
      CHECK_EQ(slots[t * k + j], tables.get(1, rows_of[t], id));
      remapped += slots[t * k + j] != id;
    }
  CHECK(remapped > 0);
  // Layer 0 of the same tables is all identity.
  route_tokens_cpu(c.x.data(), c.T, c.H, c.W(), c.p, tables.view(0), rows_of.data(), slots.data(), w.data(),
                   ids.data(), scratch.data());
  CHECK(slots == ids);
}

TEST(router_refuses_bad_rows_before_writing) {
  Case c = random_case(30, 3, 16, 8, 2);
  RerouteTables tables(1, 2, 8);
  std::vector<int32_t> rows_of = {0, 2, 1};
  std::vector<float> scratch(3 * 8), w(6, -1.f);
  std::vector<int32_t> slots(6, -7);
  CHECK_THROWS_WITH(route_tokens_cpu(c.x.data(), 3, 16, c.W(), c.p, tables.view(0), rows_of.data(), slots.data(),
                                     w.data(), nullptr, scratch.data()),
                    "adapter row 2");
  CHECK(std::all_of(slots.begin(), slots.end(), [](int32_t s) { return s == -7; }));
  rows_of[1] = -1;
  CHECK_THROWS_WITH(route_tokens_cpu(c.x.data(), 3, 16, c.W(), c.p, tables.view(0), rows_of.data(), slots.data(),
                                     w.data(), nullptr, scratch.data()),
                    "adapter row -1");
}

TEST(router_bf16_weights_and_batch_invariance) {
  // The same token routes identically alone and inside a batch.
  Case c = random_case(40, 9, 64, 64, 6);
  std::vector<uint16_t> wb(c.w.size());
  for (size_t i = 0; i < c.w.size(); ++i) {
    uint32_t u;
    std::memcpy(&u, &c.w[i], 4);
    wb[i] = static_cast<uint16_t>(u >> 16);
  }
  TensorView W{wb.data(), DType::BF16, {64, 64}};
  std::vector<float> scratch(9 * 64), w(9 * 6), w1(6);
  std::vector<int32_t> slots(9 * 6), s1(6);
  route_tokens_cpu(c.x.data(), 9, 64, W, c.p, {}, nullptr, slots.data(), w.data(), nullptr, scratch.data());
  for (int t = 0; t < 9; ++t) {
    route_tokens_cpu(c.x.data() + t * 64, 1, 64, W, c.p, {}, nullptr, s1.data(), w1.data(), nullptr, scratch.data());
    for (int j = 0; j < 6; ++j) {
      CHECK_EQ(s1[j], slots[t * 6 + j]);
      CHECK_EQ(w1[j], w[t * 6 + j]);
    }
  }
}

// DeepSeek-V3 (noaux_tc): sigmoid scores, experts chosen on score + bias within the
// topk_group groups with the best sum of two biased scores, weighted by the unbiased
// scores, normalised, then scaled.
TEST(router_noaux_tc_matches_reference_and_the_bias_only_chooses) {
  for (int topk_group : {1, 2, 4}) {
    Case c = random_case(50 + topk_group, 33, 40, 64, 6);
    c.p.scoring = RouterScoring::Sigmoid;
    c.p.groups = GroupRule::TopTwoSum;
    c.p.n_group = 8;
    c.p.topk_group = topk_group;
    c.p.normalize = true;
    c.p.norm_eps = 1e-20f;
    c.p.scale = 2.5f;
    std::vector<float> bias = ewtest_random_bias(64, 60 + topk_group);
    check_against_reference(c, bias.data());
    // The weights are the chosen experts' sigmoid scores: they sum to the scale, and a
    // bias that changes no choice changes no weight.
    std::vector<float> scratch(c.T * 64), w(c.T * 6), w2(c.T * 6);
    std::vector<int32_t> ids(c.T * 6), ids2(c.T * 6);
    route_tokens_cpu(c.x.data(), c.T, c.H, c.W(), c.p, {}, nullptr, ids.data(), w.data(), nullptr, scratch.data(),
                     bias.data());
    std::vector<float> shifted = bias;
    for (float& b : shifted) b += 0.25f;  // every expert by the same: the same choice
    route_tokens_cpu(c.x.data(), c.T, c.H, c.W(), c.p, {}, nullptr, ids2.data(), w2.data(), nullptr, scratch.data(),
                     shifted.data());
    for (int64_t t = 0; t < c.T; ++t) {
      double sum = 0;
      for (int j = 0; j < 6; ++j) sum += w[t * 6 + j];
      CHECK_NEAR(sum, 2.5, 1e-5);
    }
    CHECK(ids == ids2);
    CHECK(w == w2);
  }
  // One group (Moonlight, Kimi-K2): plain top-k of the biased scores.
  Case c = random_case(70, 21, 32, 64, 6);
  c.p.scoring = RouterScoring::Sigmoid;
  c.p.groups = GroupRule::TopTwoSum;
  c.p.normalize = true;
  c.p.norm_eps = 1e-20f;
  c.p.scale = 2.446f;
  std::vector<float> bias = ewtest_random_bias(64, 71);
  check_against_reference(c, bias.data());
}

// Closed groups are -inf (DeepSeek's inference code, vLLM, SGLang), not 0.0 (HF): when the
// open groups' biased scores are negative, a 0.0 fill would choose closed experts.
TEST(router_noaux_tc_never_chooses_a_closed_group) {
  const int M = 8, H = 4, k = 2;
  std::vector<float> w(M * H, 0.f), x(H, 1.f), bias(M, -1.f);
  w[0 * H] = 2.f;  // expert 0 best: group 0 (experts 0, 1) scores highest
  w[1 * H] = 1.f;
  TensorView W{w.data(), DType::F32, {M, H}};
  RouterParams p;
  p.n_experts = M;
  p.top_k = k;
  p.scoring = RouterScoring::Sigmoid;
  p.groups = GroupRule::TopTwoSum;
  p.n_group = 4;
  p.topk_group = 1;
  std::vector<float> scratch(M), wts(k);
  std::vector<int32_t> slots(k);
  route_tokens_cpu(x.data(), 1, H, W, p, {}, nullptr, slots.data(), wts.data(), nullptr, scratch.data(), bias.data());
  CHECK_EQ(slots[0], 0);
  CHECK_EQ(slots[1], 1);
  CHECK_NEAR(wts[0], 1 / (1 + std::exp(-2.0)), 1e-6);  // unbiased sigmoid(2)
}

TEST(router_nan_scores_route_to_ids_0_to_k_minus_1) {
  for (RouterScoring scoring : {RouterScoring::Softmax, RouterScoring::Sigmoid}) {
    RouterParams p;
    p.n_experts = 8;
    p.top_k = 3;
    p.scoring = scoring;
    std::vector<float> logits(8, 0.5f);
    logits[5] = NAN;
    std::vector<float> w(3);
    std::vector<int32_t> slots(3);
    CpuOps().route(logits.data(), 1, p, {}, nullptr, slots.data(), w.data(), nullptr);
    CHECK(slots == std::vector<int32_t>({0, 1, 2}));
    CHECK(std::isnan(w[0]));
  }
}

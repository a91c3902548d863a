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
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/route.h"
#include "test.h"

using namespace ew;

namespace {

struct RefRoute {
  std::vector<int32_t> ids;
  std::vector<double> weights;
};

// logits: [M] from the same matmul the router uses (the reduction order is not under test).
RefRoute reference_route(const float* logits, const RouterParams& p) {
  const int M = p.n_experts;
  std::vector<double> prob(M);
  double mx = -INFINITY, sum = 0;
  for (int e = 0; e < M; ++e) mx = std::max(mx, double(logits[e]));
  for (int e = 0; e < M; ++e) sum += prob[e] = std::exp(double(logits[e]) - mx);
  for (auto& v : prob) v /= sum;
  std::vector<double> score = prob;
  if (p.group_limited && p.n_group > 1) {
    const int per = M / p.n_group;
    std::vector<int> groups(p.n_group);
    std::iota(groups.begin(), groups.end(), 0);
    auto gmax = [&](int g) { return *std::max_element(prob.begin() + g * per, prob.begin() + (g + 1) * per); };
    std::stable_sort(groups.begin(), groups.end(), [&](int a, int b) { return gmax(a) > gmax(b); });
    for (int r = p.topk_group; r < p.n_group; ++r)
      for (int i = 0; i < per; ++i) score[groups[r] * per + i] = 0;
  }
  std::vector<int32_t> order(M);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return score[a] > score[b]; });
  RefRoute r;
  r.ids.assign(order.begin(), order.begin() + p.top_k);
  double s = 0;
  for (int32_t id : r.ids) s += score[id];
  for (int32_t id : r.ids)
    r.weights.push_back(p.norm_topk_prob && p.top_k > 1 ? score[id] / (s + 1e-20) : score[id] * p.routed_scaling_factor);
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
void check_against_reference(const Case& c) {
  const int M = c.p.n_experts, k = c.p.top_k;
  std::vector<float> scratch(c.T * M), w(c.T * k), logits(c.T * M);
  std::vector<int32_t> slots(c.T * k), ids(c.T * k);
  route_tokens_cpu(c.x.data(), c.T, c.H, c.W(), c.p, {}, nullptr, slots.data(), w.data(), ids.data(),
                   scratch.data());
  matmul_cpu_raw(c.x.data(), c.T, c.w.data(), DType::F32, c.p.n_experts, c.H, logits.data());
  for (int64_t t = 0; t < c.T; ++t) {
    RefRoute ref = reference_route(logits.data() + t * M, c.p);
    for (int j = 0; j < k; ++j) {
      CHECK_EQ(ids[t * k + j], ref.ids[j]);
      CHECK_EQ(slots[t * k + j], ref.ids[j]);
      CHECK_NEAR(w[t * k + j], ref.weights[j], 1e-6);
    }
  }
}

}  // namespace

TEST(router_greedy_matches_reference) {
  Case c = random_case(1, 37, 48, 64, 6);
  check_against_reference(c);
  c.p.routed_scaling_factor = 2.5f;
  check_against_reference(c);
}

TEST(router_greedy_normalised_weights_sum_to_one) {
  Case c = random_case(2, 19, 32, 16, 4);
  c.p.norm_topk_prob = true;
  check_against_reference(c);
  std::vector<float> scratch(c.T * 16), w(c.T * 4);
  std::vector<int32_t> slots(c.T * 4);
  route_tokens_cpu(c.x.data(), c.T, c.H, c.W(), c.p, {}, nullptr, slots.data(), w.data(), nullptr, scratch.data());
  for (int64_t t = 0; t < c.T; ++t) CHECK_NEAR(w[t * 4] + w[t * 4 + 1] + w[t * 4 + 2] + w[t * 4 + 3], 1.0, 1e-6);
}

TEST(router_top1_is_scaled_not_normalised) {
  // As in the reference MoEGate: normalisation applies only when top_k > 1.
  Case c = random_case(3, 5, 16, 8, 1);
  c.p.norm_topk_prob = true;
  c.p.routed_scaling_factor = 3.f;
  check_against_reference(c);
}

TEST(router_group_limited_matches_reference) {
  for (int topk_group : {1, 2, 3}) {
    Case c = random_case(10 + topk_group, 41, 40, 64, 6);
    c.p.group_limited = true;
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
  p.group_limited = true;
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

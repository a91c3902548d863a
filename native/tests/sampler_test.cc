// Sampling: greedy ties, top-k / top-p support and masses, determinism by (seed, position).
#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <vector>

#include "engine/sampler.h"
#include "test.h"

using namespace ew;

namespace {
SamplingParams params(float temp, int32_t k, float p, uint64_t seed) {
  SamplingParams s;
  s.temperature = temp;
  s.top_k = k;
  s.top_p = p;
  s.seed = seed;
  return s;
}
}  // namespace

TEST(sampler_greedy_breaks_ties_to_the_lower_id) {
  const std::vector<float> l = {0.5f, 2.f, -1.f, 2.f, 1.f};
  CHECK_EQ(sample_token(l.data(), 5, params(0, 0, 1, 7), 3), 1);
  CHECK_EQ(sample_token(l.data(), 5, params(0, 2, 0.1f, 99), 3), 1);  // greedy ignores k, p, seed
}

TEST(sampler_top_k_one_is_greedy_and_top_k_limits_the_support) {
  const std::vector<float> l = {1.f, 3.f, 2.f, 3.f, 0.f};
  for (int64_t pos = 0; pos < 50; ++pos) CHECK_EQ(sample_token(l.data(), 5, params(1, 1, 1, 5), pos), 1);
  std::map<int32_t, int> seen;
  for (int64_t pos = 0; pos < 400; ++pos) ++seen[sample_token(l.data(), 5, params(1, 2, 1, 5), pos)];
  CHECK_EQ(seen.size(), size_t{2});
  CHECK(seen.count(1) && seen.count(3));
}

TEST(sampler_frequencies_follow_softmax_over_temperature) {
  const std::vector<float> l = {0.f, std::log(2.f), std::log(5.f)};  // probs 1/8, 2/8, 5/8
  int count[3] = {0, 0, 0};
  const int n = 4000;
  for (int64_t pos = 0; pos < n; ++pos) ++count[sample_token(l.data(), 3, params(1, 0, 1, 42), pos)];
  CHECK_NEAR(count[0] / double(n), 0.125, 0.02);
  CHECK_NEAR(count[1] / double(n), 0.25, 0.025);
  CHECK_NEAR(count[2] / double(n), 0.625, 0.025);
  // Temperature 2 flattens: probs proportional to sqrt(1, 2, 5).
  int c2 = 0;
  for (int64_t pos = 0; pos < n; ++pos) c2 += sample_token(l.data(), 3, params(2, 0, 1, 43), pos) == 2;
  CHECK_NEAR(c2 / double(n), std::sqrt(5.0) / (1 + std::sqrt(2.0) + std::sqrt(5.0)), 0.025);
}

TEST(sampler_top_p_keeps_the_smallest_prefix_reaching_the_mass) {
  const std::vector<float> l = {0.f, std::log(2.f), std::log(5.f)};  // 0.125, 0.25, 0.625
  // top_p 0.6: {2} alone (0.625 >= 0.6). top_p 0.7: {2, 1}. top_p 0.875 exactly: {2, 1}.
  std::map<int32_t, int> a, b, c;
  for (int64_t pos = 0; pos < 600; ++pos) {
    ++a[sample_token(l.data(), 3, params(1, 0, 0.6f, 1), pos)];
    ++b[sample_token(l.data(), 3, params(1, 0, 0.7f, 1), pos)];
    ++c[sample_token(l.data(), 3, params(1, 0, 0.875f, 1), pos)];
  }
  CHECK(a.size() == 1 && a.count(2));
  CHECK(b.size() == 2 && b.count(1) && b.count(2));
  CHECK_NEAR(b[2] / 600.0, 0.625 / 0.875, 0.06);
  CHECK(c.size() == 2 && !c.count(0));
}

TEST(sampler_same_seed_and_position_give_the_same_draw) {
  std::vector<float> l(1000);
  for (size_t i = 0; i < l.size(); ++i) l[i] = std::sin(static_cast<float>(i));
  int differ_seed = 0, differ_pos = 0;
  for (int64_t pos = 0; pos < 100; ++pos) {
    const int32_t t = sample_token(l.data(), 1000, params(1, 50, 0.9f, 123), pos);
    CHECK_EQ(t, sample_token(l.data(), 1000, params(1, 50, 0.9f, 123), pos));
    differ_seed += t != sample_token(l.data(), 1000, params(1, 50, 0.9f, 124), pos);
    differ_pos += t != sample_token(l.data(), 1000, params(1, 50, 0.9f, 123), pos + 1);
  }
  CHECK(differ_seed > 50 && differ_pos > 50);
}

TEST(sampler_logprob_is_log_softmax_at_temperature_one) {
  const std::vector<float> l = {1.f, 2.f, 3.f};
  const double z = std::exp(1.0) + std::exp(2.0) + std::exp(3.0);
  CHECK_NEAR(token_logprob(l.data(), 3, 1), 2.0 - std::log(z), 1e-6);
}

TEST(sampler_top_p_over_a_wide_support_matches_a_full_sort) {
  // A flat distribution: top_p 0.5 keeps about half of 3000 ids, far past any first guess.
  const int64_t V = 3000;
  std::vector<float> l(V);
  for (int64_t i = 0; i < V; ++i) l[i] = 0.01f * std::sin(static_cast<float>(i) * 1.7f);
  std::vector<int32_t> order(V);
  for (int64_t i = 0; i < V; ++i) order[i] = static_cast<int32_t>(i);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); });
  double total = 0;
  for (float x : l) total += std::exp(x);
  std::vector<bool> kept(V, false);
  double mass = 0;
  for (int64_t i = 0; i < V && mass < 0.5 * total; ++i) {
    mass += std::exp(l[order[i]]);
    kept[order[i]] = true;
  }
  std::map<int32_t, int> seen;
  for (int64_t pos = 0; pos < 400; ++pos) {
    const int32_t t = sample_token(l.data(), V, params(1, 0, 0.5f, 9), pos);
    CHECK(kept[t]);
    ++seen[t];
  }
  CHECK(seen.size() > 300);
}

TEST(sampler_logit_bias_and_penalties_follow_the_openai_definition) {
  const std::vector<float> raw = {1.f, 3.f, 2.5f, 0.f};
  SeqChunk ch;
  CHECK(!adjusts_logits(ch));
  std::vector<float> scratch;
  CHECK(draw_logits(raw.data(), 4, ch, scratch) == raw.data());  // untouched: no copy
  ch.logit_bias = {{3, 5.f}, {1, -100.f}};
  ch.sampling.presence_penalty = 0.5f;
  ch.sampling.frequency_penalty = 0.25f;
  ch.output_counts = {{2, 3}, {0, 1}};
  CHECK(adjusts_logits(ch));
  const float* got = draw_logits(raw.data(), 4, ch, scratch);
  const float want[4] = {1.f - 0.25f - 0.5f, 3.f - 100.f, 2.5f - 3 * 0.25f - 0.5f, 5.f};
  for (int i = 0; i < 4; ++i) CHECK_EQ(got[i], want[i]);
  CHECK_EQ(raw[1], 3.f);  // the raw row is unchanged
  SamplingParams greedy;
  CHECK_EQ(sample_token(got, 4, greedy, 0), 3);
  // Penalties without any output yet change nothing.
  SeqChunk fresh;
  fresh.sampling.presence_penalty = 2.f;
  CHECK(!adjusts_logits(fresh));
}

TEST(sampler_top_logprobs_are_the_most_likely_in_order_with_log_softmax_values) {
  const std::vector<float> l = {0.f, 2.f, 1.f, 2.f, -1.f};
  std::vector<int32_t> ids;
  std::vector<float> lps;
  top_logprobs(l.data(), 5, 3, ids, lps);
  CHECK(ids == (std::vector<int32_t>{1, 3, 2}));  // the tie between 1 and 3 goes to the lower id
  double z = 0;
  for (float x : l) z += std::exp(x);
  for (size_t i = 0; i < ids.size(); ++i) CHECK_NEAR(lps[i], l[ids[i]] - std::log(z), 1e-6);
  CHECK_NEAR(lps[0], token_logprob(l.data(), 5, 1), 1e-7);
  top_logprobs(l.data(), 5, 20, ids, lps);  // k over the vocabulary: all of it, appended
  CHECK_EQ(ids.size(), size_t{3 + 5});
}

TEST(sampler_check_refuses_bad_extras_naming_them) {
  SeqChunk ch;
  ch.logit_bias = {{7, 1.f}};
  CHECK_THROWS_WITH(check_sampling(ch, 5, "chunk 0"), "logit_bias entry (7, 1)");
  ch.logit_bias.clear();
  ch.output_counts = {{1, 0}};
  CHECK_THROWS_WITH(check_sampling(ch, 5, "chunk 0"), "output count (1, 0)");
  ch.output_counts.clear();
  ch.sampling.top_logprobs = 21;
  CHECK_THROWS_WITH(check_sampling(ch, 5, "chunk 0"), "top_logprobs 21");
  ch.sampling.top_logprobs = 0;
  ch.sampling.frequency_penalty = std::numeric_limits<float>::infinity();
  CHECK_THROWS_WITH(check_sampling(ch, 5, "chunk 0"), "must be finite");
}

#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "util/error.h"

namespace ew {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

double sample_uniform(uint64_t seed, int64_t position) {
  const uint64_t r = splitmix64(splitmix64(seed) ^ static_cast<uint64_t>(position));
  return static_cast<double>(r >> 11) * 0x1.0p-53;
}

void check_sampling(const SeqChunk& ch, int64_t V, const std::string& where) {
  const SamplingParams& p = ch.sampling;
  if (!(p.temperature >= 0.f) || !std::isfinite(p.temperature))
    fail(where, ": temperature ", p.temperature, " must be a finite number >= 0");
  if (p.top_k < 0) fail(where, ": top_k ", p.top_k, " must be >= 0 (0: off)");
  if (!(p.top_p > 0.f && p.top_p <= 1.f)) fail(where, ": top_p ", p.top_p, " must be in (0, 1]");
  if (!std::isfinite(p.presence_penalty) || !std::isfinite(p.frequency_penalty))
    fail(where, ": presence_penalty ", p.presence_penalty, " and frequency_penalty ", p.frequency_penalty, " must be finite");
  if (p.top_logprobs < 0 || p.top_logprobs > kMaxTopLogprobs)
    fail(where, ": top_logprobs ", p.top_logprobs, " must be in [0, ", kMaxTopLogprobs, "]");
  for (const auto& [id, bias] : ch.logit_bias)
    if (id < 0 || id >= V || !std::isfinite(bias))
      fail(where, ": logit_bias entry (", id, ", ", bias, ") needs a token in [0, ", V, ") and a finite value");
  for (const auto& [id, n] : ch.output_counts)
    if (id < 0 || id >= V || n < 1) fail(where, ": output count (", id, ", ", n, ") needs a token in [0, ", V, ") and a count >= 1");
}

bool adjusts_logits(const SeqChunk& ch) {
  const bool penalties = (ch.sampling.presence_penalty != 0.f || ch.sampling.frequency_penalty != 0.f) && !ch.output_counts.empty();
  return penalties || !ch.logit_bias.empty();
}

const float* draw_logits(const float* raw, int64_t V, const SeqChunk& ch, std::vector<float>& scratch) {
  if (!adjusts_logits(ch)) return raw;
  scratch.assign(raw, raw + V);
  for (const auto& [id, bias] : ch.logit_bias) scratch[id] += bias;
  const float pres = ch.sampling.presence_penalty, freq = ch.sampling.frequency_penalty;
  for (const auto& [id, n] : ch.output_counts) scratch[id] -= static_cast<float>(n) * freq + pres;
  return scratch.data();
}

void top_logprobs(const float* logits, int64_t V, int32_t k, std::vector<int32_t>& ids, std::vector<float>& logprobs) {
  k = static_cast<int32_t>(std::min<int64_t>(k, V));
  std::vector<int32_t> order(static_cast<size_t>(V));
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
  double mx = logits[order[0]];
  double sum = 0;
  for (int64_t i = 0; i < V; ++i) sum += std::exp(logits[i] - mx);
  const double log_z = mx + std::log(sum);
  for (int32_t i = 0; i < k; ++i) {
    ids.push_back(order[i]);
    logprobs.push_back(static_cast<float>(logits[order[i]] - log_z));
  }
}

int32_t sample_token(const float* logits, int64_t V, const SamplingParams& p, int64_t position) {
  int32_t best = 0;
  for (int64_t i = 1; i < V; ++i)
    if (logits[i] > logits[best]) best = static_cast<int32_t>(i);
  if (is_greedy(p)) return best;

  const bool use_k = p.top_k > 0 && p.top_k < V, use_p = p.top_p < 1.f;
  const double inv_t = 1.0 / p.temperature, top = logits[best];
  auto weight = [&](int32_t id) { return std::exp((logits[id] - top) * inv_t); };
  std::vector<int32_t> ids(static_cast<size_t>(V));
  std::iota(ids.begin(), ids.end(), 0);
  std::vector<double> w;
  double total = 0;
  int64_t n = V;
  if (!use_k && !use_p) {  // every id stays: id order serves as well as probability order
    w.resize(static_cast<size_t>(V));
    for (int64_t i = 0; i < V; ++i) total += w[i] = weight(static_cast<int32_t>(i));
  } else {
    // Candidates in probability order (logit descending, ties to the lower id). Top-p
    // alone rarely needs more than a few hundred ids, so sort a growing prefix only.
    auto before = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
    const int64_t cap = use_k ? p.top_k : V;
    double all = 0;
    if (!use_k)
      for (int64_t i = 0; i < V; ++i) all += weight(static_cast<int32_t>(i));
    for (int64_t k = use_k ? cap : std::min<int64_t>(V, 256);; k = std::min(cap, k * 4)) {
      std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), before);
      w.resize(static_cast<size_t>(k));
      double mass = 0;
      for (int64_t i = 0; i < k; ++i) mass += w[i] = weight(ids[i]);
      total = use_k ? mass : all;
      n = k;
      if (!use_p) break;
      const double need = static_cast<double>(p.top_p) * total;
      double kept = 0;
      int64_t keep = 0;
      while (keep < k && kept < need) kept += w[keep++];
      if (kept >= need || k == cap) {
        n = std::max<int64_t>(keep, 1);
        total = kept > 0 ? kept : w[0];
        break;
      }
    }
  }
  const double u = sample_uniform(p.seed, position) * total;
  double acc = 0;
  for (int64_t i = 0; i < n; ++i) {
    acc += w[i];
    if (u < acc) return ids[i];
  }
  return ids[n - 1];
}

float token_logprob(const float* logits, int64_t V, int32_t token) {
  double mx = logits[0];
  for (int64_t i = 1; i < V; ++i) mx = std::max<double>(mx, logits[i]);
  double sum = 0;
  for (int64_t i = 0; i < V; ++i) sum += std::exp(logits[i] - mx);
  return static_cast<float>(logits[token] - mx - std::log(sum));
}

}  // namespace ew

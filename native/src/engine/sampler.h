// Next-token sampling for one sequence from its logits. Deterministic: the draw
// comes from a counter-based RNG keyed by (seed, position of the sampled token),
// so a request yields the same tokens whatever else shares the step.
#pragma once
#include <cstdint>
#include <string>

#include "engine/engine.h"

namespace ew {

uint64_t splitmix64(uint64_t x);
// Uniform in [0, 1) from (seed, position).
double sample_uniform(uint64_t seed, int64_t position);

// Throws ew::Error naming `where` unless temperature is finite and >= 0, top_k >= 0 and
// top_p in (0, 1].
void check_sampling(const SamplingParams& p, const std::string& where);

// is_greedy(p): argmax, ties to the lower id. Otherwise softmax(logits / temperature)
// restricted to the top_k most likely ids (0: all), then to the smallest prefix of those,
// sorted by probability descending (ties: lower id first), whose mass reaches top_p,
// and one draw from what is left. `position` is where the sampled token will sit.
int32_t sample_token(const float* logits, int64_t V, const SamplingParams& p, int64_t position);

// log softmax(logits)[token] of the unmodified distribution (temperature 1).
float token_logprob(const float* logits, int64_t V, int32_t token);

}  // namespace ew

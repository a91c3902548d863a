// Next-token sampling for one sequence from its logits. Deterministic: the draw
// comes from a counter-based RNG keyed by (seed, position of the sampled token),
// so a request yields the same tokens whatever else shares the step.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/engine.h"

namespace ew {

uint64_t splitmix64(uint64_t x);
// Uniform in [0, 1) from (seed, position).
double sample_uniform(uint64_t seed, int64_t position);

// Throws ew::Error naming `where` unless temperature is finite and >= 0, top_k >= 0,
// top_p in (0, 1], the penalties finite, top_logprobs in [0, kMaxTopLogprobs], and every
// logit-bias and output-count entry names a token in [0, V) (bias finite, counts >= 1).
void check_sampling(const SeqChunk& ch, int64_t V, const std::string& where);

// Whether the chunk's draw changes its logits (a bias or a penalty): then it needs them whole.
bool adjusts_logits(const SeqChunk& ch);

// The logits the draw uses: `raw`, or (when adjusts_logits) a copy in `scratch` with the
// logit bias added and the penalties over the sequence's output subtracted.
const float* draw_logits(const float* raw, int64_t V, const SeqChunk& ch, std::vector<float>& scratch);

// The k most likely tokens of the unmodified distribution (log softmax, temperature 1),
// probability order, ties to the lower id; appended to ids / logprobs.
void top_logprobs(const float* logits, int64_t V, int32_t k, std::vector<int32_t>& ids, std::vector<float>& logprobs);

// is_greedy(p): argmax, ties to the lower id. Otherwise softmax(logits / temperature)
// restricted to the top_k most likely ids (0: all), then to the smallest prefix of those,
// sorted by probability descending (ties: lower id first), whose mass reaches top_p,
// and one draw from what is left. `position` is where the sampled token will sit.
int32_t sample_token(const float* logits, int64_t V, const SamplingParams& p, int64_t position);

// log softmax(logits)[token] of the unmodified distribution (temperature 1).
float token_logprob(const float* logits, int64_t V, int32_t token);

}  // namespace ew

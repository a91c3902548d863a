// Helpers for tests that drive a whole Engine: options, prompts, step chunks.
#pragma once
#include <cstdint>
#include <vector>

#include "engine/engine.h"

namespace ewtest {

inline ew::EngineOptions engine_options(const char* device, int64_t kv_tokens, int adapter_slots, int adapters) {
  ew::EngineOptions o;
  o.device = device;
  o.n_threads = 2;
  o.kv_block_size = 4;
  o.kv_cache_tokens = kv_tokens;
  o.max_adapter_slots = adapter_slots;
  o.max_adapters = adapters;
  return o;
}

// n token ids in [2, 62) (clear of BOS/EOS), varied by salt.
inline std::vector<int32_t> prompt(int n, int salt) {
  std::vector<int32_t> p;
  for (int i = 0; i < n; ++i) p.push_back(2 + (i * 13 + salt * 7) % 60);
  return p;
}

// n tokens of sequence seq on adapter row `row`, sampled greedily after the last.
inline ew::SeqChunk chunk(int64_t seq, int32_t row, int32_t n) {
  ew::SeqChunk c;
  c.seq_id = seq;
  c.adapter = row;
  c.n_tokens = n;
  return c;
}

}  // namespace ewtest

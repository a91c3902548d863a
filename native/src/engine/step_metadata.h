// StepTokens: a validated step's tokens as the engine lays them out; StepMetadata: what
// the forward pass reads about them (engine/forward.h's StepInputs), packed into one host
// buffer: the CPU runner points the pass into it, the CUDA runner moves it to the device in
// a single copy. Sections, each 256-byte aligned: token ids, step-local sequence index, position, adapter row (int32 [T] each),
// logit rows (int32 [n_out]), block tables (int32 [n_seqs, max_blocks]: sequence s's
// first max_blocks cache blocks, zero-padded), RoPE cos and sin rows (float [T, rope/2]).
//
// A decode step (one token per sequence) rounds its context up to a power of two (at
// least min_ctx), so steps of one batch size share one shape, hence one CUDA graph.
// Pure host code: tested without a GPU.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "engine/forward.h"
#include "kernels/rope_rows.h"
#include "memory/kv_cache.h"

namespace ew {

struct StepTokens {
  std::vector<int32_t> ids;           // token ids
  std::vector<int64_t> seq;           // sequence of each token
  std::vector<int64_t> pos;           // position of each token in its sequence
  std::vector<int32_t> adapter_rows;  // reroute-table row of each token
  std::vector<int64_t> logit_rows;    // tokens whose logits are wanted, in output order
};

struct StepMetadata {
  enum Section { kIds, kSeq, kPos, kRows, kOutRows, kTables, kCos, kSin, kSections };
  int64_t T = 0, n_out = 0, n_seqs = 0;
  int64_t max_ctx = 0;     // positions the attention scratch must cover
  int64_t max_blocks = 0;  // block-table row length: ceil(max_ctx / block size)
  bool decode = false;     // one token per sequence
  size_t offset[kSections] = {};
  std::vector<uint8_t> bytes;

  template <typename T>
  const T* section(Section s) const { return reinterpret_cast<const T*>(bytes.data() + offset[s]); }
};

// Throws ew::Error for an empty step, mismatched token arrays or a sequence kv does not know.
StepMetadata pack_step_metadata(const StepTokens& st, const KvCache& kv, const RopeTable& rope,
                                int64_t min_decode_ctx = 64);
// The forward pass's view of a packed step whose bytes sit at `base` (meta.bytes itself,
// or a device copy of them).
StepInputs step_inputs(const StepMetadata& meta, const void* base);

}  // namespace ew

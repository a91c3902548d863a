#include "engine/step_metadata.h"

#include <algorithm>
#include <cstring>
#include <unordered_map>

#include "util/error.h"

namespace ew {
namespace {

constexpr size_t kAlign = 256;

size_t align_up(size_t n) { return (n + kAlign - 1) & ~(kAlign - 1); }

}  // namespace

StepMetadata pack_step_metadata(const StepTokens& st, const KvCache& kv, const RopeTable& rope,
                                int64_t min_decode_ctx) {
  const int64_t T = static_cast<int64_t>(st.ids.size());
  if (T == 0) fail("step metadata: a step needs at least one token");
  if (st.seq.size() != st.ids.size() || st.pos.size() != st.ids.size() || st.adapter_rows.size() != st.ids.size())
    fail("step metadata: token arrays differ in length (", st.ids.size(), " ids, ", st.seq.size(), " sequences, ",
         st.pos.size(), " positions, ", st.adapter_rows.size(), " adapter rows)");

  // Sequences in order of first appearance: the rows of this step's block table.
  std::unordered_map<int64_t, int32_t> local;
  std::vector<int64_t> seqs;
  std::vector<int32_t> tok_seq(static_cast<size_t>(T)), tok_pos(static_cast<size_t>(T));
  int64_t max_pos = 0;
  for (int64_t t = 0; t < T; ++t) {
    auto it = local.find(st.seq[t]);
    if (it == local.end()) {
      it = local.emplace(st.seq[t], static_cast<int32_t>(seqs.size())).first;
      seqs.push_back(st.seq[t]);
    }
    tok_seq[t] = it->second;
    tok_pos[t] = static_cast<int32_t>(st.pos[t]);
    max_pos = std::max(max_pos, st.pos[t]);
  }

  StepMetadata m;
  m.T = T;
  m.n_out = static_cast<int64_t>(st.logit_rows.size());
  m.n_seqs = static_cast<int64_t>(seqs.size());
  m.decode = m.n_seqs == T;
  m.max_ctx = max_pos + 1;
  if (m.decode) {
    int64_t b = std::max<int64_t>(min_decode_ctx, 1);
    while (b < m.max_ctx) b *= 2;
    m.max_ctx = b;
  }
  m.max_blocks = (m.max_ctx + kv.block_size() - 1) / kv.block_size();

  std::vector<float> cos_rows, sin_rows;
  rope_cos_sin(rope, st.pos.data(), T, cos_rows, sin_rows);
  const size_t bytes[StepMetadata::kSections] = {
      static_cast<size_t>(T) * 4, static_cast<size_t>(T) * 4, static_cast<size_t>(T) * 4,
      static_cast<size_t>(T) * 4, static_cast<size_t>(m.n_out) * 4,
      static_cast<size_t>(m.n_seqs * m.max_blocks) * 4, cos_rows.size() * 4, sin_rows.size() * 4};
  size_t total = 0;
  for (int s = 0; s < StepMetadata::kSections; ++s) m.offset[s] = total, total += align_up(bytes[s]);
  m.bytes.assign(total, 0);
  auto put = [&](StepMetadata::Section s, const void* src) {
    if (bytes[s]) std::memcpy(m.bytes.data() + m.offset[s], src, bytes[s]);
  };
  put(StepMetadata::kIds, st.ids.data());
  put(StepMetadata::kSeq, tok_seq.data());
  put(StepMetadata::kPos, tok_pos.data());
  put(StepMetadata::kRows, st.adapter_rows.data());
  const std::vector<int32_t> out_rows(st.logit_rows.begin(), st.logit_rows.end());
  put(StepMetadata::kOutRows, out_rows.data());
  auto* table = reinterpret_cast<int32_t*>(m.bytes.data() + m.offset[StepMetadata::kTables]);
  for (size_t s = 0; s < seqs.size(); ++s) {
    const std::vector<int32_t>& blocks = kv.block_table(seqs[s]);
    const size_t n = std::min<size_t>(blocks.size(), static_cast<size_t>(m.max_blocks));
    std::memcpy(table + s * m.max_blocks, blocks.data(), n * 4);
  }
  put(StepMetadata::kCos, cos_rows.data());
  put(StepMetadata::kSin, sin_rows.data());
  return m;
}

StepInputs step_inputs(const StepMetadata& meta, const void* base) {
  const auto* b = static_cast<const uint8_t*>(base);
  auto i32 = [&](StepMetadata::Section s) { return reinterpret_cast<const int32_t*>(b + meta.offset[s]); };
  StepInputs in;
  in.T = meta.T;
  in.n_out = meta.n_out;
  in.max_ctx = meta.max_ctx;
  in.max_blocks = meta.max_blocks;
  in.ids = i32(StepMetadata::kIds);
  in.seq = i32(StepMetadata::kSeq);
  in.pos = i32(StepMetadata::kPos);
  in.rows = i32(StepMetadata::kRows);
  in.out_rows = i32(StepMetadata::kOutRows);
  in.block_tables = i32(StepMetadata::kTables);
  in.cos = reinterpret_cast<const float*>(b + meta.offset[StepMetadata::kCos]);
  in.sin = reinterpret_cast<const float*>(b + meta.offset[StepMetadata::kSin]);
  return in;
}

}  // namespace ew

// pack_step_metadata (engine/step_metadata.h): what the CUDA forward pass uploads per
// step, checked section by section against the step and the KV cache's block tables.
#include "engine/step_metadata.h"

#include <cstring>
#include <vector>

#include "engine/config.h"
#include "engine/rope_config.h"
#include "test.h"

using namespace ew;

namespace {

ModelConfig rope_config() {
  ModelConfig c;
  c.qk_rope_head_dim = 8;
  c.qk_nope_head_dim = 8;
  c.rope_theta = 10000;
  return c;
}

void add(StepTokens& st, int64_t seq, int64_t first_pos, int n, int32_t row) {
  for (int i = 0; i < n; ++i) {
    st.ids.push_back(static_cast<int32_t>(seq * 100 + first_pos + i));
    st.seq.push_back(seq);
    st.pos.push_back(first_pos + i);
    st.adapter_rows.push_back(row);
  }
  st.logit_rows.push_back(static_cast<int64_t>(st.ids.size()) - 1);
}

template <typename T>
std::vector<T> read(const StepMetadata& m, StepMetadata::Section s, size_t n) {
  const T* p = m.section<T>(s);
  return std::vector<T>(p, p + n);
}

}  // namespace

TEST(step_metadata_mixed_step_sections) {
  KvCache kv(2, 16, 4, 64, /*host_storage=*/false);
  CHECK(kv.reserve(7, 5));
  CHECK(kv.reserve(3, 21));
  CHECK(kv.reserve(9, 12));
  StepTokens st;
  add(st, 7, 0, 5, 0);   // prefill chunk
  add(st, 3, 20, 1, 2);  // decode token
  add(st, 9, 10, 2, 1);  // later prefill chunk
  const RopeTable rope = make_rope_table(rope_config());
  const StepMetadata m = pack_step_metadata(st, kv, rope);
  CHECK_EQ(m.T, int64_t{8});
  CHECK_EQ(m.n_out, int64_t{3});
  CHECK_EQ(m.n_seqs, int64_t{3});
  CHECK(!m.decode);
  CHECK_EQ(m.max_ctx, int64_t{21});  // exact for a prefill step
  CHECK_EQ(m.max_blocks, int64_t{6});
  for (int s = 0; s + 1 < StepMetadata::kSections; ++s) {
    CHECK_EQ(m.offset[s] % 256, size_t{0});
    CHECK(m.offset[s] <= m.offset[s + 1]);
  }
  CHECK(read<int32_t>(m, StepMetadata::kIds, 8) == st.ids);
  CHECK(read<int32_t>(m, StepMetadata::kSeq, 8) == (std::vector<int32_t>{0, 0, 0, 0, 0, 1, 2, 2}));
  CHECK(read<int32_t>(m, StepMetadata::kPos, 8) == (std::vector<int32_t>{0, 1, 2, 3, 4, 20, 10, 11}));
  CHECK(read<int32_t>(m, StepMetadata::kRows, 8) == st.adapter_rows);
  CHECK(read<int32_t>(m, StepMetadata::kOutRows, 3) == (std::vector<int32_t>{4, 5, 7}));
  const std::vector<int32_t> tables = read<int32_t>(m, StepMetadata::kTables, 18);
  const int64_t order[3] = {7, 3, 9};
  for (int s = 0; s < 3; ++s) {
    const std::vector<int32_t>& b = kv.block_table(order[s]);
    for (size_t j = 0; j < 6; ++j) CHECK_EQ(tables[s * 6 + j], j < b.size() ? b[j] : 0);
  }
  std::vector<float> cs, sn;
  rope_cos_sin(rope, st.pos.data(), 8, cs, sn);
  CHECK(std::memcmp(m.section<float>(StepMetadata::kCos), cs.data(), cs.size() * 4) == 0);
  CHECK(std::memcmp(m.section<float>(StepMetadata::kSin), sn.data(), sn.size() * 4) == 0);
  CHECK(m.bytes.size() >= m.offset[StepMetadata::kSin] + sn.size() * 4);
}

TEST(step_metadata_decode_steps_share_a_bucketed_shape) {
  KvCache kv(1, 16, 4, 64, /*host_storage=*/false);
  CHECK(kv.reserve(1, 6));
  CHECK(kv.reserve(2, 71));
  CHECK(kv.reserve(5, 2));
  StepTokens a;
  add(a, 1, 5, 1, 0);
  add(a, 2, 70, 1, 0);
  add(a, 5, 1, 1, 0);
  const RopeTable rope = make_rope_table(rope_config());
  const StepMetadata m = pack_step_metadata(a, kv, rope);
  CHECK(m.decode);
  CHECK_EQ(m.max_ctx, int64_t{128});  // 71 positions, rounded up from the minimum 64
  CHECK_EQ(m.max_blocks, int64_t{32});
  const std::vector<int32_t> tables = read<int32_t>(m, StepMetadata::kTables, 3 * 32);
  const std::vector<int32_t>& b = kv.block_table(2);
  CHECK_EQ(b.size(), size_t{18});
  for (size_t j = 0; j < 32; ++j) CHECK_EQ(tables[32 + j], j < b.size() ? b[j] : 0);
  // One position further: same shape, same layout (one CUDA graph serves both).
  a.pos[1] = 71;
  const StepMetadata m2 = pack_step_metadata(a, kv, rope);
  CHECK_EQ(m2.max_ctx, m.max_ctx);
  CHECK(std::memcmp(m2.offset, m.offset, sizeof(m.offset)) == 0);
  CHECK_EQ(m2.bytes.size(), m.bytes.size());
}

TEST(step_metadata_refuses_bad_steps) {
  KvCache kv(1, 16, 4, 8, /*host_storage=*/false);
  CHECK(kv.reserve(1, 4));
  const RopeTable rope = make_rope_table(rope_config());
  StepTokens empty;
  CHECK_THROWS_WITH(pack_step_metadata(empty, kv, rope), "at least one token");
  StepTokens st;
  add(st, 1, 0, 2, 0);
  st.pos.pop_back();
  CHECK_THROWS_WITH(pack_step_metadata(st, kv, rope), "differ in length");
  StepTokens unknown;
  add(unknown, 42, 0, 1, 0);
  CHECK_THROWS_WITH(pack_step_metadata(unknown, kv, rope), "unknown sequence 42");
}

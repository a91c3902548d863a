// The CPU ops of grouped-query attention (Qwen3-MoE, Mixtral) against double-precision
// references written from HF's formulation: rotate_half RoPE (apply_rotary_pos_emb),
// kv_write of key | value entries into a block-paged cache of fp32 or bf16 elements, and gqa_attention
// (repeat_kv: query head h reads KV head h / (heads / kv_heads); causal softmax), on every
// dispatch path; a token's result is the same bits alone or in a batch.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernel_fixtures.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/rope_rows.h"
#include "test.h"

using namespace ew;
using namespace ewtest;

namespace {

// One layer's GQA cache of n_blocks blocks of `block` tokens (layers = 2, this is layer 1),
// and the block tables of two sequences whose blocks interleave.
struct PagedGqa {
  int64_t kvh, D, block, layers = 2;
  DType dtype;
  std::vector<uint8_t> bytes;
  std::vector<int32_t> tables;  // [2 sequences, 4 blocks]
  KvLayerView view;
  PagedGqa(int64_t kv_heads, int64_t head_dim, int64_t block_size, DType dt)
      : kvh(kv_heads), D(head_dim), block(block_size), dtype(dt) {
    const int64_t entry = 2 * kvh * D, n_blocks = 8;
    bytes.assign(static_cast<size_t>(n_blocks * layers * block * entry) * dtype_size(dt), 0xAB);
    tables = {6, 1, 3, 0, 2, 7, 5, 4};
    view.data = bytes.data() + static_cast<size_t>(block * entry) * dtype_size(dt);  // layer 1 of block 0
    view.dtype = dt;
    view.block_stride = layers * block * entry;
    view.block_size = static_cast<int32_t>(block);
    view.width = static_cast<int32_t>(entry);
    view.block_tables = tables.data();
    view.max_blocks = 4;
  }
  // Element i of the entry of (sequence s, position p), as fp32.
  float at(int32_t s, int64_t p, int64_t i) const {
    const int64_t e = tables[s * 4 + p / block] * view.block_stride + (p % block) * 2 * kvh * D + i;
    return load_as_f32(view.data, dtype, e);
  }
};

}  // namespace

TEST(rope_rotate_half_equals_hf_apply_rotary_pos_emb) {
  RopeTable table;
  table.dim = 16;
  for (int64_t i = 0; i < 8; ++i) table.inv_freq.push_back(1.0 / std::pow(1e6, 2.0 * i / 16));
  const int64_t positions[3] = {0, 7, 4000};
  std::vector<float> cs, sn;
  rope_cos_sin(table, positions, 3, cs, sn);
  const int64_t heads = 3, ld = heads * 16;
  const std::vector<float> x = random_floats(3 * ld, 5);
  std::vector<float> y = x;
  CpuOps().rope(y.data(), 3, heads, ld, 16, 16, cs.data(), sn.data(), RopeLayout::RotateHalf);
  for (int64_t t = 0; t < 3; ++t)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t d = 0; d < 16; ++d) {
        const float* v = &x[t * ld + h * 16];
        const double a = positions[t] * table.inv_freq[d % 8];
        const double rot = d < 8 ? -v[d + 8] : v[d - 8];  // rotate_half(x) = [-x2, x1]
        CHECK_NEAR(y[t * ld + h * 16 + d], v[d] * std::cos(a) + rot * std::sin(a), 2e-6);
      }
}

TEST(kv_write_stores_gqa_entries_fp32_or_bf16_rounded_to_nearest_even) {
  for (DType dt : {DType::F32, DType::BF16}) {
    PagedGqa c(2, 8, 4, dt);
    const int64_t entry = 2 * 2 * 8;
    const std::vector<float> kv = random_floats(3 * entry, 9, 3.f);
    const int32_t seq[3] = {0, 1, 0}, pos[3] = {5, 0, 6};
    CpuOps().kv_write(c.view, kv.data(), 3, seq, pos);
    for (int t = 0; t < 3; ++t)
      for (int64_t i = 0; i < entry; ++i) {
        const float want = dt == DType::F32 ? kv[t * entry + i] : bf16_to_f32(ew::f32_to_bf16(kv[t * entry + i]));
        CHECK_EQ(c.at(seq[t], pos[t], i), want);
      }
  }
  CHECK_EQ(ew::f32_to_bf16(1.0f + 1.f / 256), uint16_t(0x3f80));        // a tie: to even (down)
  CHECK_EQ(ew::f32_to_bf16(1.0f + 3.f / 256), uint16_t(0x3f82));        // a tie: to even (up)
  CHECK(std::isnan(bf16_to_f32(ew::f32_to_bf16(std::nanf("")))));
}

TEST(gqa_attention_matches_repeat_kv_reference_every_cache_dtype_and_path) {
  // 6 query heads over 2 KV heads (3 per group), head_dim 8; two sequences of 11 and 4
  // positions in blocks of 4; tokens at various positions of both.
  const int64_t heads = 6, kvh = 2, D = 8, entry = 2 * kvh * D;
  const int32_t lens[2] = {11, 4};
  const int32_t seq[4] = {0, 1, 0, 0}, pos[4] = {10, 3, 4, 0};
  const std::vector<float> q = random_floats(4 * heads * D, 41);
  GqaShape shape;
  shape.n_heads = heads;
  shape.kv_heads = kvh;
  shape.head_dim = D;
  shape.softmax_scale = 0.35f;
  for (DType dt : {DType::F32, DType::BF16})
    for (CpuPath path : cpu_paths()) {
      PagedGqa c(kvh, D, 4, dt);
      CpuOps ops(path);
      for (int32_t s = 0; s < 2; ++s) {
        const std::vector<float> rows = random_floats(lens[s] * entry, 50 + s);
        std::vector<int32_t> sq(lens[s], s), ps(lens[s]);
        for (int32_t p = 0; p < lens[s]; ++p) ps[p] = p;
        ops.kv_write(c.view, rows.data(), lens[s], sq.data(), ps.data());
      }
      std::vector<float> out(4 * heads * D, NAN);
      ops.gqa_attention(q.data(), 4, c.view, seq, pos, shape, 16, out.data(), nullptr);
      for (int t = 0; t < 4; ++t)
        for (int64_t h = 0; h < heads; ++h) {
          const int64_t g = h / (heads / kvh);  // repeat_kv
          std::vector<double> sc(pos[t] + 1);
          double mx = -1e300, sum = 0;
          for (int p = 0; p <= pos[t]; ++p) {
            double dot = 0;
            for (int64_t d = 0; d < D; ++d) dot += double(q[(t * heads + h) * D + d]) * c.at(seq[t], p, g * D + d);
            sc[p] = dot * 0.35;
            mx = std::max(mx, sc[p]);
          }
          for (double& v : sc) sum += v = std::exp(v - mx);
          for (int64_t d = 0; d < D; ++d) {
            double o = 0;
            for (int p = 0; p <= pos[t]; ++p) o += sc[p] / sum * c.at(seq[t], p, (kvh + g) * D + d);
            CHECK_NEAR(out[(t * heads + h) * D + d], o, 2e-6);
          }
        }
      // Token 2 (sequence 0, position 4) alone: the same bits as inside the batch.
      std::vector<float> one(heads * D);
      ops.gqa_attention(q.data() + 2 * heads * D, 1, c.view, seq + 2, pos + 2, shape, 16, one.data(), nullptr);
      CHECK(std::memcmp(one.data(), out.data() + 2 * heads * D, one.size() * 4) == 0);
    }
}

TEST(gqa_attention_refuses_inconsistent_shapes) {
  PagedGqa c(2, 8, 4, DType::F32);
  GqaShape s;
  s.n_heads = 5;  // not a multiple of 2 KV heads
  s.kv_heads = 2;
  s.head_dim = 8;
  const int32_t seq = 0, pos = 0;
  std::vector<float> q(5 * 8), out(5 * 8);
  CHECK_THROWS_WITH(CpuOps().gqa_attention(q.data(), 1, c.view, &seq, &pos, s, 4, out.data(), nullptr),
                    "5 query heads over 2 KV heads");
  s.n_heads = 4;
  const int32_t far = 9;
  CHECK_THROWS_WITH(CpuOps().gqa_attention(q.data(), 1, c.view, &seq, &far, s, 4, out.data(), nullptr),
                    "position 9 outside [0, max_ctx 4)");
}

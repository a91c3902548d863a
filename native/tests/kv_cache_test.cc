#include "memory/kv_cache.h"

#include <map>
#include <random>

#include "test.h"
#include "util/error.h"

using namespace ew;

TEST(kv_cache_reserve_is_all_or_nothing) {
  KvCache kv(2, 3, 4, 5);  // 5 blocks of 4 tokens
  CHECK(kv.reserve(7, 10));  // 3 blocks
  CHECK_EQ(kv.stats().free_blocks, 2);
  CHECK(!kv.reserve(8, 9));  // needs 3, only 2 free
  CHECK(!kv.has(8));         // a refused reserve creates nothing
  CHECK_EQ(kv.stats().free_blocks, 2);
  CHECK_EQ(kv.stats().sequences, 1);
  CHECK(!kv.reserve(7, 21));  // growing 7 to 6 blocks: refused, 7 keeps its 3
  CHECK_EQ(kv.block_table(7).size(), size_t(3));
  CHECK(kv.reserve(7, 12));  // still 3 blocks: nothing taken
  CHECK_EQ(kv.stats().free_blocks, 2);
  CHECK(kv.reserve(7, 20));  // exactly fills the pool
  CHECK_EQ(kv.stats().free_blocks, 0);
  CHECK(kv.reserve(9, 0));  // an empty sequence needs no block
  CHECK(kv.has(9));
  CHECK_EQ(kv.length(9), int64_t(0));
  CHECK_EQ(kv.blocks_for(0), 0);
  CHECK_EQ(kv.blocks_for(4), 1);
  CHECK_EQ(kv.blocks_for(5), 2);
  CHECK_THROWS_WITH(kv.reserve(1, -1), "negative length");
}

TEST(kv_cache_free_returns_blocks_at_once) {
  KvCache kv(1, 8, 2, 6);
  CHECK(kv.reserve(1, 6));
  CHECK(kv.reserve(2, 6));
  CHECK(!kv.reserve(3, 2));
  kv.free(1);
  CHECK(!kv.has(1));
  CHECK_EQ(kv.stats().free_blocks, 3);
  CHECK(kv.reserve(3, 6));
  kv.free(42);  // unknown ids are ignored
  kv.free(2);
  kv.free(3);
  const KvStats s = kv.stats();
  CHECK_EQ(s.free_blocks, 6);
  CHECK_EQ(s.total_blocks, 6);
  CHECK_EQ(s.sequences, 0);
  CHECK_EQ(s.block_size, 2);
}

TEST(kv_cache_length_and_entry_bounds) {
  KvCache kv(3, 4, 4, 4);
  CHECK(kv.reserve(5, 6));  // 2 blocks: capacity 8
  CHECK_EQ(kv.length(5), int64_t(0));
  kv.set_length(5, 6);
  CHECK_EQ(kv.length(5), int64_t(6));
  kv.set_length(5, 8);
  CHECK_THROWS_WITH(kv.set_length(5, 9), "length 9 outside its reserved capacity [0, 8]");
  CHECK_THROWS_WITH(kv.set_length(5, -1), "outside its reserved capacity");
  CHECK_THROWS_WITH(kv.length(6), "unknown sequence 6");
  CHECK_THROWS_WITH(kv.set_length(6, 0), "unknown sequence 6");
  CHECK_THROWS_WITH(kv.entry(0, 6, 0), "unknown sequence 6");
  CHECK_THROWS_WITH(kv.entry(0, 5, 8), "position 8 outside its reserved capacity [0, 8)");
  CHECK_THROWS_WITH(kv.entry(0, 5, -1), "position -1");
  CHECK_THROWS_WITH(kv.entry(3, 5, 0), "layer 3 out of range");
  static_cast<float*>(kv.entry(2, 5, 7))[3] = 1.f;  // the last float of the reserved capacity is writable
  CHECK_THROWS_WITH(KvCache(0, 4, 4, 4), "invalid geometry");
}

TEST(kv_cache_many_sequences_never_alias) {
  // Sequences of random lengths grow, shrink away and come back; every (layer, seq, pos)
  // entry is stamped with a unique value and all of them must survive everything else.
  const int L = 3, B = 4;
  const int64_t W = 5;
  KvCache kv(L, W, B, 64);
  std::mt19937 rng(99);
  std::map<int64_t, int64_t> lens;  // live sequences and their lengths
  auto stamp = [](int l, int64_t s, int64_t p, int64_t k) {
    return static_cast<float>(((s * 1000 + p) * 8 + l) * 8 + k);  // exact in float
  };
  for (int round = 0; round < 200; ++round) {
    const int64_t seq = static_cast<int64_t>(rng() % 24);
    if (lens.count(seq) && rng() % 4 == 0) {
      kv.free(seq);
      lens.erase(seq);
    } else {
      const int64_t old = lens.count(seq) ? lens[seq] : 0;
      const int64_t len = old + 1 + static_cast<int64_t>(rng() % 9);
      if (!kv.reserve(seq, len)) continue;
      for (int64_t p = old; p < len; ++p)
        for (int l = 0; l < L; ++l)
          for (int64_t k = 0; k < W; ++k) static_cast<float*>(kv.entry(l, seq, p))[k] = stamp(l, seq, p, k);
      kv.set_length(seq, len);
      lens[seq] = len;
    }
    int used = 0;
    for (const auto& [s, len] : lens) {
      CHECK_EQ(kv.length(s), len);
      used += kv.blocks_for(len);
      const std::vector<int32_t>& table = kv.block_table(s);
      CHECK_EQ(static_cast<int>(table.size()), kv.blocks_for(len));
      for (int64_t p = 0; p < len; ++p)
        for (int l = 0; l < L; ++l) {
          const float* e = static_cast<const float*>(kv.entry(l, s, p));
          CHECK(e == static_cast<const float*>(kv.block_layer(table[p / B], l)) + (p % B) * W);
          for (int64_t k = 0; k < W; ++k) CHECK_EQ(e[k], stamp(l, s, p, k));
        }
    }
    CHECK_EQ(kv.stats().free_blocks, 64 - used);
    CHECK_EQ(kv.stats().sequences, static_cast<int>(lens.size()));
  }
}

TEST(kv_cache_trim_returns_blocks_past_the_length) {
  KvCache kv(1, 4, 4, 6);
  CHECK(kv.reserve(1, 5));  // 2 blocks
  kv.set_length(1, 5);
  const std::vector<int32_t> before = kv.block_table(1);
  CHECK(kv.reserve(1, 17));  // grows to 5 blocks
  CHECK_EQ(kv.stats().free_blocks, 1);
  kv.trim(1);  // back to what length 5 needs, the same blocks as before
  CHECK(kv.block_table(1) == before);
  CHECK_EQ(kv.stats().free_blocks, 4);
  CHECK_EQ(kv.length(1), int64_t(5));
  kv.trim(99);  // unknown ids are ignored
  CHECK(kv.reserve(2, 16));  // the trimmed blocks are usable again
  CHECK_EQ(kv.stats().free_blocks, 0);
}

TEST(kv_cache_bf16_entries_take_two_bytes_and_only_f32_or_bf16_exist) {
  KvCache f(2, 6, 4, 3), b(2, 6, 4, 3, /*host_storage=*/true, DType::BF16);
  CHECK_EQ(f.bytes_per_token(), size_t(2 * 6 * 4));
  CHECK_EQ(b.bytes_per_token(), size_t(2 * 6 * 2));
  CHECK(b.dtype() == DType::BF16);
  CHECK(b.reserve(1, 9));
  const auto& t = b.block_table(1);
  CHECK(static_cast<const uint8_t*>(b.entry(1, 1, 5)) ==
        static_cast<const uint8_t*>(b.block_layer(t[1], 1)) + 1 * 6 * 2);
  CHECK(reinterpret_cast<uintptr_t>(b.block_layer(0, 0)) % 64 == 0);
  CHECK_THROWS_WITH(KvCache(1, 4, 4, 4, true, DType::F16), "element type F16");
}

TEST(kv_cache_without_host_storage_keeps_tables_only) {
  KvCache kv(2, 576, 16, 4, /*host_storage=*/false);
  CHECK(kv.reserve(3, 40));
  CHECK_EQ(kv.block_table(3).size(), size_t(3));
  CHECK_EQ(kv.total_blocks(), 4);
  CHECK_EQ(kv.n_layers(), 2);
  CHECK_THROWS_WITH(kv.entry(0, 3, 0), "device memory");
}

// ExpertPool (CPU): slot allocation, page-granular backing with shared boundary pages,
// and the data it holds. The geometry is chosen so slot sizes are not page multiples.
#include "memory/expert_pool.h"

#include <cstring>
#include <random>
#include <set>
#include <thread>

#include "memory/page_refcount.h"
#include "test.h"
#include "util/error.h"

using namespace ew;

namespace {

// H 64, I 24, BF16: 3072 bytes per matrix slot, so 4 KiB pages are shared by neighbours.
constexpr int64_t kH = 64, kI = 24;

// Backed bytes predicted independently: the pages of one matrix region touched by any
// mapped slot, times three matrices, over all layers.
size_t expected_backed(const std::vector<std::set<int>>& mapped, size_t mat) {
  const size_t page = ExpertPool::page_size();
  size_t pages = 0;
  for (const std::set<int>& slots : mapped) {
    std::set<size_t> touched;
    for (int s : slots)
      for (size_t p = s * mat / page; p <= ((s + 1) * mat - 1) / page; ++p) touched.insert(p);
    pages += touched.size();
  }
  return pages * page * kExpertMats;
}

// A BF16 matrix of the pool's shape whose contents depend on (m, salt).
TensorView pattern(std::vector<uint16_t>& buf, ExpertMat m, uint16_t salt, int64_t H = kH, int64_t I = kI) {
  buf.resize(static_cast<size_t>(H * I));
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<uint16_t>(salt * 977 + i * 31 + static_cast<int>(m));
  TensorView v;
  v.data = buf.data();
  v.dtype = DType::BF16;
  v.shape = m == ExpertMat::Down ? std::vector<int64_t>{H, I} : std::vector<int64_t>{I, H};
  return v;
}

void write_expert(ExpertPool& pool, int layer, int slot, uint16_t salt) {
  std::vector<uint16_t> buf;
  for (int m = 0; m < kExpertMats; ++m)
    pool.write_slot(layer, static_cast<ExpertMat>(m), slot,
                    pattern(buf, static_cast<ExpertMat>(m), salt, pool.hidden(), pool.width()));
}

bool holds(const ExpertPool& pool, int layer, int slot, uint16_t salt) {
  std::vector<uint16_t> buf;
  for (int m = 0; m < kExpertMats; ++m) {
    const TensorView want = pattern(buf, static_cast<ExpertMat>(m), salt, pool.hidden(), pool.width());
    if (std::memcmp(pool.slot_data(layer, static_cast<ExpertMat>(m), slot), want.data, want.nbytes()) != 0)
      return false;
  }
  return true;
}

}  // namespace

TEST(page_refcounts_merge_runs_and_share_pages) {
  PageRefCounts r(10);
  std::vector<PageRun> live;
  r.acquire({2, 3}, &live);  // pages 2..4
  r.acquire({4, 3}, &live);  // 4 shared; 5, 6 new and adjacent to 2..4
  CHECK_EQ(live.size(), size_t(1));
  CHECK_EQ(live[0].first, size_t(2));
  CHECK_EQ(live[0].count, size_t(5));
  CHECK_EQ(r.live_pages(), size_t(5));
  CHECK_EQ(r.refs(4), 2);
  std::vector<PageRun> freed;
  r.release({2, 3}, &freed);  // 4 is still held by the second run
  CHECK_EQ(freed.size(), size_t(1));
  CHECK_EQ(freed[0].first, size_t(2));
  CHECK_EQ(freed[0].count, size_t(2));
  CHECK_EQ(r.live_pages(), size_t(3));
  CHECK_THROWS_WITH(r.release({2, 1}, &freed), "page 2 released more often than acquired");
  CHECK_EQ(r.live_pages(), size_t(3));  // a refused release changes nothing
  CHECK_THROWS_WITH(r.acquire({8, 3}, &live), "outside the 10 reserved pages");
  const PageRun p = PageRefCounts::pages_of(3072, 6144, 4096);
  CHECK_EQ(p.first, size_t(0));
  CHECK_EQ(p.count, size_t(2));
}

TEST(expert_pool_geometry_and_reservation) {
  ExpertPool pool(2, 4, 10, kH, kI, DType::BF16);
  const size_t page = ExpertPool::page_size();
  CHECK_EQ(pool.capacity(), 14);
  CHECK_EQ(pool.mat_bytes(ExpertMat::Gate), size_t(3072));
  CHECK_EQ(pool.mat_bytes(ExpertMat::Down), size_t(3072));
  const ExpertPoolStats s = pool.stats();
  CHECK_EQ(s.reserved_bytes, size_t(2 * 3) * ((14 * 3072 + page - 1) / page) * page);
  CHECK_EQ(s.backed_bytes, size_t(0));
  CHECK_EQ(s.used_slots, int64_t(0));
  // Uniform stride within one matrix; each matrix its own page-aligned range.
  CHECK(pool.slot_data(1, ExpertMat::Up, 5) == pool.base(1, ExpertMat::Up) + 5 * 3072);
  CHECK_EQ(reinterpret_cast<uintptr_t>(pool.base(0, ExpertMat::Down)) % page, uintptr_t(0));
  const TensorView v = pool.slot_view(0, ExpertMat::Down, 3);
  CHECK(v.shape == (std::vector<int64_t>{kH, kI}));
  CHECK(pool.slot_view(0, ExpertMat::Gate, 3).shape == (std::vector<int64_t>{kI, kH}));
  CHECK_THROWS_WITH(ExpertPool(1, 0, 1, kH, kI, DType::F32), "invalid geometry");
  CHECK_THROWS_WITH(pool.base(2, ExpertMat::Gate), "MoE layer 2 out of range");
}

TEST(expert_pool_alloc_is_first_fit_and_reuses_freed_slots) {
  ExpertPool pool(2, 4, 8, kH, kI, DType::BF16);
  CHECK_EQ(pool.alloc_slots(0, 3), 4);
  CHECK_EQ(pool.alloc_slots(0, 2), 7);
  CHECK_EQ(pool.alloc_slots(1, 2), 4);  // layers are independent
  CHECK_EQ(pool.alloc_slots(0, 4), -1);  // only 3 left in layer 0
  CHECK_EQ(pool.alloc_slots(0, 3), 9);
  pool.map_slots(0, 4, 3);
  pool.unmap_slots(0, 4, 3);  // back to the free list
  CHECK_EQ(pool.alloc_slots(0, 4), -1);  // the hole is 3 long
  CHECK_EQ(pool.alloc_slots(0, 2), 4);
  CHECK_EQ(pool.alloc_slots(0, 1), 6);
  pool.unmap_slots(0, 7, 2);  // allocated, never mapped: released all the same
  CHECK_EQ(pool.alloc_slots(0, 2), 7);
  CHECK_THROWS_WITH(pool.alloc_slots(0, 0), "cannot allocate 0 slots");
  CHECK_THROWS_WITH(pool.alloc_slots(5, 1), "MoE layer 5 out of range");
}

static void check_shared_boundary_pages(int64_t H, int64_t I) {
  ExpertPool pool(1, 4, 12, H, I, DType::BF16);
  const size_t page = ExpertPool::page_size();
  const size_t mat = pool.mat_bytes(ExpertMat::Gate);
  CHECK(mat % page != 0);
  std::vector<std::set<int>> mapped(1);
  auto check = [&] { CHECK_EQ(pool.stats().backed_bytes, expected_backed(mapped, mat)); };

  pool.map_slots(0, 0, 4);  // base slots are the model's: no alloc needed
  for (int s = 0; s < 4; ++s) mapped[0].insert(s);
  check();
  const size_t base_backed = pool.stats().backed_bytes;

  const int a = pool.alloc_slots(0, 3);
  const int b = pool.alloc_slots(0, 2);
  CHECK_EQ(a, 4);
  CHECK_EQ(b, 7);
  pool.map_slots(0, a, 3);
  for (int s = a; s < a + 3; ++s) mapped[0].insert(s);
  check();
  const size_t with_a = pool.stats().backed_bytes;
  pool.map_slots(0, b, 2);
  for (int s = b; s < b + 2; ++s) mapped[0].insert(s);
  check();
  CHECK_EQ(pool.stats().used_slots, int64_t(9));
  CHECK_EQ(pool.stats().expert_bytes, size_t(9) * 3 * mat);
  write_expert(pool, 0, 3, 100);
  for (int s = a; s < b + 2; ++s) write_expert(pool, 0, s, static_cast<uint16_t>(s));

  // Dropping a keeps the pages it shares with base slot 3 and with b, and their data.
  pool.unmap_slots(0, a, 3);
  for (int s = a; s < a + 3; ++s) mapped[0].erase(s);
  check();
  CHECK(holds(pool, 0, 3, 100));
  CHECK(holds(pool, 0, b, static_cast<uint16_t>(b)));
  CHECK(holds(pool, 0, b + 1, static_cast<uint16_t>(b + 1)));

  pool.unmap_slots(0, b, 2);
  mapped[0].clear();
  for (int s = 0; s < 4; ++s) mapped[0].insert(s);
  check();
  CHECK_EQ(pool.stats().backed_bytes, base_backed);  // exactly back to where it was
  CHECK_EQ(pool.stats().used_slots, int64_t(4));

  // Map a again: the pages it alone used were dropped, so it reads as zeros.
  CHECK_EQ(pool.alloc_slots(0, 3), a);
  pool.map_slots(0, a, 3);
  CHECK_EQ(pool.stats().backed_bytes, with_a);
  const uint8_t* p = static_cast<const uint8_t*>(pool.slot_data(0, ExpertMat::Up, a + 2));
  bool zero = true;
  for (size_t i = 0; i < mat; ++i) zero = zero && p[i] == 0;
  CHECK(zero);
}

TEST(expert_pool_map_unmap_refcounts_shared_boundary_pages) { check_shared_boundary_pages(kH, kI); }

// Slots of 750 KiB (187.5 pages) in ranges of several MiB: the kernel may back them with transparent
// huge pages, and releasing part of one must still keep the neighbours' data.
TEST(expert_pool_shared_boundary_pages_with_large_slots) { check_shared_boundary_pages(1000, 384); }

TEST(expert_pool_random_map_unmap_matches_page_model) {
  // Random alloc/map/unmap over two layers; after every step the backed bytes must equal
  // the pages touched by mapped slots, and every mapped slot must still hold its data.
  ExpertPool pool(2, 3, 20, kH, kI, DType::BF16);
  const size_t mat = pool.mat_bytes(ExpertMat::Gate);
  std::vector<std::set<int>> mapped(2);
  struct Block {
    int layer, first, count;
  };
  std::vector<Block> live;
  std::mt19937 rng(1234);
  for (int step = 0; step < 300; ++step) {
    if (live.empty() || rng() % 3 != 0) {
      const int layer = static_cast<int>(rng() % 2), count = 1 + static_cast<int>(rng() % 4);
      const int first = pool.alloc_slots(layer, count);
      if (first < 0) continue;
      pool.map_slots(layer, first, count);
      for (int s = first; s < first + count; ++s) {
        mapped[layer].insert(s);
        write_expert(pool, layer, s, static_cast<uint16_t>(layer * 100 + s));
      }
      live.push_back({layer, first, count});
    } else {
      const size_t k = rng() % live.size();
      const Block blk = live[k];
      live.erase(live.begin() + static_cast<long>(k));
      pool.unmap_slots(blk.layer, blk.first, blk.count);
      for (int s = blk.first; s < blk.first + blk.count; ++s) mapped[blk.layer].erase(s);
    }
    CHECK_EQ(pool.stats().backed_bytes, expected_backed(mapped, mat));
    for (int l = 0; l < 2; ++l)
      for (int s : mapped[l]) CHECK(holds(pool, l, s, static_cast<uint16_t>(l * 100 + s)));
  }
  for (const Block& blk : live) pool.unmap_slots(blk.layer, blk.first, blk.count);
  CHECK_EQ(pool.stats().backed_bytes, size_t(0));
  CHECK_EQ(pool.stats().used_slots, int64_t(0));
}

TEST(expert_pool_refuses_misuse) {
  ExpertPool pool(1, 2, 4, kH, kI, DType::BF16);
  std::vector<uint16_t> buf;
  CHECK_THROWS_WITH(pool.map_slots(0, 3, 1), "slot 3 of layer 0 is not allocated (alloc_slots first)");
  CHECK_THROWS_WITH(pool.map_slots(0, 5, 2), "slots [5, 7) of layer 0 outside [0, 6)");
  CHECK_THROWS_WITH(pool.map_slots(1, 0, 1), "MoE layer 1 out of range");
  CHECK_THROWS_WITH(pool.unmap_slots(0, 2, 1), "slot 2 of layer 0 is not allocated");
  CHECK_THROWS_WITH(pool.write_slot(0, ExpertMat::Gate, 0, pattern(buf, ExpertMat::Gate, 1)),
                    "slot 0 of MoE layer 0 is not mapped");
  pool.map_slots(0, 0, 2);
  CHECK_THROWS_WITH(pool.map_slots(0, 1, 1), "slot 1 of layer 0 is already mapped");
  TensorView wrong = pattern(buf, ExpertMat::Gate, 1);
  CHECK_THROWS_WITH(pool.write_slot(0, ExpertMat::Down, 0, wrong), "source is BF16 [24, 64], slot holds BF16 [64, 24]");
  wrong.dtype = DType::F16;
  CHECK_THROWS_WITH(pool.write_slot(0, ExpertMat::Gate, 0, wrong), "source is F16");
  CHECK_THROWS_WITH(pool.write_slot(0, ExpertMat::Gate, 6, pattern(buf, ExpertMat::Gate, 1)), "outside [0, 6)");
  CHECK_EQ(pool.stats().used_slots, int64_t(2));
  // Base slots return to the model when unmapped, so they can be mapped again without alloc.
  pool.unmap_slots(0, 0, 2);
  pool.map_slots(0, 0, 2);
  CHECK_EQ(pool.alloc_slots(0, 5), -1);
  CHECK_EQ(pool.alloc_slots(0, 4), 2);
}

TEST(expert_pool_concurrent_registration_on_two_threads) {
  // Each thread maps and unmaps blocks in its own layer; pages are per layer, the
  // bookkeeping is shared, so the final state must be exactly empty.
  ExpertPool pool(2, 2, 16, kH, kI, DType::BF16);
  std::string errors[2];
  auto worker = [&pool, &errors](int layer) {
    try {
      for (int i = 0; i < 200; ++i) {
        const int n = 1 + i % 5;
        const int first = pool.alloc_slots(layer, n);
        if (first < 0) throw Error("alloc failed");
        pool.map_slots(layer, first, n);
        write_expert(pool, layer, first, static_cast<uint16_t>(i));
        if (!holds(pool, layer, first, static_cast<uint16_t>(i))) throw Error("data lost");
        pool.unmap_slots(layer, first, n);
      }
    } catch (const std::exception& e) {
      errors[layer] = e.what();
    }
  };
  std::thread t0(worker, 0), t1(worker, 1);
  t0.join();
  t1.join();
  CHECK_EQ(errors[0], std::string());
  CHECK_EQ(errors[1], std::string());
  CHECK_EQ(pool.stats().backed_bytes, size_t(0));
  CHECK_EQ(pool.alloc_slots(0, 16), 2);
  CHECK_EQ(pool.alloc_slots(1, 16), 2);
}

// The scratch arena (memory/arena.h): alignment, rewind reuse, spill into a second chunk
// within a step, one chunk again after reset, and no allocation in steady state.
#include <cstdint>
#include <cstdlib>
#include <memory>

#include "memory/arena.h"
#include "test.h"

using namespace ew;

namespace {

// Host memory that counts the arena's allocations.
struct CountingMemory final : ArenaMemory {
  int* allocs;
  explicit CountingMemory(int* a) : allocs(a) {}
  void* allocate(size_t bytes) override {
    ++*allocs;
    return std::aligned_alloc(256, (bytes + 255) / 256 * 256);
  }
  void release(void* p) override { std::free(p); }
};

}  // namespace

TEST(arena_aligns_rewinds_and_reuses) {
  int allocs = 0;
  Arena a(std::make_unique<CountingMemory>(&allocs), 4096);
  auto* p = static_cast<char*>(a.take(10));
  CHECK_EQ(reinterpret_cast<uintptr_t>(p) % 256, uintptr_t{0});
  const Arena::Mark m = a.mark();
  char* q = static_cast<char*>(a.take(300));
  CHECK_EQ(q - p, std::ptrdiff_t{256});  // 10 bytes take one 256-byte unit
  a.rewind(m);
  CHECK(a.take(300) == q);  // what was given back is handed out again
  CHECK_EQ(allocs, 1);
  CHECK_EQ(a.chunks(), size_t{1});
}

TEST(arena_spills_within_a_step_and_consolidates_at_reset) {
  int allocs = 0;
  Arena a(std::make_unique<CountingMemory>(&allocs), 4096);
  a.take(3000);
  const uint64_t g1 = a.generation();
  void* big = a.take(10000);  // does not fit the first chunk: a second one, the first stays
  CHECK(big != nullptr);
  CHECK_EQ(a.chunks(), size_t{2});
  CHECK(a.generation() > g1);
  a.reset();  // one chunk that holds both (plus headroom): addresses changed
  CHECK_EQ(a.chunks(), size_t{1});
  CHECK(a.capacity() >= 4096 + 10240);
  const uint64_t g2 = a.generation(), allocs2 = allocs;
  for (int step = 0; step < 5; ++step) {  // the same step again: no allocation, same generation
    a.take(3000);
    a.take(10000);
    a.reset();
  }
  CHECK_EQ(a.generation(), g2);
  CHECK_EQ(static_cast<uint64_t>(allocs), allocs2);
}

TEST(arena_rewound_layers_need_one_layer_of_scratch) {
  // Ten "layers" of 1 MiB each, rewound after each: the arena never holds more than one.
  int allocs = 0;
  Arena a(std::make_unique<CountingMemory>(&allocs), 64 << 10);
  a.take(1000);  // the step's residual
  for (int layer = 0; layer < 10; ++layer) {
    const Arena::Mark m = a.mark();
    a.take(size_t{1} << 20);
    a.rewind(m);
  }
  a.reset();
  CHECK(a.capacity() < (size_t{3} << 20));
}

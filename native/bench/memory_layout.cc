// Memory of serving N ESFT adapters at DeepSeek-V2-Lite geometry, three ways:
//  - padded: every adapter padded to E_max slots per layer, [M + N*E_max] experts per layer;
//  - ours: the same range reserved as address space, backed only over the slots that hold
//    an expert, boundary pages shared by reference count (the ExpertPool's bookkeeping,
//    driven here without committing memory);
//  - N merged models: separate copies of the model with each adapter's experts merged in.
// The four published ESFT selections are cycled (intent, law, summary, translation).
// A small real pool then checks that ExpertPool::stats() equals the simulation.
//
// usage: ew_bench_memory_layout [out.md] [expert_configs_dir]
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "engine/adapter.h"
#include "memory/expert_pool.h"
#include "memory/page_refcount.h"
#include "util/error.h"

using namespace ew;

namespace {

constexpr int kLayers = 27, kFirstMoe = 1, kMoeLayers = 26, kExperts = 64;
constexpr int64_t kH = 2048, kI = 1408, kVocab = 102400;
constexpr size_t kBf16 = 2;
const char* const kTasks[4] = {"intent", "law", "summary", "translation"};

// counts[a][l]: experts adapter a tunes in MoE layer l.
using Counts = std::vector<std::vector<int>>;

Counts load_selections(const std::string& dir) {
  Counts out;
  for (const char* task : kTasks) {
    const std::string path = dir + "/" + task + ".json";
    std::ifstream in(path);
    if (!in) fail("cannot read ", path);
    std::ostringstream os;
    os << in.rdbuf();
    const ExpertSelection sel = parse_expert_selection(os.str(), path);
    std::vector<int> c(kMoeLayers, 0);
    for (const auto& [layer, ids] : sel.layers) {
      if (layer < kFirstMoe || layer >= kLayers) fail(path, ": layer ", layer, " is not a V2-Lite MoE layer");
      c[layer - kFirstMoe] = static_cast<int>(ids.size());
    }
    out.push_back(c);
  }
  return out;
}

// Backed bytes of one layer's three matrices after mapping the base range and then each
// adapter's block in order (first fit on an empty pool places them back to back), with
// the page reference counts the pool keeps.
size_t simulate_layer_backed(int n_base, const std::vector<int>& blocks, int capacity, size_t stride, size_t page) {
  size_t backed = 0;
  const size_t n_pages = (static_cast<size_t>(capacity) * stride + page - 1) / page;
  for (int m = 0; m < kExpertMats; ++m) {
    PageRefCounts pages(n_pages);
    std::vector<PageRun> fresh;
    auto map = [&](int first, int count) {  // as ExpertPool::map_slots: one acquire per slot
      for (int s = first; s < first + count; ++s)
        pages.acquire(PageRefCounts::pages_of(s * stride, (s + 1) * stride, page), &fresh);
    };
    map(0, n_base);
    int next = n_base;
    for (int count : blocks) {
      if (count == 0) continue;
      map(next, count);
      next += count;
    }
    backed += pages.live_pages() * page;
  }
  return backed;
}

struct Row {
  int n;
  int e_max;
  double padded, reserved, backed, used, adapter_real, merged_routed, merged_whole, ours_whole;
};

double gib(double b) { return b / (1024.0 * 1024 * 1024); }

// Bytes of the whole V2-Lite checkpoint in bf16 (config.json shapes; 15.7B parameters).
double whole_model_bytes() {
  const int64_t heads = 16, nope = 128, rope = 64, v = 128, kv_rank = 512, dense_I = 10944;
  const int64_t attn = heads * (nope + rope) * kH          // q_proj
                       + (kv_rank + rope) * kH + kv_rank   // kv_a_proj_with_mqa, kv_a_layernorm
                       + heads * (nope + v) * kv_rank      // kv_b_proj
                       + kH * heads * v                    // o_proj
                       + 2 * kH;                           // the two layer norms
  const int64_t dense_mlp = 3 * dense_I * kH;
  const int64_t moe = kExperts * 3 * kI * kH + 3 * (2 * kI) * kH + kExperts * kH;  // routed, shared, router
  const int64_t params = 2 * kVocab * kH + kH + kLayers * attn + dense_mlp + kMoeLayers * moe;
  return static_cast<double>(params) * kBf16;
}

std::vector<Row> simulate(const Counts& sel, size_t page) {
  const size_t stride = static_cast<size_t>(kH * kI) * kBf16;  // one matrix of one expert
  const double expert = 3.0 * stride;
  const double whole = whole_model_bytes();
  std::vector<Row> rows;
  for (int n = 1; n <= 20; ++n) {
    Row r{n, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    for (int a = 0; a < n; ++a)
      for (int c : sel[a % 4]) r.e_max = std::max(r.e_max, c);
    const int capacity = kExperts + n * r.e_max;
    double base_backed = 0;
    for (int l = 0; l < kMoeLayers; ++l) {
      std::vector<int> blocks;
      int used = kExperts;
      for (int a = 0; a < n; ++a) {
        blocks.push_back(sel[a % 4][l]);
        used += sel[a % 4][l];
        r.adapter_real += sel[a % 4][l] * expert;
      }
      r.padded += capacity * expert;
      r.used += used * expert;
      for (int m = 0; m < kExpertMats; ++m) {
        const size_t bytes = static_cast<size_t>(capacity) * stride;
        r.reserved += static_cast<double>((bytes + page - 1) / page * page);
      }
      r.backed += static_cast<double>(simulate_layer_backed(kExperts, blocks, capacity, stride, page));
      base_backed += static_cast<double>(simulate_layer_backed(kExperts, {}, capacity, stride, page));
    }
    r.merged_routed = n * kMoeLayers * kExperts * expert;
    r.merged_whole = n * whole;
    r.ours_whole = whole + (r.backed - base_backed);
    rows.push_back(r);
  }
  return rows;
}

std::string table(const std::vector<Row>& rows, size_t page) {
  std::ostringstream os;
  char buf[512];
  os << "### Page size " << (page >= (1 << 20) ? std::to_string(page >> 20) + " MiB" : std::to_string(page >> 10) + " KiB")
     << "\n\n"
     << "| N | E_max | padded [M+N*E_max] | ours reserved | ours backed | used (base+adapters) | adapters real | "
        "F_mem padded | F_mem ours | N merged (routed experts) | N merged (whole model) | ours (whole model) |\n"
     << "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";
  for (const Row& r : rows) {
    std::snprintf(buf, sizeof buf,
                  "| %d | %d | %.2f GiB | %.2f GiB | %.3f GiB | %.3f GiB | %.3f GiB | %.3f | %.4f | %.1f GiB | %.1f GiB | "
                  "%.2f GiB |\n",
                  r.n, r.e_max, gib(r.padded), gib(r.reserved), gib(r.backed), gib(r.used), gib(r.adapter_real),
                  r.padded / r.used, r.backed / r.used, gib(r.merged_routed), gib(r.merged_whole), gib(r.ours_whole));
    os << buf;
  }
  return os.str();
}

// A real pool (3 MoE layers, small experts, host pages) mapped like the simulation:
// its stats() must equal the simulated backed bytes. Returns a report line; throws on mismatch.
std::string real_pool_check(const Counts& sel) {
  const int layers = 3, M = 8, n = 6;
  const int64_t H = 96, I = 80;  // a bf16 matrix is 15360 bytes: 3.75 host pages of 4 KiB
  int e_max = 0;
  for (int a = 0; a < n; ++a)
    for (int l = 0; l < layers; ++l) e_max = std::max(e_max, sel[a % 4][l]);
  ExpertPool pool(layers, M, n * e_max, H, I, DType::BF16);
  const size_t page = ExpertPool::page_size();
  const size_t stride = static_cast<size_t>(H * I) * kBf16;
  size_t simulated = 0;
  for (int l = 0; l < layers; ++l) {
    pool.map_slots(l, 0, M);
    std::vector<int> blocks;
    for (int a = 0; a < n; ++a) {
      const int c = sel[a % 4][l];
      blocks.push_back(c);
      if (c == 0) continue;
      const int first = pool.alloc_slots(l, c);
      if (first < 0) fail("real pool check: layer ", l, " has no room for ", c, " slots");
      pool.map_slots(l, first, c);
    }
    simulated += simulate_layer_backed(M, blocks, pool.capacity(), stride, page);
  }
  const ExpertPoolStats s = pool.stats();
  if (s.backed_bytes != simulated)
    fail("real pool check: ExpertPool backs ", s.backed_bytes, " bytes, the simulation ", simulated);
  std::ostringstream os;
  os << "Real-backed check: an ExpertPool of " << layers << " layers, " << M << " base experts, H=" << H << ", I=" << I
     << " (bf16, " << page << "-byte pages) with " << n << " adapters mapped reports backed_bytes = " << s.backed_bytes
     << ", equal to the simulation (" << simulated << "); " << s.used_slots << " slots used.\n";
  return os.str();
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string out = argc > 1 ? argv[1] : "";
    const std::string dir = argc > 2 ? argv[2] : "../shared/data/esft/expert_configs";
    const Counts sel = load_selections(dir);
    std::ostringstream md;
    md << "# Expert memory: padded vs page-mapped vs merged models\n\n"
       << "DeepSeek-V2-Lite geometry: 26 MoE layers, M = 64 routed experts, H = 2048, I = 1408, bf16; one routed "
          "expert (gate, up, down) = 16.5 MiB. N adapters cycle the four published ESFT selections (intent 124, "
          "law 153, summary 128, translation 83 experts). E_max = the most experts one resident adapter tunes in one "
          "layer.\n\n"
       << "- padded: the naive layout, [M + N*E_max] expert slots per layer, all backed.\n"
       << "- ours reserved: the same slot range as address space (costs no memory); ours backed: pages committed for "
          "the base experts plus each adapter's contiguous slot block, boundary pages shared by reference count "
          "(computed with the pool's PageRefCounts, memory/page_refcount.h).\n"
       << "- used: bytes of the experts actually stored (base + adapters); F_mem = allocated / used (the paper's "
          "fragmentation factor, 1.0 = no waste).\n"
       << "- N merged (routed experts): N full copies of the routed experts of all 26 MoE layers; N merged (whole "
          "model): N copies of the whole 15.7B checkpoint (embeddings, attention, dense and shared MLPs, routers, "
          "routed experts). ours (whole model): one base model plus the pages the adapters add.\n\n";
    for (size_t page : {size_t{2} << 20, ExpertPool::page_size()}) md << table(simulate(sel, page), page) << "\n";
    md << real_pool_check(sel);
    const std::string text = md.str();
    std::fputs(text.c_str(), stdout);
    if (!out.empty()) {
      std::ofstream f(out);
      if (!f) fail("cannot write ", out);
      f << text;
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "memory_layout: %s\n", e.what());
    return 1;
  }
}

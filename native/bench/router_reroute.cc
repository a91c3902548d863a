// ew_bench_router_reroute [OUT.md]
//
// The fused router step on the CPU (route_tokens_cpu: exact-matmul logits, then the route
// op's softmax, top-k and reroute) with and without the reroute table, DeepSeek-V2-Lite
// router shape (H=2048, M=64, k=6, bf16 router weight), random data. The two variants of
// each shape run interleaved in rounds and each reports its median over rounds, so a
// noisy machine moves both alike. Prints a markdown table (and writes it to OUT.md).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "engine/reroute_table.h"
#include "kernels/cpu/route.h"
#include "util/error.h"

using namespace ew;

namespace {

constexpr int64_t kHidden = 2048;
constexpr int kExperts = 64, kTopK = 6;

struct Case {
  int64_t T = 0;
  RouterParams p;
  std::vector<uint16_t> w;  // bf16 [M, H]
  std::vector<float> x, scratch, weights;
  std::vector<int32_t> rows, slots;
  RerouteTables tables;

  void run(bool reroute) {
    const TensorView W{w.data(), DType::BF16, {kExperts, kHidden}};
    route_tokens_cpu(x.data(), T, kHidden, W, p, reroute ? tables.view(0) : RerouteTableView{},
                     reroute ? rows.data() : nullptr, slots.data(), weights.data(), nullptr, scratch.data());
  }
};

Case make_case(int64_t T, int adapters) {
  Case c;
  c.T = T;
  c.p.n_experts = kExperts;
  c.p.top_k = kTopK;
  std::mt19937 rng(1234);
  std::normal_distribution<float> nd(0.f, 1.f);
  c.w.resize(static_cast<size_t>(kExperts) * kHidden);
  for (auto& v : c.w) {
    const float f = nd(rng) * 0.02f;
    uint32_t u;
    std::memcpy(&u, &f, 4);
    v = static_cast<uint16_t>(u >> 16);
  }
  c.x.resize(static_cast<size_t>(T) * kHidden);
  for (auto& v : c.x) v = nd(rng);
  c.scratch.resize(static_cast<size_t>(T) * kExperts);
  c.weights.resize(static_cast<size_t>(T) * kTopK);
  c.slots.resize(c.weights.size());
  // Adapter rows remap 8 experts each (a typical ESFT layer) to slots past the base.
  c.tables = RerouteTables(1, adapters + 1, kExperts);
  for (int a = 1; a <= adapters; ++a)
    for (int i = 0; i < 8; ++i) c.tables.set(0, a, (a * 7 + i * 5) % kExperts, kExperts + (a - 1) * 8 + i);
  for (int64_t t = 0; t < T; ++t) c.rows.push_back(static_cast<int32_t>(t % (adapters + 1)));
  return c;
}

// Mean microseconds per call over enough calls to take ~2 ms.
double time_us(Case& c, bool reroute) {
  using clock = std::chrono::steady_clock;
  int n = 1;
  while (true) {
    const auto t0 = clock::now();
    for (int i = 0; i < n; ++i) c.run(reroute);
    const double us = std::chrono::duration<double, std::micro>(clock::now() - t0).count();
    if (us > 2000 || n >= (1 << 16)) return us / n;
    n *= 2;
  }
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const int64_t tokens[] = {1, 2, 4, 8, 16, 32, 64, 128, 256};
    const int adapters[] = {0, 1, 4, 20};
    constexpr int kRounds = 15;
    std::string out =
        "# Router + reroute micro-benchmark (CPU)\n\n"
        "route_tokens_cpu, H=2048, M=64, k=6, bf16 router weight, fp32 logits (native/bench/router_reroute.cc).\n"
        "\"alone\": logits + softmax + top-k; \"fused\": the same pass also writing slot = table[row*M + id]\n"
        "(tokens cycle over the base row and the adapter rows). Median over 15 interleaved rounds of the mean\n"
        "latency per call, microseconds.\n\n"
        "| tokens | adapters | router+top-k (us) | fused +reroute (us) | overhead |\n"
        "| ---: | ---: | ---: | ---: | ---: |\n";
    for (int64_t T : tokens)
      for (int A : adapters) {
        Case c = make_case(T, A);
        c.run(true);  // warm-up
        std::vector<double> alone, fused;
        for (int r = 0; r < kRounds; ++r) {
          alone.push_back(time_us(c, false));
          fused.push_back(time_us(c, true));
        }
        const double a = median(alone), f = median(fused);
        char line[160];
        std::snprintf(line, sizeof line, "| %lld | %d | %.2f | %.2f | %.1f%% |\n", static_cast<long long>(T), A, a, f,
                      (f - a) / a * 100);
        out += line;
      }
    std::fputs(out.c_str(), stdout);
    if (argc > 1) std::ofstream(argv[1]) << out;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ew_bench_router_reroute: %s\n", e.what());
    return 1;
  }
  return 0;
}

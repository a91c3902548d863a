// ew_bench_reroute_cost --hidden H --experts M --topk K --tokens T --adapters A
//                       [--reps R] [--threads N] [--sample-us U]
//
// Paired timings of three ways to route T tokens of a mixed batch (bench only; the
// serving path uses the fused one):
//   alone:   route_tokens_cpu without a reroute table (router logits, softmax, top-k);
//   fused:   the same call with the reroute table: each chosen base id is remapped to
//            its adapter's expert slot inside the top-k pass (what the engine runs);
//   unfused: router + top-k writing base ids, then the remap as separate passes over
//            the chosen ids, the way framework ops do it: a fresh index tensor
//            idx = adapter_row * M + id, then a gather slots = table[idx].
// Each repetition times every variant once, in a rotated order, as the mean over
// enough back-to-back calls to last about U microseconds. Prints one JSON object:
// {"alone": [us...], "fused": [us...], "unfused": [us...]} (per-call microseconds per
// repetition), for bench/reroute.ts to pair and summarise.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "engine/reroute_table.h"
#include "kernels/cpu/route.h"
#include "util/thread_pool.h"

using namespace ew;

namespace {

double now_us() {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Setup {
  int64_t H = 1024, T = 16;
  int M = 64, k = 6, A = 4;
  RouterParams params;
  std::vector<uint16_t> w_bf16;
  TensorView w;
  std::vector<float> x, scratch, weights;
  std::vector<int32_t> rows, slots, ids;
  RerouteTables tables;

  void init() {
    params.n_experts = M;
    params.top_k = k;
    std::mt19937 rng(1234);
    // Router weights as the fixtures draw them (std 2/sqrt(H)): clear winners, as in a trained router.
    std::normal_distribution<float> wd(0.f, 2.f / std::sqrt(static_cast<float>(H))), xd(0.f, 1.f);
    w_bf16.resize(static_cast<size_t>(M) * H);
    for (auto& v : w_bf16) {
      const float f = wd(rng);
      uint32_t u;
      std::memcpy(&u, &f, 4);
      v = static_cast<uint16_t>(u >> 16);
    }
    w = TensorView{w_bf16.data(), DType::BF16, {M, H}};
    x.resize(static_cast<size_t>(T) * H);
    for (auto& v : x) v = xd(rng);
    scratch.resize(static_cast<size_t>(T) * M);
    weights.resize(static_cast<size_t>(T) * k);
    slots.resize(static_cast<size_t>(T) * k);
    ids.resize(static_cast<size_t>(T) * k);
    // Each adapter remaps 8 experts (an ESFT layer tunes 0-9) to slots past the base.
    tables = RerouteTables(1, A + 1, M);
    for (int a = 1; a <= A; ++a)
      for (int i = 0; i < 8; ++i) tables.set(0, a, (a * 7 + i * 5) % M, M + (a - 1) * 8 + i);
    rows.resize(T);
    for (int64_t t = 0; t < T; ++t) rows[t] = static_cast<int32_t>(t % (A + 1));
  }

  void alone() {
    route_tokens_cpu(x.data(), T, H, w, params, RerouteTableView{}, nullptr, slots.data(), weights.data(), nullptr,
                     scratch.data());
  }
  void fused() {
    route_tokens_cpu(x.data(), T, H, w, params, tables.view(0), rows.data(), slots.data(), weights.data(), nullptr,
                     scratch.data());
  }
  void unfused() {
    route_tokens_cpu(x.data(), T, H, w, params, RerouteTableView{}, nullptr, ids.data(), weights.data(), nullptr,
                     scratch.data());
    const RerouteTableView v = tables.view(0);
    std::vector<int64_t> idx(static_cast<size_t>(T) * k);  // a framework op allocates its output
    for (int64_t t = 0; t < T; ++t)
      for (int j = 0; j < k; ++j) idx[t * k + j] = static_cast<int64_t>(rows[t]) * M + ids[t * k + j];
    for (size_t i = 0; i < idx.size(); ++i) slots[i] = v.table[idx[i]];
  }
};

}  // namespace

int main(int argc, char** argv) {
  Setup s;
  int reps = 40, threads = 2;
  double sample_us = 2000;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    const double v = std::atof(argv[i + 1]);
    if (a == "--hidden") s.H = static_cast<int64_t>(v);
    else if (a == "--experts") s.M = static_cast<int>(v);
    else if (a == "--topk") s.k = static_cast<int>(v);
    else if (a == "--tokens") s.T = static_cast<int64_t>(v);
    else if (a == "--adapters") s.A = static_cast<int>(v);
    else if (a == "--reps") reps = static_cast<int>(v);
    else if (a == "--threads") threads = static_cast<int>(v);
    else if (a == "--sample-us") sample_us = v;
    else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  if (s.H < 1 || s.M < 1 || s.k < 1 || s.k > s.M || s.T < 1 || s.A < 0 || reps < 1) {
    std::fprintf(stderr, "bad arguments\n");
    return 2;
  }
  try {
    ThreadPool::set_global_threads(threads);
    s.init();
    // The variants must agree: the unfused remap gives the fused call's slots.
    s.fused();
    const std::vector<int32_t> want = s.slots;
    s.unfused();
    if (s.slots != want) {
      std::fprintf(stderr, "ew_bench_reroute_cost: fused and unfused reroute disagree\n");
      return 1;
    }
    void (Setup::*variants[3])() = {&Setup::alone, &Setup::fused, &Setup::unfused};
    // Calls per sample, from a warm-up of the slowest variant.
    double t0 = now_us();
    int warm = 0;
    while (now_us() - t0 < 20000 || warm < 3) {
      s.unfused();
      ++warm;
    }
    const int calls = std::max(1, static_cast<int>(sample_us / ((now_us() - t0) / warm)));
    std::vector<double> out[3];
    for (int r = 0; r < reps; ++r) {
      for (int j = 0; j < 3; ++j) {
        const int v = (r + j) % 3;
        const double start = now_us();
        for (int c = 0; c < calls; ++c) (s.*variants[v])();
        out[v].push_back((now_us() - start) / calls);
      }
    }
    const char* names[3] = {"alone", "fused", "unfused"};
    std::printf("{\"calls\":%d", calls);
    for (int v = 0; v < 3; ++v) {
      std::printf(",\"%s\":[", names[v]);
      for (size_t i = 0; i < out[v].size(); ++i) std::printf("%s%.4f", i ? "," : "", out[v][i]);
      std::printf("]");
    }
    std::printf("}\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ew_bench_reroute_cost: %s\n", e.what());
    return 1;
  }
  return 0;
}

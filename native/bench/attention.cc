// ew_bench_attention [OUT.md] [--rounds R] [--contexts 1024,4096] [--batches 1,8]
//
// The CPU MLA attention op alone (CpuOps::mla_attention, the default dispatch path) at
// DeepSeek-V2-Lite's widths (16 heads, nope 128 + rope 64, v 128, kv_rank 512: a 576-wide latent
// per token and layer), decoding one token per sequence at the end of a long context, over an
// f32 and a bf16 latent cache, interleaved (f32, bf16, f32, ...). Reports per decode token and
// layer: the time, the cache bytes read (context x 576 x element size), their rate, and the
// bf16 / f32 ratio. Writes OUT.md (default bench/results/attention.md).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_ops.h"
#include "memory/kv_cache.h"
#include "util/error.h"
#include "util/thread_pool.h"
#include "bench_util.h"

using namespace ew;
using ew::bench::now_s;
using ew::bench::parse_list;

namespace {

uint16_t bf16_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fff + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}

// B sequences of `ctx` tokens in one layer of a cache of `dt`, and one decode token each.
struct Case {
  KvCache cache;
  std::vector<int32_t> tables, seq, pos;
  KvLayerView view;
  Case(int B, int ctx, DType dt, const MlaShape& s) : cache(1, s.kv_rank + s.rope, 16, B * ((ctx + 15) / 16), true, dt) {
    const int64_t width = s.kv_rank + s.rope;
    std::mt19937 rng(7);
    std::normal_distribution<float> d(0.f, 1.f);
    std::vector<float> lat(static_cast<size_t>(ctx) * width);
    const int max_blocks = (ctx + 15) / 16;
    for (int b = 0; b < B; ++b) {
      if (!cache.reserve(b, ctx)) fail("bench: cache too small");
      const auto& t = cache.block_table(b);
      tables.insert(tables.end(), t.begin(), t.end());
      seq.push_back(b);
      pos.push_back(ctx - 1);
    }
    view.data = cache.block_layer(0, 0);
    view.block_stride = cache.block_size() * width;
    view.block_size = cache.block_size();
    view.width = static_cast<int32_t>(width);
    view.block_tables = tables.data();
    view.max_blocks = max_blocks;
    view.dtype = dt;
    CpuOps ops;
    for (int b = 0; b < B; ++b) {
      for (float& x : lat) x = d(rng);
      std::vector<int32_t> sq(ctx, b), ps(ctx);
      std::iota(ps.begin(), ps.end(), 0);
      ops.kv_write(view, lat.data(), ctx, sq.data(), ps.data());
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  std::string out = "bench/results/attention.md";
  int rounds = 7;
  std::vector<int> contexts = {1024, 4096}, batches = {1, 8};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--rounds" && i + 1 < argc) rounds = std::atoi(argv[++i]);
    else if (a == "--contexts" && i + 1 < argc) contexts = parse_list(argv[++i]);
    else if (a == "--batches" && i + 1 < argc) batches = parse_list(argv[++i]);
    else if (a[0] != '-') out = a;
    else fail("usage: ew_bench_attention [OUT.md] [--rounds R] [--contexts 1024,4096] [--batches 1,8]");
  }
  MlaShape s;
  s.n_heads = 16, s.nope = 128, s.rope = 64, s.v_dim = 128, s.kv_rank = 512;
  s.softmax_scale = 1.f / std::sqrt(192.f);
  const int64_t width = s.kv_rank + s.rope, qd = s.nope + s.rope;
  std::mt19937 rng(3);
  std::normal_distribution<float> d(0.f, 0.05f);
  std::vector<uint16_t> kvb(static_cast<size_t>(s.n_heads * (s.nope + s.v_dim) * s.kv_rank));
  for (auto& w : kvb) w = bf16_of(d(rng));
  CpuOps ops;
  const int threads = ThreadPool::global().size();

  std::ostringstream md;
  md << "# MLA attention over the latent KV cache: f32 vs bf16 entries\n\n"
     << "`ew_bench_attention` (native/bench/attention.cc): CpuOps::mla_attention alone on the `" << cpu_path_name(cpu_path())
     << "` path, " << threads << " threads, at DeepSeek-V2-Lite's attention widths (16 heads, nope 128 + rope 64, v 128, "
     << "kv_rank 512: 576 cache values per token and layer), one decode token per sequence at the end of its context; "
     << "the two caches interleaved over " << rounds << " rounds, each figure the median of the rounds (each round the "
     << "fastest of 3 calls). Per decode token and layer: the time, the cache bytes it reads, their rate.\n\n"
     << "| context | batch | cache | ms / token / layer | cache bytes / token / layer | cache GB/s | bf16 / f32 time |\n"
     << "| --- | --- | --- | --- | --- | --- | --- |\n";
  std::printf("context batch  f32 ms  bf16 ms  bytes/token/layer f32 -> bf16  ratio\n");
  for (int ctx : contexts)
    for (int B : batches) {
      Case f(B, ctx, DType::F32, s), b(B, ctx, DType::BF16, s);
      std::vector<float> q(static_cast<size_t>(B) * s.n_heads * qd), o(static_cast<size_t>(B) * s.n_heads * s.v_dim);
      for (float& x : q) x = d(rng) * 20.f;
      std::vector<uint8_t> ws(ops.mla_workspace_bytes(B, s, ctx));
      auto time = [&](Case& c) {
        double best = 1e30;
        for (int r = 0; r < 3; ++r) {
          const double t0 = now_s();
          ops.mla_attention(q.data(), B, c.view, c.seq.data(), c.pos.data(), {kvb.data(), DType::BF16}, s, ctx, o.data(),
                            ws.data());
          best = std::min(best, now_s() - t0);
        }
        return best;
      };
      time(f), time(b);  // warm-up
      std::vector<double> tf, tb, ratio;
      for (int r = 0; r < rounds; ++r) {
        tf.push_back(time(f));
        tb.push_back(time(b));
        ratio.push_back(tb.back() / tf.back());
      }
      auto median = [](std::vector<double> v) {
        std::sort(v.begin(), v.end());
        return v[v.size() / 2];
      };
      const double mf = median(tf) / B, mb = median(tb) / B, mr = median(ratio);
      const double bytes_f = static_cast<double>(ctx) * width * 4, bytes_b = static_cast<double>(ctx) * width * 2;
      std::printf("%7d %5d  %6.3f  %7.3f  %8.0f -> %8.0f  %.2f\n", ctx, B, mf * 1e3, mb * 1e3, bytes_f, bytes_b, mr);
      char row[512];
      std::snprintf(row, sizeof row, "| %d | %d | f32 | %.3f | %.0f KiB | %.1f | |\n| %d | %d | bf16 | %.3f | %.0f KiB | %.1f | **%.2f** |\n",
                    ctx, B, mf * 1e3, bytes_f / 1024, bytes_f / mf / 1e9, ctx, B, mb * 1e3, bytes_b / 1024,
                    bytes_b / mb / 1e9, mr);
      md << row;
    }
  md << "\nThe bf16 cache reads half the bytes per token and layer; the time falls by less where the arithmetic "
     << "(16 heads x 576 multiply-adds per cached token, twice: scores and values), not the bytes, is the limit.\n";
  std::ofstream f(out);
  f << md.str();
  std::printf("wrote %s\n", out.c_str());
  return 0;
}

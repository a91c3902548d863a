// ew_bench_decode MODEL_DIR [--threads N] [--prompt P] [--steps S] [--batches 1,16]
//
// Times the CPU forward pass on a model directory: a prefill of P tokens per
// sequence, then S greedy decode steps, at each batch size. For decode it reports
// the weight bytes one step must read (every non-expert weight, the distinct routed
// experts that step actually ran, lm_head; embedding rows are negligible) over the
// step time, next to the machine's measured read bandwidth (measured before and
// after the runs; the ratio uses the larger, so a busy machine does not flatter it).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "engine/config.h"
#include "engine/cpu_runner.h"
#include "engine/reroute_table.h"
#include "engine/sampler.h"
#include "engine/weights.h"
#include "kernels/cpu/cpu_kernels.h"
#include "memory/kv_cache.h"
#include "util/error.h"
#include "util/membw.h"
#include "util/thread_pool.h"
#include "bench_util.h"

using namespace ew;
using ew::bench::now_s;
using ew::bench::parse_list;

namespace {

size_t non_expert_bytes(const ModelWeights& w) {
  size_t b = w.norm.nbytes() + w.lm_head.nbytes();
  for (const LayerWeights& L : w.layers) {
    const AttentionWeights& a = L.attn;
    for (const TensorView* t : {&L.input_layernorm, &L.post_attention_layernorm, &a.q_proj, &a.q_a_proj,
                                &a.q_a_layernorm, &a.q_b_proj, &a.kv_a_proj_with_mqa, &a.kv_a_layernorm,
                                &a.kv_b_proj, &a.o_proj})
      if (t->data) b += t->nbytes();
    if (L.is_moe) {
      b += L.router.nbytes();
      if (L.has_shared) b += L.shared.gate.nbytes() + L.shared.up.nbytes() + L.shared.down.nbytes();
    } else {
      b += L.dense.gate.nbytes() + L.dense.up.nbytes() + L.dense.down.nbytes();
    }
  }
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s MODEL_DIR [--threads N] [--prompt P] [--steps S] [--batches 1,16]\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  int threads = 0, prompt = 64, steps = 16;
  std::vector<int> batches = {1, 16};
  for (int i = 2; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--prompt")) prompt = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--steps")) steps = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--batches")) batches = parse_list(argv[i + 1]);
    else {
      std::fprintf(stderr, "unknown option %s\n", argv[i]);
      return 2;
    }
  }
  try {
    if (threads > 0) ThreadPool::set_global_threads(threads);
    const double membw = measure_read_bandwidth_gbs();
    const ModelConfig cfg = load_model_config(dir);
    ModelWeights w = load_model_weights(dir, cfg, PoolOptions{});
    const size_t fixed_bytes = non_expert_bytes(w);
    const size_t expert_bytes =
        w.experts ? w.experts->mat_bytes(ExpertMat::Gate) + w.experts->mat_bytes(ExpertMat::Up) +
                        w.experts->mat_bytes(ExpertMat::Down)
                  : 0;
    const int max_b = *std::max_element(batches.begin(), batches.end());
    const int64_t tokens = static_cast<int64_t>(max_b) * (prompt + steps + 1);
    KvCache kv(static_cast<int>(cfg.num_hidden_layers), cfg.kv_cache_width(), 16,
               static_cast<int>((tokens + 15) / 16 + max_b));
    RerouteTables tables(static_cast<int>(cfg.num_moe_layers()), 1, static_cast<int>(cfg.n_routed_experts));
    CpuRunner fwd(cfg, w);
    int64_t expert_groups = 0;  // distinct (MoE layer, slot) pairs the steps ran
    fwd.set_slot_observer([&](int, const int32_t* slots, int64_t n) {
      std::vector<int32_t> v(slots, slots + n);
      std::sort(v.begin(), v.end());
      expert_groups += std::unique(v.begin(), v.end()) - v.begin();
    });
    auto run = [&](const StepTokens& st) { return fwd.run(st, {}, kv, tables).rows; };
    std::printf("model %s: %ld layers, H %ld, vocab %ld, experts %ld (top-%ld); threads %d, %s kernels\n",
                dir.c_str(), cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size, cfg.n_routed_experts,
                cfg.num_experts_per_tok, ThreadPool::global().size(),
                cpu_path_name(cpu_path()));
    std::printf("non-expert weights %.1f MB, one expert %.2f MB\n", fixed_bytes / 1e6, expert_bytes / 1e6);
    struct Row {
      int B;
      double prefill_s, step_s, bytes_per_step;
    };
    std::vector<Row> rows;

    {  // Warm-up: fault in the mmap'd weights so the first timed step does not pay for it.
      StepTokens warm;
      if (!kv.reserve(999, 8)) fail("KV cache too small");
      for (int i = 0; i < 8; ++i) {
        warm.ids.push_back(i);
        warm.seq.push_back(999);
        warm.pos.push_back(i);
        warm.adapter_rows.push_back(0);
      }
      warm.logit_rows.push_back(7);
      run(warm);
      kv.free(999);
    }

    for (int B : batches) {
      StepTokens st;
      for (int b = 0; b < B; ++b) {
        const int64_t seq = 1000 + b;
        if (!kv.reserve(seq, prompt + steps)) fail("KV cache too small");
        for (int i = 0; i < prompt; ++i) {
          st.ids.push_back(static_cast<int32_t>(splitmix64(seq * 7919 + i) % cfg.vocab_size));
          st.seq.push_back(seq);
          st.pos.push_back(i);
          st.adapter_rows.push_back(0);
        }
        st.logit_rows.push_back(static_cast<int64_t>(st.ids.size()) - 1);
      }
      double t0 = now_s();
      std::vector<float> logits = run(st);
      const double prefill_s = now_s() - t0;

      double decode_s = 0, bytes = 0;
      for (int s = 0; s < steps; ++s) {
        StepTokens d;
        for (int b = 0; b < B; ++b) {
          d.ids.push_back(sample_token(&logits[b * cfg.vocab_size], cfg.vocab_size, SamplingParams{}, 0));
          d.seq.push_back(1000 + b);
          d.pos.push_back(prompt + s);
          d.adapter_rows.push_back(0);
          d.logit_rows.push_back(b);
        }
        expert_groups = 0;
        t0 = now_s();
        logits = run(d);
        decode_s += now_s() - t0;
        bytes += static_cast<double>(fixed_bytes) + static_cast<double>(expert_groups) * expert_bytes;
      }
      for (int b = 0; b < B; ++b) kv.free(1000 + b);
      rows.push_back({B, prefill_s, decode_s / steps, bytes / steps});
    }
    const double membw_after = measure_read_bandwidth_gbs(), bw = std::max(membw, membw_after);
    std::printf("measured read bandwidth %.2f GB/s before, %.2f GB/s after the runs\n", membw, membw_after);
    for (const Row& r : rows) {
      const double gbs = r.bytes_per_step / r.step_s / 1e9;
      std::printf(
          "batch %2d: prefill %d tok in %.3f s = %.1f tok/s | decode %.2f ms/step = %.1f tok/s, "
          "%.1f MB/step, %.2f GB/s = %.0f%% of measured bandwidth\n",
          r.B, r.B * prompt, r.prefill_s, r.B * prompt / r.prefill_s, r.step_s * 1e3, r.B / r.step_s,
          r.bytes_per_step / 1e6, gbs, 100 * gbs / bw);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ew_bench_decode: %s\n", e.what());
    return 1;
  }
  return 0;
}

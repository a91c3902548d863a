// GPU benchmark on the full DeepSeek-V2-Lite shape with random weights made on the device
// (bench/cuda/random_model.h): decode step time at several batch sizes and its fraction
// of the HBM roofline, prefill tokens/s, the fused router+reroute (+ align) time per layer,
// and decode with resident ESFT adapters in a mixed batch over the base model alone.
// Steps run through CudaRunner, the engine's own runner and forward pass (metadata upload,
// every layer on one stream, decode steps replayed as CUDA graphs; the eager time is
// printed too), so these figures are the daemon's. The last line gives the runner's
// graph counters ("graphs: N captured, N replayed, N capture failures").
//
//   ew_bench_gpu_decode [--quick] [--adapters N] [--ctx C] [--prefill P] [--iters I] [--esft DIR] [--pool plain|vmm]
// --quick: batch 1 and 32 only, 512-token prefill, 5 iterations (the bounded pass of
// bench/gpu/verify.sh). Prints "no CUDA device" and exits 0 on a machine without one.
// Under EW_REQUIRE_CUDA=1 (bench/gpu/verify.sh) a missing device or CUDA build exits 1 instead.
#ifndef EW_WITH_CUDA
#include <cstdio>
#include <cstdlib>
#include <cstring>
int main() {
  std::printf("no CUDA device: this build has no CUDA backend (configure with -DEW_CUDA=ON and nvcc)\n");
  const char* req = std::getenv("EW_REQUIRE_CUDA");
  return req && std::strcmp(req, "1") == 0 ? 1 : 0;
}
#else
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "../tests/esft_selections.h"
#include "cuda/random_model.h"
#include "engine/cuda/cuda_runner.h"
#include "kernels/cuda/cuda_ops.h"
#include "util/cuda/cuda_util.h"
#include "util/error.h"

using namespace ew;
using namespace ew::cuda;

namespace {

struct Options {
  int adapters = 20, ctx = 256, prefill = 2048, iters = 20;
  bool quick = false;
  bool vmm = false;  // routed experts in the CUDA VMM expert pool instead of plain cudaMalloc
  std::string esft_dir = "../shared/data/esft/expert_configs";
};

// expert_cfg.json's "experts": {"<layer>": [ids], ...} -> per MoE layer (layer - first_dense).
AdapterExperts parse_selection(const std::string& json, int64_t first_dense, int64_t n_moe) {
  AdapterExperts out(static_cast<size_t>(n_moe));
  size_t p = json.find("\"experts\"");
  if (p == std::string::npos) fail("ESFT selection without \"experts\"");
  p = json.find('{', p);
  const size_t end = json.find('}', p);
  while (true) {
    const size_t q = json.find('"', p + 1);
    if (q == std::string::npos || q > end) break;
    const size_t q2 = json.find('"', q + 1);
    const int64_t layer = std::stoll(json.substr(q + 1, q2 - q - 1));
    const size_t lb = json.find('[', q2), rb = json.find(']', lb);
    std::stringstream ids(json.substr(lb + 1, rb - lb - 1));
    std::string tok;
    while (std::getline(ids, tok, ','))
      if (tok.find_first_of("0123456789") != std::string::npos && layer - first_dense >= 0 &&
          layer - first_dense < n_moe)
        out[layer - first_dense].push_back(std::stoi(tok));
    p = rb;
  }
  return out;
}

std::vector<AdapterExperts> load_adapters(const Options& o, const ModelConfig& cfg) {
  const char* tasks[4] = {"intent", "law", "summary", "translation"};
  std::vector<AdapterExperts> base(4);
  for (int i = 0; i < 4; ++i) {
    std::ifstream f(o.esft_dir + "/" + tasks[i] + ".json");
    std::string text;
    if (f) {
      std::stringstream ss;
      ss << f.rdbuf();
      text = ss.str();
    } else {
      text = ewtest::kEsftSelections[i].json;  // the same selections, embedded
    }
    base[i] = parse_selection(text, cfg.first_k_dense_replace, cfg.num_moe_layers());
  }
  std::vector<AdapterExperts> out;
  for (int a = 0; a < o.adapters; ++a) out.push_back(base[a % 4]);
  return out;
}

// Decode-shaped step: B sequences (ids 0..B-1) each adding the token at position ctx - 1;
// mixed: token i uses reroute row i mod rows (the base row included).
StepTokens decode_tokens(int64_t B, int64_t ctx, bool mixed, int32_t rows, int64_t vocab) {
  StepTokens st;
  for (int64_t i = 0; i < B; ++i) {
    st.ids.push_back(static_cast<int32_t>((i * 7919 + 13) % vocab));
    st.seq.push_back(i);
    st.pos.push_back(ctx - 1);
    st.adapter_rows.push_back(mixed ? static_cast<int32_t>(i % rows) : 0);
    st.logit_rows.push_back(i);
  }
  return st;
}

double time_ms(void* stream, int iters, const std::function<void()>& fn) {
  cudaEvent_t a, b;
  EW_CUDA_CHECK(cudaEventCreate(&a));
  EW_CUDA_CHECK(cudaEventCreate(&b));
  fn();  // warm-up
  auto s = static_cast<cudaStream_t>(stream);
  EW_CUDA_CHECK(cudaEventRecord(a, s));
  for (int i = 0; i < iters; ++i) fn();
  EW_CUDA_CHECK(cudaEventRecord(b, s));
  EW_CUDA_CHECK(cudaEventSynchronize(b));
  float ms = 0;
  EW_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return ms / iters;
}

// Device-to-device copy bandwidth (read + write bytes per second) over 1 GiB.
double copy_bandwidth(Stream& st) {
  const size_t n = size_t(1) << 30;
  DeviceBuffer a(n), b(n);
  a.fill_bytes(1);
  auto s = static_cast<cudaStream_t>(st.get());
  const double ms = time_ms(st.get(), 10, [&] { EW_CUDA_CHECK(cudaMemcpyAsync(b.data(), a.data(), n, cudaMemcpyDeviceToDevice, s)); });
  return 2.0 * n / (ms * 1e-3);
}

size_t bytes_of(const DeviceBuffer& b) { return b.bytes(); }

// Weight bytes a decode step reads: every dense matrix once, T embedding rows, and the
// distinct routed expert slots of each MoE layer.
double step_weight_bytes(const RandomModel& m, int64_t T, const std::vector<int>& distinct) {
  const ModelConfig& c = m.cfg;
  double b = bytes_of(m.norm) + bytes_of(m.lm_head) + double(T) * c.hidden_size * 2;
  const double expert = 3.0 * c.moe_intermediate_size * c.hidden_size * 2;
  size_t mi = 0;
  for (const auto& L : m.layers) {
    b += bytes_of(L.input_norm) + bytes_of(L.post_norm) + bytes_of(L.q_proj) + bytes_of(L.q_a) + bytes_of(L.q_a_norm) +
         bytes_of(L.q_b) + bytes_of(L.kv_a) +
         bytes_of(L.kv_a_norm) + bytes_of(L.kv_b) + bytes_of(L.o_proj) + bytes_of(L.gate_up) + bytes_of(L.down) +
         bytes_of(L.router);
    if (L.moe) b += expert * distinct.at(mi++);
  }
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--quick") {
      o.quick = true, o.prefill = 512, o.iters = 5;
      --i;
      continue;
    }
    if (i + 1 >= argc) { std::fprintf(stderr, "option %s needs a value\n", a.c_str()); return 2; }
    if (a == "--adapters") o.adapters = std::stoi(argv[i + 1]);
    else if (a == "--ctx") o.ctx = std::stoi(argv[i + 1]);
    else if (a == "--prefill") o.prefill = std::stoi(argv[i + 1]);
    else if (a == "--iters") o.iters = std::stoi(argv[i + 1]);
    else if (a == "--esft") o.esft_dir = argv[i + 1];
    else if (a == "--pool") o.vmm = std::string(argv[i + 1]) == "vmm";
    else { std::fprintf(stderr, "unknown option %s\n", a.c_str()); return 2; }
  }
  if (!device_available()) {
    std::printf("no CUDA device: nothing to benchmark\n");
    const char* req = std::getenv("EW_REQUIRE_CUDA");
    return req && std::strcmp(req, "1") == 0 ? 1 : 0;
  }
  try {
    std::printf("device: %s\n", device_description().c_str());
    double bw = 0;
    {
      Stream st;
      bw = copy_bandwidth(st);  // before the model takes the memory
    }
    std::printf("device copy bandwidth (read+write): %.0f GB/s\n", bw / 1e9);
    const ModelConfig cfg = deepseek_v2_lite_config();
    const auto adapters = load_adapters(o, cfg);
    size_t adapter_experts = 0;
    for (const auto& a : adapters)
      for (const auto& l : a) adapter_experts += l.size();
    const auto t0 = std::chrono::steady_clock::now();
    const RandomModel model = make_random_model(cfg, adapters, 1234, o.vmm);
    std::printf("model: DeepSeek-V2-Lite shape, random bf16 weights, %.2f GiB (%d adapters resident, %zu adapter experts, experts in %s), made in %.1f s\n",
                model.total_bytes / double(1 << 30), o.adapters, adapter_experts, o.vmm ? "the VMM pool" : "cudaMalloc",
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    const int64_t max_batch = 128, ctx = o.ctx, P = o.prefill;
    // Block tables: decode sequences 0..127 hold ctx positions, sequence 1000 the prefill.
    const int block = 16;
    const int64_t blocks = max_batch * ((ctx + block - 1) / block) + (P + block - 1) / block;
    KvCache kv(static_cast<int>(cfg.num_hidden_layers), cfg.kv_cache_width(), block, static_cast<int>(blocks),
               /*host_storage=*/false);
    for (int64_t i = 0; i < max_batch; ++i) kv.reserve(i, ctx);
    kv.reserve(1000, P);
    CudaRunner fwd(cfg, random_model_tensors(model), kv, model.n_adapter_rows);
    void* stream = fwd.stream();
    const std::vector<int64_t> batches = o.quick ? std::vector<int64_t>{1, 32} : std::vector<int64_t>{1, 8, 32, 128};

    auto decode = [&](int64_t B, bool mixed, bool report) {
      const StepTokens st = decode_tokens(B, ctx, mixed, model.n_adapter_rows, cfg.vocab_size);
      fwd.prepare(st, kv, model.tables);
      const std::vector<int> distinct = fwd.distinct_slots();
      {  // sanity: a broken kernel shows up as non-finite logits or an id out of range
        std::vector<uint8_t> whole(static_cast<size_t>(B), 0);
        whole[0] = 1;
        fwd.enqueue(false);
        const StepLogits out = fwd.collect(whole);
        const bool finite = std::all_of(out.rows.begin(), out.rows.end(), [](float v) { return std::isfinite(v); });
        for (int64_t i = 1; i < B; ++i)
          if (out.greedy[i] < 0 || out.greedy[i] >= cfg.vocab_size || !std::isfinite(out.greedy_logprob[i]))
            fail("decode batch ", B, ": row ", i, " argmax ", out.greedy[i], ": the step is broken");
        if (!finite) fail("decode batch ", B, ": non-finite logits: the step is broken");
      }
      const double eager = time_ms(stream, o.iters, [&] { fwd.enqueue(false); });
      fwd.enqueue(true);  // the first decode step of a shape runs eagerly, the next one is captured
      fwd.enqueue(true);
      const bool graph = fwd.graphs() > 0;
      const double ms = graph ? time_ms(stream, o.iters, [&] { fwd.enqueue(true); }) : eager;
      const double bytes = step_weight_bytes(model, B, distinct);
      double avg = 0;
      for (int d : distinct) avg += d;
      avg /= distinct.size();
      if (report)
        std::printf("decode batch %4lld %-5s: %8.3f ms/step (%s; eager %8.3f), %7.0f tok/s, %5.1f distinct slots/layer, %.2f GB read, %5.1f%% of copy bandwidth\n",
                    static_cast<long long>(B), mixed ? "mixed" : "base", ms, graph ? "graph" : "no graph", eager,
                    B / (ms * 1e-3), avg, bytes / 1e9, 100.0 * bytes / (ms * 1e-3) / bw);
      return ms;
    };
    for (int64_t B : batches) decode(B, false, true);

    // Prefill: one sequence of P tokens (positions 0..P-1) in one step, last row's logits.
    {
      StepTokens st;
      for (int64_t i = 0; i < P; ++i) {
        st.ids.push_back(static_cast<int32_t>((i * 7919 + 13) % cfg.vocab_size));
        st.seq.push_back(1000);
        st.pos.push_back(i);
        st.adapter_rows.push_back(0);
      }
      st.logit_rows.push_back(P - 1);
      fwd.prepare(st, kv, model.tables);
      const double ms = time_ms(stream, std::max(2, o.iters / 5), [&] { fwd.enqueue(false); });
      std::printf("prefill %lld tokens: %.1f ms, %.0f tokens/s\n", static_cast<long long>(P), ms, P / (ms * 1e-3));
    }

    // Router + reroute (+ align) per MoE layer, the kernels alone.
    {
      const RandomLayer& L = model.layers[1];
      const RouterParams rp = router_params(cfg);
      CudaOps ops(stream);
      const RerouteTableView host = model.tables.view(0);
      DeviceBuffer table(static_cast<size_t>(host.n_rows) * host.n_experts * 4);
      table.upload(host.table, table.bytes());
      const RerouteTableView tv{table.as<int32_t>(), host.n_rows, host.n_experts};
      const int64_t Bmax = 128;
      DeviceBuffer rlogits(Bmax * rp.n_experts * 4), rows(Bmax * 4), slots(Bmax * rp.top_k * 4),
          weights(Bmax * rp.top_k * 4);
      const int bm = 8;
      DeviceBuffer align_ws(static_cast<size_t>(3 * moe_max_padded(Bmax, rp.top_k, L.n_slots, bm) + 16) * 4);
      void* s = stream;
      for (int64_t B : batches) {
        std::vector<int32_t> r(static_cast<size_t>(B));
        for (int64_t i = 0; i < B; ++i) r[i] = static_cast<int32_t>(i % model.n_adapter_rows);
        rows.upload(r.data(), r.size() * 4);
        fill_random(rlogits.data(), DType::F32, B * rp.n_experts, 7, 3.f, 0.f, nullptr);
        EW_CUDA_CHECK(cudaDeviceSynchronize());  // the upload and fill ran on the legacy stream
        const double route = time_ms(stream, 200, [&] {
          ops.route(rlogits.as<float>(), B, rp, tv, rows.as<int32_t>(), slots.as<int32_t>(), weights.as<float>(),
                    nullptr);
        });
        int32_t* ws = align_ws.as<int32_t>();
        const int64_t padded = moe_max_padded(B, rp.top_k, L.n_slots, bm);
        const double align = time_ms(stream, 200, [&] {
          moe_align(slots.as<int32_t>(), B * rp.top_k, L.n_slots, bm, ws, ws + padded, ws + padded + padded / bm, s);
        });
        std::printf("router top-k + reroute, batch %4lld: %.2f us/layer; align (%d slots): %.2f us/layer\n",
                    static_cast<long long>(B), route * 1e3, L.n_slots, align * 1e3);
      }
    }

    // Resident adapters, mixed batch (token i uses row i mod (1 + adapters)) over base alone.
    if (o.adapters > 0)
      for (int64_t B : batches) {
        const double base = decode(B, false, false), mixed = decode(B, true, true);
        std::printf("  %d adapters, batch %lld: mixed / base step time = %.3f\n", o.adapters, static_cast<long long>(B),
                    mixed / base);
      }
    const RunnerStats rs = fwd.stats();
    std::printf("graphs: %lld captured, %lld replayed, %lld capture failures, %lld eager steps\n",
                static_cast<long long>(rs.graph_captures), static_cast<long long>(rs.graph_replays),
                static_cast<long long>(rs.capture_failures), static_cast<long long>(rs.eager_steps));
    if (rs.graph_replays == 0 || rs.capture_failures > 0) {
      std::fprintf(stderr, "gpu bench: decode steps did not replay as CUDA graphs\n");
      return 1;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gpu bench failed: %s\n(out of memory? fewer resident adapters: --adapters 8)\n", e.what());
    return 1;
  }
  return 0;
}

#endif  // EW_WITH_CUDA

// GPU benchmark on the full DeepSeek-V2-Lite shape with random weights made on the device
// (kernels/cuda/random_model.h): decode step time at several batch sizes and its fraction
// of the HBM roofline, prefill tokens/s, the fused router+reroute (+ align) time per layer,
// and decode with resident ESFT adapters in a mixed batch over the base model alone.
// The step runs every layer on the device through kernels/cuda/ops_cuda.h, captured into
// a CUDA graph (launch overhead out of the measurement; the eager time is printed too).
//
//   ew_bench_gpu_decode [--adapters N] [--ctx C] [--prefill P] [--iters I] [--esft DIR] [--pool plain|vmm]
// Prints "no CUDA device" and exits 0 on a machine without one.
#ifndef EW_WITH_CUDA
#include <cstdio>
int main() {
  std::printf("no CUDA device: this build has no CUDA backend (configure with -DEW_CUDA=ON and nvcc)\n");
  return 0;
}
#else
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "../tests/esft_selections.h"
#include "kernels/cpu/rope.h"
#include "kernels/cuda/rope_tables.h"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/cuda/random_model.h"
#include "kernels/cuda/router_cuda.h"
#include "util/error.h"

using namespace ew;
using namespace ew::cuda;

namespace {

struct Options {
  int adapters = 20, ctx = 256, prefill = 2048, iters = 20;
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

// Device buffers of one step for up to max_t tokens, and the latent cache.
struct Runner {
  const RandomModel& m;
  const ModelConfig& c;
  Stream stream;
  int64_t max_t, max_ctx, n_seqs, blocks_per_seq;
  static constexpr int kBlock = 16;
  DeviceBuffer x, xn, q, kva, attn, rlogits, slots, rweights, g, u, logits, ids, logprob;
  DeviceBuffer moe_ws, mla_ws, cache, tables, tok_seq, tok_pos, adapter_rows, cos_r, sin_r, tokens;
  int64_t layer_floats = 0;
  RopeTable rope_table;

  Runner(const RandomModel& model, int64_t max_t_, int64_t max_ctx_, int64_t decode_ctx, int64_t n_seqs_)
      : m(model), c(model.cfg), max_t(max_t_), max_ctx(max_ctx_), n_seqs(n_seqs_) {
    const int64_t H = c.hidden_size, heads = c.num_attention_heads, qd = c.q_head_dim();
    const int64_t width = c.kv_cache_width(), wmax = std::max(c.intermediate_size, c.n_shared_experts * c.moe_intermediate_size);
    const int64_t k = c.num_experts_per_tok, M = c.n_routed_experts;
    auto f = [](int64_t n) { return DeviceBuffer(static_cast<size_t>(n) * 4); };
    x = f(max_t * H), xn = f(max_t * H), q = f(max_t * heads * qd), kva = f(max_t * width);
    attn = f(max_t * heads * c.v_head_dim), rlogits = f(max_t * M), slots = f(max_t * k), rweights = f(max_t * k);
    g = f(max_t * wmax), u = f(max_t * wmax), logits = f(std::min<int64_t>(max_t, 128) * c.vocab_size);
    ids = f(max_t), logprob = f(max_t), tok_seq = f(max_t), tok_pos = f(max_t), adapter_rows = f(max_t);
    tokens = f(max_t), cos_r = f(max_t * c.qk_rope_head_dim / 2), sin_r = f(max_t * c.qk_rope_head_dim / 2);
    int32_t max_slots = 0;
    for (const auto& L : m.layers) max_slots = std::max(max_slots, L.n_slots);
    moe_ws = DeviceBuffer(moe_workspace_bytes(max_t, k, max_slots, H, c.moe_intermediate_size));
    MlaShape sh = shape();
    mla_ws = DeviceBuffer(mla_workspace_bytes(max_t, sh, max_ctx));
    // Sequences 0 .. n_seqs-2 decode at up to decode_ctx positions; the last one holds a
    // prefill of up to max_ctx. Each gets its own blocks (block table rows of max_blocks).
    const int64_t dec_blocks = (decode_ctx + kBlock - 1) / kBlock;
    blocks_per_seq = (max_ctx + kBlock - 1) / kBlock;
    const int64_t n_blocks = (n_seqs - 1) * dec_blocks + blocks_per_seq;
    layer_floats = n_blocks * kBlock * width;
    cache = DeviceBuffer(static_cast<size_t>(layer_floats * c.num_hidden_layers) * 4);
    fill_random(cache.data(), DType::F32, layer_floats * c.num_hidden_layers, 99, 1.f, 0.f, nullptr);
    std::vector<int32_t> t(static_cast<size_t>(n_seqs * blocks_per_seq), 0);
    for (int64_t q = 0; q + 1 < n_seqs; ++q)
      for (int64_t j = 0; j < dec_blocks; ++j) t[q * blocks_per_seq + j] = static_cast<int32_t>(q * dec_blocks + j);
    for (int64_t j = 0; j < blocks_per_seq; ++j)
      t[(n_seqs - 1) * blocks_per_seq + j] = static_cast<int32_t>((n_seqs - 1) * dec_blocks + j);
    tables = DeviceBuffer(t.size() * 4);
    tables.upload(t.data(), t.size() * 4);
    EW_CUDA_CHECK(cudaDeviceSynchronize());  // the fill and upload ran on the legacy stream
    rope_table = make_rope_table(c);
  }

  MlaShape shape() const {
    return MlaShape{static_cast<int32_t>(c.num_attention_heads), static_cast<int32_t>(c.qk_nope_head_dim),
                    static_cast<int32_t>(c.qk_rope_head_dim), static_cast<int32_t>(c.v_head_dim),
                    static_cast<int32_t>(c.kv_lora_rank), rope_table.softmax_scale};
  }

  // Token metadata: T tokens, token i of sequence seq[i] at pos[i], adapter row rows[i].
  void set_tokens(const std::vector<int32_t>& seq, const std::vector<int64_t>& pos, const std::vector<int32_t>& rows) {
    const int64_t T = static_cast<int64_t>(seq.size());
    std::vector<int32_t> p32(pos.begin(), pos.end()), tok(static_cast<size_t>(T));
    for (int64_t i = 0; i < T; ++i) tok[i] = static_cast<int32_t>((i * 7919 + 13) % c.vocab_size);
    std::vector<float> cs, sn;
    rope_cos_sin(rope_table, pos.data(), T, cs, sn);
    tok_seq.upload(seq.data(), T * 4);
    tok_pos.upload(p32.data(), T * 4);
    adapter_rows.upload(rows.data(), T * 4);
    tokens.upload(tok.data(), T * 4);
    cos_r.upload(cs.data(), cs.size() * 4);
    sin_r.upload(sn.data(), sn.size() * 4);
    // cudaMemcpy runs on the legacy stream, which does not order the non-blocking step stream.
    EW_CUDA_CHECK(cudaDeviceSynchronize());
  }

  // One forward step over T tokens. n_logits: how many final rows (the last n) get logits.
  // distinct: when non-null, receives per MoE layer the distinct expert slots (synchronises).
  void step(int64_t T, int64_t n_logits, int64_t ctx, std::vector<int>* distinct) {
    void* s = stream.get();
    const DType dt = m.dtype;
    const int64_t H = c.hidden_size, heads = c.num_attention_heads, qd = c.q_head_dim(), nope = c.qk_nope_head_dim;
    const int64_t R = c.kv_lora_rank, rd = c.qk_rope_head_dim, width = R + rd, k = c.num_experts_per_tok;
    const float eps = static_cast<float>(c.rms_norm_eps);
    float* X = x.as<float>();
    float* XN = xn.as<float>();
    embed(tokens.as<int32_t>(), T, m.embed.data(), dt, c.vocab_size, H, X, s);
    for (size_t l = 0; l < m.layers.size(); ++l) {
      const RandomLayer& L = m.layers[l];
      rmsnorm(X, H, L.input_norm.data(), dt, XN, H, T, H, eps, s);
      matmul(XN, T, L.q_proj.data(), dt, heads * qd, H, q.as<float>(), s);
      matmul(XN, T, L.kv_a.data(), dt, width, H, kva.as<float>(), s);
      rmsnorm(kva.as<float>(), width, L.kv_a_norm.data(), dt, kva.as<float>(), width, T, R, eps, s);
      cuda::rope(q.as<float>() + nope, T, heads, heads * qd, qd, rd, cos_r.as<float>(), sin_r.as<float>(), s);
      cuda::rope(kva.as<float>() + R, T, 1, width, rd, rd, cos_r.as<float>(), sin_r.as<float>(), s);
      LatentCacheView cv{cache.as<float>() + l * layer_floats, kBlock * width, kBlock, static_cast<int32_t>(width),
                         tables.as<int32_t>(), static_cast<int32_t>(blocks_per_seq)};
      kv_write(cv, kva.as<float>(), T, tok_seq.as<int32_t>(), tok_pos.as<int32_t>(), s);
      mla_attention(q.as<float>(), T, cv, tok_seq.as<int32_t>(), tok_pos.as<int32_t>(), L.kv_b.data(), dt, shape(),
                    ctx, attn.as<float>(), mla_ws.data(), s);
      matmul(attn.as<float>(), T, L.o_proj.data(), dt, H, heads * c.v_head_dim, X, s, /*accumulate=*/true);
      rmsnorm(X, H, L.post_norm.data(), dt, XN, H, T, H, eps, s);
      if (L.moe) {
        const int64_t M = c.n_routed_experts;
        matmul(XN, T, L.router.data(), dt, M, H, rlogits.as<float>(), s);
        RouterParams rp;
        rp.n_experts = static_cast<int32_t>(M);
        rp.top_k = static_cast<int32_t>(k);
        RerouteTableView tv{L.reroute.as<int32_t>(), m.n_adapter_rows, static_cast<int32_t>(M)};
        route_topk_reroute(rlogits.as<float>(), T, rp, tv, adapter_rows.as<int32_t>(), slots.as<int32_t>(),
                           rweights.as<float>(), nullptr, s);
        if (distinct) {
          stream.sync();
          std::vector<int32_t> sl(static_cast<size_t>(T * k));
          slots.download(sl.data(), sl.size() * 4);
          distinct->push_back(static_cast<int>(std::set<int32_t>(sl.begin(), sl.end()).size()));
        }
        MoeWeights mw{L.experts[0], L.experts[1], L.experts[2], dt, L.n_slots, H, c.moe_intermediate_size};
        moe_forward(XN, T, k, slots.as<int32_t>(), rweights.as<float>(), mw, X, /*accumulate=*/true, moe_ws.data(), s);
      }
      if (L.dense_width > 0) {
        const int64_t W = L.dense_width;
        matmul(XN, T, L.gate.data(), dt, W, H, g.as<float>(), s);
        matmul(XN, T, L.up.data(), dt, W, H, u.as<float>(), s);
        silu_mul(g.as<float>(), u.as<float>(), W, g.as<float>(), T, W, s);
        matmul(g.as<float>(), T, L.down.data(), dt, H, W, X, s, /*accumulate=*/true);
      }
    }
    float* last = X + (T - n_logits) * H;
    rmsnorm(last, H, m.norm.data(), dt, XN, H, n_logits, H, eps, s);
    matmul(XN, n_logits, m.lm_head.data(), dt, c.vocab_size, H, logits.as<float>(), s);
    argmax_rows(logits.as<float>(), n_logits, c.vocab_size, ids.as<int32_t>(), nullptr, s);
  }
};

double time_ms(Stream& st, int iters, const std::function<void()>& fn) {
  cudaEvent_t a, b;
  EW_CUDA_CHECK(cudaEventCreate(&a));
  EW_CUDA_CHECK(cudaEventCreate(&b));
  fn();  // warm-up
  auto s = static_cast<cudaStream_t>(st.get());
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
  const double ms = time_ms(st, 10, [&] { EW_CUDA_CHECK(cudaMemcpyAsync(b.data(), a.data(), n, cudaMemcpyDeviceToDevice, s)); });
  return 2.0 * n / (ms * 1e-3);
}

// A step as a CUDA graph (falls back to eager launches if capture fails).
struct GraphStep {
  cudaGraphExec_t exec = nullptr;
  GraphStep(Runner& r, const std::function<void()>& fn) {
    auto s = static_cast<cudaStream_t>(r.stream.get());
    cudaGraph_t g = nullptr;
    if (cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) != cudaSuccess) return;
    bool ok = true;
    try {
      fn();
    } catch (const std::exception& e) {
      std::printf("  (graph capture failed: %s; eager launches only)\n", e.what());
      ok = false;
    }
    if (cudaStreamEndCapture(s, &g) != cudaSuccess || !ok || cudaGraphInstantiate(&exec, g, 0) != cudaSuccess)
      exec = nullptr;
    if (g) cudaGraphDestroy(g);
    cudaGetLastError();
  }
  ~GraphStep() {
    if (exec) cudaGraphExecDestroy(exec);
  }
};

size_t bytes_of(const DeviceBuffer& b) { return b.bytes(); }

// Weight bytes a decode step reads: every dense matrix once, T embedding rows, and the
// distinct routed expert slots of each MoE layer.
double step_weight_bytes(const RandomModel& m, int64_t T, const std::vector<int>& distinct) {
  const ModelConfig& c = m.cfg;
  double b = bytes_of(m.norm) + bytes_of(m.lm_head) + double(T) * c.hidden_size * 2;
  const double expert = 3.0 * c.moe_intermediate_size * c.hidden_size * 2;
  size_t mi = 0;
  for (const auto& L : m.layers) {
    b += bytes_of(L.input_norm) + bytes_of(L.post_norm) + bytes_of(L.q_proj) + bytes_of(L.kv_a) +
         bytes_of(L.kv_a_norm) + bytes_of(L.kv_b) + bytes_of(L.o_proj) + bytes_of(L.gate) + bytes_of(L.up) +
         bytes_of(L.down) + bytes_of(L.router);
    if (L.moe) b += expert * distinct.at(mi++);
  }
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
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
    return 0;
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
    const int64_t max_batch = 128;
    Runner r(model, std::max<int64_t>(max_batch, o.prefill), std::max<int64_t>(o.ctx, o.prefill), o.ctx, max_batch + 1);

    auto decode = [&](int64_t B, bool mixed, bool report) {
      std::vector<int32_t> seq(B), rows(B);
      std::vector<int64_t> pos(B, o.ctx - 1);
      for (int64_t i = 0; i < B; ++i) seq[i] = static_cast<int32_t>(i), rows[i] = mixed ? static_cast<int32_t>(i % model.n_adapter_rows) : 0;
      r.set_tokens(seq, pos, rows);
      std::vector<int> distinct;
      r.step(B, B, o.ctx, &distinct);
      r.stream.sync();
      {  // sanity: a broken kernel shows up as non-finite logits or an id out of range
        std::vector<float> lg(static_cast<size_t>(cfg.vocab_size));
        r.logits.download(lg.data(), lg.size() * 4);
        int32_t id = -1;
        r.ids.download(&id, 4);
        const bool finite = std::all_of(lg.begin(), lg.end(), [](float v) { return std::isfinite(v); });
        if (!finite || id < 0 || id >= cfg.vocab_size)
          fail("decode batch ", B, ": logits finite ", finite, ", argmax id ", id, ": the step is broken");
      }
      const double eager = time_ms(r.stream, o.iters, [&] { r.step(B, B, o.ctx, nullptr); });
      GraphStep gs(r, [&] { r.step(B, B, o.ctx, nullptr); });
      double ms = eager;
      if (gs.exec) ms = time_ms(r.stream, o.iters, [&] { EW_CUDA_CHECK(cudaGraphLaunch(gs.exec, static_cast<cudaStream_t>(r.stream.get()))); });
      const double bytes = step_weight_bytes(model, B, distinct);
      double avg = 0;
      for (int d : distinct) avg += d;
      avg /= distinct.size();
      if (report)
        std::printf("decode batch %4lld %-5s: %8.3f ms/step (eager %8.3f), %7.0f tok/s, %5.1f distinct slots/layer, %.2f GB read, %5.1f%% of copy bandwidth\n",
                    static_cast<long long>(B), mixed ? "mixed" : "base", ms, eager, B / (ms * 1e-3), avg, bytes / 1e9,
                    100.0 * bytes / (ms * 1e-3) / bw);
      return ms;
    };
    for (int64_t B : {1, 8, 32, 128}) decode(B, false, true);

    // Prefill: one sequence of o.prefill tokens (positions 0..P-1) in one step.
    {
      const int64_t P = o.prefill;
      std::vector<int32_t> seq(P, static_cast<int32_t>(max_batch)), rows(P, 0);
      std::vector<int64_t> pos(P);
      for (int64_t i = 0; i < P; ++i) pos[i] = i;
      r.set_tokens(seq, pos, rows);
      const double ms = time_ms(r.stream, std::max(2, o.iters / 5), [&] { r.step(P, 1, P, nullptr); });
      std::printf("prefill %lld tokens: %.1f ms, %.0f tokens/s\n", static_cast<long long>(P), ms, P / (ms * 1e-3));
    }

    // Router + reroute (+ align) per MoE layer.
    {
      const RandomLayer& L = model.layers[1];
      RouterParams rp;
      rp.n_experts = static_cast<int32_t>(cfg.n_routed_experts);
      rp.top_k = static_cast<int32_t>(cfg.num_experts_per_tok);
      RerouteTableView tv{L.reroute.as<int32_t>(), model.n_adapter_rows, rp.n_experts};
      for (int64_t B : {1, 8, 32, 128}) {
        std::vector<int32_t> seq(B, 0), rows(B);
        std::vector<int64_t> pos(B, 0);
        for (int64_t i = 0; i < B; ++i) rows[i] = static_cast<int32_t>(i % model.n_adapter_rows);
        r.set_tokens(seq, pos, rows);
        fill_random(r.rlogits.data(), DType::F32, B * rp.n_experts, 7, 3.f, 0.f, r.stream.get());
        const double route = time_ms(r.stream, 200, [&] {
          route_topk_reroute(r.rlogits.as<float>(), B, rp, tv, r.adapter_rows.as<int32_t>(), r.slots.as<int32_t>(),
                             r.rweights.as<float>(), nullptr, r.stream.get());
        });
        const int bm = 8;
        int32_t* ws = r.moe_ws.as<int32_t>();
        const int64_t padded = moe_max_padded(B, rp.top_k, L.n_slots, bm);
        const double align = time_ms(r.stream, 200, [&] {
          moe_align(r.slots.as<int32_t>(), B * rp.top_k, L.n_slots, bm, ws, ws + padded, ws + padded + padded / bm,
                    r.stream.get());
        });
        std::printf("router top-k + reroute, batch %4lld: %.2f us/layer; align (%d slots): %.2f us/layer\n",
                    static_cast<long long>(B), route * 1e3, L.n_slots, align * 1e3);
      }
    }

    // Resident adapters, mixed batch (token i uses row i mod (1 + adapters)) over base alone.
    if (o.adapters > 0)
      for (int64_t B : {1, 8, 32, 128}) {
        const double base = decode(B, false, false), mixed = decode(B, true, true);
        std::printf("  %d adapters, batch %lld: mixed / base step time = %.3f\n", o.adapters, static_cast<long long>(B),
                    mixed / base);
      }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gpu bench failed: %s\n(out of memory? fewer resident adapters: --adapters 8)\n", e.what());
    return 1;
  }
  return 0;
}

#endif  // EW_WITH_CUDA

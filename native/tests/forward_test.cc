// The forward pass on tiny random DeepSeek-V2 models written to a temp dir:
// the bit-exactness contract (prefill == token-by-token decode, a batch == each
// sequence alone), adapters (an adapter row == the merged model), and Step's
// all-or-nothing validation.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "kernel_fixtures.h"
#include "st_writer.h"
#include "test.h"
#ifdef EW_WITH_CUDA
#include "util/cuda/cuda_util.h"
#endif

using namespace ew;

namespace {

struct Tensor {
  std::vector<int64_t> shape;
  std::vector<float> values;
};
using TensorMap = std::map<std::string, Tensor>;

void write_safetensors(const std::string& path, const TensorMap& ts, DType dt) {
  const std::string name = dt == DType::F32 ? "F32" : dt == DType::BF16 ? "BF16" : "F16";
  std::vector<ewtest::st::Tensor> out;
  for (const auto& [n, t] : ts) out.push_back({n, name, t.shape, ewtest::st::encode(t.values, name)});
  ewtest::st::write_file(path, out);
}

struct TinyModel {
  int64_t V = 64, H = 32, layers = 3, inter = 48, moe_inter = 16, experts = 8, shared = 1, top_k = 2;
  int64_t heads = 2, q_lora = 0, kv_lora = 16, nope = 8, rope = 4, v = 8, max_pos = 256;
  bool group_limited = false;
  DType dtype = DType::BF16;

  std::string config_json() const {
    std::ostringstream o;
    o << "{\"model_type\":\"deepseek_v2\",\"vocab_size\":" << V << ",\"hidden_size\":" << H
      << ",\"num_hidden_layers\":" << layers << ",\"intermediate_size\":" << inter
      << ",\"moe_intermediate_size\":" << moe_inter << ",\"n_routed_experts\":" << experts
      << ",\"n_shared_experts\":" << shared << ",\"num_experts_per_tok\":" << top_k
      << ",\"first_k_dense_replace\":1,\"moe_layer_freq\":1,\"num_attention_heads\":" << heads
      << ",\"num_key_value_heads\":" << heads << ",\"q_lora_rank\":";
    if (q_lora) o << q_lora; else o << "null";
    o << ",\"kv_lora_rank\":" << kv_lora << ",\"qk_nope_head_dim\":" << nope << ",\"qk_rope_head_dim\":" << rope
      << ",\"v_head_dim\":" << v << ",\"max_position_embeddings\":" << max_pos
      << ",\"rope_theta\":10000,\"rope_scaling\":{\"type\":\"yarn\",\"factor\":8,"
         "\"original_max_position_embeddings\":32,\"beta_fast\":32,\"beta_slow\":1,\"mscale\":0.707,"
         "\"mscale_all_dim\":0.707},"
      << "\"topk_method\":\"" << (group_limited ? "group_limited_greedy" : "greedy") << "\",\"n_group\":"
      << (group_limited ? 4 : 1) << ",\"topk_group\":" << (group_limited ? 2 : 1)
      << ",\"norm_topk_prob\":" << (group_limited ? "true" : "false")
      << ",\"routed_scaling_factor\":1.0,\"scoring_func\":\"softmax\",\"rms_norm_eps\":1e-6,"
         "\"tie_word_embeddings\":false,\"attention_bias\":false,\"bos_token_id\":0,\"eos_token_id\":1}";
    return o.str();
  }

  TensorMap tensors(uint32_t seed) const {
    TensorMap m;
    uint32_t s = seed;
    auto rnd = [&](const std::string& name, std::vector<int64_t> shape, float scale) {
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      m[name] = {shape, ewtest::random_floats(static_cast<size_t>(n), ++s, scale)};
    };
    auto norm = [&](const std::string& name, int64_t n) {
      auto v = ewtest::random_floats(static_cast<size_t>(n), ++s, 0.1f);
      for (auto& x : v) x += 1.f;
      m[name] = {{n}, v};
    };
    auto mlp = [&](const std::string& p, int64_t w) {
      rnd(p + ".gate_proj.weight", {w, H}, 0.3f);
      rnd(p + ".up_proj.weight", {w, H}, 0.3f);
      rnd(p + ".down_proj.weight", {H, w}, 0.3f);
    };
    rnd("model.embed_tokens.weight", {V, H}, 1.f);
    norm("model.norm.weight", H);
    rnd("lm_head.weight", {V, H}, 0.3f);
    const int64_t qd = nope + rope;
    for (int64_t l = 0; l < layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l);
      norm(p + ".input_layernorm.weight", H);
      norm(p + ".post_attention_layernorm.weight", H);
      if (q_lora) {
        rnd(p + ".self_attn.q_a_proj.weight", {q_lora, H}, 0.3f);
        norm(p + ".self_attn.q_a_layernorm.weight", q_lora);
        rnd(p + ".self_attn.q_b_proj.weight", {heads * qd, q_lora}, 0.3f);
      } else {
        rnd(p + ".self_attn.q_proj.weight", {heads * qd, H}, 0.3f);
      }
      rnd(p + ".self_attn.kv_a_proj_with_mqa.weight", {kv_lora + rope, H}, 0.3f);
      norm(p + ".self_attn.kv_a_layernorm.weight", kv_lora);
      rnd(p + ".self_attn.kv_b_proj.weight", {heads * (nope + v), kv_lora}, 0.3f);
      rnd(p + ".self_attn.o_proj.weight", {H, heads * v}, 0.3f);
      if (l == 0) {
        mlp(p + ".mlp", inter);
        continue;
      }
      rnd(p + ".mlp.gate.weight", {experts, H}, 1.f);
      for (int64_t e = 0; e < experts; ++e) mlp(p + ".mlp.experts." + std::to_string(e), moe_inter);
      if (shared) mlp(p + ".mlp.shared_experts", shared * moe_inter);
    }
    return m;
  }

  void write(const std::string& dir, const TensorMap& ts) const {
    std::ofstream(dir + "/config.json") << config_json();
    write_safetensors(dir + "/model.safetensors", ts, dtype);
  }
};

// An independent double-precision DeepSeek-V2 forward pass for one sequence, straight
// from the HF formulation: expanded per-head keys and values (no absorption), q_pe and
// k_pe de-interleaved then rotate_half, causal softmax, dense MLP / MoE. Returns the
// logits of every token.
// x rounded to bf16 (8 significant bits, nearest even): what a bf16 cache stores.
double round_bf16(double x) {
  if (x == 0 || !std::isfinite(x)) return x;
  int e;
  const double f = std::frexp(x, &e);  // |f| in [0.5, 1)
  return std::ldexp(std::nearbyint(std::ldexp(f, 8)), e - 8);
}

std::vector<double> reference_logits(const TinyModel& m, const TensorMap& ts, const std::vector<int32_t>& toks,
                                     bool bf16_cache = false) {
  using Vec = std::vector<double>;
  auto W = [&](const std::string& name) {
    const Tensor& t = ts.at(name);
    const auto stored = ewtest::make_weight(t.values, m.dtype).values;  // what the engine reads
    return Vec(stored.begin(), stored.end());
  };
  auto matvec = [](const Vec& w, const Vec& x, size_t rows) {
    const size_t cols = x.size();
    Vec y(rows, 0.0);
    for (size_t r = 0; r < rows; ++r)
      for (size_t c = 0; c < cols; ++c) y[r] += w[r * cols + c] * x[c];
    return y;
  };
  auto rmsnorm = [&](const Vec& x, const Vec& w) {
    double ss = 0;
    for (double v : x) ss += v * v;
    const double inv = 1 / std::sqrt(ss / x.size() + 1e-6);
    Vec y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = w[i] * x[i] * inv;
    return y;
  };
  auto silu = [](double g) { return g / (1 + std::exp(-g)); };
  auto mlp = [&](const std::string& p, const Vec& x, size_t width) {
    const Vec g = matvec(W(p + ".gate_proj.weight"), x, width), u = matvec(W(p + ".up_proj.weight"), x, width);
    Vec a(width);
    for (size_t i = 0; i < width; ++i) a[i] = silu(g[i]) * u[i];
    return matvec(W(p + ".down_proj.weight"), a, m.H);
  };
  // Yarn exactly as modeling_deepseek.py (factor 8, original 32, beta 32 / 1, mscale == mscale_all_dim).
  const int64_t d = m.rope, half = d / 2;
  auto corr = [&](double rot) { return d * std::log(32 / (rot * 2 * M_PI)) / (2 * std::log(10000.0)); };
  const double low = std::max(0.0, std::floor(corr(32))), high0 = std::min<double>(d - 1, std::ceil(corr(1)));
  const double high = low == high0 ? high0 + 0.001 : high0;
  Vec inv(half);
  for (int64_t i = 0; i < half; ++i) {
    const double extra = 1 / std::pow(10000.0, 2.0 * i / d), ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
    inv[i] = extra / 8 * ramp + extra * (1 - ramp);
  }
  const double mscale = 0.1 * 0.707 * std::log(8.0) + 1;
  const double scale = mscale * mscale / std::sqrt(static_cast<double>(m.nope + m.rope));
  auto rope = [&](const double* v, int64_t pos) {  // returns the de-interleaved rotated vector
    Vec q(d), out(d);
    for (int64_t i = 0; i < half; ++i) {
      q[i] = v[2 * i];
      q[half + i] = v[2 * i + 1];
    }
    for (int64_t i = 0; i < d; ++i) {
      const double a = pos * inv[i % half], rot = i < half ? -q[i + half] : q[i - half];
      out[i] = q[i] * std::cos(a) + rot * std::sin(a);
    }
    return out;
  };

  const size_t T = toks.size();
  const Vec emb = W("model.embed_tokens.weight");
  std::vector<Vec> x(T);
  for (size_t t = 0; t < T; ++t) x[t] = Vec(emb.begin() + toks[t] * m.H, emb.begin() + (toks[t] + 1) * m.H);
  const int64_t qd = m.nope + m.rope;
  for (int64_t l = 0; l < m.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l);
    std::vector<Vec> q(T), ckv(T), kpe(T);
    for (size_t t = 0; t < T; ++t) {
      const Vec xn = rmsnorm(x[t], W(p + ".input_layernorm.weight"));
      q[t] = m.q_lora ? matvec(W(p + ".self_attn.q_b_proj.weight"),
                               rmsnorm(matvec(W(p + ".self_attn.q_a_proj.weight"), xn, m.q_lora),
                                       W(p + ".self_attn.q_a_layernorm.weight")),
                               m.heads * qd)
                      : matvec(W(p + ".self_attn.q_proj.weight"), xn, m.heads * qd);
      const Vec kva = matvec(W(p + ".self_attn.kv_a_proj_with_mqa.weight"), xn, m.kv_lora + m.rope);
      ckv[t] = rmsnorm(Vec(kva.begin(), kva.begin() + m.kv_lora), W(p + ".self_attn.kv_a_layernorm.weight"));
      kpe[t] = rope(&kva[m.kv_lora], static_cast<int64_t>(t));
      if (bf16_cache)  // the cached entries as stored
        for (Vec* v : {&ckv[t], &kpe[t]})
          for (double& e : *v) e = round_bf16(e);
    }
    const Vec kvb = W(p + ".self_attn.kv_b_proj.weight");
    std::vector<Vec> kv(T);  // per token: heads x (nope + v)
    for (size_t t = 0; t < T; ++t) kv[t] = matvec(kvb, ckv[t], m.heads * (m.nope + m.v));
    for (size_t t = 0; t < T; ++t) {
      Vec o(m.heads * m.v, 0.0);
      for (int64_t h = 0; h < m.heads; ++h) {
        const Vec qpe = rope(&q[t][h * qd + m.nope], static_cast<int64_t>(t));
        Vec sc(t + 1);
        double mx = -1e300, sum = 0;
        for (size_t s = 0; s <= t; ++s) {
          double dot = 0;
          for (int64_t i = 0; i < m.nope; ++i) dot += q[t][h * qd + i] * kv[s][h * (m.nope + m.v) + i];
          for (int64_t i = 0; i < d; ++i) dot += qpe[i] * kpe[s][i];
          sc[s] = dot * scale;
          mx = std::max(mx, sc[s]);
        }
        for (auto& v : sc) sum += v = std::exp(v - mx);
        for (size_t s = 0; s <= t; ++s)
          for (int64_t j = 0; j < m.v; ++j) o[h * m.v + j] += sc[s] / sum * kv[s][h * (m.nope + m.v) + m.nope + j];
      }
      const Vec a = matvec(W(p + ".self_attn.o_proj.weight"), o, m.H);
      for (int64_t i = 0; i < m.H; ++i) x[t][i] += a[i];
    }
    for (size_t t = 0; t < T; ++t) {
      const Vec xn = rmsnorm(x[t], W(p + ".post_attention_layernorm.weight"));
      Vec y(m.H, 0.0);
      if (l == 0) {
        y = mlp(p + ".mlp", xn, m.inter);
      } else {
        Vec pr = matvec(W(p + ".mlp.gate.weight"), xn, m.experts);
        double mx = *std::max_element(pr.begin(), pr.end()), sum = 0;
        for (auto& v : pr) sum += v = std::exp(v - mx);
        for (auto& v : pr) v /= sum;
        Vec masked = pr;
        if (m.group_limited) {  // 4 groups of 2, keep the 2 groups with the largest max
          std::vector<std::pair<double, int>> g;
          for (int i = 0; i < 4; ++i) g.push_back({-std::max(pr[2 * i], pr[2 * i + 1]), i});
          std::sort(g.begin(), g.end());
          for (int r = 2; r < 4; ++r) masked[2 * g[r].second] = masked[2 * g[r].second + 1] = 0;
        }
        std::vector<int> ids(m.experts);
        std::iota(ids.begin(), ids.end(), 0);
        std::stable_sort(ids.begin(), ids.end(), [&](int a, int b) { return masked[a] > masked[b]; });
        double wsum = 0;
        for (int64_t j = 0; j < m.top_k; ++j) wsum += masked[ids[j]];
        for (int64_t j = 0; j < m.top_k; ++j) {
          const double w = m.group_limited ? masked[ids[j]] / (wsum + 1e-20) : masked[ids[j]];
          const Vec e = mlp(p + ".mlp.experts." + std::to_string(ids[j]), xn, m.moe_inter);
          for (int64_t i = 0; i < m.H; ++i) y[i] += w * e[i];
        }
        const Vec sh = mlp(p + ".mlp.shared_experts", xn, m.shared * m.moe_inter);
        for (int64_t i = 0; i < m.H; ++i) y[i] += sh[i];
      }
      for (int64_t i = 0; i < m.H; ++i) x[t][i] += y[i];
    }
  }
  Vec logits;
  const Vec head = W("lm_head.weight");
  for (size_t t = 0; t < T; ++t) {
    const Vec l = matvec(head, rmsnorm(x[t], W("model.norm.weight")), m.V);
    logits.insert(logits.end(), l.begin(), l.end());
  }
  return logits;
}

std::unique_ptr<Engine> load(const std::string& dir, int max_adapters = 0, int64_t kv_tokens = 512,
                             const std::string& kv_dtype = "") {
  EngineOptions o;
  o.kv_cache_dtype = kv_dtype;
  o.kv_block_size = 4;
  o.kv_cache_tokens = kv_tokens;
  o.max_adapters = max_adapters;
  o.max_adapter_slots = max_adapters ? 8 : 0;
  return Engine::Load(dir, o);
}

SeqChunk chunk(int64_t seq, int32_t n, int32_t adapter = 0) {
  SeqChunk c;
  c.seq_id = seq;
  c.n_tokens = n;
  c.adapter = adapter;
  return c;
}

// Logits of every token when `tokens` of one sequence run as one chunk.
std::vector<float> prefill_logits(Engine& e, int64_t seq, const std::vector<int32_t>& tokens, int32_t adapter = 0) {
  StepBatch b;
  b.tokens = tokens;
  b.chunks = {chunk(seq, static_cast<int32_t>(tokens.size()), adapter)};
  b.return_logits = true;
  return e.Step(b).logits;
}

std::vector<int32_t> some_tokens(size_t n, int salt) {
  std::vector<int32_t> t(n);
  for (size_t i = 0; i < n; ++i) t[i] = static_cast<int32_t>((i * 7 + salt * 13 + 3) % 64);
  return t;
}

bool bits_equal(const float* a, const float* b, size_t n) { return std::memcmp(a, b, n * sizeof(float)) == 0; }

void check_prefill_equals_decode(const TinyModel& m, const std::string& kv_dtype) {
  ewtest::st::TempDir dir;
  const TensorMap ts = m.tensors(100);
  m.write(dir.path(), ts);
  auto e = load(dir.path(), 0, 512, kv_dtype);
  const auto toks = some_tokens(11, 1);
  const auto full = prefill_logits(*e, 1, toks);
  CHECK_EQ(full.size(), toks.size() * size_t(m.V));
  bool finite = true;
  for (float x : full) finite = finite && std::isfinite(x);
  CHECK(finite);
  // Against the independent double-precision reference: only fp32 rounding apart (and, on
  // the bf16 paths, the activations' rounding to bf16 before each matmul).
  CHECK(e->kv_cache_dtype() == (kv_dtype == "f32" ? DType::F32 : DType::BF16));
  const auto ref = reference_logits(m, ts, toks, e->kv_cache_dtype() == DType::BF16);
  double err = 0, mag = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    err = std::max(err, std::fabs(full[i] - ref[i]));
    mag = std::max(mag, std::fabs(ref[i]));
  }
  CHECK(mag > 0.1);
  CHECK(err < ewtest::op_tolerance(ew::cpu_path(), m.dtype, 1e-4) * mag);
  // Decode the same tokens one at a time (with a 3-token chunk in the middle).
  size_t i = 0;
  while (i < toks.size()) {
    const size_t n = i == 4 ? 3 : 1;
    const auto part = prefill_logits(*e, 2, std::vector<int32_t>(toks.begin() + i, toks.begin() + i + n));
    CHECK(bits_equal(part.data(), full.data() + i * m.V, n * m.V));
    i += n;
  }
  CHECK_EQ(e->SequenceLength(2), int64_t(toks.size()));
}

}  // namespace

TEST(forward_prefill_equals_decode_bitwise_q_proj) {
  TinyModel m;
  check_prefill_equals_decode(m, "");  // the CPU default: a bf16 latent cache
  check_prefill_equals_decode(m, "f32");
}

TEST(forward_prefill_equals_decode_bitwise_q_lora_group_limited_f32) {
  TinyModel m;
  m.q_lora = 24;
  m.group_limited = true;
  m.dtype = DType::F32;
  check_prefill_equals_decode(m, "bf16");
  check_prefill_equals_decode(m, "f32");
}

TEST(forward_batch_of_three_equals_each_alone_bitwise) {
  TinyModel m;
  m.q_lora = 24;
  ewtest::st::TempDir dir;
  m.write(dir.path(), m.tensors(200));
  auto e = load(dir.path());
  const std::vector<std::vector<int32_t>> prompts = {some_tokens(5, 2), some_tokens(2, 3), some_tokens(9, 4)};

  // Alone: each sequence prefilled, then one decode token.
  std::vector<std::vector<float>> alone;
  for (int s = 0; s < 3; ++s) {
    auto l = prefill_logits(*e, 10 + s, prompts[s]);
    auto d = prefill_logits(*e, 10 + s, {static_cast<int32_t>(s + 5)});
    l.insert(l.end(), d.begin(), d.end());
    alone.push_back(l);
  }
  // Together: one step with all three prefills, then one step with all three decodes.
  StepBatch b;
  b.return_logits = true;
  for (int s = 0; s < 3; ++s) {
    b.tokens.insert(b.tokens.end(), prompts[s].begin(), prompts[s].end());
    b.chunks.push_back(chunk(20 + s, static_cast<int32_t>(prompts[s].size())));
  }
  const auto pre = e->Step(b).logits;
  StepBatch d;
  d.return_logits = true;
  for (int s = 2; s >= 0; --s) {  // another order too
    d.tokens.push_back(s + 5);
    d.chunks.push_back(chunk(20 + s, 1));
  }
  const auto dec = e->Step(d).logits;
  size_t off = 0;
  for (int s = 0; s < 3; ++s) {
    const size_t n = prompts[s].size() * m.V;
    CHECK(bits_equal(pre.data() + off, alone[s].data(), n));
    CHECK(bits_equal(dec.data() + (2 - s) * m.V, alone[s].data() + n, m.V));
    off += n;
  }
}

TEST(forward_sampling_is_the_same_alone_or_batched) {
  TinyModel m;
  ewtest::st::TempDir dir;
  m.write(dir.path(), m.tensors(300));
  auto e = load(dir.path());
  auto run = [&](bool batched) {
    std::vector<int32_t> out;
    std::vector<int32_t> next = {5};
    for (int step = 0; step < 6; ++step) {
      StepBatch b;
      b.tokens = next;
      SeqChunk c = chunk(batched ? 100 : 200, 1);
      c.sampling.temperature = 0.9f;
      c.sampling.top_k = 20;
      c.sampling.top_p = 0.9f;
      c.sampling.seed = 77;
      c.logprobs = true;
      b.chunks = {c};
      if (batched) {  // a greedy companion sequence
        b.tokens.push_back(3);
        b.chunks.push_back(chunk(101, 1));
      }
      const StepResult r = e->Step(b);
      CHECK(r.logprobs[0] < 0.f);
      out.push_back(r.tokens[0]);
      next = {r.tokens[0]};
    }
    return out;
  };
  CHECK(run(true) == run(false));
}

TEST(forward_adapter_row_equals_the_merged_model_bitwise) {
  TinyModel m;
  ewtest::st::TempDir base_dir, merged_dir, adapter_dir;
  const TensorMap base = m.tensors(400);
  m.write(base_dir.path(), base);
  // The adapter retunes expert 3 of layer 1 and experts 0 and 5 of layer 2.
  const std::vector<std::pair<int, int>> tuned = {{1, 3}, {2, 0}, {2, 5}};
  TensorMap merged = base, adapter;
  uint32_t s = 900;
  for (auto [l, x] : tuned)
    for (const char* mat : {"gate_proj", "up_proj", "down_proj"}) {
      const std::string name =
          "model.layers." + std::to_string(l) + ".mlp.experts." + std::to_string(x) + "." + mat + ".weight";
      Tensor t = base.at(name);
      t.values = ewtest::random_floats(t.values.size(), ++s, 0.3f);
      merged[name] = adapter[name] = t;
    }
  m.write(merged_dir.path(), merged);
  std::ofstream(adapter_dir.path() + "/expert_cfg.json")
      << "{\"experts\":{\"1\":[3],\"2\":[0,5]},\"shared_experts\":false,\"non_expert_modules\":false}";
  write_safetensors(adapter_dir.path() + "/adapter.safetensors", adapter, m.dtype);

  auto e = load(base_dir.path(), 2);
  const AdapterInfo info = e->RegisterAdapter(adapter_dir.path());
  CHECK(info.row >= 1);
  auto em = load(merged_dir.path());
  const auto toks = some_tokens(12, 5);
  const auto via_adapter = prefill_logits(*e, 1, toks, info.row);
  const auto via_merged = prefill_logits(*em, 1, toks);
  CHECK(bits_equal(via_adapter.data(), via_merged.data(), via_merged.size()));
  // And the base row of the same engine is the base model, not the adapter.
  const auto via_base = prefill_logits(*e, 2, toks, 0);
  CHECK(!bits_equal(via_base.data(), via_merged.data(), via_merged.size()));
}

TEST(forward_step_layout_errors_change_nothing) {
  TinyModel m;
  ewtest::st::TempDir dir;
  m.write(dir.path(), m.tensors(500));
  auto e = load(dir.path(), 0, 16);  // 4 blocks of 4 tokens
  StepBatch ok;
  ok.tokens = some_tokens(3, 6);
  ok.chunks = {chunk(1, 3)};
  e->Step(ok);
  const KvStats before = e->kv_stats();
  auto expect = [&](StepBatch b, const char* msg) {
    CHECK_THROWS_WITH(e->Step(b), msg);
    CHECK_EQ(e->SequenceLength(1), int64_t{3});
    CHECK_EQ(e->SequenceLength(2), int64_t{-1});
    CHECK_EQ(e->kv_stats().free_blocks, before.free_blocks);
  };
  StepBatch b;
  b.tokens = {1, 2};
  b.chunks = {chunk(2, 1), chunk(1, 2)};
  expect(b, "tokens but");
  b.chunks = {chunk(2, 2), chunk(1, 0)};
  expect(b, "n_tokens");
}

// A chunk whose own values cannot run fails alone: its error names why, its sequence
// stays as it was, and the chunk beside it runs exactly as it would alone.
TEST(forward_step_bad_chunk_fails_alone) {
  TinyModel m;
  ewtest::st::TempDir dir;
  m.write(dir.path(), m.tensors(500));
  const std::vector<int32_t> good_tokens = some_tokens(3, 9);
  // What sequence 5 gives alone: its greedy token and logits, and the cache it takes.
  auto alone = load(dir.path(), 0, 16);
  StepBatch solo;
  solo.tokens = good_tokens;
  solo.chunks = {chunk(5, 3)};
  solo.return_logits = true;
  const StepResult want = alone->Step(solo);

  auto expect = [&](std::vector<int32_t> bad_tokens, SeqChunk bad, const char* msg, int64_t bad_len_before) {
    auto e = load(dir.path(), 0, 16);  // 4 blocks of 4 tokens
    StepBatch pre;
    pre.tokens = some_tokens(3, 6);
    pre.chunks = {chunk(1, 3)};
    e->Step(pre);  // sequence 1: 3 tokens, 1 block
    StepBatch b;
    b.tokens = good_tokens;
    b.tokens.insert(b.tokens.end(), bad_tokens.begin(), bad_tokens.end());
    b.chunks = {chunk(5, 3), bad};
    b.return_logits = true;
    const StepResult got = e->Step(b);
    CHECK_EQ(got.errors.size(), size_t{2});
    CHECK(got.errors[0].empty());
    if (got.errors[1].find(msg) == std::string::npos) {
      std::fprintf(stderr, "     error '%s' does not name '%s'\n", got.errors[1].c_str(), msg);
      CHECK(false);
    }
    CHECK_EQ(got.tokens[1], -1);
    CHECK_EQ(got.tokens[0], want.tokens[0]);
    CHECK(bits_equal(got.logits.data(), want.logits.data(), want.logits.size()));
    CHECK_EQ(e->SequenceLength(5), int64_t{3});
    CHECK_EQ(e->SequenceLength(bad.seq_id), bad_len_before);
    CHECK_EQ(e->kv_stats().free_blocks, 2);  // sequence 1 and sequence 5 hold one block each
  };
  expect({1, 64}, chunk(2, 2), "outside the vocabulary", -1);
  expect({1}, chunk(5, 1), "more than once", 3);
  expect({1}, chunk(1, 1, 1), "adapter row", 3);
  expect(some_tokens(13, 7), chunk(1, 13), "KV cache full", 3);  // would need 4 blocks, 2 are free
  expect(std::vector<int32_t>(254, 1), chunk(1, 254), "max_position_embeddings", 3);  // 3 + 254 > 256
  SeqChunk hot = chunk(2, 1);
  hot.sampling.temperature = std::numeric_limits<float>::infinity();
  expect({1}, hot, "temperature", -1);
  SeqChunk narrow = chunk(2, 1);
  narrow.sampling.top_p = 0.f;
  expect({1}, narrow, "top_p", -1);
}

TEST(forward_load_refuses_cuda_without_backend_or_device) {
  TinyModel m;
  ewtest::st::TempDir dir;
  m.write(dir.path(), m.tensors(600));
  EngineOptions o;
  o.device = "cuda";
#ifndef EW_WITH_CUDA
  CHECK_THROWS_WITH(Engine::Load(dir.path(), o), "no CUDA backend");
#else
  if (!cuda::device_available()) CHECK_THROWS_WITH(Engine::Load(dir.path(), o), "no CUDA device");
#endif
  o.device = "tpu";
  CHECK_THROWS_WITH(Engine::Load(dir.path(), o), "expected 'cpu'");
}

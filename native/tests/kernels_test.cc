// CPU kernels against straightforward double-precision references.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "kernel_fixtures.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/mla_attention.h"
#include "kernels/cpu/mlp.h"
#include "kernels/cpu/norm.h"
#include "kernels/cpu/rope.h"
#include "memory/kv_cache.h"
#include "test.h"
#include "util/membw.h"
#include "util/thread_pool.h"

using namespace ew;
using namespace ewtest;

namespace {

const DType kDtypes[] = {DType::F32, DType::BF16, DType::F16};

std::vector<CpuPath> paths() {
  std::vector<CpuPath> p{CpuPath::Portable};
  if (cpu_path() == CpuPath::Avx2) p.push_back(CpuPath::Avx2);
  return p;
}

// Max |got - ref| / max |ref| over the output.
double rel_err(const std::vector<float>& got, const std::vector<double>& ref) {
  double num = 0, den = 1e-30;
  for (size_t i = 0; i < ref.size(); ++i) {
    num = std::max(num, std::fabs(got[i] - ref[i]));
    den = std::max(den, std::fabs(ref[i]));
  }
  return num / den;
}

std::vector<double> matmul_ref(const std::vector<float>& x, int64_t T, const std::vector<float>& w, int64_t N,
                               int64_t K) {
  std::vector<double> y(static_cast<size_t>(T * N));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k) s += static_cast<double>(x[t * K + k]) * w[n * K + k];
      y[t * N + n] = s;
    }
  return y;
}

bool same_bits(const float* a, const float* b, size_t n) { return std::memcmp(a, b, n * sizeof(float)) == 0; }

}  // namespace

TEST(matmul_matches_double_reference_every_dtype_and_path) {
  // Shapes below, at and above the tiles, K with and without a tail.
  const int64_t shapes[][3] = {{1, 1, 1}, {2, 3, 7}, {4, 8, 16}, {5, 37, 301}, {16, 19, 64}};
  for (const auto& sh : shapes) {
    const int64_t T = sh[0], N = sh[1], K = sh[2];
    const auto x = random_floats(T * K, 1);
    for (DType dt : kDtypes) {
      const StoredWeight w = make_weight(random_floats(N * K, 2), dt);
      const auto ref = matmul_ref(x, T, w.values, N, K);
      for (CpuPath p : paths()) {
        std::vector<float> y(T * N);
        matmul_cpu_path(p, x.data(), T, w.bytes.data(), dt, N, K, y.data());
        CHECK(rel_err(y, ref) < 1e-5);
      }
    }
  }
}

TEST(matmul_avx2_and_portable_agree_closely) {
  if (cpu_path() != CpuPath::Avx2) return;  // nothing to compare on this CPU
  const int64_t T = 3, N = 64, K = 2048;
  const auto x = random_floats(T * K, 3);
  const StoredWeight w = make_weight(random_floats(N * K, 4), DType::BF16);
  std::vector<float> a(T * N), b(T * N);
  matmul_cpu_path(CpuPath::Portable, x.data(), T, w.bytes.data(), w.dtype, N, K, a.data());
  matmul_cpu_path(CpuPath::Avx2, x.data(), T, w.bytes.data(), w.dtype, N, K, b.data());
  std::vector<double> ad(a.begin(), a.end());
  CHECK(rel_err(b, ad) < 1e-5);
}

TEST(matmul_token_rows_are_bit_identical_alone_or_in_a_batch) {
  const int64_t T = 7, N = 70, K = 517;
  const auto x = random_floats(T * K, 5);
  for (DType dt : kDtypes) {
    const StoredWeight w = make_weight(random_floats(N * K, 6), dt);
    for (CpuPath p : paths()) {
      std::vector<float> batch(T * N), one(N);
      matmul_cpu_path(p, x.data(), T, w.bytes.data(), dt, N, K, batch.data());
      for (int64_t t = 0; t < T; ++t) {
        matmul_cpu_path(p, x.data() + t * K, 1, w.bytes.data(), dt, N, K, one.data());
        CHECK(same_bits(one.data(), batch.data() + t * N, N));
      }
      // Any sub-batch (here tokens 2..6) gives the same rows too.
      std::vector<float> part(5 * N);
      matmul_cpu_path(p, x.data() + 2 * K, 5, w.bytes.data(), dt, N, K, part.data());
      CHECK(same_bits(part.data(), batch.data() + 2 * N, 5 * N));
    }
  }
}

TEST(matmul_long_rows_and_token_blocks_are_batch_independent) {
  // K = 1053: two 512-wide k segments of the multi-token tiles, three leftover 8-blocks
  // and a 5-element tail; T = 67 crosses a 64-token block; N = 10 leaves rows outside
  // the 4-row tiles.
  const int64_t T = 67, N = 10, K = 1053;
  const auto x = random_floats(T * K, 13);
  for (DType dt : kDtypes) {
    const StoredWeight w = make_weight(random_floats(N * K, 14), dt);
    const auto ref = matmul_ref(x, T, w.values, N, K);
    for (CpuPath p : paths()) {
      std::vector<float> batch(T * N), one(N);
      matmul_cpu_path(p, x.data(), T, w.bytes.data(), dt, N, K, batch.data());
      CHECK(rel_err(batch, ref) < 1e-5);
      for (int64_t t : {0, 2, 63, 64, 66}) {
        matmul_cpu_path(p, x.data() + t * K, 1, w.bytes.data(), dt, N, K, one.data());
        CHECK(same_bits(one.data(), batch.data() + t * N, N));
      }
    }
  }
}

TEST(mlp_matches_reference_and_is_batch_independent) {
  const int64_t T = 5, H = 40, I = 24;
  const auto x = random_floats(T * H, 15);
  const StoredWeight gate = make_weight(random_floats(I * H, 16), DType::BF16);
  const StoredWeight up = make_weight(random_floats(I * H, 17), DType::BF16);
  const StoredWeight down = make_weight(random_floats(H * I, 18), DType::BF16);
  std::vector<float> y(T * H), one(H);
  mlp_cpu(x.data(), T, gate.view({I, H}), up.view({I, H}), down.view({H, I}), y.data());
  for (int64_t t = 0; t < T; ++t) {
    std::vector<double> h(I);
    for (int64_t i = 0; i < I; ++i) {
      double g = 0, u = 0;
      for (int64_t k = 0; k < H; ++k) {
        g += static_cast<double>(x[t * H + k]) * gate.values[i * H + k];
        u += static_cast<double>(x[t * H + k]) * up.values[i * H + k];
      }
      h[i] = g / (1 + std::exp(-g)) * u;
    }
    for (int64_t n = 0; n < H; ++n) {
      double r = 0;
      for (int64_t i = 0; i < I; ++i) r += h[i] * down.values[n * I + i];
      CHECK_NEAR(y[t * H + n], r, 1e-4);
    }
    mlp_cpu(x.data() + t * H, 1, gate.view({I, H}), up.view({I, H}), down.view({H, I}), one.data());
    CHECK(same_bits(one.data(), y.data() + t * H, H));
  }
}

TEST(matmul_results_do_not_depend_on_thread_count) {
  const int64_t T = 4, N = 300, K = 256;
  const auto x = random_floats(T * K, 7);
  const StoredWeight w = make_weight(random_floats(N * K, 8), DType::BF16);
  std::vector<float> one(T * N), two(T * N);
  ThreadPool::set_global_threads(1);
  matmul_cpu_raw(x.data(), T, w.bytes.data(), w.dtype, N, K, one.data());
  ThreadPool::set_global_threads(2);
  matmul_cpu_raw(x.data(), T, w.bytes.data(), w.dtype, N, K, two.data());
  ThreadPool::set_global_threads(0);
  CHECK(same_bits(one.data(), two.data(), one.size()));
}

TEST(matmul_transposed_matches_reference_and_is_batch_independent) {
  const int64_t T = 3, K = 45, N = 130;
  const auto x = random_floats(T * K, 9);
  const StoredWeight w = make_weight(random_floats(K * N, 10), DType::BF16);
  std::vector<double> ref(T * N, 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t n = 0; n < N; ++n) ref[t * N + n] += static_cast<double>(x[t * K + k]) * w.values[k * N + n];
  std::vector<float> y(T * N), one(N);
  matmul_t_cpu_raw(x.data(), T, w.bytes.data(), w.dtype, K, N, y.data());
  CHECK(rel_err(y, ref) < 1e-5);
  matmul_t_cpu_raw(x.data() + 2 * K, 1, w.bytes.data(), w.dtype, K, N, one.data());
  CHECK(same_bits(one.data(), y.data() + 2 * N, N));
}

TEST(rms_norm_matches_reference_with_bf16_weight) {
  const int64_t T = 3, n = 100;
  const auto x = random_floats(T * n, 11, 3.f);
  const StoredWeight w = make_weight(random_floats(n, 12), DType::BF16);
  std::vector<float> y(T * n);
  rms_norm_cpu(x.data(), n, T, n, w.view({n}), 1e-6f, y.data(), n);
  for (int64_t t = 0; t < T; ++t) {
    double ss = 0;
    for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[t * n + i]) * x[t * n + i];
    const double inv = 1 / std::sqrt(ss / n + 1e-6);
    for (int64_t i = 0; i < n; ++i) CHECK_NEAR(y[t * n + i], w.values[i] * x[t * n + i] * inv, 1e-5);
  }
}

TEST(embedding_reads_rows_of_every_dtype) {
  const int64_t V = 6, H = 5;
  const auto v = random_floats(V * H, 13);
  const int32_t ids[3] = {4, 0, 4};
  for (DType dt : kDtypes) {
    const StoredWeight w = make_weight(v, dt);
    std::vector<float> y(3 * H);
    embed_cpu(w.view({V, H}), ids, 3, y.data());
    for (int t = 0; t < 3; ++t)
      for (int64_t h = 0; h < H; ++h) CHECK_EQ(y[t * H + h], w.values[ids[t] * H + h]);
  }
  const StoredWeight w = make_weight(v, DType::F32);
  const int32_t bad = 6;
  std::vector<float> y(H);
  CHECK_THROWS_WITH(embed_cpu(w.view({V, H}), &bad, 1, y.data()), "token id 6");
}

namespace {

// HF modeling_deepseek.py, transcribed: yarn inv_freq, cos/sin cache scaled by mscale,
// q de-interleaved (view(d/2, 2).transpose) then q*cos + rotate_half(q)*sin.
std::vector<double> hf_rope_reference(const std::vector<float>& v, int64_t pos, const ModelConfig& c) {
  const int64_t d = c.qk_rope_head_dim, half = d / 2;
  const double base = c.rope_theta;
  std::vector<double> inv(half);
  double mscale = 1, p = static_cast<double>(pos);
  for (int64_t i = 0; i < half; ++i) inv[i] = 1.0 / std::pow(base, 2.0 * i / d);
  if (c.rope_scaling == RopeScaling::Linear) p /= c.rope_factor;
  if (c.rope_scaling == RopeScaling::Yarn) {
    auto corr = [&](double rot) {
      return d * std::log(c.rope_original_max_position / (rot * 2 * M_PI)) / (2 * std::log(base));
    };
    double low = std::floor(corr(c.rope_beta_fast)), high = std::ceil(corr(c.rope_beta_slow));
    low = std::max(low, 0.0);
    high = std::min(high, static_cast<double>(d - 1));
    if (low == high) high += 0.001;
    for (int64_t i = 0; i < half; ++i) {
      double ramp = (i - low) / (high - low);
      ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
      const double mask = 1.0 - ramp;
      inv[i] = inv[i] / c.rope_factor * (1 - mask) + inv[i] * mask;
    }
    auto ms = [](double s, double m) { return s <= 1 ? 1.0 : 0.1 * m * std::log(s) + 1.0; };
    mscale = ms(c.rope_factor, c.rope_mscale) / ms(c.rope_factor, c.rope_mscale_all_dim);
  }
  std::vector<double> q(d), out(d);
  for (int64_t i = 0; i < half; ++i) {
    q[i] = v[2 * i];
    q[half + i] = v[2 * i + 1];
  }
  for (int64_t i = 0; i < d; ++i) {
    const double ang = p * inv[i % half];
    const double rot = i < half ? -q[i + half] : q[i - half];
    out[i] = q[i] * std::cos(ang) * mscale + rot * std::sin(ang) * mscale;
  }
  return out;  // de-interleaved layout
}

ModelConfig rope_config(RopeScaling s) {
  ModelConfig c;
  c.qk_rope_head_dim = 64;
  c.qk_nope_head_dim = 128;
  c.rope_theta = 10000;
  c.rope_scaling = s;
  c.rope_factor = s == RopeScaling::Linear ? 4 : 40;
  c.rope_original_max_position = 4096;
  c.rope_beta_fast = 32;
  c.rope_beta_slow = 1;
  c.rope_mscale = 0.707;
  c.rope_mscale_all_dim = s == RopeScaling::Yarn ? 0.5 : 0;  // != mscale, so cos/sin get scaled
  return c;
}

}  // namespace

TEST(rope_equals_deinterleave_plus_rotate_half_with_yarn_and_linear) {
  for (RopeScaling s : {RopeScaling::None, RopeScaling::Linear, RopeScaling::Yarn}) {
    const ModelConfig c = rope_config(s);
    const RopeTable table = make_rope_table(c);
    for (int64_t pos : {0, 1, 17, 3000, 70000}) {
      auto v = random_floats(64, static_cast<uint32_t>(pos + 20));
      const auto ref = hf_rope_reference(v, pos, c);
      apply_rope_cpu(v.data(), 1, 64, pos, table);
      for (int64_t i = 0; i < 32; ++i) {
        CHECK_NEAR(v[2 * i], ref[i], 2e-5);
        CHECK_NEAR(v[2 * i + 1], ref[32 + i], 2e-5);
      }
    }
  }
}

TEST(rope_softmax_scale_follows_mscale_all_dim) {
  ModelConfig c = rope_config(RopeScaling::Yarn);
  c.rope_mscale = c.rope_mscale_all_dim = 0.707;  // DeepSeek-V2-Lite
  const RopeTable t = make_rope_table(c);
  const double m = 0.1 * 0.707 * std::log(40.0) + 1;
  CHECK_NEAR(t.softmax_scale, m * m / std::sqrt(192.0), 1e-7);
  CHECK_NEAR(t.mscale, 1.0, 1e-12);
  CHECK_NEAR(make_rope_table(rope_config(RopeScaling::None)).softmax_scale, 1 / std::sqrt(192.0), 1e-7);
}

TEST(mla_absorbed_attention_equals_expanded_keys_and_values) {
  // Plain MLA: k_h = [W_k[h] c_kv, k_pe], v_h = W_v[h] c_kv; attention per head in double.
  const int64_t heads = 3, nope = 8, rope = 4, V = 6, R = 16, L = 2;
  const int64_t qd = nope + rope, width = R + rope;
  const StoredWeight kvb = make_weight(random_floats(heads * (nope + V) * R, 30, 0.5f), DType::BF16);
  KvCache cache(L, width, 4, 8);
  const int64_t seq_a = 11, seq_b = 12, len_a = 9, len_b = 3;
  CHECK(cache.reserve(seq_a, len_a));
  CHECK(cache.reserve(seq_b, len_b));
  const auto ents = random_floats((len_a + len_b) * width, 31);
  for (int64_t s = 0; s < len_a + len_b; ++s) {
    float* e = s < len_a ? cache.entry(1, seq_a, s) : cache.entry(1, seq_b, s - len_a);
    std::copy(&ents[s * width], &ents[(s + 1) * width], e);
  }
  // Tokens: seq_a at positions 8 and 5, seq_b at position 2.
  const int64_t seq[3] = {seq_a, seq_a, seq_b}, pos[3] = {8, 5, 2};
  const auto q = random_floats(3 * heads * qd, 32);
  std::vector<float> out(3 * heads * V);
  MlaAttentionArgs a;
  a.q = q.data();
  a.T = 3;
  a.n_heads = heads;
  a.nope = nope;
  a.rope = rope;
  a.v_dim = V;
  a.rank = R;
  a.kv_b = kvb.view({heads * (nope + V), R});
  a.cache = &cache;
  a.layer = 1;
  a.seq = seq;
  a.pos = pos;
  a.scale = 0.3f;
  a.out = out.data();
  mla_attention_cpu(a);

  const float* W = kvb.values.data();
  for (int64_t t = 0; t < 3; ++t)
    for (int64_t h = 0; h < heads; ++h) {
      std::vector<double> sc(pos[t] + 1);
      double mx = -1e300;
      for (int64_t s = 0; s <= pos[t]; ++s) {
        const float* e = cache.entry(1, seq[t], s);
        double dot = 0;
        for (int64_t i = 0; i < nope; ++i) {
          double k = 0;
          for (int64_t r = 0; r < R; ++r) k += static_cast<double>(W[(h * (nope + V) + i) * R + r]) * e[r];
          dot += q[t * heads * qd + h * qd + i] * k;
        }
        for (int64_t i = 0; i < rope; ++i) dot += static_cast<double>(q[t * heads * qd + h * qd + nope + i]) * e[R + i];
        sc[s] = dot * 0.3;
        mx = std::max(mx, sc[s]);
      }
      double sum = 0;
      for (auto& v : sc) sum += v = std::exp(v - mx);
      for (int64_t j = 0; j < V; ++j) {
        double o = 0;
        for (int64_t s = 0; s <= pos[t]; ++s) {
          const float* e = cache.entry(1, seq[t], s);
          double v = 0;
          for (int64_t r = 0; r < R; ++r) v += static_cast<double>(W[(h * (nope + V) + nope + j) * R + r]) * e[r];
          o += sc[s] / sum * v;
        }
        CHECK_NEAR(out[t * heads * V + h * V + j], o, 1e-5);
      }
    }

  // The token at seq_a position 5 alone gives the same bits as inside the batch.
  std::vector<float> one(heads * V);
  a.q = q.data() + heads * qd;
  a.T = 1;
  a.seq = seq + 1;
  a.pos = pos + 1;
  a.out = one.data();
  mla_attention_cpu(a);
  CHECK(same_bits(one.data(), out.data() + heads * V, heads * V));
}

TEST(membw_measures_a_positive_bandwidth) {
  const double gbs = measure_read_bandwidth_gbs(size_t{8} << 20, 2);
  CHECK(gbs > 0.1 && gbs < 10000);
}

// The CPU op set (kernels/cpu/cpu_ops.h) against straightforward double-precision
// references, over every weight dtype and every dispatch path this machine runs
// (cpu_paths(): portable, and avx2 where the CPU has it; a test names the path on failure).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "engine/rope_config.h"
#include "kernel_fixtures.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/matmul.h"
#include "kernels/rope_rows.h"
#include "memory/kv_cache.h"
#include "test.h"
#include "util/membw.h"
#include "util/thread_pool.h"

using namespace ew;
using namespace ewtest;

namespace {

const DType kDtypes[] = {DType::F32, DType::BF16, DType::F16};

const std::vector<CpuPath>& paths() { return cpu_paths(); }

// Fails naming the dtype and path when err is not below tol.
void check_rel(double err, double tol, DType dt, CpuPath p, const char* what, int line) {
  if (err < tol) return;
  ewtest::fail_at(__FILE__, line, std::string(what) + " (" + dtype_name(dt) + ", " + cpu_path_name(p) +
                                      "): relative error " + std::to_string(err) + " >= " + std::to_string(tol));
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
      for (CpuPath p : paths()) {
        // The bf16 paths against the same sums over the bf16-rounded activations.
        const auto ref = matmul_ref(as_matmul_input(x, p, dt), T, w.values, N, K);
        std::vector<float> y(T * N);
        matmul_cpu_path(p, x.data(), T, w.bytes.data(), dt, N, K, y.data());
        check_rel(rel_err(y, ref), 1e-5, dt, p, "matmul", __LINE__);
      }
    }
  }
}

TEST(matmul_every_fp32_path_agrees_closely_with_portable) {
  const int64_t T = 3, N = 64, K = 2048;
  const auto x = random_floats(T * K, 3);
  const StoredWeight w = make_weight(random_floats(N * K, 4), DType::BF16);
  std::vector<float> a(T * N), b(T * N);
  matmul_cpu_path(CpuPath::Portable, x.data(), T, w.bytes.data(), w.dtype, N, K, a.data());
  std::vector<double> ad(a.begin(), a.end());
  for (CpuPath p : paths()) {
    if (rounds_activations(p)) continue;
    matmul_cpu_path(p, x.data(), T, w.bytes.data(), w.dtype, N, K, b.data());
    check_rel(rel_err(b, ad), 1e-5, w.dtype, p, "matmul vs portable", __LINE__);
  }
}

TEST(cpu_paths_start_portable_and_the_default_keeps_fp32_activations) {
  CHECK(!paths().empty() && paths().front() == CpuPath::Portable);
  for (CpuPath p : paths()) CHECK(cpu_path_named(cpu_path_name(p)) == p);
  CHECK_THROWS_WITH(cpu_path_named("avx1024"), "this CPU and build run only portable");
  // The default (no EW_CPU_PATH) is the last fp32 path; a forced path is the one named.
  const char* env = std::getenv("EW_CPU_PATH");
  if (env && *env) CHECK(std::string(cpu_path_name(cpu_path())) == env);
  else CHECK(!rounds_activations(cpu_path()));
  for (CpuPath p : paths()) CHECK(!rounds_activations(exact_path(p)));
}

TEST(amx_path_where_the_cpu_has_amx) {
  // On an AMX host the amx path is in paths() and every kernel test above ran on it too.
  if (*amx_unavailable_reason()) SKIP(std::string("amx path not available: ") + amx_unavailable_reason());
  CHECK(std::find(paths().begin(), paths().end(), CpuPath::Amx) != paths().end());
}

TEST(amx_tile_logic_on_a_software_model_of_the_tiles) {
  // The amx kernel's packing, tails and row groups, run on a model of TDPBF16PS (matmul_amx.cc),
  // against the double reference over bf16-rounded activations, and batch independent.
  if (!amx_tile_model_runs()) SKIP("the AMX kernels are not built or this CPU lacks AVX512_BF16 (the model's build)");
  const int64_t shapes[][3] = {{1, 16, 32}, {17, 37, 64}, {33, 20, 301}, {5, 48, 96}};
  for (const auto& sh : shapes) {
    const int64_t T = sh[0], N = sh[1], K = sh[2];
    const auto x = random_floats(T * K, 80);
    const StoredWeight w = make_weight(random_floats(N * K, 81), DType::BF16);
    const auto xr = as_matmul_input(x, CpuPath::Amx, DType::BF16);
    const auto ref = matmul_ref(xr, T, w.values, N, K);
    auto run = [&](const float* xs, int64_t Tn, int64_t n0, int64_t n1, float* y, int64_t ldy) {
      std::vector<uint16_t> xp(amx::packed_activation_elems(Tn, K)), scratch(amx::scratch_elems(K));
      amx::pack_activations(xs, Tn, K, xp.data());
      amx::matmul_rows_bf16_on_tile_model(xp.data(), Tn, static_cast<const uint16_t*>(static_cast<const void*>(w.bytes.data())),
                                          K, n0, n1, y, ldy, false, scratch.data());
    };
    std::vector<float> y(T * N), one(N), split(T * N);
    run(x.data(), T, 0, N, y.data(), N);
    check_rel(rel_err(y, ref), 1e-5, DType::BF16, CpuPath::Amx, "amx tile model", __LINE__);
    run(x.data() + (T - 1) * K, 1, 0, N, one.data(), N);  // the last token alone
    CHECK(same_bits(one.data(), y.data() + (T - 1) * N, N));
    run(x.data(), T, 0, 5, split.data(), N);  // rows cut where no tile boundary is
    run(x.data(), T, 5, N, split.data(), N);
    CHECK(same_bits(split.data(), y.data(), y.size()));
  }
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
      // Any sub-batch gives the same rows too: tokens 2..6, and 2 or 3 tokens (decode's
      // few-token row groups).
      for (const auto [t0, n] : {std::pair<int64_t, int64_t>{2, 5}, {1, 2}, {4, 3}}) {
        std::vector<float> part(n * N);
        matmul_cpu_path(p, x.data() + t0 * K, n, w.bytes.data(), dt, N, K, part.data());
        CHECK(same_bits(part.data(), batch.data() + t0 * N, n * N));
      }
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
    for (CpuPath p : paths()) {
      const auto ref = matmul_ref(as_matmul_input(x, p, dt), T, w.values, N, K);
      std::vector<float> batch(T * N), one(N);
      matmul_cpu_path(p, x.data(), T, w.bytes.data(), dt, N, K, batch.data());
      check_rel(rel_err(batch, ref), 1e-5, dt, p, "matmul", __LINE__);
      for (int64_t t : {0, 2, 63, 64, 66}) {
        matmul_cpu_path(p, x.data() + t * K, 1, w.bytes.data(), dt, N, K, one.data());
        CHECK(same_bits(one.data(), batch.data() + t * N, N));
      }
    }
  }
}

TEST(matmul_multi_token_kernels_sum_as_decode_does_at_every_k_tail) {
  // T = 37 takes avx2's by-class kernel (from avx2::kByClassMinTokens tokens); N = 45 rows
  // give it a 24- and a 16-row group and leave 5 rows to the chain tiles (the cut below: an
  // 8-row group and a 24-row one, 3 and 7 rows left), and the K list
  // covers every count of leftover 8-blocks (K % 32 / 8) and of tail elements (K % 8).
  // Every token's row must equal that token alone (the decode kernel), with and without
  // activations prepared by the caller, cut at any row, accumulating or not.
  const int64_t T = 37, N = 45;
  for (int64_t K : {1, 5, 8, 24, 31, 40, 57, 100, 1053}) {
    const auto x = random_floats(T * K, 90 + K);
    for (DType dt : kDtypes) {
      const StoredWeight w = make_weight(random_floats(N * K, 91 + K), dt);
      for (CpuPath p : paths()) {
        const auto ref = matmul_ref(as_matmul_input(x, p, dt), T, w.values, N, K);
        std::vector<float> batch(T * N), cut(T * N), one(N), acc(T * N, 0.5f);
        std::vector<uint16_t> buf(prepared_activation_elems(p, dt, T, K));
        const PreparedActivations xb = prepare_activations(p, dt, x.data(), T, K, buf.data());
        matmul_rows(p, x.data(), T, w.bytes.data(), dt, K, 0, N, batch.data(), N, false, &xb);
        check_rel(rel_err(batch, ref), 1e-5, dt, p, "matmul", __LINE__);
        matmul_rows(p, x.data(), T, w.bytes.data(), dt, K, 0, 3, cut.data(), N);  // unprepared
        matmul_rows(p, x.data(), T, w.bytes.data(), dt, K, 3, 14, cut.data(), N, false, &xb);
        matmul_rows(p, x.data(), T, w.bytes.data(), dt, K, 14, N, cut.data(), N, false, &xb);
        CHECK(same_bits(cut.data(), batch.data(), batch.size()));
        matmul_rows(p, x.data(), T, w.bytes.data(), dt, K, 0, N, acc.data(), N, true, &xb);
        for (int64_t i = 0; i < T * N; ++i) CHECK_EQ(acc[i], 0.5f + batch[i]);
        for (int64_t t = 0; t < T; ++t) {
          matmul_rows(p, x.data() + t * K, 1, w.bytes.data(), dt, K, 0, N, one.data(), N);
          CHECK(same_bits(one.data(), batch.data() + t * N, N));
        }
      }
    }
  }
}

namespace {

// The gated MLP as the forward pass composes it: matmul_pair (gate | up), silu_mul, matmul.
void mlp(Ops& ops, const float* x, int64_t T, const StoredWeight& gate, const StoredWeight& up,
         const StoredWeight& down, int64_t H, int64_t I, float* y) {
  std::vector<float> gu(T * 2 * I), a(T * I);
  ops.matmul_pair(x, T, {gate.bytes.data(), gate.dtype}, I, {up.bytes.data(), up.dtype}, I, H, gu.data());
  ops.silu_mul(gu.data(), gu.data() + I, 2 * I, a.data(), T, I);
  ops.matmul(a.data(), T, {down.bytes.data(), down.dtype}, H, I, y);
}

}  // namespace

TEST(mlp_matches_reference_and_is_batch_independent) {
  const int64_t T = 5, H = 40, I = 24;
  const auto x = random_floats(T * H, 15);
  for (DType dt : kDtypes)
    for (CpuPath p : paths()) {
  CpuOps ops(p);
  const StoredWeight gate = make_weight(random_floats(I * H, 16), dt);
  const StoredWeight up = make_weight(random_floats(I * H, 17), dt);
  const StoredWeight down = make_weight(random_floats(H * I, 18), dt);
  std::vector<float> y(T * H), one(H);
  std::vector<double> ref(T * H);
  mlp(ops, x.data(), T, gate, up, down, H, I, y.data());
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
      ref[t * H + n] = r;
    }
    mlp(ops, x.data() + t * H, 1, gate, up, down, H, I, one.data());
    CHECK(same_bits(one.data(), y.data() + t * H, H));
  }
  check_rel(rel_err(y, ref), op_tolerance(p, dt, 1e-5), dt, p, "mlp", __LINE__);
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
  for (DType dt : kDtypes) {
    const StoredWeight w = make_weight(random_floats(K * N, 10), dt);
    std::vector<double> ref(T * N, 0.0);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t k = 0; k < K; ++k)
        for (int64_t n = 0; n < N; ++n) ref[t * N + n] += static_cast<double>(x[t * K + k]) * w.values[k * N + n];
    for (CpuPath p : paths()) {
      std::vector<float> y(T * N), one(N);
      matmul_t_cpu_path(p, x.data(), T, w.bytes.data(), w.dtype, K, N, y.data());
      check_rel(rel_err(y, ref), 1e-5, dt, p, "matmul_t", __LINE__);
      matmul_t_cpu_path(p, x.data() + 2 * K, 1, w.bytes.data(), w.dtype, K, N, one.data());
      CHECK(same_bits(one.data(), y.data() + 2 * N, N));
    }
  }
}

TEST(rms_norm_matches_reference_with_bf16_weight) {
  const int64_t T = 3, n = 100;
  const auto x = random_floats(T * n, 11, 3.f);
  for (DType dt : kDtypes) {  // bf16 first of all, and the other weight dtypes too
    const StoredWeight w = make_weight(random_floats(n, 12), dt);
    std::vector<float> y(T * n);
    CpuOps().rms_norm(x.data(), n, {w.bytes.data(), dt}, 1e-6f, y.data(), n, T, n);
    for (int64_t t = 0; t < T; ++t) {
      double ss = 0;
      for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[t * n + i]) * x[t * n + i];
      const double inv = 1 / std::sqrt(ss / n + 1e-6);
      for (int64_t i = 0; i < n; ++i) CHECK_NEAR(y[t * n + i], w.values[i] * x[t * n + i] * inv, 1e-5);
    }
  }
}

TEST(embedding_reads_rows_of_every_dtype) {
  const int64_t V = 6, H = 5;
  const auto v = random_floats(V * H, 13);
  const int32_t ids[3] = {4, 0, 4};
  for (DType dt : kDtypes) {
    const StoredWeight w = make_weight(v, dt);
    std::vector<float> y(3 * H);
    CpuOps().embed(ids, 3, {w.bytes.data(), dt}, V, H, y.data());
    for (int t = 0; t < 3; ++t)
      for (int64_t h = 0; h < H; ++h) CHECK_EQ(y[t * H + h], w.values[ids[t] * H + h]);
  }
  const StoredWeight w = make_weight(v, DType::F32);
  const int32_t bad = 6;
  std::vector<float> y(H);
  CHECK_THROWS_WITH(CpuOps().embed(&bad, 1, {w.bytes.data(), DType::F32}, V, H, y.data()), "token id 6");
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
    for (const int64_t pos : {int64_t{0}, int64_t{1}, int64_t{17}, int64_t{3000}, int64_t{70000}}) {
      auto v = random_floats(64, static_cast<uint32_t>(pos + 20));
      const auto ref = hf_rope_reference(v, pos, c);
      std::vector<float> cs, sn;
      rope_cos_sin(table, &pos, 1, cs, sn);
      CpuOps().rope(v.data(), 1, 1, 64, 64, 64, cs.data(), sn.data());
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

namespace {

// One layer of a host KvCache as the attention op reads it, with the block tables of
// `seqs` (step-local sequence i = seqs[i]).
struct CacheView {
  std::vector<int32_t> tables;
  KvLayerView view;
};
CacheView cache_view(KvCache& cache, int layer, const std::vector<int64_t>& seqs) {
  CacheView c;
  int32_t max_blocks = 0;
  for (int64_t s : seqs) max_blocks = std::max<int32_t>(max_blocks, static_cast<int32_t>(cache.block_table(s).size()));
  c.tables.assign(seqs.size() * max_blocks, 0);
  for (size_t i = 0; i < seqs.size(); ++i) {
    const auto& b = cache.block_table(seqs[i]);
    std::copy(b.begin(), b.end(), c.tables.begin() + static_cast<int64_t>(i) * max_blocks);
  }
  c.view.data = cache.block_layer(0, layer);
  c.view.dtype = cache.dtype();
  c.view.block_stride = static_cast<int64_t>(cache.n_layers()) * cache.block_size() * cache.width();
  c.view.block_size = cache.block_size();
  c.view.width = static_cast<int32_t>(cache.width());
  c.view.block_tables = c.tables.data();
  c.view.max_blocks = max_blocks;
  return c;
}

}  // namespace

TEST(mla_absorbed_attention_equals_expanded_keys_and_values) {
  // Plain MLA: k_h = [W_k[h] c_kv, k_pe], v_h = W_v[h] c_kv; attention per head in double,
  // over the cache entries as stored (fp32, or bf16 read back), on every cache element type.
  const int64_t heads = 3, nope = 8, rope = 4, V = 6, R = 16, L = 2;
  const int64_t qd = nope + rope, width = R + rope;
  const int64_t seq_a = 11, seq_b = 12, len_a = 9, len_b = 3;
  for (DType cdt : {DType::F32, DType::BF16}) {
  KvCache cache(L, width, 4, 8, /*host_storage=*/true, cdt);
  CHECK(cache.reserve(seq_a, len_a));
  CHECK(cache.reserve(seq_b, len_b));
  const auto ents = random_floats((len_a + len_b) * width, 31);
  {
    const CacheView all = cache_view(cache, 1, {seq_a, seq_b});
    std::vector<int32_t> s_local, s_pos;
    for (int64_t s = 0; s < len_a + len_b; ++s) {
      s_local.push_back(s < len_a ? 0 : 1);
      s_pos.push_back(static_cast<int32_t>(s < len_a ? s : s - len_a));
    }
    KvLayerView v = all.view;
    CpuOps().kv_write(v, ents.data(), len_a + len_b, s_local.data(), s_pos.data());
  }
  // What the cache holds, as fp32.
  auto stored = [&](int64_t sq, int64_t p, int64_t k) {
    const void* e = cache.entry(1, sq, p);
    return cdt == DType::F32 ? static_cast<const float*>(e)[k] : bf16_to_f32(static_cast<const uint16_t*>(e)[k]);
  };
  for (int64_t k = 0; k < width; ++k) CHECK_EQ(stored(seq_a, 0, k), cdt == DType::F32 ? ents[k] : bf16_to_f32(ewtest::f32_to_bf16(ents[k])));
  const CacheView cv = cache_view(cache, 1, {seq_a, seq_b});
  // Tokens: seq_a at positions 8 and 5, seq_b at position 2 (step-local sequences 0, 0, 1).
  const int64_t seq[3] = {seq_a, seq_a, seq_b}, pos[3] = {8, 5, 2};
  const int32_t local_seq[3] = {0, 0, 1}, pos32[3] = {8, 5, 2};
  const auto q = random_floats(3 * heads * qd, 32);
  MlaShape shape;
  shape.n_heads = heads;
  shape.nope = nope;
  shape.rope = rope;
  shape.v_dim = V;
  shape.kv_rank = R;
  shape.softmax_scale = 0.3f;
  for (DType dt : kDtypes)
    for (CpuPath path : paths()) {
  CpuOps ops(path);
  const StoredWeight kvb = make_weight(random_floats(heads * (nope + V) * R, 30, 0.5f), dt);
  const Weight w_kvb{kvb.bytes.data(), dt};
  std::vector<float> out(3 * heads * V);
  std::vector<uint8_t> ws(ops.mla_workspace_bytes(3, shape, 9));
  ops.mla_attention(q.data(), 3, cv.view, local_seq, pos32, w_kvb, shape, 9, out.data(), ws.data());

  const float* W = kvb.values.data();
  std::vector<double> ref(out.size());
  for (int64_t t = 0; t < 3; ++t)
    for (int64_t h = 0; h < heads; ++h) {
      std::vector<double> sc(pos[t] + 1);
      double mx = -1e300;
      for (int64_t s = 0; s <= pos[t]; ++s) {
        double dot = 0;
        for (int64_t i = 0; i < nope; ++i) {
          double k = 0;
          for (int64_t r = 0; r < R; ++r) k += static_cast<double>(W[(h * (nope + V) + i) * R + r]) * stored(seq[t], s, r);
          dot += q[t * heads * qd + h * qd + i] * k;
        }
        for (int64_t i = 0; i < rope; ++i)
          dot += static_cast<double>(q[t * heads * qd + h * qd + nope + i]) * stored(seq[t], s, R + i);
        sc[s] = dot * 0.3;
        mx = std::max(mx, sc[s]);
      }
      double sum = 0;
      for (auto& v : sc) sum += v = std::exp(v - mx);
      for (int64_t j = 0; j < V; ++j) {
        double o = 0;
        for (int64_t s = 0; s <= pos[t]; ++s) {
          double v = 0;
          for (int64_t r = 0; r < R; ++r) v += static_cast<double>(W[(h * (nope + V) + nope + j) * R + r]) * stored(seq[t], s, r);
          o += sc[s] / sum * v;
        }
        ref[t * heads * V + h * V + j] = o;
      }
    }
  check_rel(rel_err(out, ref), op_tolerance(path, dt, 1e-5), dt, path, "mla_attention", __LINE__);

  // The token at seq_a position 5 alone gives the same bits as inside the batch.
  std::vector<float> one(heads * V);
  ops.mla_attention(q.data() + heads * qd, 1, cv.view, local_seq + 1, pos32 + 1, w_kvb, shape, 9, one.data(), ws.data());
  CHECK(same_bits(one.data(), out.data() + heads * V, heads * V));
    }
  }
}

TEST(mla_attention_long_context_and_wide_tiles_match_reference) {
  // 10 heads (head tiles of 4 + 4 + 2), kv_rank 80 (value tiles of 64 + 16), width 88 (a masked
  // tail), 300 positions (two position blocks), one and three tokens (different head groups):
  // the double reference in absorbed form, and the bits alone == in the batch.
  const int64_t heads = 10, nope = 4, rope = 8, V = 6, R = 80, width = R + rope, qd = nope + rope, n_pos = 300;
  for (DType cdt : {DType::F32, DType::BF16}) {
    KvCache cache(1, width, 16, 20, true, cdt);
    CHECK(cache.reserve(5, n_pos));
    const CacheView cv = cache_view(cache, 0, {5});
    const auto ents = random_floats(n_pos * width, 90);
    std::vector<int32_t> zeros(n_pos, 0), all_pos(n_pos);
    std::iota(all_pos.begin(), all_pos.end(), 0);
    CpuOps().kv_write(cv.view, ents.data(), n_pos, zeros.data(), all_pos.data());
    auto stored = [&](int64_t p, int64_t k) {
      const void* e = cache.entry(0, 5, p);
      return cdt == DType::F32 ? static_cast<const float*>(e)[k] : bf16_to_f32(static_cast<const uint16_t*>(e)[k]);
    };
    const int32_t pos[3] = {299, 150, 0}, seq[3] = {0, 0, 0};
    const auto q = random_floats(3 * heads * qd, 91);
    MlaShape shape;
    shape.n_heads = heads, shape.nope = nope, shape.rope = rope, shape.v_dim = V, shape.kv_rank = R;
    shape.softmax_scale = 0.2f;
    const StoredWeight kvb = make_weight(random_floats(heads * (nope + V) * R, 92, 0.3f), DType::BF16);
    const float* W = kvb.values.data();
    std::vector<double> ref(3 * heads * V);
    for (int64_t t = 0; t < 3; ++t)
      for (int64_t h = 0; h < heads; ++h) {
        std::vector<double> ql(R, 0.0), sc(pos[t] + 1), ol(R, 0.0);
        for (int64_t i = 0; i < nope; ++i)
          for (int64_t r = 0; r < R; ++r) ql[r] += double(W[(h * (nope + V) + i) * R + r]) * q[t * heads * qd + h * qd + i];
        double mx = -1e300, sum = 0;
        for (int64_t p = 0; p <= pos[t]; ++p) {
          double d = 0;
          for (int64_t r = 0; r < R; ++r) d += ql[r] * stored(p, r);
          for (int64_t i = 0; i < rope; ++i) d += double(q[t * heads * qd + h * qd + nope + i]) * stored(p, R + i);
          mx = std::max(mx, sc[p] = d * 0.2);
        }
        for (auto& v : sc) sum += v = std::exp(v - mx);
        for (int64_t p = 0; p <= pos[t]; ++p)
          for (int64_t r = 0; r < R; ++r) ol[r] += sc[p] / sum * stored(p, r);
        for (int64_t j = 0; j < V; ++j) {
          double o = 0;
          for (int64_t r = 0; r < R; ++r) o += double(W[(h * (nope + V) + nope + j) * R + r]) * ol[r];
          ref[t * heads * V + h * V + j] = o;
        }
      }
    for (CpuPath path : paths()) {
      CpuOps ops(path);
      std::vector<float> out(3 * heads * V), one(heads * V);
      std::vector<uint8_t> ws(ops.mla_workspace_bytes(3, shape, n_pos));
      ops.mla_attention(q.data(), 3, cv.view, seq, pos, {kvb.bytes.data(), DType::BF16}, shape, n_pos, out.data(), ws.data());
      check_rel(rel_err(out, ref), op_tolerance(path, DType::BF16, 1e-5), cdt, path, "mla_attention (long)", __LINE__);
      for (int t = 0; t < 3; ++t) {
        ops.mla_attention(q.data() + t * heads * qd, 1, cv.view, seq, pos + t, {kvb.bytes.data(), DType::BF16}, shape,
                          n_pos, one.data(), ws.data());
        CHECK(same_bits(one.data(), out.data() + t * heads * V, heads * V));
      }
    }
  }
}

TEST(matmul_pair_and_accumulate_equal_separate_matmuls_bitwise) {
  // matmul_pair is the two matmuls side by side; accumulate adds the very result matmul gives.
  const int64_t T = 6, Na = 37, Nb = 21, K = 70;
  const auto x = random_floats(T * K, 60);
  for (DType dt : kDtypes)
    for (CpuPath p : paths()) {
      CpuOps ops(p);
      const StoredWeight a = make_weight(random_floats(Na * K, 61), dt), b = make_weight(random_floats(Nb * K, 62), dt);
      std::vector<float> pair(T * (Na + Nb)), ya(T * Na), yb(T * Nb);
      ops.matmul_pair(x.data(), T, {a.bytes.data(), dt}, Na, {b.bytes.data(), dt}, Nb, K, pair.data());
      ops.matmul(x.data(), T, {a.bytes.data(), dt}, Na, K, ya.data());
      ops.matmul(x.data(), T, {b.bytes.data(), dt}, Nb, K, yb.data());
      for (int64_t t = 0; t < T; ++t) {
        CHECK(same_bits(&pair[t * (Na + Nb)], &ya[t * Na], Na));
        CHECK(same_bits(&pair[t * (Na + Nb) + Na], &yb[t * Nb], Nb));
      }
      std::vector<float> acc = random_floats(T * Na, 63), sum = acc;
      ops.matmul(x.data(), T, {a.bytes.data(), dt}, Na, K, acc.data(), /*accumulate=*/true);
      for (int64_t i = 0; i < T * Na; ++i) sum[i] += ya[i];
      CHECK(same_bits(acc.data(), sum.data(), sum.size()));
    }
}

TEST(moe_matches_reference_and_is_batch_independent_every_dtype_and_path) {
  const int64_t H = 24, I = 16, k = 3, T = 7;
  const int S = 10;
  const auto x = random_floats(T * H, 70);
  std::vector<int32_t> slots(T * k);
  std::vector<float> wts = random_floats(T * k, 71);
  for (int64_t i = 0; i < T * k; ++i) slots[i] = static_cast<int32_t>((i * 7 + 3) % S);
  slots[4] = slots[3];  // one token choosing a slot twice still sums both
  for (DType dt : kDtypes)
    for (CpuPath p : paths()) {
      CpuOps ops(p);
      const StoredWeight gate = make_weight(random_floats(S * I * H, 72, 0.5f), dt);
      const StoredWeight up = make_weight(random_floats(S * I * H, 73, 0.5f), dt);
      const StoredWeight down = make_weight(random_floats(S * H * I, 74, 0.5f), dt);
      const MoeWeights mw{gate.bytes.data(), up.bytes.data(), down.bytes.data(), dt, S, H, I};
      std::vector<uint8_t> ws(ops.moe_workspace_bytes(T, k, mw));
      std::vector<float> y(T * H);
      ops.moe(x.data(), T, k, slots.data(), wts.data(), mw, y.data(), false, ws.data());
      std::vector<double> ref(T * H, 0.0);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t j = 0; j < k; ++j) {
          const int sl = slots[t * k + j];
          std::vector<double> h(I);
          for (int64_t i = 0; i < I; ++i) {
            double g = 0, u = 0;
            for (int64_t c = 0; c < H; ++c) {
              g += double(gate.values[(sl * I + i) * H + c]) * x[t * H + c];
              u += double(up.values[(sl * I + i) * H + c]) * x[t * H + c];
            }
            h[i] = g / (1 + std::exp(-g)) * u;
          }
          for (int64_t r = 0; r < H; ++r) {
            double acc = 0;
            for (int64_t i = 0; i < I; ++i) acc += double(down.values[(sl * H + r) * I + i]) * h[i];
            ref[t * H + r] += wts[t * k + j] * acc;
          }
        }
      check_rel(rel_err(y, ref), op_tolerance(p, dt, 1e-5), dt, p, "moe", __LINE__);
      for (int64_t t : {int64_t{0}, int64_t{3}, T - 1}) {
        std::vector<float> one(H);
        std::vector<uint8_t> ws1(ops.moe_workspace_bytes(1, k, mw));
        ops.moe(x.data() + t * H, 1, k, slots.data() + t * k, wts.data() + t * k, mw, one.data(), false, ws1.data());
        CHECK(same_bits(one.data(), y.data() + t * H, H));
      }
      std::vector<float> acc(T * H, 1.f);
      ops.moe(x.data(), T, k, slots.data(), wts.data(), mw, acc.data(), /*accumulate=*/true, ws.data());
      for (int64_t i = 0; i < T * H; ++i) CHECK_NEAR(acc[i], y[i] + 1.0, 1e-5 * (1 + std::fabs(y[i])));
      std::vector<int32_t> bad = slots;
      bad[5] = S;
      CHECK_THROWS_WITH(ops.moe(x.data(), T, k, bad.data(), wts.data(), mw, y.data(), false, ws.data()), "slot 10");
    }
}

TEST(exp_sum_matches_double_exp_on_every_path_and_length) {
  // Softmax's exp(x - max) and its sum (vector exps on avx2 and avx512): every value within
  // 4 ulp-ish of exp in double, the sum within 1e-6; -inf and deep underflow give 0, NaN stays NaN.
  for (CpuPath p : paths()) {
    for (int64_t n : {1, 3, 8, 13, 16, 31, 1000}) {
      std::vector<float> x(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) x[i] = -40.f * static_cast<float>((i * 7919) % 1000) / 1000.f;
      if (n > 3) x[1] = -std::numeric_limits<float>::infinity(), x[2] = -200.f;
      const float mx = 0.25f;
      std::vector<float> e = x;
      const float sum = exp_sum(p, e.data(), n, mx);
      double ref_sum = 0;
      for (int64_t i = 0; i < n; ++i) {
        const double r = std::exp(static_cast<double>(x[i] - mx));  // the kernels subtract in float
        ref_sum += r;
        if (r < 1e-37) CHECK(e[i] >= 0.f && e[i] < 1e-37f);
        else CHECK(std::fabs(e[i] - r) <= 5e-7 * r);
      }
      CHECK(std::fabs(sum - ref_sum) <= 1e-6 * ref_sum);
    }
    std::vector<float> nan_row = {0.f, std::numeric_limits<float>::quiet_NaN(), -1.f};
    exp_sum(p, nan_row.data(), 3, 0.f);
    CHECK(std::isnan(nan_row[1]));
    CHECK(std::fabs(nan_row[2] - std::exp(-1.f)) <= 5e-7f);
  }
}

TEST(elementwise_ops_kv_write_and_argmax) {
  CpuOps ops;
  const int64_t T = 4, D = 9, ld = 20;
  const auto g = random_floats(T * ld, 80, 4.f);
  std::vector<float> out(T * D);
  ops.silu_mul(g.data(), g.data() + 10, ld, out.data(), T, D);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < D; ++i) {
      const double a = g[t * ld + i], b = g[t * ld + 10 + i];
      CHECK_NEAR(out[t * D + i], a / (1 + std::exp(-a)) * b, 1e-5);
    }
  // SiLU on every path (the bf16 paths' vector exp) over the whole range, tails of each length.
  const std::vector<float> wide = {-120.f, -100.f, -88.f, -30.f, -5.5f, -1.f, -1e-3f, 0.f, 1e-3f, 0.75f, 3.f, 17.f, 60.f, 88.f, 100.f, 120.f, -2.f};
  for (CpuPath p : paths())
    for (size_t n = 1; n <= wide.size(); ++n) {
      std::vector<float> up(n, 1.5f), res(n);
      silu_mul_rows(p, wide.data(), up.data(), static_cast<int64_t>(n), res.data());
      for (size_t i = 0; i < n; ++i) {
        const double a = wide[i], want = a / (1 + std::exp(-a)) * 1.5;
        CHECK_NEAR(res[i], want, 2e-6 * std::fabs(want) + 1e-30);  // relative
      }
    }
  std::vector<float> y = random_floats(50, 81), x = random_floats(50, 82), want(50);
  for (int i = 0; i < 50; ++i) want[i] = y[i] + x[i];
  ops.add(y.data(), x.data(), 50);
  CHECK(same_bits(y.data(), want.data(), 50));
  const int32_t rows[3] = {3, 0, 3};
  std::vector<float> gathered(3 * D);
  ops.gather_rows(g.data(), ld, rows, 3, D, gathered.data());
  for (int i = 0; i < 3; ++i) CHECK(same_bits(&gathered[i * D], &g[rows[i] * ld], D));

  // kv_write puts each token's row where the block table says.
  const int32_t width = 5, bs = 2;
  std::vector<float> cache(4 * 2 * bs * width, 0.f);  // 4 blocks x 2 layers
  const int32_t tables[4] = {2, 0, 3, 1};             // sequence 0: blocks 2, 0; sequence 1: 3, 1
  KvLayerView cv{cache.data() + bs * width, 2 * bs * width, bs, width, tables, 2};  // layer 1
  const auto lat = random_floats(3 * width, 83);
  const int32_t seq[3] = {0, 1, 0}, pos[3] = {3, 0, 0};
  ops.kv_write(cv, lat.data(), 3, seq, pos);
  auto at = [&](int block, int slot) { return &cache[(block * 2 + 1) * bs * width + slot * width]; };
  CHECK(same_bits(at(0, 1), &lat[0], width));          // sequence 0 position 3: block 0, slot 1
  CHECK(same_bits(at(3, 0), &lat[width], width));      // sequence 1 position 0: block 3, slot 0
  CHECK(same_bits(at(2, 0), &lat[2 * width], width));  // sequence 0 position 0: block 2, slot 0

  // argmax: first maximum, NaN wins only at id 0; logprob = log softmax there.
  const float nan = NAN;
  std::vector<float> logits = {1.f, 3.f, 3.f, -2.f, 0.f, nan, 5.f, nan, nan, 2.f, 1.f, 0.f};
  int32_t ids[3];
  float lp[3];
  ops.argmax(logits.data(), 3, 4, ids, lp);
  CHECK_EQ(ids[0], 1);
  CHECK_EQ(ids[1], 2);
  CHECK_EQ(ids[2], 0);
  const double z = std::log(std::exp(1.0 - 3) + 2 * std::exp(0.0) + std::exp(-2.0 - 3));
  CHECK_NEAR(lp[0], -z, 1e-6);
}

TEST(membw_measures_a_positive_bandwidth) {
  const double gbs = measure_read_bandwidth_gbs(size_t{8} << 20, 2);
  CHECK(gbs > 0.1 && gbs < 10000);
}

// The CUDA kernels (kernels/cuda/ops_cuda.h) against CPU references on fresh random inputs.
// Outputs are poisoned with NaN before each launch, so an element a kernel fails to write
// shows up as NaN. Without a device (or without libcuda) every test prints a skip line and passes.
#ifdef EW_WITH_CUDA
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <sstream>
#include <vector>

#include "engine/config.h"
#include "engine/sampler.h"
#include "kernels/cpu/norm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/rope_tables.h"
#include "test.h"

using namespace ew;
using cuda::DeviceBuffer;

namespace {

template <typename... A>
[[noreturn]] void test_fail(int line, const A&... a) {
  std::ostringstream os;
  (os << ... << a);
  ewtest::fail_at(__FILE__, line, os.str());
}

bool have_device() {
  if (cuda::device_available()) return true;
  std::printf("     skipped: no CUDA device\n");
  return false;
}

uint16_t to_bf16(float f) {  // round to nearest even
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fff + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}
float from_bf16(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

std::vector<float> randn(size_t n, std::mt19937& rng, float scale = 1.f) {
  std::normal_distribution<float> nd(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

// Weights as stored on the device (bf16 or f32) plus the exact fp32 values the kernel sees.
struct Weights {
  DeviceBuffer dev;
  std::vector<float> exact;
  DType dtype;
};
Weights make_weights(size_t n, DType dt, std::mt19937& rng, float scale) {
  Weights w{DeviceBuffer(), randn(n, rng, scale), dt};
  if (dt == DType::BF16) {
    std::vector<uint16_t> h(n);
    for (size_t i = 0; i < n; ++i) h[i] = to_bf16(w.exact[i]), w.exact[i] = from_bf16(h[i]);
    w.dev = DeviceBuffer(n * 2);
    w.dev.upload(h.data(), n * 2);
  } else {
    w.dev = DeviceBuffer(n * 4);
    w.dev.upload(w.exact.data(), n * 4);
  }
  return w;
}

template <typename T>
DeviceBuffer upload(const std::vector<T>& v) {
  DeviceBuffer b(v.size() * sizeof(T));
  b.upload(v.data(), v.size() * sizeof(T));
  return b;
}
DeviceBuffer poisoned(size_t floats) {
  DeviceBuffer b(floats * 4);
  b.fill_bytes(0xFF);
  return b;
}
template <typename T>
std::vector<T> download(const DeviceBuffer& b, size_t n) {
  std::vector<T> v(n);
  b.download(v.data(), n * sizeof(T));
  return v;
}

// max |got - ref| / max |ref|; fails on any NaN / Inf in got.
double rel_error(const std::vector<float>& got, const std::vector<double>& ref) {
  double num = 0, den = 1e-12;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(got[i])) test_fail(__LINE__, "element ", i, " is not finite (", got[i], "): not written or overflow");
    num = std::max(num, std::fabs(got[i] - ref[i]));
    den = std::max(den, std::fabs(ref[i]));
  }
  return num / den;
}

}  // namespace

TEST(cuda_probe_never_aborts) {
  const bool a = cuda::device_available();
  CHECK_EQ(a, cuda::device_available());  // cached, stable
  if (!a) {
    CHECK_THROWS_WITH(cuda::device_description(), "no device");
    std::printf("     skipped: no CUDA device (probe answered false)\n");
    return;
  }
  CHECK(cuda::device_description().find("sm_") != std::string::npos);
}

TEST(cuda_matmul_matches_cpu) {
  if (!have_device()) return;
  std::mt19937 rng(11);
  struct Shape { int64_t T, N, K; };
  for (DType dt : {DType::BF16, DType::F32}) {
    for (Shape s : {Shape{1, 96, 256}, Shape{3, 40, 2048}, Shape{8, 130, 520}, Shape{17, 64, 100},
                    Shape{64, 33, 512}, Shape{65, 70, 96}, Shape{200, 130, 264}}) {
      Weights w = make_weights(s.N * s.K, dt, rng, 0.05f);
      std::vector<float> x = randn(s.T * s.K, rng);
      DeviceBuffer dx = upload(x), dy = poisoned(s.T * s.N);
      cuda::matmul(dx.as<float>(), s.T, w.dev.data(), dt, s.N, s.K, dy.as<float>(), nullptr);
      std::vector<double> ref(s.T * s.N);
      for (int64_t t = 0; t < s.T; ++t)
        for (int64_t n = 0; n < s.N; ++n) {
          double acc = 0;
          for (int64_t k = 0; k < s.K; ++k) acc += double(x[t * s.K + k]) * w.exact[n * s.K + k];
          ref[t * s.N + n] = acc;
        }
      const double err = rel_error(download<float>(dy, ref.size()), ref);
      if (!(err < 1e-2)) test_fail(__LINE__, "matmul T=", s.T, " N=", s.N, " K=", s.K, " rel error ", err);
      // accumulate mode adds onto y
      cuda::matmul(dx.as<float>(), s.T, w.dev.data(), dt, s.N, s.K, dy.as<float>(), nullptr, true);
      for (auto& r : ref) r *= 2;
      CHECK(rel_error(download<float>(dy, ref.size()), ref) < 1e-2);
    }
  }
}

TEST(cuda_gemv_token_result_independent_of_batch) {
  if (!have_device()) return;
  std::mt19937 rng(12);
  const int64_t N = 77, K = 1024, T = 37;
  Weights w = make_weights(N * K, DType::BF16, rng, 0.05f);
  std::vector<float> x = randn(T * K, rng);
  DeviceBuffer dx = upload(x), dy = poisoned(T * N), d1 = poisoned(N);
  cuda::matmul(dx.as<float>(), T, w.dev.data(), DType::BF16, N, K, dy.as<float>(), nullptr);
  const auto all = download<float>(dy, T * N);
  for (int64_t t : {int64_t(0), int64_t(5), T - 1}) {
    cuda::matmul(dx.as<float>() + t * K, 1, w.dev.data(), DType::BF16, N, K, d1.as<float>(), nullptr);
    const auto one = download<float>(d1, N);
    CHECK(std::memcmp(one.data(), &all[t * N], N * 4) == 0);
  }
}

// matmul_exact: the GEMV for T > 64 too (tokens in groups of 64 on gridDim.y): fp32-accurate
// where matmul's tensor-core path rounds to bf16, and every token bitwise equal to its T = 1 result.
TEST(cuda_matmul_exact_is_fp32_for_large_batches) {
  if (!have_device()) return;
  std::mt19937 rng(22);
  for (int64_t K : {int64_t(512), int64_t(100)}) {  // the 16-byte path and the scalar fallback
    const int64_t N = 40, T = 200;
    Weights w = make_weights(N * K, DType::F32, rng, 0.05f);
    std::vector<float> x = randn(T * K, rng);
    DeviceBuffer dx = upload(x), dy = poisoned(T * N), d1 = poisoned(N);
    cuda::matmul_exact(dx.as<float>(), T, w.dev.data(), DType::F32, N, K, dy.as<float>(), nullptr);
    const auto all = download<float>(dy, T * N);
    std::vector<double> ref(T * N);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t n = 0; n < N; ++n) {
        double acc = 0;
        for (int64_t k = 0; k < K; ++k) acc += double(x[t * K + k]) * w.exact[n * K + k];
        ref[t * N + n] = acc;
      }
    const double err = rel_error(all, ref);
    if (!(err < 1e-5)) test_fail(__LINE__, "matmul_exact K=", K, " rel error ", err);
    for (int64_t t : {int64_t(0), int64_t(63), int64_t(64), int64_t(130), T - 1}) {
      cuda::matmul(dx.as<float>() + t * K, 1, w.dev.data(), DType::F32, N, K, d1.as<float>(), nullptr);
      const auto one = download<float>(d1, N);
      CHECK(std::memcmp(one.data(), &all[t * N], N * 4) == 0);
    }
  }
}

TEST(cuda_rmsnorm_and_rope_match_cpu_kernels) {
  if (!have_device()) return;
  std::mt19937 rng(13);
  const int64_t T = 5, width = 576, R = 512, rope_dim = 64;
  Weights w = make_weights(R, DType::BF16, rng, 1.f);
  std::vector<float> x = randn(T * width, rng);
  // RMSNorm in place on the c_kv part of [T, 576] rows, as the forward pass does.
  DeviceBuffer dx = upload(x);
  cuda::rmsnorm(dx.as<float>(), width, w.dev.data(), DType::BF16, dx.as<float>(), width, T, R, 1e-6f, nullptr);
  std::vector<uint16_t> wb(R);
  for (int64_t i = 0; i < R; ++i) wb[i] = to_bf16(w.exact[i]);
  std::vector<float> ref = x;
  rms_norm_cpu(ref.data(), width, T, R, TensorView{wb.data(), DType::BF16, {R}}, 1e-6f, ref.data(), width);
  const auto got = download<float>(dx, T * width);
  std::vector<double> refd(ref.begin(), ref.end());
  CHECK(rel_error(got, refd) < 1e-5);

  // RoPE on 3 heads of 192 (rope part at +128) with yarn tables of the V2-Lite config.
  ModelConfig cfg;
  cfg.qk_rope_head_dim = rope_dim;
  cfg.qk_nope_head_dim = 128;
  cfg.rope_theta = 10000;
  cfg.rope_scaling = RopeScaling::Yarn;
  cfg.rope_factor = 40;
  cfg.rope_original_max_position = 4096;
  cfg.rope_mscale = cfg.rope_mscale_all_dim = 0.707;
  const RopeTable table = make_rope_table(cfg);
  const int64_t heads = 3, qd = 192;
  std::vector<float> q = randn(T * heads * qd, rng);
  std::vector<int64_t> pos = {0, 1, 7, 4095, 50000};
  std::vector<float> cs, sn;
  rope_cos_sin(table, pos.data(), T, cs, sn);
  DeviceBuffer dq = upload(q), dc = upload(cs), ds = upload(sn);
  cuda::rope(dq.as<float>() + 128, T, heads, heads * qd, qd, rope_dim, dc.as<float>(), ds.as<float>(), nullptr);
  std::vector<float> qref = q;
  for (int64_t t = 0; t < T; ++t) apply_rope_cpu(&qref[t * heads * qd + 128], heads, qd, pos[t], table);
  const auto qgot = download<float>(dq, q.size());
  CHECK(std::memcmp(qgot.data(), qref.data(), q.size() * 4) == 0);  // bit-identical to the CPU kernel
}

TEST(cuda_embed_add_silu_mul_match_reference) {
  if (!have_device()) return;
  std::mt19937 rng(14);
  const int64_t V = 50, D = 72, T = 6;
  Weights table = make_weights(V * D, DType::BF16, rng, 1.f);
  std::vector<int32_t> ids = {3, 0, 49, 3, 17, 8};
  DeviceBuffer did = upload(ids), dy = poisoned(T * D);
  cuda::embed(did.as<int32_t>(), T, table.dev.data(), DType::BF16, V, D, dy.as<float>(), nullptr);
  auto y = download<float>(dy, T * D);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < D; ++i) CHECK_EQ(y[t * D + i], table.exact[ids[t] * D + i]);

  std::vector<float> a = randn(T * D, rng), b = randn(T * D, rng);
  DeviceBuffer da = upload(a), db = upload(b);
  cuda::add_inplace(da.as<float>(), db.as<float>(), T * D, nullptr);
  auto sum = download<float>(da, T * D);
  for (int64_t i = 0; i < T * D; ++i) CHECK_EQ(sum[i], a[i] + b[i]);

  // gate|up fused rows [T, 2D]: out = silu(gate) * up
  std::vector<float> gu = randn(T * 2 * D, rng, 3.f);
  DeviceBuffer dgu = upload(gu), dout = poisoned(T * D);
  cuda::silu_mul(dgu.as<float>(), dgu.as<float>() + D, 2 * D, dout.as<float>(), T, D, nullptr);
  auto out = download<float>(dout, T * D);
  std::vector<double> ref(T * D);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < D; ++i) {
      const double g = gu[t * 2 * D + i], u = gu[t * 2 * D + D + i];
      ref[t * D + i] = g / (1 + std::exp(-g)) * u;
    }
  CHECK(rel_error(out, ref) < 1e-4);
}

TEST(cuda_gather_rows_copies_selected_rows) {
  if (!have_device()) return;
  std::mt19937 rng(19);
  // Last-token rows of a [T, ld] activation (D < ld: a prefix of each row), repeats allowed.
  const int64_t T = 9, ld = 40, D = 33;
  std::vector<float> x = randn(T * ld, rng);
  std::vector<int32_t> rows = {8, 0, 3, 3, 7};
  const int64_t n = rows.size();
  DeviceBuffer dx = upload(x), dr = upload(rows), dy = poisoned(n * D);
  cuda::gather_rows(dx.as<float>(), ld, dr.as<int32_t>(), n, D, dy.as<float>(), nullptr);
  const auto y = download<float>(dy, n * D);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t d = 0; d < D; ++d) CHECK_EQ(y[i * D + d], x[rows[i] * ld + d]);
  // More rows than gridDim.y allows (65535): the kernel strides rows over the grid.
  const int64_t big = 70000;
  std::vector<int32_t> many(big);
  for (int64_t i = 0; i < big; ++i) many[i] = static_cast<int32_t>((i * 7) % T);
  DeviceBuffer dm = upload(many), dyb = poisoned(big * 2);
  cuda::gather_rows(dx.as<float>(), ld, dm.as<int32_t>(), big, 2, dyb.as<float>(), nullptr);
  const auto yb = download<float>(dyb, big * 2);
  for (int64_t i = 0; i < big; ++i) {
    CHECK_EQ(yb[i * 2], x[many[i] * ld]);
    CHECK_EQ(yb[i * 2 + 1], x[many[i] * ld + 1]);
  }
}

TEST(cuda_embed_and_rope_past_the_grid_y_limit) {
  if (!have_device()) return;
  // T > 65535 tokens: both kernels put tokens on gridDim.y and must stride over it.
  const int64_t T = 70000, V = 5, D = 4;
  std::vector<float> table(V * D);
  for (int64_t i = 0; i < V * D; ++i) table[i] = static_cast<float>(i);
  std::vector<int32_t> ids(T);
  for (int64_t t = 0; t < T; ++t) ids[t] = static_cast<int32_t>(t % V);
  DeviceBuffer dt = upload(table), di = upload(ids), dy = poisoned(T * D);
  cuda::embed(di.as<int32_t>(), T, dt.data(), DType::F32, V, D, dy.as<float>(), nullptr);
  const auto y = download<float>(dy, T * D);
  for (int64_t t = 0; t < T; t += 997) CHECK_EQ(y[t * D + 3], table[ids[t] * D + 3]);
  CHECK_EQ(y[(T - 1) * D], table[ids[T - 1] * D]);
  // RoPE with cos = 0, sin = 1 on every token: (x0, x1) -> (-x1, x0).
  std::vector<float> cs(T, 0.f), sn(T, 1.f), x(T * 2);
  for (int64_t i = 0; i < T * 2; ++i) x[i] = static_cast<float>(i % 1000) + 1.f;
  DeviceBuffer dx = upload(x), dc = upload(cs), ds = upload(sn);
  cuda::rope(dx.as<float>(), T, 1, 2, 2, 2, dc.as<float>(), ds.as<float>(), nullptr);
  const auto r = download<float>(dx, T * 2);
  for (int64_t t : {int64_t(0), int64_t(65535), T - 1}) {
    CHECK_EQ(r[t * 2], -x[t * 2 + 1]);
    CHECK_EQ(r[t * 2 + 1], x[t * 2]);
  }
}

TEST(cuda_moe_align_groups_every_entry_once) {
  if (!have_device()) return;
  std::mt19937 rng(15);
  const int S = 164;  // 64 base + 100 adapter slots: past the 64-expert fast paths
  for (int64_t n : {6, 48, 600, 3000}) {
    for (int B : {8, 32}) {
      std::vector<int32_t> slots(n);
      for (auto& s : slots) s = static_cast<int32_t>(rng() % (S + 8)) - 4;  // some out of range: skipped
      const int64_t padded = cuda::moe_max_padded(n, 1, S, B);
      DeviceBuffer ds = upload(slots), dsorted(padded * 4), dblock(padded / B * 4), dn(4);
      cuda::moe_align(ds.as<int32_t>(), n, S, B, dsorted.as<int32_t>(), dblock.as<int32_t>(), dn.as<int32_t>(),
                      nullptr);
      const int32_t n_blocks = download<int32_t>(dn, 1)[0];
      const auto sorted = download<int32_t>(dsorted, padded);
      const auto block = download<int32_t>(dblock, padded / B);
      CHECK(n_blocks <= padded / B);
      std::vector<int> seen(n, 0);
      for (int32_t b = 0; b < n_blocks; ++b) {
        CHECK(block[b] >= 0 && block[b] < S);
        if (b > 0) CHECK(block[b] >= block[b - 1]);  // slots in ascending order
        for (int i = 0; i < B; ++i) {
          const int32_t e = sorted[b * B + i];
          if (e == n) continue;  // padding
          CHECK(e >= 0 && e < n);
          CHECK_EQ(slots[e], block[b]);
          ++seen[e];
        }
      }
      for (int64_t e = 0; e < n; ++e) CHECK_EQ(seen[e], (slots[e] >= 0 && slots[e] < S) ? 1 : 0);
    }
  }
}

TEST(cuda_moe_forward_matches_reference_and_is_batch_independent) {
  if (!have_device()) return;
  std::mt19937 rng(16);
  const int64_t H = 64, I = 48, k = 6;
  const int S = 164;
  for (DType dt : {DType::BF16, DType::F32}) {
    Weights gate = make_weights(S * I * H, dt, rng, 0.1f), up = make_weights(S * I * H, dt, rng, 0.1f),
            down = make_weights(S * H * I, dt, rng, 0.1f);
    cuda::MoeWeights mw{gate.dev.data(), up.dev.data(), down.dev.data(), dt, S, H, I};
    for (int64_t T : {1, 5, 40, 450}) {  // 450 * 6 >= 16 * 164: the 32-entry groups
      std::vector<float> x = randn(T * H, rng), wts(T * k);
      std::vector<int32_t> slots(T * k);
      for (int64_t i = 0; i < T * k; ++i) {
        slots[i] = static_cast<int32_t>(rng() % S);
        wts[i] = std::uniform_real_distribution<float>(0.f, 1.f)(rng);
      }
      slots[0] = -1;  // an unresolved slot contributes nothing
      DeviceBuffer dx = upload(x), ds = upload(slots), dw = upload(wts), dy = poisoned(T * H);
      DeviceBuffer ws(cuda::moe_workspace_bytes(T, k, S, H, I));
      ws.fill_bytes(0xFF);
      cuda::moe_forward(dx.as<float>(), T, k, ds.as<int32_t>(), dw.as<float>(), mw, dy.as<float>(), false, ws.data(),
                        nullptr);
      const auto y = download<float>(dy, T * H);
      std::vector<double> ref(T * H, 0.0);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t j = 0; j < k; ++j) {
          const int s = slots[t * k + j];
          if (s < 0) continue;
          std::vector<double> h(I);
          for (int64_t i = 0; i < I; ++i) {
            double g = 0, u = 0;
            for (int64_t c = 0; c < H; ++c) {
              g += double(gate.exact[(s * I + i) * H + c]) * x[t * H + c];
              u += double(up.exact[(s * I + i) * H + c]) * x[t * H + c];
            }
            h[i] = g / (1 + std::exp(-g)) * u;
          }
          for (int64_t r = 0; r < H; ++r) {
            double acc = 0;
            for (int64_t i = 0; i < I; ++i) acc += double(down.exact[(s * H + r) * I + i]) * h[i];
            ref[t * H + r] += wts[t * k + j] * acc;
          }
        }
      const double err = rel_error(y, ref);
      if (!(err < 1e-2)) test_fail(__LINE__, "moe_forward T=", T, " rel error ", err);
      // Token T-1 alone gives the same bits as inside the batch.
      DeviceBuffer d1 = poisoned(H);
      DeviceBuffer ws1(cuda::moe_workspace_bytes(1, k, S, H, I));
      cuda::moe_forward(dx.as<float>() + (T - 1) * H, 1, k, ds.as<int32_t>() + (T - 1) * k,
                        dw.as<float>() + (T - 1) * k, mw, d1.as<float>(), false, ws1.data(), nullptr);
      const auto one = download<float>(d1, H);
      CHECK(std::memcmp(one.data(), &y[(T - 1) * H], H * 4) == 0);
    }
  }
}

TEST(cuda_mla_attention_matches_plain_formulation) {
  if (!have_device()) return;
  std::mt19937 rng(17);
  // 18 heads: a full group of 16 in the core kernel plus a partial one.
  const int heads = 18, nope = 32, rope = 16, vd = 24, R = 64, width = R + rope, bs = 4, n_blocks = 12;
  const int max_blocks = 6;
  Weights wkvb = make_weights(static_cast<size_t>(heads) * (nope + vd) * R, DType::BF16, rng, 0.2f);
  // Two sequences with scattered blocks; the cache is filled through kv_write.
  std::vector<int32_t> tables = {7, 2, 9, 0, -1, -1, 3, 11, 5, 1, 6, 4};
  const int len[2] = {14, 21};
  std::vector<float> latent;
  std::vector<int32_t> wseq, wpos;
  for (int s = 0; s < 2; ++s)
    for (int p = 0; p < len[s]; ++p) {
      auto row = randn(width, rng);
      latent.insert(latent.end(), row.begin(), row.end());
      wseq.push_back(s), wpos.push_back(p);
    }
  DeviceBuffer dcache = poisoned(static_cast<size_t>(n_blocks) * bs * width), dtables = upload(tables);
  cuda::LatentCacheView cv{dcache.as<float>(), bs * width, bs, width, dtables.as<int32_t>(), max_blocks};
  DeviceBuffer dlat = upload(latent), dws = upload(wseq), dwp = upload(wpos);
  cuda::kv_write(cv, dlat.as<float>(), static_cast<int64_t>(wseq.size()), dws.as<int32_t>(), dwp.as<int32_t>(),
                 nullptr);
  auto entry = [&](int s, int p) { return &latent[(s == 0 ? p : len[0] + p) * width]; };

  // Queries: a prefill-like run of seq 0 and decode-like last tokens.
  std::vector<int32_t> qseq = {0, 0, 0, 1, 1}, qpos = {0, 5, 13, 20, 9};
  const int64_t T = qseq.size();
  std::vector<float> q = randn(T * heads * (nope + rope), rng);
  const float scale = 0.125f;
  cuda::MlaShape shape{heads, nope, rope, vd, R, scale};
  const int64_t max_ctx = 21;
  DeviceBuffer dq = upload(q), dqs = upload(qseq), dqp = upload(qpos), dout = poisoned(T * heads * vd);
  DeviceBuffer ws(cuda::mla_workspace_bytes(T, shape, max_ctx));
  cuda::mla_attention(dq.as<float>(), T, cv, dqs.as<int32_t>(), dqp.as<int32_t>(), wkvb.dev.data(), DType::BF16,
                      shape, max_ctx, dout.as<float>(), ws.data(), nullptr);
  const auto got = download<float>(dout, T * heads * vd);

  // Plain MLA: expand k_nope and v per head from c_kv, then ordinary attention.
  std::vector<double> ref(T * heads * vd, 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int h = 0; h < heads; ++h) {
      const float* qv = &q[(t * heads + h) * (nope + rope)];
      const int n = qpos[t] + 1;
      std::vector<double> sc(n), vs(static_cast<size_t>(n) * vd);
      double mx = -1e300;
      for (int p = 0; p < n; ++p) {
        const float* e = entry(qseq[t], p);
        double s = 0;
        for (int d = 0; d < nope; ++d) {
          double kn = 0;
          for (int c = 0; c < R; ++c) kn += double(wkvb.exact[(h * (nope + vd) + d) * R + c]) * e[c];
          s += qv[d] * kn;
        }
        for (int d = 0; d < rope; ++d) s += double(qv[nope + d]) * e[R + d];
        sc[p] = s * scale;
        mx = std::max(mx, sc[p]);
        for (int d = 0; d < vd; ++d) {
          double v = 0;
          for (int c = 0; c < R; ++c) v += double(wkvb.exact[(h * (nope + vd) + nope + d) * R + c]) * e[c];
          vs[p * vd + d] = v;
        }
      }
      double sum = 0;
      for (int p = 0; p < n; ++p) sum += sc[p] = std::exp(sc[p] - mx);
      for (int p = 0; p < n; ++p)
        for (int d = 0; d < vd; ++d) ref[(t * heads + h) * vd + d] += sc[p] / sum * vs[p * vd + d];
    }
  const double err = rel_error(got, ref);
  if (!(err < 1e-3)) test_fail(__LINE__, "mla_attention rel error ", err);
}

// Long contexts: with few (token, head group) blocks the core kernel splits each token's
// positions over blocks and a reduce kernel merges the splits; context lengths around the
// 64-position chunk and the 128-position minimum split, against the plain formulation.
TEST(cuda_mla_attention_position_splits_match_plain_formulation) {
  if (!have_device()) return;
  std::mt19937 rng(21);
  const int heads = 18, nope = 32, rope = 16, vd = 24, R = 64, width = R + rope, bs = 16, len = 1000;
  const int n_blocks = (len + bs - 1) / bs;
  Weights wkvb = make_weights(static_cast<size_t>(heads) * (nope + vd) * R, DType::BF16, rng, 0.2f);
  std::vector<int32_t> table(n_blocks);
  for (int b = 0; b < n_blocks; ++b) table[b] = n_blocks - 1 - b;  // blocks in reverse physical order
  std::vector<float> latent = randn(static_cast<size_t>(len) * width, rng);
  std::vector<int32_t> wseq(len, 0), wpos(len);
  std::iota(wpos.begin(), wpos.end(), 0);
  DeviceBuffer dcache = poisoned(static_cast<size_t>(n_blocks) * bs * width), dtab = upload(table);
  cuda::LatentCacheView cv{dcache.as<float>(), bs * width, bs, width, dtab.as<int32_t>(), n_blocks};
  DeviceBuffer dlat = upload(latent), dws = upload(wseq), dwp = upload(wpos);
  cuda::kv_write(cv, dlat.as<float>(), len, dws.as<int32_t>(), dwp.as<int32_t>(), nullptr);
  // k_nope and v of every (position, head), expanded once in double.
  std::vector<double> kn(static_cast<size_t>(len) * heads * nope), vv(static_cast<size_t>(len) * heads * vd);
  for (int p = 0; p < len; ++p)
    for (int h = 0; h < heads; ++h)
      for (int d = 0; d < nope + vd; ++d) {
        double acc = 0;
        for (int c = 0; c < R; ++c) acc += double(wkvb.exact[(h * (nope + vd) + d) * R + c]) * latent[p * width + c];
        if (d < nope) kn[(p * heads + h) * nope + d] = acc;
        else vv[(p * heads + h) * vd + d - nope] = acc;
      }
  const float scale = 0.1f;
  cuda::MlaShape shape{heads, nope, rope, vd, R, scale};
  auto run_and_check = [&](const std::vector<int32_t>& qpos, int64_t max_ctx, bool want_split) {
    const int64_t T = qpos.size();
    CHECK_EQ(cuda::mla_position_splits(T, shape, max_ctx) > 1, want_split);
    std::vector<int32_t> qseq(T, 0);
    std::vector<float> q = randn(T * heads * (nope + rope), rng);
    DeviceBuffer dq = upload(q), dqs = upload(qseq), dqp = upload(qpos), dout = poisoned(T * heads * vd);
    DeviceBuffer ws(cuda::mla_workspace_bytes(T, shape, max_ctx));
    ws.fill_bytes(0xFF);
    cuda::mla_attention(dq.as<float>(), T, cv, dqs.as<int32_t>(), dqp.as<int32_t>(), wkvb.dev.data(), DType::BF16,
                        shape, max_ctx, dout.as<float>(), ws.data(), nullptr);
    const auto got = download<float>(dout, T * heads * vd);
    std::vector<double> ref(T * heads * vd, 0.0);
    for (int64_t t = 0; t < T; ++t)
      for (int h = 0; h < heads; ++h) {
        const float* qv = &q[(t * heads + h) * (nope + rope)];
        const int n = qpos[t] + 1;
        std::vector<double> sc(n);
        double mx = -1e300, sum = 0;
        for (int p = 0; p < n; ++p) {
          double sp = 0;
          for (int d = 0; d < nope; ++d) sp += qv[d] * kn[(p * heads + h) * nope + d];
          for (int d = 0; d < rope; ++d) sp += double(qv[nope + d]) * latent[p * width + R + d];
          sc[p] = sp * scale;
          mx = std::max(mx, sc[p]);
        }
        for (int p = 0; p < n; ++p) sum += sc[p] = std::exp(sc[p] - mx);
        for (int p = 0; p < n; ++p)
          for (int d = 0; d < vd; ++d) ref[(t * heads + h) * vd + d] += sc[p] / sum * vv[(p * heads + h) * vd + d];
      }
    const double err = rel_error(got, ref);
    if (!(err < 1e-3)) test_fail(__LINE__, "mla_attention T=", T, " max_ctx=", max_ctx, " rel error ", err);
  };
  const std::vector<int32_t> lengths_minus_1 = {0, 62, 63, 64, 127, 128, 300, 999};
  run_and_check(lengths_minus_1, len, true);       // 16 blocks: 7 splits of >= 143 positions
  run_and_check({999}, 4096, true);                // batch-1 decode: 32 splits, most past the context
  run_and_check({64}, 4096, true);                 // a short context under many splits: one holds it all
  std::vector<int32_t> many(70);                   // 140 blocks: no split
  for (auto& p : many) p = static_cast<int32_t>(rng() % len);
  many[0] = 0, many[1] = len - 1;
  run_and_check(many, len, false);
}

// Rows of -inf and rows with NaNs still give an id in range, the one the CPU sampler picks
// (all -inf: 0; a NaN not at id 0 is never chosen), also when V < the block size.
TEST(cuda_argmax_degenerate_rows_match_cpu_sampler) {
  if (!have_device()) return;
  std::mt19937 rng(20);
  for (int64_t V : {int64_t(7), int64_t(100), int64_t(3000)}) {
    const int64_t rows = 5;
    std::vector<float> logits = randn(rows * V, rng);
    for (int64_t i = 0; i < V; ++i) logits[i] = -INFINITY;            // row 0: all -inf
    logits[1 * V + V / 2] = NAN;                                       // row 1: a NaN mid-row
    logits[1 * V + V - 1] = 100.f;
    for (int64_t i = 0; i < V; ++i) logits[2 * V + i] = -FLT_MAX;      // row 2: all -FLT_MAX
    logits[3 * V + 1] = NAN, logits[3 * V + V - 1] = NAN;              // row 3: NaNs, max elsewhere
    logits[4 * V + 0] = NAN, logits[4 * V + V - 1] = 100.f;            // row 4: NaN at id 0 sticks
    DeviceBuffer dl = upload(logits), did(rows * 4);
    did.fill_bytes(0xFF);
    cuda::argmax_rows(dl.as<float>(), rows, V, did.as<int32_t>(), nullptr, nullptr);
    const auto ids = download<int32_t>(did, rows);
    SamplingParams greedy;
    for (int64_t r = 0; r < rows; ++r) {
      const int32_t want = sample_token(&logits[r * V], V, greedy, 0);
      if (ids[r] != want) test_fail(__LINE__, "argmax V=", V, " row ", r, ": got ", ids[r], ", CPU sampler ", want);
    }
  }
}

TEST(cuda_argmax_ties_to_lower_id_and_logprob) {
  if (!have_device()) return;
  std::mt19937 rng(18);
  const int64_t V = 102400, rows = 3;
  std::vector<float> logits = randn(rows * V, rng, 2.f);
  logits[0 * V + 500] = logits[0 * V + 90000] = 50.f;   // tie: 500 wins
  logits[1 * V + V - 1] = 40.f;                          // last id
  logits[2 * V + 0] = logits[2 * V + 1] = 30.f;          // tie at the start: 0 wins
  DeviceBuffer dl = upload(logits), did(rows * 4), dlp = poisoned(rows);
  did.fill_bytes(0xFF);
  cuda::argmax_rows(dl.as<float>(), rows, V, did.as<int32_t>(), dlp.as<float>(), nullptr);
  const auto ids = download<int32_t>(did, rows);
  const auto lp = download<float>(dlp, rows);
  CHECK_EQ(ids[0], 500);
  CHECK_EQ(ids[1], static_cast<int32_t>(V - 1));
  CHECK_EQ(ids[2], 0);
  for (int64_t r = 0; r < rows; ++r) {
    double mx = -1e300, sum = 0;
    for (int64_t i = 0; i < V; ++i) mx = std::max(mx, double(logits[r * V + i]));
    for (int64_t i = 0; i < V; ++i) sum += std::exp(logits[r * V + i] - mx);
    CHECK_NEAR(lp[r], logits[r * V + ids[r]] - mx - std::log(sum), 1e-4);
  }
}

#endif  // EW_WITH_CUDA

// Every CUDA op (kernels/cuda/cuda_ops.h) against its CPU twin (kernels/cpu/cpu_ops.h) on
// the same fresh random inputs, over every weight dtype, plus the CUDA-only properties
// (batch independence of the GEMV paths, grid limits, degenerate rows). Outputs are
// poisoned with NaN before each launch, so an element a kernel fails to write shows up.
// Bounds: bitwise where both sides compute the same operations (embed, rope, add, gather,
// kv_write, argmax ids); 1e-5 relative for fp32 dot products of different order (GEMV
// matmul, matmul_exact, rms_norm); 1e-4 where the GPU's fast exp enters (silu_mul, moe,
// attention's softmax: about 1e-6 is expected); 1e-2 for the T > 64 tensor-core matmul,
// whose activations are rounded to bf16 (2^-9 relative per element).
// Without a device every test skips (EW_REQUIRE_CUDA=1 turns that into a failure).
#ifdef EW_WITH_CUDA
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "cuda_fixtures.h"
#include "engine/rope_config.h"
#include "engine/sampler.h"
#include "kernel_fixtures.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/rope_rows.h"
#include "test.h"
#include "util/cuda/cuda_util.h"

using namespace ew;
using cuda::DeviceBuffer;

namespace {

const DType kDtypes[] = {DType::F32, DType::BF16, DType::F16};

template <typename... A>
[[noreturn]] void test_fail(int line, const A&... a) {
  std::ostringstream os;
  (os << ... << a);
  ewtest::fail_at(__FILE__, line, os.str());
}

std::vector<float> randn(size_t n, std::mt19937& rng, float scale = 1.f) {
  std::normal_distribution<float> nd(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

// A weight stored as dt on the host (the CPU twin reads it) and on the device, plus the
// exact fp32 values its bits mean.
struct Weights {
  ewtest::StoredWeight host;
  DeviceBuffer dev;
  Weight cpu() const { return {host.bytes.data(), host.dtype}; }
  Weight gpu() const { return {dev.data(), host.dtype}; }
  const std::vector<float>& exact() const { return host.values; }
};
Weights make_weights(size_t n, DType dt, std::mt19937& rng, float scale) {
  Weights w;
  w.host = ewtest::make_weight(randn(n, rng, scale), dt);
  w.dev = DeviceBuffer(w.host.bytes.size());
  w.dev.upload(w.host.bytes.data(), w.host.bytes.size());
  return w;
}

template <typename T>
DeviceBuffer upload(const std::vector<T>& v) {
  DeviceBuffer b(std::max<size_t>(1, v.size()) * sizeof(T));
  if (!v.empty()) b.upload(v.data(), v.size() * sizeof(T));
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
  EW_CUDA_CHECK(cudaDeviceSynchronize());
  b.download(v.data(), n * sizeof(T));
  return v;
}

// max |got - ref| / max |ref|; fails on any NaN / Inf in got.
template <typename R>
double rel_error(const std::vector<float>& got, const std::vector<R>& ref) {
  if (got.size() != ref.size()) test_fail(__LINE__, "sizes differ: ", got.size(), " vs ", ref.size());
  double num = 0, den = 1e-12;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(got[i])) test_fail(__LINE__, "element ", i, " is not finite (", got[i], "): not written or overflow");
    num = std::max(num, std::fabs(double(got[i]) - double(ref[i])));
    den = std::max(den, std::fabs(double(ref[i])));
  }
  return num / den;
}

void expect_rel(double err, double tol, int line, const std::string& what) {
  if (!(err < tol)) test_fail(line, what, ": relative error ", err, " >= ", tol);
}
void expect_same(const std::vector<float>& a, const std::vector<float>& b, int line, const std::string& what) {
  if (a.size() != b.size() || std::memcmp(a.data(), b.data(), a.size() * 4) != 0)
    test_fail(line, what, ": not bitwise equal to the CPU twin");
}

std::string name(DType dt) { return dtype_name(dt); }

// y = x . W^T in double from the exact weights.
std::vector<double> matmul_ref(const std::vector<float>& x, int64_t T, const std::vector<float>& w, int64_t N,
                               int64_t K) {
  std::vector<double> ref(T * N);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) {
      double acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += double(x[t * K + k]) * w[n * K + k];
      ref[t * N + n] = acc;
    }
  return ref;
}

}  // namespace

TEST(cuda_probe_never_aborts) {
  const bool a = cuda::device_available();
  CHECK_EQ(a, cuda::device_available());  // cached, stable
  if (!a) CHECK_THROWS_WITH(cuda::device_description(), "no device");
  ewtest::need_cuda_device();
  CHECK(cuda::device_description().find("sm_") != std::string::npos);
}

TEST(cuda_matmul_matches_cpu_twin) {
  ewtest::need_cuda_device();
  std::mt19937 rng(11);
  CpuOps cpu;
  cuda::CudaOps gpu;
  struct Shape { int64_t T, N, K; };
  for (DType dt : kDtypes) {
    for (Shape s : {Shape{1, 96, 256}, Shape{3, 40, 2048}, Shape{8, 130, 520}, Shape{17, 64, 100},
                    Shape{64, 33, 512}, Shape{65, 70, 96}, Shape{200, 130, 264}}) {
      Weights w = make_weights(s.N * s.K, dt, rng, 0.05f);
      std::vector<float> x = randn(s.T * s.K, rng);
      std::vector<float> twin(s.T * s.N);
      cpu.matmul(x.data(), s.T, w.cpu(), s.N, s.K, twin.data());
      DeviceBuffer dx = upload(x), dy = poisoned(s.T * s.N);
      gpu.matmul(dx.as<float>(), s.T, w.gpu(), s.N, s.K, dy.as<float>());
      const std::string what = "matmul " + name(dt) + " T=" + std::to_string(s.T) + " N=" + std::to_string(s.N) +
                               " K=" + std::to_string(s.K);
      const double tol = s.T > 64 ? 1e-2 : 1e-5;  // T > 64: tensor cores on bf16-rounded activations
      expect_rel(rel_error(download<float>(dy, twin.size()), twin), tol, __LINE__, what);
      expect_rel(rel_error(twin, matmul_ref(x, s.T, w.exact(), s.N, s.K)), 1e-5, __LINE__, what + " (CPU twin)");
      // accumulate adds onto y
      gpu.matmul(dx.as<float>(), s.T, w.gpu(), s.N, s.K, dy.as<float>(), true);
      cpu.matmul(x.data(), s.T, w.cpu(), s.N, s.K, twin.data(), true);
      expect_rel(rel_error(download<float>(dy, twin.size()), twin), tol, __LINE__, what + " accumulate");
    }
  }
}

TEST(cuda_gemv_token_result_independent_of_batch) {
  ewtest::need_cuda_device();
  std::mt19937 rng(12);
  cuda::CudaOps gpu;
  const int64_t N = 77, K = 1024, T = 37;
  Weights w = make_weights(N * K, DType::BF16, rng, 0.05f);
  std::vector<float> x = randn(T * K, rng);
  DeviceBuffer dx = upload(x), dy = poisoned(T * N), d1 = poisoned(N);
  gpu.matmul(dx.as<float>(), T, w.gpu(), N, K, dy.as<float>());
  const auto all = download<float>(dy, T * N);
  for (int64_t t : {int64_t(0), int64_t(5), T - 1}) {
    gpu.matmul(dx.as<float>() + t * K, 1, w.gpu(), N, K, d1.as<float>());
    const auto one = download<float>(d1, N);
    CHECK(std::memcmp(one.data(), &all[t * N], N * 4) == 0);
  }
}

// matmul_exact: the GEMV for T > 64 too (tokens in groups of 64 on gridDim.y): fp32 where
// matmul's tensor-core path rounds to bf16, and every token bitwise equal to its T = 1 result.
TEST(cuda_matmul_exact_matches_cpu_twin_at_large_batches) {
  ewtest::need_cuda_device();
  std::mt19937 rng(22);
  CpuOps cpu;
  cuda::CudaOps gpu;
  for (DType dt : kDtypes)
    for (int64_t K : {int64_t(512), int64_t(100)}) {  // the 16-byte path and the scalar fallback
      const int64_t N = 40, T = 200;
      Weights w = make_weights(N * K, dt, rng, 0.05f);
      std::vector<float> x = randn(T * K, rng), twin(T * N);
      cpu.matmul_exact(x.data(), T, w.cpu(), N, K, twin.data());
      DeviceBuffer dx = upload(x), dy = poisoned(T * N), d1 = poisoned(N);
      gpu.matmul_exact(dx.as<float>(), T, w.gpu(), N, K, dy.as<float>());
      const auto all = download<float>(dy, T * N);
      expect_rel(rel_error(all, twin), 1e-5, __LINE__, "matmul_exact " + name(dt) + " K=" + std::to_string(K));
      for (int64_t t : {int64_t(0), int64_t(63), int64_t(64), int64_t(130), T - 1}) {
        gpu.matmul(dx.as<float>() + t * K, 1, w.gpu(), N, K, d1.as<float>());
        const auto one = download<float>(d1, N);
        CHECK(std::memcmp(one.data(), &all[t * N], N * 4) == 0);
      }
    }
}

// matmul_pair: gate | up in one launch when contiguous, two otherwise; each element what
// matmul gives it, and within the CPU twin's tolerance.
TEST(cuda_matmul_pair_matches_cpu_twin_contiguous_or_not) {
  ewtest::need_cuda_device();
  std::mt19937 rng(23);
  CpuOps cpu;
  cuda::CudaOps gpu;
  const int64_t T = 5, W = 48, K = 256;
  for (DType dt : kDtypes) {
    Weights both = make_weights(2 * W * K, dt, rng, 0.05f);  // [gate; up] in one buffer
    const size_t half = static_cast<size_t>(W * K) * dtype_size(dt);
    const Weight gate{both.dev.data(), dt}, up{static_cast<const char*>(both.dev.data()) + half, dt};
    Weights sep_up = make_weights(W * K, dt, rng, 0.05f);  // a separate buffer: two launches
    std::vector<float> x = randn(T * K, rng);
    DeviceBuffer dx = upload(x);
    for (bool contiguous : {true, false}) {
      const Weight b_gpu = contiguous ? up : sep_up.gpu();
      const Weight b_cpu = contiguous ? Weight{both.host.bytes.data() + half, dt} : sep_up.cpu();
      std::vector<float> twin(T * 2 * W);
      cpu.matmul_pair(x.data(), T, {both.host.bytes.data(), dt}, W, b_cpu, W, K, twin.data());
      DeviceBuffer dy = poisoned(T * 2 * W), da = poisoned(T * W), db = poisoned(T * W);
      gpu.matmul_pair(dx.as<float>(), T, gate, W, b_gpu, W, K, dy.as<float>());
      const auto got = download<float>(dy, T * 2 * W);
      expect_rel(rel_error(got, twin), 1e-5, __LINE__, "matmul_pair " + name(dt) + (contiguous ? " contiguous" : " separate"));
      gpu.matmul(dx.as<float>(), T, gate, W, K, da.as<float>());
      gpu.matmul(dx.as<float>(), T, b_gpu, W, K, db.as<float>());
      const auto a = download<float>(da, T * W), b = download<float>(db, T * W);
      for (int64_t t = 0; t < T; ++t) {
        CHECK(std::memcmp(&got[t * 2 * W], &a[t * W], W * 4) == 0);
        CHECK(std::memcmp(&got[t * 2 * W + W], &b[t * W], W * 4) == 0);
      }
    }
  }
}

TEST(cuda_rms_norm_matches_cpu_twin) {
  ewtest::need_cuda_device();
  std::mt19937 rng(13);
  CpuOps cpu;
  cuda::CudaOps gpu;
  const int64_t T = 5, width = 576, R = 512;
  for (DType dt : kDtypes) {
    Weights w = make_weights(R, dt, rng, 1.f);
    std::vector<float> x = randn(T * width, rng);
    // In place on the c_kv part of [T, 576] rows, as the forward pass does.
    DeviceBuffer dx = upload(x);
    gpu.rms_norm(dx.as<float>(), width, w.gpu(), 1e-6f, dx.as<float>(), width, T, R);
    std::vector<float> twin = x;
    cpu.rms_norm(twin.data(), width, w.cpu(), 1e-6f, twin.data(), width, T, R);
    expect_rel(rel_error(download<float>(dx, T * width), twin), 1e-5, __LINE__, "rms_norm " + name(dt));
  }
}

TEST(cuda_rope_is_bitwise_the_cpu_twin) {
  ewtest::need_cuda_device();
  std::mt19937 rng(13);
  // RoPE on 3 heads of 192 (rope part at +128) with yarn tables of the V2-Lite config.
  ModelConfig cfg;
  cfg.qk_rope_head_dim = 64;
  cfg.qk_nope_head_dim = 128;
  cfg.rope_theta = 10000;
  cfg.rope_scaling = RopeScaling::Yarn;
  cfg.rope_factor = 40;
  cfg.rope_original_max_position = 4096;
  cfg.rope_mscale = cfg.rope_mscale_all_dim = 0.707;
  const RopeTable table = make_rope_table(cfg);
  const int64_t T = 5, heads = 3, qd = 192;
  std::vector<float> q = randn(T * heads * qd, rng);
  std::vector<int64_t> pos = {0, 1, 7, 4095, 50000};
  std::vector<float> cs, sn;
  rope_cos_sin(table, pos.data(), T, cs, sn);
  DeviceBuffer dq = upload(q), dc = upload(cs), ds = upload(sn);
  cuda::CudaOps().rope(dq.as<float>() + 128, T, heads, heads * qd, qd, 64, dc.as<float>(), ds.as<float>());
  std::vector<float> twin = q;
  CpuOps().rope(twin.data() + 128, T, heads, heads * qd, qd, 64, cs.data(), sn.data());
  expect_same(download<float>(dq, q.size()), twin, __LINE__, "rope");
}

TEST(cuda_embed_add_gather_silu_mul_match_cpu_twins) {
  ewtest::need_cuda_device();
  std::mt19937 rng(14);
  CpuOps cpu;
  cuda::CudaOps gpu;
  const int64_t V = 50, D = 72, T = 6;
  std::vector<int32_t> ids = {3, 0, 49, 3, 17, 8};
  DeviceBuffer did = upload(ids);
  for (DType dt : kDtypes) {
    Weights table = make_weights(V * D, dt, rng, 1.f);
    DeviceBuffer dy = poisoned(T * D);
    gpu.embed(did.as<int32_t>(), T, table.gpu(), V, D, dy.as<float>());
    std::vector<float> twin(T * D);
    cpu.embed(ids.data(), T, table.cpu(), V, D, twin.data());
    expect_same(download<float>(dy, T * D), twin, __LINE__, "embed " + name(dt));
  }

  std::vector<float> a = randn(T * D, rng), b = randn(T * D, rng);
  DeviceBuffer da = upload(a), db = upload(b);
  gpu.add(da.as<float>(), db.as<float>(), T * D);
  std::vector<float> sum = a;
  cpu.add(sum.data(), b.data(), T * D);
  expect_same(download<float>(da, T * D), sum, __LINE__, "add");

  std::vector<int32_t> rows = {5, 0, 3, 3};
  DeviceBuffer dr = upload(rows), dg = poisoned(rows.size() * 40);
  gpu.gather_rows(db.as<float>(), D, dr.as<int32_t>(), 4, 40, dg.as<float>());
  std::vector<float> gathered(4 * 40);
  cpu.gather_rows(b.data(), D, rows.data(), 4, 40, gathered.data());
  expect_same(download<float>(dg, gathered.size()), gathered, __LINE__, "gather_rows");

  // gate|up fused rows [T, 2D]: out = silu(gate) * up
  std::vector<float> gu = randn(T * 2 * D, rng, 3.f);
  DeviceBuffer dgu = upload(gu), dout = poisoned(T * D);
  gpu.silu_mul(dgu.as<float>(), dgu.as<float>() + D, 2 * D, dout.as<float>(), T, D);
  std::vector<float> twin(T * D);
  cpu.silu_mul(gu.data(), gu.data() + D, 2 * D, twin.data(), T, D);
  expect_rel(rel_error(download<float>(dout, T * D), twin), 1e-4, __LINE__, "silu_mul");
}

TEST(cuda_gather_rows_past_the_grid_y_limit) {
  ewtest::need_cuda_device();
  std::mt19937 rng(19);
  const int64_t T = 9, ld = 40;
  std::vector<float> x = randn(T * ld, rng);
  // More rows than gridDim.y allows (65535): the kernel strides rows over the grid.
  const int64_t big = 70000;
  std::vector<int32_t> many(big);
  for (int64_t i = 0; i < big; ++i) many[i] = static_cast<int32_t>((i * 7) % T);
  DeviceBuffer dx = upload(x), dm = upload(many), dyb = poisoned(big * 2);
  cuda::CudaOps().gather_rows(dx.as<float>(), ld, dm.as<int32_t>(), big, 2, dyb.as<float>());
  const auto yb = download<float>(dyb, big * 2);
  for (int64_t i = 0; i < big; ++i) {
    CHECK_EQ(yb[i * 2], x[many[i] * ld]);
    CHECK_EQ(yb[i * 2 + 1], x[many[i] * ld + 1]);
  }
}

TEST(cuda_embed_and_rope_past_the_grid_y_limit) {
  ewtest::need_cuda_device();
  cuda::CudaOps gpu;
  // T > 65535 tokens: both kernels put tokens on gridDim.y and must stride over it.
  const int64_t T = 70000, V = 5, D = 4;
  std::vector<float> table(V * D);
  for (int64_t i = 0; i < V * D; ++i) table[i] = static_cast<float>(i);
  std::vector<int32_t> ids(T);
  for (int64_t t = 0; t < T; ++t) ids[t] = static_cast<int32_t>(t % V);
  DeviceBuffer dt = upload(table), di = upload(ids), dy = poisoned(T * D);
  gpu.embed(di.as<int32_t>(), T, {dt.data(), DType::F32}, V, D, dy.as<float>());
  const auto y = download<float>(dy, T * D);
  for (int64_t t = 0; t < T; t += 997) CHECK_EQ(y[t * D + 3], table[ids[t] * D + 3]);
  CHECK_EQ(y[(T - 1) * D], table[ids[T - 1] * D]);
  // RoPE with cos = 0, sin = 1 on every token: (x0, x1) -> (-x1, x0).
  std::vector<float> cs(T, 0.f), sn(T, 1.f), x(T * 2);
  for (int64_t i = 0; i < T * 2; ++i) x[i] = static_cast<float>(i % 1000) + 1.f;
  DeviceBuffer dx = upload(x), dc = upload(cs), ds = upload(sn);
  gpu.rope(dx.as<float>(), T, 1, 2, 2, 2, dc.as<float>(), ds.as<float>());
  const auto r = download<float>(dx, T * 2);
  for (int64_t t : {int64_t(0), int64_t(65535), T - 1}) {
    CHECK_EQ(r[t * 2], -x[t * 2 + 1]);
    CHECK_EQ(r[t * 2 + 1], x[t * 2]);
  }
}

TEST(cuda_moe_align_groups_every_entry_once) {
  ewtest::need_cuda_device();
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

TEST(cuda_moe_matches_cpu_twin_and_is_batch_independent) {
  ewtest::need_cuda_device();
  std::mt19937 rng(16);
  CpuOps cpu;
  cuda::CudaOps gpu;
  const int64_t H = 64, I = 48, k = 6;
  const int S = 164;
  for (DType dt : kDtypes) {
    Weights gate = make_weights(S * I * H, dt, rng, 0.1f), up = make_weights(S * I * H, dt, rng, 0.1f),
            down = make_weights(S * H * I, dt, rng, 0.1f);
    const MoeWeights mw{gate.dev.data(), up.dev.data(), down.dev.data(), dt, S, H, I};
    const MoeWeights mw_cpu{gate.host.bytes.data(), up.host.bytes.data(), down.host.bytes.data(), dt, S, H, I};
    for (int64_t T : {1, 5, 40, 450}) {  // 450 * 6 >= 16 * 164: the 32-entry groups
      std::vector<float> x = randn(T * H, rng), wts(T * k);
      std::vector<int32_t> slots(T * k);
      for (int64_t i = 0; i < T * k; ++i) {
        slots[i] = static_cast<int32_t>(rng() % S);
        wts[i] = std::uniform_real_distribution<float>(0.f, 1.f)(rng);
      }
      DeviceBuffer dx = upload(x), ds = upload(slots), dw = upload(wts), dy = poisoned(T * H);
      DeviceBuffer ws(gpu.moe_workspace_bytes(T, k, mw));
      ws.fill_bytes(0xFF);
      gpu.moe(dx.as<float>(), T, k, ds.as<int32_t>(), dw.as<float>(), mw, dy.as<float>(), false, ws.data());
      const auto y = download<float>(dy, T * H);
      std::vector<float> twin(T * H);
      std::vector<uint8_t> cws(cpu.moe_workspace_bytes(T, k, mw_cpu));
      cpu.moe(x.data(), T, k, slots.data(), wts.data(), mw_cpu, twin.data(), false, cws.data());
      expect_rel(rel_error(y, twin), 1e-4, __LINE__, "moe " + name(dt) + " T=" + std::to_string(T));
      // Token T-1 alone gives the same bits as inside the batch.
      DeviceBuffer d1 = poisoned(H);
      DeviceBuffer ws1(gpu.moe_workspace_bytes(1, k, mw));
      gpu.moe(dx.as<float>() + (T - 1) * H, 1, k, ds.as<int32_t>() + (T - 1) * k, dw.as<float>() + (T - 1) * k, mw,
              d1.as<float>(), false, ws1.data());
      const auto one = download<float>(d1, H);
      CHECK(std::memcmp(one.data(), &y[(T - 1) * H], H * 4) == 0);
    }
    // An unresolved slot (-1) contributes nothing: the token equals its other choices alone.
    std::vector<float> x = randn(H, rng), wts = {0.5f, 0.25f, 0.125f, 0.0625f, 0.03125f, 0.015625f};
    std::vector<int32_t> slots = {-1, 7, 9, 11, 13, 15};
    DeviceBuffer dx = upload(x), ds = upload(slots), dw = upload(wts), dy = poisoned(H);
    DeviceBuffer ws(gpu.moe_workspace_bytes(1, k, mw));
    gpu.moe(dx.as<float>(), 1, k, ds.as<int32_t>(), dw.as<float>(), mw, dy.as<float>(), false, ws.data());
    std::vector<float> twin(H);
    std::vector<int32_t> five(slots.begin() + 1, slots.end());
    std::vector<float> w5(wts.begin() + 1, wts.end());
    std::vector<uint8_t> cws(cpu.moe_workspace_bytes(1, 5, mw_cpu));
    cpu.moe(x.data(), 1, 5, five.data(), w5.data(), mw_cpu, twin.data(), false, cws.data());
    expect_rel(rel_error(download<float>(dy, H), twin), 1e-4, __LINE__, "moe with an unresolved slot " + name(dt));
  }
}

namespace {

// A block-paged latent cache filled on the host (the CPU twin reads it there) and copied
// to the device, with the same block tables on both sides.
struct TwinCache {
  std::vector<float> host;
  std::vector<int32_t> tables;
  DeviceBuffer dev, dev_tables;
  KvLayerView cpu_view, gpu_view;
};
TwinCache twin_cache(int n_blocks, int bs, int width, std::vector<int32_t> tables, int max_blocks,
                     const std::vector<float>& latent, const std::vector<int32_t>& seq, const std::vector<int32_t>& pos) {
  TwinCache c;
  c.host.assign(static_cast<size_t>(n_blocks) * bs * width, 0.f);
  c.tables = std::move(tables);
  c.cpu_view = KvLayerView{c.host.data(), bs * width, bs, width, c.tables.data(), max_blocks};
  CpuOps().kv_write(c.cpu_view, latent.data(), static_cast<int64_t>(seq.size()), seq.data(), pos.data());
  c.dev = poisoned(c.host.size());
  c.dev_tables = upload(c.tables);
  c.gpu_view = KvLayerView{c.dev.as<float>(), bs * width, bs, width, c.dev_tables.as<int32_t>(), max_blocks};
  DeviceBuffer dl = upload(latent), ds = upload(seq), dp = upload(pos);
  cuda::CudaOps().kv_write(c.gpu_view, dl.as<float>(), static_cast<int64_t>(seq.size()), ds.as<int32_t>(),
                           dp.as<int32_t>());
  EW_CUDA_CHECK(cudaDeviceSynchronize());
  return c;
}

}  // namespace

TEST(cuda_kv_write_and_mla_attention_match_cpu_twins) {
  ewtest::need_cuda_device();
  std::mt19937 rng(17);
  // 18 heads: a full group of 16 in the core kernel plus a partial one.
  const int heads = 18, nope = 32, rope = 16, vd = 24, R = 64, width = R + rope, bs = 4, n_blocks = 12;
  const int max_blocks = 6;
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
  TwinCache cache = twin_cache(n_blocks, bs, width, tables, max_blocks, latent, wseq, wpos);
  // Every written entry landed in the same place on both sides (the unwritten blocks stay poisoned).
  {
    const auto dev = download<float>(cache.dev, cache.host.size());
    for (int s = 0; s < 2; ++s)
      for (int p = 0; p < len[s]; ++p) {
        const size_t at = (static_cast<size_t>(tables[s * max_blocks + p / bs]) * bs + p % bs) * width;
        if (std::memcmp(&dev[at], &cache.host[at], width * 4) != 0) test_fail(__LINE__, "kv_write: entry ", s, "/", p);
      }
  }
  auto entry = [&](int s, int p) { return &latent[(s == 0 ? p : len[0] + p) * width]; };
  // Queries: a prefill-like run of seq 0 and decode-like last tokens.
  std::vector<int32_t> qseq = {0, 0, 0, 1, 1}, qpos = {0, 5, 13, 20, 9};
  const int64_t T = qseq.size();
  const float scale = 0.125f;
  MlaShape shape{heads, nope, rope, vd, R, scale};
  const int64_t max_ctx = 21;
  for (DType dt : kDtypes) {
    Weights wkvb = make_weights(static_cast<size_t>(heads) * (nope + vd) * R, dt, rng, 0.2f);
    std::vector<float> q = randn(T * heads * (nope + rope), rng);
    DeviceBuffer dq = upload(q), dqs = upload(qseq), dqp = upload(qpos), dout = poisoned(T * heads * vd);
    cuda::CudaOps gpu;
    DeviceBuffer ws(gpu.mla_workspace_bytes(T, shape, max_ctx));
    gpu.mla_attention(dq.as<float>(), T, cache.gpu_view, dqs.as<int32_t>(), dqp.as<int32_t>(), wkvb.gpu(), shape,
                      max_ctx, dout.as<float>(), ws.data());
    const auto got = download<float>(dout, T * heads * vd);
    std::vector<float> twin(T * heads * vd);
    CpuOps().mla_attention(q.data(), T, cache.cpu_view, qseq.data(), qpos.data(), wkvb.cpu(), shape, max_ctx,
                           twin.data(), nullptr);
    expect_rel(rel_error(got, twin), 1e-4, __LINE__, "mla_attention " + name(dt));

    // And the plain formulation: expand k_nope and v per head from c_kv, then ordinary attention.
    std::vector<double> ref(T * heads * vd, 0.0);
    const std::vector<float>& W = wkvb.exact();
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
            for (int c = 0; c < R; ++c) kn += double(W[(h * (nope + vd) + d) * R + c]) * e[c];
            s += qv[d] * kn;
          }
          for (int d = 0; d < rope; ++d) s += double(qv[nope + d]) * e[R + d];
          sc[p] = s * scale;
          mx = std::max(mx, sc[p]);
          for (int d = 0; d < vd; ++d) {
            double v = 0;
            for (int c = 0; c < R; ++c) v += double(W[(h * (nope + vd) + nope + d) * R + c]) * e[c];
            vs[p * vd + d] = v;
          }
        }
        double sum = 0;
        for (int p = 0; p < n; ++p) sum += sc[p] = std::exp(sc[p] - mx);
        for (int p = 0; p < n; ++p)
          for (int d = 0; d < vd; ++d) ref[(t * heads + h) * vd + d] += sc[p] / sum * vs[p * vd + d];
      }
    expect_rel(rel_error(got, ref), 1e-3, __LINE__, "mla_attention vs the plain formulation " + name(dt));
  }
}

// Long contexts: with few (token, head group) blocks the core kernel splits each token's
// positions over blocks and a reduce kernel merges the splits; context lengths around the
// 64-position chunk and the 128-position minimum split, against the CPU twin.
TEST(cuda_mla_attention_position_splits_match_cpu_twin) {
  ewtest::need_cuda_device();
  std::mt19937 rng(21);
  const int heads = 18, nope = 32, rope = 16, vd = 24, R = 64, width = R + rope, bs = 16, len = 1000;
  const int n_blocks = (len + bs - 1) / bs;
  Weights wkvb = make_weights(static_cast<size_t>(heads) * (nope + vd) * R, DType::BF16, rng, 0.2f);
  std::vector<int32_t> table(n_blocks);
  for (int b = 0; b < n_blocks; ++b) table[b] = n_blocks - 1 - b;  // blocks in reverse physical order
  std::vector<float> latent = randn(static_cast<size_t>(len) * width, rng);
  std::vector<int32_t> wseq(len, 0), wpos(len);
  std::iota(wpos.begin(), wpos.end(), 0);
  TwinCache cache = twin_cache(n_blocks, bs, width, table, n_blocks, latent, wseq, wpos);
  const float scale = 0.1f;
  MlaShape shape{heads, nope, rope, vd, R, scale};
  auto run_and_check = [&](const std::vector<int32_t>& qpos, int64_t max_ctx, bool want_split) {
    const int64_t T = qpos.size();
    CHECK_EQ(cuda::mla_position_splits(T, shape, max_ctx) > 1, want_split);
    std::vector<int32_t> qseq(T, 0);
    std::vector<float> q = randn(T * heads * (nope + rope), rng);
    DeviceBuffer dq = upload(q), dqs = upload(qseq), dqp = upload(qpos), dout = poisoned(T * heads * vd);
    cuda::CudaOps gpu;
    DeviceBuffer ws(gpu.mla_workspace_bytes(T, shape, max_ctx));
    ws.fill_bytes(0xFF);
    gpu.mla_attention(dq.as<float>(), T, cache.gpu_view, dqs.as<int32_t>(), dqp.as<int32_t>(), wkvb.gpu(), shape,
                      max_ctx, dout.as<float>(), ws.data());
    std::vector<float> twin(T * heads * vd);
    CpuOps().mla_attention(q.data(), T, cache.cpu_view, qseq.data(), qpos.data(), wkvb.cpu(), shape, max_ctx,
                           twin.data(), nullptr);
    expect_rel(rel_error(download<float>(dout, T * heads * vd), twin), 1e-4, __LINE__,
               "mla_attention T=" + std::to_string(T) + " max_ctx=" + std::to_string(max_ctx));
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

// GQA: rope in the rotate_half layout (bitwise, like the interleaved one), kv_write of GQA entries
// (bitwise: the same copy or bf16 rounding) and gqa_attention (against the CPU twin) on
// fp32 and bf16 caches, Qwen3-30B-A3B's head shape (8 query heads per KV head of 128) and
// Mixtral's (4 per KV head), contexts across the 256-position splits; a token's result is
// the same bits alone, in a batch, and under a larger context bucket.
TEST(cuda_gqa_rope_kv_write_and_attention_match_cpu_twins) {
  ewtest::need_cuda_device();
  std::mt19937 rng(31);
  {
    RopeTable table;
    table.dim = 128;
    for (int i = 0; i < 64; ++i) table.inv_freq.push_back(1.0 / std::pow(1e6, 2.0 * i / 128));
    const int64_t T = 4, heads = 6, ld = heads * 128;
    std::vector<int64_t> pos = {0, 3, 700, 40000};
    std::vector<float> cs, sn, x = randn(T * ld, rng);
    rope_cos_sin(table, pos.data(), T, cs, sn);
    DeviceBuffer dx = upload(x), dc = upload(cs), ds = upload(sn);
    cuda::CudaOps().rope(dx.as<float>(), T, heads, ld, 128, 128, dc.as<float>(), ds.as<float>(), RopeLayout::RotateHalf);
    std::vector<float> twin = x;
    CpuOps().rope(twin.data(), T, heads, ld, 128, 128, cs.data(), sn.data(), RopeLayout::RotateHalf);
    expect_same(download<float>(dx, x.size()), twin, __LINE__, "rope rotate_half");
  }
  struct Shape { int heads, kvh, D; };
  for (Shape sh : {Shape{32, 4, 128}, Shape{8, 2, 128}, Shape{6, 3, 64}})
    for (DType dt : {DType::F32, DType::BF16}) {
      const int entry = 2 * sh.kvh * sh.D, bs = 16, len[2] = {600, 37}, max_blocks = 38;
      const int n_blocks = 2 * max_blocks, layers = 2;
      std::vector<int32_t> tables(2 * max_blocks);
      for (int i = 0; i < 2 * max_blocks; ++i) tables[i] = (i * 29) % n_blocks;  // scattered, distinct
      const size_t elems = static_cast<size_t>(n_blocks) * layers * bs * entry, esz = dtype_size(dt);
      std::vector<uint8_t> host(elems * esz, 0xFF);
      DeviceBuffer dev(elems * esz), dtab = upload(tables);
      dev.fill_bytes(0xFF);
      KvLayerView cv;
      cv.dtype = dt;
      cv.block_stride = static_cast<int64_t>(layers) * bs * entry;
      cv.block_size = bs;
      cv.width = entry;
      cv.max_blocks = max_blocks;
      KvLayerView hv = cv, gv = cv;
      hv.data = host.data() + static_cast<size_t>(bs) * entry * esz;  // layer 1
      hv.block_tables = tables.data();
      gv.data = static_cast<uint8_t*>(dev.data()) + static_cast<size_t>(bs) * entry * esz;
      gv.block_tables = dtab.as<int32_t>();
      std::vector<float> rows;
      std::vector<int32_t> wseq, wpos;
      for (int s = 0; s < 2; ++s)
        for (int p = 0; p < len[s]; ++p) wseq.push_back(s), wpos.push_back(p);
      rows = randn(wseq.size() * entry, rng);
      DeviceBuffer drows = upload(rows), dws = upload(wseq), dwp = upload(wpos);
      cuda::CudaOps gpu;
      gpu.kv_write(gv, drows.as<float>(), static_cast<int64_t>(wseq.size()), dws.as<int32_t>(), dwp.as<int32_t>());
      CpuOps().kv_write(hv, rows.data(), static_cast<int64_t>(wseq.size()), wseq.data(), wpos.data());
      {
        std::vector<uint8_t> back(host.size());
        EW_CUDA_CHECK(cudaDeviceSynchronize());
        dev.download(back.data(), back.size());
        if (back != host) test_fail(__LINE__, "kv_write (GQA) ", name(dt), ": not bitwise the CPU twin's cache");
      }
      GqaShape shape{sh.heads, sh.kvh, sh.D, 1.f / std::sqrt(static_cast<float>(sh.D))};
      const std::vector<int32_t> qseq = {0, 0, 0, 0, 1, 1, 0}, qpos = {0, 255, 256, 599, 36, 5, 300};
      const int64_t T = qseq.size();
      std::vector<float> q = randn(T * sh.heads * sh.D, rng);
      DeviceBuffer dq = upload(q), dqs = upload(qseq), dqp = upload(qpos);
      std::vector<float> twin(T * sh.heads * sh.D);
      CpuOps().gqa_attention(q.data(), T, hv, qseq.data(), qpos.data(), shape, 600, twin.data(), nullptr);
      auto run = [&](int64_t t0, int64_t n, int64_t max_ctx) {
        DeviceBuffer out = poisoned(n * sh.heads * sh.D), ws(std::max<size_t>(1, gpu.gqa_workspace_bytes(n, shape, max_ctx)));
        ws.fill_bytes(0xFF);
        gpu.gqa_attention(dq.as<float>() + t0 * sh.heads * sh.D, n, gv, dqs.as<int32_t>() + t0, dqp.as<int32_t>() + t0,
                          shape, max_ctx, out.as<float>(), ws.data());
        return download<float>(out, n * sh.heads * sh.D);
      };
      const std::string what = "gqa_attention " + name(dt) + " " + std::to_string(sh.heads) + "/" + std::to_string(sh.kvh);
      const std::vector<float> all = run(0, T, 600);
      expect_rel(rel_error(all, twin), 1e-4, __LINE__, what);
      const size_t row = static_cast<size_t>(sh.heads) * sh.D;
      for (int64_t t : {int64_t(1), int64_t(3), int64_t(4)}) {
        const std::vector<float> alone = run(t, 1, 600), bucket = run(t, 1, 4096);
        if (std::memcmp(alone.data(), &all[t * row], row * 4) != 0 || std::memcmp(bucket.data(), alone.data(), row * 4) != 0)
          test_fail(__LINE__, what, ": token ", t, " differs alone, in the batch or in a larger bucket");
      }
    }
}

// Rows of -inf and rows with NaNs still give an id in range, the one the CPU twin and the
// host sampler pick (all -inf: 0; a NaN not at id 0 is never chosen), also when V < the block size.
TEST(cuda_argmax_matches_cpu_twin_on_degenerate_rows) {
  ewtest::need_cuda_device();
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
    cuda::CudaOps().argmax(dl.as<float>(), rows, V, did.as<int32_t>(), nullptr);
    const auto ids = download<int32_t>(did, rows);
    std::vector<int32_t> twin(rows);
    CpuOps().argmax(logits.data(), rows, V, twin.data(), nullptr);
    SamplingParams greedy;
    for (int64_t r = 0; r < rows; ++r) {
      const int32_t want = sample_token(&logits[r * V], V, greedy, 0);
      if (ids[r] != want || twin[r] != want)
        test_fail(__LINE__, "argmax V=", V, " row ", r, ": cuda ", ids[r], ", cpu twin ", twin[r], ", sampler ", want);
    }
  }
}

TEST(cuda_argmax_ties_to_lower_id_and_logprob_match_cpu_twin) {
  ewtest::need_cuda_device();
  std::mt19937 rng(18);
  const int64_t V = 102400, rows = 3;
  std::vector<float> logits = randn(rows * V, rng, 2.f);
  logits[0 * V + 500] = logits[0 * V + 90000] = 50.f;   // tie: 500 wins
  logits[1 * V + V - 1] = 40.f;                          // last id
  logits[2 * V + 0] = logits[2 * V + 1] = 30.f;          // tie at the start: 0 wins
  DeviceBuffer dl = upload(logits), did(rows * 4), dlp = poisoned(rows);
  did.fill_bytes(0xFF);
  cuda::CudaOps().argmax(dl.as<float>(), rows, V, did.as<int32_t>(), dlp.as<float>());
  const auto ids = download<int32_t>(did, rows);
  const auto lp = download<float>(dlp, rows);
  CHECK_EQ(ids[0], 500);
  CHECK_EQ(ids[1], static_cast<int32_t>(V - 1));
  CHECK_EQ(ids[2], 0);
  std::vector<int32_t> twin(rows);
  std::vector<float> twin_lp(rows);
  CpuOps().argmax(logits.data(), rows, V, twin.data(), twin_lp.data());
  for (int64_t r = 0; r < rows; ++r) {
    CHECK_EQ(ids[r], twin[r]);
    CHECK_NEAR(lp[r], twin_lp[r], 1e-4);
  }
}

#endif  // EW_WITH_CUDA

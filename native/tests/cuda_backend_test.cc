// CudaBackend (kernels/cuda/cuda_backend.h) against the CPU backend, op by op, on small
// random inputs: the staging (strided spans, cache gathers, expert slot compaction) and
// the kernels behind it. Without a CUDA device every test prints a skip line and passes.
#ifdef EW_WITH_CUDA
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <sstream>
#include <vector>

#include "engine/reroute_table.h"
#include "kernel_fixtures.h"
#include "kernels/backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_util.h"
#include "memory/expert_pool.h"
#include "memory/kv_cache.h"
#include "test.h"

using namespace ew;
using ewtest::make_weight;
using ewtest::random_floats;

namespace {

bool have_device() {
  if (cuda::device_available()) return true;
  std::printf("     skipped: no CUDA device\n");
  return false;
}

// max |a - b| / max |b|, and every element finite.
double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 1e-12;
  for (size_t i = 0; i < b.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num = std::max(num, double(std::fabs(a[i] - b[i])));
    den = std::max(den, double(std::fabs(b[i])));
  }
  return num / den;
}

template <typename... A>
void expect_close(double err, double tol, int line, const A&... what) {
  if (err < tol) return;
  std::ostringstream os;
  (os << ... << what);
  os << ": relative difference " << err << " >= " << tol;
  ewtest::fail_at(__FILE__, line, os.str());
}

}  // namespace

TEST(cuda_backend_dense_ops_match_cpu_backend) {
  if (!have_device()) return;
  auto cpu = make_cpu_backend();
  auto gpu = make_cuda_backend();
  CHECK(gpu->name().find("cuda") == 0);
  const int64_t T = 5, H = 64, W = 40, V = 30;
  const auto gate = make_weight(random_floats(W * H, 1, 0.2f), DType::BF16);
  const auto up = make_weight(random_floats(W * H, 2, 0.2f), DType::BF16);
  const auto down = make_weight(random_floats(H * W, 3, 0.2f), DType::BF16);
  const auto x = random_floats(T * H, 4);
  std::vector<float> a(T * W), b(T * W);
  cpu->matmul(x.data(), T, gate.view({W, H}), a.data());
  gpu->matmul(x.data(), T, gate.view({W, H}), b.data());
  expect_close(rel_diff(b, a), 1e-5, __LINE__, "matmul");

  std::vector<float> ya(T * H), yb(T * H);
  cpu->mlp(x.data(), T, gate.view({W, H}), up.view({W, H}), down.view({H, W}), ya.data());
  gpu->mlp(x.data(), T, gate.view({W, H}), up.view({W, H}), down.view({H, W}), yb.data());
  expect_close(rel_diff(yb, ya), 1e-4, __LINE__, "mlp");

  const auto table = make_weight(random_floats(V * H, 5), DType::BF16);
  const int32_t ids[T] = {0, 29, 7, 7, 12};
  cpu->embed(table.view({V, H}), ids, T, ya.data());
  gpu->embed(table.view({V, H}), ids, T, yb.data());
  CHECK(ya == yb);
  const int32_t bad[1] = {V};
  CHECK_THROWS_WITH(gpu->embed(table.view({V, H}), bad, 1, yb.data()), "out of range");

  // In-place RMSNorm of the first 48 of 64 columns: the other columns must survive.
  const auto w = make_weight(random_floats(48, 6, 1.f), DType::BF16);
  std::vector<float> na = x, nb = x;
  cpu->rms_norm(na.data(), H, T, 48, w.view({48}), 1e-6f, na.data(), H);
  gpu->rms_norm(nb.data(), H, T, 48, w.view({48}), 1e-6f, nb.data(), H);
  expect_close(rel_diff(nb, na), 1e-5, __LINE__, "rms_norm");

  // RoPE on 2 vectors of 16 per token (stride 24 inside rows of 48): bit-identical.
  ModelConfig cfg;
  cfg.qk_rope_head_dim = 16;
  cfg.qk_nope_head_dim = 8;
  const RopeTable rt = make_rope_table(cfg);
  const int64_t pos[T] = {0, 3, 100, 4096, 7};
  std::vector<float> ra = random_floats(T * 48, 7), rb = ra;
  cpu->rope(ra.data() + 8, T, 48, 2, 24, pos, rt);
  gpu->rope(rb.data() + 8, T, 48, 2, 24, pos, rt);
  CHECK(ra == rb);
}

TEST(cuda_backend_attention_router_and_experts_match_cpu_backend) {
  if (!have_device()) return;
  auto cpu = make_cpu_backend();
  auto gpu = make_cuda_backend();
  // MLA over a paged host cache: two sequences, a prefill-like and a decode-like token set.
  const int64_t heads = 2, nope = 16, rope = 8, Vd = 8, R = 32, width = R + rope;
  const auto kvb = make_weight(random_floats(heads * (nope + Vd) * R, 10, 0.3f), DType::BF16);
  KvCache cache(2, width, 4, 16);
  CHECK(cache.reserve(3, 10));
  CHECK(cache.reserve(9, 6));
  const auto ents = random_floats(16 * width, 11);
  for (int64_t p = 0; p < 16; ++p) {
    float* e = p < 10 ? cache.entry(1, 3, p) : cache.entry(1, 9, p - 10);
    std::copy(&ents[p * width], &ents[(p + 1) * width], e);
  }
  const int64_t seq[4] = {3, 3, 9, 3}, pos[4] = {0, 4, 5, 9};
  const auto q = random_floats(4 * heads * (nope + rope), 12);
  std::vector<float> oa(4 * heads * Vd), ob(oa.size());
  MlaAttentionArgs a;
  a.q = q.data();
  a.T = 4;
  a.n_heads = heads, a.nope = nope, a.rope = rope, a.v_dim = Vd, a.rank = R;
  a.kv_b = kvb.view({heads * (nope + Vd), R});
  a.cache = &cache;
  a.layer = 1;
  a.seq = seq;
  a.pos = pos;
  a.scale = 0.2f;
  a.out = oa.data();
  cpu->mla_attention(a);
  a.out = ob.data();
  gpu->mla_attention(a);
  expect_close(rel_diff(ob, oa), 1e-4, __LINE__, "mla_attention");

  // Router (64 experts, top-6) with an adapter row that reroutes some experts.
  const int64_t T = 7, H = 64, I = 32, M = 64, k = 6;
  const auto router = make_weight(random_floats(M * H, 13, 0.5f), DType::F32);
  const auto x = random_floats(T * H, 14);
  RerouteTables tables(1, 2, M);
  for (int e = 0; e < M; e += 5) tables.set(0, 1, e, M + e / 5);
  const int32_t rows[T] = {0, 1, 1, 0, 1, 0, 1};
  RouterParams rp;
  rp.n_experts = M;
  rp.top_k = k;
  std::vector<int32_t> sa(T * k), sb(T * k);
  std::vector<float> wa(T * k), wb(T * k);
  cpu->route(x.data(), T, H, router.view({M, H}), rp, tables.view(0), rows, sa.data(), wa.data());
  gpu->route(x.data(), T, H, router.view({M, H}), rp, tables.view(0), rows, sb.data(), wb.data());
  CHECK(sa == sb);
  expect_close(rel_diff(wb, wa), 1e-4, __LINE__, "router weights");

  // Grouped experts over a host pool with adapter slots mapped and written.
  ExpertPool pool(1, static_cast<int>(M), 16, H, I, DType::BF16);
  pool.map_slots(0, 0, static_cast<int>(M));
  const int first = pool.alloc_slots(0, 13);
  CHECK_EQ(first, static_cast<int>(M));  // the reroute table above points at slots M..M+12
  pool.map_slots(0, first, 13);
  for (int s = 0; s < first + 13; ++s) {
    const auto g = make_weight(random_floats(I * H, 100 + s, 0.2f), DType::BF16);
    const auto u = make_weight(random_floats(I * H, 200 + s, 0.2f), DType::BF16);
    const auto d = make_weight(random_floats(H * I, 300 + s, 0.2f), DType::BF16);
    pool.write_slot(0, ExpertMat::Gate, s, g.view({I, H}));
    pool.write_slot(0, ExpertMat::Up, s, u.view({I, H}));
    pool.write_slot(0, ExpertMat::Down, s, d.view({H, I}));
  }
  std::vector<float> ya(T * H), yb(T * H);
  cpu->grouped_experts(x.data(), T, pool, 0, sa.data(), wa.data(), static_cast<int>(k), ya.data());
  gpu->grouped_experts(x.data(), T, pool, 0, sa.data(), wa.data(), static_cast<int>(k), yb.data());
  expect_close(rel_diff(yb, ya), 1e-4, __LINE__, "grouped_experts");
}

#endif  // EW_WITH_CUDA

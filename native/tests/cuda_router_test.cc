// The CUDA route op and the CUDA VMM expert pool against their CPU twins (CpuOps::route,
// the host ExpertPool's page accounting). Built only with the CUDA backend; without a
// device each test skips (EW_REQUIRE_CUDA=1: fails).
#ifdef EW_WITH_CUDA
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "cuda_fixtures.h"
#include "engine/reroute_table.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/route.h"
#include "kernels/cuda/cuda_ops.h"
#include "memory/cuda/expert_pool_cuda.h"
#include "test.h"

using namespace ew;

namespace {

template <typename T>
T* to_device(const std::vector<T>& v) {
  void* p = nullptr;
  if (cudaMalloc(&p, v.size() * sizeof(T)) != cudaSuccess) throw std::runtime_error("cudaMalloc failed");
  cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice);
  return static_cast<T*>(p);
}

template <typename T>
std::vector<T> to_host(const T* p, size_t n) {
  std::vector<T> v(n);
  cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost);
  return v;
}

// tied: the second half of the router rows repeats the first, so every expert e ties with
// e + M/2 (exactly: same logits bit for bit) and the top-k must take the lower id first.
// with_bias: a random e_score_correction_bias (DeepSeek-V3), the same on both sides.
void compare_router(RouterParams p, int64_t T, int64_t H, uint32_t seed, bool tied = false, bool with_bias = false) {
  const int M = p.n_experts, k = p.top_k, rows = 5;
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> x(T * H), w(M * H);
  for (auto& v : x) v = nd(rng);
  for (auto& v : w) v = nd(rng) * 0.3f;
  if (tied)
    for (int e = M / 2; e < M; ++e) std::copy_n(&w[(e - M / 2) * H], H, &w[e * H]);
  TensorView W{w.data(), DType::F32, {M, H}};
  RerouteTables tables(1, rows, M);
  for (int r = 1; r < rows; ++r)
    for (int e = r; e < M; e += 3) tables.set(0, r, e, M + r * 100 + e);
  std::vector<int32_t> adapter(T);
  for (int64_t t = 0; t < T; ++t) adapter[t] = static_cast<int32_t>(t % rows);

  std::vector<float> bias(M);
  for (auto& v : bias) v = nd(rng) * 0.5f;
  std::vector<float> scratch(T * M), cw(T * k);
  std::vector<int32_t> cs(T * k), cid(T * k);
  route_tokens_cpu(x.data(), T, H, W, p, tables.view(0), adapter.data(), cs.data(), cw.data(), cid.data(),
                   scratch.data(), with_bias ? bias.data() : nullptr);
  std::vector<float> logits(T * M);
  matmul_cpu_raw(x.data(), T, w.data(), DType::F32, M, H, logits.data());

  const RerouteTableView hv = tables.view(0);
  std::vector<int32_t> table(hv.table, hv.table + rows * M);
  float* d_logits = to_device(logits);
  int32_t* d_table = to_device(table);
  int32_t* d_rows = to_device(adapter);
  int32_t* d_slots = to_device(std::vector<int32_t>(T * k));
  int32_t* d_ids = to_device(std::vector<int32_t>(T * k));
  float* d_w = to_device(std::vector<float>(T * k));
  float* d_bias = to_device(bias);
  cuda::CudaOps().route(d_logits, T, p, {d_table, rows, M}, d_rows, d_slots, d_w, d_ids, with_bias ? d_bias : nullptr);
  CHECK(cudaDeviceSynchronize() == cudaSuccess);
  cudaFree(d_bias);
  auto gs = to_host(d_slots, T * k);
  auto gid = to_host(d_ids, T * k);
  auto gw = to_host(d_w, T * k);
  for (void* ptr : {static_cast<void*>(d_logits), static_cast<void*>(d_table), static_cast<void*>(d_rows),
                    static_cast<void*>(d_slots), static_cast<void*>(d_ids), static_cast<void*>(d_w)})
    cudaFree(ptr);
  for (int64_t i = 0; i < T * k; ++i) {
    CHECK_EQ(gid[i], cid[i]);
    CHECK_EQ(gs[i], cs[i]);
    // Relative: routed_scaling_factor scales the weights (16 below); expf and a butterfly sum
    // against std::exp and a sequential one differ by a few ulp of the weight.
    CHECK_NEAR(gw[i], cw[i], 4e-6 * std::fabs(cw[i]) + 1e-9);
  }
}

}  // namespace

TEST(cuda_router_matches_cpu) {
  ewtest::need_cuda_device();
  RouterParams p;
  p.n_experts = 64;
  p.top_k = 6;
  compare_router(p, 300, 64, 1);
  p.normalize = true;
  p.norm_eps = 1e-20f;
  compare_router(p, 33, 64, 2);
  compare_router(p, 40, 64, 9, /*tied=*/true);  // ties across lanes: e and e + 32
  p.groups = GroupRule::BestScore;
  p.n_group = 8;
  p.topk_group = 3;
  compare_router(p, 77, 64, 3);
  RouterParams q;
  q.n_experts = 160;
  q.top_k = 6;
  q.groups = GroupRule::BestScore;
  q.n_group = 8;
  q.topk_group = 3;
  q.scale = 16.f;
  compare_router(q, 50, 32, 4);
  RouterParams r;  // widths that are not multiples of 32: padding lanes (the embedded model has 16)
  for (int M : {8, 16, 50, 200}) {
    r.n_experts = M;
    r.top_k = std::min(M, 4);
    r.normalize = M == 50;
    compare_router(r, 40, 32, 5 + M);
  }
}

// DeepSeek-V3's noaux_tc (sigmoid, correction bias, groups by their two best, closed
// groups never chosen, then scaled), at V3's width (256 in 8 groups), Moonlight's (64, one
// group), Kimi-K2's (384, one group) and the fixtures' (16 in 4 groups: padding lanes);
// Qwen3's top-8 of 128 normalised without epsilon and its top-1 (weight exactly 1).
TEST(cuda_router_sigmoid_noaux_tc_and_qwen3_match_cpu) {
  ewtest::need_cuda_device();
  struct Shape { int M, k, n_group, topk_group; };
  for (Shape sh : {Shape{256, 8, 8, 4}, Shape{64, 6, 1, 1}, Shape{384, 8, 1, 1}, Shape{16, 4, 4, 2}, Shape{64, 6, 8, 1}}) {
    RouterParams p;
    p.n_experts = sh.M;
    p.top_k = sh.k;
    p.scoring = RouterScoring::Sigmoid;
    p.groups = GroupRule::TopTwoSum;
    p.n_group = sh.n_group;
    p.topk_group = sh.topk_group;
    p.normalize = true;
    p.norm_eps = 1e-20f;
    p.scale = 2.5f;
    compare_router(p, 45, 48, 100 + sh.M, false, /*with_bias=*/true);
    compare_router(p, 20, 48, 200 + sh.M, /*tied=*/true, /*with_bias=*/true);
  }
  RouterParams q;
  q.n_experts = 128;
  q.top_k = 8;
  q.normalize = true;
  compare_router(q, 64, 64, 300);
  q.top_k = 1;
  compare_router(q, 16, 64, 301);
}

// Logits the softmax turns into NaN everywhere (a NaN, a +inf, only -inf): the CPU router
// then keeps ids 0..k-1 with NaN weights; the kernel must agree (and never leave [0, M)).
TEST(cuda_router_nan_rows_match_cpu_rule) {
  const int M = 64, k = 6, T = 3;
  {  // the rule itself, on the CPU router (runs without a device): a NaN input gives NaN logits
    const int64_t H = 4;
    std::vector<float> x = {1.f, NAN, 2.f, 3.f}, w(M * H, 0.25f), cw(k), scratch(M);
    std::vector<int32_t> cs(k);
    RouterParams p;
    p.n_experts = M;
    p.top_k = k;
    route_tokens_cpu(x.data(), 1, H, TensorView{w.data(), DType::F32, {M, H}}, p, RerouteTableView{}, nullptr,
                     cs.data(), cw.data(), nullptr, scratch.data());
    for (int j = 0; j < k; ++j) {
      CHECK_EQ(cs[j], j);
      CHECK(std::isnan(cw[j]));
    }
  }
  ewtest::need_cuda_device();
  std::vector<float> logits(T * M, 0.5f);
  logits[0 * M + 40] = NAN;
  logits[1 * M + 7] = INFINITY;
  for (int e = 0; e < M; ++e) logits[2 * M + e] = -INFINITY;
  for (int variant : {0, 1, 2}) {  // softmax; softmax normalised; sigmoid (the NaN logit only)
    RouterParams p;
    p.n_experts = M;
    p.top_k = k;
    p.normalize = variant == 1;
    if (variant == 2) p.scoring = RouterScoring::Sigmoid;
    float* d_logits = to_device(logits);
    int32_t* d_slots = to_device(std::vector<int32_t>(T * k, -7));
    float* d_w = to_device(std::vector<float>(T * k, 0.f));
    cuda::CudaOps().route(d_logits, T, p, RerouteTableView{}, nullptr, d_slots, d_w, nullptr);
    CHECK(cudaDeviceSynchronize() == cudaSuccess);
    const auto gs = to_host(d_slots, T * k);
    const auto gw = to_host(d_w, T * k);
    for (void* ptr : {static_cast<void*>(d_logits), static_cast<void*>(d_slots), static_cast<void*>(d_w)}) cudaFree(ptr);
    for (int t = 0; t < (variant == 2 ? 1 : T); ++t)  // sigmoid of +-inf is finite: only row 0 has a NaN
      for (int j = 0; j < k; ++j) {
        CHECK_EQ(gs[t * k + j], j);
        CHECK(std::isnan(gw[t * k + j]));
      }
  }
}

TEST(cuda_expert_pool_maps_shares_and_releases_pages) {
  ewtest::need_cuda_device();
  // Strides of 3/4 of a 2 MiB page: neighbouring ranges share their boundary pages.
  const int64_t H = 1024, I = 768;  // bf16: 1.5 MiB per matrix
  ExpertPoolCuda pool(0, 2, 4, 12, H, I, DType::BF16);
  const size_t page = pool.page_size();
  const ExpertPoolStats empty = pool.stats();
  CHECK_EQ(empty.backed_bytes, size_t{0});
  pool.map_slots(0, 0, 4);
  const int a = pool.alloc_slots(0, 3), b = pool.alloc_slots(0, 2);
  CHECK_EQ(a, 4);
  CHECK_EQ(b, 7);
  pool.map_slots(0, a, 3);
  const size_t with_a = pool.stats().backed_bytes;
  pool.map_slots(0, b, 2);

  // Expected pages per matrix: those touched by slots [0, 9) (all mapped, contiguous).
  const size_t stride = static_cast<size_t>(H * I) * 2;
  const size_t pages = (9 * stride + page - 1) / page;
  CHECK_EQ(pool.stats().backed_bytes, 3 * pages * page);

  // Write and read back one slot of each range.
  std::vector<uint16_t> src(H * I);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint16_t>(i * 7919u);
  TensorView v{src.data(), DType::BF16, {I, H}};
  pool.write_slot(0, ExpertMat::Up, b + 1, v);
  std::vector<uint16_t> back(H * I);
  CHECK(cudaMemcpy(back.data(), pool.slot_data(0, ExpertMat::Up, b + 1), back.size() * 2, cudaMemcpyDeviceToHost) ==
        cudaSuccess);
  CHECK(back == src);

  // Dropping b returns exactly the pages only it used; dropping a then returns to the base.
  pool.unmap_slots(0, b, 2);
  CHECK_EQ(pool.stats().backed_bytes, with_a);
  pool.unmap_slots(0, a, 3);
  const size_t base_pages = (4 * stride + page - 1) / page;
  CHECK_EQ(pool.stats().backed_bytes, 3 * base_pages * page);
  CHECK_EQ(pool.alloc_slots(0, 5), 4);  // the freed run is reusable
}

#endif  // EW_WITH_CUDA

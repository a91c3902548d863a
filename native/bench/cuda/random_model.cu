#include "random_model.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>

#include "util/error.h"

namespace ew {
namespace cuda {
namespace {

__device__ __forceinline__ uint64_t mix64(uint64_t x) {  // splitmix64 finaliser
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

template <typename T>
__global__ void fill_kernel(T* p, int64_t n, uint64_t seed, float scale, float offset) {
  const uint64_t key = mix64(seed);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float u = static_cast<float>(mix64(key ^ static_cast<uint64_t>(i)) >> 40) * (1.f / 16777216.f);  // [0, 1)
    const float v = offset + scale * (2.f * u - 1.f);
    if constexpr (sizeof(T) == 4)
      p[i] = v;
    else
      p[i] = static_cast<T>(v);
  }
}

DeviceBuffer random_buffer(int64_t n, DType dt, uint64_t seed, float scale, float offset, size_t& total) {
  DeviceBuffer b(static_cast<size_t>(n) * dtype_size(dt));
  fill_random(b.data(), dt, n, seed, scale, offset, nullptr);
  total += b.bytes();
  return b;
}

}  // namespace

ModelConfig deepseek_v2_lite_config() {
  ModelConfig c;
  c.model_type = "deepseek_v2";
  c.vocab_size = 102400;
  c.hidden_size = 2048;
  c.num_hidden_layers = 27;
  c.intermediate_size = 10944;
  c.moe_intermediate_size = 1408;
  c.n_routed_experts = 64;
  c.n_shared_experts = 2;
  c.num_experts_per_tok = 6;
  c.first_k_dense_replace = 1;
  c.num_attention_heads = 16;
  c.q_lora_rank = 0;
  c.kv_lora_rank = 512;
  c.qk_nope_head_dim = 128;
  c.qk_rope_head_dim = 64;
  c.v_head_dim = 128;
  c.max_position_embeddings = 163840;
  c.rope_theta = 10000;
  c.rope_scaling = RopeScaling::Yarn;
  c.rope_factor = 40;
  c.rope_original_max_position = 4096;
  c.rope_beta_fast = 32;
  c.rope_beta_slow = 1;
  c.rope_mscale = 0.707;
  c.rope_mscale_all_dim = 0.707;
  c.rms_norm_eps = 1e-6;
  return c;
}

void fill_random(void* p, DType dtype, int64_t n, uint64_t seed, float scale, float offset, void* stream) {
  if (n <= 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 8192));
  switch (dtype) {
    case DType::BF16: fill_kernel<<<grid, 256, 0, s>>>(static_cast<__nv_bfloat16*>(p), n, seed, scale, offset); break;
    case DType::F16: fill_kernel<<<grid, 256, 0, s>>>(static_cast<__half*>(p), n, seed, scale, offset); break;
    case DType::F32: fill_kernel<<<grid, 256, 0, s>>>(static_cast<float*>(p), n, seed, scale, offset); break;
    default: fail("fill_random: unknown dtype ", static_cast<int>(dtype));
  }
  EW_CUDA_CHECK_LAUNCH("fill_kernel");
}

RandomModel make_random_model(const ModelConfig& cfg, const std::vector<AdapterExperts>& adapters, uint64_t seed,
                              bool vmm_pool) {
  RandomModel m;
  m.cfg = cfg;
  const DType dt = m.dtype;
  const int64_t H = cfg.hidden_size, V = cfg.vocab_size, heads = cfg.num_attention_heads;
  const int64_t qd = cfg.q_head_dim(), R = cfg.kv_lora_rank, rope = cfg.qk_rope_head_dim;
  const int64_t M = cfg.n_routed_experts, I = cfg.moe_intermediate_size;
  uint64_t s = seed;
  size_t& total = m.total_bytes;
  // Uniform(-a, a) with a = sqrt(3 / fan_in): unit-variance outputs for unit-variance inputs.
  auto lin = [&](int64_t out, int64_t in) {
    return random_buffer(out * in, dt, ++s, std::sqrt(3.f / static_cast<float>(in)), 0.f, total);
  };
  auto norm = [&](int64_t n) { return random_buffer(n, dt, ++s, 0.f, 1.f, total); };
  m.embed = random_buffer(V * H, dt, ++s, 1.f, 0.f, total);
  m.norm = norm(H);
  m.lm_head = lin(V, H);
  m.n_adapter_rows = 1 + static_cast<int32_t>(adapters.size());
  m.tables = RerouteTables(static_cast<int>(cfg.num_moe_layers()), m.n_adapter_rows, static_cast<int>(M));
  if (vmm_pool) {
    size_t most = 0;  // adapter experts of the fullest MoE layer
    for (int64_t l = 0; l < cfg.num_moe_layers(); ++l) {
      size_t n = 0;
      for (const auto& a : adapters) n += l < static_cast<int64_t>(a.size()) ? a[l].size() : 0;
      most = std::max(most, n);
    }
    int dev = 0;
    EW_CUDA_CHECK(cudaGetDevice(&dev));
    m.pool = std::make_unique<ExpertPoolCuda>(dev, static_cast<int>(cfg.num_moe_layers()), static_cast<int>(M),
                                              static_cast<int>(most), H, I, dt);
  }
  int moe_index = 0;
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    RandomLayer L;
    L.moe = cfg.is_moe_layer(l);
    L.input_norm = norm(H);
    L.post_norm = norm(H);
    if (cfg.q_lora_rank > 0) {
      L.q_a = lin(cfg.q_lora_rank, H);
      L.q_a_norm = norm(cfg.q_lora_rank);
      L.q_b = lin(heads * qd, cfg.q_lora_rank);
    } else {
      L.q_proj = lin(heads * qd, H);
    }
    L.kv_a = lin(R + rope, H);
    L.kv_a_norm = norm(R);
    L.kv_b = lin(heads * (cfg.qk_nope_head_dim + cfg.v_head_dim), R);
    L.o_proj = lin(H, heads * cfg.v_head_dim);
    L.dense_width = L.moe ? cfg.n_shared_experts * I : cfg.intermediate_size;
    if (L.dense_width > 0) {
      L.gate_up = lin(2 * L.dense_width, H);
      L.down = lin(H, L.dense_width);
    }
    if (L.moe) {
      L.router = lin(M, H);
      if (m.pool) m.pool->map_slots(moe_index, 0, static_cast<int>(M));
      int32_t next = static_cast<int32_t>(M);  // slots in use: [0, next)
      for (size_t a = 0; a < adapters.size(); ++a) {
        if (moe_index >= static_cast<int>(adapters[a].size()) || adapters[a][moe_index].empty()) continue;
        const auto& ids = adapters[a][moe_index];
        int32_t first = next;
        if (m.pool) {
          first = m.pool->alloc_slots(moe_index, static_cast<int>(ids.size()));
          if (first != next) fail("make_random_model: the pool placed adapter ", a, " at slot ", first, ", not ", next);
          m.pool->map_slots(moe_index, first, static_cast<int>(ids.size()));
        }
        for (size_t j = 0; j < ids.size(); ++j) {
          if (ids[j] < 0 || ids[j] >= M) fail("make_random_model: adapter ", a, " expert ", ids[j], " out of range");
          m.tables.set(moe_index, static_cast<int>(a + 1), ids[j], first + static_cast<int32_t>(j));
        }
        next = first + static_cast<int32_t>(ids.size());
      }
      L.n_slots = next;
      // Rows of all slots share one fan-in, so one fill per tensor covers every slot.
      const float a_h = std::sqrt(3.f / static_cast<float>(H)), a_i = std::sqrt(3.f / static_cast<float>(I));
      if (m.pool) {
        for (int mat = 0; mat < 3; ++mat) {
          void* p = const_cast<uint8_t*>(m.pool->base(moe_index, static_cast<ExpertMat>(mat)));
          fill_random(p, dt, next * I * H, ++s, mat == 2 ? a_i : a_h, 0.f, nullptr);
          L.experts[mat] = p;
        }
        total += static_cast<size_t>(3 * next * I * H) * dtype_size(dt);
      } else {
        L.exp_gate = lin(next * I, H);
        L.exp_up = lin(next * I, H);
        L.exp_down = lin(next * H, I);
        L.experts[0] = L.exp_gate.data(), L.experts[1] = L.exp_up.data(), L.experts[2] = L.exp_down.data();
      }
      ++moe_index;
    }
    m.layers.push_back(std::move(L));
  }
  EW_CUDA_CHECK(cudaDeviceSynchronize());
  return m;
}

ModelTensors random_model_tensors(const RandomModel& m) {
  const DType dt = m.dtype;
  auto t = [&](const DeviceBuffer& b) { return b.data() ? Weight{b.data(), dt} : Weight{}; };
  ModelTensors d;
  d.embed = t(m.embed), d.norm = t(m.norm), d.lm_head = t(m.lm_head);
  int moe_index = 0;
  for (const RandomLayer& L : m.layers) {
    LayerTensors D;
    D.input_norm = t(L.input_norm), D.post_norm = t(L.post_norm);
    D.q_proj = t(L.q_proj), D.q_a = t(L.q_a), D.q_a_norm = t(L.q_a_norm), D.q_b = t(L.q_b);
    D.kv_a = t(L.kv_a), D.kv_a_norm = t(L.kv_a_norm), D.kv_b = t(L.kv_b);
    D.o_proj = t(L.o_proj);
    D.mlp_width = L.dense_width;
    if (L.dense_width > 0) {  // gate and up are the two halves of one [2W, H] buffer
      D.gate = t(L.gate_up);
      D.up = {static_cast<const char*>(L.gate_up.data()) + L.dense_width * m.cfg.hidden_size * dtype_size(dt), dt};
      D.down = t(L.down);
    }
    D.moe = L.moe;
    if (L.moe) {
      D.moe_index = moe_index++;
      D.router = t(L.router);
      D.experts = MoeWeights{L.experts[0], L.experts[1], L.experts[2], dt, L.n_slots, m.cfg.hidden_size,
                             m.cfg.moe_intermediate_size};
    }
    d.layers.push_back(D);
  }
  return d;
}

}  // namespace cuda
}  // namespace ew

// Test fixtures for ESFT adapters: a scratch directory, a config for a small DeepSeek-V2
// shaped model, and adapter directories (expert_cfg.json + one safetensors file) whose
// expert weights are a deterministic function of (layer, expert, matrix, seed).
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "engine/config.h"
#include "engine/tensor_names.h"
#include "util/tensor.h"
#include "st_writer.h"

namespace ewtest {

// One tensor to write: name, dtype, shape and its raw little-endian bytes.
struct StTensor {
  std::string name;
  ew::DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;
};

inline const char* st_dtype(ew::DType t) {
  return t == ew::DType::F32 ? "F32" : t == ew::DType::F16 ? "F16" : "BF16";
}

// A .safetensors file, written by the loader tests' writer (st_writer.h).
inline void write_safetensors(const std::string& path, const std::vector<StTensor>& tensors) {
  std::vector<st::Tensor> ts;
  for (const StTensor& t : tensors)
    ts.push_back({t.name, st_dtype(t.dtype), t.shape, std::string(t.data.begin(), t.data.end())});
  st::write_file(path, ts);
}

// A scratch directory (removed on destruction) that also makes sub-directories.
class ScratchDir : public st::TempDir {
 public:
  explicit ScratchDir(const std::string& tag) : st::TempDir(tag) {}
  std::string sub(const std::string& name) const {
    std::filesystem::create_directories(path() + "/" + name);
    return path() + "/" + name;
  }
};

inline void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
  if (!f) throw std::runtime_error("cannot write " + path);
}

// MoE from layer 1 on, like DeepSeek-V2-Lite, at toy width.
inline ew::ModelConfig small_moe_config(int64_t layers, int64_t experts, int64_t H, int64_t I) {
  ew::ModelConfig c;
  c.model_type = "deepseek_v2";
  c.num_hidden_layers = layers;
  c.first_k_dense_replace = 1;
  c.n_routed_experts = experts;
  c.num_experts_per_tok = 2;
  c.hidden_size = H;
  c.moe_intermediate_size = I;
  c.intermediate_size = 2 * I;
  return c;
}

inline uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>(u >> 16);
}

// Bytes of one expert matrix: values depend on every argument, so any mix-up shows.
inline std::vector<uint8_t> expert_matrix_bytes(int64_t layer, int64_t expert, int mat, uint32_t seed,
                                                int64_t rows, int64_t cols, ew::DType dtype) {
  const int64_t n = rows * cols;
  std::vector<uint8_t> out(static_cast<size_t>(n) * ew::dtype_size(dtype));
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t h = (static_cast<uint32_t>(layer) * 7919u + static_cast<uint32_t>(expert) * 104729u +
                        static_cast<uint32_t>(mat) * 1299709u + seed * 15485863u + static_cast<uint32_t>(i)) *
                       2654435761u;
    const float v = (static_cast<float>(h >> 8) / 16777216.0f - 0.5f) * 0.25f;
    if (dtype == ew::DType::F32) {
      std::memcpy(out.data() + i * 4, &v, 4);
    } else {
      const uint16_t b = to_bf16(v);  // F16 fixtures are not needed: bf16 and f32 only
      std::memcpy(out.data() + i * 2, &b, 2);
    }
  }
  return out;
}

// The three matrices of one expert as st_writer tensors: gate/up [I, H], down [H, I],
// under the family's names (cfg.family), with or without the leading "model.".
inline void add_expert(std::vector<StTensor>* tensors, const ew::ModelConfig& cfg, int64_t layer, int64_t expert,
                       uint32_t seed, ew::DType dtype = ew::DType::BF16, bool model_prefix = true) {
  const int64_t H = cfg.hidden_size, I = cfg.moe_intermediate_size;
  for (int m = 0; m < 3; ++m) {
    const int64_t rows = m == 2 ? H : I, cols = m == 2 ? I : H;
    const std::string full = ew::expert_tensor_name(cfg, layer, expert, static_cast<ew::ExpertMat>(m));
    tensors->push_back(StTensor{model_prefix ? full : full.substr(6), dtype, {rows, cols},
                                expert_matrix_bytes(layer, expert, m, seed, rows, cols, dtype)});
  }
}

// expert_cfg.json for {layer: ids}.
inline std::string expert_cfg_json(const std::vector<std::pair<int64_t, std::vector<int64_t>>>& layers,
                                   bool shared_experts = false, bool non_expert_modules = false) {
  std::string s = "{\"experts\": {";
  for (size_t i = 0; i < layers.size(); ++i) {
    s += (i ? ", \"" : "\"") + std::to_string(layers[i].first) + "\": [";
    for (size_t j = 0; j < layers[i].second.size(); ++j) s += (j ? ", " : "") + std::to_string(layers[i].second[j]);
    s += "]";
  }
  s += std::string("}, \"shared_experts\": ") + (shared_experts ? "true" : "false") +
       ", \"non_expert_modules\": " + (non_expert_modules ? "true" : "false") + "}";
  return s;
}

// A complete adapter directory: expert_cfg.json plus every listed expert's tensors.
inline void write_adapter(const std::string& dir, const ew::ModelConfig& cfg,
                          const std::vector<std::pair<int64_t, std::vector<int64_t>>>& layers, uint32_t seed) {
  std::vector<StTensor> tensors;
  for (const auto& [layer, ids] : layers)
    for (int64_t e : ids) add_expert(&tensors, cfg, layer, e, seed);
  write_text(dir + "/expert_cfg.json", expert_cfg_json(layers));
  write_safetensors(dir + "/adapter.safetensors", tensors);
}

}  // namespace ewtest

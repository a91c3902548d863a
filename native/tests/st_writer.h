// Test helpers for model loading: a scratch directory, a minimal safetensors writer
// (any dtype string, so unsupported ones can be written too), exact F16/BF16
// encoders, and a tiny DeepSeek-V2 checkpoint built straight from the tensor table in
// docs/model-and-adapters.md. Names live in ewtest::st (adapter_fixtures.h has its own).
#pragma once
#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace ewtest::st {

// A fresh directory under the temp dir (mkdtemp), removed with its contents.
class TempDir {
 public:
  explicit TempDir(const std::string& tag = "load") {
    std::string tmpl = (std::filesystem::temp_directory_path() / ("ew_" + tag + "_XXXXXX")).string();
    if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed for " + tmpl);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!f) throw std::runtime_error("cannot write " + path);
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// ---- element encodings (round to nearest even; inputs in the tests are exact) ----
inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t to_bf16(float f) {
  const uint32_t u = f32_bits(f);
  return static_cast<uint16_t>((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}
inline float from_bf16(uint16_t h) { return bits_f32(static_cast<uint32_t>(h) << 16); }
// Normal numbers and zero only (what the tests write).
inline uint16_t to_f16(float f) {
  const uint32_t u = f32_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000;
  const int32_t exp = static_cast<int32_t>((u >> 23) & 0xFF) - 127 + 15;
  if ((u & 0x7FFFFFFF) == 0) return static_cast<uint16_t>(sign);
  if (exp <= 0 || exp >= 31) throw std::runtime_error("to_f16: value outside the normal f16 range");
  uint32_t mant = u & 0x7FFFFF;
  uint32_t h = sign | (static_cast<uint32_t>(exp) << 10) | (mant >> 13);
  const uint32_t rest = mant & 0x1FFF;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) ++h;
  return static_cast<uint16_t>(h);
}
inline float from_f16(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
  if (exp == 0 && mant == 0) return bits_f32(sign);
  if (exp == 0 || exp == 31) throw std::runtime_error("from_f16: subnormal/inf/nan not used in tests");
  return bits_f32(sign | ((exp - 15 + 127) << 23) | (mant << 13));
}

// Values exactly representable in F32, F16 and BF16: k/16 with |k| < 128.
inline std::vector<float> exact_values(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<float> v(n);
  for (float& x : v) x = static_cast<float>(static_cast<int>(rng() % 255) - 127) / 16.f;
  return v;
}

inline size_t elem_size(const std::string& dtype) { return dtype == "F32" ? 4 : 2; }

inline std::string encode(const std::vector<float>& v, const std::string& dtype) {
  std::string out;
  for (float x : v) {
    if (dtype == "F32") {
      const uint32_t u = f32_bits(x);
      out.append(reinterpret_cast<const char*>(&u), 4);
    } else {
      const uint16_t h = dtype == "F16" ? to_f16(x) : to_bf16(x);
      out.append(reinterpret_cast<const char*>(&h), 2);
    }
  }
  return out;
}

// One tensor to write. `bytes` are stored as given, so a test can make them disagree
// with shape and dtype on purpose.
struct Tensor {
  std::string name;
  std::string dtype;  // "F32", "F16", "BF16", or anything else to test refusals
  std::vector<int64_t> shape;
  std::string bytes;
};

inline int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

inline Tensor tensor(const std::string& name, const std::string& dtype, std::vector<int64_t> shape, uint32_t seed) {
  const std::vector<float> v = exact_values(static_cast<size_t>(numel(shape)), seed);
  return Tensor{name, dtype, std::move(shape), encode(v, dtype)};
}

inline std::string header_json(const std::vector<Tensor>& ts) {
  std::string h = "{\"__metadata__\":{\"format\":\"pt\"}";
  size_t off = 0;
  for (const Tensor& t : ts) {
    std::string shape;
    for (size_t d = 0; d < t.shape.size(); ++d) shape += (d ? "," : "") + std::to_string(t.shape[d]);
    h += ",\"" + t.name + "\":{\"dtype\":\"" + t.dtype + "\",\"shape\":[" + shape + "],\"data_offsets\":[" +
         std::to_string(off) + "," + std::to_string(off + t.bytes.size()) + "]}";
    off += t.bytes.size();
  }
  return h + "}";
}

// A whole file from a header and a data section: 8-byte LE length, header padded with
// spaces to 8 bytes (as the reference writer does), data.
inline std::string file_bytes(std::string header, const std::string& data) {
  while (header.size() % 8) header += ' ';
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return out + header + data;
}

inline std::string file_bytes(const std::vector<Tensor>& ts) {
  std::string data;
  for (const Tensor& t : ts) data += t.bytes;
  return file_bytes(header_json(ts), data);
}

inline void write_file(const std::string& path, const std::vector<Tensor>& ts) { write_bytes(path, file_bytes(ts)); }

// ---- a tiny DeepSeek-V2 model ----

// config.json as ordered (key, raw JSON value) pairs, so tests can change or drop keys.
using ConfigKeys = std::vector<std::pair<std::string, std::string>>;

// 3 layers (0 dense, 1 and 2 MoE), H 64, 4 routed experts of width 24, 1 shared.
// One expert matrix is 64*24 elements: 3072 bytes in BF16, not a page multiple.
inline ConfigKeys tiny_config() {
  return {{"model_type", "\"deepseek_v2\""},
          {"vocab_size", "32"},
          {"hidden_size", "64"},
          {"num_hidden_layers", "3"},
          {"intermediate_size", "48"},
          {"moe_intermediate_size", "24"},
          {"n_routed_experts", "4"},
          {"n_shared_experts", "1"},
          {"num_experts_per_tok", "2"},
          {"first_k_dense_replace", "1"},
          {"moe_layer_freq", "1"},
          {"num_attention_heads", "2"},
          {"q_lora_rank", "null"},
          {"kv_lora_rank", "16"},
          {"qk_nope_head_dim", "8"},
          {"qk_rope_head_dim", "4"},
          {"v_head_dim", "8"},
          {"max_position_embeddings", "256"},
          {"rope_theta", "10000.0"},
          {"rope_scaling", "null"},
          {"scoring_func", "\"softmax\""},
          {"topk_method", "\"greedy\""},
          {"norm_topk_prob", "false"},
          {"routed_scaling_factor", "1.0"},
          {"rms_norm_eps", "1e-06"},
          {"tie_word_embeddings", "false"},
          {"hidden_act", "\"silu\""},
          {"bos_token_id", "0"},
          {"eos_token_id", "1"}};
}

inline ConfigKeys with(ConfigKeys keys, const std::string& key, const std::string& value) {
  for (auto& kv : keys)
    if (kv.first == key) {
      kv.second = value;
      return keys;
    }
  keys.emplace_back(key, value);
  return keys;
}

inline ConfigKeys without(ConfigKeys keys, const std::string& key) {
  for (size_t i = 0; i < keys.size(); ++i)
    if (keys[i].first == key) {
      keys.erase(keys.begin() + static_cast<long>(i));
      break;
    }
  return keys;
}

inline std::string config_text(const ConfigKeys& keys) {
  std::string s = "{\n";
  for (size_t i = 0; i < keys.size(); ++i) s += (i ? ",\n  \"" : "  \"") + keys[i].first + "\": " + keys[i].second;
  return s + "\n}\n";
}

// Shape parameters of the tiny model (mirrors tiny_config(); q_lora_rank may be set).
struct TinyShape {
  int64_t V = 32, H = 64, layers = 3, inter = 48, I = 24, M = 4, shared = 1, heads = 2;
  int64_t q_lora = 0, kv_lora = 16, nope = 8, rope = 4, v = 8;
  int64_t first_dense = 1;
  bool tied = false;
};

// Every tensor of the tiny model, named and shaped as in the doc's table; each tensor
// gets its own seed so values differ between tensors.
inline std::vector<Tensor> tiny_tensors(const TinyShape& s, const std::string& dtype) {
  std::vector<Tensor> ts;
  uint32_t seed = 1;
  auto add = [&](const std::string& name, std::vector<int64_t> shape) {
    ts.push_back(tensor(name, dtype, std::move(shape), seed++));
  };
  add("model.embed_tokens.weight", {s.V, s.H});
  for (int64_t l = 0; l < s.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {s.H});
    add(p + "post_attention_layernorm.weight", {s.H});
    const int64_t qd = s.heads * (s.nope + s.rope);
    if (s.q_lora == 0) {
      add(p + "self_attn.q_proj.weight", {qd, s.H});
    } else {
      add(p + "self_attn.q_a_proj.weight", {s.q_lora, s.H});
      add(p + "self_attn.q_a_layernorm.weight", {s.q_lora});
      add(p + "self_attn.q_b_proj.weight", {qd, s.q_lora});
    }
    add(p + "self_attn.kv_a_proj_with_mqa.weight", {s.kv_lora + s.rope, s.H});
    add(p + "self_attn.kv_a_layernorm.weight", {s.kv_lora});
    add(p + "self_attn.kv_b_proj.weight", {s.heads * (s.nope + s.v), s.kv_lora});
    add(p + "self_attn.o_proj.weight", {s.H, s.heads * s.v});
    if (l < s.first_dense) {
      add(p + "mlp.gate_proj.weight", {s.inter, s.H});
      add(p + "mlp.up_proj.weight", {s.inter, s.H});
      add(p + "mlp.down_proj.weight", {s.H, s.inter});
      continue;
    }
    add(p + "mlp.gate.weight", {s.M, s.H});
    for (int64_t e = 0; e < s.M; ++e) {
      const std::string ep = p + "mlp.experts." + std::to_string(e) + ".";
      add(ep + "gate_proj.weight", {s.I, s.H});
      add(ep + "up_proj.weight", {s.I, s.H});
      add(ep + "down_proj.weight", {s.H, s.I});
    }
    if (s.shared > 0) {
      add(p + "mlp.shared_experts.gate_proj.weight", {s.shared * s.I, s.H});
      add(p + "mlp.shared_experts.up_proj.weight", {s.shared * s.I, s.H});
      add(p + "mlp.shared_experts.down_proj.weight", {s.H, s.shared * s.I});
    }
  }
  add("model.norm.weight", {s.H});
  if (!s.tied) add("lm_head.weight", {s.V, s.H});
  return ts;
}

inline const Tensor& find(const std::vector<Tensor>& ts, const std::string& name) {
  for (const Tensor& t : ts)
    if (t.name == name) return t;
  throw std::runtime_error("fixture has no tensor " + name);
}

inline void erase(std::vector<Tensor>& ts, const std::string& name) {
  for (size_t i = 0; i < ts.size(); ++i)
    if (ts[i].name == name) {
      ts.erase(ts.begin() + static_cast<long>(i));
      return;
    }
  throw std::runtime_error("fixture has no tensor " + name);
}

// Writes config.json and one model.safetensors into dir.
inline void write_model(const std::string& dir, const ConfigKeys& cfg, const std::vector<Tensor>& ts) {
  write_bytes(dir + "/config.json", config_text(cfg));
  write_file(dir + "/model.safetensors", ts);
}

}  // namespace ewtest::st

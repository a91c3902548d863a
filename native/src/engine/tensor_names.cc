#include "engine/tensor_names.h"

#include <cstdio>

namespace ew {
namespace {

bool mixtral(const ModelConfig& cfg) { return cfg.family == ModelFamily::Mixtral; }

}  // namespace

std::string moe_block_prefix(const ModelConfig& cfg, int64_t layer) {
  return "model.layers." + std::to_string(layer) + (mixtral(cfg) ? ".block_sparse_moe" : ".mlp");
}

std::string expert_tensor_name(const ModelConfig& cfg, int64_t layer, int64_t expert, ExpertMat m) {
  static const char* const kHf[kExpertMats] = {"gate_proj", "up_proj", "down_proj"};
  static const char* const kMixtral[kExpertMats] = {"w1", "w3", "w2"};
  const int i = static_cast<int>(m);
  return moe_block_prefix(cfg, layer) + ".experts." + std::to_string(expert) + "." +
         (mixtral(cfg) ? kMixtral[i] : kHf[i]) + ".weight";
}

bool parse_expert_tensor_name(const ModelConfig& cfg, const std::string& name, int64_t* layer, int64_t* expert) {
  const char* s = name.c_str();
  if (name.rfind("model.", 0) == 0) s += 6;
  long long l = 0, e = 0;
  int used = 0;
  const char* pattern = mixtral(cfg) ? "layers.%lld.block_sparse_moe.experts.%lld.%n" : "layers.%lld.mlp.experts.%lld.%n";
  if (std::sscanf(s, pattern, &l, &e, &used) != 2 || used == 0) return false;
  *layer = l;
  *expert = e;
  return true;
}

}  // namespace ew

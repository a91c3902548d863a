#include "engine/adapter.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <sstream>

#include "engine/tensor_names.h"
#include "util/error.h"
#include "util/file.h"
#include "util/json.h"

namespace ew {
namespace {

constexpr size_t kMaxExpertCfgBytes = 1 << 20;  // a selection of every expert of 256 layers fits easily

std::string read_expert_cfg(const std::string& dir, const std::string& path) {
  try {
    return read_regular_file(path, kMaxExpertCfgBytes);
  } catch (const Error& e) {
    fail("adapter ", dir, ": ", e.what());
  }
}

}  // namespace

ExpertSelection parse_expert_selection(const std::string& json_text, const std::string& origin) {
  const json::Value root = json::parse(json_text, origin);
  if (!root.is_object()) fail(origin, ": expected a JSON object");
  ExpertSelection sel;
  auto flag = [&](const char* key) {
    const json::Value* v = root.find(key);
    if (!v || v->is_null()) return false;
    if (!v->is_bool()) fail(origin, ": \"", key, "\" must be true or false");
    return v->as_bool();
  };
  sel.shared_experts = flag("shared_experts");
  sel.non_expert_modules = flag("non_expert_modules");
  const json::Value* experts = root.find("experts");
  if (!experts || !experts->is_object())
    fail(origin, ": \"experts\" must be an object of layer index -> expert ids");
  for (const auto& [key, ids] : experts->as_object()) {
    char* end = nullptr;
    const long long layer = std::strtoll(key.c_str(), &end, 10);
    if (key.empty() || *end != '\0') fail(origin, ": experts key \"", key, "\" is not a layer index");
    if (!ids.is_array()) fail(origin, ": experts[\"", key, "\"] must be a list of expert ids");
    std::vector<int64_t> list;
    for (const json::Value& id : ids.as_array()) {
      if (!id.is_integer()) fail(origin, ": experts[\"", key, "\"] holds a value that is not an integer expert id");
      list.push_back(id.as_int());
    }
    for (const auto& seen : sel.layers)  // "1" and "01" name the same layer
      if (seen.first == layer) fail(origin, ": layer ", layer, " appears twice in experts");
    sel.layers.emplace_back(layer, std::move(list));
  }
  std::sort(sel.layers.begin(), sel.layers.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  return sel;
}

AdapterSpec load_adapter(const std::string& dir, const ModelConfig& cfg, DType pool_dtype) {
  const std::string cfg_path = dir + "/expert_cfg.json";
  const ExpertSelection sel = parse_expert_selection(read_expert_cfg(dir, cfg_path), cfg_path);
  if (sel.shared_experts)
    fail("adapter ", dir, ": ", cfg_path, " has shared_experts: true: the adapter changed the shared experts, "
         "which cannot be served over a shared base model");
  if (sel.non_expert_modules)
    fail("adapter ", dir, ": ", cfg_path, " has non_expert_modules: true: the adapter changed non-expert weights "
         "(attention, norms, router or embeddings), which cannot be served over a shared base model");

  std::vector<int> moe_index(cfg.num_hidden_layers, -1);
  int n_moe = 0;
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l)
    if (cfg.is_moe_layer(l)) moe_index[l] = n_moe++;

  AdapterSpec spec;
  spec.dir = dir;
  spec.layers.resize(n_moe);
  for (const auto& [layer, ids] : sel.layers) {
    if (layer < 0 || layer >= cfg.num_hidden_layers || moe_index[layer] < 0)
      fail("adapter ", dir, ": ", cfg_path, " lists layer ", layer, ", which is not a MoE layer of the base model (",
           cfg.num_hidden_layers, " layers; MoE layers ", cfg.moe_layers_text(), ")");
    std::vector<int64_t> sorted = ids;
    std::sort(sorted.begin(), sorted.end());
    for (size_t i = 0; i < sorted.size(); ++i) {
      if (sorted[i] < 0 || sorted[i] >= cfg.n_routed_experts)
        fail("adapter ", dir, ": ", cfg_path, " layer ", layer, " lists expert ", sorted[i], ", outside [0, ",
             cfg.n_routed_experts, ")");
      if (i > 0 && sorted[i] == sorted[i - 1])
        fail("adapter ", dir, ": ", cfg_path, " layer ", layer, " lists expert ", sorted[i], " twice");
    }
    auto& experts = spec.layers[moe_index[layer]];
    for (int64_t e : sorted) experts.push_back(AdapterExpert{static_cast<int32_t>(e), {}, {}, {}});
    spec.n_experts += static_cast<int64_t>(sorted.size());
  }
  if (spec.n_experts == 0) fail("adapter ", dir, ": ", cfg_path, " lists no experts");

  spec.store = TensorStore::open_dir(dir);
  const int64_t H = cfg.hidden_size, I = cfg.moe_intermediate_size;
  std::set<std::string> consumed;
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    if (moe_index[l] < 0) continue;
    for (AdapterExpert& x : spec.layers[moe_index[l]]) {
      TensorView* views[3] = {&x.gate, &x.up, &x.down};
      for (int m = 0; m < 3; ++m) {
        const std::string full = expert_tensor_name(cfg, l, x.expert, static_cast<ExpertMat>(m));
        const std::string bare = full.substr(6);  // without "model."
        const bool has_full = spec.store->has(full), has_bare = spec.store->has(bare);
        if (has_full && has_bare) fail("adapter ", dir, ": holds both ", full, " and ", bare);
        if (!has_full && !has_bare)
          fail("adapter ", dir, ": missing tensor ", full, " (expert ", x.expert, " of layer ", l,
               " is listed in expert_cfg.json)");
        const std::string& name = has_full ? full : bare;
        const TensorView& v = spec.store->get(name);
        const std::vector<int64_t> want = m == 2 ? std::vector<int64_t>{H, I} : std::vector<int64_t>{I, H};
        if (v.shape != want)
          fail("adapter ", dir, ": tensor ", name, " has shape ", shape_str(v.shape), ", expected ", shape_str(want));
        if (v.dtype != pool_dtype)
          fail("adapter ", dir, ": tensor ", name, " has dtype ", dtype_name(v.dtype), ", the base model's experts are ",
               dtype_name(pool_dtype));
        *views[m] = v;
        consumed.insert(name);
        spec.expert_bytes += v.nbytes();
      }
    }
  }
  for (const std::string& name : spec.store->names()) {
    if (consumed.count(name)) continue;
    int64_t layer, expert;
    if (parse_expert_tensor_name(cfg, name, &layer, &expert))
      fail("adapter ", dir, ": tensor ", name, " is for expert ", expert, " of layer ", layer,
           ", which expert_cfg.json does not list");
    fail("adapter ", dir, ": unexpected tensor ", name, ": an ESFT adapter served over a shared base holds only "
         "routed experts");
  }
  return spec;
}

}  // namespace ew

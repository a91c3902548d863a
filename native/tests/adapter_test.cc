// load_adapter: what a valid ESFT adapter yields, and every refusal with its message.
#include <sys/stat.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "adapter_fixtures.h"
#include "engine/adapter.h"
#include "esft_selections.h"
#include "test.h"
#include "util/error.h"

using namespace ew;
using namespace ewtest;

namespace {

// 4 layers (0 dense, 1..3 MoE), 8 experts, H = 16, I = 12.
ModelConfig cfg4() { return small_moe_config(4, 8, 16, 12); }

bool same_bytes(const TensorView& v, const std::vector<uint8_t>& want) {
  return v.nbytes() == want.size() && std::memcmp(v.data, want.data(), want.size()) == 0;
}

}  // namespace

TEST(adapter_loads_listed_experts_sorted_with_views) {
  ScratchDir tmp("adapter");
  const ModelConfig cfg = cfg4();
  const std::string dir = tmp.sub("a");
  // Layer 2 missing, layer 3 empty, layer 1 unsorted; one layer's tensors without "model.".
  std::vector<StTensor> tensors;
  for (int64_t e : {5, 0, 3}) add_expert(&tensors, cfg, 1, e, 9, DType::BF16, /*model_prefix=*/e != 3);
  write_text(dir + "/expert_cfg.json", expert_cfg_json({{1, {5, 0, 3}}, {3, {}}}));
  write_safetensors(dir + "/x.safetensors", tensors);

  AdapterSpec spec = load_adapter(dir, cfg, DType::BF16);
  CHECK_EQ(spec.layers.size(), size_t{3});
  CHECK_EQ(spec.n_experts, int64_t{3});
  CHECK_EQ(spec.expert_bytes, size_t{3 * 3 * 16 * 12 * 2});
  CHECK_EQ(spec.layers[0].size(), size_t{3});
  CHECK(spec.layers[1].empty() && spec.layers[2].empty());
  const int32_t want_ids[3] = {0, 3, 5};
  for (int i = 0; i < 3; ++i) {
    const AdapterExpert& x = spec.layers[0][i];
    CHECK_EQ(x.expert, want_ids[i]);
    CHECK(x.gate.shape == (std::vector<int64_t>{12, 16}));
    CHECK(x.down.shape == (std::vector<int64_t>{16, 12}));
    CHECK(same_bytes(x.gate, expert_matrix_bytes(1, x.expert, 0, 9, 12, 16, DType::BF16)));
    CHECK(same_bytes(x.up, expert_matrix_bytes(1, x.expert, 1, 9, 12, 16, DType::BF16)));
    CHECK(same_bytes(x.down, expert_matrix_bytes(1, x.expert, 2, 9, 16, 12, DType::BF16)));
  }
}

TEST(adapter_parses_the_published_esft_selections) {
  const int want_total[4] = {124, 153, 128, 83};
  for (int i = 0; i < 4; ++i) {
    const ExpertSelection sel = parse_expert_selection(kEsftSelections[i].json, kEsftSelections[i].task);
    CHECK(!sel.shared_experts && !sel.non_expert_modules);
    CHECK_EQ(sel.layers.size(), size_t{26});
    int total = 0;
    for (size_t j = 0; j < sel.layers.size(); ++j) {
      CHECK_EQ(sel.layers[j].first, static_cast<int64_t>(j + 1));  // ascending layers, whatever the key order
      total += static_cast<int>(sel.layers[j].second.size());
    }
    CHECK_EQ(total, want_total[i]);
  }
}

TEST(adapter_refuses_shared_and_non_expert_changes) {
  ScratchDir tmp("adapter");
  const ModelConfig cfg = cfg4();
  const std::string a = tmp.sub("shared"), b = tmp.sub("nonexpert");
  write_adapter(a, cfg, {{1, {2}}}, 1);
  write_text(a + "/expert_cfg.json", expert_cfg_json({{1, {2}}}, /*shared_experts=*/true));
  CHECK_THROWS_WITH(load_adapter(a, cfg, DType::BF16), "shared_experts: true");
  CHECK_THROWS_WITH(load_adapter(a, cfg, DType::BF16), "cannot be served over a shared base");
  write_adapter(b, cfg, {{1, {2}}}, 1);
  write_text(b + "/expert_cfg.json", expert_cfg_json({{1, {2}}}, false, /*non_expert_modules=*/true));
  CHECK_THROWS_WITH(load_adapter(b, cfg, DType::BF16), "non_expert_modules: true");
}

TEST(adapter_refuses_bad_selections) {
  ScratchDir tmp("adapter");
  const ModelConfig cfg = cfg4();
  struct Bad {
    const char* cfg_json;
    const char* needle;
  } cases[] = {
      {R"({"experts": {"0": [1]}})", "layer 0, which is not a MoE layer"},
      {R"({"experts": {"4": [1]}})", "layer 4, which is not a MoE layer"},
      {R"({"experts": {"1": [8]}})", "expert 8, outside [0, 8)"},
      {R"({"experts": {"1": [-1]}})", "expert -1, outside [0, 8)"},
      {R"({"experts": {"1": [2, 4, 2]}})", "expert 2 twice"},
      {R"({"experts": {"1": []}})", "lists no experts"},
      {R"({"experts": {"one": [1]}})", "experts key \"one\" is not a layer index"},
      {R"({"experts": {"1": [1.5]}})", "experts[\"1\"] holds a value that is not an integer expert id"},
      {R"({"experts": [1, 2]})", "\"experts\" must be an object of layer index -> expert ids"},
      {R"({"experts": {"1": [1]}, "shared_experts": "no"})", "\"shared_experts\" must be true or false"},
      {R"({"experts": {"1": [1]})", "expert_cfg.json: invalid JSON at line 1"},
  };
  for (const Bad& c : cases) {
    const std::string dir = tmp.sub("bad");
    write_adapter(dir, cfg, {{1, {1}}}, 3);
    write_text(dir + "/expert_cfg.json", c.cfg_json);
    CHECK_THROWS_WITH(load_adapter(dir, cfg, DType::BF16), c.needle);
    CHECK_THROWS_WITH(load_adapter(dir, cfg, DType::BF16), dir);  // every message names the adapter
    std::filesystem::remove_all(dir);
  }
  CHECK_THROWS_WITH(load_adapter(tmp.path() + "/absent", cfg, DType::BF16), "expert_cfg.json");
}

TEST(adapter_refuses_bad_tensors) {
  ScratchDir tmp("adapter");
  const ModelConfig cfg = cfg4();
  const auto listed = std::vector<std::pair<int64_t, std::vector<int64_t>>>{{1, {1, 4}}, {2, {0}}};

  auto case_dir = [&](const std::string& name, const std::vector<StTensor>& tensors) {
    const std::string dir = tmp.sub(name);
    write_text(dir + "/expert_cfg.json", expert_cfg_json(listed));
    write_safetensors(dir + "/adapter.safetensors", tensors);
    return dir;
  };
  std::vector<StTensor> good;
  add_expert(&good, cfg, 1, 1, 5);
  add_expert(&good, cfg, 1, 4, 5);
  add_expert(&good, cfg, 2, 0, 5);
  load_adapter(case_dir("good", good), cfg, DType::BF16);  // the base case is valid

  {  // a missing matrix
    std::vector<StTensor> t = good;
    t.erase(t.begin() + 4);  // layer 1 expert 4 up_proj
    CHECK_THROWS_WITH(load_adapter(case_dir("missing", t), cfg, DType::BF16),
                      "missing tensor model.layers.1.mlp.experts.4.up_proj.weight");
  }
  {  // a wrong shape
    std::vector<StTensor> t = good;
    t[2].shape = {12, 16};  // down_proj must be [16, 12]
    CHECK_THROWS_WITH(load_adapter(case_dir("shape", t), cfg, DType::BF16),
                      "model.layers.1.mlp.experts.1.down_proj.weight has shape [12, 16], expected [16, 12]");
  }
  {  // the pool holds bf16: an f32 adapter is refused
    std::vector<StTensor> t;
    add_expert(&t, cfg, 1, 1, 5, DType::F32);
    add_expert(&t, cfg, 1, 4, 5, DType::F32);
    add_expert(&t, cfg, 2, 0, 5, DType::F32);
    CHECK_THROWS_WITH(load_adapter(case_dir("dtype", t), cfg, DType::BF16), "has dtype");
  }
  {  // a tensor for an expert the selection does not list
    std::vector<StTensor> t = good;
    add_expert(&t, cfg, 2, 7, 5);
    CHECK_THROWS_WITH(load_adapter(case_dir("extra_expert", t), cfg, DType::BF16),
                      "is for expert 7 of layer 2, which expert_cfg.json does not list");
  }
  {  // any other tensor
    std::vector<StTensor> t = good;
    t.push_back(StTensor{"model.layers.1.mlp.gate.weight", DType::BF16, {8, 16},
                         std::vector<uint8_t>(8 * 16 * 2, 0)});
    CHECK_THROWS_WITH(load_adapter(case_dir("extra", t), cfg, DType::BF16),
                      "unexpected tensor model.layers.1.mlp.gate.weight");
  }
  {  // the same matrix under both names
    std::vector<StTensor> t = good;
    add_expert(&t, cfg, 2, 0, 5, DType::BF16, /*model_prefix=*/false);
    CHECK_THROWS_WITH(load_adapter(case_dir("both", t), cfg, DType::BF16), "holds both");
  }
  {  // a truncated file: the store's error names it
    const std::string dir = case_dir("truncated", good);
    const std::string file = dir + "/adapter.safetensors";
    std::filesystem::resize_file(file, std::filesystem::file_size(file) - 100);
    CHECK_THROWS_WITH(load_adapter(dir, cfg, DType::BF16), "adapter.safetensors");
  }
}

// A client names the adapter directory: its files must be regular and small, and the
// loader must neither block on a FIFO, read a device without end, nor quote contents.
TEST(adapter_reads_only_small_regular_files) {
  ScratchDir tmp("adapter-files");
  const ModelConfig cfg = cfg4();
  std::vector<StTensor> tensors;
  add_expert(&tensors, cfg, 1, 2, 9, DType::BF16, true);

  const std::string fifo = tmp.sub("fifo");
  CHECK_EQ(::mkfifo((fifo + "/expert_cfg.json").c_str(), 0600), 0);
  write_safetensors(fifo + "/x.safetensors", tensors);
  CHECK_THROWS_WITH(load_adapter(fifo, cfg, DType::BF16), "expert_cfg.json: not a regular file");

  const std::string dev = tmp.sub("dev");
  std::filesystem::create_symlink("/dev/zero", dev + "/expert_cfg.json");
  write_safetensors(dev + "/x.safetensors", tensors);
  CHECK_THROWS_WITH(load_adapter(dev, cfg, DType::BF16), "expert_cfg.json: not a regular file");

  const std::string big = tmp.sub("big");
  write_text(big + "/expert_cfg.json", "{\"experts\": {}, \"pad\": \"" + std::string(2 << 20, 'x') + "\"}");
  write_safetensors(big + "/x.safetensors", tensors);
  CHECK_THROWS_WITH(load_adapter(big, cfg, DType::BF16), "more than the 1048576 such a file may have");

  const std::string secret = tmp.sub("secret");
  write_text(secret + "/expert_cfg.json", "root:x:0:0:root:/root:/bin/bash\n");
  write_safetensors(secret + "/x.safetensors", tensors);
  try {
    load_adapter(secret, cfg, DType::BF16);
    CHECK(false);
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("root:") == std::string::npos);
    CHECK(std::string(e.what()).find("invalid JSON") != std::string::npos);
  }

  const std::string shard = tmp.sub("shard");
  write_text(shard + "/expert_cfg.json", expert_cfg_json({{1, {2}}}));
  CHECK_EQ(::mkfifo((shard + "/x.safetensors").c_str(), 0600), 0);
  CHECK_THROWS_WITH(load_adapter(shard, cfg, DType::BF16), "x.safetensors: not a regular file");
}

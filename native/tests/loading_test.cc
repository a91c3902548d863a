// Model loading: config.json, safetensors files and stores, and load_model_weights.
#include <algorithm>
#include <cstring>

#include "engine/config.h"
#include "engine/safetensors.h"
#include "engine/weights.h"
#include "st_writer.h"
#include "test.h"
#include "util/error.h"

using namespace ew;
namespace st = ewtest::st;

namespace {

// config.json of DeepSeek-V2-Lite (docs/model-and-adapters.md, section 1).
const char* kV2LiteConfig = R"({
  "architectures": ["DeepseekV2ForCausalLM"],
  "attention_bias": false, "attention_dropout": 0.0, "aux_loss_alpha": 0.001,
  "bos_token_id": 100000, "eos_token_id": 100001, "ep_size": 1,
  "first_k_dense_replace": 1, "hidden_act": "silu", "hidden_size": 2048,
  "initializer_range": 0.02, "intermediate_size": 10944, "kv_lora_rank": 512,
  "max_position_embeddings": 163840, "model_type": "deepseek_v2",
  "moe_intermediate_size": 1408, "moe_layer_freq": 1, "n_group": 1, "n_routed_experts": 64,
  "n_shared_experts": 2, "norm_topk_prob": false, "num_attention_heads": 16,
  "num_experts_per_tok": 6, "num_hidden_layers": 27, "num_key_value_heads": 16,
  "pretraining_tp": 1, "q_lora_rank": null, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
  "rms_norm_eps": 1e-06,
  "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707,
                   "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096, "type": "yarn"},
  "rope_theta": 10000, "routed_scaling_factor": 1.0, "scoring_func": "softmax", "seq_aux": true,
  "tie_word_embeddings": false, "topk_group": 1, "topk_method": "greedy",
  "torch_dtype": "bfloat16", "transformers_version": "4.33.1", "use_cache": true,
  "v_head_dim": 128, "vocab_size": 102400
})";

ModelConfig tiny_cfg(const st::ConfigKeys& keys = st::tiny_config()) {
  return parse_model_config(st::config_text(keys));
}

bool same_bytes(const TensorView& v, const st::Tensor& t) {
  return v.nbytes() == t.bytes.size() && std::memcmp(v.data, t.bytes.data(), t.bytes.size()) == 0;
}

}  // namespace

// ---------------------------------------------------------------- config

TEST(config_parses_deepseek_v2_lite) {
  const ModelConfig c = parse_model_config(kV2LiteConfig);
  CHECK_EQ(c.model_type, std::string("deepseek_v2"));
  CHECK_EQ(c.vocab_size, int64_t(102400));
  CHECK_EQ(c.hidden_size, int64_t(2048));
  CHECK_EQ(c.num_hidden_layers, int64_t(27));
  CHECK_EQ(c.intermediate_size, int64_t(10944));
  CHECK_EQ(c.moe_intermediate_size, int64_t(1408));
  CHECK_EQ(c.n_routed_experts, int64_t(64));
  CHECK_EQ(c.n_shared_experts, int64_t(2));
  CHECK_EQ(c.num_experts_per_tok, int64_t(6));
  CHECK_EQ(c.first_k_dense_replace, int64_t(1));
  CHECK_EQ(c.num_attention_heads, int64_t(16));
  CHECK_EQ(c.q_lora_rank, int64_t(0));
  CHECK_EQ(c.kv_lora_rank, int64_t(512));
  CHECK_EQ(c.q_head_dim(), int64_t(192));
  CHECK_EQ(c.v_head_dim, int64_t(128));
  CHECK_EQ(c.kv_cache_width(), int64_t(576));
  CHECK_EQ(c.max_position_embeddings, int64_t(163840));
  CHECK(c.rope_scaling == RopeScaling::Yarn);
  CHECK_EQ(c.rope_factor, 40.0);
  CHECK_EQ(c.rope_original_max_position, int64_t(4096));
  CHECK_EQ(c.rope_beta_fast, 32.0);
  CHECK_EQ(c.rope_beta_slow, 1.0);
  CHECK_EQ(c.rope_mscale, 0.707);
  CHECK_EQ(c.rope_mscale_all_dim, 0.707);
  CHECK_EQ(c.rope_theta, 10000.0);
  CHECK(c.topk_method == TopkMethod::Greedy);
  CHECK(!c.norm_topk_prob);
  CHECK_EQ(c.routed_scaling_factor, 1.0);
  CHECK_EQ(c.rms_norm_eps, 1e-6);
  CHECK_EQ(c.bos_token_id, int64_t(100000));
  CHECK_EQ(c.eos_token_id, int64_t(100001));
  CHECK(!c.is_moe_layer(0));
  CHECK(c.is_moe_layer(1) && c.is_moe_layer(26));
  CHECK_EQ(c.num_moe_layers(), int64_t(26));
}

TEST(config_defaults_follow_hf_deepseek_v2_config) {
  st::ConfigKeys k = st::tiny_config();
  for (const char* key : {"first_k_dense_replace", "moe_layer_freq", "norm_topk_prob", "routed_scaling_factor",
                          "rms_norm_eps", "rope_theta", "rope_scaling", "tie_word_embeddings", "scoring_func",
                          "topk_method", "hidden_act", "bos_token_id", "eos_token_id", "max_position_embeddings"})
    k = st::without(k, key);
  k = st::with(k, "n_group", "null");
  const ModelConfig c = tiny_cfg(k);
  CHECK_EQ(c.first_k_dense_replace, int64_t(0));
  CHECK_EQ(c.moe_layer_freq, int64_t(1));
  CHECK(!c.norm_topk_prob);
  CHECK_EQ(c.routed_scaling_factor, 1.0);
  CHECK_EQ(c.rms_norm_eps, 1e-6);
  CHECK_EQ(c.rope_theta, 10000.0);
  CHECK(c.rope_scaling == RopeScaling::None);
  CHECK(!c.tie_word_embeddings);
  CHECK_EQ(c.n_group, int64_t(1));
  CHECK_EQ(c.topk_group, int64_t(1));
  CHECK_EQ(c.bos_token_id, int64_t(-1));
  CHECK_EQ(c.eos_token_id, int64_t(-1));
  CHECK_EQ(c.max_position_embeddings, int64_t(2048));
  CHECK_EQ(c.num_moe_layers(), int64_t(3));
}

TEST(config_yarn_defaults_linear_scaling_and_token_lists) {
  ModelConfig c = tiny_cfg(st::with(st::tiny_config(), "rope_scaling",
                                    R"({"type": "yarn", "factor": 4, "original_max_position_embeddings": 64})"));
  CHECK(c.rope_scaling == RopeScaling::Yarn);
  CHECK_EQ(c.rope_beta_fast, 32.0);
  CHECK_EQ(c.rope_beta_slow, 1.0);
  CHECK_EQ(c.rope_mscale, 1.0);
  CHECK_EQ(c.rope_mscale_all_dim, 0.0);
  c = tiny_cfg(st::with(st::tiny_config(), "rope_scaling", R"({"rope_type": "linear", "factor": 2.5})"));
  CHECK(c.rope_scaling == RopeScaling::Linear);
  CHECK_EQ(c.rope_factor, 2.5);
  c = tiny_cfg(st::with(st::with(st::tiny_config(), "eos_token_id", "[7, 9]"), "q_lora_rank", "12"));
  CHECK_EQ(c.eos_token_id, int64_t(7));
  CHECK_EQ(c.q_lora_rank, int64_t(12));
  c = tiny_cfg(st::with(st::with(st::with(st::tiny_config(), "topk_method", "\"group_limited_greedy\""), "n_group",
                                 "2"),
                        "topk_group", "1"));
  CHECK(c.topk_method == TopkMethod::GroupLimitedGreedy);
  CHECK_EQ(c.n_group, int64_t(2));
  // moe_layer_freq 2: MoE on even layers past the dense prefix.
  c = tiny_cfg(st::with(st::with(st::tiny_config(), "moe_layer_freq", "2"), "num_hidden_layers", "6"));
  CHECK(!c.is_moe_layer(0) && !c.is_moe_layer(1) && c.is_moe_layer(2) && !c.is_moe_layer(3) && c.is_moe_layer(4));
  // No routed experts: a dense model.
  c = tiny_cfg(st::without(st::without(st::tiny_config(), "n_routed_experts"), "num_experts_per_tok"));
  CHECK_EQ(c.num_moe_layers(), int64_t(0));
}

TEST(config_refusals_name_the_key) {
  struct Case {
    st::ConfigKeys keys;
    const char* needle;
  };
  const st::ConfigKeys base = st::tiny_config();
  const Case cases[] = {
      {st::with(base, "model_type", "\"deepseek_v3\""), "key scoring_func is \"softmax\"; only \"sigmoid\" is supported"},
      {st::with(base, "model_type", "\"llama\""), "model_type \"llama\""},
      {st::without(base, "model_type"), "missing required key model_type"},
      {st::with(base, "scoring_func", "\"sigmoid\""), "key scoring_func is \"sigmoid\""},
      {st::with(base, "topk_method", "\"noaux_tc\""), "key topk_method is \"noaux_tc\""},
      {st::with(base, "hidden_act", "\"gelu\""), "key hidden_act is \"gelu\""},
      {st::with(base, "rope_scaling", R"({"type": "dynamic", "factor": 2})"), "key rope_scaling.type is \"dynamic\""},
      {st::with(base, "rope_scaling", R"({"factor": 2})"), "rope_scaling.type is missing"},
      {st::with(base, "rope_scaling", R"({"type": "yarn", "factor": 2})"),
       "missing required key rope_scaling.original_max_position_embeddings"},
      {st::with(base, "rope_scaling", R"({"type": "linear"})"), "missing required key rope_scaling.factor"},
      {st::with(base, "rope_scaling", R"({"type": "linear", "factor": -1})"), "rope_scaling.factor must be positive"},
      {st::with(base, "rope_scaling", "4"), "rope_scaling must be an object"},
      {st::with(base, "attention_bias", "true"), "key attention_bias is true"},
      {st::without(base, "hidden_size"), "missing required key hidden_size"},
      {st::without(base, "q_lora_rank"), "missing required key q_lora_rank"},
      {st::without(base, "moe_intermediate_size"), "missing required key moe_intermediate_size"},
      {st::without(base, "num_experts_per_tok"), "missing required key num_experts_per_tok"},
      {st::with(base, "hidden_size", "0"), "key hidden_size must be positive"},
      {st::with(base, "num_attention_heads", "-2"), "key num_attention_heads must be positive"},
      {st::with(base, "kv_lora_rank", "0"), "key kv_lora_rank must be positive"},
      {st::with(base, "qk_rope_head_dim", "3"), "key qk_rope_head_dim must be even"},
      {st::with(base, "q_lora_rank", "-1"), "key q_lora_rank must be null or positive"},
      {st::with(base, "hidden_size", "\"64\""), "key hidden_size must be an integer, found string"},
      {st::with(base, "hidden_size", "64.5"), "key hidden_size must be an integer"},
      {st::with(base, "norm_topk_prob", "1"), "key norm_topk_prob must be true or false"},
      {st::with(base, "rms_norm_eps", "\"x\""), "key rms_norm_eps must be a number"},
      {st::with(base, "rms_norm_eps", "0"), "key rms_norm_eps must be positive"},
      {st::with(base, "num_experts_per_tok", "5"), "key num_experts_per_tok (5) exceeds n_routed_experts (4)"},
      {st::with(base, "n_group", "3"), "key n_group (3) does not divide n_routed_experts (4)"},
      {st::with(st::with(base, "n_group", "2"), "topk_group", "3"), "key topk_group (3) exceeds n_group (2)"},
      {st::with(st::with(st::with(st::with(base, "topk_method", "\"group_limited_greedy\""), "n_group", "4"),
                         "topk_group", "1"),
                "num_experts_per_tok", "2"),
       "key num_experts_per_tok (2) exceeds the experts of topk_group"},
      {st::with(base, "moe_layer_freq", "0"), "key moe_layer_freq must be positive"},
      {st::with(base, "routed_scaling_factor", "0"), "key routed_scaling_factor must be positive"},
      {st::with(base, "eos_token_id", "\"</s>\""), "key eos_token_id must be a non-negative integer"},
  };
  for (const Case& c : cases) CHECK_THROWS_WITH(tiny_cfg(c.keys), c.needle);
  CHECK_THROWS_WITH(parse_model_config("[1]"), "must hold a JSON object");
  CHECK_THROWS_WITH(parse_model_config("{\"model_type\": }"), "invalid JSON at line 1");
}

TEST(config_load_names_the_file) {
  st::TempDir d;
  CHECK_THROWS_WITH(load_model_config(d.path()), "cannot open " + d.file("config.json"));
  st::write_bytes(d.file("config.json"), st::config_text(st::with(st::tiny_config(), "hidden_act", "\"relu\"")));
  CHECK_THROWS_WITH(load_model_config(d.path()), d.file("config.json") + ": config: key hidden_act");
  st::write_bytes(d.file("config.json"), st::config_text(st::tiny_config()));
  CHECK_EQ(load_model_config(d.path()).hidden_size, int64_t(64));
}

// ---------------------------------------------------------------- safetensors

TEST(safetensors_reads_f32_f16_bf16_exactly) {
  st::TempDir d;
  const std::vector<float> vals = st::exact_values(3 * 5, 42);
  std::vector<st::Tensor> ts;
  for (const char* dt : {"F32", "F16", "BF16"})
    ts.push_back({std::string("t_") + dt, dt, {3, 5}, st::encode(vals, dt)});
  ts.push_back({"scalar", "F32", {}, st::encode({1.5f}, "F32")});
  ts.push_back({"empty", "BF16", {0, 7}, ""});
  st::write_file(d.file("a.safetensors"), ts);

  SafetensorsFile f(d.file("a.safetensors"));
  CHECK_EQ(f.names().size(), size_t(5));  // __metadata__ is not a tensor
  const TensorView& a = f.get("t_F32");
  const TensorView& b = f.get("t_F16");
  const TensorView& c = f.get("t_BF16");
  CHECK(a.dtype == DType::F32 && b.dtype == DType::F16 && c.dtype == DType::BF16);
  CHECK(a.shape == (std::vector<int64_t>{3, 5}));
  for (size_t i = 0; i < vals.size(); ++i) {
    float x;
    std::memcpy(&x, static_cast<const uint8_t*>(a.data) + 4 * i, 4);
    uint16_t h, g;
    std::memcpy(&h, static_cast<const uint8_t*>(b.data) + 2 * i, 2);
    std::memcpy(&g, static_cast<const uint8_t*>(c.data) + 2 * i, 2);
    CHECK_EQ(x, vals[i]);
    CHECK_EQ(st::from_f16(h), vals[i]);
    CHECK_EQ(st::from_bf16(g), vals[i]);
  }
  // Known encodings of 1.0, independent of the helpers' encoders.
  CHECK_EQ(st::to_f16(1.0f), uint16_t(0x3C00));
  CHECK_EQ(st::to_bf16(1.0f), uint16_t(0x3F80));
  CHECK_EQ(f.get("scalar").numel(), int64_t(1));
  CHECK_EQ(f.get("empty").nbytes(), size_t(0));
  CHECK_THROWS_WITH(f.get("nope"), "missing tensor nope in " + d.file("a.safetensors"));
}

TEST(safetensors_refuses_corrupt_files_with_the_path) {
  st::TempDir d;
  const std::string p = d.file("bad.safetensors");
  auto open_with = [&](const std::string& bytes) {
    st::write_bytes(p, bytes);
    SafetensorsFile f(p);
  };
  const st::Tensor t = st::tensor("w", "F32", {2, 3}, 7);
  auto header = [](const std::string& entry) { return "{\"w\":" + entry + "}"; };

  CHECK_THROWS_WITH(open_with(""), p + ": truncated safetensors file (0 bytes");
  CHECK_THROWS_WITH(open_with("abc"), "shorter than the 8-byte header length");
  std::string past = st::file_bytes({t});
  past[0] = static_cast<char>(0xFF);
  past[5] = 1;
  CHECK_THROWS_WITH(open_with(past), p + ": safetensors header length");
  CHECK_THROWS_WITH(open_with(past), "runs past the end of the file");
  CHECK_THROWS_WITH(open_with(st::file_bytes("{\"w\": {", "")), p + " (header): invalid JSON");
  CHECK_THROWS_WITH(open_with(st::file_bytes("[]", "")), "header is not a JSON object");
  CHECK_THROWS_WITH(open_with(st::file_bytes(header(R"({"dtype":"F32","shape":[2,3],"data_offsets":[0,24]})"), "")),
                    "tensor w: data_offsets [0, 24] run past the data section (0 bytes");
  CHECK_THROWS_WITH(
      open_with(st::file_bytes(header(R"({"dtype":"F32","shape":[2,3],"data_offsets":[0,20]})"), t.bytes)),
      "tensor w: shape [2, 3] of F32 needs 24 bytes but data_offsets span 20");
  CHECK_THROWS_WITH(open_with(st::file_bytes(header(R"({"dtype":"I64","shape":[3],"data_offsets":[0,24]})"), t.bytes)),
                    p + ": tensor w has dtype I64; only F32, F16 and BF16 are supported");
  CHECK_THROWS_WITH(
      open_with(st::file_bytes(header(R"({"dtype":"F32","shape":[-2,3],"data_offsets":[0,24]})"), t.bytes)),
      "shape entries must be non-negative integers");
  CHECK_THROWS_WITH(open_with(st::file_bytes(header(R"({"dtype":"F32","shape":[6],"data_offsets":[8,4]})"), t.bytes)),
                    "begin <= end");
  CHECK_THROWS_WITH(open_with(st::file_bytes(header(R"({"dtype":"F32","shape":[6]})"), t.bytes)),
                    "data_offsets must be an array");
  CHECK_THROWS_WITH(open_with(st::file_bytes(header(R"({"shape":[6],"data_offsets":[0,24]})"), t.bytes)),
                    "missing or non-string dtype");
  CHECK_THROWS_WITH(
      open_with(st::file_bytes(
          header(R"({"dtype":"BF16","shape":[4294967296,4294967296],"data_offsets":[0,24]})"), t.bytes)),
      "needs too many bytes");
  CHECK_THROWS_WITH(open_with(st::file_bytes("{\"__metadata__\": 3}", "")), "__metadata__ is not an object");
  CHECK_THROWS_WITH(open_with(st::file_bytes(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                                             R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                                             std::string(16, '\0'))),
                    p + ": tensors a and b overlap in the data section");
  CHECK_THROWS_WITH(SafetensorsFile(d.file("absent.safetensors")), "cannot open " + d.file("absent.safetensors"));
}

TEST(safetensors_every_truncation_is_an_error_not_a_crash) {
  st::TempDir d;
  const std::string whole = st::file_bytes({st::tensor("a", "BF16", {4, 4}, 1), st::tensor("b", "F32", {3}, 2)});
  const std::string p = d.file("t.safetensors");
  for (size_t n = 0; n < whole.size(); ++n) {
    st::write_bytes(p, whole.substr(0, n));
    CHECK_THROWS_WITH(SafetensorsFile f(p), p);
  }
  st::write_bytes(p, whole);
  CHECK_EQ(SafetensorsFile(p).names().size(), size_t(2));
}

TEST(tensor_store_opens_all_files_of_a_directory) {
  st::TempDir d;
  st::write_file(d.file("a.safetensors"), {st::tensor("x", "F32", {2}, 1)});
  st::write_file(d.file("b.safetensors"), {st::tensor("y", "BF16", {3, 2}, 2)});
  st::write_bytes(d.file("notes.txt"), "ignored");
  auto s = TensorStore::open_dir(d.path());
  CHECK(s->has("x") && s->has("y") && !s->has("z"));
  CHECK_EQ(s->names().size(), size_t(2));
  CHECK_EQ(s->file_of("y"), d.file("b.safetensors"));
  CHECK(s->get_checked("y", {3, 2}).dtype == DType::BF16);
  CHECK_THROWS_WITH(s->get("z"), "missing tensor z in " + d.path());
  CHECK_THROWS_WITH(s->get_checked("y", {2, 3}),
                    "tensor y has shape [3, 2], expected [2, 3] (in " + d.file("b.safetensors") + ")");

  st::write_file(d.file("c.safetensors"), {st::tensor("x", "F32", {2}, 3)});
  CHECK_THROWS_WITH(TensorStore::open_dir(d.path()), "tensor x is defined twice: in " + d.file("a.safetensors") +
                                                         " and in " + d.file("c.safetensors"));
  st::TempDir empty;
  CHECK_THROWS_WITH(TensorStore::open_dir(empty.path()), "no *.safetensors files in " + empty.path());
  CHECK_THROWS_WITH(TensorStore::open_dir(empty.file("nope")), "not a directory");

  auto one = TensorStore::open_file(d.file("b.safetensors"));
  CHECK(one->has("y") && !one->has("x"));
}

TEST(tensor_store_follows_the_shard_index) {
  st::TempDir d;
  const st::Tensor x = st::tensor("x", "F16", {4}, 1);
  const st::Tensor y = st::tensor("y", "F32", {2, 2}, 2);
  const st::Tensor z = st::tensor("z", "BF16", {1}, 3);
  st::write_file(d.file("model-00001-of-00002.safetensors"), {x, y});
  st::write_file(d.file("model-00002-of-00002.safetensors"), {z});
  // A stray file the index does not name is not read.
  st::write_file(d.file("stray.safetensors"), {st::tensor("x", "F32", {1}, 4)});
  const std::string index = d.file("model.safetensors.index.json");
  st::write_bytes(index, R"({"metadata": {"total_size": 28}, "weight_map": {
      "x": "model-00001-of-00002.safetensors", "y": "model-00001-of-00002.safetensors",
      "z": "model-00002-of-00002.safetensors"}})");
  auto s = TensorStore::open_dir(d.path());
  CHECK_EQ(s->names().size(), size_t(3));
  CHECK_EQ(s->file_of("z"), d.file("model-00002-of-00002.safetensors"));
  CHECK(same_bytes(s->get("x"), x) && same_bytes(s->get("y"), y) && same_bytes(s->get("z"), z));

  st::write_bytes(index, R"({"weight_map": {"x": "model-00001-of-00002.safetensors", "w": "gone.safetensors"}})");
  CHECK_THROWS_WITH(TensorStore::open_dir(d.path()), "shard gone.safetensors (listed for tensor w) is missing");
  st::write_bytes(index, R"({"weight_map": {"x": "model-00001-of-00002.safetensors",
      "y": "model-00001-of-00002.safetensors", "z": "model-00001-of-00002.safetensors"}})");
  CHECK_THROWS_WITH(TensorStore::open_dir(d.path()),
                    "tensor z is listed in shard model-00001-of-00002.safetensors but not stored in it");
  st::write_bytes(index, R"({"weight_map": {"x": "model-00001-of-00002.safetensors",
      "z": "model-00002-of-00002.safetensors"}})");
  CHECK_THROWS_WITH(TensorStore::open_dir(d.path()), "tensor y is stored in " +
                                                         d.file("model-00001-of-00002.safetensors") +
                                                         " but not listed in the weight_map");
  st::write_bytes(index, R"({"weight_map": {"x": "../model-00001-of-00002.safetensors"}})");
  CHECK_THROWS_WITH(TensorStore::open_dir(d.path()), "not a file in");
  st::write_bytes(index, R"({"metadata": {}})");
  CHECK_THROWS_WITH(TensorStore::open_dir(d.path()), index + ": missing \"weight_map\" object");
  st::write_bytes(index, R"({"weight_map": )");
  CHECK_THROWS_WITH(TensorStore::open_dir(d.path()), index + ": invalid JSON");
}

// ---------------------------------------------------------------- weights

namespace {

void check_loaded_model(const std::string& dtype, int64_t q_lora, int max_adapter_slots) {
  st::TempDir d;
  st::TinyShape shape;
  shape.q_lora = q_lora;
  st::ConfigKeys keys = st::tiny_config();
  if (q_lora) keys = st::with(keys, "q_lora_rank", std::to_string(q_lora));
  const std::vector<st::Tensor> ts = st::tiny_tensors(shape, dtype);
  st::write_model(d.path(), keys, ts);

  const ModelConfig cfg = load_model_config(d.path());
  ModelWeights w = load_model_weights(d.path(), cfg, PoolOptions{max_adapter_slots});
  CHECK(same_bytes(w.embed, st::find(ts, "model.embed_tokens.weight")));
  CHECK(same_bytes(w.norm, st::find(ts, "model.norm.weight")));
  CHECK(same_bytes(w.lm_head, st::find(ts, "lm_head.weight")));
  CHECK_EQ(w.layers.size(), size_t(3));
  CHECK(!w.layers[0].is_moe && w.layers[1].is_moe && w.layers[2].is_moe);
  CHECK_EQ(w.layers[2].moe_index, 1);
  CHECK(same_bytes(w.layers[0].dense.down, st::find(ts, "model.layers.0.mlp.down_proj.weight")));
  CHECK(same_bytes(w.layers[2].router, st::find(ts, "model.layers.2.mlp.gate.weight")));
  CHECK(w.layers[1].has_shared);
  CHECK(same_bytes(w.layers[1].shared.up, st::find(ts, "model.layers.1.mlp.shared_experts.up_proj.weight")));
  CHECK(same_bytes(w.layers[2].attn.kv_b_proj, st::find(ts, "model.layers.2.self_attn.kv_b_proj.weight")));
  if (q_lora) {
    CHECK(w.layers[1].attn.q_proj.data == nullptr);
    CHECK(same_bytes(w.layers[1].attn.q_a_layernorm, st::find(ts, "model.layers.1.self_attn.q_a_layernorm.weight")));
    CHECK(same_bytes(w.layers[1].attn.q_b_proj, st::find(ts, "model.layers.1.self_attn.q_b_proj.weight")));
  } else {
    CHECK(w.layers[1].attn.q_a_proj.data == nullptr);
    CHECK(same_bytes(w.layers[1].attn.q_proj, st::find(ts, "model.layers.1.self_attn.q_proj.weight")));
  }

  // Base expert e of MoE layer i sits in slot e, bit for bit.
  ExpertStore& pool = *w.experts;
  CHECK_EQ(pool.n_layers(), 2);
  CHECK_EQ(pool.n_base(), 4);
  CHECK_EQ(pool.capacity(), 4 + max_adapter_slots);
  CHECK_EQ(dtype_name(pool.dtype()), dtype);
  const char* mats[3] = {"gate_proj", "up_proj", "down_proj"};
  for (int li = 0; li < 2; ++li)
    for (int e = 0; e < 4; ++e)
      for (int m = 0; m < 3; ++m) {
        const std::string name =
            "model.layers." + std::to_string(li + 1) + ".mlp.experts." + std::to_string(e) + "." + mats[m] + ".weight";
        const st::Tensor& t = st::find(ts, name);
        const TensorView v = pool.slot_view(li, static_cast<ExpertMat>(m), e);
        CHECK(v.shape == t.shape);
        CHECK(same_bytes(v, t));
      }
  const ExpertPoolStats s = pool.stats();
  CHECK_EQ(s.used_slots, int64_t(8));
  CHECK_EQ(s.expert_bytes, size_t(8) * 3 * 64 * 24 * st::elem_size(dtype));
  CHECK(s.backed_bytes >= s.expert_bytes);
}

}  // namespace

TEST(weights_bind_every_tensor_and_fill_the_pool_bf16) { check_loaded_model("BF16", 0, 6); }
TEST(weights_bind_every_tensor_and_fill_the_pool_f32_q_lora) { check_loaded_model("F32", 16, 0); }
TEST(weights_bind_every_tensor_and_fill_the_pool_f16) { check_loaded_model("F16", 0, 3); }

TEST(weights_tied_embeddings_and_sharded_checkpoints) {
  st::TempDir d;
  st::TinyShape shape;
  shape.tied = true;
  std::vector<st::Tensor> ts = st::tiny_tensors(shape, "BF16");
  // Sharded: the first half of the tensors in one file, the rest in another.
  const size_t half = ts.size() / 2;
  const auto mid = ts.begin() + static_cast<long>(half);
  std::vector<st::Tensor> a(ts.begin(), mid), b(mid, ts.end());
  st::write_file(d.file("model-00001-of-00002.safetensors"), a);
  st::write_file(d.file("model-00002-of-00002.safetensors"), b);
  std::string wm = "{\"weight_map\": {";
  for (size_t i = 0; i < ts.size(); ++i)
    wm += std::string(i ? "," : "") + "\"" + ts[i].name + "\": \"model-0000" + (i < half ? "1" : "2") +
          "-of-00002.safetensors\"";
  st::write_bytes(d.file("model.safetensors.index.json"), wm + "}}");
  st::write_bytes(d.file("config.json"), st::config_text(st::with(st::tiny_config(), "tie_word_embeddings", "true")));
  ModelWeights w = load_model_weights(d.path(), load_model_config(d.path()), PoolOptions{});
  CHECK(w.lm_head.data == w.embed.data);
  CHECK(same_bytes(w.lm_head, st::find(ts, "model.embed_tokens.weight")));
  CHECK(same_bytes(w.norm, st::find(ts, "model.norm.weight")));
  CHECK_EQ(w.experts->capacity(), 4);
}

TEST(weights_dense_model_has_no_pool) {
  st::TempDir d;
  st::TinyShape shape;
  shape.first_dense = 3;  // every layer dense
  st::write_model(d.path(), st::with(st::tiny_config(), "first_k_dense_replace", "3"), st::tiny_tensors(shape, "F32"));
  ModelWeights w = load_model_weights(d.path(), load_model_config(d.path()), PoolOptions{4});
  CHECK(!w.experts);
  CHECK(!w.layers[2].is_moe);
}

TEST(weights_refusals_name_the_tensor) {
  const st::TinyShape shape;
  const std::vector<st::Tensor> good = st::tiny_tensors(shape, "BF16");
  const ModelConfig cfg = tiny_cfg();
  auto load = [&](const std::vector<st::Tensor>& ts) {
    st::TempDir d;
    st::write_model(d.path(), st::tiny_config(), ts);
    try {
      load_model_weights(d.path(), cfg, PoolOptions{2});
    } catch (const Error& e) {
      // The directory is gone after this lambda; keep only the path-free part of the message.
      std::string m = e.what();
      const size_t at = m.find(d.path());
      if (at != std::string::npos) m.replace(at, d.path().size(), "DIR");
      throw Error(m);
    }
  };

  std::vector<st::Tensor> ts = good;
  st::erase(ts, "model.layers.2.mlp.experts.3.up_proj.weight");
  CHECK_THROWS_WITH(load(ts), "missing tensor model.layers.2.mlp.experts.3.up_proj.weight in DIR");
  ts = good;
  st::erase(ts, "lm_head.weight");
  CHECK_THROWS_WITH(load(ts), "missing tensor lm_head.weight");

  ts = good;
  for (st::Tensor& t : ts)
    if (t.name == "model.layers.1.self_attn.kv_b_proj.weight") t = st::tensor(t.name, "BF16", {16, 32}, 9);
  CHECK_THROWS_WITH(load(ts), "tensor model.layers.1.self_attn.kv_b_proj.weight has shape [16, 32], expected [32, 16] "
                              "(in DIR/model.safetensors)");

  ts = good;
  ts.push_back(st::tensor("model.layers.1.mlp.experts.4.gate_proj.weight", "BF16", {24, 64}, 9));
  CHECK_THROWS_WITH(load(ts), "1 tensor(s) not used by config.json (3 layers, 4 routed experts): "
                              "model.layers.1.mlp.experts.4.gate_proj.weight");
  ts = good;
  ts.push_back(st::tensor("model.layers.3.input_layernorm.weight", "BF16", {64}, 9));
  CHECK_THROWS_WITH(load(ts), "model.layers.3.input_layernorm.weight");
  ts = good;
  ts.push_back(st::tensor("model.layers.0.mlp.experts.0.gate_proj.weight", "BF16", {24, 64}, 9));  // layer 0 is dense
  CHECK_THROWS_WITH(load(ts), "not used by config.json");
  ts = good;
  st::erase(ts, "model.layers.1.self_attn.q_proj.weight");
  ts.push_back(st::tensor("model.layers.1.self_attn.q_a_proj.weight", "BF16", {16, 64}, 9));
  CHECK_THROWS_WITH(load(ts), "missing tensor model.layers.1.self_attn.q_proj.weight");

  ts = good;
  for (st::Tensor& t : ts)
    if (t.name == "model.layers.2.mlp.experts.1.down_proj.weight") t = st::tensor(t.name, "F32", t.shape, 9);
  CHECK_THROWS_WITH(load(ts), "tensor model.layers.2.mlp.experts.1.down_proj.weight is F32 but "
                              "model.layers.2.mlp.experts.0.gate_proj.weight is BF16");
  ts = good;
  for (st::Tensor& t : ts)
    if (t.name.find("model.layers.2.mlp.experts.") == 0) t = st::tensor(t.name, "F16", t.shape, 9);
  CHECK_THROWS_WITH(load(ts), "routed experts of layer 2 are F16 but earlier MoE layers are BF16");

  // Buffers transformers may save are ignored; other dtypes of non-expert tensors are fine.
  ts = good;
  ts.push_back(st::tensor("model.layers.0.self_attn.rotary_emb.inv_freq", "F32", {2}, 9));
  for (st::Tensor& t : ts)
    if (t.name == "model.norm.weight") t = st::tensor(t.name, "F32", t.shape, 9);
  load(ts);
}

// release_pages drops a tensor's whole pages from the process; reading the view again brings
// the same bytes back from the file, and memory outside the store's mappings is left alone.
TEST(tensor_store_release_pages_loses_no_bytes) {
  st::TempDir d;
  st::write_file(d.file("a.safetensors"), {st::tensor("small", "F32", {3}, 1), st::tensor("big", "BF16", {1000, 700}, 2),
                                           st::tensor("after", "F32", {5}, 3)});
  auto s = TensorStore::open_dir(d.path());
  auto bytes_of = [&](const std::string& n) {
    const TensorView& v = s->get(n);
    return std::string(static_cast<const char*>(v.data), v.nbytes());
  };
  const std::string small = bytes_of("small"), big = bytes_of("big"), after = bytes_of("after");
  const TensorView& v = s->get("big");
  CHECK(s->maps(v.data) && !s->maps(small.data()));
  s->release_pages(v.data, v.nbytes());
  CHECK(bytes_of("big") == big);
  CHECK(bytes_of("small") == small && bytes_of("after") == after);  // the neighbours share edge pages
  std::vector<char> heap(1 << 16, 'x');
  s->release_pages(heap.data(), heap.size());  // not a mapping: untouched
  CHECK(std::all_of(heap.begin(), heap.end(), [](char c) { return c == 'x'; }));
}

// Reading config.json keys for the family parsers (config.cc, config_deepseek.cc,
// config_gqa.cc): typed access whose errors name the key and what was found, and the
// per-family parse steps. Engine-internal: only the config parsers include it.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "engine/config.h"
#include "util/json.h"

namespace ew {

// A short rendering of a JSON value for messages: true, 4.5, "yarn", null, an object.
std::string json_text(const json::Value& v);

// Typed access to one JSON object with errors that name the key. `prefix` locates
// nested objects ("rope_scaling."). A null value means "not set", as in HF configs.
class ConfigKeys {
 public:
  ConfigKeys(const json::Value& obj, std::string prefix) : obj_(obj), prefix_(std::move(prefix)) {}

  const json::Value* find(const char* key) const;
  bool present(const char* key) const { return find(key) != nullptr; }

  int64_t integer(const char* key) const;                // required
  int64_t integer(const char* key, int64_t dflt) const;  // optional
  int64_t positive(const char* key) const;               // required, > 0
  int64_t positive(const char* key, int64_t dflt) const;
  double number(const char* key) const;
  double number(const char* key, double dflt) const;
  double positive_number(const char* key, double dflt) const;  // finite and > 0
  bool boolean(const char* key, bool dflt) const;
  std::string str(const char* key, const std::string& dflt) const;
  // A list of non-negative integers (absent: empty).
  std::vector<int64_t> index_list(const char* key) const;
  // Refuses a string key whose value (or `dflt` when absent) is not one of `allowed`.
  std::string one_of(const char* key, const std::string& dflt, std::initializer_list<const char*> allowed) const;
  // Refuses a key that is present (non-null) and not false: a feature the engine lacks.
  void refuse_true(const char* key, const char* why) const;
  // Refuses a key that is present with any non-null value.
  void refuse_set(const char* key, const char* why) const;

  [[noreturn]] void fail_key(const char* key, const std::string& why) const;

 private:
  const json::Value& obj_;
  std::string prefix_;
  int64_t as_int(const char* key, const json::Value& v) const;
};

// bos/eos: an id, a list of ids (the first counts) or absent (-1).
int64_t token_id(const json::Value& root, const char* key);

// The family parts of parse_model_config: each reads its keys into c (c.model_type,
// c.family and the keys every family shares are set before).
void parse_deepseek_keys(const ConfigKeys& k, const json::Value& root, ModelConfig& c);
void parse_gqa_keys(const ConfigKeys& k, ModelConfig& c);

}  // namespace ew

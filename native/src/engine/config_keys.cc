#include "engine/config_keys.h"

#include <cmath>
#include <sstream>

#include "util/error.h"

namespace ew {

std::string json_text(const json::Value& v) {
  switch (v.type()) {
    case json::Type::Null: return "null";
    case json::Type::Bool: return v.as_bool() ? "true" : "false";
    case json::Type::Number: {
      if (v.is_integer()) return std::to_string(v.as_int());
      std::ostringstream os;
      os << v.as_number();
      return os.str();
    }
    case json::Type::String: return "\"" + v.as_string() + "\"";
    case json::Type::Array: return "an array";
    case json::Type::Object: return "an object";
  }
  return "?";
}

const json::Value* ConfigKeys::find(const char* key) const {
  const json::Value* v = obj_.find(key);
  return v && !v->is_null() ? v : nullptr;
}

void ConfigKeys::fail_key(const char* key, const std::string& why) const { fail("config: key ", prefix_, key, " ", why); }

int64_t ConfigKeys::as_int(const char* key, const json::Value& v) const {
  if (!v.is_integer()) {
    if (v.is_number()) fail_key(key, concat("must be an integer, found ", v.as_number()));
    fail_key(key, concat("must be an integer, found ", json::type_name(v.type())));
  }
  return v.as_int();
}

int64_t ConfigKeys::integer(const char* key) const {
  const json::Value* v = find(key);
  if (!v) fail("config: missing required key ", prefix_, key);
  return as_int(key, *v);
}

int64_t ConfigKeys::integer(const char* key, int64_t dflt) const {
  const json::Value* v = find(key);
  return v ? as_int(key, *v) : dflt;
}

int64_t ConfigKeys::positive(const char* key) const {
  const int64_t v = integer(key);
  if (v <= 0) fail_key(key, concat("must be positive, found ", v));
  return v;
}

int64_t ConfigKeys::positive(const char* key, int64_t dflt) const {
  const int64_t v = integer(key, dflt);
  if (v <= 0) fail_key(key, concat("must be positive, found ", v));
  return v;
}

double ConfigKeys::number(const char* key, double dflt) const {
  const json::Value* v = find(key);
  if (!v) return dflt;
  if (!v->is_number()) fail_key(key, concat("must be a number, found ", json::type_name(v->type())));
  return v->as_number();
}

double ConfigKeys::number(const char* key) const {
  if (!present(key)) fail("config: missing required key ", prefix_, key);
  return number(key, 0.0);
}

double ConfigKeys::positive_number(const char* key, double dflt) const {
  const double v = number(key, dflt);
  if (!(v > 0) || !std::isfinite(v)) fail_key(key, concat("must be positive, found ", v));
  return v;
}

bool ConfigKeys::boolean(const char* key, bool dflt) const {
  const json::Value* v = find(key);
  if (!v) return dflt;
  if (!v->is_bool()) fail_key(key, concat("must be true or false, found ", json::type_name(v->type())));
  return v->as_bool();
}

std::string ConfigKeys::str(const char* key, const std::string& dflt) const {
  const json::Value* v = find(key);
  if (!v) return dflt;
  if (!v->is_string()) fail_key(key, concat("must be a string, found ", json::type_name(v->type())));
  return v->as_string();
}

std::vector<int64_t> ConfigKeys::index_list(const char* key) const {
  const json::Value* v = find(key);
  std::vector<int64_t> out;
  if (!v) return out;
  if (!v->is_array()) fail_key(key, concat("must be a list of layer indices, found ", json_text(*v)));
  for (const json::Value& e : v->as_array()) {
    if (!e.is_integer() || e.as_int() < 0)
      fail_key(key, concat("must be a list of layer indices, found the element ", json_text(e)));
    out.push_back(e.as_int());
  }
  return out;
}

std::string ConfigKeys::one_of(const char* key, const std::string& dflt,
                               std::initializer_list<const char*> allowed) const {
  const std::string v = str(key, dflt);
  std::string list;
  for (const char* a : allowed) {
    if (v == a) return v;
    list += std::string(list.empty() ? "" : " and ") + "\"" + a + "\"";
  }
  fail_key(key, concat("is \"", v, "\"; only ", list, allowed.size() > 1 ? " are" : " is", " supported"));
}

void ConfigKeys::refuse_true(const char* key, const char* why) const {
  const json::Value* v = find(key);
  if (v && !(v->is_bool() && !v->as_bool())) fail_key(key, concat("is ", json_text(*v), ": ", why));
}

void ConfigKeys::refuse_set(const char* key, const char* why) const {
  const json::Value* v = find(key);
  if (v) fail_key(key, concat("is ", json_text(*v), ": ", why));
}

int64_t token_id(const json::Value& root, const char* key) {
  const json::Value* v = root.find(key);
  if (!v || v->is_null()) return -1;
  if (v->is_array()) {
    if (v->as_array().empty()) return -1;
    v = &v->as_array()[0];
  }
  if (!v->is_integer() || v->as_int() < 0)
    fail("config: key ", key, " must be a non-negative integer or a list of them");
  return v->as_int();
}

}  // namespace ew

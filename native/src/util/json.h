// A small strict JSON reader (RFC 8259) for config.json, safetensors headers and
// expert_cfg.json. Errors are ew::Error with the origin, line and column.
// Objects keep their members in file order; duplicate keys are refused. String bytes
// >= 0x80 pass through as they are (not checked to be valid UTF-8).
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace ew::json {

enum class Type : uint8_t { Null, Bool, Number, String, Array, Object };
const char* type_name(Type t);

class Value {
 public:
  using Member = std::pair<std::string, Value>;

  Value() = default;
  static Value boolean(bool b);
  static Value number(double d);
  static Value integer(int64_t i);
  static Value string(std::string s);
  static Value array(std::vector<Value> items);
  static Value object(std::vector<Member> members);

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::Null; }
  bool is_bool() const { return type_ == Type::Bool; }
  bool is_number() const { return type_ == Type::Number; }
  bool is_string() const { return type_ == Type::String; }
  bool is_array() const { return type_ == Type::Array; }
  bool is_object() const { return type_ == Type::Object; }
  // True for a number without fraction or exponent that fits int64 exactly.
  bool is_integer() const { return type_ == Type::Number && exact_int_; }

  // Typed accessors; each throws ew::Error naming the expected and actual type.
  bool as_bool() const;
  double as_number() const;
  int64_t as_int() const;  // integer literals only (no 1.0, no 1e3)
  const std::string& as_string() const;
  const std::vector<Value>& as_array() const;
  const std::vector<Member>& as_object() const;

  // Object member lookup (linear; objects we look keys up in are small).
  // find: nullptr when absent or when this is not an object.
  const Value* find(const std::string& key) const;

 private:
  Type type_ = Type::Null;
  bool bool_ = false;
  bool exact_int_ = false;
  double num_ = 0;
  int64_t int_ = 0;
  std::string str_;
  std::vector<Value> arr_;
  std::vector<Member> obj_;
};

// Parses a whole document (one value, surrounding whitespace only). `origin` names
// the source (a file path) in error messages.
Value parse(const std::string& text, const std::string& origin = "json");
Value parse(const char* data, size_t size, const std::string& origin);

}  // namespace ew::json

#include "util/json.h"

#include <algorithm>
#include <charconv>
#include <cmath>

#include "util/error.h"

namespace ew::json {

const char* type_name(Type t) {
  switch (t) {
    case Type::Null: return "null";
    case Type::Bool: return "boolean";
    case Type::Number: return "number";
    case Type::String: return "string";
    case Type::Array: return "array";
    case Type::Object: return "object";
  }
  return "?";
}

Value Value::boolean(bool b) {
  Value v;
  v.type_ = Type::Bool;
  v.bool_ = b;
  return v;
}
Value Value::number(double d) {
  Value v;
  v.type_ = Type::Number;
  v.num_ = d;
  return v;
}
Value Value::integer(int64_t i) {
  Value v;
  v.type_ = Type::Number;
  v.num_ = static_cast<double>(i);
  v.int_ = i;
  v.exact_int_ = true;
  return v;
}
Value Value::string(std::string s) {
  Value v;
  v.type_ = Type::String;
  v.str_ = std::move(s);
  return v;
}
Value Value::array(std::vector<Value> items) {
  Value v;
  v.type_ = Type::Array;
  v.arr_ = std::move(items);
  return v;
}
Value Value::object(std::vector<Member> members) {
  Value v;
  v.type_ = Type::Object;
  v.obj_ = std::move(members);
  return v;
}

namespace {
[[noreturn]] void wrong_type(const char* want, Type got) { fail("expected a JSON ", want, ", found ", type_name(got)); }
}  // namespace

bool Value::as_bool() const {
  if (type_ != Type::Bool) wrong_type("boolean", type_);
  return bool_;
}
double Value::as_number() const {
  if (type_ != Type::Number) wrong_type("number", type_);
  return num_;
}
int64_t Value::as_int() const {
  if (type_ != Type::Number) wrong_type("integer", type_);
  if (!exact_int_) fail("expected a JSON integer, found ", num_);
  return int_;
}
const std::string& Value::as_string() const {
  if (type_ != Type::String) wrong_type("string", type_);
  return str_;
}
const std::vector<Value>& Value::as_array() const {
  if (type_ != Type::Array) wrong_type("array", type_);
  return arr_;
}
const std::vector<Value::Member>& Value::as_object() const {
  if (type_ != Type::Object) wrong_type("object", type_);
  return obj_;
}
const Value* Value::find(const std::string& key) const {
  if (type_ != Type::Object) return nullptr;
  for (const Member& m : obj_)
    if (m.first == key) return &m.second;
  return nullptr;
}

namespace {

// Nesting bound: deeper documents are refused instead of overflowing the stack.
constexpr int kMaxDepth = 256;

class Parser {
 public:
  Parser(const char* p, size_t n, const std::string& origin) : s_(p), n_(n), origin_(origin) {}

  Value document() {
    ws();
    Value v = value(0);
    ws();
    if (i_ != n_) error("unexpected character after the JSON value");
    return v;
  }

 private:
  const char* s_;
  size_t n_;
  size_t i_ = 0;
  const std::string& origin_;

  [[noreturn]] void error(const std::string& what) const { error_at(i_, what); }
  [[noreturn]] void error_at(size_t at, const std::string& what) const {
    size_t line = 1, col = 1;
    for (size_t k = 0; k < at && k < n_; ++k) {
      if (s_[k] == '\n') {
        ++line;
        col = 1;
      } else {
        ++col;
      }
    }
    fail(origin_, ": invalid JSON at line ", line, ", column ", col, " (byte ", at, "): ", what);
  }

  void ws() {
    while (i_ < n_ && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }
  bool eof() const { return i_ >= n_; }
  char peek() const { return s_[i_]; }

  void expect_word(const char* w) {
    const size_t start = i_;
    for (const char* c = w; *c; ++c, ++i_)
      if (i_ >= n_ || s_[i_] != *c) error_at(start, std::string("invalid literal (expected '") + w + "')");
  }

  Value value(int depth) {
    if (eof()) error("unexpected end of input, expected a value");
    switch (peek()) {
      case '{': return object(depth + 1);
      case '[': return array(depth + 1);
      case '"': return Value::string(string());
      case 't': expect_word("true"); return Value::boolean(true);
      case 'f': expect_word("false"); return Value::boolean(false);
      case 'n': expect_word("null"); return Value();
      default:
        if (peek() == '-' || (peek() >= '0' && peek() <= '9')) return number();
        error(std::string("unexpected character '") + peek() + "'");
    }
  }

  Value object(int depth) {
    if (depth > kMaxDepth) error("nesting deeper than 256 levels");
    ++i_;  // '{'
    std::vector<Value::Member> members;
    std::vector<size_t> key_at;
    ws();
    if (!eof() && peek() == '}') {
      ++i_;
      return Value::object(std::move(members));
    }
    for (;;) {
      ws();
      if (eof() || peek() != '"') error("expected a string key");
      key_at.push_back(i_);
      std::string key = string();
      ws();
      if (eof() || peek() != ':') error("expected ':' after object key");
      ++i_;
      ws();
      Value v = value(depth);
      members.emplace_back(std::move(key), std::move(v));
      ws();
      if (eof()) error("unexpected end of input inside an object");
      if (peek() == ',') {
        ++i_;
        continue;
      }
      if (peek() == '}') {
        ++i_;
        check_duplicates(members, key_at);
        return Value::object(std::move(members));
      }
      error("expected ',' or '}' in an object");
    }
  }

  // One sort per object keeps large objects (safetensors headers, weight maps) n log n.
  void check_duplicates(const std::vector<Value::Member>& members, const std::vector<size_t>& key_at) {
    if (members.size() < 2) return;
    std::vector<size_t> order(members.size());
    for (size_t k = 0; k < order.size(); ++k) order[k] = k;
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return members[a].first != members[b].first ? members[a].first < members[b].first : a < b;
    });
    for (size_t k = 1; k < order.size(); ++k)
      if (members[order[k]].first == members[order[k - 1]].first)
        error_at(key_at[order[k]], "duplicate key \"" + members[order[k]].first + "\"");
  }

  Value array(int depth) {
    if (depth > kMaxDepth) error("nesting deeper than 256 levels");
    ++i_;  // '['
    std::vector<Value> items;
    ws();
    if (!eof() && peek() == ']') {
      ++i_;
      return Value::array(std::move(items));
    }
    for (;;) {
      ws();
      items.push_back(value(depth));
      ws();
      if (eof()) error("unexpected end of input inside an array");
      if (peek() == ',') {
        ++i_;
        continue;
      }
      if (peek() == ']') {
        ++i_;
        return Value::array(std::move(items));
      }
      error("expected ',' or ']' in an array");
    }
  }

  static void put_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  uint32_t hex4() {
    if (n_ - i_ < 4) error("truncated \\u escape");
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k, ++i_) {
      const char c = s_[i_];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= c - '0';
      else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
      else error("invalid hex digit in \\u escape");
    }
    return v;
  }

  std::string string() {
    ++i_;  // opening quote
    std::string out;
    for (;;) {
      if (eof()) error("unterminated string");
      const unsigned char c = static_cast<unsigned char>(s_[i_]);
      if (c == '"') {
        ++i_;
        return out;
      }
      if (c < 0x20) error("control character in string (must be escaped)");
      if (c != '\\') {
        out += static_cast<char>(c);
        ++i_;
        continue;
      }
      ++i_;
      if (eof()) error("unterminated escape");
      const char e = s_[i_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp = hex4();
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (n_ - i_ < 2 || s_[i_] != '\\' || s_[i_ + 1] != 'u') error("unpaired UTF-16 high surrogate");
            i_ += 2;
            const uint32_t lo = hex4();
            if (lo < 0xDC00 || lo > 0xDFFF) error("invalid UTF-16 low surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            error("unpaired UTF-16 low surrogate");
          }
          put_utf8(out, cp);
          break;
        }
        default: error(std::string("invalid escape '\\") + e + "'");
      }
    }
  }

  static bool digit(char c) { return c >= '0' && c <= '9'; }

  Value number() {
    const size_t start = i_;
    if (peek() == '-') ++i_;
    if (eof() || !digit(peek())) error("expected a digit");
    if (peek() == '0') {
      ++i_;
      if (!eof() && digit(peek())) error_at(start, "leading zeros are not allowed");
    } else {
      while (!eof() && digit(peek())) ++i_;
    }
    bool integral = true;
    if (!eof() && peek() == '.') {
      integral = false;
      ++i_;
      if (eof() || !digit(peek())) error("expected a digit after '.'");
      while (!eof() && digit(peek())) ++i_;
    }
    if (!eof() && (peek() == 'e' || peek() == 'E')) {
      integral = false;
      ++i_;
      if (!eof() && (peek() == '+' || peek() == '-')) ++i_;
      if (eof() || !digit(peek())) error("expected a digit in the exponent");
      while (!eof() && digit(peek())) ++i_;
    }
    const char* b = s_ + start;
    const char* e = s_ + i_;
    if (integral) {
      int64_t iv = 0;
      auto r = std::from_chars(b, e, iv);
      if (r.ec == std::errc() && r.ptr == e) return Value::integer(iv);
      // Out of int64 range: keep it as a (rounded) double.
    }
    double d = 0;
    auto r = std::from_chars(b, e, d);
    if (r.ec == std::errc::result_out_of_range || !std::isfinite(d)) error_at(start, "number out of range");
    if (r.ec != std::errc() || r.ptr != e) error_at(start, "invalid number");
    return Value::number(d);
  }
};

}  // namespace

Value parse(const char* data, size_t size, const std::string& origin) {
  return Parser(data, size, origin).document();
}

Value parse(const std::string& text, const std::string& origin) { return parse(text.data(), text.size(), origin); }

}  // namespace ew::json

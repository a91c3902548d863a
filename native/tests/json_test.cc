#include "util/json.h"

#include "test.h"
#include "util/error.h"

using ew::json::parse;
using ew::json::Value;

TEST(json_parses_nested_document) {
  const Value v = parse(R"( {"a": [1, -2.5e2, true, false, null], "b": {"c": "x"}, "e": {}, "f": []} )");
  CHECK(v.is_object());
  CHECK_EQ(v.as_object().size(), size_t(4));
  CHECK_EQ(v.as_object()[0].first, std::string("a"));  // file order is kept
  const auto& a = v.find("a")->as_array();
  CHECK_EQ(a.size(), size_t(5));
  CHECK_EQ(a[0].as_int(), int64_t(1));
  CHECK_EQ(a[1].as_number(), -250.0);
  CHECK(!a[1].is_integer());
  CHECK(a[2].as_bool());
  CHECK(!a[3].as_bool());
  CHECK(a[4].is_null());
  CHECK_EQ(v.find("b")->find("c")->as_string(), std::string("x"));
  CHECK(v.find("e")->as_object().empty());
  CHECK(v.find("f")->as_array().empty());
  CHECK(v.find("missing") == nullptr);
  CHECK(a[0].find("a") == nullptr);  // not an object
}

TEST(json_integers_are_exact_beyond_double_precision) {
  const Value v = parse("[9007199254740993, -9223372036854775808, 9223372036854775807, 0, -0]");
  CHECK_EQ(v.as_array()[0].as_int(), int64_t(9007199254740993LL));
  CHECK_EQ(v.as_array()[1].as_int(), INT64_MIN);
  CHECK_EQ(v.as_array()[2].as_int(), INT64_MAX);
  CHECK_EQ(v.as_array()[3].as_int(), int64_t(0));
  CHECK_EQ(v.as_array()[4].as_int(), int64_t(0));
  // Past int64: still a number, no longer an integer.
  const Value big = parse("18446744073709551616");
  CHECK(big.is_number() && !big.is_integer());
  CHECK_EQ(big.as_number(), 18446744073709551616.0);
  CHECK_THROWS_WITH(big.as_int(), "expected a JSON integer");
  CHECK_THROWS_WITH(parse("1.0").as_int(), "expected a JSON integer");
  CHECK_THROWS_WITH(parse("1e3").as_int(), "expected a JSON integer");
}

TEST(json_string_escapes_decode_to_utf8) {
  const Value v = parse(R"("q\"b\\s\/\b\f\n\r\t \u00e9 \u20ac \ud83d\ude00")");
  CHECK_EQ(v.as_string(), std::string("q\"b\\s/\b\f\n\r\t \xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80"));
  CHECK_EQ(parse("\"\xC3\xA9\"").as_string(), std::string("\xC3\xA9"));  // raw UTF-8 passes through
}

TEST(json_errors_give_origin_line_and_column) {
  CHECK_THROWS_WITH(parse("{\n  \"a\": tru}", "cfg.json"), "cfg.json: invalid JSON at line 2, column 8");
  CHECK_THROWS_WITH(parse("[1,\n2,\n  x]"), "line 3, column 3");
}

TEST(json_refuses_malformed_input) {
  struct Bad {
    const char* text;
    const char* why;
  };
  const Bad bad[] = {
      {"", "unexpected end of input"},
      {"   ", "unexpected end of input"},
      {"[1,]", "unexpected character ']'"},
      {"{\"a\":1,}", "expected a string key"},
      {"{\"a\" 1}", "expected ':'"},
      {"{a:1}", "expected a string key"},
      {"[1 2]", "expected ',' or ']'"},
      {"01", "leading zeros"},
      {"-", "expected a digit"},
      {"1.", "expected a digit after '.'"},
      {"1e", "expected a digit in the exponent"},
      {".5", "unexpected character '.'"},
      {"+1", "unexpected character '+'"},
      {"1e999", "number out of range"},
      {"\"abc", "unterminated string"},
      {"\"a\nb\"", "control character"},
      {"\"\\x\"", "invalid escape"},
      {"\"\\u12zz\"", "invalid hex digit"},
      {"\"\\u12\"", "truncated \\u escape"},
      {"\"\\ud800\"", "unpaired UTF-16 high surrogate"},
      {"\"\\udc00\"", "unpaired UTF-16 low surrogate"},
      {"nul", "invalid literal"},
      {"true false", "after the JSON value"},
      {"{\"k\":1,\"k\":2}", "duplicate key \"k\""},
      {"NaN", "unexpected character 'N'"},
  };
  for (const Bad& b : bad) CHECK_THROWS_WITH(parse(b.text), b.why);
}

TEST(json_deep_nesting_is_refused_not_a_stack_overflow) {
  std::string deep(100000, '[');
  CHECK_THROWS_WITH(parse(deep), "nesting deeper than 256");
  std::string ok = std::string(200, '[') + std::string(200, ']');
  CHECK(parse(ok).is_array());
}

TEST(json_duplicate_keys_found_in_large_objects) {
  std::string s = "{";
  for (int i = 0; i < 2000; ++i) s += "\"k" + std::to_string(i) + "\":" + std::to_string(i) + ",";
  s += "\"k1234\":0}";
  CHECK_THROWS_WITH(parse(s), "duplicate key \"k1234\"");
}

TEST(json_typed_accessors_name_the_types) {
  CHECK_THROWS_WITH(parse("\"s\"").as_int(), "expected a JSON integer, found string");
  CHECK_THROWS_WITH(parse("1").as_string(), "expected a JSON string, found number");
  CHECK_THROWS_WITH(parse("[]").as_object(), "expected a JSON object, found array");
  CHECK_THROWS_WITH(parse("{}").as_array(), "expected a JSON array, found object");
  CHECK_THROWS_WITH(parse("null").as_bool(), "expected a JSON boolean, found null");
}

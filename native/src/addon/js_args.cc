#include "addon/js_args.h"

#include <cmath>

namespace ew_addon {

namespace {

const char* TypedArrayName(napi_typedarray_type t) {
  switch (t) {
    case napi_int8_array: return "Int8Array";
    case napi_uint8_array: return "Uint8Array";
    case napi_uint8_clamped_array: return "Uint8ClampedArray";
    case napi_int16_array: return "Int16Array";
    case napi_uint16_array: return "Uint16Array";
    case napi_int32_array: return "Int32Array";
    case napi_uint32_array: return "Uint32Array";
    case napi_float32_array: return "Float32Array";
    case napi_float64_array: return "Float64Array";
    case napi_bigint64_array: return "BigInt64Array";
    case napi_biguint64_array: return "BigUint64Array";
    default: return "TypedArray";
  }
}

// "an Int32Array", "a Float32Array"
std::string WithArticle(const char* name) { return std::string(name[0] == 'I' ? "an " : "a ") + name; }

}  // namespace

int64_t ToInteger(const Napi::Value& v, const std::string& what, int64_t lo, int64_t hi) {
  Napi::Env env = v.Env();
  if (!v.IsNumber()) throw Napi::TypeError::New(env, what + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || std::floor(d) != d) throw Napi::TypeError::New(env, what + " must be an integer");
  if (d < static_cast<double>(lo) || d > static_cast<double>(hi)) {
    throw Napi::RangeError::New(env, what + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                                         "], got " + std::to_string(static_cast<int64_t>(d)));
  }
  return static_cast<int64_t>(d);
}

Napi::TypedArray TypedArrayField(const Napi::Object& obj, const char* key, napi_typedarray_type type,
                                 int64_t length, const std::string& call) {
  Napi::Value v = obj.Get(key);
  bool ok = v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == type &&
            (length < 0 || static_cast<int64_t>(v.As<Napi::TypedArray>().ElementLength()) == length);
  if (!ok) {
    std::string msg = call + ": " + key + " must be " + WithArticle(TypedArrayName(type));
    if (length >= 0) msg += " of length " + std::to_string(length);
    if (v.IsTypedArray()) {
      auto a = v.As<Napi::TypedArray>();
      msg += " (got " + WithArticle(TypedArrayName(a.TypedArrayType())) + " of length " +
             std::to_string(a.ElementLength()) + ")";
    } else if (v.IsUndefined()) {
      msg += " (missing)";
    }
    throw Napi::TypeError::New(obj.Env(), msg);
  }
  return v.As<Napi::TypedArray>();
}

Napi::Promise Rejected(const Napi::Error& err) {
  auto d = Napi::Promise::Deferred::New(err.Env());
  d.Reject(err.Value());
  return d.Promise();
}

int64_t OptionalInteger(const Napi::Object& opts, const char* key, int64_t fallback, int64_t lo, int64_t hi,
                        const std::string& call) {
  Napi::Value v = opts.Get(key);
  if (v.IsUndefined()) return fallback;
  return ToInteger(v, call + ": option " + key, lo, hi);
}

}  // namespace ew_addon

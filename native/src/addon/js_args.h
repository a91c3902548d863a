// Small checked conversions from JS values, shared by the wrappers. Each throws a
// Napi::TypeError / RangeError whose message names the call and the argument, so a
// malformed call from JS becomes a catchable JS error and never a crash.
#pragma once
#include <napi.h>

#include <cstdint>
#include <string>

namespace ew_addon {

// A number that is an integer in [lo, hi]; `what` names it in the message ("step: seeds[3]").
int64_t ToInteger(const Napi::Value& v, const std::string& what, int64_t lo, int64_t hi);

// The typed array `obj[key]` of element type `type` with exactly `length` elements
// (length < 0: any length). Message: "step: seqIds must be an Int32Array of length 4".
Napi::TypedArray TypedArrayField(const Napi::Object& obj, const char* key, napi_typedarray_type type,
                                 int64_t length, const std::string& call);

// A Promise already rejected with `err`: async calls report bad arguments this way too,
// so callers have one error path.
Napi::Promise Rejected(const Napi::Error& err);

// Optional field of an options object: undefined keeps `fallback`.
int64_t OptionalInteger(const Napi::Object& opts, const char* key, int64_t fallback, int64_t lo, int64_t hi,
                        const std::string& call);

}  // namespace ew_addon

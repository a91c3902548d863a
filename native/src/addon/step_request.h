// StepRequest (lib/engine/binding.ts) <-> ew::StepBatch / ew::StepResult.
// Runs on the main thread and copies everything, so JS may reuse its arrays as
// soon as step() returns.
#pragma once
#include <napi.h>

#include "engine/engine.h"

namespace ew_addon {

// Validates types, lengths and value ranges; throws Napi::TypeError (wrong type or
// length) or Napi::RangeError (a value out of range) naming the field and chunk.
ew::StepBatch ParseStepRequest(const Napi::Value& request);

// {tokens: Int32Array, logprobs: Float32Array, logits?: Float32Array}
Napi::Object StepResultToJs(Napi::Env env, const ew::StepResult& result, bool with_logits);

}  // namespace ew_addon

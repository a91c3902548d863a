// StepRequest (lib/engine/binding.ts) <-> ew::StepBatch / ew::StepResult.
// Runs on the main thread and copies everything, so JS may reuse its arrays as
// soon as step() returns.
#pragma once
#include <napi.h>

#include <string>
#include <vector>

#include "engine/engine.h"

namespace ew_addon {

// A parsed StepRequest: the batch, and per chunk why it cannot run ("" if it can).
struct ParsedStep {
  ew::StepBatch batch;
  std::vector<std::string> errors;
};

// Validates types, lengths and the layout; throws Napi::TypeError (wrong type or
// length) or Napi::RangeError (a layout value out of range) naming the field and chunk.
// A chunk's own bad value (a seed that is no integer) fails only that chunk.
ParsedStep ParseStepRequest(const Napi::Value& request);

// Engine::Step over the chunks that parsed; the others keep their errors (worker thread).
ew::StepResult RunParsedStep(ew::Engine& engine, const ParsedStep& step);

// {tokens: Int32Array, logprobs: Float32Array, logits?: Float32Array,
//  topIds?/topLogprobs? only when a chunk asked for top logprobs,
//  errors?: (string | null)[] only when a chunk failed}
Napi::Object StepResultToJs(Napi::Env env, const ew::StepResult& result, bool with_logits);

}  // namespace ew_addon

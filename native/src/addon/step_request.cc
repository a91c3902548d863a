#include "addon/step_request.h"

#include <cmath>
#include <cstring>
#include <algorithm>
#include <string>
#include <vector>

#include "addon/js_args.h"

namespace ew_addon {

namespace {

constexpr const char* kCall = "step";
constexpr double kMaxSeed = 9007199254740992.0;  // 2^53: larger doubles are not exact integers

template <typename T>
const T* Elements(const Napi::TypedArray& a) {
  return static_cast<const T*>(static_cast<const void*>(
      static_cast<const uint8_t*>(a.ArrayBuffer().Data()) + a.ByteOffset()));
}

std::string At(const char* field, size_t i) { return std::string(kCall) + ": " + field + "[" + std::to_string(i) + "]"; }

}  // namespace

ParsedStep ParseStepRequest(const Napi::Value& request) {
  Napi::Env env = request.Env();
  if (!request.IsObject() || request.IsArray() || request.IsTypedArray()) {
    throw Napi::TypeError::New(env, "step: expected a StepRequest object {seqIds, adapters, nTokens, tokens, ...}");
  }
  Napi::Object req = request.As<Napi::Object>();

  Napi::TypedArray seq_ids = TypedArrayField(req, "seqIds", napi_int32_array, -1, kCall);
  const int64_t n = static_cast<int64_t>(seq_ids.ElementLength());
  if (n == 0) throw Napi::RangeError::New(env, "step: a step needs at least one chunk (seqIds is empty)");
  Napi::TypedArray adapters = TypedArrayField(req, "adapters", napi_int32_array, n, kCall);
  Napi::TypedArray n_tokens = TypedArrayField(req, "nTokens", napi_int32_array, n, kCall);
  Napi::TypedArray sample = TypedArrayField(req, "sample", napi_uint8_array, n, kCall);
  Napi::TypedArray logprobs = TypedArrayField(req, "logprobs", napi_uint8_array, n, kCall);
  Napi::TypedArray temperature = TypedArrayField(req, "temperature", napi_float32_array, n, kCall);
  Napi::TypedArray top_k = TypedArrayField(req, "topK", napi_int32_array, n, kCall);
  Napi::TypedArray top_p = TypedArrayField(req, "topP", napi_float32_array, n, kCall);
  Napi::TypedArray seeds = TypedArrayField(req, "seeds", napi_float64_array, n, kCall);

  const int32_t* ids_p = Elements<int32_t>(seq_ids);
  const int32_t* adapter_p = Elements<int32_t>(adapters);
  const int32_t* n_tokens_p = Elements<int32_t>(n_tokens);
  const uint8_t* sample_p = Elements<uint8_t>(sample);
  const uint8_t* logprobs_p = Elements<uint8_t>(logprobs);
  const float* temp_p = Elements<float>(temperature);
  const int32_t* top_k_p = Elements<int32_t>(top_k);
  const float* top_p_p = Elements<float>(top_p);
  const double* seeds_p = Elements<double>(seeds);

  // The layout (ids, token counts) is the caller's contract and throws; a chunk's own
  // values are its request's: the engine checks sampling values and refuses that chunk
  // alone, and a seed that is no integer fails its chunk here the same way.
  ParsedStep out;
  ew::StepBatch& batch = out.batch;
  batch.chunks.resize(static_cast<size_t>(n));
  out.errors.assign(static_cast<size_t>(n), std::string());
  int64_t total = 0;
  for (size_t i = 0; i < static_cast<size_t>(n); ++i) {
    ew::SeqChunk& c = batch.chunks[i];
    if (ids_p[i] < 0) throw Napi::RangeError::New(env, At("seqIds", i) + " must be >= 0");
    if (n_tokens_p[i] < 1) throw Napi::RangeError::New(env, At("nTokens", i) + " must be >= 1");
    double seed = seeds_p[i];
    if (!(seed >= 0.0 && seed <= kMaxSeed) || std::floor(seed) != seed) {
      out.errors[i] = At("seeds", i) + " must be an integer in [0, 2^53]";
      seed = 0;
    }
    c.seq_id = ids_p[i];
    c.adapter = adapter_p[i];
    c.n_tokens = n_tokens_p[i];
    c.sample = sample_p[i] != 0;
    c.logprobs = logprobs_p[i] != 0;
    c.sampling.temperature = temp_p[i];
    c.sampling.top_k = top_k_p[i];
    c.sampling.top_p = top_p_p[i];
    c.sampling.seed = static_cast<uint64_t>(seed);
    total += c.n_tokens;
  }

  Napi::TypedArray tokens = TypedArrayField(req, "tokens", napi_int32_array, total, kCall);
  batch.tokens.resize(static_cast<size_t>(total));
  if (total > 0) std::memcpy(batch.tokens.data(), Elements<int32_t>(tokens), static_cast<size_t>(total) * sizeof(int32_t));

  // Optional per-chunk sampling extras, present only when some chunk uses them; their
  // values are checked by the engine, per chunk, like the other sampling values.
  auto has = [&](const char* key) { return !req.Get(key).IsUndefined(); };
  if (has("topLogprobs")) {
    const int32_t* k = Elements<int32_t>(TypedArrayField(req, "topLogprobs", napi_int32_array, n, kCall));
    for (int64_t i = 0; i < n; ++i) batch.chunks[i].sampling.top_logprobs = k[i];
  }
  if (has("presencePenalty") || has("frequencyPenalty")) {
    const float* pres = Elements<float>(TypedArrayField(req, "presencePenalty", napi_float32_array, n, kCall));
    const float* freq = Elements<float>(TypedArrayField(req, "frequencyPenalty", napi_float32_array, n, kCall));
    for (int64_t i = 0; i < n; ++i) {
      batch.chunks[i].sampling.presence_penalty = pres[i];
      batch.chunks[i].sampling.frequency_penalty = freq[i];
    }
  }
  // Sparse per-chunk lists: entries offsets[i] .. offsets[i+1] of ids/values belong to chunk i.
  auto sparse = [&](const char* offsets_key, const char* ids_key, const char* values_key, napi_typedarray_type value_type,
                    auto&& put) {
    if (!has(offsets_key)) return;
    const int32_t* off = Elements<int32_t>(TypedArrayField(req, offsets_key, napi_int32_array, n + 1, kCall));
    if (off[0] != 0) throw Napi::RangeError::New(env, std::string("step: ") + offsets_key + "[0] must be 0");
    for (int64_t i = 0; i < n; ++i)
      if (off[i + 1] < off[i]) throw Napi::RangeError::New(env, std::string("step: ") + offsets_key + " must not decrease");
    Napi::TypedArray ids = TypedArrayField(req, ids_key, napi_int32_array, off[n], kCall);
    Napi::TypedArray values = TypedArrayField(req, values_key, value_type, off[n], kCall);
    for (int64_t i = 0; i < n; ++i)
      for (int32_t j = off[i]; j < off[i + 1]; ++j) put(batch.chunks[i], Elements<int32_t>(ids)[j], values, j);
  };
  sparse("biasOffsets", "biasIds", "biasValues", napi_float32_array, [&](ew::SeqChunk& c, int32_t id, const Napi::TypedArray& v, int32_t j) {
    c.logit_bias.emplace_back(id, Elements<float>(v)[j]);
  });
  sparse("countOffsets", "countIds", "countValues", napi_int32_array, [&](ew::SeqChunk& c, int32_t id, const Napi::TypedArray& v, int32_t j) {
    c.output_counts.emplace_back(id, Elements<int32_t>(v)[j]);
  });

  Napi::Value return_logits = req.Get("returnLogits");
  if (!return_logits.IsUndefined() && !return_logits.IsBoolean()) {
    throw Napi::TypeError::New(env, "step: returnLogits must be a boolean when given");
  }
  batch.return_logits = return_logits.IsBoolean() && return_logits.As<Napi::Boolean>().Value();
  return out;
}

ew::StepResult RunParsedStep(ew::Engine& engine, const ParsedStep& step) {
  std::vector<size_t> kept;
  for (size_t i = 0; i < step.errors.size(); ++i)
    if (step.errors[i].empty()) kept.push_back(i);
  const ew::StepBatch& all = step.batch;
  if (kept.size() == all.chunks.size()) return engine.Step(all);

  // Run the chunks that parsed; those that did not keep their error and sample nothing.
  ew::StepResult res;
  res.tokens.assign(all.chunks.size(), -1);
  res.logprobs.assign(all.chunks.size(), 0.f);
  res.errors = step.errors;
  std::vector<int64_t> offset(all.chunks.size() + 1, 0);
  for (size_t i = 0; i < all.chunks.size(); ++i) offset[i + 1] = offset[i] + all.chunks[i].n_tokens;
  if (kept.empty()) {
    if (all.return_logits) res.logits.assign(all.tokens.size() * static_cast<size_t>(engine.config().vocab_size), 0.f);
    return res;
  }
  ew::StepBatch sub;
  sub.return_logits = all.return_logits;
  for (size_t i : kept) {
    sub.chunks.push_back(all.chunks[i]);
    sub.tokens.insert(sub.tokens.end(), all.tokens.begin() + offset[i], all.tokens.begin() + offset[i + 1]);
  }
  ew::StepResult part = engine.Step(sub);
  res.top_ids = std::move(part.top_ids);  // failed chunks add none, so the order holds
  res.top_logprobs = std::move(part.top_logprobs);
  const size_t V = static_cast<size_t>(engine.config().vocab_size);
  if (all.return_logits) res.logits.assign(all.tokens.size() * V, 0.f);
  int64_t at = 0;
  for (size_t k = 0; k < kept.size(); ++k) {
    const size_t i = kept[k];
    res.tokens[i] = part.tokens[k];
    res.logprobs[i] = part.logprobs[k];
    res.errors[i] = part.errors[k];
    if (all.return_logits) {
      const int64_t n = all.chunks[i].n_tokens;
      std::copy_n(&part.logits[at * V], n * V, &res.logits[offset[i] * V]);
      at += n;
    }
  }
  return res;
}

Napi::Object StepResultToJs(Napi::Env env, const ew::StepResult& result, bool with_logits) {
  Napi::Object out = Napi::Object::New(env);
  auto tokens = Napi::Int32Array::New(env, result.tokens.size());
  if (!result.tokens.empty()) std::memcpy(tokens.Data(), result.tokens.data(), result.tokens.size() * sizeof(int32_t));
  auto logprobs = Napi::Float32Array::New(env, result.logprobs.size());
  if (!result.logprobs.empty()) {
    std::memcpy(logprobs.Data(), result.logprobs.data(), result.logprobs.size() * sizeof(float));
  }
  out.Set("tokens", tokens);
  out.Set("logprobs", logprobs);
  if (!result.top_ids.empty()) {
    auto ids = Napi::Int32Array::New(env, result.top_ids.size());
    std::memcpy(ids.Data(), result.top_ids.data(), result.top_ids.size() * sizeof(int32_t));
    auto lps = Napi::Float32Array::New(env, result.top_logprobs.size());
    std::memcpy(lps.Data(), result.top_logprobs.data(), result.top_logprobs.size() * sizeof(float));
    out.Set("topIds", ids);
    out.Set("topLogprobs", lps);
  }
  bool any_error = false;
  for (const std::string& e : result.errors) any_error = any_error || !e.empty();
  if (any_error) {  // only then: the common step allocates nothing more
    Napi::Array errors = Napi::Array::New(env, result.errors.size());
    for (size_t i = 0; i < result.errors.size(); ++i)
      errors.Set(static_cast<uint32_t>(i), result.errors[i].empty() ? env.Null() : Napi::String::New(env, result.errors[i]));
    out.Set("errors", errors);
  }
  if (with_logits) {
    auto logits = Napi::Float32Array::New(env, result.logits.size());
    if (!result.logits.empty()) std::memcpy(logits.Data(), result.logits.data(), result.logits.size() * sizeof(float));
    out.Set("logits", logits);
  }
  return out;
}

}  // namespace ew_addon

#include "addon/engine_wrap.h"

#include <algorithm>
#include <new>
#include <thread>
#include <utility>

#include "addon/js_args.h"
#include "addon/step_request.h"

namespace ew_addon {

namespace {

// Turns any C++ failure of a worker's Execute into the message its Promise rejects with.
template <typename Fn>
std::string RunCatching(const std::string& call, Fn&& fn) {
  try {
    fn();
    return "";
  } catch (const std::bad_alloc&) {
    return call + ": out of memory (std::bad_alloc); try a smaller kvCacheTokens or fewer adapter slots";
  } catch (const std::exception& e) {
    return call + ": " + e.what();
  } catch (...) {
    return call + ": unknown native error";
  }
}

// Runs an engine call on the main thread; an engine exception becomes a JS Error
// named after the call (a C++ exception escaping a callback would abort the process).
template <typename Fn>
auto Guarded(Napi::Env env, const char* call, Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const Napi::Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, std::string(call) + ": " + e.what());
  }
}

const char* ExpertDtypeName(ew::DType t) {
  switch (t) {
    case ew::DType::F32: return "f32";
    case ew::DType::F16: return "f16";
    case ew::DType::BF16: return "bf16";
  }
  return "unknown";
}

Napi::Object KvStatsToJs(Napi::Env env, const ew::KvStats& s) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("blockSize", s.block_size);
  o.Set("totalBlocks", s.total_blocks);
  o.Set("freeBlocks", s.free_blocks);
  o.Set("sequences", s.sequences);
  return o;
}

Napi::Object ExpertStatsToJs(Napi::Env env, const ew::ExpertPoolStats& s) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("reservedBytes", static_cast<double>(s.reserved_bytes));
  o.Set("backedBytes", static_cast<double>(s.backed_bytes));
  o.Set("expertBytes", static_cast<double>(s.expert_bytes));
  o.Set("usedSlots", static_cast<double>(s.used_slots));
  return o;
}

Napi::Object ModelInfoToJs(Napi::Env env, const ew::Engine& e) {
  const ew::ModelConfig& c = e.config();
  Napi::Object o = Napi::Object::New(env);
  o.Set("modelType", c.model_type);
  o.Set("attention", c.gqa() ? "gqa" : "mla");
  o.Set("device", e.device_name());
  o.Set("vocabSize", static_cast<double>(c.vocab_size));
  o.Set("hiddenSize", static_cast<double>(c.hidden_size));
  o.Set("numLayers", static_cast<double>(c.num_hidden_layers));
  o.Set("numMoeLayers", static_cast<double>(c.num_moe_layers()));
  o.Set("nRoutedExperts", static_cast<double>(c.n_routed_experts));
  o.Set("numExpertsPerTok", static_cast<double>(c.num_experts_per_tok));
  o.Set("moeIntermediateSize", static_cast<double>(c.moe_intermediate_size));
  o.Set("maxPositionEmbeddings", static_cast<double>(c.max_position_embeddings));
  o.Set("bosTokenId", static_cast<double>(c.bos_token_id));
  o.Set("eosTokenId", static_cast<double>(c.eos_token_id));
  o.Set("expertDtype", ExpertDtypeName(e.expert_dtype()));
  o.Set("kvCacheDtype", ExpertDtypeName(e.kv_cache_dtype()));
  o.Set("cpuPath", e.cpu_path());
  o.Set("kvBytesPerTokenPerLayer", static_cast<double>(e.kv_stats().bytes_per_token_layer));
  return o;
}

Napi::Object AdapterInfoToJs(Napi::Env env, const ew::AdapterInfo& a) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("row", a.row);
  o.Set("dir", a.dir);
  o.Set("experts", static_cast<double>(a.experts));
  o.Set("expertBytes", static_cast<double>(a.expert_bytes));
  o.Set("backedBytes", static_cast<double>(a.backed_bytes));
  o.Set("draining", a.draining);
  o.Set("liveSequences", static_cast<double>(a.live_sequences));
  return o;
}

constexpr int64_t kMaxSafeInteger = 9007199254740991;  // Number.MAX_SAFE_INTEGER

int64_t SeqIdArg(const Napi::CallbackInfo& info, const char* call) {
  if (info.Length() < 1) throw Napi::TypeError::New(info.Env(), std::string(call) + ": expected a sequence id");
  return ToInteger(info[0], std::string(call) + ": seqId", 0, kMaxSafeInteger);
}

ew::EngineOptions ParseEngineOptions(const Napi::Value& v) {
  ew::EngineOptions o;
  if (v.IsUndefined()) return o;
  if (!v.IsObject()) throw Napi::TypeError::New(v.Env(), "loadEngine: options must be an object");
  Napi::Object opts = v.As<Napi::Object>();
  Napi::Value device = opts.Get("device");
  if (!device.IsUndefined()) {
    std::string d = device.IsString() ? device.As<Napi::String>().Utf8Value() : "";
    if (d != "auto" && d != "cpu" && d != "cuda") {
      throw Napi::TypeError::New(v.Env(), "loadEngine: option device must be 'auto', 'cpu' or 'cuda'");
    }
    o.device = d;
  }
  const std::string call = "loadEngine";
  // Optional string options, each one of a few names (the engine checks them too).
  auto choice = [&](const char* key, std::initializer_list<const char*> allowed, std::string& out) {
    Napi::Value x = opts.Get(key);
    if (x.IsUndefined()) return;
    const std::string s = x.IsString() ? x.As<Napi::String>().Utf8Value() : "";
    std::string names;
    for (const char* a : allowed) {
      if (s == a) {
        out = s;
        return;
      }
      names += std::string(names.empty() ? "'" : ", '") + a + "'";
    }
    throw Napi::TypeError::New(v.Env(), call + ": option " + key + " must be one of " + names);
  };
  choice("kvCacheDtype", {"f32", "bf16"}, o.kv_cache_dtype);
  choice("cpuPath", {"portable", "avx2", "avx512", "avx512-bf16", "amx"}, o.cpu_path);
  o.n_threads = static_cast<int>(OptionalInteger(opts, "threads", o.n_threads, 0, 1024, call));
  o.kv_block_size = static_cast<int>(OptionalInteger(opts, "kvBlockSize", o.kv_block_size, 1, 1 << 16, call));
  o.kv_cache_tokens = OptionalInteger(opts, "kvCacheTokens", o.kv_cache_tokens, 0, int64_t(1) << 40, call);
  o.max_adapter_slots = static_cast<int>(OptionalInteger(opts, "maxAdapterSlots", o.max_adapter_slots, 0, 1 << 20, call));
  o.max_adapters = static_cast<int>(OptionalInteger(opts, "maxAdapters", o.max_adapters, 0, 1 << 20, call));
  return o;
}

class LoadEngineWorker : public Napi::AsyncWorker {
 public:
  LoadEngineWorker(Napi::Env env, std::string dir, ew::EngineOptions opts)
      : Napi::AsyncWorker(env, "expertweave:loadEngine"), deferred_(Napi::Promise::Deferred::New(env)),
        dir_(std::move(dir)), opts_(std::move(opts)) {}

  Napi::Promise Promise() const { return deferred_.Promise(); }

 protected:
  void Execute() override {
    std::string err = RunCatching("loadEngine(" + dir_ + ")", [&] { engine_ = ew::Engine::Load(dir_, opts_); });
    if (!err.empty()) SetError(err);
  }
  void OnOK() override {
    // Nothing may throw out of OnOK: it would become an uncaught exception.
    try {
      deferred_.Resolve(EngineWrap::NewInstance(Env(), std::move(engine_)));
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    }
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::string dir_;
  ew::EngineOptions opts_;
  std::shared_ptr<ew::Engine> engine_;
};

}  // namespace

// One Engine::Step off the main thread. Holds its own reference to the engine (so
// close() during the step is safe) and to the JS wrapper (so it outlives the step).
class StepWorker : public Napi::AsyncWorker {
 public:
  StepWorker(Napi::Env env, EngineWrap* wrap, ParsedStep step)
      : Napi::AsyncWorker(env, "expertweave:step"), deferred_(Napi::Promise::Deferred::New(env)),
        wrap_(wrap), wrap_ref_(Napi::Persistent(wrap->Value())), engine_(wrap->engine_), step_(std::move(step)) {}

  Napi::Promise Promise() const { return deferred_.Promise(); }

 protected:
  void Execute() override {
    std::string err = RunCatching("step", [&] { result_ = RunParsedStep(*engine_, step_); });
    if (!err.empty()) SetError(err);
  }
  void OnOK() override {
    std::string free_err = wrap_->FinishStep();
    if (!free_err.empty()) {
      deferred_.Reject(Napi::Error::New(Env(), free_err).Value());
      return;
    }
    try {
      deferred_.Resolve(StepResultToJs(Env(), result_, step_.batch.return_logits));
    } catch (const Napi::Error& e) {  // e.g. no memory for the logits array
      deferred_.Reject(e.Value());
    }
  }
  void OnError(const Napi::Error& e) override {
    wrap_->FinishStep();
    deferred_.Reject(e.Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  EngineWrap* wrap_;
  Napi::ObjectReference wrap_ref_;
  std::shared_ptr<ew::Engine> engine_;
  ParsedStep step_;
  ew::StepResult result_;
};

void EngineWrap::Init(Napi::Env env) {
  Napi::Function ctor = DefineClass(env, "NativeEngine",
                                    {
                                        InstanceMethod<&EngineWrap::Info>("info"),
                                        InstanceMethod<&EngineWrap::Step>("step"),
                                        InstanceMethod<&EngineWrap::FreeSequence>("freeSequence"),
                                        InstanceMethod<&EngineWrap::SequenceLength>("sequenceLength"),
                                        InstanceMethod<&EngineWrap::KvStats>("kvStats"),
                                        InstanceMethod<&EngineWrap::ExpertStats>("expertStats"),
                                        InstanceMethod<&EngineWrap::Close>("close"),
                                        InstanceMethod<&EngineWrap::RegisterAdapter>("registerAdapter"),
                                        InstanceMethod<&EngineWrap::UnregisterAdapter>("unregisterAdapter"),
                                        InstanceMethod<&EngineWrap::Adapters>("adapters"),
                                    });
  env.SetInstanceData<Napi::FunctionReference>(new Napi::FunctionReference(Napi::Persistent(ctor)));
}

Napi::Object EngineWrap::NewInstance(Napi::Env env, std::shared_ptr<ew::Engine> engine) {
  auto holder = Napi::External<std::shared_ptr<ew::Engine>>::New(env, new std::shared_ptr<ew::Engine>(std::move(engine)),
                                                                [](Napi::Env, std::shared_ptr<ew::Engine>* p) { delete p; });
  return env.GetInstanceData<Napi::FunctionReference>()->New({holder});
}

EngineWrap::EngineWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EngineWrap>(info) {
  if (info.Length() != 1 || !info[0].IsExternal()) {
    throw Napi::TypeError::New(info.Env(), "NativeEngine cannot be constructed directly; use loadEngine(modelDir, options)");
  }
  engine_ = std::move(*info[0].As<Napi::External<std::shared_ptr<ew::Engine>>>().Data());
  Guarded(info.Env(), "loadEngine", [&] {
    kv_before_step_ = engine_->kv_stats();
    experts_before_step_ = engine_->expert_stats();
  });
}

ew::Engine& EngineWrap::Live(Napi::Env env, const char* call) {
  if (!engine_) throw Napi::Error::New(env, std::string(call) + ": the engine is closed");
  return *engine_;
}

std::string EngineWrap::FinishStep() {
  step_running_ = false;
  std::vector<int64_t> frees;
  frees.swap(deferred_frees_);
  std::vector<int32_t> unregisters;
  unregisters.swap(deferred_unregisters_);
  if (!engine_) return "";
  std::string first_err;
  for (int64_t id : frees) {
    std::string err = RunCatching("freeSequence(" + std::to_string(id) + ") deferred until the step finished",
                                  [&] { engine_->FreeSequence(id); });
    if (first_err.empty()) first_err = err;
  }
  // After the frees: a row whose last sequence ended in this step is released at once.
  for (int32_t row : unregisters) {
    std::string err = RunCatching("unregisterAdapter(" + std::to_string(row) + ") deferred until the step finished",
                                  [&] { engine_->UnregisterAdapter(row); });
    if (first_err.empty()) first_err = err;
  }
  return first_err;
}

Napi::Value EngineWrap::Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ew::Engine& e = Live(env, "info");
  return Guarded(env, "info", [&] { return ModelInfoToJs(env, e); });
}

Napi::Value EngineWrap::Step(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!engine_) return Rejected(Napi::Error::New(env, "step: the engine is closed"));
  if (step_running_) {
    return Rejected(Napi::Error::New(env, "step: another step is still running on this engine; await it before the next"));
  }
  ParsedStep batch;
  try {
    batch = ParseStepRequest(info.Length() > 0 ? info[0] : env.Undefined());
  } catch (const Napi::Error& err) {
    return Rejected(err);
  }
  Guarded(env, "step", [&] {
    kv_before_step_ = engine_->kv_stats();
    experts_before_step_ = engine_->expert_stats();
  });
  auto* worker = new StepWorker(env, this, std::move(batch));
  Napi::Promise promise = worker->Promise();
  step_running_ = true;
  worker->Queue();
  return promise;
}

Napi::Value EngineWrap::FreeSequence(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ew::Engine& e = Live(env, "freeSequence");
  int64_t id = SeqIdArg(info, "freeSequence");
  if (step_running_) {
    deferred_frees_.push_back(id);
  } else {
    Guarded(env, "freeSequence", [&] { e.FreeSequence(id); });
  }
  return env.Undefined();
}

Napi::Value EngineWrap::SequenceLength(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ew::Engine& e = Live(env, "sequenceLength");
  int64_t id = SeqIdArg(info, "sequenceLength");
  if (step_running_) {
    throw Napi::Error::New(env, "sequenceLength: a step is running and lengths are changing; call it after step() settles");
  }
  return Napi::Number::New(env, static_cast<double>(Guarded(env, "sequenceLength", [&] { return e.SequenceLength(id); })));
}

Napi::Value EngineWrap::KvStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ew::Engine& e = Live(env, "kvStats");
  return KvStatsToJs(env, step_running_ ? kv_before_step_ : Guarded(env, "kvStats", [&] { return e.kv_stats(); }));
}

Napi::Value EngineWrap::ExpertStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ew::Engine& e = Live(env, "expertStats");
  return ExpertStatsToJs(env, step_running_ ? experts_before_step_
                                            : Guarded(env, "expertStats", [&] { return e.expert_stats(); }));
}

Napi::Value EngineWrap::Close(const Napi::CallbackInfo& info) {
  engine_.reset();  // a running StepWorker holds its own reference until it finishes
  deferred_frees_.clear();
  deferred_unregisters_.clear();
  return info.Env().Undefined();
}

Napi::Value EngineWrap::RegisterAdapter(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!engine_) return Rejected(Napi::Error::New(env, "registerAdapter: the engine is closed"));
  if (info.Length() < 1 || !info[0].IsString()) {
    return Rejected(Napi::TypeError::New(env, "registerAdapter: dir must be a string (an ESFT adapter directory)"));
  }
  // Its own thread, not libuv's pool: a registration that blocks on a slow disk must
  // never hold the threads engine steps (and the daemon's file I/O) run on.
  struct Job {
    Napi::Promise::Deferred deferred;
    std::shared_ptr<ew::Engine> engine;  // released on the main thread, never by the loader
    std::string dir, err;
    ew::AdapterInfo result;
  };
  auto* job = new Job{Napi::Promise::Deferred::New(env), engine_, info[0].As<Napi::String>().Utf8Value(), {}, {}};
  Napi::Promise promise = job->deferred.Promise();
  auto settle = Napi::ThreadSafeFunction::New(env, Napi::Function::New(env, [](const Napi::CallbackInfo&) {}),
                                              "expertweave:registerAdapter", 0, 1);
  std::thread([settle, job]() mutable {
    job->err = RunCatching("registerAdapter(" + job->dir + ")", [&] { job->result = job->engine->RegisterAdapter(job->dir); });
    const napi_status st = settle.BlockingCall(job, [](Napi::Env env, Napi::Function, Job* j) {
      try {
        if (j->err.empty()) j->deferred.Resolve(AdapterInfoToJs(env, j->result));
        else j->deferred.Reject(Napi::Error::New(env, j->err).Value());
      } catch (const Napi::Error& e) {
        j->deferred.Reject(e.Value());
      }
      delete j;
    });
    if (st != napi_ok) delete job;  // the environment is shutting down
    settle.Release();
  }).detach();
  return promise;
}

Napi::Value EngineWrap::UnregisterAdapter(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ew::Engine& e = Live(env, "unregisterAdapter");
  if (info.Length() < 1) throw Napi::TypeError::New(env, "unregisterAdapter: expected an adapter row");
  const int32_t row = static_cast<int32_t>(ToInteger(info[0], "unregisterAdapter: row", 1, 0x7fffffff));
  if (!step_running_) {
    Guarded(env, "unregisterAdapter", [&] { e.UnregisterAdapter(row); });
    return env.Undefined();
  }
  // A step is running: it was built while the row was active and may start sequences on
  // it. Apply the removal right after that step, so no step ever sees a row between
  // states; refuse now what the engine would refuse then.
  const std::vector<ew::AdapterInfo> rows = Guarded(env, "unregisterAdapter", [&] { return e.adapters(); });
  const bool active = std::any_of(rows.begin(), rows.end(), [&](const ew::AdapterInfo& a) { return a.row == row && !a.draining; });
  const bool pending = std::find(deferred_unregisters_.begin(), deferred_unregisters_.end(), row) != deferred_unregisters_.end();
  if (!active || pending) {
    throw Napi::Error::New(env, "unregisterAdapter: adapter row " + std::to_string(row) +
                                    (pending || active ? " is already being unregistered" : " holds no adapter"));
  }
  deferred_unregisters_.push_back(row);
  return env.Undefined();
}

Napi::Value EngineWrap::Adapters(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ew::Engine& e = Live(env, "adapters");
  std::vector<ew::AdapterInfo> list = Guarded(env, "adapters", [&] { return e.adapters(); });
  Napi::Array out = Napi::Array::New(env, list.size());
  for (size_t i = 0; i < list.size(); ++i) {
    // A removal deferred past the running step already counts as draining.
    if (std::find(deferred_unregisters_.begin(), deferred_unregisters_.end(), list[i].row) != deferred_unregisters_.end())
      list[i].draining = true;
    out.Set(static_cast<uint32_t>(i), AdapterInfoToJs(env, list[i]));
  }
  return out;
}

Napi::Value LoadEngine(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string dir;
  ew::EngineOptions opts;
  try {
    if (info.Length() < 1 || !info[0].IsString()) {
      throw Napi::TypeError::New(env, "loadEngine: modelDir must be a string (a model directory path)");
    }
    dir = info[0].As<Napi::String>().Utf8Value();
    opts = ParseEngineOptions(info.Length() > 1 ? info[1] : env.Undefined());
  } catch (const Napi::Error& err) {
    return Rejected(err);
  }
  auto* worker = new LoadEngineWorker(env, std::move(dir), std::move(opts));
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

}  // namespace ew_addon

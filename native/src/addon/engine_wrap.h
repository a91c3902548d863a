// EngineWrap: the JS object for one loaded ew::Engine (NativeEngine in
// lib/engine/binding.ts). Long calls (load, step) run on libuv worker threads and
// resolve Promises; everything else runs on the main thread.
//
// Concurrency (the engine itself is not thread-safe): at most one step runs per
// engine; a second step() while one runs rejects. While a step runs,
//   - freeSequence(id) is deferred and applied right after that step finishes,
//     before its Promise settles;
//   - sequenceLength(id) throws (lengths change during the step);
//   - kvStats()/expertStats() return the values from just before the step;
//   - close() drops the engine; it is destroyed once the running step is done.
//   - unregisterAdapter(row) is deferred the same way (adapters() already reports the
//     row as draining), so a step never sees a row change state under it.
// registerAdapter runs on a thread of its own (not libuv's pool, which steps use), even
// while a step runs: the engine's AdapterRegistry is thread-safe against steps.
// The main thread therefore never waits for a step and never touches the engine
// while a worker uses it.
#pragma once
#include <napi.h>

#include <memory>
#include <string>
#include <vector>

#include "engine/engine.h"

namespace ew_addon {

class EngineWrap : public Napi::ObjectWrap<EngineWrap> {
 public:
  // Defines the class and keeps its constructor for NewInstance (per env).
  static void Init(Napi::Env env);
  static Napi::Object NewInstance(Napi::Env env, std::shared_ptr<ew::Engine> engine);

  explicit EngineWrap(const Napi::CallbackInfo& info);

 private:
  friend class StepWorker;

  Napi::Value Info(const Napi::CallbackInfo& info);
  Napi::Value Step(const Napi::CallbackInfo& info);
  Napi::Value FreeSequence(const Napi::CallbackInfo& info);
  Napi::Value SequenceLength(const Napi::CallbackInfo& info);
  Napi::Value KvStats(const Napi::CallbackInfo& info);
  Napi::Value ExpertStats(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value RegisterAdapter(const Napi::CallbackInfo& info);
  Napi::Value UnregisterAdapter(const Napi::CallbackInfo& info);
  Napi::Value Adapters(const Napi::CallbackInfo& info);

  // The engine, or a JS Error "<call>: the engine is closed".
  ew::Engine& Live(Napi::Env env, const char* call);
  // Called by the step worker on the main thread when its step is done (ok or not).
  // Applies the deferred frees, then the deferred unregisters; returns the message of
  // the first that failed, else "".
  std::string FinishStep();

  std::shared_ptr<ew::Engine> engine_;
  bool step_running_ = false;
  std::vector<int64_t> deferred_frees_;
  std::vector<int32_t> deferred_unregisters_;
  ew::KvStats kv_before_step_;
  ew::ExpertPoolStats experts_before_step_;
};

// loadEngine(modelDir, options) -> Promise<NativeEngine>
Napi::Value LoadEngine(const Napi::CallbackInfo& info);

}  // namespace ew_addon

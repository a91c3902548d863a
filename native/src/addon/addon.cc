// Module init of expertweave.node: the functions lib/engine/binding.ts declares.
#include <napi.h>

#include <algorithm>

#include "addon/engine_wrap.h"
#include "kernels/cpu/cpu_kernels.h"
#include "util/membw.h"

#ifdef EW_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#ifndef EW_VERSION
#error "EW_VERSION must be defined by the build (package.json version)"
#endif

namespace ew_addon {
namespace {

bool CudaDevicePresent() {
#ifdef EW_WITH_CUDA
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
#else
  return false;
#endif
}

// The AVX2 kernels are compiled in and this CPU can run them.
bool Avx2Usable() {
  const auto& paths = ew::cpu_paths();
  return std::find(paths.begin(), paths.end(), ew::CpuPath::Avx2) != paths.end();
}

// measureMemoryBandwidth() -> Promise<GB/s>: about a second of streaming reads, so off the main thread.
class MemoryBandwidthWorker : public Napi::AsyncWorker {
 public:
  explicit MemoryBandwidthWorker(Napi::Env env)
      : Napi::AsyncWorker(env, "expertweave:measureMemoryBandwidth"), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise Promise() const { return deferred_.Promise(); }

 protected:
  void Execute() override {
    try {
      gbs_ = ew::measure_read_bandwidth_gbs();
    } catch (const std::exception& e) {
      SetError(std::string("measureMemoryBandwidth: ") + e.what());
    }
  }
  void OnOK() override { deferred_.Resolve(Napi::Number::New(Env(), gbs_)); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  double gbs_ = 0;
};

Napi::Value MeasureMemoryBandwidth(const Napi::CallbackInfo& info) {
  auto* worker = new MemoryBandwidthWorker(info.Env());
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

Napi::Value CudaAvailable(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), CudaDevicePresent()); }

Napi::Value BuildInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
#ifdef EW_WITH_CUDA
  o.Set("cuda", true);
#else
  o.Set("cuda", false);
#endif
  o.Set("avx2", Avx2Usable());
  // The CPU kernels' dispatch paths this CPU runs, and the process default (EW_CPU_PATH or the best fp32 one).
  Napi::Array paths = Napi::Array::New(env);
  for (ew::CpuPath p : ew::cpu_paths()) paths.Set(paths.Length(), ew::cpu_path_name(p));
  o.Set("cpuPaths", paths);
  try {
    o.Set("cpuPath", ew::cpu_path_name(ew::cpu_path()));
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, std::string("buildInfo: ") + e.what());
  }
  o.Set("version", EW_VERSION);
  return o;
}

}  // namespace
}  // namespace ew_addon

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) {
  using namespace ew_addon;
  EngineWrap::Init(env);
  exports.Set("loadEngine", Napi::Function::New<LoadEngine>(env, "loadEngine"));
  exports.Set("cudaAvailable", Napi::Function::New<CudaAvailable>(env, "cudaAvailable"));
  exports.Set("buildInfo", Napi::Function::New<BuildInfo>(env, "buildInfo"));
  exports.Set("measureMemoryBandwidth", Napi::Function::New<MeasureMemoryBandwidth>(env, "measureMemoryBandwidth"));
  return exports;
}

NODE_API_MODULE(expertweave, InitAddon)

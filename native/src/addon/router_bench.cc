#include "addon/router_bench.h"

#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "addon/js_args.h"
#include "engine/reroute_table.h"
#include "kernels/router.h"
#include "util/error.h"

namespace ew_addon {
namespace {

// One router configuration with its inputs and outputs allocated once, so run()
// times only route_tokens_cpu.
struct RouterBenchState {
  int64_t H = 0, T = 0;
  ew::RouterParams params;
  std::vector<uint16_t> weight_bf16;  // [M, H]
  ew::TensorView weight;
  std::vector<float> x, scratch, out_weights;
  std::vector<int32_t> rows, out_slots;
  ew::RerouteTables tables;

  void run(bool reroute) {
    ew::RerouteTableView view = reroute ? tables.view(0) : ew::RerouteTableView{};
    ew::route_tokens_cpu(x.data(), T, H, weight, params, view, reroute ? rows.data() : nullptr, out_slots.data(),
                         out_weights.data(), nullptr, scratch.data());
  }
};

std::shared_ptr<RouterBenchState> MakeState(int64_t H, int M, int k, int64_t T, int adapters) {
  auto s = std::make_shared<RouterBenchState>();
  s->H = H;
  s->T = T;
  s->params.n_experts = M;
  s->params.top_k = k;
  std::mt19937 rng(1234);
  std::normal_distribution<float> nd(0.f, 1.f);
  s->weight_bf16.resize(static_cast<size_t>(M) * H);
  for (auto& w : s->weight_bf16) {
    const float f = nd(rng) * 0.02f;
    uint32_t u;
    std::memcpy(&u, &f, 4);
    w = static_cast<uint16_t>(u >> 16);
  }
  s->weight = ew::TensorView{s->weight_bf16.data(), ew::DType::BF16, {M, H}};
  s->x.resize(static_cast<size_t>(T) * H);
  for (auto& v : s->x) v = nd(rng);
  s->scratch.resize(static_cast<size_t>(T) * M);
  s->out_weights.resize(static_cast<size_t>(T) * k);
  s->out_slots.resize(static_cast<size_t>(T) * k);
  // Adapter rows remap 8 experts each (a typical ESFT layer) to slots past the base.
  s->tables = ew::RerouteTables(1, adapters + 1, M);
  for (int a = 1; a <= adapters; ++a)
    for (int i = 0; i < 8; ++i) s->tables.set(0, a, (a * 7 + i * 5) % M, M + (a - 1) * 8 + i);
  s->rows.resize(T);
  for (int64_t t = 0; t < T; ++t) s->rows[t] = static_cast<int32_t>(t % (adapters + 1));
  return s;
}

Napi::Value CreateRouterBench(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string call = "createRouterBench";
  if (info.Length() < 1 || !info[0].IsObject()) throw Napi::TypeError::New(env, call + ": expects an options object");
  Napi::Object o = info[0].As<Napi::Object>();
  const int64_t H = ToInteger(o.Get("hidden"), call + ": hidden", 1, 1 << 16);
  const int64_t M = ToInteger(o.Get("experts"), call + ": experts", 1, 1024);
  const int64_t k = ToInteger(o.Get("topK"), call + ": topK", 1, M);
  const int64_t T = ToInteger(o.Get("tokens"), call + ": tokens", 1, 1 << 16);
  const int64_t A = ToInteger(o.Get("adapters"), call + ": adapters", 0, 1024);
  std::shared_ptr<RouterBenchState> state;
  try {
    state = MakeState(H, static_cast<int>(M), static_cast<int>(k), T, static_cast<int>(A));
  } catch (const ew::Error& e) {
    throw Napi::Error::New(env, call + ": " + e.what());
  }
  Napi::Object bench = Napi::Object::New(env);
  bench.Set("run", Napi::Function::New(env, [state](const Napi::CallbackInfo& ci) -> Napi::Value {
              if (ci.Length() < 1 || !ci[0].IsBoolean())
                throw Napi::TypeError::New(ci.Env(), "routerBench.run: reroute must be a boolean");
              try {
                state->run(ci[0].As<Napi::Boolean>().Value());
              } catch (const ew::Error& e) {
                throw Napi::Error::New(ci.Env(), std::string("routerBench.run: ") + e.what());
              }
              return ci.Env().Undefined();
            }, "run"));
  return bench;
}

}  // namespace

void RegisterRouterBench(Napi::Env env, Napi::Object exports) {
  exports.Set("createRouterBench", Napi::Function::New<CreateRouterBench>(env, "createRouterBench"));
}

}  // namespace ew_addon

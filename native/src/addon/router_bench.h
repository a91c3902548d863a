// createRouterBench: a native harness for bench/router-reroute.ts that times the fused
// router step (route_tokens_cpu) with and without the reroute, on random data.
#pragma once
#include <napi.h>

namespace ew_addon {

// Adds createRouterBench to the addon's exports (called from the module init).
void RegisterRouterBench(Napi::Env env, Napi::Object exports);

}  // namespace ew_addon

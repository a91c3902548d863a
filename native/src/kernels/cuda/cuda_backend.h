// CudaBackend: the Backend interface (kernels/backend.h) on the CUDA kernels.
//
// The forward pass (engine/forward.cc) keeps activations, the KV cache and the expert
// pool in host memory, so this backend stages: each op uploads its inputs, runs the
// kernels and downloads its outputs. Dense weights are copied to the device once (cached
// by address: they are immutable mmap'd tensors); routed experts are copied per call,
// only the slots the call uses, so adapter loads and unloads are always seen. This makes
// the CUDA kernels run inside the real forward pass (parity with the CPU backend), not
// fast: a device-resident forward needs activations, the latent cache and the expert pool
// (ExpertPoolCuda) on the device, which the bench (native/bench/gpu_decode.cc) drives
// directly through kernels/cuda/ops_cuda.h.
#pragma once
#include <memory>

#include "kernels/backend.h"

namespace ew {

// Throws ew::Error when no CUDA device is available.
std::unique_ptr<Backend> make_cuda_backend();


}  // namespace ew

#!/usr/bin/env bash
# The full GPU benchmark of the CUDA backend on the DeepSeek-V2-Lite shape (random weights
# made on the device, no download): native/bench/gpu_decode.cc with the routed experts in
# plain cudaMalloc tensors and then in the CUDA VMM expert pool, 20 resident adapters by
# default. The second command of a GPU session, after bash bench/gpu/verify.sh (which runs
# the tests and a bounded pass); it reuses verify's build tree when there is one, else
# builds the benchmark with CMake + nvcc (no Node needed).
# Extra arguments go to the bench (--adapters N --ctx C --prefill P --iters I --esft DIR).
# Prints "no CUDA device" and exits 0 on a machine without a GPU.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD="${EW_GPU_BUILD_DIR:-$ROOT/build-gpu}"

if ! ls /dev/nvidia[0-9]* >/dev/null 2>&1 && ! nvidia-smi -L >/dev/null 2>&1; then
  echo "no CUDA device: skipping the GPU benchmark"
  exit 0
fi
if ! command -v nvcc >/dev/null 2>&1 && [ ! -x /usr/local/cuda/bin/nvcc ]; then
  echo "a CUDA device is present but nvcc was not found (put the CUDA toolkit's bin/ on PATH)" >&2
  exit 1
fi
command -v nvcc >/dev/null 2>&1 || export PATH="/usr/local/cuda/bin:$PATH"

if [ ! -x "$BUILD/ew_bench_gpu_decode" ]; then
  JOBS="${EW_JOBS:-$(nproc)}"
  cmake -S "$ROOT" -B "$BUILD" -DEW_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="${EW_CUDA_ARCHS:-90}" >/dev/null
  cmake --build "$BUILD" --target ew_bench_gpu_decode -j"$JOBS"
fi

OUTDIR="${OUT:-$ROOT/bench/results}"
mkdir -p "$OUTDIR"
RESULT="$OUTDIR/gpu-$(date -u +%Y%m%dT%H%M%SZ).txt"
{
  echo "== GPU benchmark, routed experts in plain cudaMalloc tensors"
  "$BUILD/ew_bench_gpu_decode" --esft "$ROOT/../shared/data/esft/expert_configs" --pool plain "$@"
  echo "== GPU benchmark, routed experts in the CUDA VMM expert pool"
  "$BUILD/ew_bench_gpu_decode" --esft "$ROOT/../shared/data/esft/expert_configs" --pool vmm "$@"
} 2>&1 | tee "$RESULT"
echo "results written to $RESULT"

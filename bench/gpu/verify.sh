#!/usr/bin/env bash
# Everything that needs a GPU, in one command on a CUDA machine without Node, from the
# repository root, with the kit that scripts/gpu-kit.sh packed into .gpu-kit/:
#   1. one CMake build with nvcc (sm_90 unless EW_CUDA_ARCHS says otherwise): the addon,
#      ew_native_tests and the GPU benchmark;
#   2. the C++ CUDA tests (ew_native_tests cuda_);
#   3. the TypeScript CUDA parity test (test/engine/cuda-parity.test.ts) with the kit's node;
#   4. bench/gpu/run.sh (the CUDA tests again, then the V2-Lite-shape benchmark), in the time left.
# Logs go to $OUT (the device tool's output folder; elsewhere bench/results/verify-<time>/);
# summary.txt there holds one PASS/FAIL/SKIP line per stage and is printed last.
# The whole run keeps within EW_VERIFY_BUDGET_S seconds (default 560, under the tool's 600).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
KIT="$ROOT/.gpu-kit"
BUILD="${EW_GPU_BUILD_DIR:-$ROOT/build-gpu}"
RESULTS="${OUT:-$ROOT/bench/results/verify-$(date -u +%Y%m%dT%H%M%SZ)}"
BUDGET="${EW_VERIFY_BUDGET_S:-560}"
START=$(date +%s)
mkdir -p "$RESULTS"
SUMMARY="$RESULTS/summary.txt"
: > "$SUMMARY"
cd "$ROOT"

left() { echo $((BUDGET - ($(date +%s) - START))); }
record() { echo "$1 $2${3:+: $3} ($(($(date +%s) - START)) s)" | tee -a "$SUMMARY"; }
finish() {
  echo "===== summary ($RESULTS)"
  cat "$SUMMARY"
  grep -q '^FAIL' "$SUMMARY" && exit 1
  exit 0
}
# stage NAME LOG SECONDS CMD...: runs CMD (a program, or a function exported with export -f)
# with a time limit, output to LOG and stdout; records PASS or FAIL.
stage() {
  local name="$1" log="$2" limit="$3"
  shift 3
  if [ "$limit" -lt 10 ]; then
    record SKIP "$name" "no time left"
    return 1
  fi
  echo "===== $name (limit ${limit} s)" | tee -a "$log"
  timeout --kill-after=5 "$limit" bash -c '"$@"' stage "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -eq 0 ]; then record PASS "$name"; return 0; fi
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then record FAIL "$name" "timed out after ${limit} s, see $(basename "$log")"
  else record FAIL "$name" "exit $rc, see $(basename "$log")"; fi
  return 1
}

# ---- environment and kit
{
  date -u
  nvidia-smi -L || echo "nvidia-smi failed"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv || true
  command -v nvcc >/dev/null 2>&1 || export PATH="/usr/local/cuda/bin:$PATH"
  nvcc --version | tail -2
  cmake --version | head -1
  c++ --version | head -1
  nproc
} > "$RESULTS/env.txt" 2>&1
command -v nvcc >/dev/null 2>&1 || export PATH="/usr/local/cuda/bin:$PATH"
if ! nvidia-smi -L >/dev/null 2>&1; then
  record FAIL "device" "no CUDA device (nvidia-smi -L failed)"
  finish
fi
if [ ! -f "$KIT/node.xz" ] || [ ! -f "$KIT/tree.tar.xz" ]; then
  record FAIL "kit" ".gpu-kit/ missing: run scripts/gpu-kit.sh here and name .gpu-kit in the run's carry list"
  finish
fi
mkdir -p "$KIT/bin"
if xz -dc "$KIT/node.xz" > "$KIT/bin/node" && chmod +x "$KIT/bin/node" && tar -C "$ROOT" -xJf "$KIT/tree.tar.xz" &&
  "$KIT/bin/node" --version >> "$RESULTS/env.txt"; then
  export PATH="$KIT/bin:$PATH"
  record PASS "kit" "node $(node --version), dist/ and Node-API headers unpacked"
else
  record FAIL "kit" "could not unpack node or the tree"
  finish
fi

# ---- 1. build: addon + C++ tests + GPU benchmark, one tree (run.sh reuses it)
JOBS="${EW_JOBS:-$(nproc)}"
build() {
  cmake -S "$ROOT" -B "$BUILD" -DEW_CUDA=ON -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_ARCHITECTURES="${EW_CUDA_ARCHS:-90}" -DCMAKE_JS_INC="$KIT/include/node" &&
    cmake --build "$BUILD" --target expertweave ew_native_tests ew_bench_gpu_decode -j"$JOBS" &&
    mkdir -p "$ROOT/build/Release" && cp "$BUILD/expertweave.node" "$ROOT/build/Release/expertweave.node" &&
    node -e "import('./dist/lib/engine/binding.js').then((m) => { const b = m.loadBinding();
      console.log('addon', JSON.stringify(b.buildInfo()), 'cudaAvailable', b.cudaAvailable());
      if (!b.buildInfo().cuda || !b.cudaAvailable()) process.exit(1); })"
}
export -f build
export ROOT KIT BUILD JOBS PATH
if ! stage "build (addon, C++ tests, GPU bench; nvcc sm_${EW_CUDA_ARCHS:-90})" "$RESULTS/build.txt" "$(left)" build; then
  finish
fi

# ---- 2. C++ CUDA tests
stage "C++ CUDA tests (ew_native_tests cuda_)" "$RESULTS/cpp-cuda-tests.txt" "$(( $(left) < 150 ? $(left) : 150 ))" \
  "$BUILD/ew_native_tests" cuda_

# ---- 3. TypeScript CUDA parity; a skip on a GPU machine means the addon did not see the GPU
parity() {
  node --test dist/test/engine/cuda-parity.test.js | tee "$KIT/parity.tap"
  local rc=${PIPESTATUS[0]}
  if grep -q '# SKIP' "$KIT/parity.tap" || grep -q '^# pass 0$' "$KIT/parity.tap"; then
    echo "FAIL: the parity test skipped on a GPU machine"
    return 1
  fi
  return "$rc"
}
export -f parity
stage "TS CUDA parity (test/engine/cuda-parity.test.ts)" "$RESULTS/ts-parity.txt" "$(( $(left) < 180 ? $(left) : 180 ))" parity

# ---- 4. the GPU benchmark (bench/gpu/run.sh), in the time left
EW_GPU_BUILD_DIR="$BUILD" EW_JOBS="$JOBS" stage "GPU benchmark (bench/gpu/run.sh)" "$RESULTS/bench.txt" "$(( $(left) - 5 ))" \
  bash "$ROOT/bench/gpu/run.sh"
finish

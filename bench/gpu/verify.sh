#!/usr/bin/env bash
# The GPU check, in one command on a CUDA machine without Node, from the repository root,
# with the kit that scripts/gpu-kit.sh packed into .gpu-kit/. It must fit a device lease
# with room to run it twice, so it does each thing once:
#   1. one CMake build with nvcc for sm_90 (EW_CUDA_ARCHS overrides): the addon,
#      ew_native_tests and ew_bench_gpu_decode (2.5 CPU-minutes on the 2-core build host, so
#      about a minute expected on 16 cores; capped at 2/3 of the budget;
#      EW_VERIFY_REUSE_BUILD=1 reuses an existing build tree instead, for a rerun of
#      unchanged sources);
#   2. the C++ CUDA tests (ew_native_tests cuda_) under EW_REQUIRE_CUDA=1: a missing device
#      or CUDA build fails instead of skipping, and the engine tests assert that decode steps
#      were replayed from CUDA graphs without a failed capture;
#   3. the TypeScript CPU-vs-CUDA parity test (test/engine/cuda-parity.test.ts); a skip fails;
#   4. one bounded pass of the V2-Lite-shape benchmark (ew_bench_gpu_decode --quick, 4
#      adapters, the VMM pool): a failure or zero replayed graphs is FAIL, running out of
#      time only a WARN (the figures are the benchmark's, not a correctness check).
# The full benchmark is a second command, for when the lease has time left:
#   bash bench/gpu/run.sh            (reuses this build; both expert pools, 20 adapters)
# Logs go to $OUT (the device tool's output folder; elsewhere bench/results/verify-<time>/);
# summary.txt there holds one PASS/FAIL/WARN/SKIP line per stage saying what passed, and
# is printed last. The run keeps within EW_VERIFY_BUDGET_S seconds (default 480). Exit 1
# when any stage FAILs.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
KIT="$ROOT/.gpu-kit"
BUILD="${EW_GPU_BUILD_DIR:-$ROOT/build-gpu}"
RESULTS="${OUT:-$ROOT/bench/results/verify-$(date -u +%Y%m%dT%H%M%SZ)}"
BUDGET="${EW_VERIFY_BUDGET_S:-480}"
ARCHS="${EW_CUDA_ARCHS:-90}"
START=$(date +%s)
mkdir -p "$RESULTS"
SUMMARY="$RESULTS/summary.txt"
: > "$SUMMARY"
cd "$ROOT"
export EW_REQUIRE_CUDA=1

left() { echo $((BUDGET - ($(date +%s) - START))); }
cap() { local l; l=$(left); echo $(( l < $1 ? l : $1 )); }
record() { echo "$1 $2${3:+: $3} ($(($(date +%s) - START)) s)" | tee -a "$SUMMARY"; }
finish() {
  echo "===== summary ($RESULTS)"
  cat "$SUMMARY"
  grep -q '^FAIL' "$SUMMARY" && exit 1
  exit 0
}
# run_stage LOG SECONDS CMD...: runs CMD (a program, or a function exported with export -f)
# with a time limit, output to LOG and stdout; returns its status (124/137: timed out).
run_stage() {
  local log="$1" limit="$2"
  shift 2
  if [ "$limit" -lt 10 ]; then
    echo "no time left (${limit} s of the ${BUDGET} s budget)" | tee -a "$log"
    return 124
  fi
  timeout --kill-after=5 "$limit" bash -c '"$@"' stage "$@" 2>&1 | tee -a "$log"
  return "${PIPESTATUS[0]}"
}
timed_out() { [ "$1" -eq 124 ] || [ "$1" -eq 137 ]; }

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
record PASS "device" "$(nvidia-smi -L 2>/dev/null | head -1)"
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
  if [ "${EW_VERIFY_REUSE_BUILD:-0}" = 1 ] && [ -x "$BUILD/ew_native_tests" ] && [ -x "$BUILD/ew_bench_gpu_decode" ] &&
    [ -f "$BUILD/expertweave.node" ]; then
    echo "reusing the build in $BUILD"
  else
    local gen=()
    command -v ninja >/dev/null 2>&1 && [ ! -f "$BUILD/Makefile" ] && gen=(-G Ninja)  # one graph for all three targets
    cmake -S "$ROOT" -B "$BUILD" "${gen[@]}" -DEW_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="$ARCHS" \
      -DCMAKE_JS_INC="$KIT/include/node" &&
      cmake --build "$BUILD" --target expertweave ew_native_tests ew_bench_gpu_decode -j"$JOBS" || return 1
  fi
  mkdir -p "$ROOT/build/Release" && cp "$BUILD/expertweave.node" "$ROOT/build/Release/expertweave.node"
}
export -f build
export ROOT KIT BUILD JOBS PATH ARCHS
build_start=$(date +%s)
run_stage "$RESULTS/build.txt" "$(cap $((BUDGET * 2 / 3)))" build
rc=$?
if [ "$rc" -ne 0 ]; then
  record FAIL "build" "$(timed_out "$rc" && echo "timed out" || echo "exit $rc"), see build.txt"
  finish
fi
record PASS "build" "addon, ew_native_tests, ew_bench_gpu_decode for sm_$ARCHS in $(( $(date +%s) - build_start )) s"
# The addon must hold the CUDA backend and see the device (else the parity test cannot run).
if node -e "import('./dist/lib/engine/binding.js').then((m) => { const b = m.loadBinding();
    console.log('addon', JSON.stringify(b.buildInfo()), 'cudaAvailable', b.cudaAvailable());
    if (!b.buildInfo().cuda || !b.cudaAvailable()) process.exit(1); })" >> "$RESULTS/build.txt" 2>&1; then
  record PASS "addon" "$(tail -1 "$RESULTS/build.txt")"
else
  record FAIL "addon" "$(tail -1 "$RESULTS/build.txt") (needs buildInfo().cuda and cudaAvailable())"
fi

# ---- 2. C++ CUDA tests, once
run_stage "$RESULTS/cpp-cuda-tests.txt" "$(cap 120)" "$BUILD/ew_native_tests" cuda_
rc=$?
counts="$(grep -E '^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$' "$RESULTS/cpp-cuda-tests.txt" | tail -1)"
n_failed=$(grep -c '^FAIL ' "$RESULTS/cpp-cuda-tests.txt")
failed="$(grep '^FAIL ' "$RESULTS/cpp-cuda-tests.txt" | sed 's/^FAIL //' | head -4 | tr '\n' ' ')"
[ "$n_failed" -gt 4 ] && failed="$failed... ($((n_failed - 4)) more)"
if [ "$rc" -eq 0 ] && [ -n "$counts" ] && ! grep -q '^0 passed' <<< "$counts" && grep -q ' 0 skipped$' <<< "$counts"; then
  record PASS "C++ CUDA tests" "$counts (ops vs CPU twins, router, VMM pool, engine incl. graph replays)"
elif timed_out "$rc"; then
  record FAIL "C++ CUDA tests" "timed out${counts:+ after $counts}, see cpp-cuda-tests.txt"
else
  record FAIL "C++ CUDA tests" "${counts:-no summary line}${failed:+; failed: $failed}, see cpp-cuda-tests.txt"
fi

# ---- 3. TypeScript CUDA parity; a skip on a GPU machine means the addon did not see the GPU
parity() {
  node --test dist/test/engine/cuda-parity.test.js | tee "$KIT/parity.tap"
  local rc=${PIPESTATUS[0]}
  if grep -q '# SKIP' "$KIT/parity.tap"; then
    echo "FAIL: the parity test skipped on a GPU machine"
    return 1
  fi
  if [ "$rc" -eq 0 ] && grep -q '^# pass 0$' "$KIT/parity.tap"; then
    echo "FAIL: the parity test ran no test"
    return 1
  fi
  return "$rc"
}
export -f parity
run_stage "$RESULTS/ts-parity.txt" "$(cap 150)" parity
rc=$?
tap="$(grep -E '^# (pass|fail|skipped) ' "$RESULTS/ts-parity.txt" | sed 's/^# //' | tr '\n' ' ')"
if [ "$rc" -eq 0 ]; then record PASS "TS CUDA parity" "${tap:-?}(cuda-parity.test.ts: logits, mixed-batch greedy tokens, adapter churn)"
elif grep -q 'skipped on a GPU machine' "$RESULTS/ts-parity.txt"; then record FAIL "TS CUDA parity" "${tap}: the suite skipped (the addon saw no CUDA device), see ts-parity.txt"
elif grep -q 'ran no test' "$RESULTS/ts-parity.txt"; then record FAIL "TS CUDA parity" "${tap}: no test ran, see ts-parity.txt"
else record FAIL "TS CUDA parity" "$(timed_out "$rc" && echo "timed out; " )${tap}see ts-parity.txt"; fi

# ---- 4. one bounded benchmark pass: a timeout is a WARN, a failure (or no graph replay) a FAIL
limit=$(cap 150)
if [ "$limit" -lt 20 ]; then
  record SKIP "GPU benchmark (quick)" "no time left; run bash bench/gpu/run.sh"
  finish
fi
run_stage "$RESULTS/bench.txt" "$limit" "$BUILD/ew_bench_gpu_decode" --quick --adapters 4 --pool vmm \
  --esft "$ROOT/../shared/data/esft/expert_configs"
rc=$?
graphs="$(grep -E '^graphs: ' "$RESULTS/bench.txt" | tail -1)"
if timed_out "$rc"; then
  record WARN "GPU benchmark (quick)" "did not finish in ${limit} s (figures so far in bench.txt); run bash bench/gpu/run.sh"
elif [ "$rc" -ne 0 ]; then
  record FAIL "GPU benchmark (quick)" "exit $rc${graphs:+, $graphs}, see bench.txt"
elif [ -z "$graphs" ] || grep -qE ' 0 replayed' <<< "$graphs"; then
  record FAIL "GPU benchmark (quick)" "${graphs:-no graph counters}: decode steps were not replayed as CUDA graphs"
else
  record PASS "GPU benchmark (quick)" "$graphs; figures in bench.txt"
fi
finish

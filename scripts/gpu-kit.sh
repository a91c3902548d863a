#!/usr/bin/env bash
# Packs what a GPU machine without Node needs to run bench/gpu/verify.sh into .gpu-kit/
# (git-ignored, so the device tool's `run` must name it in `carry`):
#   node.xz         this machine's node binary (xz -9), unpacked there to run the TS tests
#   tree.tar.xz     dist/ (compiled TypeScript, built fresh here), node_modules/node-addon-api
#                   and the four Node-API headers: the addon is compiled there by CMake with
#                   nvcc, together with the C++ tests and the GPU benchmark (one build, sm_90)
# The GPU session then runs bench/gpu/verify.sh (build, CUDA tests, parity, a bounded
# benchmark pass, within an 8-minute budget) and, with lease time left, the full
# benchmark bench/gpu/run.sh.
# Run here (after `npm install`); prints the carry list and the command for the GPU session.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KIT="$ROOT/.gpu-kit"
cd "$ROOT"

NODE="$(node -p process.execPath)"
HEADERS="$(dirname "$NODE")/../include/node"
for h in node_api.h node_api_types.h js_native_api.h js_native_api_types.h; do
  [ -f "$HEADERS/$h" ] || { echo "gpu-kit: $HEADERS/$h not found (Node-API headers beside $NODE)" >&2; exit 1; }
done
[ -f node_modules/node-addon-api/napi.h ] || { echo "gpu-kit: node_modules/node-addon-api missing: run npm install" >&2; exit 1; }

echo "gpu-kit: compiling the TypeScript (dist/)"
npx tsc -p .

mkdir -p "$KIT"
# The node binary changes rarely and xz -9 takes a minute: reuse the packed one when it matches.
SUM="$(sha256sum "$NODE" | cut -d' ' -f1)"
if [ ! -f "$KIT/node.xz" ] || [ "$(cat "$KIT/node.sha256" 2>/dev/null)" != "$SUM" ]; then
  echo "gpu-kit: packing $NODE ($(node --version))"
  xz -9 -c "$NODE" > "$KIT/node.xz.tmp"
  mv "$KIT/node.xz.tmp" "$KIT/node.xz"
  echo "$SUM" > "$KIT/node.sha256"
fi

STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/.gpu-kit/include/node"
cp "$HEADERS"/{node_api.h,node_api_types.h,js_native_api.h,js_native_api_types.h} "$STAGE/.gpu-kit/include/node/"
tar -C "$ROOT" -cf "$STAGE/tree.tar" dist node_modules/node-addon-api
tar -C "$STAGE" -rf "$STAGE/tree.tar" .gpu-kit/include
xz -9 -c "$STAGE/tree.tar" > "$KIT/tree.tar.xz"
node -p "process.version" > "$KIT/node-version.txt"

echo
echo "gpu-kit: $(du -sh "$KIT" | cut -f1) in .gpu-kit/ ($(du -b "$KIT/node.xz" | cut -f1) bytes node, $(du -b "$KIT/tree.tar.xz" | cut -f1) bytes tree)"
echo "GPU session: first the check (within EW_VERIFY_BUDGET_S=480 s, so it can run twice in a lease):"
echo "  run(carry=[\".gpu-kit\"], timeout_s=540, command=\"bash bench/gpu/verify.sh\")"
echo "Results come back as files of \$OUT: summary.txt (PASS/FAIL/WARN per stage), env.txt, build.txt,"
echo "cpp-cuda-tests.txt, ts-parity.txt, bench.txt. A rerun in the same lease can keep the build:"
echo "  run(carry=[\".gpu-kit\"], command=\"EW_VERIFY_REUSE_BUILD=1 bash bench/gpu/verify.sh\")"
echo "Then, with time left, the full benchmark (reuses build-gpu/ when the machine is still warm):"
echo "  run(carry=[\".gpu-kit\"], timeout_s=600, command=\"bash bench/gpu/run.sh\")"

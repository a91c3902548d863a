#!/usr/bin/env bash
# Checks the node-gyp fallback (binding.gyp, for machines without CMake) in a copy of the
# tree, so the CMake build in build/ stays as it is: builds the CPU engine, its addon and
# the C++ tests with npm's bundled node-gyp, runs the C++ suite, then the whole node:test
# suite against that addon. .ci/run calls it after `npm test`. Exits 1, saying why, when
# the fallback fails to build or a test fails, and also when it cannot be checked at all.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[ -d node_modules ] || { echo "check-node-gyp: no node_modules: run npm install first" >&2; exit 1; }
command -v python3 >/dev/null || { echo "check-node-gyp: cannot check the node-gyp build: node-gyp needs python3, which is not installed" >&2; exit 1; }

# The copy sits in TMP/repo with TMP/shared pointing at ../shared: tests read the ESFT data there.
TMP="$(mktemp -d "${TMPDIR:-/tmp}/ew-node-gyp.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
WORK="$TMP/repo"
mkdir -p "$WORK"
[ -e "$ROOT/../shared" ] && ln -s "$(cd "$ROOT/../shared" && pwd)" "$TMP/shared"
# The tracked and new (not ignored) files as they are in the working tree.
git ls-files -z -co --exclude-standard | node -e '
  const fs = require("node:fs"), path = require("node:path");
  const dst = process.argv[1];
  for (const f of fs.readFileSync(0, "utf8").split("\0").filter(Boolean)) {
    if (!fs.existsSync(f)) continue;  // deleted in the working tree
    fs.mkdirSync(path.join(dst, path.dirname(f)), { recursive: true });
    fs.copyFileSync(f, path.join(dst, f));
  }' "$WORK"
ln -s "$ROOT/node_modules" "$WORK/node_modules"
cd "$WORK"

start=$(date +%s)
echo "check-node-gyp: building with node-gyp in $WORK"
EW_FORCE_NODE_GYP=1 node scripts/build-native.mjs > node-gyp.log 2>&1 || { tail -40 node-gyp.log; echo "check-node-gyp: FAIL: the node-gyp build failed" >&2; exit 1; }
[ -x build/Release/ew_native_tests ] || { echo "check-node-gyp: FAIL: the node-gyp build made no build/Release/ew_native_tests" >&2; exit 1; }
[ -f build/Release/expertweave.node ] || { echo "check-node-gyp: FAIL: the node-gyp build made no build/Release/expertweave.node" >&2; exit 1; }
echo "check-node-gyp: built in $(( $(date +%s) - start )) s"
npx tsc -p .
node scripts/run-tests.mjs
echo "check-node-gyp: PASS (node-gyp build, C++ suite and node:test suites) in $(( $(date +%s) - start )) s"

// Runs the C++ test binary (native/tests, built beside the addon by cmake-js or by the
// node-gyp fallback) as one node:test suite, so `npm test` covers both languages; the
// binary's skipped tests (CUDA without a device) are reported as a diagnostic.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';

import { addon } from '../helpers/engine.js';
import { repoRoot } from '../helpers/paths.js';

const build = join(repoRoot(), 'build');
const binary = join(build, 'Release', 'ew_native_tests');
const cache = join(build, 'CMakeCache.txt');

/** Why there is legitimately no binary (a CMake build with EW_TESTS=OFF), or undefined when there should be one. */
function skipReason(): string | undefined {
  if (existsSync(binary)) return undefined;
  if (existsSync(cache) && /^EW_TESTS:BOOL=OFF$/m.test(readFileSync(cache, 'utf8'))) return 'built with EW_TESTS=OFF';
  return undefined;
}

/** Runs the binary with extra environment and checks it passed; reports what it skipped. */
function runCppTests(t: TestContext, env: Record<string, string>): void {
  assert.ok(existsSync(binary), `${binary} is missing; run \`npm run build\``);
  const r = spawnSync(binary, [], { encoding: 'utf8', timeout: 30 * 60 * 1000, maxBuffer: 64 << 20, env: { ...process.env, ...env } });
  assert.equal(r.error, undefined, `could not run ${binary}: ${r.error?.message}`);
  assert.equal(r.status, 0, `ew_native_tests failed (status ${r.status}, signal ${r.signal}):\n${r.stdout}\n${r.stderr}`);
  const summary = /^(\d+) passed, (\d+) failed, (\d+) skipped$/m.exec(r.stdout);
  assert.ok(summary, `ew_native_tests printed no summary line:\n${r.stdout}`);
  assert.ok(Number(summary[1]) > 0, 'ew_native_tests ran no test');
  const skipped = [...r.stdout.matchAll(/^skip (\S+)\n\s+(.*)$/gm)].map((m) => `${m[1]} (${m[2]})`);
  t.diagnostic(`${summary[1]} passed, ${summary[3]} skipped${skipped.length ? `: ${skipped.join(', ')}` : ''}`);
}

test('C++ tests (build/Release/ew_native_tests)', { skip: skipReason() }, (t) => runCppTests(t, {}));

// The kernel tests loop over every dispatch path themselves; the engine-level invariants
// (prefill == decode, batch == alone, adapter == merged, all bitwise) run on the process's
// path, so the binary runs again on every other path this CPU has (portable, avx2, avx512,
// avx512-bf16, amx: what buildInfo().cpuPaths lists; about a second each).
const native = addon();
const paths = 'skip' in native ? [] : native.binding.buildInfo().cpuPaths;
const defaultPath = 'skip' in native ? undefined : native.binding.buildInfo().cpuPath;
for (const path of paths.filter((p) => p !== defaultPath))
  test(`C++ tests on the ${path} CPU kernels (EW_CPU_PATH=${path})`, { skip: skipReason() }, (t) => runCppTests(t, { EW_CPU_PATH: path }));

// The float64-reference suites (forward-reference.test.ts: DeepSeek-V2; family-reference.test.ts:
// Qwen3-MoE, DeepSeek-V3, Mixtral) again on every other CPU dispatch
// path this machine runs (buildInfo().cpuPaths), each in its own process under EW_CPU_PATH:
// the engine's invariants (prefill == decode, batch == alone, adapter == merged, bitwise) and
// the reference's tolerances hold on every path, not only the default one. The paths that
// round activations to bf16 are checked at their own tolerance (see that file).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { addon, withAddon } from '../helpers/engine.js';

const { test } = withAddon();
const native = addon();
const info = 'skip' in native ? undefined : native.binding.buildInfo();
const here = dirname(fileURLToPath(import.meta.url));
const SUITES = ['forward-reference.test.js', 'family-reference.test.js'];

for (const path of (info?.cpuPaths ?? []).filter((p) => p !== info?.cpuPath)) for (const name of SUITES) {
  const suite = join(here, name);
  test(`${name} on the ${path} CPU kernels`, () => {
    // Without NODE_TEST_CONTEXT the child reports in TAP, not to this runner.
    const { NODE_TEST_CONTEXT: _, ...env } = process.env;
    const r = spawnSync(process.execPath, ['--test', suite], { encoding: 'utf8', env: { ...env, EW_CPU_PATH: path }, timeout: 10 * 60 * 1000 });
    const tail = `${r.stdout}\n${r.stderr}`.split('\n').filter((l) => /^# (pass|fail)|not ok|error:/.test(l)).slice(0, 20).join('\n');
    assert.equal(r.status, 0, `${name} under EW_CPU_PATH=${path} failed:\n${tail}`);
    assert.match(r.stdout, /^# fail 0$/m);
  });
}

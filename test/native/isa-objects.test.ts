// The per-file instruction-set flags (CMakeLists.txt, binding.gyp: *_avx2.cc, *_avx512.cc,
// *_avx512bf16.cc, *_amx.cc) are safe only while those objects define no symbol another file
// could also define: an inline or template function (a header's helper, std::min, a
// std::vector member) instantiated in an AVX-512 object is a weak symbol the linker may keep
// for every caller, and a CPU without AVX-512 then faults in code that never asked for it.
// So every global or weak symbol of an ISA object must be one of its own kernels, in
// ew::<isa>:: (avx2, avx512, avx512bf16, amx), reached only through the dispatcher.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';

import { repoRoot } from '../helpers/paths.js';

const ISA_OBJECT = /_(avx2|avx512|avx512bf16|amx)(\.cc)?\.o$/;
const OWN_NAMESPACE = /^ew::(avx2|avx512|avx512bf16|amx)::/;

function isaObjects(dir: string): string[] {
  if (!existsSync(dir)) return [];
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...isaObjects(p));
    else if (ISA_OBJECT.test(name)) out.push(p);
  }
  return out;
}

const objects = isaObjects(join(repoRoot(), 'build'));
const nm = spawnSync('nm', ['--version'], { encoding: 'utf8' });
const skip = objects.length === 0 ? 'no ISA kernel objects under build/ (not x86-64, or not built)' : nm.error ? 'nm is not installed' : undefined;

test('the ISA-flagged kernel objects define only their own kernels (no inline or template copies)', { skip }, () => {
  const strays: string[] = [];
  for (const obj of objects) {
    const r = spawnSync('nm', ['-C', '--defined-only', obj], { encoding: 'utf8', maxBuffer: 16 << 20 });
    assert.equal(r.status, 0, `nm ${obj}: ${r.stderr}`);
    for (const line of r.stdout.split('\n')) {
      const m = /^[0-9a-f]*\s+([A-Za-z])\s+(.*)$/.exec(line);
      if (!m) continue;
      const [, type, name] = m;
      // Lower case is local (t, d, b, r), except the weak and unique kinds (v, w, u).
      const weak = /[VWvwu]/.test(type);
      if (!weak && type === type.toLowerCase()) continue;
      if (!weak && OWN_NAMESPACE.test(name)) continue;
      strays.push(`${obj.slice(repoRoot().length + 1)}: ${type} ${name}`);
    }
  }
  assert.deepEqual(strays, [], `ISA objects define symbols other files may share:\n${strays.join('\n')}`);
});

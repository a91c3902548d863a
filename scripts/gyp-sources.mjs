// Prints the source files of one part of the native build for binding.gyp, with the
// same globs as CMakeLists.txt (gyp has no globbing): `core`, `avx2` or `addon`.
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

const list = (dir, suffix) =>
  existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith(suffix)).sort().map((f) => join(dir, f)) : [];

const coreDirs = ['native/src/engine', 'native/src/memory', 'native/src/util', 'native/src/kernels', 'native/src/kernels/cpu'];
const all = coreDirs.flatMap((d) => list(d, '.cc'));
const isAvx2 = (f) => f.endsWith('_avx2.cc');
const parts = {
  core: all.filter((f) => !isAvx2(f)),
  avx2: all.filter(isAvx2),
  addon: list('native/src/addon', '.cc'),
};
const part = parts[process.argv[2]];
if (!part) {
  console.error(`usage: node scripts/gyp-sources.mjs ${Object.keys(parts).join('|')}`);
  process.exit(2);
}
console.log(part.join(' '));

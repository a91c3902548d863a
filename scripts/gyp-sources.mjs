// Prints the source files of one part of the native build for binding.gyp (gyp has no
// globbing), from native/sources.txt, the list CMakeLists.txt reads too:
//   core        the C++ of the util, memory, kernels and engine layers (no ISA kernels, no CUDA)
//   avx2, avx512, avx512bf16, amx
//               the *_<isa>.cc kernels, each compiled with its instruction set's flags
//   addon  the Node addon
//   tests  the C++ tests
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

/** Lines of native/sources.txt as { layer, kind, files } with each pattern (dir/*.ext) expanded. */
export function nativeSources() {
  const lines = readFileSync(join(root, 'native', 'sources.txt'), 'utf8').split('\n');
  return lines
    .filter((l) => /^[a-z]/.test(l))
    .map((l) => {
      const [layer, kind, pattern] = l.trim().split(/\s+/);
      const dir = dirname(pattern);
      const suffix = pattern.slice(dir.length + 1).replace(/^\*/, '');
      let names = [];
      try {
        names = readdirSync(join(root, dir)).filter((f) => f.endsWith(suffix));
      } catch {
        names = []; // a layer without that directory (yet)
      }
      return { layer, kind, files: names.sort().map((f) => `${dir}/${f}`) };
    });
}

const ISAS = ['avx2', 'avx512', 'avx512bf16', 'amx'];
const isaOf = (f) => ISAS.find((isa) => f.endsWith(`_${isa}.cc`));
const cc = (layers) => nativeSources().filter((s) => s.kind === 'cc' && layers.includes(s.layer)).flatMap((s) => s.files);
const core = () => cc(['util', 'memory', 'kernels', 'engine']);
const parts = {
  core: () => core().filter((f) => !isaOf(f)),
  ...Object.fromEntries(ISAS.map((isa) => [isa, () => core().filter((f) => isaOf(f) === isa)])),
  addon: () => cc(['addon']),
  tests: () => cc(['tests']),
};

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const part = parts[process.argv[2]];
  if (!part) {
    console.error(`usage: node scripts/gyp-sources.mjs ${Object.keys(parts).join('|')}`);
    process.exit(2);
  }
  console.log(part().join(' '));
}

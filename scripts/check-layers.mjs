// Checks that the layers run one way (../shared/docs/architecture.md): a file may include
// or import only from its own layer or one below.
//   native: util <- memory <- kernels <- engine <- addon   (the order of native/sources.txt;
//           tests and bench see every layer, no layer sees them)
//   lib:    safetensors <- engine <- scheduler, adapters <- tokenizer <- server <- cli
//           (layers on one level do not import each other; the tokenizer, with chat templates,
//           is the server's and the CLI's request-side text layer)
// Prints every upward include and exits 1 when there is one. `npm test` runs it first.
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, normalize, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

import { nativeSources } from './gyp-sources.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

function walk(dir, exts) {
  if (!existsSync(dir)) return [];
  const out = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...walk(p, exts));
    else if (exts.some((e) => name.endsWith(e))) out.push(p);
  }
  return out;
}

const rel = (p) => relative(root, p).split(sep).join('/');

// ---- native: levels from the order of native/sources.txt
const nativeLevel = new Map();
for (const { layer } of nativeSources()) if (!nativeLevel.has(layer)) nativeLevel.set(layer, nativeLevel.size);
const SRC = 'native/src/';

/** The native layer of a repository path, or undefined outside the layered tree. */
function nativeLayer(path) {
  if (path.startsWith(SRC)) return path.slice(SRC.length).split('/')[0];
  if (path.startsWith('native/tests/')) return 'tests';
  if (path.startsWith('native/bench/')) return 'bench';
  return undefined;
}

const problems = [];
for (const file of walk(join(root, 'native'), ['.h', '.cc', '.cu', '.cuh'])) {
  const path = rel(file);
  const layer = nativeLayer(path);
  if (layer === undefined) continue;
  if (!nativeLevel.has(layer)) {
    problems.push(`${path}: directory ${layer} is not a layer of native/sources.txt`);
    continue;
  }
  readFileSync(file, 'utf8')
    .split('\n')
    .forEach((line, i) => {
      const m = /^\s*#\s*include\s+"([^"]+)"/.exec(line);
      if (!m) return;
      const inc = m[1];
      // "layer/..." from native/src (the include path), else relative to the file.
      const first = inc.split('/')[0];
      const target = nativeLevel.has(first) && existsSync(join(root, SRC, inc))
        ? SRC + inc
        : rel(normalize(join(dirname(file), inc)));
      const to = nativeLayer(target);
      if (to === undefined || !nativeLevel.has(to)) return;
      if (nativeLevel.get(to) > nativeLevel.get(layer))
        problems.push(`${path}:${i + 1}: ${layer} includes "${inc}" from the higher layer ${to}`);
    });
}

// ---- lib: levels from the architecture note
const libLevel = { safetensors: 0, engine: 1, scheduler: 2, adapters: 2, tokenizer: 3, server: 4, cli: 5 };
for (const file of walk(join(root, 'lib'), ['.ts'])) {
  const path = rel(file);
  const layer = path.split('/')[1];
  if (!(layer in libLevel)) {
    problems.push(`${path}: lib/${layer} has no place in the layer order (scripts/check-layers.mjs)`);
    continue;
  }
  const text = readFileSync(file, 'utf8');
  text.split('\n').forEach((line, i) => {
    for (const m of line.matchAll(/(?:from|import)\s*\(?\s*'(\.[^']+)'/g)) {
      const target = rel(normalize(join(dirname(file), m[1])));
      if (!target.startsWith('lib/')) continue;
      const to = target.split('/')[1];
      if (to === layer || !(to in libLevel)) continue;
      if (libLevel[to] >= libLevel[layer])
        problems.push(`${path}:${i + 1}: ${layer} imports '${m[1]}' from lib/${to}, ${libLevel[to] > libLevel[layer] ? 'a higher layer' : 'a layer beside it'}`);
    }
  });
}

if (problems.length) {
  console.error(`layer check: ${problems.length} upward dependenc${problems.length === 1 ? 'y' : 'ies'}:`);
  for (const p of problems) console.error(`  ${p}`);
  process.exit(1);
}
console.log(`layer check: native (${[...nativeLevel.keys()].join(' <- ')}) and lib layers run one way`);

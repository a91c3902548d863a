// The C++ benchmark executables (native/bench/*.cc -> ew_bench_<name>): built on
// demand in the CMake build `npm install` made (build/), or, where that build is not
// CMake's (the node-gyp fallback), in a Release build of its own (build-bench/, as
// bench:memory does). The build is incremental, so an up-to-date binary costs nothing.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

import { repoRoot } from '../../test/helpers/paths.js';

export function nativeBench(name: string): string {
  const root = repoRoot();
  const cmakeBuild = ['build', 'build-bench'].map((d) => join(root, d)).find((d) => existsSync(join(d, 'CMakeCache.txt')));
  const dir = cmakeBuild ?? join(root, 'build-bench');
  if (!cmakeBuild) {
    execFileSync('cmake', ['-S', root, '-B', dir, '-DEW_CUDA=OFF', '-DCMAKE_BUILD_TYPE=Release'], { stdio: 'inherit' });
  }
  execFileSync('cmake', ['--build', dir, '--target', `ew_bench_${name}`, '-j2'], { stdio: ['ignore', 'ignore', 'inherit'] });
  const exe = join(dir, `ew_bench_${name}`);
  if (!existsSync(exe)) throw new Error(`nativeBench(${name}): ${exe} was not built`);
  return exe;
}

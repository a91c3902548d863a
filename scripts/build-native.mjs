// Builds the native addon: cmake-js when CMake is installed (the primary build,
// with the optional CUDA backend), node-gyp with binding.gyp otherwise (CPU only).
import { spawnSync } from 'node:child_process';
import { cpus } from 'node:os';

const run = (cmd, args, env = {}) =>
  spawnSync(cmd, args, { stdio: 'inherit', env: { ...process.env, ...env }, shell: process.platform === 'win32' });

const jobs = String(Math.max(1, cpus().length));
const hasCmake = spawnSync('cmake', ['--version'], { stdio: 'ignore' }).status === 0;
// EW_CUDA=ON|OFF|AUTO passes through to CMake (default AUTO: built when nvcc is found).
const cudaFlag = `--CDEW_CUDA=${process.env.EW_CUDA ?? 'AUTO'}`;
const testsFlag = `--CDEW_TESTS=${process.env.EW_TESTS ?? 'ON'}`;

let status;
if (hasCmake) {
  status = run('npx', ['cmake-js', 'compile', cudaFlag, testsFlag], { CMAKE_BUILD_PARALLEL_LEVEL: jobs }).status;
} else {
  console.warn('expertweave: cmake not found, building the CPU engine with node-gyp (binding.gyp)');
  status = run('npx', ['node-gyp', 'rebuild', `-j`, jobs]).status;
}
process.exit(status ?? 1);

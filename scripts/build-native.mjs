// Builds the native addon: cmake-js when CMake is installed (the primary build,
// with the optional CUDA backend and the C++ tests), node-gyp with binding.gyp
// otherwise (CPU engine only). node-gyp is not our dependency: npm ships one.
import { spawnSync } from 'node:child_process';
import { existsSync, realpathSync } from 'node:fs';
import { cpus } from 'node:os';
import { dirname, join } from 'node:path';

const run = (cmd, args, env = {}) =>
  spawnSync(cmd, args, { stdio: 'inherit', env: { ...process.env, ...env }, shell: process.platform === 'win32' });

const jobs = String(Math.max(1, cpus().length));
// EW_FORCE_NODE_GYP=1 takes the node-gyp path even where CMake exists (to check the fallback).
const hasCmake = spawnSync('cmake', ['--version'], { stdio: 'ignore' }).status === 0 && process.env.EW_FORCE_NODE_GYP !== '1';
// EW_CUDA=ON|OFF|AUTO passes through to CMake (default AUTO: built when nvcc is found).
const cudaFlag = `--CDEW_CUDA=${process.env.EW_CUDA ?? 'AUTO'}`;
const testsFlag = `--CDEW_TESTS=${process.env.EW_TESTS ?? 'ON'}`;

/** npm's bundled node-gyp: npm names it in lifecycle scripts; otherwise it sits beside npm-cli.js. */
function npmNodeGyp() {
  const candidates = [process.env.npm_config_node_gyp];
  const npmCli = process.env.npm_execpath;
  if (npmCli) candidates.push(join(dirname(npmCli), '..', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'));
  const which = spawnSync(process.platform === 'win32' ? 'where' : 'which', ['npm'], { encoding: 'utf8' });
  const npmBin = which.status === 0 ? which.stdout.split('\n')[0].trim() : '';
  if (npmBin) candidates.push(join(dirname(realpathSync(npmBin)), '..', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'));
  return candidates.find((p) => p && existsSync(p));
}

let status;
if (hasCmake) {
  status = run('npx', ['cmake-js', 'compile', cudaFlag, testsFlag], { CMAKE_BUILD_PARALLEL_LEVEL: jobs }).status;
} else {
  console.warn('expertweave: cmake not found, building the CPU engine with node-gyp (binding.gyp)');
  const nodeGyp = npmNodeGyp();
  if (!nodeGyp) {
    console.error('expertweave: neither cmake nor npm\'s bundled node-gyp was found; install CMake (>= 3.18) and retry');
    process.exit(1);
  }
  // Use the headers installed beside this node (works offline) unless npm names a nodedir.
  const prefix = join(dirname(process.execPath), '..');
  const localHeaders = !process.env.npm_config_nodedir && existsSync(join(prefix, 'include', 'node', 'node_api.h'));
  const args = [nodeGyp, 'rebuild', '-j', jobs, ...(localHeaders ? [`--nodedir=${prefix}`] : [])];
  status = run(process.execPath, args).status;
}
process.exit(status ?? 1);

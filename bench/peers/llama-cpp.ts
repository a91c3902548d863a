// llama.cpp as the peer: node-llama-cpp (pinned) installed on demand into the
// git-ignored bench/.peers/ (never a dependency of the package), its bundled llama.cpp
// source built once for this CPU (GGML_NATIVE, no GPU backend), then driven through
// node-llama-cpp's API. Nothing here runs in `npm test` or CI.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

import { ROOT } from '../models.js';

export const NODE_LLAMA_CPP_VERSION = '3.21.1';
export const PEERS_DIR = join(ROOT, 'bench', '.peers');
const PACKAGE_DIR = join(PEERS_DIR, 'node_modules', 'node-llama-cpp');
const STAMP = join(PEERS_DIR, 'build-stamp.json');

/** What the build was made for: a native build is only valid on the CPU it was tuned to. */
interface BuildStamp {
  nodeLlamaCpp: string;
  cpu: string;
  /** sha256 of the CPU feature flags (a -march=native build may use any of them). */
  cpuFlags: string;
  builtAt: string;
  buildSeconds: number;
}

function cpuSignature(): Pick<BuildStamp, 'cpu' | 'cpuFlags'> {
  let flags = '';
  try {
    flags = /^flags\s*:\s*(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? '';
  } catch {
    // not Linux: the CPU model alone
  }
  return { cpu: cpus()[0]?.model ?? 'unknown', cpuFlags: createHash('sha256').update(flags).digest('hex').slice(0, 16) };
}

function readStamp(): BuildStamp | undefined {
  try {
    return JSON.parse(readFileSync(STAMP, 'utf8')) as BuildStamp;
  } catch {
    return undefined;
  }
}

function installedVersion(): string | undefined {
  try {
    return (JSON.parse(readFileSync(join(PACKAGE_DIR, 'package.json'), 'utf8')) as { version?: string }).version;
  } catch {
    return undefined;
  }
}

/** True when a build for this CPU and the pinned version is cached (tests use this to skip). */
export function llamaCppReady(): boolean {
  const s = readStamp();
  const sig = cpuSignature();
  return installedVersion() === NODE_LLAMA_CPP_VERSION && s?.nodeLlamaCpp === NODE_LLAMA_CPP_VERSION && s.cpu === sig.cpu && s.cpuFlags === sig.cpuFlags;
}

function run(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = process.env): void {
  console.log(`$ ${[cmd, ...args].join(' ')}`);
  const r = spawnSync(cmd, args, { cwd, stdio: 'inherit', env });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (exit ${r.status ?? r.signal})`);
}

/**
 * Installs node-llama-cpp and builds llama.cpp unless a build for this CPU is cached.
 * The build clones the llama.cpp git bundle that ships inside the npm package (no
 * network) and compiles it with CMake, -j2 on this machine: many minutes, once.
 */
export function ensureLlamaCpp(): BuildStamp {
  if (llamaCppReady()) return readStamp()!;
  mkdirSync(PEERS_DIR, { recursive: true });
  if (installedVersion() !== NODE_LLAMA_CPP_VERSION) {
    // --omit=optional: no prebuilt binaries (they are not tuned to this CPU, and some are GPU builds);
    // --ignore-scripts: its postinstall would try those binaries or build with default options.
    run('npm', ['install', '--no-save', '--no-audit', '--no-fund', '--omit=optional', '--ignore-scripts', '--prefix', PEERS_DIR, `node-llama-cpp@${NODE_LLAMA_CPP_VERSION}`], ROOT);
  }
  const cli = join(PACKAGE_DIR, 'dist', 'cli', 'cli.js');
  const cloned = existsSync(join(PACKAGE_DIR, 'llama', 'llama.cpp', '.git'));
  const t0 = Date.now();
  // `source download` clones llama/gitRelease.bundle and builds; `source build` rebuilds the clone.
  // --gpu false: CPU only (no CUDA even though nvcc is installed). GGML_NATIVE defaults to ON
  // for a build on the host it runs on.
  const args = cloned ? ['source', 'build', '--gpu', 'false', '--noUsageExample'] : ['source', 'download', '--gpu', 'false', '--noUsageExample'];
  run(process.execPath, [cli, ...args], PEERS_DIR, { ...process.env, NODE_LLAMA_CPP_GPU: 'false' });
  const stamp: BuildStamp = {
    nodeLlamaCpp: NODE_LLAMA_CPP_VERSION,
    ...cpuSignature(),
    builtAt: new Date().toISOString(),
    buildSeconds: Math.round((Date.now() - t0) / 1000),
  };
  writeFileSync(STAMP, JSON.stringify(stamp, null, 2) + '\n');
  return stamp;
}

// The slice of node-llama-cpp's API the benchmark uses (its types are not installed with the project).
export interface NlcSequence {
  evaluate(tokens: number[], options: { temperature: number; yieldEogToken: boolean }): AsyncGenerator<number, void, void>;
  clearHistory(): Promise<void>;
}
export interface NlcContext {
  getSequence(): NlcSequence;
  /** Logs llama_perf_context_print (info level) and resets the counters; needs performanceTracking. */
  printTimings(): Promise<void>;
  readonly contextSize: number;
  readonly batchSize: number;
  readonly flashAttention: boolean;
  dispose(): Promise<void>;
}
export interface NlcModel {
  createContext(options: {
    contextSize: number;
    batchSize: number;
    sequences: number;
    threads: { ideal: number; min: number };
    performanceTracking?: boolean;
  }): Promise<NlcContext>;
  readonly tokens: { readonly bos: number | null; readonly eos: number | null };
  dispose(): Promise<void>;
}
export interface NlcLlama {
  loadModel(options: { modelPath: string; gpuLayers: number }): Promise<NlcModel>;
  readonly gpu: string | false;
  readonly llamaCppRelease: { repo: string; release: string };
  readonly systemInfo: string;
  dispose(): Promise<void>;
}
interface NlcModule {
  getLlama(options: {
    gpu: false;
    build: 'never';
    usePrebuiltBinaries: boolean;
    skipDownload: boolean;
    progressLogs: boolean;
    logLevel: string;
    logger?: (level: string, message: string) => void;
    maxThreads: number;
  }): Promise<NlcLlama>;
}

/**
 * The cached CPU build, loaded into this process (throws if `ensureLlamaCpp` has not run).
 * `logger` sees llama.cpp's log from info level up; without one, warnings and errors print.
 */
export async function loadLlamaCpp(threads: number, logger?: (level: string, message: string) => void): Promise<NlcLlama> {
  if (!llamaCppReady()) throw new Error('llama.cpp is not built for this CPU: run `npm run bench:peers` once');
  const mod = (await import(pathToFileURL(join(PACKAGE_DIR, 'dist', 'index.js')).href)) as NlcModule;
  return mod.getLlama({
    gpu: false,
    build: 'never',
    usePrebuiltBinaries: false,
    skipDownload: true,
    progressLogs: false,
    logLevel: logger ? 'info' : 'warn',
    ...(logger ? { logger } : {}),
    maxThreads: threads,
  });
}

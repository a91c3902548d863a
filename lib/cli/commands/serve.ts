// `expertweave serve`: runs the daemon until SIGINT/SIGTERM/SIGHUP, then shuts down
// cleanly (a second signal while it does is logged, not fatal; a shutdown that hangs
// ends with exit 1 after a grace period). Logs are JSON lines on stderr; the line
// `listening on http://HOST:PORT` goes to stdout once it serves.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import type { CpuPath, Device, KvCacheDtype } from '../../engine/binding.js';
import { startDaemon } from '../../server/daemon.js';
import { UsageError, choiceOption, intOption, type Command } from '../command.js';

const HELP = `Usage: expertweave serve [--model DIR] [--adapter NAME=DIR ...] [options]

Serves the model over WebSocket (ws://HOST:PORT/v1/stream) and HTTP (OpenAI-style
/v1/completions, /v1/models, /v1/adapters, /health, /metrics). Prints
"listening on http://HOST:PORT" once ready; stops cleanly on SIGINT/SIGTERM/SIGHUP.
Without --model it serves the embedded default model (models/default) with the
sample adapters under adapters/.

Options:
  --model DIR                   Hugging Face style model directory (config.json, *.safetensors)
  --served-model-name NAME      the base model's name in the API (default: the directory's name)
  --adapter NAME=DIR            register an ESFT adapter at startup (repeatable)
  --adapters-dir DIR            register every subdirectory of DIR holding an expert_cfg.json,
                                named after the subdirectory (a volume of adapters)
  --host H                      address to bind (default 127.0.0.1)
  --port P                      port (default 8080; 0 picks a free one)
  --device D                    auto | cpu | cuda (default auto)
  --threads N                   CPU worker threads (default 0: all cores)
  --max-resident-adapters N     adapters loaded in the expert pool at once (default 0: no limit)
  --adapter-pool-bytes B        bytes of adapter experts resident at once (default 0: no limit)
  --admin-token T               require "Authorization: Bearer T" on /v1/adapters
  --allow-open-admin            on a non-loopback --host without --admin-token, open the admin
                                routes anyway (otherwise they answer 403)
  --state-dir DIR               keep adapters registered at run time in DIR/adapters.json and
                                register them again at start
  --max-adapters N              adapter rows in the engine (default 16)
  --adapter-slots N             expert slots per MoE layer reserved for adapters (default 64)
  --kv-cache-tokens N           KV-cache capacity in tokens (default: the engine's)
  --kv-cache-dtype T            f32 | bf16: the latent KV cache's element type (default bf16 on
                                the CPU, half the bytes per token; CUDA's cache is f32)
  --cpu-path P                  portable | avx2 | avx512 | avx512-bf16 | amx: the CPU kernels
                                (default: the best fp32 path of this CPU; avx512-bf16 and amx
                                round matmul activations to bf16, see the README)
  --token-budget N              most tokens per engine step (default 512)
  --max-waiting N               most queued requests before "overloaded" (default 1024)
  --max-running N               most sequences running at once (vLLM's --max-num-seqs; default 256,
                                at most half the token budget)
  --stream-interval N           tokens per write to a stream (as vLLM's and SGLang's): the first at
                                once, then every Nth; fewer writes and wake-ups per token on both
                                sides, less smooth streams (default 1: every token)
  -h, --help                    this help
`;

const DEVICES: readonly Device[] = ['auto', 'cpu', 'cuda'];
const KV_DTYPES: readonly KvCacheDtype[] = ['f32', 'bf16'];
const CPU_PATHS: readonly CpuPath[] = ['portable', 'avx2', 'avx512', 'avx512-bf16', 'amx'];
/** A shutdown still running after this long is cut short (exit 1). */
const SHUTDOWN_GRACE_S = 30;

function log(event: string, detail: Record<string, unknown> = {}): void {
  process.stderr.write(JSON.stringify({ time: new Date().toISOString(), event, ...detail }) + '\n');
}

function repoRoot(): string {
  return resolve(fileURLToPath(new URL('../../../../', import.meta.url)));
}

/** Adapter directories under `root`: each subdirectory with an expert_cfg.json, named after it. */
function adaptersIn(root: string): { name: string; dir: string }[] {
  return readdirSync(root)
    .sort()
    .filter((n) => existsSync(join(root, n, 'expert_cfg.json')))
    .map((name) => ({ name, dir: join(root, name) }));
}

/** The embedded model and its sample adapters. */
function defaultModel(): { model: string; adapters: { name: string; dir: string }[] } {
  const model = join(repoRoot(), 'models', 'default');
  if (!existsSync(join(model, 'config.json'))) {
    throw new Error(`no --model given and the embedded default model is missing (${model}/config.json); pass --model DIR`);
  }
  const root = join(repoRoot(), 'adapters');
  return { model, adapters: existsSync(root) ? adaptersIn(root) : [] };
}

async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      model: { type: 'string' },
      'served-model-name': { type: 'string' },
      adapter: { type: 'string', multiple: true },
      'adapters-dir': { type: 'string' },
      host: { type: 'string' },
      port: { type: 'string' },
      device: { type: 'string' },
      threads: { type: 'string' },
      'max-resident-adapters': { type: 'string' },
      'adapter-pool-bytes': { type: 'string' },
      'admin-token': { type: 'string' },
      'allow-open-admin': { type: 'boolean' },
      'state-dir': { type: 'string' },
      'max-adapters': { type: 'string' },
      'adapter-slots': { type: 'string' },
      'kv-cache-tokens': { type: 'string' },
      'kv-cache-dtype': { type: 'string' },
      'cpu-path': { type: 'string' },
      'token-budget': { type: 'string' },
      'max-waiting': { type: 'string' },
      'max-running': { type: 'string' },
      'stream-interval': { type: 'string' },
    },
  });
  if (positionals.length > 0) throw new UsageError(`unexpected argument '${positionals[0]}'`);
  const adapters = (values.adapter ?? []).map((spec) => {
    const at = spec.indexOf('=');
    if (at <= 0 || at === spec.length - 1) throw new UsageError(`--adapter takes NAME=DIR, got '${spec}'`);
    return { name: spec.slice(0, at), dir: spec.slice(at + 1) };
  });
  const port = intOption(values.port, 'port', 8080, 0, 65535);
  const device = choiceOption(values.device, 'device', DEVICES, 'auto');
  const threads = intOption(values.threads, 'threads', 0, 0, 1024);
  const maxResident = intOption(values['max-resident-adapters'], 'max-resident-adapters', 0, 0);
  const poolBytes = intOption(values['adapter-pool-bytes'], 'adapter-pool-bytes', 0, 0);
  const kvCacheTokens = values['kv-cache-tokens'] === undefined ? undefined : intOption(values['kv-cache-tokens'], 'kv-cache-tokens', 0, 1);
  const kvCacheDtype = values['kv-cache-dtype'] === undefined ? undefined : choiceOption(values['kv-cache-dtype'], 'kv-cache-dtype', KV_DTYPES, 'bf16');
  const cpuPath = values['cpu-path'] === undefined ? undefined : choiceOption(values['cpu-path'], 'cpu-path', CPU_PATHS, 'avx512');
  const maxAdapters = intOption(values['max-adapters'], 'max-adapters', 16, 0, 4096);
  const maxAdapterSlots = intOption(values['adapter-slots'], 'adapter-slots', 64, 0, 1 << 20);
  const tokenBudget = intOption(values['token-budget'], 'token-budget', 512, 1);
  const maxWaiting = intOption(values['max-waiting'], 'max-waiting', 1024, 1);
  const maxRunning = intOption(values['max-running'], 'max-running', 256, 1);
  const streamInterval = intOption(values['stream-interval'], 'stream-interval', 1, 1, 4096);
  const adaptersDir = values['adapters-dir'];
  if (adaptersDir !== undefined) {
    if (!statSync(adaptersDir, { throwIfNoEntry: false })?.isDirectory()) {
      throw new Error(`--adapters-dir '${adaptersDir}' does not exist or is not a directory`);
    }
    adapters.push(...adaptersIn(adaptersDir));
  }

  let modelDir = values.model;
  if (modelDir === undefined) {
    const d = defaultModel();
    modelDir = d.model;
    adapters.unshift(...d.adapters);
  } else if (!statSync(modelDir, { throwIfNoEntry: false })?.isDirectory()) {
    throw new Error(`model directory '${modelDir}' does not exist or is not a directory`);
  }

  const daemon = await startDaemon({
    modelDir,
    adapters,
    engine: {
      device,
      threads,
      maxAdapters,
      maxAdapterSlots,
      ...(kvCacheTokens ? { kvCacheTokens } : {}),
      ...(kvCacheDtype ? { kvCacheDtype } : {}),
      ...(cpuPath ? { cpuPath } : {}),
    },
    scheduler: { tokenBudget, maxWaiting, maxRunning },
    registry: { maxResident, poolBytes },
    server: {
      host: values.host ?? '127.0.0.1',
      port,
      ...(values['admin-token'] ? { adminToken: values['admin-token'] } : {}),
      allowOpenAdmin: values['allow-open-admin'] === true,
      onEvent: log,
    },
    ...(values['state-dir'] ? { stateDir: values['state-dir'] } : {}),
    ...(values['served-model-name'] ? { servedModelName: values['served-model-name'] } : {}),
    streamInterval,
    onProgress: log,
  });
  let stopping = false;
  const stopped = new Promise<string>((resolve) => {
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
      process.on(sig, () => {
        if (stopping) return log('signal_ignored', { signal: sig, reason: 'already shutting down' });
        stopping = true;
        resolve(sig);
      });
    }
  });
  const { host, port: bound } = daemon.server;
  log('listening', { host, port: bound, device: daemon.engine.info.device });
  process.stdout.write(`listening on http://${host}:${bound}\n`);
  const signal = await stopped;
  log('shutting_down', { signal });
  const grace = setTimeout(() => {
    log('shutdown_timeout', { seconds: SHUTDOWN_GRACE_S });
    process.exit(1);
  }, SHUTDOWN_GRACE_S * 1000);
  grace.unref();
  await daemon.close();
  clearTimeout(grace);
  log('stopped');
  return 0;
}

export const serveCommand: Command = {
  name: 'serve',
  summary: 'serve the model and its adapters over WebSocket and HTTP',
  help: HELP,
  run,
};

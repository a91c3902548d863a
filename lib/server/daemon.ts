// Assembles the daemon: engine, tokenizer, adapter registry, scheduler, HTTP/WS server.
import { basename, resolve } from 'node:path';

import { AdapterRegistry, type RegistryOptions } from '../adapters/adapter-registry.js';
import { AdapterStateFile } from '../adapters/adapter-state.js';
import { Engine, type EngineOptions } from '../engine/engine.js';
import { loadModelDefaults } from '../engine/model-defaults.js';
import { ChatTemplate } from '../tokenizer/chat-template.js';
import { BatchScheduler, type SchedulerOptions } from '../scheduler/batch-scheduler.js';
import { IncrementalDetokenizer } from '../tokenizer/detokenizer.js';
import { PromptEncoder } from '../tokenizer/prompt-encoder.js';
import { TextTokenizer } from '../tokenizer/tokenizer.js';
import { Metrics } from './metrics.js';
import { startServer, type RunningServer, type ServerOptions } from './server.js';
import { Service } from './service.js';

export interface DaemonOptions {
  modelDir: string;
  adapters?: { name: string; dir: string }[];
  engine?: EngineOptions;
  scheduler?: Omit<SchedulerOptions, 'textStream'>;
  registry?: RegistryOptions;
  server?: ServerOptions;
  /** Keeps adapters registered at run time in <stateDir>/adapters.json and restores them at start. */
  stateDir?: string;
  /** Longest text prompt in UTF-8 bytes (default: 16 per token of the context, at least 64 KiB, at most 16 MiB). */
  maxPromptBytes?: number;
  /** The base model's name in the API (default: the model directory's name). */
  servedModelName?: string;
  /** Tokens per delivery to a stream (ServiceOptions.streamInterval; default 1). */
  streamInterval?: number;
  /** Told each startup stage (loading, registering), for a progress line. */
  onProgress?: (event: string, detail: Record<string, unknown>) => void;
}

export interface Daemon {
  engine: Engine;
  service: Service;
  server: RunningServer;
  /** Stops the server, cancels in-flight work, frees the engine. */
  close(): Promise<void>;
}

/** Few tokenizers make a token of more than 16 bytes on average: a longer prompt cannot fit the context. */
const BYTES_PER_TOKEN_BOUND = 16;

export async function startDaemon(opts: DaemonOptions): Promise<Daemon> {
  const progress = opts.onProgress ?? (() => {});
  const modelDir = resolve(opts.modelDir);
  progress('model_loading', { model: modelDir });
  const tokenizer = await TextTokenizer.load(modelDir);
  const defaults = loadModelDefaults(modelDir);
  if (defaults.ignored.length > 0) progress('generation_config_ignored', { keys: defaults.ignored });
  const chat = ChatTemplate.load(modelDir);
  const modelName = opts.servedModelName ?? basename(modelDir);
  const state = opts.stateDir === undefined ? undefined : await AdapterStateFile.open(resolve(opts.stateDir));
  const engine = await Engine.load(modelDir, opts.engine ?? {});
  progress('model_loaded', { model: modelDir, device: engine.info.device, vocab: engine.info.vocabSize });
  const encoder = tokenizer ? new PromptEncoder(tokenizer, modelDir) : null;
  try {
    const scheduler = new BatchScheduler(engine, {
      ...opts.scheduler,
      eosTokenIds: defaults.eosTokenIds.length > 0 ? defaults.eosTokenIds : [engine.info.eosTokenId],
      ...(tokenizer ? { textStream: (ids: readonly number[]) => new IncrementalDetokenizer(tokenizer, ids) } : {}),
    });
    const registry = new AdapterRegistry(engine, { ...opts.registry, reservedNames: [modelName] });
    for (const a of opts.adapters ?? []) {
      const { entry } = await registry.register(a.name, a.dir);
      progress('adapter_registered', { adapter: a.name, dir: entry.dir, experts: entry.experts, bytes: entry.bytes, residency: entry.state, source: 'command line' });
    }
    for (const a of state?.list() ?? []) {
      const given = registry.get(a.name);
      if (given) {
        if (given.dir !== resolve(a.dir)) progress('adapter_state_ignored', { adapter: a.name, dir: a.dir, reason: `the command line registers it from ${given.dir}` });
        continue;
      }
      try {
        const { entry } = await registry.register(a.name, a.dir, a.pinned);
        progress('adapter_registered', { adapter: a.name, dir: entry.dir, experts: entry.experts, bytes: entry.bytes, residency: entry.state, source: 'state' });
      } catch (err) {
        // Kept in the state (a volume may come back); DELETE /v1/adapters/NAME drops it.
        progress('adapter_restore_failed', { adapter: a.name, dir: a.dir, error: (err as Error).message });
      }
    }
    // max_lora of the model-server protocol: how many adapters can be resident at once.
    const rows = opts.engine?.maxAdapters ?? 0;
    const maxResident = opts.registry?.maxResident ?? 0;
    const metrics = new Metrics(registry, { maxLora: maxResident > 0 ? Math.min(maxResident, rows) : rows });
    scheduler.onStep((ms, seqs) => metrics.observeStep(ms / 1000, seqs));
    // Bounds from the model's context: a body or prompt past them could never run, so
    // it is refused while it streams in, before any parsing or tokenization.
    const maxPromptBytes = opts.maxPromptBytes ?? Math.min(16 << 20, Math.max(64 << 10, engine.info.maxPositionEmbeddings * BYTES_PER_TOKEN_BOUND));
    const maxBodyBytes = opts.server?.maxBodyBytes ?? Math.min(64 << 20, 4 * maxPromptBytes + (64 << 10));
    const service = new Service(
      { info: engine.info, modelName, scheduler, adapters: registry, encoder, tokenizer, chat, defaults, metrics },
      { maxPromptBytes, ...(state ? { state } : {}), ...(opts.streamInterval ? { streamInterval: opts.streamInterval } : {}) },
    );
    const server = await startServer(service, engine, { ...opts.server, maxBodyBytes });
    let closing: Promise<void> | undefined;
    return {
      engine,
      service,
      server,
      close: () =>
        (closing ??= (async () => {
          await server.close();
          await encoder?.close();
          engine.close();
        })()),
    };
  } catch (err) {
    await encoder?.close();
    engine.close();
    throw err;
  }
}

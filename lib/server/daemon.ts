// Assembles the daemon: engine, tokenizer, adapter registry, scheduler, HTTP/WS server.
import { basename, resolve } from 'node:path';

import { AdapterRegistry, type RegistryOptions } from '../adapters/adapter-registry.js';
import { Engine, type EngineOptions } from '../engine/engine.js';
import { BatchScheduler, type SchedulerOptions } from '../scheduler/batch-scheduler.js';
import { IncrementalDetokenizer } from '../tokenizer/detokenizer.js';
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

export async function startDaemon(opts: DaemonOptions): Promise<Daemon> {
  const progress = opts.onProgress ?? (() => {});
  const modelDir = resolve(opts.modelDir);
  progress('model_loading', { model: modelDir });
  const tokenizer = await TextTokenizer.load(modelDir);
  const engine = await Engine.load(modelDir, opts.engine ?? {});
  progress('model_loaded', { model: modelDir, device: engine.info.device, vocab: engine.info.vocabSize });
  try {
    const scheduler = new BatchScheduler(engine, {
      ...opts.scheduler,
      ...(tokenizer ? { textStream: (ids: readonly number[]) => new IncrementalDetokenizer(tokenizer, ids) } : {}),
    });
    const registry = new AdapterRegistry(engine, opts.registry);
    for (const a of opts.adapters ?? []) {
      const { entry } = await registry.register(a.name, a.dir);
      progress('adapter_registered', { adapter: a.name, dir: entry.dir, experts: entry.experts, bytes: entry.bytes, residency: entry.state });
    }
    // max_lora of the model-server protocol: how many adapters can be resident at once.
    const rows = opts.engine?.maxAdapters ?? 0;
    const maxResident = opts.registry?.maxResident ?? 0;
    const metrics = new Metrics(registry, { maxLora: maxResident > 0 ? Math.min(maxResident, rows) : rows });
    scheduler.onStep((ms, seqs) => metrics.observeStep(ms / 1000, seqs));
    const service = new Service(engine.info, basename(modelDir), scheduler, registry, tokenizer, metrics);
    const server = await startServer(service, engine, opts.server);
    let closing: Promise<void> | undefined;
    return {
      engine,
      service,
      server,
      close: () =>
        (closing ??= (async () => {
          await server.close();
          engine.close();
        })()),
    };
  } catch (err) {
    engine.close();
    throw err;
  }
}

// One engine in its own process for bench/peers.ts: loads the model, then answers
// run / bandwidth requests over the IPC channel. Started as
//   node dist/bench/peers/worker.js '<WorkerArgs JSON>'
import { loadBinding, type CpuPath } from '../../lib/engine/binding.js';
import { Engine } from '../../lib/engine/engine.js';
import { loadLlamaCpp } from './llama-cpp.js';
import type { RunResult, WorkerArgs, WorkerReply, WorkerRequest } from './protocol.js';

interface Runner {
  info: Record<string, unknown>;
  run(prompt: number[], generate: number, margins: boolean): Promise<RunResult>;
  bandwidth?(): Promise<number>;
  close(): Promise<void>;
}

async function expertweave(args: WorkerArgs): Promise<Runner> {
  const engine = await Engine.load(args.model, {
    device: 'cpu',
    threads: args.threads,
    kvCacheTokens: args.contextTokens,
    ...(args.kvCacheDtype ? { kvCacheDtype: args.kvCacheDtype } : {}),
    ...(args.cpuPath ? { cpuPath: args.cpuPath as CpuPath } : {}),
  });
  let nextSeq = 1;
  return {
    info: { ...engine.info, threads: args.threads },
    async run(prompt, generate, margins) {
      const seqId = nextSeq++;
      const V = engine.info.vocabSize;
      const gaps: number[] = [];
      /** Best minus second-best logit of the chunk's last token (the logits come only when asked). */
      const gap = (logits: Float32Array | undefined) => {
        if (!logits) return;
        let a = -Infinity;
        let b = -Infinity;
        for (let i = logits.length - V; i < logits.length; i++) {
          const x = logits[i];
          if (x > a) [a, b] = [x, a];
          else if (x > b) b = x;
        }
        gaps.push(a - b);
      };
      const t0 = performance.now();
      let out = await engine.step([{ seqId, tokens: prompt }], margins);
      const t1 = performance.now();
      gap(out.logits);
      const tokens = [out.tokens[0]];
      for (let i = 0; i < generate; i++) {
        out = await engine.step([{ seqId, tokens: [tokens[tokens.length - 1]] }], margins);
        gap(out.logits);
        tokens.push(out.tokens[0]);
      }
      const t2 = performance.now();
      engine.freeSequence(seqId);
      return { prefillMs: t1 - t0, decodeMs: t2 - t1, tokens, ...(margins ? { margins: gaps } : {}) };
    },
    bandwidth: () => loadBinding().measureMemoryBandwidth(),
    async close() {
      engine.close();
    },
  };
}

/** What the placeholder vocabulary of tools/gguf (no text, no newline token) and short contexts make llama.cpp say. */
const EXPECTED_WARNINGS = /missing newline token|special_eos_id is not in special_eog_ids|tokenize text and then detokenize|n_ctx_seq \(\d+\) > n_ctx_train/;

/** llama_perf_context_print's lines: "prompt eval time = X ms / N tokens", "eval time = Y ms / M runs". */
function parsePerf(log: string): { prefillMs: number; decodeMs: number } | undefined {
  const pp = /prompt eval time =\s*([\d.]+) ms/.exec(log);
  const tg = /(?<!prompt )eval time =\s*([\d.]+) ms/.exec(log);
  return pp && tg ? { prefillMs: Number(pp[1]), decodeMs: Number(tg[1]) } : undefined;
}

async function llamaCpp(args: WorkerArgs): Promise<Runner> {
  let perfLog = '';
  const llama = await loadLlamaCpp(args.threads, (level, message) => {
    if (message.includes('llama_perf_context_print')) perfLog += message;
    else if ((level === 'warn' || level === 'error' || level === 'fatal') && !EXPECTED_WARNINGS.test(message)) {
      process.stderr.write(`[llama.cpp] ${message.trimEnd()}\n`);
    }
  });
  const model = await llama.loadModel({ modelPath: args.model, gpuLayers: 0 });
  const context = await model.createContext({
    contextSize: args.contextTokens,
    batchSize: args.contextTokens, // a whole prompt in one llama_decode
    sequences: 1,
    threads: { ideal: args.threads, min: args.threads },
    performanceTracking: true, // llama_perf timers: a few clock reads per llama_decode
  });
  const sequence = context.getSequence();
  return {
    info: {
      llamaCpp: llama.llamaCppRelease,
      gpu: llama.gpu,
      systemInfo: llama.systemInfo,
      flashAttention: context.flashAttention,
      contextSize: context.contextSize,
      batchSize: context.batchSize,
      threads: args.threads,
    },
    async run(prompt, generate) {
      await sequence.clearHistory(); // a fresh sequence: no cached prefix is reused
      await context.printTimings(); // resets llama_perf
      perfLog = '';
      // Greedy (temperature 0); EOS is a token like any other, as in ExpertWeave's steps.
      const it = sequence.evaluate(prompt, { temperature: 0, yieldEogToken: true });
      const t0 = performance.now();
      const first = await it.next();
      const t1 = performance.now();
      if (first.done) throw new Error('llama.cpp produced no token');
      const tokens = [first.value];
      for (let i = 0; i < generate; i++) {
        const r = await it.next();
        if (r.done) throw new Error(`llama.cpp stopped after ${tokens.length} tokens`);
        tokens.push(r.value);
      }
      const t2 = performance.now();
      await it.return();
      await context.printTimings();
      await new Promise((r) => setImmediate(r)); // the log arrives through the event loop
      return { prefillMs: t1 - t0, decodeMs: t2 - t1, tokens, internal: parsePerf(perfLog) };
    },
    async close() {
      await context.dispose();
      await model.dispose();
      await llama.dispose();
    },
  };
}

const send = (m: WorkerReply) => process.send!(m);

async function main(): Promise<void> {
  if (!process.send) throw new Error('bench/peers/worker.js runs under bench/peers.js (it needs the IPC channel)');
  const args = JSON.parse(process.argv[2]) as WorkerArgs;
  process.on('disconnect', () => process.exit()); // the orchestrator is gone: never linger
  const runner = args.engine === 'expertweave' ? await expertweave(args) : await llamaCpp(args);
  // One request at a time: the orchestrator waits for each reply.
  process.on('message', (req: WorkerRequest) => {
    void (async () => {
      try {
        if (req.op === 'run') send({ kind: 'run', result: await runner.run(req.prompt, req.generate, req.margins ?? false) });
        else if (req.op === 'bandwidth') {
          if (!runner.bandwidth) throw new Error(`${args.engine} does not measure bandwidth`);
          send({ kind: 'bandwidth', gbs: await runner.bandwidth() });
        } else {
          await runner.close();
          process.disconnect();
        }
      } catch (e) {
        send({ kind: 'error', message: (e as Error).stack ?? String(e) });
      }
    })();
  });
  send({ kind: 'ready', info: runner.info });
}

main().catch((e: unknown) => {
  process.send?.({ kind: 'error', message: (e as Error).stack ?? String(e) } satisfies WorkerReply);
  process.exitCode = 1;
});

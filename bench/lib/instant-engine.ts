// The scheduler's own CPU per token, without the engine: a BatchScheduler (with the
// daemon's detokenizer, or without) over an engine port whose steps pack the request
// as the real Engine does and answer at once with fixed tokens. Single-threaded and
// free of native work: the scheduler's own cost, without the engine's share of the cores
// (beside a running engine the same code takes several times the CPU: the main thread
// wakes once per step onto cores the engine threads hold).
import { packStepRequest, type ChunkSpec } from '../../lib/engine/engine.js';
import type { StepOutput } from '../../lib/engine/binding.js';
import type { EnginePort } from '../../lib/scheduler/engine-port.js';
import { BatchScheduler } from '../../lib/scheduler/batch-scheduler.js';
import { IncrementalDetokenizer } from '../../lib/tokenizer/detokenizer.js';
import type { TextTokenizer } from '../../lib/tokenizer/tokenizer.js';

function instantEngine(vocabSize: number): EnginePort {
  const noRows = new Set<number>();
  return {
    info: { vocabSize, eosTokenId: 0, maxPositionEmbeddings: 1 << 16 } as EnginePort['info'],
    step(chunks: readonly ChunkSpec[]): Promise<StepOutput> {
      const req = packStepRequest(chunks);
      const n = chunks.length;
      const tokens = new Int32Array(n);
      // Ordinary text tokens (not EOS: every stream runs to its length), varying per sequence and step.
      for (let i = 0; i < n; i++) tokens[i] = 40 + ((req.seqIds[i] * 7 + req.tokens.length + i) % 60);
      return Promise.resolve({ tokens, logprobs: new Float32Array(n) } as StepOutput);
    },
    freeSequence() {},
    kvStats: () => ({ blockSize: 16, freeBlocks: 1 << 20, totalBlocks: 1 << 20, sequences: 0 }),
    drainingRows: () => noRows,
  };
}

/** Main-thread CPU (us) per generated token for `streams` concurrent greedy streams of `tokens` tokens each, one client per stream. */
export async function schedulerCpuPerToken(prompts: readonly number[][], tokens: number, tokenizer: TextTokenizer | null): Promise<number> {
  const vocab = Math.max(100, ...prompts.flat()) + 1;
  const sched = new BatchScheduler(instantEngine(vocab), tokenizer ? { textStream: (ids) => new IncrementalDetokenizer(tokenizer, ids) } : {});
  const run = () =>
    Promise.all(
      prompts.map(
        (promptIds, i) =>
          new Promise<void>((resolve, reject) =>
            sched.submit(
              { promptIds, adapterRow: 0, adapterName: '', client: `s${i}`, maxTokens: tokens, temperature: 0, topP: 1, topK: 0, seed: 0, stop: [], logprobs: false },
              { onToken: () => {}, onDone: () => resolve(), onError: reject },
            ),
          ),
      ),
    );
  // Warm-up (the JIT's tiers), then enough rounds for about 300k tokens.
  for (let r = 0; r < 3; r++) await run();
  const rounds = Math.max(3, Math.ceil(300_000 / (prompts.length * tokens)));
  const u0 = process.cpuUsage();
  for (let r = 0; r < rounds; r++) await run();
  const u = process.cpuUsage(u0);
  return (u.user + u.system) / (rounds * prompts.length * tokens);
}

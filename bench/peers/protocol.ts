// Messages between bench/peers.ts and its engine workers (one process per engine,
// over the Node IPC channel), so the engines never share a process or a thread pool.

export type EngineName = 'expertweave' | 'llama.cpp';

export interface WorkerArgs {
  engine: EngineName;
  /** A model directory (ExpertWeave) or a .gguf file (llama.cpp). */
  model: string;
  threads: number;
  /** KV-cache / context capacity in tokens. */
  contextTokens: number;
  /** ExpertWeave only: its KV-cache element type and CPU kernel path (defaults: the engine's). */
  kvCacheDtype?: 'f32' | 'bf16';
  cpuPath?: string;
}

export type WorkerRequest =
  /** Prefill `prompt` on a fresh sequence (sampling one token), then decode `generate` more, greedily. */
  | { op: 'run'; prompt: number[]; generate: number; margins?: boolean }
  /** ExpertWeave only: the addon's measured memory read bandwidth. */
  | { op: 'bandwidth' }
  | { op: 'exit' };

export interface RunResult {
  /** The prefill step, including sampling its token. */
  prefillMs: number;
  /** The `generate` decode steps. */
  decodeMs: number;
  /** 1 + generate greedy tokens. */
  tokens: number[];
  /** ExpertWeave, when asked: per token, the logit gap between the best and second-best token. */
  margins?: number[];
  /** llama.cpp: its own timing of the same work (llama_perf), without node-llama-cpp's overhead. */
  internal?: { prefillMs: number; decodeMs: number };
}

export type WorkerReply =
  | { kind: 'ready'; info: Record<string, unknown> }
  | { kind: 'run'; result: RunResult }
  | { kind: 'bandwidth'; gbs: number }
  | { kind: 'error'; message: string };

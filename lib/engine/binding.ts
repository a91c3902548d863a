// The whole N-API boundary in one place: every native call and its types.
// Implemented by native/src/addon/*. Anything not declared here does not cross.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export type Device = 'auto' | 'cpu' | 'cuda';

export interface NativeEngineOptions {
  device?: Device;
  /** Worker threads for the CPU backend; 0 or absent: all hardware threads. */
  threads?: number;
  /** Tokens per KV-cache block. */
  kvBlockSize?: number;
  /** KV-cache capacity in tokens, over all sequences. */
  kvCacheTokens?: number;
  /** Expert slots per MoE layer reserved for adapters. */
  maxAdapterSlots?: number;
  /** Adapter rows in the reroute tables (row 0 is the base model). */
  maxAdapters?: number;
  /** Element type of the latent KV cache; default 'bf16' on the CPU (half the bytes), 'f32' on CUDA (its only one). */
  kvCacheDtype?: KvCacheDtype;
  /** The CPU kernels' dispatch path (README, "CPU kernels"); default: EW_CPU_PATH, else the best fp32 path of this CPU.
   * 'avx512-bf16' and 'amx' round matmul activations to bf16. */
  cpuPath?: CpuPath;
}

export type KvCacheDtype = 'f32' | 'bf16';
export type CpuPath = 'portable' | 'avx2' | 'avx512' | 'avx512-bf16' | 'amx';

/** Whether a CPU path rounds matmul activations to bf16 (native: kernels/cpu/cpu_kernels.h, rounds_activations). */
export const roundsActivations = (path: CpuPath | ''): boolean => path === 'avx512-bf16' || path === 'amx';

/** The best of `paths` (buildInfo().cpuPaths, ordered portable first) with fp32 activations. */
export const bestFp32Path = (paths: readonly CpuPath[]): CpuPath => paths.filter((p) => !roundsActivations(p)).at(-1) ?? 'portable';

export interface ModelInfo {
  /** config.json's model_type: deepseek_v2, deepseek_v3, kimi_k2, qwen3_moe or mixtral. */
  modelType: string;
  /** What the KV cache holds: MLA's latent (DeepSeek) or grouped-query K/V heads (Qwen3-MoE, Mixtral). */
  attention: 'mla' | 'gqa';
  device: string;
  vocabSize: number;
  hiddenSize: number;
  numLayers: number;
  numMoeLayers: number;
  nRoutedExperts: number;
  numExpertsPerTok: number;
  moeIntermediateSize: number;
  maxPositionEmbeddings: number;
  bosTokenId: number;
  eosTokenId: number;
  /** Storage type of the routed experts: 'f32' | 'f16' | 'bf16'. */
  expertDtype: string;
  /** Element type of the latent KV cache. */
  kvCacheDtype: KvCacheDtype;
  /** The CPU kernels' dispatch path, or '' when the CUDA runner runs the model. */
  cpuPath: CpuPath | '';
  /** KV cache bytes of one token in one layer (MLA: kv_lora_rank + rope elements; GQA: 2 * kv_heads * head_dim; times the cache element size). */
  kvBytesPerTokenPerLayer: number;
}

/**
 * One engine step, struct-of-arrays: chunk i covers tokens
 * [sum(nTokens[0..i)), +nTokens[i]) of `tokens`, continuing sequence seqIds[i].
 */
export interface StepRequest {
  seqIds: Int32Array;
  adapters: Int32Array;
  nTokens: Int32Array;
  tokens: Int32Array;
  /** 1: sample a next token after the chunk's last token. */
  sample: Uint8Array;
  /** 1: also return that token's log-probability. */
  logprobs: Uint8Array;
  temperature: Float32Array;
  topK: Int32Array;
  topP: Float32Array;
  /** Per chunk seed (integers up to 2^53). */
  seeds: Float64Array;
  /** Tests only: return logits for every token, [tokens.length * vocab]. */
  returnLogits?: boolean;
  // Optional sampling extras, present only when some chunk uses them:
  /** Per chunk: also return this many most likely tokens (0..20). */
  topLogprobs?: Int32Array;
  /** Per chunk, both or neither: OpenAI penalties over the chunk's output counts. */
  presencePenalty?: Float32Array;
  frequencyPenalty?: Float32Array;
  /** Sparse per chunk: entries biasOffsets[i] .. biasOffsets[i+1] of biasIds/biasValues are chunk i's logit bias. */
  biasOffsets?: Int32Array;
  biasIds?: Int32Array;
  biasValues?: Float32Array;
  /** Sparse per chunk, the same way: the sequence's generated tokens and their counts. */
  countOffsets?: Int32Array;
  countIds?: Int32Array;
  countValues?: Int32Array;
}

export interface StepOutput {
  /** Per chunk: sampled token, or -1 where sample was 0 or the chunk failed. */
  tokens: Int32Array;
  logprobs: Float32Array;
  logits?: Float32Array;
  /**
   * When some chunk asked for top logprobs: each sampled chunk's min(topLogprobs, vocab)
   * most likely tokens (most likely first) and their log-probabilities, in chunk order.
   */
  topIds?: Int32Array;
  topLogprobs?: Float32Array;
  /**
   * Present only when a chunk failed alone (a value of its own the engine refused:
   * a token outside the vocabulary, a draining adapter row, no room in the cache...):
   * per chunk its message, or null where it ran. Its sequence is left as it was.
   */
  errors?: (string | null)[];
}

export interface KvStats {
  blockSize: number;
  totalBlocks: number;
  freeBlocks: number;
  sequences: number;
}

export interface ExpertStats {
  reservedBytes: number;
  backedBytes: number;
  expertBytes: number;
  usedSlots: number;
}

/** A resident ESFT adapter (ew::AdapterInfo). */
export interface NativeAdapterInfo {
  /** Reroute-table row: the value for StepRequest.adapters. */
  row: number;
  dir: string;
  /** Tuned experts over all MoE layers. */
  experts: number;
  /** Bytes of all those experts (gate, up and down of each), not per expert. */
  expertBytes: number;
  /** Expert-pool bytes this adapter newly committed when registered. */
  backedBytes: number;
  /** Unregistered, waiting for its last sequences to be freed. */
  draining: boolean;
  liveSequences: number;
}

/**
 * One loaded engine. The native engine is not thread-safe, so the addon never lets
 * the main thread touch it while a step runs on a worker, and never blocks on a step:
 * - step(): one at a time; a second call while one runs rejects.
 * - freeSequence() while a step runs is deferred: applied right after that step,
 *   before its Promise settles.
 * - sequenceLength() while a step runs throws (lengths are changing).
 * - kvStats()/expertStats() while a step runs report the state just before it.
 * - close() while a step runs: the step completes, then the engine is freed.
 * - Adapter calls are safe while a step runs (the engine's AdapterRegistry locks):
 *   registerAdapter() loads on a thread of its own (never one steps need),
 *   unregisterAdapter() is deferred like freeSequence().
 * Bad arguments reject (async calls) or throw (sync calls) TypeError/RangeError naming
 * the field; engine failures become Errors with the engine's message. Nothing crashes.
 */
export interface NativeEngine {
  info(): ModelInfo;
  /**
   * Runs on a worker thread; one step at a time (a second call while one runs rejects).
   * Rejects only for a malformed request (wrong types or lengths) or a failed forward
   * pass; a chunk whose own values cannot run fails alone (StepOutput.errors).
   */
  step(req: StepRequest): Promise<StepOutput>;
  freeSequence(seqId: number): void;
  /** -1 when the engine holds no such sequence. */
  sequenceLength(seqId: number): number;
  kvStats(): KvStats;
  expertStats(): ExpertStats;
  /** Validates and loads an ESFT adapter directory; nothing changes when it is refused. */
  registerAdapter(dir: string): Promise<NativeAdapterInfo>;
  /**
   * New sequences on the row are refused (from the next step on: a step already running
   * was built with the row active, so the removal applies when it ends; adapters() shows
   * the row draining at once); its memory is freed after its last sequence.
   */
  unregisterAdapter(row: number): void;
  /** Registered rows (draining ones included), by row. */
  adapters(): NativeAdapterInfo[];
  /** Releases the engine (after a running step); any later call throws "the engine is closed". */
  close(): void;
}

export interface Binding {
  loadEngine(modelDir: string, options: NativeEngineOptions): Promise<NativeEngine>;
  /** True when the addon was built with the CUDA backend and a device is present. */
  cudaAvailable(): boolean;
  /** cpuPaths: the CPU kernels' dispatch paths this CPU runs (portable first); cpuPath: the process default. */
  buildInfo(): { cuda: boolean; avx2: boolean; cpuPaths: CpuPath[]; cpuPath: CpuPath; version: string };
  /** Memory read bandwidth of this machine in GB/s (all threads streaming a 512 MiB buffer; about a second). */
  measureMemoryBandwidth(): Promise<number>;
}

const require = createRequire(import.meta.url);

/** Finds the project root from dist/lib/engine or lib/engine. */
function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const up = dirname(dir);
    if (up === dir) throw new Error('expertweave: cannot find package.json above ' + fileURLToPath(import.meta.url));
    dir = up;
  }
  return dir;
}

let cached: Binding | undefined;

/** Loads the compiled addon (cmake-js: build/Release, node-gyp fallback: build/Release too). */
export function loadBinding(): Binding {
  if (cached) return cached;
  const root = packageRoot();
  const candidates = [join(root, 'build', 'Release', 'expertweave.node'), join(root, 'build', 'Debug', 'expertweave.node')];
  const found = candidates.find((p) => existsSync(p));
  if (!found) {
    throw new Error(`expertweave: native addon not built (looked for ${candidates.join(', ')}); run \`npm install\` or \`npm run build\``);
  }
  cached = require(found) as Binding;
  return cached;
}

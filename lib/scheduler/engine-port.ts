// The engine methods the scheduler calls: the real Engine (lib/engine/engine.ts)
// satisfies this, and tests can drive the scheduler with it alone.
import type { ChunkSpec } from '../engine/engine.js';
import type { KvStats, ModelInfo, StepOutput } from '../engine/binding.js';

export interface EnginePort {
  readonly info: ModelInfo;
  step(chunks: readonly ChunkSpec[]): Promise<StepOutput>;
  freeSequence(seqId: number): void;
  kvStats(): KvStats;
  /**
   * Adapter rows being unregistered: their running sequences finish, but a sequence
   * freed there cannot start again (the engine refuses new sequences on the row and
   * drops the row with its last one), so the scheduler never preempts them.
   */
  drainingRows(): ReadonlySet<number>;
}

// Helpers for tests of the native engine against the float64 reference.
import { loadBinding, type Binding, type NativeEngineOptions } from '../../lib/engine/binding.js';

/** The addon, or the reason it cannot be loaded (tests then skip with that reason). */
export function addon(): { binding: Binding } | { skip: string } {
  try {
    return { binding: loadBinding() };
  } catch (e) {
    return { skip: (e as Error).message };
  }
}

/** A small CPU engine: small KV blocks so sequences cross block boundaries. */
export const CPU_ENGINE: NativeEngineOptions = { device: 'cpu', threads: 2, kvBlockSize: 4, kvCacheTokens: 2048 };

/** Splits [n * vocab] logits into n rows. */
export function logitRows(logits: Float32Array | undefined, vocab: number): Float32Array[] {
  if (!logits) throw new Error('the step returned no logits (returnLogits was set)');
  if (logits.length % vocab !== 0) throw new Error(`logits length ${logits.length} is not a multiple of vocab ${vocab}`);
  return Array.from({ length: logits.length / vocab }, (_, i) => logits.subarray(i * vocab, (i + 1) * vocab));
}

/** max |got - ref| / max |ref|: the error relative to the row's scale. */
export function relativeError(got: ArrayLike<number>, ref: ArrayLike<number>): number {
  if (got.length !== ref.length) throw new Error(`length ${got.length} vs reference ${ref.length}`);
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < ref.length; i++) {
    const d = Math.abs(got[i] - ref[i]);
    diff = Number.isNaN(d) ? Infinity : Math.max(diff, d);
    scale = Math.max(scale, Math.abs(ref[i]));
  }
  return diff / scale;
}

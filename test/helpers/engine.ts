// Helpers for tests of the native engine against the float64 reference.
import { loadBinding, type Binding, type NativeEngineOptions } from '../../lib/engine/binding.js';
import { gatedSuite, type Gate, type GatedSuite } from './gate.js';

/** The addon, or why it cannot be loaded. */
export function addon(): { binding: Binding } | { skip: string } {
  try {
    return { binding: loadBinding() };
  } catch (e) {
    return { skip: (e as Error).message };
  }
}

/**
 * Whether suites that need the addon run. A missing addon fails them (a broken build
 * must not pass as skipped) unless EW_ALLOW_NO_ADDON=1, which skips each of their tests.
 */
export function addonGate(): Gate {
  const native = addon();
  if (!('skip' in native)) return { run: true };
  if (process.env.EW_ALLOW_NO_ADDON === '1') return { skip: `EW_ALLOW_NO_ADDON=1 and the native addon does not load: ${native.skip}` };
  return { fail: `the native addon does not load (${native.skip}); build it (npm run build), or set EW_ALLOW_NO_ADDON=1 to skip the tests that need it` };
}

let nativeSuite: GatedSuite | undefined;
/** describe/test/hooks for suites that need the addon (see addonGate). */
export function withAddon(): GatedSuite {
  return (nativeSuite ??= gatedSuite(addonGate()));
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

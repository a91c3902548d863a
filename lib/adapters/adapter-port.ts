// The engine's adapter calls the registry uses (the real Engine satisfies this).
import type { NativeAdapterInfo } from '../engine/binding.js';

export interface AdapterPort {
  registerAdapter(dir: string): Promise<NativeAdapterInfo>;
  unregisterAdapter(row: number): void;
}

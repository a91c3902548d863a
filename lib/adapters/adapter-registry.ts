// Adapter names -> directories and residency. An adapter is registered (on disk)
// or resident (loaded into the engine's expert pool, with a reroute row). The pool
// has a byte budget and a count limit; past them the least recently used idle,
// unpinned adapter is evicted. A request for a non-resident adapter awaits its load
// (other requests keep flowing). Work on one name is serialized by a per-name lock.
import { resolve } from 'node:path';
import { LRUCache } from 'lru-cache';

import type { AdapterPort } from './adapter-port.js';
import { AdapterError, checkAdapterDir } from './expert-cfg.js';
import { NameLock } from './name-lock.js';

export type Residency = 'registered' | 'loading' | 'resident';

export interface AdapterEntry {
  name: string;
  dir: string;
  row: number | undefined;
  state: Residency;
  experts: number;
  bytes: number;
  pinned: boolean;
  /** Requests holding the adapter resident (queued or running). */
  active: number;
  loads: number;
  evictions: number;
}

export interface RegistryOptions {
  /** Most adapter bytes resident at once (0: unbounded). */
  poolBytes?: number;
  /** Most adapters resident at once (0: unbounded). */
  maxResident?: number;
  /** Names an adapter may not take (the base model's served name: it would be unreachable). */
  reservedNames?: readonly string[];
}

/** A hold on a resident adapter; release() once the request is over. */
export interface AdapterLease {
  row: number;
  release(): void;
}

/** A name, or Hugging Face's org/name; no ',' (the router protocol's lists are comma-split). */
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}(\/[A-Za-z0-9][A-Za-z0-9._-]{0,63})?$/;

export class AdapterRegistry {
  private readonly entries = new Map<string, AdapterEntry>();
  /**
   * Resident names in recency order (the value is unused; nothing is evicted by the cache
   * itself). Bounded by size, not `max`: lru-cache preallocates `max` slots (1M of them
   * took 140 ms and 16 MiB at every start).
   */
  private readonly recency = new LRUCache<string, true>({ maxSize: 1 << 20, sizeCalculation: () => 1 });
  private readonly lock = new NameLock();
  totalLoads = 0;
  totalEvictions = 0;

  constructor(
    private readonly engine: AdapterPort,
    private readonly options: RegistryOptions = {},
  ) {}

  list(): AdapterEntry[] {
    return [...this.entries.values()];
  }

  get(name: string): AdapterEntry | undefined {
    return this.entries.get(name);
  }

  /**
   * Validates and registers; loads it (the native side validates the weights), then
   * leaves it resident within the budget. Same name and dir again: returns the entry.
   */
  register(name: string, dir: string, pinned = false): Promise<{ entry: AdapterEntry; created: boolean }> {
    if (!NAME.test(name)) throw new AdapterError(400, 'bad_request', `adapter name '${name}' must match ${NAME}`);
    if (this.options.reservedNames?.includes(name)) {
      throw new AdapterError(400, 'bad_request', `adapter name '${name}' is the base model's name; requests for it would never reach the adapter`);
    }
    const abs = resolve(dir);
    return this.lock.run(name, async () => {
      const existing = this.entries.get(name);
      if (existing) {
        if (existing.dir === abs) return { entry: existing, created: false };
        throw new AdapterError(409, 'conflict', `adapter '${name}' is already registered from ${existing.dir}; remove it first`);
      }
      await checkAdapterDir(abs);
      let info;
      try {
        info = await this.engine.registerAdapter(abs);
      } catch (err) {
        throw new AdapterError(400, 'bad_request', `adapter '${name}' refused: ${(err as Error).message}`);
      }
      const entry: AdapterEntry = {
        name,
        dir: abs,
        row: info.row,
        state: 'resident',
        experts: info.experts,
        bytes: info.expertBytes, // all its experts' bytes (ew::AdapterInfo::expert_bytes)
        pinned,
        active: 0,
        loads: 1,
        evictions: 0,
      };
      this.entries.set(name, entry);
      this.recency.set(name, true);
      this.totalLoads++;
      this.evictOverBudget(name);
      return { entry, created: true };
    });
  }

  /** Unregisters: new requests are refused at once; running ones finish on the draining row. */
  remove(name: string): Promise<void> {
    const entry = this.entries.get(name);
    if (!entry) return Promise.reject(new AdapterError(404, 'unknown_adapter', `no adapter named '${name}'`));
    this.entries.delete(name);
    return this.lock.run(name, async () => {
      if (entry.row !== undefined) this.engine.unregisterAdapter(entry.row);
      this.recency.delete(name);
      entry.row = undefined;
      entry.state = 'registered';
    });
  }

  /** Makes `name` resident (loading it if needed) and holds it there until release(). */
  async acquire(name: string): Promise<AdapterLease> {
    const entry = this.entries.get(name);
    if (!entry) throw new AdapterError(404, 'unknown_adapter', `no adapter named '${name}'; GET /v1/adapters lists them`);
    entry.active++;
    try {
      if (entry.row === undefined) await this.lock.run(name, () => this.load(entry));
    } catch (err) {
      entry.active--;
      throw err;
    }
    if (this.entries.get(name) !== entry || entry.row === undefined) {
      entry.active--;
      throw new AdapterError(404, 'unknown_adapter', `adapter '${name}' was removed`);
    }
    this.recency.get(name); // mark as recently used
    let held = true;
    return {
      row: entry.row,
      release: () => {
        if (!held) return;
        held = false;
        entry.active--;
        this.evictOverBudget();
      },
    };
  }

  private async load(entry: AdapterEntry): Promise<void> {
    if (entry.row !== undefined || this.entries.get(entry.name) !== entry) return;
    entry.state = 'loading';
    try {
      const info = await this.engine.registerAdapter(entry.dir);
      entry.row = info.row;
      entry.state = 'resident';
      entry.loads++;
      this.totalLoads++;
      this.recency.set(entry.name, true);
    } catch (err) {
      entry.state = 'registered';
      throw new AdapterError(500, 'internal', `loading adapter '${entry.name}' failed: ${(err as Error).message}`);
    }
    this.evictOverBudget(entry.name);
  }

  residentBytes(): number {
    let sum = 0;
    for (const e of this.entries.values()) if (e.row !== undefined) sum += e.bytes;
    return sum;
  }

  private overBudget(): boolean {
    const { poolBytes = 0, maxResident = 0 } = this.options;
    const resident = [...this.entries.values()].filter((e) => e.row !== undefined).length;
    return (poolBytes > 0 && this.residentBytes() > poolBytes) || (maxResident > 0 && resident > maxResident);
  }

  /** Evicts least recently used idle, unpinned adapters (never `keep`) while over budget. */
  private evictOverBudget(keep?: string): void {
    for (const name of [...this.recency.rkeys()]) {
      if (!this.overBudget()) return;
      const e = this.entries.get(name);
      if (!e || name === keep || e.pinned || e.active > 0 || e.row === undefined) continue;
      this.engine.unregisterAdapter(e.row);
      e.row = undefined;
      e.state = 'registered';
      e.evictions++;
      this.totalEvictions++;
      this.recency.delete(name);
    }
  }
}

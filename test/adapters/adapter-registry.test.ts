// The registry's residency budget with a stand-in engine port (pure bookkeeping, no
// weights): --adapter-pool-bytes counts each adapter's expert bytes once, and the
// least recently used idle adapter goes first.
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';

import { AdapterRegistry } from '../../lib/adapters/adapter-registry.js';
import type { AdapterPort } from '../../lib/adapters/adapter-port.js';
import type { NativeAdapterInfo } from '../../lib/engine/binding.js';
import { tempDir } from '../helpers/tmp.js';

const EXPERTS = 10;
const BYTES = 1000; // all ten experts together, as ew::AdapterInfo::expert_bytes

class FakePort implements AdapterPort {
  nextRow = 1;
  live = new Set<number>();
  async registerAdapter(dir: string): Promise<NativeAdapterInfo> {
    const row = this.nextRow++;
    this.live.add(row);
    return { row, dir, experts: EXPERTS, expertBytes: BYTES, backedBytes: BYTES, draining: false, liveSequences: 0 };
  }
  unregisterAdapter(row: number): void {
    this.live.delete(row);
  }
}

function adapterDirs(n: number): string[] {
  return Array.from({ length: n }, () => {
    const dir = tempDir('ew-registry-');
    writeFileSync(join(dir, 'expert_cfg.json'), JSON.stringify({ experts: { '1': [0] } }));
    return dir;
  });
}

test('a pool budget of 2.5 adapters keeps two resident, evicting the least recently used', async () => {
  const port = new FakePort();
  const reg = new AdapterRegistry(port, { poolBytes: 2.5 * BYTES });
  const dirs = adapterDirs(3);
  for (const [i, d] of dirs.entries()) await reg.register(`a${i}`, d);
  assert.equal(reg.get('a0')!.bytes, BYTES, "an entry's bytes are the adapter's expert bytes");
  assert.equal(reg.residentBytes(), 2 * BYTES);
  assert.deepEqual(reg.list().map((e) => e.state), ['registered', 'resident', 'resident']);
  assert.equal(port.live.size, 2);

  // a1 used, then a0 loaded: a2 (least recently used) goes.
  (await reg.acquire('a1')).release();
  const lease = await reg.acquire('a0');
  assert.deepEqual(reg.list().map((e) => [e.name, e.state]), [['a0', 'resident'], ['a1', 'resident'], ['a2', 'registered']]);
  assert.equal(reg.get('a0')!.loads, 2);
  assert.equal(reg.get('a2')!.evictions, 1);
  lease.release();
  assert.equal(reg.residentBytes(), 2 * BYTES);
});

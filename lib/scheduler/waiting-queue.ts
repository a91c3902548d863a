// The waiting-queue policy: which request is admitted next. Fair across clients
// first (a client is one WebSocket connection or one HTTP peer address), then across
// the adapters of a client's requests, round-robin at both levels, so one client's
// hundreds of queued requests delay another client's request by one turn, not by
// hundreds. A preempted request goes back to the front of its own client's queue:
// it resumes before that client's new requests, never before other clients'.
export interface Queued {
  readonly client: string;
  readonly adapter: string;
}

class RoundRobin<K, V> {
  readonly items = new Map<K, V>();
  private order: K[] = [];
  private next = 0;

  get size(): number {
    return this.order.length;
  }

  getOrAdd(key: K, make: () => V): V {
    let v = this.items.get(key);
    if (v === undefined) {
      v = make();
      this.items.set(key, v);
      this.order.push(key);
    }
    return v;
  }

  /** Keys from the current turn on, once each. */
  *turns(): Generator<K> {
    for (let k = 0; k < this.order.length; k++) yield this.order[(this.next + k) % this.order.length];
  }

  /** The turn passes to the key after `key`. */
  advancePast(key: K): void {
    const at = this.order.indexOf(key);
    if (at !== -1) this.next = (at + 1) % this.order.length;
  }

  delete(key: K): void {
    const at = this.order.indexOf(key);
    if (at === -1) return;
    this.items.delete(key);
    this.order.splice(at, 1);
    if (this.next > at) this.next--;
    if (this.next >= this.order.length) this.next = 0;
  }
}

class ClientQueue<T extends Queued> {
  /** Preempted requests, most recently preempted first. */
  readonly resumed: T[] = [];
  readonly adapters = new RoundRobin<string, T[]>();
  count = 0;

  first(): T | undefined {
    if (this.resumed.length > 0) return this.resumed[0];
    for (const name of this.adapters.turns()) {
      const q = this.adapters.items.get(name)!;
      if (q.length > 0) return q[0];
    }
    return undefined;
  }
}

export class WaitingQueue<T extends Queued> {
  private readonly clients = new RoundRobin<string, ClientQueue<T>>();
  private total = 0;
  /** Arrival order of new requests (to find a client's newest). */
  private readonly arrival = new WeakMap<T, number>();
  private arrivals = 0;

  get size(): number {
    return this.total;
  }

  /** A new request, behind its client's others for the same adapter. */
  push(item: T): void {
    const c = this.clients.getOrAdd(item.client, () => new ClientQueue<T>());
    c.adapters.getOrAdd(item.adapter, () => []).push(item);
    this.arrival.set(item, ++this.arrivals);
    c.count++;
    this.total++;
  }

  /** A preempted request, ahead of its client's new ones. */
  pushResumed(item: T): void {
    const c = this.clients.getOrAdd(item.client, () => new ClientQueue<T>());
    c.resumed.unshift(item);
    c.count++;
    this.total++;
  }

  /** The next request by the policy among clients `eligible` accepts (all when absent). */
  peek(eligible: (client: string) => boolean = () => true): T | undefined {
    for (const name of this.clients.turns()) {
      if (!eligible(name)) continue;
      const first = this.clients.items.get(name)!.first();
      if (first) return first;
    }
    return undefined;
  }

  /** Takes out `item`, a result of peek(); the turn passes to the next client and adapter. */
  pop(item: T): void {
    const c = this.clients.items.get(item.client);
    if (!c) return;
    if (c.resumed[0] === item) c.resumed.shift();
    else {
      const q = c.adapters.items.get(item.adapter);
      if (!q || q[0] !== item) return;
      q.shift();
      c.adapters.advancePast(item.adapter);
      if (q.length === 0) c.adapters.delete(item.adapter);
    }
    this.clients.advancePast(item.client);
    this.taken(c, item.client);
  }

  /** Takes out `item` wherever it is (a cancel); false when it is not queued. */
  remove(item: T): boolean {
    const c = this.clients.items.get(item.client);
    if (!c) return false;
    let at = c.resumed.indexOf(item);
    if (at !== -1) c.resumed.splice(at, 1);
    else {
      const q = c.adapters.items.get(item.adapter);
      at = q ? q.indexOf(item) : -1;
      if (at === -1) return false;
      q!.splice(at, 1);
      if (q!.length === 0) c.adapters.delete(item.adapter);
    }
    this.taken(c, item.client);
    return true;
  }

  /** Waiting requests of `client`. */
  countOf(client: string): number {
    return this.clients.items.get(client)?.count ?? 0;
  }

  /** Clients with at least one waiting request. */
  clientNames(): IterableIterator<string> {
    return this.clients.items.keys();
  }

  /** The newest new (not preempted) request of `client`, the one to refuse first when the queue is full. */
  newestOf(client: string): T | undefined {
    const c = this.clients.items.get(client);
    if (!c) return undefined;
    let newest: T | undefined;
    let newestAt = -1;
    for (const q of c.adapters.items.values()) {
      const last = q[q.length - 1];
      const at = last ? this.arrival.get(last) ?? -1 : -1;
      if (at > newestAt) {
        newest = last;
        newestAt = at;
      }
    }
    return newest ?? c.resumed[c.resumed.length - 1];
  }

  *[Symbol.iterator](): Generator<T> {
    for (const c of [...this.clients.items.values()]) {
      yield* [...c.resumed];
      for (const q of [...c.adapters.items.values()]) yield* [...q];
    }
  }

  private taken(c: ClientQueue<T>, client: string): void {
    c.count--;
    this.total--;
    if (c.count === 0) this.clients.delete(client);
  }
}

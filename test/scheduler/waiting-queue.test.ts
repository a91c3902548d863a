// The waiting-queue policy alone: round-robin over clients, then over a client's
// adapters; preempted requests first within their own client only.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { WaitingQueue } from '../../lib/scheduler/waiting-queue.js';

interface Item {
  client: string;
  adapter: string;
  name: string;
}
const item = (client: string, adapter: string, name: string): Item => ({ client, adapter, name });

function drain(q: WaitingQueue<Item>, eligible?: (c: string) => boolean): string[] {
  const out: string[] = [];
  for (let x = q.peek(eligible); x; x = q.peek(eligible)) {
    q.pop(x);
    out.push(x.name);
  }
  return out;
}

test('clients take turns, whatever each has queued', () => {
  const q = new WaitingQueue<Item>();
  for (let i = 0; i < 5; i++) q.push(item('hog', 'a', `h${i}`));
  q.push(item('victim', 'a', 'v0'));
  q.push(item('third', 'b', 't0'));
  assert.equal(q.size, 7);
  assert.deepEqual(drain(q), ['h0', 'v0', 't0', 'h1', 'h2', 'h3', 'h4']);
  assert.equal(q.size, 0);
});

test("within a client, its adapters take turns", () => {
  const q = new WaitingQueue<Item>();
  for (const [a, n] of [['x', 'x0'], ['x', 'x1'], ['x', 'x2'], ['y', 'y0'], ['y', 'y1']]) q.push(item('c', a, n));
  assert.deepEqual(drain(q), ['x0', 'y0', 'x1', 'y1', 'x2']);
});

test('a preempted request resumes before its own client\'s new ones, not before other clients', () => {
  const q = new WaitingQueue<Item>();
  q.push(item('hog', 'a', 'h1'));
  q.push(item('victim', 'a', 'v0'));
  q.pushResumed(item('hog', 'a', 'h0-preempted'));
  const first = q.peek()!;
  assert.equal(first.name, 'h0-preempted');
  q.pop(first);
  // The victim's turn comes before the hog's next one.
  assert.deepEqual(drain(q), ['v0', 'h1']);
});

test('eligibility skips clients; remove and newestOf find requests anywhere', () => {
  const q = new WaitingQueue<Item>();
  const items = [item('a', 'x', 'a0'), item('a', 'y', 'a1'), item('a', 'x', 'a2'), item('b', 'x', 'b0')];
  for (const it of items) q.push(it);
  assert.equal(q.peek((c) => c !== 'a')!.name, 'b0');
  assert.equal(q.countOf('a'), 3);
  assert.equal(q.newestOf('a')!.name, 'a2');
  assert.ok(q.remove(items[2]));
  assert.ok(!q.remove(items[2]));
  assert.equal(q.newestOf('a')!.name, 'a1');
  assert.deepEqual([...q].map((i) => i.name).sort(), ['a0', 'a1', 'b0']);
  assert.deepEqual(drain(q), ['a0', 'b0', 'a1']);
  assert.deepEqual([...q.clientNames()], []);
});

// `expertweave serve` as a process under hostile conditions: a port already served,
// signals (SIGHUP, a second SIGTERM while shutting down) and running out of file
// descriptors (hostile-clients cases 7 and 8).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';

import { withAddon } from '../helpers/engine.js';
import { repoRoot } from '../helpers/paths.js';
import { StreamClient } from '../helpers/ws-client.js';
import { fixture } from '../server/daemon-helpers.js';

const { after, before, describe, test } = withAddon();
const BIN = join(repoRoot(), 'bin', 'expertweave.js');

/** Runs serve (through bash when `ulimit` is given, so the limit applies to the daemon itself). */
function serve(args: string[], fdLimit?: number) {
  const argv = [BIN, 'serve', '--device', 'cpu', '--threads', '1', ...args];
  const child =
    fdLimit === undefined
      ? spawn(process.execPath, argv, { stdio: ['ignore', 'pipe', 'pipe'] })
      : spawn('bash', ['-c', `ulimit -n ${fdLimit} && exec "$0" "$@"`, process.execPath, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  const listening = new Promise<string>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      const m = /listening on (http:\/\/[\d.]+:\d+)/.exec(stdout);
      if (m) resolve(m[1]);
    });
    void exited.then((e) => reject(new Error(`serve exited with ${e.code}: ${stderr}`)));
  });
  return { child, listening, exited, logs: () => stderr };
}

/** CPU time (user + system, in clock ticks of 10 ms) the process has used. */
function cpuTicks(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return Number(fields[11]) + Number(fields[12]);
}

describe('expertweave serve under hostile conditions', () => {
  const fx = fixture();

  test('7: a second daemon on a served port exits 1 saying the address is in use; the first keeps serving', async () => {
    const first = serve(['--model', fx.model, '--port', '0']);
    const url = await first.listening;
    const port = url.split(':')[2];
    const second = serve(['--model', fx.model, '--port', port]);
    second.listening.catch(() => {}); // it never listens
    const end = await second.exited;
    assert.equal(end.code, 1);
    assert.match(second.logs(), /address in use/);
    assert.equal((await fetch(url + '/health')).status, 200);
    first.child.kill('SIGTERM');
    assert.equal((await first.exited).code, 0);
  });

  test('8: SIGHUP shuts down cleanly; a second SIGTERM during shutdown does not kill the process', async () => {
    const hup = serve(['--model', fx.model, '--port', '0']);
    await hup.listening;
    hup.child.kill('SIGHUP');
    assert.deepEqual(await hup.exited, { code: 0, signal: null });
    assert.match(hup.logs(), /"event":"shutting_down","signal":"SIGHUP"/);

    const twice = serve(['--model', fx.model, '--port', '0']);
    const url = await twice.listening;
    const client = await StreamClient.open(url.replace('http', 'ws') + '/v1/stream');
    client.send({ type: 'generate', id: 'r', prompt: [3, 4, 5], max_tokens: 250, temperature: 1, seed: 1, ignore_eos: true });
    await client.next((f) => f.id === 'r');
    twice.child.kill('SIGTERM');
    twice.child.kill('SIGTERM');
    assert.deepEqual(await twice.exited, { code: 0, signal: null });
    // The request in flight was told why it ended.
    const end = await client.next((f) => f.id === 'r' && (f.type === 'done' || f.type === 'error'));
    assert.equal(end.type, 'done');
    assert.equal(end.finish_reason, 'cancelled');
  });

  test('8: out of file descriptors it stops accepting instead of spinning, and serves again once they are back', { timeout: 30_000 }, async () => {
    const s = serve(['--model', fx.model, '--port', '0'], 128);
    const url = await s.listening;
    const port = Number(url.split(':')[2]);
    const sockets: Socket[] = [];
    for (let i = 0; i < 200; i++) {
      const sock = connect(port, '127.0.0.1');
      sock.on('error', () => {});
      sockets.push(sock);
    }
    await new Promise((r) => setTimeout(r, 1500));
    const t0 = cpuTicks(s.child.pid!);
    await new Promise((r) => setTimeout(r, 1000));
    const used = cpuTicks(s.child.pid!) - t0;
    assert.ok(used < 30, `the daemon used ${used * 10} ms of CPU in 1 s while out of descriptors`);
    for (const sock of sockets) sock.destroy();
    const until = Date.now() + 10_000;
    let ok = false;
    while (!ok && Date.now() < until) {
      ok = await fetch(url + '/health').then((r) => r.status === 200, () => false);
      if (!ok) await new Promise((r) => setTimeout(r, 200));
    }
    assert.ok(ok, 'the daemon serves again');
    assert.match(s.logs(), /"event":"listen_paused"/);
    s.child.kill('SIGTERM');
    assert.equal((await s.exited).code, 0);
  });
});

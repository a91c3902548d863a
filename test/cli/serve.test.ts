// `expertweave serve` and `expertweave adapters` as processes: the listening line,
// adapter management over HTTP, JSON logs, and a clean exit 0 on SIGTERM/SIGINT;
// a request in flight at SIGTERM ends "cancelled" before the socket closes (1001).
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';

import { withAddon } from '../helpers/engine.js';
import { repoRoot } from '../helpers/paths.js';
import { StreamClient } from '../helpers/ws-client.js';
import { editedModel, someTokens } from '../helpers/fixtures.js';
import { Expected, fixture, type Case } from '../server/daemon-helpers.js';

const { after, describe, test } = withAddon();
const BIN = join(repoRoot(), 'bin', 'expertweave.js');

/** Servers still running when the suite ends (a failed test): killed, so the file ends. */
const children = new Set<ChildProcess>();

function serve(args: string[]) {
  const child = spawn(process.execPath, [BIN, 'serve', '--port', '0', '--device', 'cpu', '--threads', '1', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  child.on('exit', () => children.delete(child));
  let stdout = '';
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const listening = new Promise<string>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      const m = /listening on (http:\/\/[\d.]+:\d+)/.exec(stdout);
      if (m) resolve(m[1]);
    });
    void exited.then((code) => reject(new Error(`serve exited with ${code}: ${stderr}`)));
  });
  return { child, listening, exited, logs: () => stderr };
}

function cli(args: string[]) {
  return spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8' });
}

describe('expertweave serve', () => {
  after(() => {
    for (const child of children) child.kill('SIGKILL');
  });

  test('serves, manages adapters over HTTP, and exits 0 on SIGTERM mid-request', async () => {
    const fx = fixture();
    // A longer context than the fixture's 256, so the in-flight request has room to run.
    const model = editedModel(fx.model, (t) => t, (cfg) => (cfg.max_position_embeddings = 2048));
    const long: Case = { adapter: 'law', prompt: someTokens(5, 64, 2), maxTokens: 1000 };
    const expected = new Expected(model, fx.adapters, { kvCacheTokens: 2048, kvBlockSize: 16 });
    const want = await expected.of(long);
    await expected.close();
    assert.equal(want.finish, 'length', 'the fixture must not stop before max_tokens');

    const s = serve(['--model', model, '--adapter', `law=${fx.adapters[0].dir}`, '--admin-token', 'tok', '--kv-cache-tokens', '2048']);
    const url = await s.listening;
    assert.match(url, /^http:\/\/127\.0\.0\.1:\d+$/);

    const add = cli(['adapters', 'add', 'math', fx.adapters[1].dir, '--server', url, '--admin-token', 'tok']);
    assert.equal(add.status, 0, add.stderr);
    const denied = cli(['adapters', 'list', '--server', url]);
    assert.equal(denied.status, 1);
    assert.match(denied.stderr, /401/);
    const list = cli(['adapters', 'list', '--server', url, '--admin-token', 'tok']);
    assert.equal(list.status, 0, list.stderr);
    assert.deepEqual(list.stdout.trim().split('\n').map((l) => l.split('\t')[0]).sort(), ['law', 'math']);
    const rm = cli(['adapters', 'remove', 'math', '--server', url, '--admin-token', 'tok']);
    assert.equal(rm.status, 0, rm.stderr);
    assert.equal(cli(['adapters', 'bogus', '--server', url]).status, 2);

    const client = await StreamClient.open(url.replace('http', 'ws') + '/v1/stream');
    client.send({ type: 'generate', id: 'r', adapter: long.adapter, prompt: long.prompt, max_tokens: long.maxTokens, temperature: 0 });
    const first = await client.next((f) => f.id === 'r');
    assert.equal(first.type, 'token', JSON.stringify(first));
    s.child.kill('SIGTERM');
    const end = await client.next((f) => f.id === 'r' && f.type !== 'token');
    assert.equal(end.type, 'done', JSON.stringify(end));
    assert.equal(end.finish_reason, 'cancelled');
    const got = client.frames.filter((f) => f.id === 'r' && f.type === 'token').map((f) => f.token as number);
    assert.ok(got.length < long.maxTokens, `all ${got.length} tokens came before SIGTERM landed`);
    assert.deepEqual(got, want.tokens.slice(0, got.length), 'the tokens before SIGTERM are the continuation');
    assert.deepEqual(await client.closed, { code: 1001, reason: 'server shutting down' });
    assert.equal(await s.exited, 0, s.logs());
    for (const line of s.logs().trim().split('\n')) assert.ok(typeof JSON.parse(line).event === 'string', line);
    assert.match(s.logs(), /"event":"shutting_down"/);
  });

  test('SIGINT stops an idle server with exit 0; a missing model is a clear error', async () => {
    const fx = fixture();
    const s = serve(['--model', fx.model]);
    await s.listening;
    s.child.kill('SIGINT');
    assert.equal(await s.exited, 0);
    const bad = cli(['serve', '--model', '/nonexistent/model', '--port', '0']);
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /does not exist/);
    assert.equal(cli(['serve', '--adapter', 'nodir']).status, 2);
    const interval = cli(['serve', '--stream-interval', '0']);
    assert.equal(interval.status, 2);
    assert.match(interval.stderr, /--stream-interval must be an integer in \[1, 4096\], got '0'/);
  });
});

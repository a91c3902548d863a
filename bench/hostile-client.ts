// bench:hostile's hostile client, on a worker thread: workerData {kind, url, nice}; runs until terminated.
import { connect, type Socket } from 'node:net';
import { setPriority } from 'node:os';
import { workerData } from 'node:worker_threads';

import { StreamClient } from '../test/helpers/ws-client.js';

/** A raw client's WebSocket upgrade request for /v1/stream. */
const UPGRADE = 'GET /v1/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n';

/** Runs one kind of hostile client against the daemon at `url`. */
function hostile(kind: string, url: string): void { // runs until the worker is terminated
  const ws = url.replace('http', 'ws') + '/v1/stream';
  const longRequest = (id: string) => ({ type: 'generate', id, adapter: null, prompt: 'rot13: the quick brown fox\n=', max_tokens: 200, temperature: 1, seed: 7, ignore_eos: true });
  if (kind === 'slow-reader') {
    let sock: Socket | undefined;
    const open = () => {
      // A raw WebSocket client that never reads after the handshake.
      sock = connect(Number(new URL(url).port), '127.0.0.1', () => {
        sock!.write(UPGRADE);
        for (let i = 0; i < 256; i++) sock!.write(maskedTextFrame(JSON.stringify(longRequest(`s${i}`))));
        sock!.pause();
      });
      sock.on('error', () => {});
      sock.on('close', () => setTimeout(open, 10)); // cut off: come back
    };
    open();
    return;
  }
  if (kind === 'oversized-frames') {
    // A 500 KB frame: over the embedded model's 320 KiB frame limit (daemon.ts: 4 x its 64 KiB of
    // prompt text + 64 KiB) and under twice it, so uWebSockets.js takes it whole and the daemon ends
    // the connection with 1009 (the costlier cut-off; beyond twice, uWebSockets.js drops the
    // connection at the frame's header); then at once a new connection.
    const frame = maskedTextFrame(JSON.stringify({ ...longRequest('o'), prompt: 'x'.repeat(500_000) }));
    const open = () => {
      const sock = connect(Number(new URL(url).port), '127.0.0.1', () => {
        sock.write(UPGRADE);
        sock.write(frame);
      });
      sock.on('data', () => {}); // read the upgrade answer and the close frame
      sock.on('error', () => {});
      sock.on('close', open);
    };
    open();
    return;
  }
  if (kind === 'hog') {
    void StreamClient.open(ws).then((c) => {
      let n = 0;
      const submit = () => {
          const id = `h${n++}`;
        c.onFrame(id, (f) => {
          if (f.type !== 'token') submit();
        });
        c.send(longRequest(id));
      };
      for (let i = 0; i < 256; i++) submit();
    });
    return;
  }
  const body = JSON.stringify({ prompt: 'the quick brown fox jumps over the lazy dog. '.repeat(23_000), max_tokens: 1 });
  void (async () => {
    for (;;) await fetch(url + '/v1/completions', { method: 'POST', headers: { 'content-type': 'application/json' }, body }).then((r) => r.arrayBuffer(), () => undefined);
  })();
}

/** A client-to-server WebSocket text frame (masked, as clients must send). */
function maskedTextFrame(text: string): Buffer {
  const payload = Buffer.from(text);
  const n = payload.length;
  let header: Buffer;
  if (n < 126) header = Buffer.from([0x81, 0x80 | n]);
  else if (n < 65536) header = Buffer.from([0x81, 0x80 | 126, n >> 8, n & 0xff]);
  else {
    header = Buffer.alloc(10);
    header.set([0x81, 0x80 | 127]);
    header.writeBigUInt64BE(BigInt(n), 2);
  }
  const mask = Buffer.from([1, 2, 3, 4]);
  const masked = Buffer.from(payload.map((b, i) => b ^ mask[i % 4]));
  return Buffer.concat([header, mask, masked]);
}


const { kind, url, nice } = workerData as { kind: string; url: string; nice: number };
// Per thread on Linux (pid 0 is the calling thread): only this worker, not the victim.
if (nice && process.platform === 'linux') setPriority(0, nice);
hostile(kind, url);

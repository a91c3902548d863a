// A lean client for one OpenAI-style streaming request (POST with a JSON body, answered
// with server-sent events over HTTP/1.1, chunked or not) on a raw TCP socket, for load
// generators that share the measured machine's cores (as bench/lib/lean-ws.ts does for
// WebSocket): it parses the status line, the chunked body and the `data:` events straight
// out of each socket read. One request per connection, as OpenAI clients stream.
import { connect } from 'node:net';

export interface SseHandlers {
  /** The data of one event (its `data:` lines joined by newlines), e.g. a JSON chunk or "[DONE]". */
  onEvent: (data: string) => void;
  /** The response ended (err: not a 200, a malformed body, or the connection failed). */
  onEnd: (err?: Error) => void;
}

const CRLF = Buffer.from('\r\n');
const HEAD_END = Buffer.from('\r\n\r\n');
const EVENT_END = Buffer.from('\n\n');

/** Incremental parser of one HTTP response carrying server-sent events: feed it socket reads. */
export class SseResponseParser {
  private buf: Buffer = Buffer.alloc(0);
  private headed = false;
  private chunked = false;
  /** Where the chunked framing is: a size line, the chunk's data (chunkLeft bytes to go), its closing CRLF. */
  private state: 'size' | 'data' | 'crlf' = 'size';
  private chunkLeft = 0;
  private events: Buffer = Buffer.alloc(0);
  private done = false;

  constructor(private readonly handlers: SseHandlers) {}

  push(data: Buffer): void {
    if (this.done) return;
    this.buf = this.buf.length ? Buffer.concat([this.buf, data]) : data;
    try {
      if (!this.headed && !this.head()) return;
      if (!this.chunked) {
        this.body(this.buf);
        this.buf = Buffer.alloc(0);
        return;
      }
      this.chunks();
    } catch (err) {
      this.end(err as Error);
    }
  }

  /** The connection closed (or failed): a body without chunked framing ends here; anything else is cut short. */
  close(err?: Error): void {
    if (this.done) return;
    this.end(err ?? (this.headed && !this.chunked ? undefined : new Error('lean-sse: the connection closed before the response ended')));
  }

  private head(): boolean {
    const at = this.buf.indexOf(HEAD_END);
    if (at < 0) return false;
    const lines = this.buf.subarray(0, at).toString('latin1').split('\r\n');
    const status = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0]);
    if (!status) throw new Error(`lean-sse: not an HTTP response: ${JSON.stringify(lines[0])}`);
    const body = this.buf.subarray(at + 4);
    if (status[1] !== '200') throw new Error(`lean-sse: ${lines[0]}: ${body.toString('utf8').slice(0, 300)}`);
    this.chunked = lines.some((l) => /^transfer-encoding:\s*chunked\s*$/i.test(l));
    this.headed = true;
    this.buf = body;
    return true;
  }

  private chunks(): void {
    let at = 0;
    const buf = this.buf;
    for (;;) {
      if (this.state === 'size') {
        const eol = buf.indexOf(CRLF, at);
        if (eol < 0) break;
        const size = parseInt(buf.subarray(at, eol).toString('latin1'), 16); // extensions after ';' are ignored
        if (!Number.isFinite(size)) throw new Error('lean-sse: a malformed chunk size');
        at = eol + 2;
        if (size === 0) return this.end();
        this.chunkLeft = size;
        this.state = 'data';
      } else if (this.state === 'data') {
        const take = Math.min(this.chunkLeft, buf.length - at);
        if (take === 0) break;
        this.body(buf.subarray(at, at + take));
        at += take;
        this.chunkLeft -= take;
        if (this.chunkLeft === 0) this.state = 'crlf';
      } else {
        if (buf.length - at < 2) break;
        at += 2;
        this.state = 'size';
      }
    }
    this.buf = buf.subarray(at);
  }

  /** Body bytes: split into events at blank lines (a multi-byte character never holds a newline byte). */
  private body(data: Buffer): void {
    this.events = this.events.length ? Buffer.concat([this.events, data]) : Buffer.from(data);
    let at = 0;
    for (let end; (end = this.events.indexOf(EVENT_END, at)) >= 0 && !this.done; at = end + 2) {
      const lines = this.events.subarray(at, end).toString('utf8').split('\n');
      const data = lines.filter((l) => l.startsWith('data:')).map((l) => l.slice(l.startsWith('data: ') ? 6 : 5));
      if (data.length) this.handlers.onEvent(data.join('\n'));
    }
    this.events = this.events.subarray(at);
  }

  private end(err?: Error): void {
    if (this.done) return;
    this.done = true;
    this.handlers.onEnd(err);
  }
}

/** Sends `body` as a JSON POST to `url` (http://host:port/path) and streams the answer's events. */
export function postSse(url: string, body: object, handlers: SseHandlers): { close(): void } {
  const u = new URL(url);
  const payload = Buffer.from(JSON.stringify(body));
  const parser = new SseResponseParser({
    onEvent: handlers.onEvent,
    onEnd: (err) => {
      sock.end();
      handlers.onEnd(err);
    },
  });
  const sock = connect(Number(u.port), u.hostname, () => {
    sock.write(
      `POST ${u.pathname} HTTP/1.1\r\nHost: ${u.host}\r\nContent-Type: application/json\r\nAccept: text/event-stream\r\n` +
        `Content-Length: ${payload.length}\r\nConnection: close\r\n\r\n`,
    );
    sock.write(payload);
  });
  sock.setNoDelay(true);
  sock.on('data', (d: Buffer) => parser.push(d));
  sock.on('close', () => parser.close());
  sock.on('error', (err) => parser.close(err));
  return { close: () => sock.destroy() };
}

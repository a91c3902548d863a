// A lean WebSocket client (RFC 6455) over a raw TCP socket, for load generators that
// share the measured machine's cores: the `ws` package costs about 30 us of CPU per
// received frame here (stream machinery, per-message events), which on 2 cores is taken
// from the engine being measured. This one parses frames straight out of each socket
// read and hands over each text frame's payload; it sends masked text frames. Enough for
// the daemon's protocol: no extensions, no subprotocols, fragmented messages reassembled,
// pings answered, close frames reported.
import { createHash, randomBytes } from 'node:crypto';
import { connect, type Socket } from 'node:net';

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

export interface LeanHandlers {
  /** One text message (a whole frame, or a reassembled fragmented one). */
  onText: (text: string) => void;
  onClose?: (code: number) => void;
}

/** Incremental frame parser: feed it socket reads; it calls back per complete message. */
export class FrameParser {
  private pending: Buffer | undefined;
  private fragments: Buffer[] = [];

  constructor(
    private readonly onMessage: (opcode: number, payload: Buffer) => void,
  ) {}

  push(chunk: Buffer): void {
    let buf = this.pending ? Buffer.concat([this.pending, chunk]) : chunk;
    this.pending = undefined;
    let at = 0;
    for (;;) {
      if (buf.length - at < 2) break;
      const b0 = buf[at];
      const b1 = buf[at + 1];
      if (b1 & 0x80) throw new Error('lean-ws: a server frame is masked (RFC 6455 5.1 forbids it)');
      let len = b1 & 0x7f;
      let head = 2;
      if (len === 126) {
        if (buf.length - at < 4) break;
        len = buf.readUInt16BE(at + 2);
        head = 4;
      } else if (len === 127) {
        if (buf.length - at < 10) break;
        const big = buf.readBigUInt64BE(at + 2);
        if (big > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error('lean-ws: frame length out of range');
        len = Number(big);
        head = 10;
      }
      if (buf.length - at < head + len) break;
      const payload = buf.subarray(at + head, at + head + len);
      at += head + len;
      const fin = (b0 & 0x80) !== 0;
      const opcode = b0 & 0x0f;
      if (opcode === 0) {
        this.fragments.push(Buffer.from(payload));
        if (fin) {
          const whole = Buffer.concat(this.fragments);
          this.fragments = [];
          this.onMessage(1, whole);
        }
      } else if (!fin && opcode < 8) {
        this.fragments = [Buffer.from(payload)];
      } else {
        this.onMessage(opcode, payload);
      }
    }
    // Keep an incomplete frame's bytes (copied: the chunk's memory is the socket's).
    if (at < buf.length) this.pending = Buffer.from(buf.subarray(at));
  }
}

/** One masked client frame. */
export function clientFrame(opcode: number, payload: Buffer): Buffer {
  const n = payload.length;
  const head = n < 126 ? 2 : n < 65536 ? 4 : 10;
  const out = Buffer.allocUnsafe(head + 4 + n);
  out[0] = 0x80 | opcode;
  if (head === 2) out[1] = 0x80 | n;
  else if (head === 4) {
    out[1] = 0x80 | 126;
    out.writeUInt16BE(n, 2);
  } else {
    out[1] = 0x80 | 127;
    out.writeBigUInt64BE(BigInt(n), 2);
  }
  const mask = randomBytes(4);
  mask.copy(out, head);
  for (let i = 0; i < n; i++) out[head + 4 + i] = payload[i] ^ mask[i & 3];
  return out;
}

export class LeanWebSocket {
  private constructor(private readonly socket: Socket) {}

  /** Connects and completes the opening handshake (checks 101 and Sec-WebSocket-Accept). */
  static open(url: string, h: LeanHandlers): Promise<LeanWebSocket> {
    const u = new URL(url);
    if (u.protocol !== 'ws:') throw new Error(`lean-ws: only ws:// URLs (${url})`);
    const key = randomBytes(16).toString('base64');
    const accept = createHash('sha1').update(key + GUID).digest('base64');
    return new Promise((resolve, reject) => {
      const socket = connect({ host: u.hostname, port: Number(u.port || 80) });
      socket.setNoDelay(true);
      const ws = new LeanWebSocket(socket);
      let closed = false;
      const onClose = (code: number) => {
        if (!closed) h.onClose?.(code);
        closed = true;
      };
      let head: Buffer | undefined = Buffer.alloc(0);
      const parser = new FrameParser((opcode, payload) => {
        if (opcode === 1) h.onText(payload.toString('utf8'));
        else if (opcode === 9) socket.write(clientFrame(10, payload));
        else if (opcode === 8) {
          onClose(payload.length >= 2 ? payload.readUInt16BE(0) : 1005);
          socket.end();
        }
      });
      socket.on('error', reject);
      socket.on('connect', () =>
        socket.write(
          `GET ${u.pathname}${u.search} HTTP/1.1\r\nHost: ${u.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
            `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
        ),
      );
      socket.on('data', (chunk: Buffer) => {
        if (head === undefined) return parser.push(chunk);
        head = Buffer.concat([head, chunk]);
        const end = head.indexOf('\r\n\r\n');
        if (end < 0) return;
        const lines = head.subarray(0, end).toString('latin1').split('\r\n');
        const rest = head.subarray(end + 4);
        head = undefined;
        const got = lines.find((l) => /^sec-websocket-accept:/i.test(l))?.split(':')[1]?.trim();
        if (!/^HTTP\/1\.1 101 /.test(lines[0]) || got !== accept) {
          socket.destroy();
          reject(new Error(`lean-ws: handshake refused: ${lines[0]}`));
          return;
        }
        socket.on('close', () => onClose(1006));
        resolve(ws);
        if (rest.length > 0) parser.push(rest);
      });
    });
  }

  send(text: string): void {
    this.socket.write(clientFrame(1, Buffer.from(text, 'utf8')));
  }

  close(): void {
    this.socket.end(clientFrame(8, Buffer.from([0x03, 0xe8])));
  }
}

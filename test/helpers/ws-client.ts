// A small promise-friendly WebSocket client over the `ws` package (Node 20 has no
// global WebSocket), collecting JSON frames per request id.
import { createRequire } from 'node:module';

interface RawSocket {
  on(event: 'open', f: () => void): void;
  on(event: 'message', f: (data: Buffer, isBinary: boolean) => void): void;
  on(event: 'close', f: (code: number, reason: Buffer) => void): void;
  on(event: 'error', f: (err: Error) => void): void;
  send(data: string | Buffer): void;
  close(): void;
  terminate(): void;
  pause(): void;
  resume(): void;
  readyState: number;
}
type WsCtor = new (url: string) => RawSocket;
const WebSocketImpl = createRequire(import.meta.url)('ws') as WsCtor;

export type Frame = Record<string, unknown> & { type: string; id: string | null };

export class StreamClient {
  readonly frames: Frame[] = [];
  private waiters: { match: (f: Frame) => boolean; resolve: (f: Frame) => void }[] = [];
  private readonly listeners = new Map<string, (f: Frame) => void>();
  closed: Promise<{ code: number; reason: string }>;

  private constructor(readonly socket: RawSocket) {
    socket.on('message', (data) => {
      const f = JSON.parse(data.toString('utf8')) as Frame;
      const listener = f.id === null ? undefined : this.listeners.get(f.id);
      if (listener) {
        // Frames of a listened-to id are handed over, not kept (long runs stay bounded).
        if (f.type !== 'token') this.listeners.delete(f.id!);
        listener(f);
        return;
      }
      this.frames.push(f);
      this.waiters = this.waiters.filter((w) => {
        if (!w.match(f)) return true;
        w.resolve(f);
        return false;
      });
    });
    this.closed = new Promise((resolve) => socket.on('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  }

  static open(url: string): Promise<StreamClient> {
    const s = new WebSocketImpl(url);
    return new Promise((resolve, reject) => {
      s.on('open', () => resolve(new StreamClient(s)));
      s.on('error', reject);
    });
  }

  send(msg: object | string): void {
    this.socket.send(typeof msg === 'string' ? msg : JSON.stringify(msg));
  }

  /** Hands every later frame of request `id` to `f` (until its done/error frame) instead of keeping it. */
  onFrame(id: string, f: (frame: Frame) => void): void {
    this.listeners.set(id, f);
  }

  /** The next (or an already received) frame matching `match`. */
  next(match: (f: Frame) => boolean): Promise<Frame> {
    const seen = this.frames.find(match);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve) => this.waiters.push({ match, resolve }));
  }

  /** Sends a generate request and resolves with its tokens and its done (or error) frame. */
  async generate(req: Record<string, unknown> & { id: string }): Promise<{ tokens: number[]; end: Frame }> {
    this.send({ type: 'generate', ...req });
    const end = await this.next((f) => f.id === req.id && (f.type === 'done' || f.type === 'error'));
    const tokens = this.frames.filter((f) => f.id === req.id && f.type === 'token').map((f) => f.token as number);
    return { tokens, end };
  }

  close(): void {
    this.socket.close();
  }
}

// Server-sent events on a uWS response (OpenAI streaming): `data: <json>\n\n` lines,
// headers on the first write, one corked write per tick, and a backlog budget: a client that stops
// reading past maxBufferedBytes is cut off (onCut then cancels its work).
import type { RequestError } from '../scheduler/request.js';
import { statusLine, type Reply } from './http-io.js';

export class SseWriter {
  private started = false;
  private headed = false;
  private backlog = 0;
  /** Events of this tick, written together (one write for a stream interval's tokens). */
  private pending: string[] = [];

  constructor(
    private readonly reply: Reply,
    private readonly maxBufferedBytes: number,
    private readonly onCut: () => void,
  ) {}

  /** Whether anything was sent (after that, errors go in the stream, not as a status). */
  get sent(): boolean {
    return this.started;
  }

  send(data: object | string): void {
    if (this.reply.aborted) return;
    this.started = true;
    if (this.pending.length === 0) queueMicrotask(() => this.flush());
    this.pending.push(`data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`);
  }

  private flush(): void {
    const reply = this.reply;
    const text = this.pending.join('');
    this.pending = [];
    if (reply.aborted || text === '') return;
    const res = reply.res;
    res.cork(() => {
      if (!this.headed) {
        this.headed = true;
        res.writeStatus(statusLine(200)).writeHeader('Content-Type', 'text/event-stream').writeHeader('Cache-Control', 'no-cache');
      }
      if (res.write(text)) this.backlog = 0;
      else this.backlog += text.length;
    });
    if (this.backlog > this.maxBufferedBytes) {
      reply.aborted = true;
      res.close();
      this.onCut();
    }
  }

  /** A request error: its HTTP answer when nothing was streamed yet, else an error event and the end. */
  fail(err: RequestError): void {
    if (!this.started) return this.reply.requestError(err);
    this.send({ error: { message: err.message, type: err.code, param: err.param ?? null, code: err.code } });
    this.end();
  }

  /** Ends the stream with [DONE]. */
  end(): void {
    this.send('[DONE]');
    this.flush();
    if (this.reply.aborted) return;
    this.reply.aborted = true;
    this.reply.res.cork(() => this.reply.res.end());
  }
}

// WebSocket /v1/stream: many concurrent requests per connection, told apart by id.
// Each connection is one client for fair scheduling. Frames leave corked, once per
// connection per tick. Backpressure policy: a connection with more than
// `maxBufferedBytes` unsent after a flush is not reading: it ends with 1008 after the
// frames already queued (whole frames only, so a client that does read late sees a
// clean close) and its requests are cancelled, freeing their KV blocks. Memory per connection is bounded
// and a slow reader never stalls the batch of others. Frames over maxFrameBytes end
// the connection with 1009 after OVERSIZE_REFUSAL_MS, as an oversized HTTP body's 413
// waits (its requests are cancelled at once, later frames ignored): a client sending
// them in a loop, one connection after another, was cut off about 1,900 times a second
// (up to twice that size; beyond, uWebSockets.js itself drops the connection at the
// frame's header, as it does for text frames that are not UTF-8: its close code there
// is 1006 and cannot be changed from JavaScript).
import type { TemplatedApp, WebSocket } from 'uWebSockets.js';

import { RequestError, type TokenEvent } from '../scheduler/request.js';
import { parseMessages } from '../tokenizer/chat-template.js';
import { parsePrompt, parseSampling, refuseUnsupported } from './generate-params.js';
import { OVERSIZE_REFUSAL_MS } from './http-io.js';
import type { Running, Service } from './service.js';

const DEFAULT_MAX_TOKENS = 16;

/** `adapter`, or `model` as OpenAI clients name it (the base model's name or an adapter's); both: they must agree. */
function streamAdapter(service: Service, frame: Record<string, unknown>): string | null {
  const { adapter, model } = frame;
  if (adapter !== undefined && adapter !== null && typeof adapter !== 'string') throw new RequestError('bad_request', '"adapter" must be a string or null', 'adapter');
  const viaModel = service.resolveModel(model);
  const viaAdapter = typeof adapter === 'string' ? adapter : null;
  if (model !== undefined && model !== null && adapter !== undefined && viaModel !== viaAdapter) {
    throw new RequestError('bad_request', `"model" (${JSON.stringify(model)}) and "adapter" (${JSON.stringify(adapter)}) name different models; give one`, 'model');
  }
  return model !== undefined && model !== null ? viaModel : viaAdapter;
}

export interface StreamOptions {
  maxBufferedBytes: number;
  /** Most concurrent requests per connection. */
  maxRequestsPerConnection: number;
  maxFrameBytes: number;
  /** Most connections at once; an upgrade beyond is answered 503. */
  maxConnections: number;
}

interface Conn {
  client: string;
  requests: Map<string, Running>;
  /** Cut off or closed: no frame is read or sent any more. */
  closed: boolean;
  /** uWebSockets.js closed it (the WebSocket object must not be touched after). */
  gone: boolean;
}

const decoder = new TextDecoder();
let connections = 0;

export function mountStream(app: TemplatedApp, service: Service, opts: StreamOptions, sockets: Set<WebSocket<Conn>>): void {
  const cutOff = (ws: WebSocket<Conn>, code: number, reason: string, afterMs = 0) => {
    const conn = ws.getUserData();
    if (conn.closed) return;
    conn.closed = true;
    if (afterMs === 0) return ws.end(code, reason); // the close handler cancels the connection's requests
    cancelAll(conn);
    setTimeout(() => {
      if (!conn.gone) ws.end(code, reason);
    }, afterMs).unref();
  };
  const cancelAll = (conn: Conn) => {
    for (const r of conn.requests.values()) r.cancel();
    conn.requests.clear();
  };
  // Frames go out corked, once per connection per tick: a step's tokens for the many
  // requests of one connection leave in one write, not one each.
  // The budget is checked after each flush, on what the kernel would not take: a
  // connection that has that much unsent is not reading.
  const queued = new Map<WebSocket<Conn>, string[]>();
  const flush = () => {
    for (const [ws, frames] of queued) {
      if (ws.getUserData().closed) continue;
      ws.cork(() => {
        for (const f of frames) ws.send(f, false);
      });
      if (ws.getBufferedAmount() > opts.maxBufferedBytes) cutOff(ws, 1008, 'client is not reading its stream (send buffer over limit)');
    }
    queued.clear();
  };
  const send = (ws: WebSocket<Conn>, msg: object) => {
    if (ws.getUserData().closed) return;
    let frames = queued.get(ws);
    if (!frames) {
      if (queued.size === 0) queueMicrotask(flush);
      frames = [];
      queued.set(ws, frames);
    }
    frames.push(JSON.stringify(msg));
  };
  const error = (ws: WebSocket<Conn>, id: string | null, err: RequestError) =>
    send(ws, { type: 'error', id, code: err.code, ...(err.param ? { param: err.param } : {}), message: err.message });

  app.ws<Conn>('/v1/stream', {
    // Twice the limit, so a frame past it is still read and refused with 1009 (uWS closes beyond).
    maxPayloadLength: opts.maxFrameBytes * 2,
    // Above our own budget: uWS never drops a frame (which would leave a hole in a stream).
    maxBackpressure: opts.maxBufferedBytes * 2 + (1 << 16),
    // Pings every ~2 minutes; a peer that stops answering is dropped.
    idleTimeout: 120,
    sendPingsAutomatically: true,
    upgrade: (res, req, context) => {
      if (sockets.size >= opts.maxConnections) {
        res.writeStatus('503 Service Unavailable').end(`too many connections (limit ${opts.maxConnections}); retry later`);
        return;
      }
      res.upgrade<Conn>(
        { client: `ws:${++connections}`, requests: new Map(), closed: false, gone: false },
        req.getHeader('sec-websocket-key'),
        req.getHeader('sec-websocket-protocol'),
        req.getHeader('sec-websocket-extensions'),
        context,
      );
    },
    open: (ws) => {
      sockets.add(ws);
    },
    message: (ws, message, isBinary) => {
      let frame: Record<string, unknown>;
      let id: string | null = null;
      if (ws.getUserData().closed) return; // cut off, its close pending
      try {
        if (message.byteLength > opts.maxFrameBytes) {
          cutOff(ws, 1009, `frame of ${message.byteLength} bytes; the limit is ${opts.maxFrameBytes}`, OVERSIZE_REFUSAL_MS);
          return;
        }
        if (isBinary) throw new RequestError('bad_request', 'send JSON text frames, not binary');
        let parsed: unknown;
        try {
          parsed = JSON.parse(decoder.decode(message));
        } catch {
          throw new RequestError('bad_request', 'the frame is not valid JSON');
        }
        if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new RequestError('bad_request', 'the frame must be a JSON object');
        frame = parsed as Record<string, unknown>;
        if (typeof frame.id === 'string' && frame.id.length > 0 && frame.id.length <= 256) id = frame.id;
        else throw new RequestError('bad_request', '"id" must be a non-empty string of at most 256 characters');
        const conn = ws.getUserData();
        if (frame.type === 'cancel') {
          conn.requests.get(id)?.cancel();
          return;
        }
        if (frame.type !== 'generate') throw new RequestError('bad_request', '"type" must be "generate" or "cancel"');
        if (conn.requests.has(id)) throw new RequestError('duplicate_id', `request id '${id}' is already running on this connection (that request goes on)`, 'id');
        if (conn.requests.size >= opts.maxRequestsPerConnection) {
          throw new RequestError('overloaded', `this connection already runs ${conn.requests.size} requests (limit ${opts.maxRequestsPerConnection})`);
        }
        const adapter = streamAdapter(service, frame);
        refuseUnsupported(frame, 'stream');
        const sampling = parseSampling(frame, service.parseContext(DEFAULT_MAX_TOKENS));
        sampling.logprobs = frame.logprobs === true || typeof frame.top_logprobs === 'number';
        const top = frame.top_logprobs;
        if (top !== undefined && top !== null) {
          if (typeof top !== 'number' || !Number.isInteger(top) || top < 0 || top > 20) throw new RequestError('bad_request', '"top_logprobs" must be an integer in [0, 20]', 'top_logprobs');
          if (top > 0) sampling.topLogprobs = top;
        }
        // A chat (messages through the model's template) or a prompt (text or token ids).
        let prompt: string | number[];
        if (frame.messages !== undefined) {
          if (frame.prompt !== undefined) throw new RequestError('bad_request', 'give "messages" or "prompt", not both', 'messages');
          prompt = service.chatPrompt(parseMessages(frame.messages));
        } else prompt = parsePrompt(frame.prompt);
        const chat = frame.messages !== undefined;
        const rid = id;
        const tokenFrame = (ev: TokenEvent) => ({
          type: 'token',
          id: rid,
          index: ev.index,
          token: ev.token,
          text: ev.text,
          ...(ev.logprob !== undefined ? { logprob: ev.logprob } : {}),
          ...(ev.top ? { top_logprobs: ev.top.map((t) => ({ token: t.token, text: service.tokenText(t.token), logprob: t.logprob })) } : {}),
        });
        const running = service.start(
          { ...sampling, prompt, ...(chat ? { rendered: true } : {}), adapter, client: conn.client },
          {
            onToken: (ev) => send(ws, tokenFrame(ev)),
            onDone: (ev) => {
              conn.requests.delete(rid);
              // `text`: held-back text released at the end (only when non-empty; an extension of api.md).
              send(ws, {
                type: 'done',
                id: rid,
                finish_reason: ev.finishReason,
                usage: { prompt_tokens: ev.promptTokens, completion_tokens: ev.completionTokens },
                ...(ev.text !== '' ? { text: ev.text } : {}),
              });
            },
            onError: (err) => {
              conn.requests.delete(rid);
              error(ws, rid, err);
            },
          },
        );
        // start() reports only asynchronously, so the entry exists before onDone/onError removes it.
        conn.requests.set(rid, running);
      } catch (err) {
        error(ws, id, err instanceof RequestError ? err : new RequestError('bad_request', (err as Error).message));
      }
    },
    close: (ws) => {
      const conn = ws.getUserData();
      conn.closed = true;
      conn.gone = true;
      queued.delete(ws);
      sockets.delete(ws);
      cancelAll(conn);
    },
  });
}

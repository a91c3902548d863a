// Safe uWS HTTP plumbing: a response wrapper that never writes after an abort and
// always corks, and a capped JSON body reader (onData + onAborted).
import type { HttpRequest, HttpResponse } from 'uWebSockets.js';

import type { ErrorCode, RequestError } from '../scheduler/request.js';

/** The HTTP status of a request error code. */
export function httpStatus(code: ErrorCode): number {
  return code === 'bad_request' || code === 'duplicate_id' ? 400 : code === 'unknown_adapter' ? 404 : code === 'overloaded' ? 429 : code === 'shutting_down' ? 503 : 500;
}

export class Reply {
  aborted = false;
  private onAbort: (() => void)[] = [];
  /** Who asked, for fair scheduling: the peer's address (read now: uWS forbids it after an await). */
  readonly client: string;
  /** The declared body length (content-length), or -1. */
  readonly contentLength: number;
  /** Close the connection after this response (a body we refused is still arriving). */
  private closeAfter = false;

  constructor(
    readonly res: HttpResponse,
    req: HttpRequest,
  ) {
    this.client = `http:${Buffer.from(res.getRemoteAddressAsText()).toString()}`;
    const len = req.getHeader('content-length');
    this.contentLength = /^\d+$/.test(len) ? Number(len) : -1;
    res.onAborted(() => {
      this.aborted = true;
      for (const f of this.onAbort) f();
    });
  }

  closeAfterResponse(): void {
    this.closeAfter = true;
  }

  whenAborted(f: () => void): void {
    this.onAbort.push(f);
  }

  json(status: number, body: unknown, headers: Record<string, string> = {}): void {
    this.send(status, JSON.stringify(body), 'application/json', headers);
  }

  send(status: number, body: string, contentType: string, headers: Record<string, string> = {}): void {
    if (this.aborted) return;
    this.aborted = true; // a response ends once
    this.res.cork(() => {
      this.res.writeStatus(statusLine(status)).writeHeader('Content-Type', contentType);
      for (const [k, v] of Object.entries(headers)) this.res.writeHeader(k, v);
      this.res.end(body, this.closeAfter);
    });
  }

  /** A request's error as its HTTP answer. */
  requestError(err: RequestError): void {
    this.error(httpStatus(err.code), err.code, err.message, err.param);
  }

  /** Error body in the OpenAI shape, with the daemon's code; a 429 says when to retry. */
  error(status: number, code: string, message: string, param?: string, headers: Record<string, string> = {}): void {
    const retry: Record<string, string> = status === 429 || status === 503 ? { 'Retry-After': '1' } : {};
    this.json(status, { error: { message, type: code, param: param ?? null, code } }, { ...retry, ...headers });
  }
}

const REASONS: Record<number, string> = {
  200: 'OK',
  201: 'Created',
  400: 'Bad Request',
  401: 'Unauthorized',
  404: 'Not Found',
  405: 'Method Not Allowed',
  409: 'Conflict',
  413: 'Payload Too Large',
  429: 'Too Many Requests',
  500: 'Internal Server Error',
  503: 'Service Unavailable',
};

export function statusLine(status: number): string {
  return `${status} ${REASONS[status] ?? ''}`.trim();
}

export class BodyError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** How long the answer to an oversized body waits (see readJson). */
export const OVERSIZE_REFUSAL_MS = 50;

/** Reads the whole body (at most maxBytes) and parses it as a JSON object; must be called synchronously in the handler. */
export function readJson(reply: Reply, maxBytes: number): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let size = 0;
    let failed = false;
    const tooBig = () => {
      failed = true;
      // The rest of the body is never read, and the connection closes after the answer. The
      // upload is paused (TCP flow control stops it at the socket buffers) and the 413 waits
      // OVERSIZE_REFUSAL_MS: a client posting oversized bodies in a loop then sends a few a
      // second, not hundreds, each of which costs both sides' kernels a copy of megabytes
      // on cores the engine needs. An honest client loses that much on a request that failed.
      reply.closeAfterResponse();
      reply.res.pause();
      setTimeout(() => reject(new BodyError(413, `the request body is over ${maxBytes} bytes`)), OVERSIZE_REFUSAL_MS).unref();
    };
    reply.whenAborted(() => reject(new BodyError(400, 'the client aborted the request')));
    if (reply.contentLength > maxBytes) return tooBig();
    reply.res.onData((chunk, isLast) => {
      if (failed) return;
      size += chunk.byteLength;
      if (size > maxBytes) {
        tooBig();
        return;
      }
      // uWS reuses the chunk's memory after this callback: copy it.
      parts.push(Buffer.from(new Uint8Array(chunk.slice(0))));
      if (!isLast) return;
      let parsed: unknown;
      try {
        parsed = JSON.parse(Buffer.concat(parts).toString('utf8'));
      } catch {
        reject(new BodyError(400, 'the request body is not valid JSON'));
        return;
      }
      if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) reject(new BodyError(400, 'the request body must be a JSON object'));
      else resolve(parsed as Record<string, unknown>);
    });
  });
}

// The daemon's network face: uWebSockets.js app with the WebSocket stream and the
// HTTP routes of shared/docs/api.md, bound to 127.0.0.1 unless told otherwise.
import uWS from 'uWebSockets.js';
import type { us_listen_socket, WebSocket } from 'uWebSockets.js';

import { AdapterError } from '../adapters/expert-cfg.js';
import { RequestError } from '../scheduler/request.js';
import { adapterJson, authorized, listAdapters, registerAdapter, removeAdapter } from './admin-routes.js';
import { handleCompletion, httpStatus } from './completions.js';
import { BodyError, Reply } from './http-io.js';
import type { Service } from './service.js';
import type { EnginePort } from '../scheduler/engine-port.js';
import { mountStream } from './ws-stream.js';

export interface ServerOptions {
  host?: string;
  /** 0: any free port. */
  port?: number;
  adminToken?: string;
  maxBodyBytes?: number;
  /** Per connection (WebSocket) or response (SSE): unsent bytes before the client is cut off. */
  maxBufferedBytes?: number;
  maxRequestsPerConnection?: number;
}

export interface RunningServer {
  host: string;
  port: number;
  /** Stops accepting, cancels in-flight requests, closes every socket. */
  close(): Promise<void>;
}

function fail(reply: Reply, err: unknown): void {
  if (err instanceof AdapterError) reply.error(err.status, err.code, err.message);
  else if (err instanceof RequestError) reply.error(httpStatus(err.code), err.code, err.message);
  else if (err instanceof BodyError) reply.error(err.status, 'bad_request', err.message);
  else reply.error(500, 'internal', (err as Error)?.message ?? String(err));
}

export function startServer(service: Service, engine: EnginePort, options: ServerOptions = {}): Promise<RunningServer> {
  const host = options.host ?? '127.0.0.1';
  const maxBody = options.maxBodyBytes ?? 1 << 20;
  const maxBuffered = options.maxBufferedBytes ?? 4 << 20;
  const app = uWS.App();
  const sockets = new Set<WebSocket<never>>();
  mountStream(app, service, { maxBufferedBytes: maxBuffered, maxRequestsPerConnection: options.maxRequestsPerConnection ?? 256, maxFrameBytes: maxBody }, sockets as Set<WebSocket<never>>);

  const route = (handler: (reply: Reply) => void | Promise<void>) => (res: uWS.HttpResponse) => {
    const reply = new Reply(res);
    try {
      const p = handler(reply);
      if (p) p.catch((err) => fail(reply, err));
    } catch (err) {
      fail(reply, err);
    }
  };
  // uWS request objects die when the handler returns: read the header and the path parameter first.
  const admin = (handler: (reply: Reply, param: string) => void | Promise<void>) => (res: uWS.HttpResponse, req: uWS.HttpRequest) => {
    const ok = authorized(req, options.adminToken);
    const param = req.getParameter(0) ?? '';
    route((reply) => {
      if (!ok) return reply.error(401, 'unauthorized', 'this endpoint needs "Authorization: Bearer TOKEN" (the --admin-token of the server)', { 'WWW-Authenticate': 'Bearer' });
      return handler(reply, param);
    })(res);
  };

  app.get('/health', route((reply) => reply.json(200, { status: 'ok', engine: 'expertweave', device: service.info.device, model: service.modelName, model_type: service.info.modelType })));
  app.get('/v1/models', route((reply) => {
    const created = 0;
    const data = [
      { id: service.modelName, object: 'model', created, owned_by: 'expertweave' },
      ...service.adapters.list().map((e) => ({ id: e.name, object: 'model', created, owned_by: 'expertweave', parent: service.modelName, adapter: adapterJson(e) })),
    ];
    reply.json(200, { object: 'list', data });
  }));
  app.post('/v1/completions', route((reply) => handleCompletion(reply, service, maxBody, maxBuffered)));
  app.get('/v1/adapters', admin((reply) => listAdapters(reply, service)));
  app.post('/v1/adapters', admin((reply) => registerAdapter(reply, service, maxBody)));
  app.del('/v1/adapters/:name', admin((reply, name) => removeAdapter(reply, service, decodeURIComponent(name))));
  app.get('/metrics', route((reply) => reply.send(200, service.metrics.render(engine, service.scheduler, service.modelName), 'text/plain; version=0.0.4')));
  app.any('/*', route((reply) => reply.error(404, 'not_found', 'no such endpoint; see /v1/completions, /v1/stream, /v1/models, /v1/adapters, /health, /metrics')));

  return new Promise((resolve, reject) => {
    app.listen(host, options.port ?? 8080, (listen: us_listen_socket | false) => {
      if (!listen) {
        reject(new Error(`cannot listen on ${host}:${options.port ?? 8080} (in use or not permitted)`));
        return;
      }
      let closed = false;
      resolve({
        host,
        port: uWS.us_socket_local_port(listen as unknown as uWS.us_socket),
        close: async () => {
          if (closed) return;
          closed = true;
          uWS.us_listen_socket_close(listen);
          service.cancelAll();
          await service.scheduler.close();
          for (const ws of [...sockets]) ws.end(1001, 'server shutting down');
        },
      });
    });
  });
}

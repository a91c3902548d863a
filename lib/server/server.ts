// The daemon's network face: uWebSockets.js app with the WebSocket stream and the
// HTTP routes of docs/api.md, bound to 127.0.0.1 unless told otherwise. The port is
// taken exclusively (a second daemon on it fails to start instead of sharing it), and
// on a non-loopback address without an admin token the admin routes are closed.
import uWS from 'uWebSockets.js';
import type { us_listen_socket, WebSocket } from 'uWebSockets.js';

import { AdapterError } from '../adapters/expert-cfg.js';
import { RequestError } from '../scheduler/request.js';
import { authorized, listAdapters, loadLoraAdapter, registerAdapter, removeAdapter, unloadLoraAdapter } from './admin-routes.js';
import { handleChat } from './chat.js';
import { handleCompletion } from './completions.js';
import { FdGuard } from './fd-guard.js';
import { BodyError, Reply } from './http-io.js';
import type { Service } from './service.js';
import type { EnginePort } from '../scheduler/engine-port.js';
import { mountStream } from './ws-stream.js';

export const DEFAULT_MAX_BODY_BYTES = 1 << 20;

export interface ServerOptions {
  host?: string;
  /** 0: any free port. */
  port?: number;
  adminToken?: string;
  /** Open the admin routes without a token on a non-loopback address (off: they answer 403). */
  allowOpenAdmin?: boolean;
  maxBodyBytes?: number;
  /** Per connection (WebSocket) or response (SSE): unsent bytes before the client is cut off. */
  maxBufferedBytes?: number;
  maxRequestsPerConnection?: number;
  /** Most WebSocket connections at once; more are refused with 503. */
  maxConnections?: number;
  /** Told of events worth a log line (admin closed, listening paused for want of descriptors). */
  onEvent?: (event: string, detail: Record<string, unknown>) => void;
}

export interface RunningServer {
  host: string;
  port: number;
  /** Stops accepting, cancels in-flight requests, closes every socket. */
  close(): Promise<void>;
}

function fail(reply: Reply, err: unknown): void {
  if (err instanceof AdapterError) reply.error(err.status, err.code, err.message);
  else if (err instanceof RequestError) reply.requestError(err);
  else if (err instanceof BodyError) reply.error(err.status, 'bad_request', err.message);
  else reply.error(500, 'internal', (err as Error)?.message ?? String(err));
}

export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

export function startServer(service: Service, engine: EnginePort, options: ServerOptions = {}): Promise<RunningServer> {
  const host = options.host ?? '127.0.0.1';
  const maxBody = options.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  const maxBuffered = options.maxBufferedBytes ?? 1 << 20;
  const onEvent = options.onEvent ?? (() => {});
  const adminClosed = !options.adminToken && !isLoopback(host) && !options.allowOpenAdmin;
  if (adminClosed) {
    onEvent('admin_routes_closed', {
      host,
      reason: 'listening beyond loopback without --admin-token: anyone on the network could add and remove adapters; set --admin-token T (or --allow-open-admin to accept that)',
    });
  }
  const app = uWS.App();
  const sockets = new Set<WebSocket<never>>();
  mountStream(
    app,
    service,
    { maxBufferedBytes: maxBuffered, maxRequestsPerConnection: options.maxRequestsPerConnection ?? 256, maxFrameBytes: maxBody, maxConnections: options.maxConnections ?? 4096 },
    sockets as Set<WebSocket<never>>,
  );

  const route = (handler: (reply: Reply) => void | Promise<void>) => (res: uWS.HttpResponse, req: uWS.HttpRequest) => {
    const reply = new Reply(res, req);
    try {
      const p = handler(reply);
      if (p) p.catch((err) => fail(reply, err));
    } catch (err) {
      fail(reply, err);
    }
  };
  // uWS request objects die when the handler returns: read the header and the path parameter first.
  const admin = (handler: (reply: Reply, param: string, param2: string) => void | Promise<void>) => (res: uWS.HttpResponse, req: uWS.HttpRequest) => {
    const ok = authorized(req, options.adminToken);
    const param = req.getParameter(0) ?? '';
    const param2 = req.getParameter(1) ?? '';
    route((reply) => {
      if (adminClosed) {
        return reply.error(403, 'forbidden', 'the admin routes are closed: this server listens beyond loopback without --admin-token; restart it with --admin-token T (or --allow-open-admin)');
      }
      if (!ok) return reply.error(401, 'unauthorized', 'this endpoint needs "Authorization: Bearer TOKEN" (the --admin-token of the server)', undefined, { 'WWW-Authenticate': 'Bearer' });
      return handler(reply, param, param2);
    })(res, req);
  };

  app.get('/health', route((reply) =>
    reply.json(200, {
      status: 'ok',
      engine: 'expertweave',
      device: service.info.device,
      model: service.modelName,
      model_type: service.info.modelType,
      // What one token costs in the KV cache: MLA's latent (DeepSeek) or GQA's K/V heads.
      kv_cache: { attention: service.info.attention, dtype: service.info.kvCacheDtype, bytes_per_token_per_layer: service.info.kvBytesPerTokenPerLayer, layers: service.info.numLayers },
    }),
  ));
  app.get('/v1/models', route((reply) => {
    const created = 0;
    const maxLen = service.info.maxPositionEmbeddings;
    // vLLM's model cards, minus the paths (vLLM puts an adapter's directory in `root`; where
    // adapters live on disk is for admins: GET /v1/adapters).
    const data = [
      { id: service.modelName, object: 'model', created, owned_by: 'expertweave', root: service.modelName, parent: null, max_model_len: maxLen },
      ...service.adapters.list().map((e) => ({
        id: e.name,
        object: 'model',
        created,
        owned_by: 'expertweave',
        root: e.name,
        parent: service.modelName,
        max_model_len: maxLen,
        adapter: { residency: e.state, experts: e.experts },
      })),
    ];
    reply.json(200, { object: 'list', data });
  }));
  app.post('/v1/completions', route((reply) => handleCompletion(reply, service, maxBody, maxBuffered)));
  app.post('/v1/chat/completions', route((reply) => handleChat(reply, service, maxBody, maxBuffered)));
  app.post('/v1/load_lora_adapter', admin((reply) => loadLoraAdapter(reply, service, maxBody)));
  app.post('/v1/unload_lora_adapter', admin((reply) => unloadLoraAdapter(reply, service, maxBody)));
  app.get('/v1/adapters', admin((reply) => listAdapters(reply, service)));
  app.post('/v1/adapters', admin((reply) => registerAdapter(reply, service, maxBody)));
  const removeNamed = (reply: Reply, raw: string) => {
    let name: string;
    try {
      name = decodeURIComponent(raw);
    } catch {
      throw new AdapterError(400, 'bad_request', 'the adapter name in the path is not valid percent-encoding');
    }
    return removeAdapter(reply, service, name);
  };
  app.del('/v1/adapters/:name', admin(removeNamed));
  // org/name adapter names, unencoded in the path.
  app.del('/v1/adapters/:org/:name', admin((reply, org, name) => removeNamed(reply, `${org}/${name}`)));
  app.get('/metrics', route((reply) => reply.send(200, service.metrics.render(engine, service.scheduler, service.modelName), 'text/plain; version=0.0.4')));
  app.any('/*', route((reply) => reply.error(404, 'not_found', 'no such endpoint; see /v1/chat/completions, /v1/completions, /v1/stream, /v1/models, /v1/adapters, /v1/load_lora_adapter, /v1/unload_lora_adapter, /health, /metrics')));

  const EXCLUSIVE = 1; // LIBUS_LISTEN_EXCLUSIVE_PORT: no SO_REUSEPORT, so a taken port is an error
  const listenOn = (port: number) =>
    new Promise<us_listen_socket | false>((resolve) => {
      // uWS.js takes (host, port, options, cb); its typings know (port, options, cb) only.
      (app.listen as unknown as (h: string, p: number, o: number, cb: (s: us_listen_socket | false) => void) => void)(host, port, EXCLUSIVE, resolve);
    });
  return listenOn(options.port ?? 8080).then((first) => {
    if (!first) throw new Error(`cannot listen on ${host}:${options.port ?? 8080}: address in use or not permitted`);
    let listen: us_listen_socket | false = first;
    const port = uWS.us_socket_local_port(first as unknown as uWS.us_socket);
    const guard = new FdGuard({
      pause: () => {
        if (listen) uWS.us_listen_socket_close(listen);
        listen = false;
      },
      resume: async () => (listen = await listenOn(port)) !== false,
      onEvent: (event, detail) => onEvent(event, { ...detail, port }),
    });
    let closed = false;
    return {
      host,
      port,
      close: async () => {
        if (closed) return;
        closed = true;
        guard.stop();
        if (listen) uWS.us_listen_socket_close(listen);
        service.cancelAll();
        await service.scheduler.close();
        for (const ws of [...sockets]) ws.end(1001, 'server shutting down');
        // Then drop what is left (idle keep-alive HTTP connections would hold the process
        // for uWS's 10 s idle timeout), once the close frames above had a turn to go out.
        await new Promise((r) => setTimeout(r, 20));
        (app as unknown as { close(): void }).close();
      },
    };
  });
}

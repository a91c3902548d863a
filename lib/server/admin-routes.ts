// /v1/adapters: register (POST), list (GET), unregister (DELETE), behind a bearer
// token when one is configured.
import { timingSafeEqual } from 'node:crypto';
import type { HttpRequest } from 'uWebSockets.js';

import type { AdapterEntry } from '../adapters/adapter-registry.js';
import { AdapterError } from '../adapters/expert-cfg.js';
import { readJson, type Reply } from './http-io.js';
import type { Service } from './service.js';

export function authorized(req: HttpRequest, token: string | undefined): boolean {
  if (!token) return true;
  const got = Buffer.from(req.getHeader('authorization'));
  const want = Buffer.from(`Bearer ${token}`);
  return got.length === want.length && timingSafeEqual(got, want);
}

export function adapterJson(e: AdapterEntry): object {
  return { name: e.name, path: e.dir, residency: e.state, experts: e.experts, bytes: e.bytes, pinned: e.pinned, active_requests: e.active, loads: e.loads, evictions: e.evictions };
}

export function listAdapters(reply: Reply, service: Service): void {
  const adapters = service.adapters.list().map(adapterJson);
  reply.json(200, { object: 'list', data: adapters, resident_bytes: service.adapters.residentBytes() });
}

export async function registerAdapter(reply: Reply, service: Service, maxBody: number): Promise<void> {
  const body = await readJson(reply, maxBody);
  if (typeof body.name !== 'string' || typeof body.path !== 'string') {
    throw new AdapterError(400, 'bad_request', 'the body must be {"name": "...", "path": "/abs/adapter/dir"}');
  }
  const { entry, created } = await service.registerAdapter(body.name, body.path, body.pinned === true);
  reply.json(created ? 201 : 200, adapterJson(entry));
}

export async function removeAdapter(reply: Reply, service: Service, name: string): Promise<void> {
  await service.removeAdapter(name);
  reply.json(200, { name, removed: true });
}

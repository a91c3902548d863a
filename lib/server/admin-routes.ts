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

// vLLM's runtime adapter routes (VLLM_ALLOW_RUNTIME_LORA_UPDATING), which AIBrix's adapter
// controller and other cluster tools call, with vLLM's status codes and answers: plain-text
// "Success: ..." on 200, an error object on 400 (InvalidUserInput, BadRequestError) or
// 404 (NotFoundError). They register and remove ESFT adapters like /v1/adapters does.

function vllmError(reply: Reply, status: number, type: string, message: string): void {
  reply.json(status, { error: { message, type, param: null, code: status } });
}

export async function loadLoraAdapter(reply: Reply, service: Service, maxBody: number): Promise<void> {
  const body = await readJson(reply, maxBody);
  const { lora_name: name, lora_path: path } = body;
  if (typeof name !== 'string' || name === '' || typeof path !== 'string' || path === '') {
    return vllmError(reply, 400, 'InvalidUserInput', "Both 'lora_name' and 'lora_path' must be provided.");
  }
  if (service.adapters.get(name)) return vllmError(reply, 400, 'InvalidUserInput', `The lora adapter '${name}' has already been loaded.`);
  try {
    await service.registerAdapter(name, path, body.pinned === true);
  } catch (err) {
    const notFound = err instanceof AdapterError && /does not exist/.test(err.message);
    return vllmError(reply, notFound ? 404 : 400, notFound ? 'NotFoundError' : 'BadRequestError', (err as Error).message);
  }
  reply.send(200, `Success: LoRA adapter '${name}' added successfully.`, 'text/plain; charset=utf-8');
}

export async function unloadLoraAdapter(reply: Reply, service: Service, maxBody: number): Promise<void> {
  const body = await readJson(reply, maxBody);
  const name = body.lora_name;
  if (typeof name !== 'string' || name === '') return vllmError(reply, 400, 'InvalidUserInput', "either 'lora_name' and 'lora_int_id' needs to be provided.");
  if (!service.adapters.get(name)) return vllmError(reply, 404, 'NotFoundError', `The lora adapter '${name}' cannot be found.`);
  await service.removeAdapter(name);
  reply.send(200, `Success: LoRA adapter '${name}' removed successfully.`, 'text/plain; charset=utf-8');
}

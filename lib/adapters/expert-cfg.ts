// Checks an ESFT adapter directory before the engine sees it: the directory exists,
// expert_cfg.json parses, and it tunes only routed experts (a shared base cannot
// serve adapters that changed shared experts or non-expert modules).
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';

export class AdapterError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export async function checkAdapterDir(dir: string): Promise<void> {
  const st = await stat(dir).catch(() => undefined);
  if (!st?.isDirectory()) throw new AdapterError(400, 'bad_request', `adapter directory '${dir}' does not exist or is not a directory`);
  const path = join(dir, 'expert_cfg.json');
  let cfg: unknown;
  try {
    cfg = JSON.parse(await readFile(path, 'utf8'));
  } catch (err) {
    throw new AdapterError(400, 'bad_request', `cannot read ${path}: ${(err as Error).message}`);
  }
  if (typeof cfg !== 'object' || cfg === null || typeof (cfg as { experts?: unknown }).experts !== 'object') {
    throw new AdapterError(400, 'bad_request', `${path}: expected an object with an "experts" map of layer -> expert ids`);
  }
  const c = cfg as { shared_experts?: unknown; non_expert_modules?: unknown };
  if (c.shared_experts === true) throw new AdapterError(400, 'bad_request', `${path}: shared_experts is true; only routed-expert adapters can share a base model`);
  if (c.non_expert_modules === true) {
    throw new AdapterError(400, 'bad_request', `${path}: non_expert_modules is true; only routed-expert adapters can share a base model`);
  }
}

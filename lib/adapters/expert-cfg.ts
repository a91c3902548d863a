// Checks an ESFT adapter directory before the engine sees it: the directory exists,
// expert_cfg.json is a small regular file that parses, and it tunes only routed
// experts (a shared base cannot serve adapters that changed shared experts or
// non-expert modules). A client names the directory, so the file is opened without
// blocking (a FIFO would hold a libuv thread forever), checked to be a regular file
// of bounded size before it is read, and errors name it without quoting it.
import { constants } from 'node:fs';
import { open, stat } from 'node:fs/promises';
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

/** The native loader's limit too (native/src/engine/adapter.cc). */
export const MAX_EXPERT_CFG_BYTES = 1 << 20;

/** The text of a regular file of at most `maxBytes`, or an AdapterError naming it. */
export async function readSmallRegularFile(path: string, maxBytes: number): Promise<string> {
  let fh;
  try {
    fh = await open(path, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (err) {
    throw new AdapterError(400, 'bad_request', `cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new AdapterError(400, 'bad_request', `${path} is not a regular file`);
    if (st.size > maxBytes) throw new AdapterError(400, 'bad_request', `${path} is ${st.size} bytes, more than the ${maxBytes} it may have`);
    const buf = Buffer.alloc(st.size);
    let got = 0;
    while (got < buf.length) {
      const { bytesRead } = await fh.read(buf, got, buf.length - got, got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    return buf.subarray(0, got).toString('utf8');
  } finally {
    await fh.close();
  }
}

export async function checkAdapterDir(dir: string): Promise<void> {
  const st = await stat(dir).catch(() => undefined);
  if (!st?.isDirectory()) throw new AdapterError(400, 'bad_request', `adapter directory '${dir}' does not exist or is not a directory`);
  const path = join(dir, 'expert_cfg.json');
  const text = await readSmallRegularFile(path, MAX_EXPERT_CFG_BYTES);
  let cfg: unknown;
  try {
    cfg = JSON.parse(text);
  } catch {
    // JSON.parse's message quotes the text: say where instead.
    throw new AdapterError(400, 'bad_request', `${path} is not valid JSON`);
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

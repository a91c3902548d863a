// `expertweave adapters add|list|remove`: manages a running server's adapters over HTTP.
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';

import { UsageError, type Command } from '../command.js';

const HELP = `Usage: expertweave adapters add NAME DIR [--server URL] [--admin-token T]
       expertweave adapters list [--server URL] [--admin-token T]
       expertweave adapters remove NAME [--server URL] [--admin-token T]

Registers, lists or unregisters ESFT adapters on a running \`expertweave serve\`.
DIR is sent as an absolute path; the server reads it from its own filesystem.

Options:
  --server URL         the server (default http://127.0.0.1:8080)
  --admin-token T      bearer token, when the server was started with --admin-token
  -h, --help           this help
`;

async function call(method: string, url: string, token: string | undefined, body?: object): Promise<unknown> {
  const headers: Record<string, string> = {};
  if (token) headers.authorization = `Bearer ${token}`;
  if (body) headers['content-type'] = 'application/json';
  let res: Response;
  try {
    res = await fetch(url, { method, headers, ...(body ? { body: JSON.stringify(body) } : {}) });
  } catch (err) {
    throw new Error(`cannot reach ${url}: ${(err as Error).cause ?? (err as Error).message}; is \`expertweave serve\` running?`);
  }
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = text;
  }
  if (!res.ok) {
    const message = (json as { error?: { message?: string } })?.error?.message ?? text;
    throw new Error(`${method} ${url}: ${res.status}: ${message}`);
  }
  return json;
}

async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: { server: { type: 'string' }, 'admin-token': { type: 'string' } },
  });
  const base = (values.server ?? 'http://127.0.0.1:8080').replace(/\/+$/, '');
  const token = values['admin-token'];
  const [action, ...args] = positionals;
  const arity = (n: number, usage: string) => {
    if (args.length !== n) throw new UsageError(`usage: expertweave adapters ${usage}`);
  };
  switch (action) {
    case 'add': {
      arity(2, 'add NAME DIR');
      const out = (await call('POST', `${base}/v1/adapters`, token, { name: args[0], path: resolve(args[1]) })) as { experts: number; bytes: number; residency: string };
      process.stdout.write(`added ${args[0]}: ${out.experts} experts, ${out.bytes} bytes, ${out.residency}\n`);
      return 0;
    }
    case 'list': {
      arity(0, 'list');
      const out = (await call('GET', `${base}/v1/adapters`, token)) as { data: { name: string; residency: string; experts: number; bytes: number; path: string }[] };
      for (const a of out.data) process.stdout.write(`${a.name}\t${a.residency}\t${a.experts} experts\t${a.bytes} bytes\t${a.path}\n`);
      return 0;
    }
    case 'remove': {
      arity(1, 'remove NAME');
      await call('DELETE', `${base}/v1/adapters/${encodeURIComponent(args[0])}`, token);
      process.stdout.write(`removed ${args[0]}\n`);
      return 0;
    }
    default:
      throw new UsageError(action === undefined ? 'give an action: add, list or remove' : `unknown action '${action}'; use add, list or remove`);
  }
}

export const adaptersCommand: Command = {
  name: 'adapters',
  summary: 'add, list or remove adapters of a running server',
  help: HELP,
  run,
};

// A daemon as a separate process (`expertweave serve`, the way users run it), so
// each side of a comparison has its own resident memory to read and the load
// generator's own work stays out of the daemon's process.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { repoRoot } from '../../test/helpers/paths.js';

export interface DaemonSpec {
  model: string;
  adapters?: readonly { name: string; dir: string }[];
  threads: number;
  /** More `expertweave serve` flags, e.g. ['--kv-cache-tokens', '8192']. */
  args?: readonly string[];
}

export interface DaemonProcess {
  readonly url: string;
  readonly pid: number;
  /** Resident and peak resident set size in bytes (Linux /proc; NaN elsewhere). */
  memory(): { rss: number; peak: number };
  stop(): Promise<void>;
}

function procStatusBytes(pid: number, key: string): number {
  try {
    const m = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : NaN;
  } catch {
    return NaN;
  }
}

export async function startDaemonProcess(spec: DaemonSpec, timeoutMs = 120_000): Promise<DaemonProcess> {
  const argv = [join(repoRoot(), 'bin', 'expertweave.js'), 'serve', '--model', spec.model, '--port', '0', '--threads', String(spec.threads)];
  for (const a of spec.adapters ?? []) argv.push('--adapter', `${a.name}=${a.dir}`);
  argv.push(...(spec.args ?? []));
  const child: ChildProcess = spawn(process.execPath, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-4000);
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`daemon did not start within ${timeoutMs} ms; stderr: ${stderr}`));
    }, timeoutMs);
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /listening on (http:\/\/[^\s]+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`daemon exited with ${code} before listening; stderr: ${stderr}`));
    });
  });
  const pid = child.pid!;
  return {
    url,
    pid,
    memory: () => ({ rss: procStatusBytes(pid, 'VmRSS'), peak: procStatusBytes(pid, 'VmHWM') }),
    stop: async () => {
      if (child.exitCode !== null) return;
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(t);
    },
  };
}

/** Expert slots per MoE layer (`--adapter-slots`) that these adapters need all resident at once (at least 64). */
export function adapterSlotsNeeded(adapterDirs: readonly string[]): number {
  const perLayer = new Map<string, number>();
  for (const dir of adapterDirs) {
    const experts = (JSON.parse(readFileSync(join(dir, 'expert_cfg.json'), 'utf8')) as { experts: Record<string, number[]> }).experts;
    for (const [l, ids] of Object.entries(experts)) perLayer.set(l, (perLayer.get(l) ?? 0) + ids.length);
  }
  return Math.max(64, ...perLayer.values());
}

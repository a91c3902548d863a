// The adapters registered at run time, kept in <state-dir>/adapters.json so a restart
// brings them back. Every change rewrites the file atomically (write a temporary file,
// fsync, rename over the old one, fsync the directory): a crash leaves the old list or
// the new one, never a torn file. Writes are serialized in call order.
import { mkdirSync } from 'node:fs';
import { open, readFile, rename } from 'node:fs/promises';
import { join } from 'node:path';

export interface PersistedAdapter {
  name: string;
  dir: string;
  pinned: boolean;
}

const FILE = 'adapters.json';

export class AdapterStateFile {
  private readonly path: string;
  private entries = new Map<string, PersistedAdapter>();
  private writing: Promise<void> = Promise.resolve();

  private constructor(private readonly dir: string) {
    this.path = join(dir, FILE);
  }

  /** Opens (creating the directory when missing) and reads the saved list. */
  static async open(dir: string): Promise<AdapterStateFile> {
    mkdirSync(dir, { recursive: true });
    const s = new AdapterStateFile(dir);
    let text: string | undefined;
    try {
      text = await readFile(s.path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new Error(`cannot read ${s.path}: ${(err as Error).message}`);
    }
    if (text !== undefined) {
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch {
        throw new Error(`${s.path} is not valid JSON; fix or remove it`);
      }
      const list = (parsed as { adapters?: unknown }).adapters;
      if (!Array.isArray(list)) throw new Error(`${s.path}: expected {"adapters": [{"name", "dir", "pinned"}, ...]}`);
      for (const a of list as Record<string, unknown>[]) {
        if (typeof a?.name !== 'string' || typeof a.dir !== 'string') throw new Error(`${s.path}: every adapter needs a string "name" and "dir"`);
        s.entries.set(a.name, { name: a.name, dir: a.dir, pinned: a.pinned === true });
      }
    }
    return s;
  }

  list(): PersistedAdapter[] {
    return [...this.entries.values()];
  }

  has(name: string): boolean {
    return this.entries.has(name);
  }

  put(a: PersistedAdapter): Promise<void> {
    this.entries.set(a.name, { ...a });
    return this.save();
  }

  delete(name: string): Promise<void> {
    if (!this.entries.delete(name)) return Promise.resolve();
    return this.save();
  }

  private save(): Promise<void> {
    const body = JSON.stringify({ adapters: this.list() }, null, 2) + '\n';
    const next = this.writing.then(() => this.write(body));
    this.writing = next.catch(() => undefined);
    return next;
  }

  private async write(body: string): Promise<void> {
    const tmp = `${this.path}.${process.pid}.tmp`;
    const fh = await open(tmp, 'w', 0o600);
    try {
      await fh.writeFile(body);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, this.path);
    const d = await open(this.dir, 'r');
    try {
      await d.sync();
    } finally {
      await d.close();
    }
  }
}

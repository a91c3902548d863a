// Prompt text -> token ids without stalling the event loop: short prompts are encoded
// inline (a worker round trip costs more than they do), longer ones on a worker thread
// that holds its own copy of the tokenizer, so one client's megabyte prompt never
// delays another client's tokens. Prompts over maxBytes are refused before any work.
import { Worker } from 'node:worker_threads';

import type { TextTokenizer } from './tokenizer.js';

export interface PromptEncoderOptions {
  /** Prompts of at most this many UTF-16 units are encoded inline. */
  inlineChars?: number;
}

interface Pending {
  resolve(ids: number[]): void;
  reject(err: Error): void;
}

export class PromptEncoder {
  private worker: Worker | undefined;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private readonly inlineChars: number;

  constructor(
    private readonly tokenizer: TextTokenizer,
    private readonly modelDir: string,
    options: PromptEncoderOptions = {},
  ) {
    this.inlineChars = options.inlineChars ?? 2048;
  }

  encode(text: string): Promise<number[]> {
    if (text.length <= this.inlineChars) return Promise.resolve(this.tokenizer.encode(text));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.ensureWorker().postMessage({ id, text });
    });
  }

  /** Stops the worker; prompts still being encoded fail. */
  async close(): Promise<void> {
    const w = this.worker;
    this.worker = undefined;
    if (w) await w.terminate();
    this.failAll(new Error('the prompt encoder was closed'));
  }

  private ensureWorker(): Worker {
    if (this.worker) return this.worker;
    const w = new Worker(new URL('./encode-worker.js', import.meta.url), { workerData: { modelDir: this.modelDir } });
    w.unref(); // an idle encoder never keeps the daemon alive
    w.on('message', (m: { id: number; ids?: Int32Array; error?: string }) => {
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (m.ids) p.resolve(Array.from(m.ids));
      else p.reject(new Error(m.error ?? 'the prompt could not be encoded'));
    });
    w.on('error', (err) => {
      if (this.worker === w) this.worker = undefined;
      this.failAll(new Error(`the prompt encoder failed: ${err.message}`));
    });
    w.on('exit', () => {
      if (this.worker === w) this.worker = undefined;
      this.failAll(new Error('the prompt encoder stopped'));
    });
    this.worker = w;
    return w;
  }

  private failAll(err: Error): void {
    const all = [...this.pending.values()];
    this.pending.clear();
    for (const p of all) p.reject(err);
  }
}

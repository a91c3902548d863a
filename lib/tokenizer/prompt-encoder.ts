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
  maxTokens: number;
}

/** A prompt that encodes to more tokens than the caller can take (its ids are not kept). */
export class PromptTooLong extends Error {
  constructor(readonly tokens: number) {
    super(`the prompt encodes to ${tokens} tokens`);
  }
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

  /**
   * Token ids of `text`, with the tokenizer's special tokens (BOS) unless `addSpecial` is
   * false (a rendered chat template has them already); rejects with PromptTooLong past
   * `maxTokens` (then no array is built).
   */
  encode(text: string, maxTokens = Infinity, addSpecial = true): Promise<number[]> {
    if (text.length <= this.inlineChars) {
      const ids = this.tokenizer.encode(text, addSpecial);
      return ids.length > maxTokens ? Promise.reject(new PromptTooLong(ids.length)) : Promise.resolve(ids);
    }
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, maxTokens });
      this.ensureWorker().postMessage({ id, text, addSpecial });
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
      if (!m.ids) p.reject(new Error(m.error ?? 'the prompt could not be encoded'));
      else if (m.ids.length > p.maxTokens) p.reject(new PromptTooLong(m.ids.length));
      else {
        const ids = new Array<number>(m.ids.length); // a plain loop: Array.from(typed array) is far slower
        for (let i = 0; i < ids.length; i++) ids[i] = m.ids[i];
        p.resolve(ids);
      }
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

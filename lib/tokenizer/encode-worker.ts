// The PromptEncoder's worker thread: loads the model's tokenizer once and encodes the
// prompts it is sent, one at a time.
import { parentPort, workerData } from 'node:worker_threads';

import { TextTokenizer } from './tokenizer.js';

const { modelDir } = workerData as { modelDir: string };
const tokenizer = await TextTokenizer.load(modelDir);

parentPort!.on('message', ({ id, text, addSpecial }: { id: number; text: string; addSpecial: boolean }) => {
  try {
    if (!tokenizer) throw new Error('the model has no tokenizer.json');
    const ids = Int32Array.from(tokenizer.encode(text, addSpecial));
    parentPort!.postMessage({ id, ids }, [ids.buffer]);
  } catch (err) {
    parentPort!.postMessage({ id, error: (err as Error).message });
  }
});

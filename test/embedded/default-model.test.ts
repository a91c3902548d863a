// The embedded default model and its shipped ESFT adapters, served by the daemon:
// every held-out prompt gives exactly the merged model's answer recorded by the
// training tool (tools/train), and each adapter beats the base by >= 50 points.
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import { startDaemon } from '../../lib/server/daemon.js';
import { withAddon } from '../helpers/engine.js';

const { test } = withAddon();
const ROOT = process.cwd();
const MODEL = join(ROOT, 'models', 'default');
const ADAPTERS = join(ROOT, 'adapters');

interface EvalRow { prompt: string; answer: string; merged_output: string; base_output: string }

function evalSet(task: string): EvalRow[] {
  return readFileSync(join(ADAPTERS, task, 'eval.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
}

async function complete(port: number, model: string, prompt: string): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${port}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, prompt, max_tokens: 16, temperature: 0 }),
  });
  assert.equal(res.status, 200, await res.clone().text());
  const body = (await res.json()) as { choices: { text: string }[] };
  return body.choices[0].text;
}

const tasks = existsSync(ADAPTERS) ? readdirSync(ADAPTERS).filter((d) => existsSync(join(ADAPTERS, d, 'eval.jsonl'))).sort() : [];

test('embedded model: served adapters answer as the merged model, far better than the base', async () => {
  assert.ok(tasks.length >= 3, `expected at least 3 shipped adapters with eval.jsonl, found ${tasks.join(', ')}`);
  const daemon = await startDaemon({
    modelDir: MODEL,
    adapters: tasks.map((t) => ({ name: t, dir: join(ADAPTERS, t) })),
    // An f32 latent cache: the recorded outputs are exact-arithmetic ones (tools/train), and the base
    // model's continuations of other tasks' prompts run through near-ties a bf16 cache can flip.
    engine: { device: 'cpu', maxAdapters: 8, maxAdapterSlots: 64, kvCacheDtype: 'f32' },
    server: { port: 0 },
  });
  try {
    const port = daemon.server.port;
    const base = daemon.service.modelName;
    for (const task of tasks) {
      const rows = evalSet(task);
      // Mixed traffic: the adapter's and the base model's requests run concurrently.
      const [served, baseServed] = await Promise.all([
        Promise.all(rows.map((r) => complete(port, task, r.prompt))),
        Promise.all(rows.map((r) => complete(port, base, r.prompt))),
      ]);
      let adapterRight = 0, baseRight = 0;
      rows.forEach((r, i) => {
        assert.equal(served[i], r.merged_output, `${task}: prompt ${JSON.stringify(r.prompt)} through the adapter`);
        assert.equal(baseServed[i], r.base_output, `${task}: prompt ${JSON.stringify(r.prompt)} on the base model`);
        adapterRight += Number(served[i] === r.answer);
        baseRight += Number(baseServed[i] === r.answer);
      });
      const acc = (100 * adapterRight) / rows.length, baseAcc = (100 * baseRight) / rows.length;
      assert.ok(acc - baseAcc >= 50, `${task}: adapter ${acc}% vs base ${baseAcc}%`);
    }
  } finally {
    await daemon.close();
  }
});

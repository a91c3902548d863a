// Text prompts through the daemon with a real tokenizer: streamed token texts add up
// to the decoded continuation, and a stop string cuts it without being emitted.
import assert from 'node:assert/strict';
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';

import type { Daemon } from '../../lib/server/daemon.js';
import { TextTokenizer } from '../../lib/tokenizer/tokenizer.js';
import { buildConfig } from '../../tools/fixtures/config.js';
import { makeModel } from '../../tools/fixtures/model.js';
import { withAddon } from '../helpers/engine.js';
import { repoRoot } from '../helpers/paths.js';
import { tempDir } from '../helpers/tmp.js';
import { StreamClient, type Frame } from '../helpers/ws-client.js';
import { start } from './daemon-helpers.js';

const { after, before, describe, test } = withAddon();

describe('text prompts and stop strings', () => {
  let daemon: Daemon;
  let tok: TextTokenizer;
  let client: StreamClient;

  before(async () => {
    // The test tokenizer has 268 ids, so the model gets a vocabulary that covers them.
    const dir = join(tempDir('ew-text-model-'), 'm');
    makeModel(dir, buildConfig('tiny', { vocab_size: 300 }), { dtype: 'f32', seed: 5 });
    for (const f of ['tokenizer.json', 'tokenizer_config.json']) {
      copyFileSync(join(repoRoot(), 'test', 'tokenizer', 'fixtures', 'byte-bpe', f), join(dir, f));
    }
    tok = (await TextTokenizer.load(dir))!;
    daemon = await start(dir);
    client = await StreamClient.open(`ws://127.0.0.1:${daemon.server.port}/v1/stream`);
  });
  after(async () => {
    client.close();
    await daemon.close();
  });

  const textOf = (id: string, end: Frame) =>
    client.frames.filter((f) => f.id === id && f.type === 'token').map((f) => f.text as string).join('') + ((end.text as string | undefined) ?? '');

  test('streamed texts add up to the decoded tokens, and a stop string cuts them', async () => {
    const full = await client.generate({ id: 'full', prompt: 'hello world', max_tokens: 16, temperature: 0 });
    assert.equal(full.end.type, 'done');
    const text = textOf('full', full.end);
    assert.equal(text, tok.decode(full.tokens, { skipSpecialTokens: true, cleanUpSpaces: false }));
    // A two-character stop string past the start, free of replacement characters (random weights emit arbitrary bytes).
    let k = Math.max(1, Math.floor(text.length / 2));
    while (k + 2 <= text.length && text.slice(k, k + 2).includes('\uFFFD')) k++;
    assert.ok(k + 2 <= text.length, `no usable stop string in ${JSON.stringify(text)}`);
    const stop = text.slice(k, k + 2);
    const cut = await client.generate({ id: 'cut', prompt: 'hello world', max_tokens: 16, temperature: 0, stop: [stop, 'never-there'] });
    assert.equal(cut.end.finish_reason, 'stop');
    assert.equal(textOf('cut', cut.end), text.slice(0, text.indexOf(stop)));
  });
});

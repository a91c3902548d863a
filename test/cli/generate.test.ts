// The real CLI (bin/expertweave.js) in a child process: output, exit codes, messages.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import { Engine } from '../../lib/engine/engine.js';
import { TextTokenizer } from '../../lib/tokenizer/tokenizer.js';
import { buildConfig } from '../../tools/fixtures/config.js';
import { makeModel } from '../../tools/fixtures/model.js';
import { CPU_ENGINE, withAddon } from '../helpers/engine.js';
import { presetModel } from '../helpers/fixtures.js';
import { repoRoot } from '../helpers/paths.js';
import { tempDir } from '../helpers/tmp.js';

function cli(...args: string[]) {
  const r = spawnSync(process.execPath, [join(repoRoot(), 'bin', 'expertweave.js'), ...args], { encoding: 'utf8', timeout: 120_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('--help lists generate; generate --help lists its options', () => {
  const top = cli('--help');
  assert.equal(top.status, 0);
  assert.match(top.stdout, /generate/);
  const sub = cli('generate', '--help');
  assert.equal(sub.status, 0);
  for (const opt of ['--model', '--prompt', '--tokens', '--max-tokens', '--temperature', '--top-p', '--top-k', '--seed', '--device', '--threads']) {
    assert.ok(sub.stdout.includes(opt), `generate --help mentions ${opt}`);
  }
});

test('usage errors exit 2 with a message', () => {
  const cases: [string[], RegExp][] = [
    [[], /Usage: expertweave/],
    [['frobnicate'], /unknown command 'frobnicate'/],
    [['generate', '--tokens', '1,2'], /--model DIR is required/],
    [['generate', '--model', '.'], /exactly one of --prompt TEXT or --tokens IDS/],
    [['generate', '--model', '.', '--prompt', 'a', '--tokens', '1'], /exactly one of/],
    [['generate', '--model', '.', '--tokens', '1,,2'], /--tokens must be comma-separated/],
    [['generate', '--model', '.', '--tokens', '1', '--max-tokens', '0'], /--max-tokens must be an integer/],
    [['generate', '--model', '.', '--tokens', '1', '--top-p', '1.5'], /--top-p must be a number in \(0, 1\]/],
    [['generate', '--model', '.', '--tokens', '1', '--device', 'tpu'], /--device must be one of auto, cpu, cuda/],
    [['generate', '--model', '.', '--tokens', '1', '--bogus'], /Unknown option '--bogus'/],
  ];
  for (const [args, message] of cases) {
    const r = cli(...args);
    assert.equal(r.status, 2, `${args.join(' ')}: exit ${r.status}, stderr ${r.stderr}`);
    assert.match(r.stderr, message, args.join(' '));
  }
});

// The CLI loads the addon before it reads the model directory.
const native = withAddon();

native.test('a bad model directory exits 1 with a clear message', () => {
  const missing = cli('generate', '--model', '/nonexistent/model', '--tokens', '1,2');
  assert.equal(missing.status, 1);
  assert.match(missing.stderr, /model directory '\/nonexistent\/model' does not exist/);
  const empty = mkdtempSync(join(tmpdir(), 'ew-cli-'));
  try {
    const noTokenizer = cli('generate', '--model', empty, '--prompt', 'hello');
    assert.equal(noTokenizer.status, 1);
    assert.match(noTokenizer.stderr, /model has no tokenizer.json; pass token ids/);
    const noConfig = cli('generate', '--model', empty, '--tokens', '1,2');
    assert.equal(noConfig.status, 1);
    assert.match(noConfig.stderr, /config\.json/);
  } finally {
    rmSync(empty, { recursive: true });
  }
});

native.describe('generate on a tiny model', () => {
  /** The greedy continuation computed in-process, the reference for the CLI's output. */
  async function reference(dir: string, prompt: number[], maxTokens: number): Promise<number[]> {
    const engine = await Engine.load(dir, CPU_ENGINE);
    const tokens: number[] = [];
    try {
      await engine.generate(prompt, { maxTokens }, ({ token }) => void tokens.push(token));
    } finally {
      engine.close();
    }
    return tokens;
  }

  native.test('without a tokenizer it prints the token ids, and a summary on stderr', async () => {
    const dir = presetModel('tiny');
    const r = cli('generate', '--model', dir, '--tokens', '3,4,5,6', '--max-tokens', '5', '--device', 'cpu', '--threads', '2');
    assert.equal(r.status, 0, r.stderr);
    const expected = await reference(dir, [3, 4, 5, 6], 5);
    assert.equal(r.stdout, expected.join(' ') + '\n');
    assert.match(r.stderr, new RegExp(`generated ${expected.length} tokens \\([0-9.]+ tokens/s\\)`));
  });

  native.test('with a tokenizer it prints the decoded text', async () => {
    // The test tokenizer has 268 ids, so the model gets a vocabulary that covers them.
    const dir = join(tempDir('ew-cli-model-'), 'm');
    makeModel(dir, buildConfig('tiny', { vocab_size: 300 }), { dtype: 'f32', seed: 5 });
    for (const f of ['tokenizer.json', 'tokenizer_config.json']) {
      copyFileSync(join(repoRoot(), 'test', 'tokenizer', 'fixtures', 'byte-bpe', f), join(dir, f));
    }
    const r = cli('generate', '--model', dir, '--prompt', 'hello world', '--max-tokens', '6', '--device', 'cpu');
    assert.equal(r.status, 0, r.stderr);
    const tok = (await TextTokenizer.load(dir))!;
    const expected = await reference(dir, tok.encode('hello world'), 6);
    // Random weights emit arbitrary bytes; the CLI prints what decoding them gives.
    assert.equal(r.stdout, tok.decode(expected, { skipSpecialTokens: true, cleanUpSpaces: false }) + '\n');
  });
});

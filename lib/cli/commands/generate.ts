// `expertweave generate`: one prompt, one continuation streamed to stdout, then a
// summary line (tokens, tokens/s) on stderr.
import { statSync } from 'node:fs';
import { parseArgs } from 'node:util';

import type { Device } from '../../engine/binding.js';
import { Engine } from '../../engine/engine.js';
import { IncrementalDetokenizer } from '../../tokenizer/detokenizer.js';
import { TextTokenizer, encodePrompt } from '../../tokenizer/tokenizer.js';
import { UsageError, choiceOption, intOption, numberOption, type Command } from '../command.js';

const HELP = `Usage: expertweave generate --model DIR (--prompt TEXT | --tokens 1,2,3) [options]

Generates a continuation of one prompt with the base model and streams it to stdout:
text when the model has a tokenizer.json, else token ids separated by spaces.
A summary (token counts, tokens/s) goes to stderr.

Options:
  --model DIR          Hugging Face style model directory (config.json, *.safetensors)
  --prompt TEXT        prompt text (needs the model's tokenizer.json)
  --tokens IDS         prompt token ids, comma separated (works without a tokenizer)
  --max-tokens N       most tokens to generate (default 64)
  --temperature T      0 is greedy (default 0)
  --top-p P            nucleus sampling, in (0, 1] (default 1: off)
  --top-k K            keep the K most likely tokens (default 0: off)
  --seed S             sampling seed (default 0)
  --device D           auto | cpu | cuda (default auto)
  --threads N          CPU worker threads (default 0: all cores)
  -h, --help           this help
`;

const DEVICES: readonly Device[] = ['auto', 'cpu', 'cuda'];

function parseTokenList(text: string): number[] {
  const parts = text.split(',').map((s) => s.trim());
  const ids = parts.map(Number);
  if (parts.some((s) => s === '') || ids.some((n) => !Number.isInteger(n) || n < 0 || n > 0x7fffffff)) {
    throw new UsageError(`--tokens must be comma-separated non-negative integers, got '${text}'`);
  }
  return ids;
}

/** Writes to stdout and waits when its buffer is full, so output keeps pace with a slow pipe. */
function writeOut(text: string): Promise<void> | void {
  if (text !== '' && !process.stdout.write(text)) return new Promise((resolve) => process.stdout.once('drain', resolve));
}

async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      model: { type: 'string' },
      prompt: { type: 'string' },
      tokens: { type: 'string' },
      'max-tokens': { type: 'string' },
      temperature: { type: 'string' },
      'top-p': { type: 'string' },
      'top-k': { type: 'string' },
      seed: { type: 'string' },
      device: { type: 'string' },
      threads: { type: 'string' },
    },
  });
  if (positionals.length > 0) throw new UsageError(`unexpected argument '${positionals[0]}'`);
  if (!values.model) throw new UsageError('--model DIR is required');
  if ((values.prompt === undefined) === (values.tokens === undefined)) {
    throw new UsageError('give exactly one of --prompt TEXT or --tokens IDS');
  }
  const maxTokens = intOption(values['max-tokens'], 'max-tokens', 64, 1);
  const temperature = numberOption(values.temperature, 'temperature', 0, (t) => t >= 0, 'a number >= 0');
  const topP = numberOption(values['top-p'], 'top-p', 1, (p) => p > 0 && p <= 1, 'a number in (0, 1]');
  const topK = intOption(values['top-k'], 'top-k', 0, 0, 0x7fffffff);
  const seed = intOption(values.seed, 'seed', 0, 0);
  const device = choiceOption(values.device, 'device', DEVICES, 'auto');
  const threads = intOption(values.threads, 'threads', 0, 0, 1024);
  const promptIds = values.tokens !== undefined ? parseTokenList(values.tokens) : undefined;

  const modelDir = values.model;
  if (!statSync(modelDir, { throwIfNoEntry: false })?.isDirectory()) {
    throw new Error(`model directory '${modelDir}' does not exist or is not a directory`);
  }
  const tokenizer = await TextTokenizer.load(modelDir);
  const ids = encodePrompt(promptIds ?? values.prompt!, tokenizer);

  const engine = await Engine.load(modelDir, { device, threads });
  try {
    const detok = tokenizer ? new IncrementalDetokenizer(tokenizer, ids) : undefined;
    const result = await engine.generate(ids, { maxTokens, temperature, topP, topK, seed }, ({ token, index }) =>
      writeOut(detok ? detok.push(token) : (index === 0 ? '' : ' ') + token),
    );
    await writeOut((detok?.flush() ?? '') + '\n');
    const rate = (n: number, ms: number) => (ms > 0 ? (n / (ms / 1000)).toFixed(1) : 'n/a');
    // The first generated token comes out of the prefill steps; decode covers the rest.
    process.stderr.write(
      `[${engine.info.device}] prompt ${result.promptTokens} tokens (${rate(result.promptTokens, result.prefillMs)} tokens/s), ` +
        `generated ${result.completionTokens} tokens (${rate(Math.max(0, result.completionTokens - 1), result.decodeMs)} tokens/s), ` +
        `finish: ${result.finishReason}\n`,
    );
    return 0;
  } finally {
    engine.close();
  }
}

export const generateCommand: Command = {
  name: 'generate',
  summary: 'generate a continuation of one prompt (streams to stdout)',
  help: HELP,
  run,
};

// Converts a Hugging Face DeepSeek-V2 checkpoint to GGUF (llama.cpp's deepseek2):
//   node dist/tools/gguf/cli.js --model DIR --out FILE.gguf [--name NAME] [--f32]
// --f32 widens every tensor to F32 (exact), for checking llama.cpp against f32 activations.
import { parseArgs } from 'node:util';

import { convertDeepseekV2 } from './deepseek2.js';

const USAGE = 'usage: cli.js --model DIR --out FILE.gguf [--name NAME] [--f32]';

try {
  const { values } = parseArgs({
    options: { model: { type: 'string' }, out: { type: 'string' }, name: { type: 'string' }, f32: { type: 'boolean', default: false } },
  });
  if (!values.model || !values.out) throw new Error(`--model and --out are required\n${USAGE}`);
  const bytes = convertDeepseekV2(values.model, values.out, { name: values.name, widenToF32: values.f32 });
  console.log(`wrote ${values.out} (${(bytes / 1e6).toFixed(1)} MB)`);
} catch (e) {
  console.error((e as Error).message);
  process.exit(1);
}

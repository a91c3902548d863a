// Checks a model directory's tokenizer.json with the daemon's tokenizer package:
// encode adds <|bos|> (256) then one id per UTF-8 byte (what tools/train uses), and
// decode round-trips ASCII and multi-byte text. Usage: node tools/train/check_tokenizer.mjs models/default
import { Tokenizer } from '@huggingface/tokenizers';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

const dir = process.argv[2] ?? 'models/default';
const read = (name) => JSON.parse(readFileSync(join(dir, name), 'utf8'));
const tok = new Tokenizer(read('tokenizer.json'), read('tokenizer_config.json'));
let failed = 0;
for (const text of ['upper: hello\n=', 'Hello, world!  two  spaces\ttab\n', 'héllo wörld, 日本語 🙂']) {
  const ids = tok.encode(text).ids;
  const want = [256, ...Buffer.from(text, 'utf8')];
  const back = tok.decode(ids, { skip_special_tokens: true });
  const ok = JSON.stringify(ids) === JSON.stringify(want) && back === text;
  if (!ok) failed++;
  console.log(ok ? 'ok  ' : 'FAIL', JSON.stringify(text), ids.length, 'ids', JSON.stringify(back));
}
const specials = [tok.token_to_id('<|bos|>'), tok.token_to_id('<|eos|>')];
if (specials[0] !== 256 || specials[1] !== 257) failed++;
console.log('bos/eos ids', specials);
process.exit(failed ? 1 : 0);

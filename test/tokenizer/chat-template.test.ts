// Chat templates rendered by lib/tokenizer/chat-template.ts against an independent
// rendering: Python's jinja2 with transformers' settings (trim_blocks, lstrip_blocks)
// where python3 has it, and hand-derived strings for the embedded model's template.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';

import { ChatTemplate, parseMessages, type ChatMessage } from '../../lib/tokenizer/chat-template.js';
import { repoRoot } from '../helpers/paths.js';
import { tempDir } from '../helpers/tmp.js';

// DeepSeek-V2-Chat's template (tokenizer_config.json of deepseek-ai/DeepSeek-V2-Lite-Chat).
const DEEPSEEK_V2 =
  "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\\n\\n' }}{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}{% elif message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}";
// ChatML with a default system prompt and block whitespace (Qwen2's shape).
const CHATML = `{% for message in messages %}
  {% if loop.first and messages[0]['role'] != 'system' %}
    {{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
  {% endif %}
  {{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}
{% endfor %}
{% if add_generation_prompt %}
  {{ '<|im_start|>assistant\\n' }}
{% endif %}`;

const CONVERSATION: ChatMessage[] = [
  { role: 'system', content: 'Be brief.' },
  { role: 'user', content: 'What is 2 + 2?' },
  { role: 'assistant', content: '4' },
  { role: 'user', content: 'And 3 + 3? Say "6" if you\'re sure.' },
];

function modelDirWith(config: Record<string, unknown>, jinjaFile?: string): string {
  const dir = join(tempDir('ew-chat-'), 'm');
  mkdirSync(dir);
  writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(config));
  if (jinjaFile !== undefined) writeFileSync(join(dir, 'chat_template.jinja'), jinjaFile);
  return dir;
}

const hasJinja2 = spawnSync('python3', ['-c', 'import jinja2'], { stdio: 'ignore' }).status === 0;

/** transformers' rendering: a sandboxed jinja2 environment with trim_blocks and lstrip_blocks. */
function pythonRender(template: string, messages: ChatMessage[], bos: string, eos: string, addGenerationPrompt: boolean): string {
  const script = `
import json, sys
from jinja2.sandbox import ImmutableSandboxedEnvironment
a = json.load(sys.stdin)
env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
sys.stdout.write(env.from_string(a["template"]).render(messages=a["messages"], bos_token=a["bos"], eos_token=a["eos"], add_generation_prompt=a["agp"]))
`;
  const r = spawnSync('python3', ['-c', script], { input: JSON.stringify({ template, messages, bos, eos, agp: addGenerationPrompt }), encoding: 'utf8' });
  if (r.status !== 0) throw new Error(r.stderr);
  return r.stdout;
}

for (const [name, template] of [
  ['DeepSeek-V2-Chat', DEEPSEEK_V2],
  ['ChatML', CHATML],
] as const) {
  test(`${name}: the rendering equals jinja2's with transformers' settings`, { skip: hasJinja2 ? false : 'python3 has no jinja2' }, () => {
    const dir = modelDirWith({ bos_token: '<｜begin▁of▁sentence｜>', eos_token: { content: '<｜end▁of▁sentence｜>', special: true }, chat_template: template });
    const t = ChatTemplate.load(dir)!;
    for (const agp of [true, false]) {
      for (const msgs of [CONVERSATION, CONVERSATION.slice(1, 2)]) {
        assert.equal(t.render(msgs, agp), pythonRender(template, msgs, '<｜begin▁of▁sentence｜>', '<｜end▁of▁sentence｜>', agp));
      }
    }
  });
}

test("the embedded model's template gives its training format exactly", () => {
  const t = ChatTemplate.load(join(repoRoot(), 'models', 'default'))!;
  assert.equal(t.render([{ role: 'user', content: 'rot13: hello' }]), '<|bos|>rot13: hello\n=');
  assert.equal(
    t.render([
      { role: 'user', content: 'inc: 41' },
      { role: 'assistant', content: '42' },
      { role: 'user', content: 'inc: 99' },
    ]),
    '<|bos|>inc: 41\n=42<|eos|><|bos|>inc: 99\n=',
  );
});

test('templates come from chat_template.jinja first, then tokenizer_config (string or the "default" of a list); none is null', () => {
  assert.equal(ChatTemplate.load(modelDirWith({ chat_template: 'A{{ messages[0].content }}' }, 'J{{ messages[0].content }}'))!.render([{ role: 'user', content: 'x' }]), 'Jx');
  const named = modelDirWith({ chat_template: [{ name: 'tool_use', template: 'T' }, { name: 'default', template: 'D{{ messages | length }}' }] });
  assert.equal(ChatTemplate.load(named)!.render(CONVERSATION), 'D4');
  assert.equal(ChatTemplate.load(modelDirWith({ bos_token: '<s>' })), null);
  assert.throws(() => ChatTemplate.load(modelDirWith({ chat_template: '{% for %}' })), /does not parse/);
});

test('messages: text parts are joined, other parts and shapes are refused naming where', () => {
  assert.deepEqual(parseMessages([{ role: 'user', content: [{ type: 'text', text: 'a' }, { type: 'text', text: 'b' }] }]), [{ role: 'user', content: 'ab' }]);
  assert.throws(() => parseMessages([]), /non-empty array/);
  assert.throws(() => parseMessages([{ role: 'user', content: [{ type: 'image_url', image_url: {} }] }]), /messages\[0\]\.content\[0\]: only text parts/);
  assert.throws(() => parseMessages([{ content: 'x' }]), /messages\[0\]\.role/);
});

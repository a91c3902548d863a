// Chat messages -> prompt text with the model's own chat template, rendered by
// @huggingface/jinja the way transformers' apply_chat_template does: the template of
// tokenizer_config.json `chat_template` (a string, or a list of named templates of
// which "default" is used) or of a chat_template.jinja file beside it, with
// `messages`, `bos_token`, `eos_token` and `add_generation_prompt`. The rendered text
// already holds the special tokens the template wants, so it is encoded without
// adding any again (no second BOS).
import { Template } from '@huggingface/jinja';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import { RequestError } from '../scheduler/request.js';

export interface ChatMessage {
  role: string;
  content: string;
}

/** A special token in tokenizer_config.json: a string or an AddedToken object. */
function tokenText(v: unknown): string {
  if (typeof v === 'string') return v;
  if (typeof v === 'object' && v !== null && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return '';
}

export class ChatTemplate {
  private constructor(
    private readonly template: Template,
    private readonly bosToken: string,
    private readonly eosToken: string,
    /** Where the template came from, for messages. */
    readonly source: string,
  ) {}

  /** The model's template, or null when it has none (chat requests then get a clear 400). */
  static load(modelDir: string): ChatTemplate | null {
    const configPath = join(modelDir, 'tokenizer_config.json');
    const config = existsSync(configPath) ? (JSON.parse(readFileSync(configPath, 'utf8')) as Record<string, unknown>) : {};
    let text: string | undefined;
    let source = configPath;
    const jinjaPath = join(modelDir, 'chat_template.jinja');
    if (existsSync(jinjaPath)) {
      text = readFileSync(jinjaPath, 'utf8');
      source = jinjaPath;
    } else if (typeof config.chat_template === 'string') {
      text = config.chat_template;
    } else if (Array.isArray(config.chat_template)) {
      const named = (config.chat_template as { name?: unknown; template?: unknown }[]).find((t) => t?.name === 'default');
      if (typeof named?.template === 'string') text = named.template;
    }
    if (text === undefined) return null;
    let template: Template;
    try {
      template = new Template(text);
    } catch (err) {
      throw new Error(`${source}: the chat template does not parse: ${(err as Error).message}`);
    }
    return new ChatTemplate(template, tokenText(config.bos_token), tokenText(config.eos_token), source);
  }

  render(messages: readonly ChatMessage[], addGenerationPrompt = true): string {
    try {
      return this.template.render({ messages, bos_token: this.bosToken, eos_token: this.eosToken, add_generation_prompt: addGenerationPrompt });
    } catch (err) {
      // A template may refuse a conversation (roles out of order, say) with raise_exception.
      throw new RequestError('bad_request', `the model's chat template refused these messages: ${(err as Error).message}`, 'messages');
    }
  }
}

/**
 * OpenAI chat messages -> {role, content} with string content: content may be a string or
 * a list of text parts; anything else (images, audio) is refused naming where it is.
 */
export function parseMessages(v: unknown): ChatMessage[] {
  const bad = (m: string): never => {
    throw new RequestError('bad_request', m, 'messages');
  };
  if (!Array.isArray(v) || v.length === 0) bad('"messages" must be a non-empty array of {role, content}');
  return (v as unknown[]).map((m, i) => {
    if (typeof m !== 'object' || m === null) bad(`messages[${i}] must be an object {role, content}`);
    const { role, content } = m as { role?: unknown; content?: unknown };
    if (typeof role !== 'string' || role.length === 0) bad(`messages[${i}].role must be a non-empty string`);
    if (typeof content === 'string') return { role: role as string, content };
    if (content === null || content === undefined) return { role: role as string, content: '' };
    if (Array.isArray(content)) {
      const parts = content.map((p, j) => {
        if (typeof p === 'object' && p !== null && (p as { type?: unknown }).type === 'text' && typeof (p as { text?: unknown }).text === 'string') return (p as { text: string }).text;
        return bad(`messages[${i}].content[${j}]: only text parts ({"type": "text", "text": ...}) are supported`);
      });
      return { role: role as string, content: parts.join('') };
    }
    return bad(`messages[${i}].content must be a string or an array of text parts`);
  });
}

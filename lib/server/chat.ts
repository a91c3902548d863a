// POST /v1/chat/completions, OpenAI-compatible: the messages go through the model's
// chat template (lib/tokenizer/chat-template.ts); `n` choices; `logprobs` with
// `top_logprobs`; stream:true sends chat.completion.chunk events (the first delta of
// each choice carries role "assistant", the last its finish_reason; with
// stream_options.include_usage a final chunk with no choices carries the usage) and
// [DONE]. max_tokens (or max_completion_tokens) defaults to the rest of the context.
import { randomUUID } from 'node:crypto';

import { RequestError, type TokenEvent } from '../scheduler/request.js';
import { parseMessages } from '../tokenizer/chat-template.js';
import { openaiFinish, runChoices } from './choices.js';
import { parseN, parseSampling, refuseUnsupported } from './generate-params.js';
import { readJson, type Reply } from './http-io.js';
import type { Service } from './service.js';
import { SseWriter } from './sse.js';

interface TokenLogprob {
  token: string;
  logprob: number;
  bytes: number[];
}

function entry(service: Service, token: number, logprob: number): TokenLogprob {
  const text = service.tokenText(token);
  return { token: text, logprob, bytes: [...Buffer.from(text, 'utf8')] };
}

function contentLogprob(service: Service, ev: TokenEvent): TokenLogprob & { top_logprobs: TokenLogprob[] } {
  return { ...entry(service, ev.token, ev.logprob ?? 0), top_logprobs: (ev.top ?? []).map((t) => entry(service, t.token, t.logprob)) };
}

export async function handleChat(reply: Reply, service: Service, maxBody: number, maxBufferedBytes: number): Promise<void> {
  const body = await readJson(reply, maxBody);
  if (reply.aborted) return;
  refuseUnsupported(body, 'chat');
  const adapter = service.resolveModel(body.model);
  const messages = parseMessages(body.messages);
  // max_completion_tokens is OpenAI's newer name for max_tokens.
  const fields = body.max_tokens === undefined && body.max_completion_tokens !== undefined ? { ...body, max_tokens: body.max_completion_tokens } : body;
  const sampling = parseSampling(fields, service.parseContext(undefined));
  const n = parseN(body);
  if (body.logprobs !== undefined && body.logprobs !== null && typeof body.logprobs !== 'boolean') {
    throw new RequestError('bad_request', '"logprobs" must be true or false (alternatives: "top_logprobs")', 'logprobs');
  }
  const top = body.top_logprobs;
  if (top !== undefined && top !== null) {
    if (typeof top !== 'number' || !Number.isInteger(top) || top < 0 || top > 20) throw new RequestError('bad_request', '"top_logprobs" must be an integer in [0, 20]', 'top_logprobs');
    if (body.logprobs !== true) throw new RequestError('bad_request', '"top_logprobs" needs "logprobs": true', 'top_logprobs');
  }
  const withLogprobs = body.logprobs === true;
  if (withLogprobs) sampling.logprobs = true;
  if (withLogprobs && typeof top === 'number' && top > 0) sampling.topLogprobs = top;
  const stream = body.stream === true;
  const includeUsage = stream && (body.stream_options as { include_usage?: unknown } | undefined)?.include_usage === true;
  const promptIds = await service.encodePrompt(service.chatPrompt(messages), true);
  if (reply.aborted) return;

  const id = `chatcmpl-${randomUUID()}`;
  const created = Math.floor(Date.now() / 1000);
  const model = adapter ?? service.modelName;
  const texts: string[] = Array(n).fill('');
  const logprobs = Array.from({ length: n }, () => (withLogprobs ? [] as ReturnType<typeof contentLogprob>[] : null));
  const finish: (string | null)[] = Array(n).fill(null);
  let completionTokens = 0;
  const usage = () => ({ prompt_tokens: promptIds.length, completion_tokens: completionTokens, total_tokens: promptIds.length + completionTokens });
  const req = { ...sampling, adapter, client: reply.client };

  if (!stream) {
    const running = runChoices(service, req, [promptIds], n, {
      onToken: (i, ev) => {
        texts[i] += ev.text;
        logprobs[i]?.push(contentLogprob(service, ev));
      },
      onDone: (i, ev) => {
        texts[i] += ev.text;
        finish[i] = openaiFinish(ev.finishReason);
        completionTokens += ev.completionTokens;
      },
      onAllDone: () =>
        reply.json(200, {
          id,
          object: 'chat.completion',
          created,
          model,
          choices: texts.map((content, index) => ({
            index,
            message: { role: 'assistant', content },
            logprobs: logprobs[index] ? { content: logprobs[index] } : null,
            finish_reason: finish[index],
          })),
          usage: usage(),
        }),
      onError: (err) => reply.requestError(err),
    });
    reply.whenAborted(() => running.cancel());
    return;
  }

  const sse = new SseWriter(reply, maxBufferedBytes, () => running.cancel());
  const chunk = (index: number, delta: Record<string, string>, finishReason: string | null, ev?: TokenEvent) =>
    sse.send({
      id,
      object: 'chat.completion.chunk',
      created,
      model,
      choices: [{ index, delta, logprobs: ev && withLogprobs ? { content: [contentLogprob(service, ev)] } : null, finish_reason: finishReason }],
      ...(includeUsage ? { usage: null } : {}),
    });
  // Each choice's first chunk carries the role; it goes out with the choice's first event,
  // so a request refused before any token still gets an HTTP status, not a stream.
  const opened: boolean[] = Array(n).fill(false);
  const open = (i: number) => {
    if (opened[i]) return;
    opened[i] = true;
    chunk(i, { role: 'assistant', content: '' }, null);
  };
  const running = runChoices(service, req, [promptIds], n, {
    onToken: (i, ev) => {
      open(i);
      chunk(i, { content: ev.text }, null, ev);
    },
    onDone: (i, ev) => {
      open(i);
      completionTokens += ev.completionTokens;
      chunk(i, ev.text !== '' ? { content: ev.text } : {}, openaiFinish(ev.finishReason));
    },
    onAllDone: () => {
      if (includeUsage) sse.send({ id, object: 'chat.completion.chunk', created, model, choices: [], usage: usage() });
      sse.end();
    },
    onError: (err) => sse.fail(err),
  });
  reply.whenAborted(() => running.cancel());
}

// POST /v1/completions, OpenAI-compatible: `model` is an adapter name or the base
// model's served name; `prompt` one prompt or a list (text or token ids); `n` choices
// each; logprobs with token text and top alternatives; `echo`; stream:true answers with
// server-sent events ending in [DONE] (with stream_options.include_usage, a last chunk
// with no choices carries the usage, as OpenAI and vLLM send it).
import { randomUUID } from 'node:crypto';

import { RequestError, type TokenEvent } from '../scheduler/request.js';
import { openaiFinish, runChoices } from './choices.js';
import { parseN, parsePrompts, parseSampling, refuseUnsupported } from './generate-params.js';
import { readJson, type Reply } from './http-io.js';
import type { Service } from './service.js';
import { SseWriter } from './sse.js';

/** OpenAI's completions default (vLLM's too). */
const DEFAULT_MAX_TOKENS = 16;

/** Completions logprobs: the token texts, their log-probabilities, the top alternatives and text offsets. */
class CompletionLogprobs {
  readonly tokens: string[] = [];
  readonly token_logprobs: number[] = [];
  readonly top_logprobs: Record<string, number>[] | null;
  readonly text_offset: number[] = [];

  constructor(withTop: boolean) {
    this.top_logprobs = withTop ? [] : null;
  }

  add(service: Service, ev: TokenEvent, offset: number): void {
    this.tokens.push(service.tokenText(ev.token));
    this.token_logprobs.push(ev.logprob ?? 0);
    this.text_offset.push(offset);
    if (this.top_logprobs && ev.top) {
      const top: Record<string, number> = {};
      for (const t of ev.top) top[service.tokenText(t.token)] ??= t.logprob;
      this.top_logprobs.push(top);
    }
  }
}

export async function handleCompletion(reply: Reply, service: Service, maxBody: number, maxBufferedBytes: number): Promise<void> {
  const body = await readJson(reply, maxBody);
  if (reply.aborted) return;
  refuseUnsupported(body, 'completions');
  const adapter = service.resolveModel(body.model);
  const prompts = parsePrompts(body.prompt);
  const sampling = parseSampling(body, service.parseContext(DEFAULT_MAX_TOKENS));
  const n = parseN(body);
  // OpenAI's logprobs here is a count: the sampled token's plus that many alternatives.
  const lp = body.logprobs;
  if (lp !== undefined && lp !== null && (typeof lp !== 'number' || !Number.isInteger(lp) || lp < 0 || lp > 20)) {
    throw new RequestError('bad_request', `"logprobs" must be an integer in [0, 20], got ${JSON.stringify(lp)}`, 'logprobs');
  }
  const withLogprobs = typeof lp === 'number';
  if (withLogprobs) sampling.logprobs = true;
  if (withLogprobs && lp > 0) sampling.topLogprobs = lp;
  const echo = body.echo === true;
  if (echo && withLogprobs) {
    throw new RequestError('bad_request', '"echo" with "logprobs" needs the prompt\'s log-probabilities, which this server does not compute', 'echo');
  }
  const stream = body.stream === true;
  const includeUsage = stream && (body.stream_options as { include_usage?: unknown } | undefined)?.include_usage === true;
  const ids = await Promise.all(prompts.map((p) => service.encodePrompt(p)));
  if (reply.aborted) return;
  const echoText = echo ? prompts.map((p, i) => (typeof p === 'string' ? p : service.tokenizer?.decode(ids[i]) ?? '')) : [];

  const id = `cmpl-${randomUUID()}`;
  const created = Math.floor(Date.now() / 1000);
  const model = adapter ?? service.modelName;
  const total = prompts.length * n;
  const texts = Array.from({ length: total }, (_, i) => (echo ? echoText[Math.floor(i / n)] : ''));
  const logprobs = Array.from({ length: total }, () => (withLogprobs ? new CompletionLogprobs((lp as number) > 0) : null));
  const finish: (string | null)[] = Array(total).fill(null);
  let completionTokens = 0;
  const promptTokens = ids.reduce((s, p) => s + p.length, 0);
  const usage = () => ({ prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens });
  const req = { ...sampling, adapter, client: reply.client };

  if (!stream) {
    const running = runChoices(service, req, ids, n, {
      onToken: (i, ev) => {
        logprobs[i]?.add(service, ev, texts[i].length);
        texts[i] += ev.text;
      },
      onDone: (i, ev) => {
        texts[i] += ev.text;
        finish[i] = openaiFinish(ev.finishReason);
        completionTokens += ev.completionTokens;
      },
      onAllDone: () =>
        reply.json(200, {
          id,
          object: 'text_completion',
          created,
          model,
          choices: texts.map((text, index) => ({ index, text, logprobs: logprobs[index], finish_reason: finish[index] })),
          usage: usage(),
        }),
      onError: (err) => reply.requestError(err),
    });
    reply.whenAborted(() => running.cancel());
    return;
  }

  const sse = new SseWriter(reply, maxBufferedBytes, () => running.cancel());
  const chunk = (index: number, text: string, finishReason: string | null, ev?: TokenEvent) => {
    let lps: CompletionLogprobs | null = null;
    if (ev && withLogprobs) {
      lps = new CompletionLogprobs((lp as number) > 0);
      lps.add(service, ev, texts[index].length);
      texts[index] += ev.text;
    }
    sse.send({ id, object: 'text_completion', created, model, choices: [{ index, text, logprobs: lps, finish_reason: finishReason }] });
  };
  if (echo) for (let i = 0; i < total; i++) chunk(i, texts[i], null);
  const running = runChoices(service, req, ids, n, {
    onToken: (i, ev) => chunk(i, ev.text, null, ev),
    onDone: (i, ev) => {
      completionTokens += ev.completionTokens;
      chunk(i, ev.text, openaiFinish(ev.finishReason));
    },
    onAllDone: () => {
      if (includeUsage) sse.send({ id, object: 'text_completion', created, model, choices: [], usage: usage() });
      sse.end();
    },
    onError: (err) => sse.fail(err),
  });
  reply.whenAborted(() => running.cancel());
}

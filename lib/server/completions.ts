// POST /v1/completions, OpenAI-compatible: `model` is an adapter name or the base
// model's name; stream:true answers with server-sent events ending in [DONE].
// A streaming client that stops reading past `maxBufferedBytes` is cut off and its
// request cancelled.
import { randomUUID } from 'node:crypto';

import type { ErrorCode } from '../scheduler/request.js';
import { parsePrompt, parseSampling } from './generate-params.js';
import { readJson, statusLine, type Reply } from './http-io.js';
import type { Service } from './service.js';

export function httpStatus(code: ErrorCode): number {
  return code === 'bad_request' ? 400 : code === 'unknown_adapter' ? 404 : code === 'overloaded' ? 429 : code === 'shutting_down' ? 503 : 500;
}

export async function handleCompletion(reply: Reply, service: Service, maxBody: number, maxBufferedBytes: number): Promise<void> {
  const body = await readJson(reply, maxBody);
  if (reply.aborted) return;
  const adapter = service.resolveModel(body.model);
  const prompt = parsePrompt(Array.isArray(body.prompt) && body.prompt.length === 1 && typeof body.prompt[0] === 'string' ? body.prompt[0] : body.prompt);
  const sampling = parseSampling(body, 16);
  const stream = body.stream === true;
  const id = `cmpl-${randomUUID()}`;
  const created = Math.floor(Date.now() / 1000);
  const model = adapter ?? service.modelName;
  const choice = (text: string, finish: string | null, logprob?: number, token?: number) => ({
    text,
    index: 0,
    logprobs: logprob === undefined ? null : { tokens: [String(token)], token_logprobs: [logprob] },
    finish_reason: finish,
  });
  // OpenAI reports a stop-string end as "stop" and a max-tokens end as "length"; EOS is "stop" too.
  const openaiReason = (r: string) => (r === 'eos' ? 'stop' : r);

  if (!stream) {
    let text = '';
    const tokens: number[] = [];
    const logprobs: number[] = [];
    const running = service.start(
      { ...sampling, prompt, adapter, client: reply.client },
      {
        onToken: (ev) => {
          text += ev.text;
          tokens.push(ev.token);
          if (ev.logprob !== undefined) logprobs.push(ev.logprob);
        },
        onDone: (ev) =>
          reply.json(200, {
            id,
            object: 'text_completion',
            created,
            model,
            choices: [
              {
                text: text + ev.text,
                index: 0,
                logprobs: sampling.logprobs ? { tokens: tokens.map(String), token_logprobs: logprobs } : null,
                finish_reason: openaiReason(ev.finishReason),
              },
            ],
            usage: { prompt_tokens: ev.promptTokens, completion_tokens: ev.completionTokens, total_tokens: ev.promptTokens + ev.completionTokens },
          }),
        onError: (err) => reply.error(httpStatus(err.code), err.code, err.message),
      },
    );
    reply.whenAborted(() => running.cancel());
    return;
  }

  const res = reply.res;
  let started = false;
  let backlog = 0;
  const write = (data: object | string) => {
    if (reply.aborted) return;
    const line = `data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`;
    res.cork(() => {
      if (!started) {
        started = true;
        res.writeStatus(statusLine(200)).writeHeader('Content-Type', 'text/event-stream').writeHeader('Cache-Control', 'no-cache');
      }
      if (res.write(line)) backlog = 0;
      else backlog += line.length;
    });
    if (backlog > maxBufferedBytes) {
      running.cancel();
      reply.aborted = true;
      res.close();
    }
  };
  const end = () => {
    if (reply.aborted) return;
    reply.aborted = true;
    res.cork(() => res.end());
  };
  const running = service.start(
    { ...sampling, prompt, adapter, client: reply.client },
    {
      onToken: (ev) => write({ id, object: 'text_completion', created, model, choices: [choice(ev.text, null, ev.logprob, ev.token)] }),
      onDone: (ev) => {
        write({
          id,
          object: 'text_completion',
          created,
          model,
          choices: [choice(ev.text, openaiReason(ev.finishReason))],
          usage: { prompt_tokens: ev.promptTokens, completion_tokens: ev.completionTokens, total_tokens: ev.promptTokens + ev.completionTokens },
        });
        write('[DONE]');
        end();
      },
      onError: (err) => {
        if (!started) {
          reply.error(httpStatus(err.code), err.code, err.message);
          return;
        }
        write({ error: { message: err.message, type: err.code, code: err.code } });
        write('[DONE]');
        end();
      },
    },
  );
  reply.whenAborted(() => running.cancel());
}


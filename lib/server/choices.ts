// The OpenAI request shape over the Service: n choices for each prompt (a list of
// prompts in /v1/completions), each its own sequence with its own seed, reported per
// choice index (prompt i's choice j is index i * n + j, as OpenAI numbers them). The
// first choice that fails fails the whole request and cancels the others.
import { RequestError, type DoneEvent, type TokenEvent } from '../scheduler/request.js';
import { choiceSeed } from './generate-params.js';
import type { Running, Service, ServiceRequest } from './service.js';

export interface ChoiceSink {
  onToken(index: number, ev: TokenEvent): void;
  onDone(index: number, ev: DoneEvent): void;
  /** Once all choices are done. */
  onAllDone(): void;
  /** At most once, instead of onAllDone. */
  onError(err: RequestError): void;
}

export function runChoices(service: Service, req: Omit<ServiceRequest, 'prompt'>, prompts: readonly number[][], n: number, sink: ChoiceSink): Running {
  const running: Running[] = [];
  let left = prompts.length * n;
  let failed = false;
  const cancel = () => {
    for (const r of running) r.cancel();
  };
  prompts.forEach((prompt, p) => {
    for (let j = 0; j < n; j++) {
      const index = p * n + j;
      running.push(
        service.start(
          { ...req, prompt, seed: choiceSeed(req.seed, index) },
          {
            onToken: (ev) => {
              if (!failed) sink.onToken(index, ev);
            },
            onDone: (ev) => {
              if (failed) return;
              sink.onDone(index, ev);
              if (--left === 0) sink.onAllDone();
            },
            onError: (err) => {
              if (failed) return;
              failed = true;
              cancel();
              sink.onError(err);
            },
          },
        ),
      );
    }
  });
  return { cancel };
}

/** OpenAI's finish reasons: an EOS or a stop string or stop token is "stop". */
export function openaiFinish(reason: DoneEvent['finishReason']): string {
  return reason === 'eos' ? 'stop' : reason;
}

export function requestErrorOf(err: unknown): RequestError {
  return err instanceof RequestError ? err : new RequestError('internal', (err as Error)?.message ?? String(err));
}

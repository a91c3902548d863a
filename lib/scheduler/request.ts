// What a generation request is and what it reports, independent of the transport.
export type FinishReason = 'length' | 'stop' | 'eos' | 'cancelled';

export type ErrorCode = 'bad_request' | 'unknown_adapter' | 'overloaded' | 'internal' | 'shutting_down' | 'duplicate_id';

export class RequestError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    /** The request field at fault, when one is (OpenAI's error.param). */
    readonly param?: string,
  ) {
    super(message);
  }
}

export interface GenerationParams {
  promptIds: readonly number[];
  /** Reroute-table row (0: base model). */
  adapterRow: number;
  /** For fairness and metrics: the adapter's name, or '' for the base model. */
  adapterName: string;
  /** For fairness: who asked (a WebSocket connection, an HTTP peer address). */
  client: string;
  /** Most tokens to generate; undefined: to the end of the model's context. */
  maxTokens: number | undefined;
  temperature: number;
  topP: number;
  topK: number;
  seed: number;
  logprobs: boolean;
  stop: readonly string[];
  /** Keep generating past EOS (vLLM's ignore_eos; benchmarks and tests). */
  ignoreEos?: boolean;
  /** Token ids that end generation like EOS (not emitted; finish reason 'stop'). */
  stopTokenIds?: readonly number[];
  presencePenalty?: number;
  frequencyPenalty?: number;
  /** Added to those tokens' logits before each draw. */
  logitBias?: ReadonlyMap<number, number>;
  /** Also report this many most likely tokens at each step (0..20). */
  topLogprobs?: number;
}

export interface TokenEvent {
  index: number;
  token: number;
  text: string;
  logprob?: number;
  /** The most likely tokens at this step, most likely first (when topLogprobs was asked). */
  top?: { token: number; logprob: number }[];
}

export interface DoneEvent {
  finishReason: FinishReason;
  promptTokens: number;
  completionTokens: number;
  /** Text held back for a possible stop string and released at the end ('' usually). */
  text: string;
}

/** Exactly one of onDone / onError is called, once; onToken only before it. */
export interface GenerationSink {
  onToken(ev: TokenEvent): void;
  onDone(ev: DoneEvent): void;
  onError(err: RequestError): void;
}

/** Streams text pieces for generated ids (the tokenizer's incremental detokenizer). */
export interface TextStream {
  push(id: number): string;
  flush(): string;
}

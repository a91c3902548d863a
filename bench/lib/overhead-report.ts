// bench:overhead's report: the markdown of bench/results/overhead*.md from the rounds
// bench/overhead.ts measured (tok/s ratios, CPU per token per thread, where the time
// goes, the main thread's profile).
import type { RunInfo } from './report.js';
import { f, header, mdTable } from './report.js';
import { median, pairedRatios, spread } from './stats.js';
import type { ThreadCpu } from './thread-cpu.js';

/** One round at one stream count: each side's figures. */
export interface Round {
  daemonTokS: number;
  /** Daemon tok/s and client CPU ms at each further stream interval (args.intervals[1..]). */
  more: { tokS: number; clientCpuMs: number; cpu?: ThreadCpu }[];
  schedTokS: number;
  /** This process's CPU (main thread, other threads) during each run. */
  cpu: { daemon?: ThreadCpu; sched?: ThreadCpu; engine?: ThreadCpu };
  engineTokS: number;
  gapTokS: number;
  gapStepMs: number;
  spinMs: number;
  tokens: number;
  daemonWallMs: number;
  engineWallMs: number;
  steps: number;
  engineSteps: number;
  nativeMs: number;
  packMs: number;
  hopMs: number;
  gapMs: number;
  outsideMs: number;
  engineStepMs: number;
  engineLoopMs: number;
  clientCpuMs: number;
}

export interface StreamsResult {
  c: number;
  rounds: Round[];
  profile?: { between: Map<string, number>; during: Map<string, number>; gapMs: number; steps: number };
}

export interface ReportInput {
  info: RunInfo;
  args: { streams: number[]; intervals: number[]; threads: number; rounds: number; 'max-tokens': number; 'per-connection': number; 'ws-client': number; sse: number; 'client-nice': number };
  modelName: string;
  promptBytes: number;
  results: StreamsResult[];
  /** JSON.stringify of one token frame: time and size. */
  jsonUs: { us: number; bytes: number };
  /** The scheduler's main-thread CPU per token over an instant engine, per stream count: with the detokenizer, without. */
  instant: { c: number; withText: number; withoutText: number }[];
}

/** The report's lines (without the chart link). */
export function overheadReport({ info, args, modelName, promptBytes, results, jsonUs, instant }: ReportInput): string[] {
  const transport = args.sse
    ? 'OpenAI streaming completions: POST /v1/completions with stream: true, one connection per stream, events read by bench/lib/lean-sse.ts; checked by text and count'
    : `${args['ws-client'] ? 'the \`ws\` package' : 'frames read by bench/lib/lean-ws.ts'}, ${args['per-connection']} stream(s) per WebSocket connection`;
  const lines: string[] = [
    '# Control-plane overhead (bench/overhead.ts, `npm run bench:overhead`)',
    '',
    ...header(info),
    `- model: ${modelName}, CPU, ${args.threads} engine threads; base model, greedy, ${args['max-tokens']} tokens per stream, prompts = the first ${promptBytes} bytes of ESFT eval prompts (tokenized)`,
    `- daemon: startDaemon in this process, defaults (token budget 512); client: a separate Node process (bench/lib/stream-client.ts, ${transport}${args['client-nice'] ? `, at nice ${args['client-nice']}` : ''}), all streams started at once; tok/s = tokens received / client wall time (first send to last done)`,
    '- engine alone: the same engine object (daemon idle), the same sequences, prompts prefilled whole within 512 tokens a step, then one token per live sequence per step from reused typed arrays',
    `- ${args.rounds} rounds, daemon, scheduler alone and engine alternating (odd rounds in reverse order); check: every stream's tokens through the daemon (at every stream interval) and the scheduler alone equal the engine-alone tokens`,
    '',
    'Goal (issue 14): daemon >= 90% of engine alone at 32 and 128 streams. Measured outside the project before this harness: 4,537 tok/s through the daemon against 10,109 engine-only at 32 streams on the embedded model.',
    '',
  ];
  const ratio = (rounds: Round[], get: (x: Round) => number) => {
    const r = pairedRatios(rounds.map(get), rounds.map((x) => x.engineTokS));
    return `${f(spread(rounds.map(get)).value, 0)}: ${f(r.value, 3)} (${f(r.min, 3)}-${f(r.max, 3)})`;
  };
  const ratioRows = results.map(({ c, rounds }) => [
    c,
    f(spread(rounds.map((x) => x.engineTokS)).value, 0),
    ratio(rounds, (x) => x.schedTokS),
    ratio(rounds, (x) => x.daemonTokS),
    ...args.intervals.slice(1).map((_, k) => ratio(rounds, (x) => x.more[k].tokS)),
    ratio(rounds, (x) => x.gapTokS),
  ]);
  lines.push(
    mdTable(
      [
        'streams',
        'engine alone tok/s',
        'scheduler alone tok/s: / engine',
        `daemon, stream interval ${args.intervals[0]}: / engine`,
        ...args.intervals.slice(1).map((iv) => `daemon, stream interval ${iv}: / engine`),
        "engine alone + the daemon's gap: / engine",
      ],
      ratioRows,
    ),
    '',
    'Each cell: median tok/s, then the median of the per-round ratios to the engine alone (range). "Scheduler alone": the same requests through the service and the scheduler in this process, ' +
      'sinks that only keep the tokens (no server, no sockets, no client): the scheduler\'s own cost. "Stream interval N": tokens reach the socket first at once, then N at a time (`--stream-interval`). ' +
      "\"Engine alone + the daemon's gap\": after every step the main thread spins for the daemon's median between-steps time (no work, no I/O): what the gap costs by itself, " +
      'including its effect on the next step (worker threads going to sleep, caches), apart from what the daemon does in it and from the client sharing the cores.',
    '',
  );
  // CPU per token of every side, this process's threads apart (kernel work included) and the client's.
  if (results.every(({ rounds }) => rounds.every((r) => r.cpu.engine))) {
    const us = (rounds: Round[], get: (r: Round) => number | undefined, digits = 1) => {
      const v = rounds.map(get).filter((x): x is number => x !== undefined);
      return v.length ? f(median(v), digits) : '';
    };
    const rowsCpu = results.flatMap(({ c, rounds }) => {
      const per = (ms: number | undefined, r: Round) => (ms === undefined ? undefined : (ms * 1000) / r.tokens);
      const total = (t: ThreadCpu | undefined, clientMs = 0) => (t ? t.mainMs + t.otherMs + clientMs : undefined);
      // The engine alone's CPU over a side's (all its threads, and its client's when given): the
      // throughput ratio to expect when every side keeps both cores busy.
      const share = (get: (r: Round) => number | undefined) => us(rounds, (r) => {
        const e = total(r.cpu.engine);
        const x = get(r);
        return e !== undefined && x !== undefined ? e / x : undefined;
      }, 3);
      const side = (name: string, cpu: (r: Round) => ThreadCpu | undefined, client?: (r: Round) => number) => [
        c,
        name,
        `${us(rounds, (r) => per(cpu(r)?.mainMs, r))} (${us(rounds, (r) => per(cpu(r)?.mainKernelMs, r))})`,
        us(rounds, (r) => per(cpu(r)?.otherMs, r)),
        client ? us(rounds, (r) => per(client(r), r)) : '',
        client ? share((r) => total(cpu(r), client(r))) : share((r) => total(cpu(r))),
        client ? share((r) => total(cpu(r))) : '',
      ];
      return [
        side('engine alone', (r) => r.cpu.engine),
        side('scheduler alone', (r) => r.cpu.sched),
        side(`daemon, interval ${args.intervals[0]}`, (r) => r.cpu.daemon, (r) => r.clientCpuMs),
        ...args.intervals.slice(1).map((iv, k) => side(`daemon, interval ${iv}`, (r) => r.more[k].cpu, (r) => r.more[k].clientCpuMs)),
      ];
    });
    lines.push(
      '### CPU per token (us, medians over rounds; /proc schedstat, kernel work included)',
      '',
      mdTable(
        ['streams', 'side', 'main thread (event loop): all (in the kernel)', 'engine and other threads', 'client process', 'engine alone CPU / this side\'s (with its client)', 'without the client'],
        rowsCpu,
      ),
      '',
      'The main thread\'s column is the daemon\'s own cost (scheduler, detokenizing, frames, socket writes with the kernel\'s loopback work), in brackets its time in the kernel (system calls: socket writes, epoll; from its stime, 10 ms ticks); ' +
        'the engine threads\' column grows over the engine alone\'s by the time they spend waiting (spinning) for a thread that lost its core to the main thread or the client. ' +
        'With every side keeping the cores busy, tok/s goes as 1 / CPU per token: "engine alone CPU / this side\'s" is then the throughput ratio to expect, ' +
        'and "without the client" what it would be with the client on another machine.',
      '',
    );
  }
  lines.push(
    "### The scheduler alone over an instant engine (us of CPU per token; single-threaded, no native work, so free of the engine's share of the cores)",
    '',
    mdTable(
      ['streams', 'scheduler + detokenizer', 'scheduler, no text', 'detokenizing'],
      instant.map(({ c, withText, withoutText }) => [c, f(withText, 2), f(withoutText, 2), f(withText - withoutText, 2)]),
    ),
    '',
    'bench/lib/instant-engine.ts: the same requests through a BatchScheduler whose engine packs each step as the real one does and answers at once, ' +
      "with the daemon's detokenizer and without (a model without a tokenizer.json). What it leaves out: the service's wrapper, metrics, frames, sockets.",
    '',
  );

  for (const { c, rounds, profile: prof } of results) {
    const m = (fn: (r: Round) => number) => median(rounds.map(fn));
    const tokens = m((r) => r.tokens);
    const perTok = (ms: number) => f((ms * 1000) / tokens, 1);
    const share = (ms: number, wall: number) => `${f((100 * ms) / wall, 1)}%`;
    const dWall = m((r) => r.daemonWallMs);
    const eWall = m((r) => r.engineWallMs);
    const rows: (string | number)[][] = [
      ['wall time', f(dWall, 0), perTok(dWall), '100%', f(eWall, 0), perTok(eWall)],
      ['engine steps (count)', f(m((r) => r.steps), 0), '', '', f(m((r) => r.engineSteps), 0), ''],
      ['native engine step', f(m((r) => r.nativeMs), 0), perTok(m((r) => r.nativeMs)), share(m((r) => r.nativeMs), dWall), f(m((r) => r.engineStepMs), 0), perTok(m((r) => r.engineStepMs))],
      ['step request packing (Engine.step before the native call)', f(m((r) => r.packMs), 1), perTok(m((r) => r.packMs)), share(m((r) => r.packMs), dWall), '', ''],
      ['native step resolved -> Engine.step resolved', f(m((r) => r.hopMs), 1), perTok(m((r) => r.hopMs)), share(m((r) => r.hopMs), dWall), '', ''],
      ['between steps (step end -> next step start)', f(m((r) => r.gapMs), 0), perTok(m((r) => r.gapMs)), share(m((r) => r.gapMs), dWall), f(m((r) => r.engineLoopMs), 1), perTok(m((r) => r.engineLoopMs))],
      ['outside the steps (admission before the first, done frames after the last)', f(m((r) => r.outsideMs), 0), perTok(m((r) => r.outsideMs)), share(m((r) => r.outsideMs), dWall), '', ''],
      ['client process CPU (another process on the same cores)', f(m((r) => r.clientCpuMs), 0), perTok(m((r) => r.clientCpuMs)), share(m((r) => r.clientCpuMs), dWall), '', ''],
    ];
    lines.push(
      `## ${c} streams: where the time goes (medians over rounds; ${f(tokens, 0)} tokens)`,
      '',
      mdTable(['component', 'daemon ms', 'daemon us/token', 'share of daemon wall', 'engine alone ms', 'engine alone us/token'], rows),
      '',
      `Engine steps inside the daemon take ${f(m((r) => r.nativeMs) / m((r) => r.engineStepMs), 2)}x the engine-alone step time in total ` +
        `(${f(m((r) => r.nativeMs / r.steps), 2)} vs ${f(m((r) => r.engineStepMs / r.engineSteps), 2)} ms per step); with only an idle ${f(m((r) => r.spinMs), 2)} ms gap after each step the engine's steps take ` +
        `${f(m((r) => r.gapStepMs / r.engineSteps), 2)} ms. The rest of the slowdown comes from what shares the cores during a step: the client process, the kernel's socket work, the main thread.`,
      '',
    );
    if (prof) {
      const cats = [...new Set([...prof.between.keys(), ...prof.during.keys()])];
      const totB = [...prof.between.values()].reduce((a, x) => a + x, 0);
      const totD = [...prof.during.values()].reduce((a, x) => a + x, 0);
      const gapPerStep = m((r) => r.gapMs / r.steps);
      const rowsP = cats
        .map((k) => [k, prof.between.get(k) ?? 0, prof.during.get(k) ?? 0] as const)
        .sort((a, b) => b[1] - a[1])
        .map(([k, b, d]) => [k, f(b, 1), `${f((100 * b) / totB, 1)}%`, f((gapPerStep * 1000 * b) / totB / Math.max(1, tokens / m((r) => r.steps)), 2), f(d, 1), `${f((100 * d) / totD, 1)}%`]);
      lines.push(
        `### ${c} streams: main-thread CPU profile (one more daemon run, sampled every 200 us; ${prof.steps} steps)`,
        '',
        mdTable(['category (innermost project module on the stack)', 'between steps ms', 'share of between', 'us per token (scaled to the timed runs\' gap)', 'during steps ms', 'share of during'], rowsP),
        '',
        ...(args.sse ? [] : [`Within "WebSocket frames": JSON.stringify of one ${f(jsonUs.bytes, 0)}-byte token frame takes ${f(jsonUs.us, 2)} us (microbenchmark, this process); the rest is uWebSockets.js's send(), ` +
          'corked once per connection per tick by lib/server/ws-stream.ts (one write per connection per step; before, one sendto per token frame under strace).']),
        '',
      );
    }
  }
  return lines;
}

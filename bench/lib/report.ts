// What every result file carries (machine, date, commit, how busy the machine was)
// and how it is written: markdown tables and SVG charts under bench/results/.
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, totalmem } from 'node:os';
import { join } from 'node:path';

import { repoRoot } from '../../test/helpers/paths.js';

export interface RunInfo {
  date: string;
  commit: string;
  machine: string;
  /** 1-minute load average at the start; with `cores` it says how contended the run was. */
  loadStart: number;
  cores: number;
}

/** The commit checked out in `dir` (this checkout by default), "+changes" when tracked files differ. */
export function gitCommit(dir = repoRoot()): string {
  try {
    const sha = execFileSync('git', ['rev-parse', '--short=12', 'HEAD'], { cwd: dir, encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no'], { cwd: dir, encoding: 'utf8' }).trim() !== '';
    return dirty ? `${sha}+changes` : sha;
  } catch {
    return 'unknown';
  }
}

export function runInfo(): RunInfo {
  const c = cpus();
  return {
    date: new Date().toISOString(),
    commit: gitCommit(),
    machine: `${c[0]?.model ?? 'unknown CPU'}, ${c.length} threads, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}`,
    loadStart: loadavg()[0],
    cores: c.length,
  };
}

/** The lines under a result file's title. */
export function header(info: RunInfo): string[] {
  const load = loadavg()[0];
  return [
    `- machine: ${info.machine}`,
    `- date: ${info.date}; commit: ${info.commit}`,
    `- load average (1 min) at start ${info.loadStart.toFixed(2)}, at end ${load.toFixed(2)}, on ${info.cores} cores` +
      (Math.max(info.loadStart, load) > info.cores ? ' (busy machine: read ratios, not absolute times)' : ''),
  ];
}

/** The short form for chart footnotes. */
export function footnote(info: RunInfo): string {
  return `${info.machine}; ${info.date.slice(0, 16)}Z; commit ${info.commit}`;
}

export function mdTable(head: readonly string[], rows: readonly (readonly (string | number)[])[], align?: readonly ('l' | 'r')[]): string {
  const a = align ?? head.map((_, i) => (i === 0 ? 'l' : 'r'));
  const line = (cells: readonly (string | number)[]) => `| ${cells.map(String).join(' | ')} |`;
  return [line(head), `|${a.map((x) => (x === 'l' ? ' --- ' : ' ---: ')).join('|')}|`, ...rows.map(line)].join('\n');
}

/** Formats a number with `digits` decimals; NaN and infinities print as n/a. */
export function f(v: number | undefined, digits = 1): string {
  return v === undefined || !Number.isFinite(v) ? 'n/a' : v.toFixed(digits);
}

/** "1.04 (0.98-1.10)": a spread's median and range. */
export function fr(s: { value: number; min: number; max: number }, digits = 2): string {
  return `${f(s.value, digits)} (${f(s.min, digits)}-${f(s.max, digits)})`;
}

export function resultsDir(): string {
  const dir = join(repoRoot(), 'bench', 'results');
  mkdirSync(dir, { recursive: true });
  return dir;
}

/** Writes bench/results/NAME and says so; returns the path. */
export function writeResult(name: string, text: string): string {
  const path = join(resultsDir(), name);
  writeFileSync(path, text.endsWith('\n') ? text : text + '\n');
  console.log(`wrote ${path}`);
  return path;
}

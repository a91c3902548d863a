// Suites that need what a machine may lack (the native addon, a CUDA device). A
// skipped describe() shows up in node:test's summary as no skipped test at all, so a
// gated suite instead registers every test and skips each one (counted as a skip),
// or, where the missing thing is required, fails each one with the reason.
import * as nodeTest from 'node:test';

/** run: the suite runs; skip: each test is skipped with the reason; fail: each test fails with it. */
export type Gate = { run: true } | { skip: string } | { fail: string };

export interface GatedSuite {
  describe: typeof nodeTest.describe;
  test: typeof nodeTest.test;
  before: typeof nodeTest.before;
  after: typeof nodeTest.after;
  beforeEach: typeof nodeTest.beforeEach;
  afterEach: typeof nodeTest.afterEach;
}

type Fn = (...args: never[]) => unknown;

/** node:test's (name?, options?, fn?) arguments. */
function testArgs(args: unknown[]): { name?: string; options: nodeTest.TestOptions; fn?: Fn } {
  let i = 0;
  const name = typeof args[i] === 'string' ? (args[i++] as string) : undefined;
  const options = typeof args[i] === 'object' && args[i] !== null ? (args[i++] as nodeTest.TestOptions) : {};
  const fn = typeof args[i] === 'function' ? (args[i] as Fn) : undefined;
  return { name, options, fn };
}

export function gatedSuite(gate: Gate): GatedSuite {
  const { describe, test, before, after, beforeEach, afterEach } = nodeTest;
  if ('run' in gate) return { describe, test, before, after, beforeEach, afterEach };
  const noHook = (() => {}) as unknown as typeof before;
  const gatedTest = (...args: unknown[]) => {
    const { name, options } = testArgs(args);
    if ('skip' in gate) return test(name ?? '', { ...options, skip: gate.skip }, () => {});
    return test(name ?? '', options, () => {
      throw new Error(gate.fail);
    });
  };
  // describe() bodies still run, so that every test in them is registered (and gated).
  return { describe, test: gatedTest as typeof test, before: noHook, after: noHook, beforeEach: noHook, afterEach: noHook };
}

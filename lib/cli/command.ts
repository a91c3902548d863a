// What a CLI subcommand is, and the error that means "bad command line" (exit 2).
export interface Command {
  name: string;
  /** One line for the tool's --help. */
  summary: string;
  /** The subcommand's full --help text. */
  help: string;
  /** Returns the exit code: 0 ok, 1 runtime error (after printing why). Throws UsageError for bad arguments. */
  run(argv: string[]): Promise<number>;
}

export class UsageError extends Error {}

/** Option values parsed with node:util parseArgs are strings; these check and convert them. */
export function intOption(value: string | undefined, name: string, fallback: number, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (value.trim() === '' || !Number.isInteger(n) || n < min || n > max) {
    throw new UsageError(`--${name} must be an integer in [${min}, ${max}], got '${value}'`);
  }
  return n;
}

export function numberOption(value: string | undefined, name: string, fallback: number, ok: (n: number) => boolean, range: string): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || !ok(n)) throw new UsageError(`--${name} must be ${range}, got '${value}'`);
  return n;
}

export function choiceOption<T extends string>(value: string | undefined, name: string, choices: readonly T[], fallback: T): T {
  if (value === undefined) return fallback;
  if (!(choices as readonly string[]).includes(value)) throw new UsageError(`--${name} must be one of ${choices.join(', ')}, got '${value}'`);
  return value as T;
}

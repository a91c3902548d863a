// Command-line options for the benchmark scripts: `--name value` for numbers,
// `--name 1,2,3` for lists, `--quick` for a short development run. Checked.
import { parseArgs } from 'node:util';

type Defaults = Record<string, number | number[]>;
type Parsed<D extends Defaults> = { [K in keyof D]: D[K] extends number[] ? number[] : number } & { quick: boolean };

export function benchArgs<D extends Defaults>(defaults: D, argv = process.argv.slice(2)): Parsed<D> {
  const options: Record<string, { type: 'string' | 'boolean' }> = { quick: { type: 'boolean' } };
  for (const k of Object.keys(defaults)) options[k] = { type: 'string' };
  const { values } = parseArgs({ args: argv, options, strict: true });
  const out: Record<string, unknown> = { ...defaults, quick: values.quick === true };
  for (const [k, d] of Object.entries(defaults)) {
    const v = values[k];
    if (typeof v !== 'string') continue;
    const parse = (s: string) => {
      const n = Number(s);
      if (s.trim() === '' || !Number.isFinite(n) || n < 0) throw new Error(`--${k}: expected a non-negative number, got '${s}'`);
      return n;
    };
    out[k] = Array.isArray(d) ? v.split(',').map(parse) : parse(v);
  }
  return out as Parsed<D>;
}

// Reading config.json keys the way the reference parsers need: each refusal names the
// file, the key and the value.

export class ConfigKeys {
  readonly c: Record<string, unknown>;

  constructor(text: string, readonly origin: string) {
    const c: unknown = JSON.parse(text);
    if (typeof c !== 'object' || c === null || Array.isArray(c)) throw new Error(`${origin}: not a JSON object`);
    this.c = c as Record<string, unknown>;
  }

  fail(key: string, why: string): never {
    throw new Error(`${this.origin}: ${key} ${JSON.stringify(this.c[key])} ${why}`);
  }

  num(key: string): number {
    if (typeof this.c[key] !== 'number') throw new Error(`${this.origin}: ${key} must be a number, got ${JSON.stringify(this.c[key])}`);
    return this.c[key] as number;
  }

  /** A positive integer (a count or a width). */
  int(key: string): number {
    const v = this.num(key);
    if (!Number.isSafeInteger(v) || v <= 0) this.fail(key, 'must be a positive integer');
    return v;
  }

  numOr(key: string, dflt: number): number {
    return this.c[key] === undefined || this.c[key] === null ? dflt : this.num(key);
  }

  intOr(key: string, dflt: number): number {
    return this.c[key] === undefined || this.c[key] === null ? dflt : this.int(key);
  }

  /** A non-negative integer that may be absent (then `dflt`). */
  countOr(key: string, dflt: number): number {
    if (this.c[key] === undefined || this.c[key] === null) return dflt;
    const v = this.num(key);
    if (!Number.isSafeInteger(v) || v < 0) this.fail(key, 'must be a non-negative integer');
    return v;
  }

  boolOr(key: string, dflt: boolean): boolean {
    const v = this.c[key];
    if (v === undefined || v === null) return dflt;
    if (typeof v !== 'boolean') this.fail(key, 'must be true or false');
    return v;
  }

  /** Refuses the key unless it is absent or equal to one of `allowed` (JSON equality). */
  only(key: string, allowed: unknown[], why = 'is not supported'): void {
    const v = this.c[key] === undefined ? allowed[0] : this.c[key];
    if (!allowed.some((a) => JSON.stringify(a) === JSON.stringify(v))) this.fail(key, why);
  }

  modelType(expected: string): void {
    if (this.c.model_type !== expected) throw new Error(`${this.origin}: model_type ${JSON.stringify(this.c.model_type)} is not ${expected}`);
  }
}

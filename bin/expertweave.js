#!/usr/bin/env node
// The `expertweave` command: runs the compiled CLI (dist/lib/cli/main.js).
import { main } from '../dist/lib/cli/main.js';

main(process.argv.slice(2)).then(
  (code) => process.exit(code ?? 0),
  (err) => {
    console.error(`expertweave: ${err?.message ?? err}`);
    process.exit(1);
  },
);

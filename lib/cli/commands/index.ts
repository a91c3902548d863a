// The subcommands of `expertweave`, in --help order. A new command is one file in
// this directory and one entry here.
import type { Command } from '../command.js';
import { adaptersCommand } from './adapters.js';
import { generateCommand } from './generate.js';
import { serveCommand } from './serve.js';

export const COMMANDS: readonly Command[] = [generateCommand, serveCommand, adaptersCommand];

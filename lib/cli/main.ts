// `expertweave <command> ...`: dispatches to the subcommands in ./commands.
// Exit codes: 0 ok, 1 runtime error (clear message on stderr), 2 usage error.
import { readFileSync } from 'node:fs';

import { UsageError, type Command } from './command.js';
import { COMMANDS } from './commands/index.js';

function toolHelp(commands: readonly Command[]): string {
  const width = Math.max(...commands.map((c) => c.name.length));
  return [
    'Usage: expertweave <command> [options]',
    '',
    'Serves many ESFT adapters over one shared Mixture-of-Experts base model.',
    '',
    'Commands:',
    ...commands.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
    '',
    'Run `expertweave <command> --help` for a command\'s options.',
    '',
  ].join('\n');
}

function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

export async function main(argv: string[], commands: readonly Command[] = COMMANDS): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined) {
    process.stderr.write(toolHelp(commands));
    return 2;
  }
  if (name === '--help' || name === '-h') {
    process.stdout.write(toolHelp(commands));
    return 0;
  }
  if (name === '--version') {
    process.stdout.write(packageVersion() + '\n');
    return 0;
  }
  const helpTarget = name === 'help' ? rest[0] : undefined;
  const command = commands.find((c) => c.name === (helpTarget ?? name));
  if (name === 'help' && !helpTarget) {
    process.stdout.write(toolHelp(commands));
    return 0;
  }
  if (!command) {
    process.stderr.write(`expertweave: unknown command '${helpTarget ?? name}'\n\n` + toolHelp(commands));
    return 2;
  }
  if (helpTarget || rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(command.help);
    return 0;
  }
  try {
    return await command.run(rest);
  } catch (err) {
    // parseArgs reports unknown or malformed options as TypeErrors with ERR_PARSE_ARGS_* codes.
    const code = (err as { code?: unknown }).code;
    if (err instanceof UsageError || (typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS'))) {
      process.stderr.write(`expertweave ${command.name}: ${(err as Error).message}\nRun \`expertweave ${command.name} --help\` for usage.\n`);
      return 2;
    }
    const message = ((err as Error)?.message ?? String(err)).replace(/^expertweave: /, '');
    process.stderr.write(`expertweave ${command.name}: ${message}\n`);
    return 1;
  }
}

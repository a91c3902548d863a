// node dist/tools/merge/cli.js BASE_DIR ADAPTER_DIR OUT_DIR
// Writes the merged checkpoint (base + the adapter's tuned experts) to OUT_DIR.
import { mergeAdapter } from './merge.js';

const args = process.argv.slice(2);
if (args.length !== 3) {
  console.error('usage: node dist/tools/merge/cli.js BASE_DIR ADAPTER_DIR OUT_DIR');
  process.exit(2);
}
try {
  const r = mergeAdapter(args[0], args[1], args[2]);
  console.log(`wrote ${args[2]}: ${r.tensors} tensors, ${r.replaced} from the adapter`);
} catch (e) {
  console.error((e as Error).message);
  process.exit(1);
}

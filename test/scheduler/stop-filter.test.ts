// StopFilter against a direct reference: the emitted text is the full text cut at
// the first stop string, for every way of splitting the text into pieces.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { StopFilter } from '../../lib/scheduler/stop-filter.js';

function run(pieces: string[], stops: string[]): { text: string; stopped: boolean } {
  const f = new StopFilter(stops);
  let text = '';
  for (const p of pieces) {
    const r = f.push(p);
    text += r.text;
    if (r.stopped) return { text, stopped: true };
  }
  return { text: text + f.flush(), stopped: false };
}

function reference(full: string, stops: string[]): { text: string; stopped: boolean } {
  const cuts = stops.map((s) => full.indexOf(s)).filter((i) => i !== -1);
  return cuts.length ? { text: full.slice(0, Math.min(...cuts)), stopped: true } : { text: full, stopped: false };
}

test('stop strings cut the text at their first occurrence, however it is split', () => {
  const texts = ['hello\n\nworld', 'abcabd', 'no stop here', 'END', 'xxENxxEND', 'a\n\n'];
  const stopSets = [['\n\n'], ['abd', 'cab'], ['END'], ['N', 'EN']];
  for (const full of texts) {
    for (const stops of stopSets) {
      // Every split into at most three pieces.
      for (let i = 0; i <= full.length; i++) {
        for (let j = i; j <= full.length; j++) {
          const pieces = [full.slice(0, i), full.slice(i, j), full.slice(j)];
          assert.deepEqual(run(pieces, stops), reference(full, stops), `${JSON.stringify(pieces)} ${JSON.stringify(stops)}`);
        }
      }
    }
  }
});

test('text that may start a stop string is held back until it cannot', () => {
  const f = new StopFilter(['\n\n']);
  assert.deepEqual(f.push('ab\n'), { text: 'ab', stopped: false });
  assert.deepEqual(f.push('c'), { text: '\nc', stopped: false });
});

import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';
import { appErrorCodes } from '../app/errors.ts';

test('docs/reference/reference-app.md lists every app error code once, with its HTTP status', async () => {
  const doc = await readFile(
    new URL('../docs/reference/reference-app.md', import.meta.url),
    'utf8',
  );
  const rows = [...doc.matchAll(/^\|\s*`(APP_ERR_[A-Z_]+)`\s*\|\s*(\d{3})\s*\|/gm)].map((match) => [
    match[1],
    Number(match[2]),
  ]);
  const documented = new Map(rows as [string, number][]);
  assert.equal(documented.size, rows.length, 'a code is listed twice');
  const expected = new Map(
    Object.entries(appErrorCodes).map(([code, entry]) => [code, entry.status]),
  );
  assert.deepEqual(documented, expected);
});

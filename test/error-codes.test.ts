import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';
import { errorCodes } from 'tenantry';

test('docs/reference/error-codes.md lists every error code once, with its HTTP status', async () => {
  const doc = await readFile(new URL('../docs/reference/error-codes.md', import.meta.url), 'utf8');
  const rows = [...doc.matchAll(/^\|\s*`(TENANTRY_ERR_[A-Z_]+)`\s*\|\s*(\d{3})\s*\|/gm)].map(
    (match) => [match[1], Number(match[2])],
  );
  const documented = new Map(rows as [string, number][]);
  assert.equal(documented.size, rows.length, 'a code is listed twice');
  const expected = new Map(Object.entries(errorCodes).map(([code, entry]) => [code, entry.status]));
  assert.deepEqual(documented, expected);
});

test('every error code follows TENANTRY_ERR_<AREA>_<PROBLEM>', () => {
  for (const code of Object.keys(errorCodes)) assert.match(code, /^TENANTRY_ERR_[A-Z]+_[A-Z_]+$/);
});

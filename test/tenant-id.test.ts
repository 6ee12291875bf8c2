import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { isTenantryError, isUuid, parseTenantId, parseUserId } from 'tenantry';

const valid = '0b5c6a3e-6a8e-4f7e-9a51-2f7c1c9d2e10';

describe('parseTenantId', () => {
  test('canonicalises uppercase to lowercase', () => {
    assert.equal(parseTenantId(valid.toUpperCase()), valid);
  });

  const hostile = [
    `${valid}'`,
    `'; set role tenantry_owner; --`,
    `${valid}; select 1`,
    ` ${valid}`,
    `${valid} `,
    `${valid}\n`,
    `{${valid}}`,
    `urn:uuid:${valid}`,
    valid.replaceAll('-', ''),
    '00000000-0000-0000-0000-000000000000',
    '',
    '*',
    `${valid.slice(0, 35)}'`,
    `${valid.slice(0, 35)}\\`,
  ];
  for (const value of hostile) {
    test(`rejects ${JSON.stringify(value)}`, () => {
      assert.throws(
        () => parseTenantId(value),
        (error) => isTenantryError(error, 'TENANTRY_ERR_TENANT_ID_INVALID'),
      );
      assert.equal(isUuid(value), false);
    });
  }

  for (const value of [undefined, null, 42, {}, [valid]]) {
    test(`rejects non-string ${JSON.stringify(value)}`, () => {
      assert.throws(
        () => parseTenantId(value),
        (error) => isTenantryError(error, 'TENANTRY_ERR_TENANT_ID_INVALID'),
      );
    });
  }

  test('user ids follow the same rules with their own code', () => {
    assert.equal(parseUserId(valid.toUpperCase()), valid);
    assert.throws(
      () => parseUserId(`${valid}'`),
      (error) => isTenantryError(error, 'TENANTRY_ERR_USER_ID_INVALID'),
    );
  });
});

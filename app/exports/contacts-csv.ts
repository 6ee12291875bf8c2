import type { ExportedContact } from './exports.repository.ts';

/** The header row of a contacts export. */
export const contactsCsvHeader = ['id', 'name', 'phone', 'email', 'attributes', 'created_at'];

/**
 * One CSV field (RFC 4180): quoted when it holds a comma, quote or line break. A field starting
 * with `=`, `+`, `-`, `@`, tab or carriage return gets a leading `'` so spreadsheets do not run
 * it as a formula, unless it is a plain number such as a phone number (`+5511999990000`).
 *
 * @example
 * ```ts
 * csvField('a,"b"'); // '"a,""b"""'
 * ```
 */
export function csvField(value: string): string {
  const formula = /^[=+\-@\t\r]/.test(value) && !/^[+-]?[0-9][0-9 ().-]*$/.test(value);
  const safe = formula ? `'${value}` : value;
  return /[",\r\n]/.test(safe) ? `"${safe.replaceAll('"', '""')}"` : safe;
}

/**
 * A contact as one CSV line (with its CRLF), in {@link contactsCsvHeader} order.
 *
 * @example
 * ```ts
 * const line = contactCsvLine(contact);
 * ```
 */
export function contactCsvLine(contact: ExportedContact): string {
  return `${[
    contact.id,
    contact.name,
    contact.phone ?? '',
    contact.email ?? '',
    JSON.stringify(contact.attributes),
    contact.created_at.toISOString(),
  ]
    .map(csvField)
    .join(',')}\r\n`;
}

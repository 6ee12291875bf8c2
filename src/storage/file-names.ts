import { TenantryError } from '../errors.ts';

/** Longest file name kept, in characters after NFC normalisation. */
export const maxFileNameLength = 255;

// biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what it rejects
const controlCharacters = /[\u0000-\u001f\u007f-\u009f]/u;
const bidiControls = /[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/u;
const separators = /[/\\\u2044\u2215\u29f5\u29f8\u29f9\ufe68\uff0f\uff3c]/u;
const driveLetter = /^[a-z]:/iu;
const encodedSpecial = /%(?:25)*(?:2e|2f|5c|00)/iu;

/**
 * Validates and normalises a user-supplied file name, which Tenantry keeps as metadata only and
 * never uses to build a key or a path. Returns the name in Unicode NFC; throws
 * `TENANTRY_ERR_STORAGE_NAME_INVALID` for an empty or over-long name, `.` or `..`, any slash or
 * backslash (including look-alikes), a drive letter, NUL, control or bidi-override characters,
 * and percent-encoded dots, slashes, backslashes or NULs (`%2e`, `%2f`, `%5c`, `%00`, also
 * double-encoded as `%252e`).
 *
 * @example
 * ```ts
 * import { parseFileName } from 'tenantry/storage';
 * parseFileName('Rapport d’activité.pdf'); // NFC-normalised
 * parseFileName('../etc/passwd'); // throws TENANTRY_ERR_STORAGE_NAME_INVALID
 * ```
 */
export function parseFileName(value: unknown): string {
  if (typeof value !== 'string') throw invalid('a file name must be a string');
  if (!value.isWellFormed()) throw invalid('the file name is not well-formed Unicode');
  const name = value.normalize('NFC');
  if (name.trim() === '') throw invalid('the file name is empty');
  if ([...name].length > maxFileNameLength) {
    throw invalid(`the file name is longer than ${maxFileNameLength} characters`);
  }
  if (controlCharacters.test(name)) throw invalid('the file name contains control characters');
  if (bidiControls.test(name)) throw invalid('the file name contains bidirectional controls');
  if (separators.test(name)) throw invalid('the file name contains a path separator');
  if (driveLetter.test(name)) throw invalid('the file name starts with a drive letter');
  if (name === '.' || name === '..') throw invalid('the file name is a relative path segment');
  if (encodedSpecial.test(name))
    throw invalid('the file name contains an encoded separator or dot');
  return name;
}

function invalid(reason: string): TenantryError {
  return new TenantryError('TENANTRY_ERR_STORAGE_NAME_INVALID', `Invalid file name: ${reason}.`);
}

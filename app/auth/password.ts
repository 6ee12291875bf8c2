import { randomBytes, type ScryptOptions, scrypt, timingSafeEqual } from 'node:crypto';

/** Cost parameters of a scrypt password hash. */
export interface ScryptCost {
  /** CPU/memory cost, a power of two. @defaultValue 32768 (2^15) */
  readonly N: number;
  /** Block size. @defaultValue 8 */
  readonly r: number;
  /** Parallelisation. @defaultValue 1 */
  readonly p: number;
}

/** The cost new hashes get: 2^15 × 8 × 128 bytes = 32 MiB per hash. */
export const defaultScryptCost: ScryptCost = Object.freeze({ N: 2 ** 15, r: 8, p: 1 });

const keyLength = 32;
const saltLength = 16;
const hashPattern =
  /^scrypt\$(\d{1,8})\$(\d{1,3})\$(\d{1,3})\$([A-Za-z0-9_-]{16,64})\$([A-Za-z0-9_-]{43})$/;

function derive(password: string, salt: Buffer, cost: ScryptCost): Promise<Buffer> {
  const options: ScryptOptions = {
    N: cost.N,
    r: cost.r,
    p: cost.p,
    // Node's default ceiling (32 MiB) is just below what N=2^15, r=8 needs.
    maxmem: 256 * cost.N * cost.r + 1024 * 1024,
  };
  return new Promise((resolve, reject) => {
    scrypt(password.normalize('NFKC'), salt, keyLength, options, (error, key) =>
      error === null ? resolve(key) : reject(error),
    );
  });
}

function parseHash(encoded: string): { cost: ScryptCost; salt: Buffer; hash: Buffer } | undefined {
  const match = hashPattern.exec(encoded);
  if (match === null) return undefined;
  const [, n, r, p, salt, hash] = match as unknown as [
    string,
    string,
    string,
    string,
    string,
    string,
  ];
  const cost = { N: Number(n), r: Number(r), p: Number(p) };
  const powerOfTwo = cost.N >= 2 && (cost.N & (cost.N - 1)) === 0;
  if (!powerOfTwo || cost.N > 2 ** 20 || cost.r < 1 || cost.r > 32 || cost.p < 1 || cost.p > 16) {
    return undefined;
  }
  return { cost, salt: Buffer.from(salt, 'base64url'), hash: Buffer.from(hash, 'base64url') };
}

/**
 * Hashes a password with scrypt and a random 16-byte salt, encoded with its parameters as
 * `scrypt$N$r$p$<salt>$<hash>` (base64url), so the cost can be raised later without breaking
 * existing hashes.
 *
 * @example
 * ```ts
 * const stored = await hashPassword('correct horse battery');
 * // scrypt$32768$8$1$3q2-7w...$Yk1o...
 * ```
 */
export async function hashPassword(
  password: string,
  cost: ScryptCost = defaultScryptCost,
): Promise<string> {
  const salt = randomBytes(saltLength);
  const hash = await derive(password, salt, cost);
  return `scrypt$${cost.N}$${cost.r}$${cost.p}$${salt.toString('base64url')}$${hash.toString('base64url')}`;
}

/**
 * Checks a password against a hash from {@link hashPassword}, comparing in constant time. A
 * stored value that is not such a hash (a disabled account) never matches, but costs the same
 * work as one that does.
 *
 * @example
 * ```ts
 * if (!(await verifyPassword(body.password, user.password_hash))) throw invalidCredentials();
 * ```
 */
export async function verifyPassword(password: string, encoded: string): Promise<boolean> {
  const parsed = parseHash(encoded);
  if (parsed === undefined) {
    await derive(password, randomBytes(saltLength), defaultScryptCost);
    return false;
  }
  const candidate = await derive(password, parsed.salt, parsed.cost);
  return candidate.length === parsed.hash.length && timingSafeEqual(candidate, parsed.hash);
}

/**
 * Spends the work of one password check against nothing, so answering for an unknown email
 * takes as long as for a known one with a wrong password.
 *
 * @example
 * ```ts
 * if (user === undefined) { await burnPasswordCheck(body.password); throw invalidCredentials(); }
 * ```
 */
export async function burnPasswordCheck(password: string): Promise<void> {
  await verifyPassword(password, dummyHash);
}

const dummyHash = `scrypt$${defaultScryptCost.N}$${defaultScryptCost.r}$${defaultScryptCost.p}$${randomBytes(saltLength).toString('base64url')}$${randomBytes(keyLength).toString('base64url')}`;

/** Secret-key authentication: keys are stored hashed; a generated key is printed once. */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { FastifyRequest } from 'fastify';
import type { Pool } from '../store/db.ts';
import { ApiError } from '../domain/errors.ts';
import { newId } from '../domain/ids.ts';

export const hashKey = (key: string) => createHash('sha256').update(key, 'utf8').digest('hex');

/**
 * Make sure a key is accepted: the configured one (stored on first start), or a generated one
 * when none exists yet. Returns the generated key so the caller can print it once.
 */
export async function ensureApiKey(db: Pool, configured: string | undefined): Promise<{ generated: string | null }> {
  if (configured) {
    await db.query('INSERT INTO api_keys (id, key_hash, key_prefix) VALUES ($1, $2, $3) ON CONFLICT (key_hash) DO NOTHING',
      [newId('key'), hashKey(configured), configured.slice(0, 7)]);
    return { generated: null };
  }
  const { rows } = await db.query<{ n: string }>('SELECT count(*) AS n FROM api_keys');
  if (Number(rows[0]!.n) > 0) return { generated: null };
  const key = 'sk_' + randomBytes(24).toString('base64url');
  // Two processes starting at once: only the first insert of the first key wins.
  const res = await db.query(
    `INSERT INTO api_keys (id, key_hash, key_prefix) SELECT $1, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM api_keys)`,
    [newId('key'), hashKey(key), key.slice(0, 7)],
  );
  return { generated: res.rowCount === 1 ? key : null };
}

export class ApiKeyVerifier {
  private known = new Set<string>();
  constructor(private readonly db: Pool) {}

  async verify(req: FastifyRequest): Promise<void> {
    const header = req.headers.authorization;
    const match = typeof header === 'string' ? /^Bearer\s+(\S+)$/i.exec(header) : null;
    if (!match) throw new ApiError(401, 'authentication_error', 'api_key_missing', 'Provide your secret key as Authorization: Bearer <key>');
    const hash = hashKey(match[1]!);
    if (this.known.has(hash)) return;
    const { rows } = await this.db.query<{ key_hash: string }>('SELECT key_hash FROM api_keys WHERE key_hash = $1', [hash]);
    const stored = rows[0]?.key_hash;
    if (!stored || !timingSafeEqual(Buffer.from(stored), Buffer.from(hash))) {
      throw new ApiError(401, 'authentication_error', 'api_key_invalid', 'Invalid API key');
    }
    if (this.known.size < 1000) this.known.add(hash);
  }
}

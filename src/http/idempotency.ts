/**
 * Idempotency-Key on POST: the first response is stored and replayed for the same key and body;
 * the same key with another body is a 409. Concurrent duplicates wait for the first to finish.
 */
import { createHash } from 'node:crypto';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Pool } from '../store/db.ts';
import { ApiError } from '../domain/errors.ts';

declare module 'fastify' {
  interface FastifyRequest { idempotencyKey?: string }
}

const MAX_KEY_LENGTH = 255;
const WAIT_STEP_MS = 20;
const MAX_WAIT_MS = 15_000;
/** A 'processing' row older than this belongs to a process that died; another may take over. */
const STALE_AFTER_MS = 60_000;

function canonical(value: unknown): string {
  if (Array.isArray(value)) return '[' + value.map(canonical).join(',') + ']';
  if (value && typeof value === 'object') {
    return '{' + Object.keys(value).sort().map((k) => JSON.stringify(k) + ':' + canonical((value as Record<string, unknown>)[k])).join(',') + '}';
  }
  return JSON.stringify(value ?? null);
}

function fingerprint(req: FastifyRequest): string {
  return createHash('sha256').update(req.method + ' ' + req.url + '\n' + canonical(req.body)).digest('hex');
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface KeyRow { fingerprint: string; state: 'processing' | 'done'; response_status: number | null; response_body: string | null; locked_at: Date }

export function installIdempotency(app: FastifyInstance, db: Pool): void {
  app.addHook('preHandler', async (req, reply) => {
    if (req.method !== 'POST') return;
    const header = req.headers['idempotency-key'];
    if (header === undefined) return;
    const key = Array.isArray(header) ? header[0] : header;
    if (!key || key.length > MAX_KEY_LENGTH) {
      throw new ApiError(400, 'invalid_request_error', 'idempotency_key_invalid', `Idempotency-Key must be 1 to ${MAX_KEY_LENGTH} characters`);
    }
    // Streamed bodies (bill uploads) are not fingerprinted: the key is honoured by the handler's own idempotency, if any.
    if (typeof (req.body as { pipe?: unknown } | undefined)?.pipe === 'function') return;
    const fp = fingerprint(req);
    const deadline = Date.now() + MAX_WAIT_MS;
    while (Date.now() < deadline) {
      const ins = await db.query(
        `INSERT INTO idempotency_keys (key, fingerprint, state) VALUES ($1, $2, 'processing') ON CONFLICT (key) DO NOTHING`,
        [key, fp],
      );
      if (ins.rowCount === 1) { req.idempotencyKey = key; return; }
      const { rows } = await db.query<KeyRow>('SELECT * FROM idempotency_keys WHERE key = $1', [key]);
      const row = rows[0];
      if (!row) continue; // released by a failed first request: try to claim it again
      if (row.fingerprint !== fp) {
        throw new ApiError(409, 'idempotency_error', 'idempotency_key_reused',
          'This Idempotency-Key was already used with a different request');
      }
      if (row.state === 'done') {
        reply.code(row.response_status ?? 200).header('idempotent-replayed', 'true').type('application/json');
        return reply.send(row.response_body);
      }
      if (Date.now() - row.locked_at.getTime() > STALE_AFTER_MS) {
        const take = await db.query(
          `UPDATE idempotency_keys SET locked_at = now() WHERE key = $1 AND state = 'processing' AND locked_at = $2`,
          [key, row.locked_at],
        );
        if (take.rowCount === 1) { req.idempotencyKey = key; return; }
      }
      await sleep(WAIT_STEP_MS);
    }
    throw new ApiError(409, 'idempotency_error', 'idempotency_key_in_use', 'A request with this Idempotency-Key is still in progress');
  });

  app.addHook('onSend', async (req, reply, payload) => {
    const key = req.idempotencyKey;
    if (!key) return payload;
    req.idempotencyKey = undefined;
    if (reply.statusCode >= 500) {
      // Nothing was promised: let the client retry with the same key.
      await db.query(`DELETE FROM idempotency_keys WHERE key = $1 AND state = 'processing'`, [key]);
    } else {
      await db.query(
        `UPDATE idempotency_keys SET state = 'done', response_status = $2, response_body = $3 WHERE key = $1`,
        [key, reply.statusCode, typeof payload === 'string' ? payload : String(payload ?? '')],
      );
    }
    return payload;
  });
}

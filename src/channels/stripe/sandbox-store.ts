/**
 * The Stripe sandbox's state in PostgreSQL (migration 0011): PaymentIntents (compare-and-set on
 * `version`), the events it emitted, and its Idempotency-Key store; refunds (migration 0022,
 * compare-and-set on `version` too) with the instant the sandbox finishes a pending one itself.
 */
import type { Client, Queryable } from '../../store/db.ts';
import { compileSearch, type SearchQuery } from './sandbox-search.ts';

export type IntentJson = Record<string, unknown> & {
  id: string;
  status: string;
  amount: number;
  currency: string;
  created: number;
  metadata: Record<string, string>;
};

export interface StoredIntent {
  accountId: string;
  object: IntentJson;
  latestCharge: Record<string, unknown> | null;
  version: number;
}

interface IntentRow {
  account_id: string;
  object: IntentJson;
  latest_charge: Record<string, unknown> | null;
  version: number;
}

const COLUMNS = 'account_id, object, latest_charge, version';

function fromRow(r: IntentRow): StoredIntent {
  return { accountId: r.account_id, object: r.object, latestCharge: r.latest_charge, version: r.version };
}

export async function getIntent(db: Queryable, accountId: string, id: string): Promise<StoredIntent | null> {
  const { rows } = await db.query<IntentRow>(`SELECT ${COLUMNS} FROM sandbox_stripe_payment_intents WHERE account_id = $1 AND id = $2`, [accountId, id]);
  return rows[0] ? fromRow(rows[0]) : null;
}

/** The newest PaymentIntent whose metadata carries `key = value`. */
export async function findIntentByMetadata(db: Queryable, accountId: string, key: string, value: string): Promise<StoredIntent | null> {
  const { rows } = await db.query<IntentRow>(
    `SELECT ${COLUMNS} FROM sandbox_stripe_payment_intents
      WHERE account_id = $1 AND (object->'metadata') @> jsonb_build_object($2::text, $3::text)
      ORDER BY created DESC, id DESC LIMIT 1`,
    [accountId, key, value],
  );
  return rows[0] ? fromRow(rows[0]) : null;
}

export async function insertIntent(db: Queryable, accountId: string, object: IntentJson, latestCharge: Record<string, unknown> | null): Promise<StoredIntent> {
  const { rows } = await db.query<IntentRow>(
    `INSERT INTO sandbox_stripe_payment_intents (id, account_id, status, amount, currency, created, object, latest_charge)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING ${COLUMNS}`,
    [object.id, accountId, object.status, object.amount, object.currency, object.created, JSON.stringify(object), latestCharge === null ? null : JSON.stringify(latestCharge)],
  );
  return fromRow(rows[0]!);
}

/** Compare-and-set: write `next` only if the row still has `expected.version`; null when it moved. */
export async function updateIntent(db: Queryable, expected: StoredIntent, next: IntentJson, latestCharge: Record<string, unknown> | null): Promise<StoredIntent | null> {
  if (next.id !== expected.object.id) throw new Error(`updateIntent: ${next.id} is not ${expected.object.id}`);
  const { rows } = await db.query<IntentRow>(
    `UPDATE sandbox_stripe_payment_intents
        SET status = $4, object = $5, latest_charge = $6, version = version + 1, updated_at = now()
      WHERE account_id = $1 AND id = $2 AND version = $3
      RETURNING ${COLUMNS}`,
    [expected.accountId, next.id, expected.version, next.status, JSON.stringify(next), latestCharge === null ? null : JSON.stringify(latestCharge)],
  );
  return rows[0] ? fromRow(rows[0]) : null;
}

export interface SearchPage { data: IntentJson[]; hasMore: boolean; next: { created: number; id: string } | null }

/** Newest first; `after` is the last row of the previous page (keyset pagination). */
export async function searchIntents(db: Queryable, accountId: string, query: SearchQuery, limit: number, after: { created: number; id: string } | null): Promise<SearchPage> {
  if (!Number.isInteger(limit) || limit < 1 || limit > 100) throw new Error(`search limit ${limit} out of range`);
  const where = compileSearch(query, 5);
  const { rows } = await db.query<{ object: IntentJson; created: string }>(
    `SELECT object, created FROM sandbox_stripe_payment_intents
      WHERE account_id = $1 AND ($2::bigint IS NULL OR (created, id) < ($2::bigint, $3::text)) AND ${where.sql}
      ORDER BY created DESC, id DESC LIMIT $4`,
    [accountId, after?.created ?? null, after?.id ?? '', limit + 1, ...where.params],
  );
  const page = rows.slice(0, limit).map((r) => r.object);
  const last = page[page.length - 1];
  const hasMore = rows.length > limit;
  return { data: page, hasMore, next: hasMore && last ? { created: last.created, id: last.id } : null };
}

// ---- Events --------------------------------------------------------------------------------------

export async function insertEvent(db: Queryable, accountId: string, event: { id: string; type: string; created: number; data: { object: { id: string } } }): Promise<void> {
  await db.query(
    `INSERT INTO sandbox_stripe_events (id, account_id, type, object_id, created, event) VALUES ($1, $2, $3, $4, $5, $6)`,
    [event.id, accountId, event.type, event.data.object.id, event.created, JSON.stringify(event)],
  );
}

export async function getEvent(db: Queryable, accountId: string, id: string): Promise<Record<string, unknown> | null> {
  const { rows } = await db.query<{ event: Record<string, unknown> }>(`SELECT event FROM sandbox_stripe_events WHERE account_id = $1 AND id = $2`, [accountId, id]);
  return rows[0]?.event ?? null;
}

export async function listEventsFor(db: Queryable, accountId: string, objectId: string): Promise<Array<Record<string, unknown>>> {
  const { rows } = await db.query<{ event: Record<string, unknown> }>(
    `SELECT event FROM sandbox_stripe_events WHERE account_id = $1 AND object_id = $2 ORDER BY created, id LIMIT 100`,
    [accountId, objectId],
  );
  return rows.map((r) => r.event);
}

// ---- Idempotency ---------------------------------------------------------------------------------

/** Stripe prunes keys after 24 hours; a key reused later starts a new request. */
export const IDEMPOTENCY_TTL_HOURS = 24;
/** Advisory-lock namespace of the sandbox's idempotency keys ("STRP"). */
const IDEMPOTENCY_LOCK_CLASS = 0x53545250;

export interface SavedResponse {
  method: string;
  path: string;
  paramsSha256: string;
  status: number;
  body: string;
  requestId: string;
}

/**
 * Take the key's lock for this transaction; false when another request holds it (Stripe answers
 * 409 then). Expired entries are forgotten first.
 */
export async function lockIdempotencyKey(tx: Client, accountId: string, key: string): Promise<boolean> {
  const { rows } = await tx.query<{ locked: boolean }>(
    `SELECT pg_try_advisory_xact_lock($1, hashtext($2 || ':' || $3)) AS locked`,
    [IDEMPOTENCY_LOCK_CLASS, accountId, key],
  );
  if (!rows[0]?.locked) return false;
  await tx.query(
    `DELETE FROM sandbox_stripe_idempotency_keys WHERE account_id = $1 AND key = $2 AND created_at < now() - make_interval(hours => $3)`,
    [accountId, key, IDEMPOTENCY_TTL_HOURS],
  );
  return true;
}

export async function getSavedResponse(tx: Client, accountId: string, key: string): Promise<SavedResponse | null> {
  const { rows } = await tx.query<{ request_method: string; request_path: string; params_sha256: string; response_status: number; response_body: string; request_id: string }>(
    `SELECT request_method, request_path, params_sha256, response_status, response_body, request_id
       FROM sandbox_stripe_idempotency_keys WHERE account_id = $1 AND key = $2`,
    [accountId, key],
  );
  const r = rows[0];
  return r ? { method: r.request_method, path: r.request_path, paramsSha256: r.params_sha256, status: r.response_status, body: r.response_body, requestId: r.request_id } : null;
}

export async function saveResponse(tx: Client, accountId: string, key: string, saved: SavedResponse): Promise<void> {
  await tx.query(
    `INSERT INTO sandbox_stripe_idempotency_keys (account_id, key, request_method, request_path, params_sha256, response_status, response_body, request_id)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
    [accountId, key, saved.method, saved.path, saved.paramsSha256, saved.status, saved.body, saved.requestId],
  );
}

// ---- Refunds (migration 0022) ---------------------------------------------------------------------

export type RefundJson = Record<string, unknown> & {
  id: string;
  status: string;
  amount: number;
  currency: string;
  created: number;
  payment_intent: string;
  charge: string;
  metadata: Record<string, string>;
};

export interface StoredRefund {
  accountId: string;
  object: RefundJson;
  /** When the sandbox finishes it by itself, and how; null when nothing is scheduled. */
  settleAt: Date | null;
  settleStatus: 'succeeded' | 'failed' | null;
  version: number;
}

interface RefundRow {
  account_id: string;
  object: RefundJson;
  settle_at: Date | null;
  settle_status: 'succeeded' | 'failed' | null;
  version: number;
}

const REFUND_COLUMNS = 'account_id, object, settle_at, settle_status, version';

function refundFromRow(r: RefundRow): StoredRefund {
  return { accountId: r.account_id, object: r.object, settleAt: r.settle_at, settleStatus: r.settle_status, version: r.version };
}

export async function insertRefund(db: Queryable, accountId: string, object: RefundJson, settle: { afterMs: number; status: 'succeeded' | 'failed' } | null): Promise<StoredRefund> {
  const { rows } = await db.query<RefundRow>(
    `INSERT INTO sandbox_stripe_refunds (id, account_id, payment_intent, charge, status, amount, currency, created, object, settle_at, settle_status)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,
             CASE WHEN $10::double precision IS NULL THEN NULL ELSE now() + make_interval(secs => $10::double precision / 1000) END, $11)
     RETURNING ${REFUND_COLUMNS}`,
    [object.id, accountId, object.payment_intent, object.charge, object.status, object.amount, object.currency, object.created, JSON.stringify(object), settle?.afterMs ?? null, settle?.status ?? null],
  );
  return refundFromRow(rows[0]!);
}

export async function getRefund(db: Queryable, accountId: string, id: string): Promise<StoredRefund | null> {
  const { rows } = await db.query<RefundRow>(`SELECT ${REFUND_COLUMNS} FROM sandbox_stripe_refunds WHERE account_id = $1 AND id = $2`, [accountId, id]);
  return rows[0] ? refundFromRow(rows[0]) : null;
}

/** The refund, only if the sandbox is due to finish it by itself now (the database's clock decides). */
export async function getDueRefund(db: Queryable, accountId: string, id: string): Promise<StoredRefund | null> {
  const { rows } = await db.query<RefundRow>(
    `SELECT ${REFUND_COLUMNS} FROM sandbox_stripe_refunds WHERE account_id = $1 AND id = $2 AND settle_at <= now()`,
    [accountId, id],
  );
  return rows[0] ? refundFromRow(rows[0]) : null;
}

/** Ids of refunds due to be finished, oldest first (bounded). */
export async function listDueRefunds(db: Queryable, accountId: string, limit: number): Promise<string[]> {
  const { rows } = await db.query<{ id: string }>(
    `SELECT id FROM sandbox_stripe_refunds WHERE account_id = $1 AND settle_at <= now() ORDER BY settle_at, id LIMIT $2`,
    [accountId, limit],
  );
  return rows.map((r) => r.id);
}

/** The newest refund whose metadata carries `key = value`. */
export async function findRefundByMetadata(db: Queryable, accountId: string, key: string, value: string): Promise<StoredRefund | null> {
  const { rows } = await db.query<RefundRow>(
    `SELECT ${REFUND_COLUMNS} FROM sandbox_stripe_refunds
      WHERE account_id = $1 AND (object->'metadata') @> jsonb_build_object($2::text, $3::text)
      ORDER BY created DESC, id DESC LIMIT 1`,
    [accountId, key, value],
  );
  return rows[0] ? refundFromRow(rows[0]) : null;
}

/** Compare-and-set on `version`; the schedule is replaced by `settle` (null clears it). Null when the row moved. */
export async function updateRefund(db: Queryable, expected: StoredRefund, next: RefundJson, settle: { afterMs: number; status: 'succeeded' | 'failed' } | null): Promise<StoredRefund | null> {
  if (next.id !== expected.object.id) throw new Error(`updateRefund: ${next.id} is not ${expected.object.id}`);
  const { rows } = await db.query<RefundRow>(
    `UPDATE sandbox_stripe_refunds
        SET status = $4, object = $5, version = version + 1, updated_at = now(),
            settle_at = CASE WHEN $6::double precision IS NULL THEN NULL ELSE now() + make_interval(secs => $6::double precision / 1000) END,
            settle_status = $7
      WHERE account_id = $1 AND id = $2 AND version = $3
      RETURNING ${REFUND_COLUMNS}`,
    [expected.accountId, next.id, expected.version, next.status, JSON.stringify(next), settle?.afterMs ?? null, settle?.status ?? null],
  );
  return rows[0] ? refundFromRow(rows[0]) : null;
}

export interface RefundPage { data: RefundJson[]; hasMore: boolean }

/**
 * Newest first, like `GET /v1/refunds`; `startingAfter` is the last refund of the previous page
 * (keyset on created, id). Filtered by PaymentIntent and/or charge when given.
 */
export async function listRefunds(
  db: Queryable,
  accountId: string,
  filter: { paymentIntent: string | null; charge: string | null },
  limit: number,
  startingAfter: { created: number; id: string } | null,
): Promise<RefundPage> {
  if (!Number.isInteger(limit) || limit < 1 || limit > 100) throw new Error(`refund list limit ${limit} out of range`);
  const { rows } = await db.query<{ object: RefundJson }>(
    `SELECT object FROM sandbox_stripe_refunds
      WHERE account_id = $1 AND ($2::text IS NULL OR payment_intent = $2) AND ($3::text IS NULL OR charge = $3)
        AND ($4::bigint IS NULL OR (created, id) < ($4::bigint, $5::text))
      ORDER BY created DESC, id DESC LIMIT $6`,
    [accountId, filter.paymentIntent, filter.charge, startingAfter?.created ?? null, startingAfter?.id ?? '', limit + 1],
  );
  return { data: rows.slice(0, limit).map((r) => r.object), hasMore: rows.length > limit };
}

/** The PaymentIntent whose latest charge is `chargeId`. */
export async function findIntentByCharge(db: Queryable, accountId: string, chargeId: string): Promise<StoredIntent | null> {
  const { rows } = await db.query<IntentRow>(
    `SELECT ${COLUMNS} FROM sandbox_stripe_payment_intents WHERE account_id = $1 AND latest_charge->>'id' = $2 LIMIT 1`,
    [accountId, chargeId],
  );
  return rows[0] ? fromRow(rows[0]) : null;
}

/**
 * The App Store sandbox's Get Notification History (`POST /inApps/v1/notifications/history`),
 * answered from what the sandbox really sent: the rows of the shared notification queue
 * (sandbox_notifications, channel apple_iap) with the signed payload each one carries, and their
 * delivery attempts (sandbox_notification_attempts). No table of its own.
 *
 * As at Apple:
 * - body `{startDate, endDate}` in ms (required), optional `notificationType` (+ `notificationSubtype`),
 *   `transactionId` (not both with notificationType), `onlyFailures`; `?paginationToken=` for the
 *   next page; at most 20 records a page, `hasMore` and a `paginationToken` while there are more.
 * - startDate more than 180 days ago → 400 4000012; endDate not after startDate → 400 4000013;
 *   an endDate in the future means now (frozen in the pagination token for the next pages).
 *   Apple's own sandbox environment keeps only 30 days; this sandbox applies the 180-day rule of
 *   production, which is what the connector must cope with.
 * - errors in Apple's shape `{errorCode, errorMessage}`; the bearer token is checked by the caller
 *   (the Server API scope in sandbox.ts: 401 `Unauthenticated`).
 * The window is on the notification's own `signedDate` (what the downloaded file says), start
 * inclusive, end exclusive. A notification the faults dropped is one Apple sent that never
 * arrived: it is listed, with one attempt NO_RESPONSE. A duplicate the faults injected is the same
 * notification delivered twice, listed once. The order is the order of sending.
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { NotificationTypeV2, Subtype } from '@apple/app-store-server-library';
import type { Queryable } from '../../store/db.ts';
import { isTransactionId } from './transformers.ts';

export const HISTORY_PAGE_SIZE = 20;
const DAY_MS = 86_400_000;
export const HISTORY_RETENTION_MS = 180 * DAY_MS;
export const PAGINATION_TOKEN_LIFETIME_MS = 24 * 3600_000;
/** signedDate is stamped in the same database transaction that inserts the row: seconds apart at most. */
const CREATED_AT_MARGIN = `interval '10 minutes'`;

const NOTIFICATION_TYPES: ReadonlySet<string> = new Set(Object.values(NotificationTypeV2));
const SUBTYPES: ReadonlySet<string> = new Set(Object.values(Subtype));

export interface HistoryRecord {
  signedPayload: string;
  sendAttempts: Array<{ attemptDate: number; sendAttemptResult: string }>;
}

export type HistoryAnswer =
  | { status: 200; body: { notificationHistory: HistoryRecord[]; hasMore: boolean; paginationToken?: string } }
  | { status: 400; body: { errorCode: number; errorMessage: string } };

const fail = (errorCode: number, errorMessage: string): HistoryAnswer => ({ status: 400, body: { errorCode, errorMessage } });

export const HISTORY_ERRORS = {
  GENERAL_BAD_REQUEST: 4000000,
  INVALID_TRANSACTION_ID: 4000006,
  START_DATE_TOO_FAR_IN_PAST: 4000012,
  START_DATE_AFTER_END_DATE: 4000013,
  INVALID_PAGINATION_TOKEN: 4000014,
  INVALID_START_DATE: 4000015,
  INVALID_END_DATE: 4000016,
  PAGINATION_TOKEN_EXPIRED: 4000017,
  INVALID_NOTIFICATION_TYPE: 4000018,
  MULTIPLE_FILTERS_SUPPLIED: 4000019,
} as const;

interface Filters {
  startDate: number;
  endDate: number;
  notificationType: string | null;
  notificationSubtype: string | null;
  transactionId: string | null;
  onlyFailures: boolean;
}

const isMs = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

function parseRequest(body: unknown, now: number): { ok: true; filters: Filters } | { ok: false; answer: HistoryAnswer } {
  const no = (code: number, message: string) => ({ ok: false as const, answer: fail(code, message) });
  if (body === null || typeof body !== 'object' || Array.isArray(body)) return no(HISTORY_ERRORS.GENERAL_BAD_REQUEST, 'Invalid request.');
  const b = body as Record<string, unknown>;
  if (!isMs(b['startDate'])) return no(HISTORY_ERRORS.INVALID_START_DATE, 'Invalid request start date.');
  if (!isMs(b['endDate'])) return no(HISTORY_ERRORS.INVALID_END_DATE, 'Invalid request end date.');
  const startDate = b['startDate'];
  const endDate = b['endDate'];
  if (startDate < now - HISTORY_RETENTION_MS) return no(HISTORY_ERRORS.START_DATE_TOO_FAR_IN_PAST, 'Invalid request start date is too far in the past. Notification history is kept for 180 days.');
  if (endDate <= startDate) return no(HISTORY_ERRORS.START_DATE_AFTER_END_DATE, 'Invalid request start date is after the end date, or equal to it.');
  const type = b['notificationType'];
  const subtype = b['notificationSubtype'];
  const transactionId = b['transactionId'];
  if (type !== undefined && (typeof type !== 'string' || !NOTIFICATION_TYPES.has(type))) return no(HISTORY_ERRORS.INVALID_NOTIFICATION_TYPE, 'Invalid notification type.');
  if (subtype !== undefined && (typeof subtype !== 'string' || !SUBTYPES.has(subtype) || type === undefined)) {
    return no(HISTORY_ERRORS.INVALID_NOTIFICATION_TYPE, 'Invalid notification subtype: it needs a valid subtype and its notificationType.');
  }
  if (transactionId !== undefined && type !== undefined) return no(HISTORY_ERRORS.MULTIPLE_FILTERS_SUPPLIED, 'Invalid request: give notificationType or transactionId, not both.');
  if (transactionId !== undefined && !isTransactionId(transactionId)) return no(HISTORY_ERRORS.INVALID_TRANSACTION_ID, 'Invalid transaction id.');
  const onlyFailures = b['onlyFailures'] ?? false;
  if (typeof onlyFailures !== 'boolean') return no(HISTORY_ERRORS.GENERAL_BAD_REQUEST, 'Invalid request: onlyFailures must be a boolean.');
  return {
    ok: true,
    filters: {
      startDate, endDate, onlyFailures,
      notificationType: (type as string | undefined) ?? null,
      notificationSubtype: (subtype as string | undefined) ?? null,
      transactionId: (transactionId as string | undefined) ?? null,
    },
  };
}

// ---- Pagination tokens: stateless, MAC'd, bound to the request, expiring --------------------------------

interface TokenState {
  /** Last notification id answered. */
  after: string;
  /** The effective end of the window (a future endDate frozen at the first page). */
  end: number;
  expires: number;
  fingerprint: string;
}

const fingerprintOf = (f: Filters) =>
  createHash('sha256').update(JSON.stringify([f.startDate, f.endDate, f.notificationType, f.notificationSubtype, f.transactionId, f.onlyFailures])).digest('base64url').slice(0, 22);

function mac(key: Buffer, data: string): Buffer {
  return createHmac('sha256', key).update(data).digest().subarray(0, 16);
}

function issueToken(key: Buffer, state: TokenState): string {
  const data = Buffer.from(JSON.stringify(state)).toString('base64url');
  return `${data}.${mac(key, data).toString('base64url')}`;
}

function readToken(key: Buffer, token: string): TokenState | null {
  const m = /^([A-Za-z0-9_-]{1,2048})\.([A-Za-z0-9_-]{22})$/.exec(token);
  if (!m) return null;
  const given = Buffer.from(m[2]!, 'base64url');
  if (given.length !== 16 || !timingSafeEqual(given, mac(key, m[1]!))) return null;
  try {
    const s = JSON.parse(Buffer.from(m[1]!, 'base64url').toString('utf8')) as Partial<TokenState>;
    if (typeof s.after !== 'string' || !/^\d{1,19}$/.test(s.after) || !isMs(s.end) || !isMs(s.expires) || typeof s.fingerprint !== 'string') return null;
    return s as TokenState;
  } catch {
    return null;
  }
}

/** The key that MACs pagination tokens, derived from the sandbox's keys (the same in every process). */
export function paginationTokenKey(secret: string): Buffer {
  return createHash('sha256').update('knowpay apple sandbox pagination token\0').update(secret).digest();
}

// ---- The query -------------------------------------------------------------------------------------------

/** The JSON payload of a compact JWS held in `expr` (NULL when it is not one), decoded in SQL. */
function jwsPayloadSql(expr: string): string {
  const part = `split_part(${expr}, '.', 2)`;
  return `CASE WHEN ${expr} ~ '^[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+$'
    THEN convert_from(decode(rpad(translate(${part}, '-_', '+/'), ((length(${part}) + 3) / 4) * 4, '='), 'base64'), 'UTF8')::jsonb END`;
}

interface Row { id: string; status: string; created_at: Date; signed: string }
interface AttemptRow { notification_id: string; started_at: Date; status_code: number | null; error: string | null; acknowledged: boolean }

/** Apple's sendAttemptResult for one of the dispatcher's attempts. */
function attemptResult(a: AttemptRow): string {
  if (a.acknowledged) return 'SUCCESS';
  if (a.status_code !== null) return 'UNSUCCESSFUL_HTTP_RESPONSE_CODE';
  const e = a.error ?? '';
  if (/timed out/i.test(e)) return 'TIMED_OUT';
  if (/ECONNRESET|EPIPE|UND_ERR_SOCKET/.test(e)) return 'SOCKET_ISSUE';
  if (/CERT|TLS|SSL/i.test(e)) return 'TLS_ISSUE';
  if (e === '') return 'OTHER';
  return 'NO_RESPONSE';
}

export interface HistoryOptions {
  bundleId: string;
  channel: string;
  tokenKey: Buffer;
  now?: Date;
}

/** Answer one Get Notification History request. */
export async function notificationHistory(db: Queryable, opts: HistoryOptions, body: unknown, paginationToken: unknown): Promise<HistoryAnswer> {
  const now = (opts.now ?? new Date()).getTime();
  const parsed = parseRequest(body, now);
  if (!parsed.ok) return parsed.answer;
  const f = parsed.filters;
  const fingerprint = fingerprintOf(f);
  let after = '0';
  let end = Math.min(f.endDate, now);
  if (paginationToken !== undefined) {
    const state = typeof paginationToken === 'string' ? readToken(opts.tokenKey, paginationToken) : null;
    if (!state || state.fingerprint !== fingerprint) return fail(HISTORY_ERRORS.INVALID_PAGINATION_TOKEN, 'Invalid pagination token.');
    if (state.expires <= now) return fail(HISTORY_ERRORS.PAGINATION_TOKEN_EXPIRED, 'Pagination token expired.');
    after = state.after;
    end = state.end;
  }
  const outer = jwsPayloadSql(`payload->>'signedPayload'`);
  const inner = jwsPayloadSql(`h.n->'data'->>'signedTransactionInfo'`);
  const { rows } = await db.query<Row>(
    `SELECT h.id::text AS id, h.status, h.created_at, h.signed
       FROM (SELECT id, status, created_at, payload->>'signedPayload' AS signed, ${outer} AS n
               FROM sandbox_notifications
              WHERE channel = $1 AND duplicate_of IS NULL AND id > $2::bigint
                AND created_at >= to_timestamp($3::double precision / 1000) - ${CREATED_AT_MARGIN}
                AND created_at < to_timestamp($4::double precision / 1000) + ${CREATED_AT_MARGIN}
              ORDER BY id
             OFFSET 0) h
      WHERE h.n IS NOT NULL
        AND (h.n->>'signedDate')::bigint >= $3 AND (h.n->>'signedDate')::bigint < $4
        AND h.n->'data'->>'bundleId' = $5
        AND ($6::text IS NULL OR h.n->>'notificationType' = $6)
        AND ($7::text IS NULL OR h.n->>'subtype' = $7)
        AND (NOT $8::boolean OR h.status <> 'delivered')
        AND ($9::text IS NULL OR coalesce((SELECT t->>'transactionId' = $9 OR t->>'originalTransactionId' = $9 FROM (SELECT ${inner} AS t) tx), false))
      ORDER BY h.id
      LIMIT $10`,
    [opts.channel, after, f.startDate, end, opts.bundleId, f.notificationType, f.notificationSubtype, f.onlyFailures, f.transactionId, HISTORY_PAGE_SIZE + 1],
  );
  const hasMore = rows.length > HISTORY_PAGE_SIZE;
  const page = rows.slice(0, HISTORY_PAGE_SIZE);
  const attempts = new Map<string, HistoryRecord['sendAttempts']>();
  if (page.length > 0) {
    const { rows: tried } = await db.query<AttemptRow>(
      `SELECT notification_id::text AS notification_id, started_at, status_code, error, acknowledged
         FROM sandbox_notification_attempts WHERE notification_id = ANY($1::bigint[]) ORDER BY notification_id, attempt`,
      [page.map((r) => r.id)],
    );
    for (const a of tried) {
      const list = attempts.get(a.notification_id) ?? [];
      list.push({ attemptDate: a.started_at.getTime(), sendAttemptResult: attemptResult(a) });
      attempts.set(a.notification_id, list);
    }
  }
  const notificationHistory = page.map((r): HistoryRecord => ({
    signedPayload: r.signed,
    sendAttempts: r.status === 'dropped' ? [{ attemptDate: r.created_at.getTime(), sendAttemptResult: 'NO_RESPONSE' }] : (attempts.get(r.id) ?? []),
  }));
  if (!hasMore) return { status: 200, body: { notificationHistory, hasMore: false } };
  const token = issueToken(opts.tokenKey, { after: page[page.length - 1]!.id, end, expires: now + PAGINATION_TOKEN_LIFETIME_MS, fingerprint });
  return { status: 200, body: { notificationHistory, hasMore: true, paginationToken: token } };
}

/**
 * Outbound notification queue for channel sandboxes: a PostgreSQL table polled by a loop.
 *
 * - Claiming uses `FOR UPDATE SKIP LOCKED` and a lease (token + expiry), so two processes sharing
 *   the database never make the same attempt twice; a crashed process's lease simply expires.
 * - Each channel describes itself with a `NotificationChannelSpec`: its retry schedule, how to
 *   build the HTTP request for an attempt (signing happens then, so `notify_time` is fresh), and
 *   what counts as an acknowledgement.
 * - Faults (faults.ts) are applied here: drop/duplicate when a notification is enqueued,
 *   delay/reorder when it is delivered.
 * Everything is bounded: batch size, requests in flight, attempts, request time, response bytes.
 */
import { randomUUID } from 'node:crypto';
import type { Pool, Queryable } from '../../store/db.ts';
import { readFaults, type SandboxFaults } from './faults.ts';

export interface OutboundRequest {
  url: string;
  method: 'POST';
  headers: Record<string, string>;
  body: string;
}

export interface DeliveryContext {
  eventId: string;
  channelReference: string;
  url: string;
  /** 1-based number of this attempt. */
  attempt: number;
  now: Date;
}

export interface NotificationChannelSpec<P extends Record<string, unknown> = Record<string, unknown>> {
  channel: string;
  /**
   * Delay before each attempt in real channel time (ms), counted from the previous attempt;
   * `scheduleMs[0]` (usually 0) is the first one. Its length is the number of attempts.
   */
  scheduleMs: readonly number[];
  buildRequest(payload: P, ctx: DeliveryContext): OutboundRequest;
  isAcknowledged(response: { status: number; body: string }): boolean;
}

export interface DispatcherOptions<P extends Record<string, unknown>> {
  pool: Pool;
  spec: NotificationChannelSpec<P>;
  /** Multiplies every schedule delay: 1 = real time, 0.001 in tests, 0 = retry at once. */
  timeScale: number;
  pollIntervalMs?: number;
  batchSize?: number;
  maxInFlight?: number;
  requestTimeoutMs?: number;
  /** Upper bound of the random hold-back when the reorder fault is on. */
  reorderMaxHoldMs?: number;
  /** Source of randomness for faults (tests pass a seeded one). */
  random?: () => number;
  onError?: (err: unknown) => void;
}

export type NotificationStatus = 'pending' | 'delivered' | 'failed' | 'dropped';

export interface SandboxNotification {
  id: string;
  channel: string;
  channelReference: string;
  eventId: string;
  url: string;
  payload: Record<string, unknown>;
  status: NotificationStatus;
  attempts: number;
  maxAttempts: number;
  nextAttemptAt: Date;
  lastStatusCode: number | null;
  lastError: string | null;
  deliveredAt: Date | null;
  duplicateOf: string | null;
  createdAt: Date;
}

export interface SandboxNotificationAttempt {
  notificationId: string;
  attempt: number;
  startedAt: Date;
  finishedAt: Date;
  requestBody: string;
  statusCode: number | null;
  responseBody: string | null;
  error: string | null;
  acknowledged: boolean;
}

export interface EnqueueInput<P extends Record<string, unknown>> {
  channelReference: string;
  eventId: string;
  url: string;
  payload: P;
}

export interface EnqueueResult {
  ids: string[];
  dropped: boolean;
  duplicated: boolean;
}

export interface NotificationDispatcher<P extends Record<string, unknown>> {
  readonly channel: string;
  /** Insert a notification (inside the caller's transaction when `db` is a client). */
  enqueue(db: Queryable, input: EnqueueInput<P>): Promise<EnqueueResult>;
  /** Start the polling loop (idempotent). */
  start(): void;
  /** Poll now instead of at the next tick (e.g. right after a commit). */
  kick(): void;
  /** Stop polling, abort waits and requests in flight, release their leases. */
  stop(): Promise<void>;
  /** Claim and deliver one batch, waiting for the deliveries; for tests and scripts. */
  runOnce(): Promise<number>;
}

const MAX_RESPONSE_BYTES = 4096;
const LEASE_MARGIN_MS = 5_000;
const MAX_ERROR_BACKOFF_MS = 30_000;
const NOTIFICATION_COLUMNS = `id, channel, channel_reference, event_id, url, payload, status, attempts, max_attempts,
  next_attempt_at, last_status_code, last_error, delivered_at, duplicate_of, created_at`;

interface NotificationRow {
  id: string;
  channel: string;
  channel_reference: string;
  event_id: string;
  url: string;
  payload: Record<string, unknown>;
  status: NotificationStatus;
  attempts: number;
  max_attempts: number;
  next_attempt_at: Date;
  last_status_code: number | null;
  last_error: string | null;
  delivered_at: Date | null;
  duplicate_of: string | null;
  created_at: Date;
}

function fromRow(r: NotificationRow): SandboxNotification {
  return {
    id: r.id,
    channel: r.channel,
    channelReference: r.channel_reference,
    eventId: r.event_id,
    url: r.url,
    payload: r.payload,
    status: r.status,
    attempts: r.attempts,
    maxAttempts: r.max_attempts,
    nextAttemptAt: r.next_attempt_at,
    lastStatusCode: r.last_status_code,
    lastError: r.last_error,
    deliveredAt: r.delivered_at,
    duplicateOf: r.duplicate_of,
    createdAt: r.created_at,
  };
}

export function createNotificationDispatcher<P extends Record<string, unknown>>(opts: DispatcherOptions<P>): NotificationDispatcher<P> {
  const { pool, spec } = opts;
  validateSpec(spec, opts.timeScale);
  const pollIntervalMs = opts.pollIntervalMs ?? defaultPollInterval(spec, opts.timeScale);
  const batchSize = opts.batchSize ?? 20;
  const maxInFlight = opts.maxInFlight ?? 50;
  const requestTimeoutMs = opts.requestTimeoutMs ?? 10_000;
  const reorderMaxHoldMs = opts.reorderMaxHoldMs ?? 1_000;
  const random = opts.random ?? Math.random;
  const onError = opts.onError ?? (() => {});

  const stopController = new AbortController();
  const inFlight = new Set<Promise<void>>();
  let timer: NodeJS.Timeout | null = null;
  let running = false;
  let polling: Promise<number> | null = null;
  let pollAgain = false;
  let consecutiveErrors = 0;

  async function enqueue(db: Queryable, input: EnqueueInput<P>): Promise<EnqueueResult> {
    const faults = await readFaults(db, spec.channel);
    const dropped = random() < faults.dropRate;
    const duplicated = !dropped && random() < faults.duplicateRate;
    const insert = (duplicateOf: string | null) =>
      db.query<{ id: string }>(
        `INSERT INTO sandbox_notifications (channel, channel_reference, event_id, url, payload, status, max_attempts, duplicate_of)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id`,
        [spec.channel, input.channelReference, input.eventId, input.url, JSON.stringify(input.payload), dropped ? 'dropped' : 'pending', spec.scheduleMs.length, duplicateOf],
      );
    const first = (await insert(null)).rows[0]!.id;
    const ids = [first];
    if (duplicated) ids.push((await insert(first)).rows[0]!.id);
    return { ids, dropped, duplicated };
  }

  /** Claim due rows under a lease; the attempt counter moves at claim time. */
  async function claim(limit: number, faults: SandboxFaults): Promise<Array<NotificationRow & { lease_token: string }>> {
    const token = randomUUID();
    const leaseMs = requestTimeoutMs + faults.delayMs + (faults.reorder ? reorderMaxHoldMs : 0) + LEASE_MARGIN_MS;
    const { rows } = await pool.query<NotificationRow & { lease_token: string }>(
      `WITH due AS (
         SELECT id FROM sandbox_notifications
          WHERE channel = $1 AND status = 'pending' AND next_attempt_at <= now()
            AND (lease_until IS NULL OR lease_until < now())
          ORDER BY next_attempt_at, id
          LIMIT $2
          FOR UPDATE SKIP LOCKED)
       UPDATE sandbox_notifications n
          SET attempts = n.attempts + 1, lease_token = $3,
              lease_until = now() + make_interval(secs => $4::double precision / 1000), updated_at = now()
         FROM due WHERE n.id = due.id
       RETURNING ${NOTIFICATION_COLUMNS.split(',').map((c) => 'n.' + c.trim()).join(', ')}, n.lease_token`,
      [spec.channel, limit, token, leaseMs],
    );
    return rows;
  }

  async function pollOnce(): Promise<number> {
    const room = maxInFlight - inFlight.size;
    if (room <= 0 || stopController.signal.aborted) return 0;
    const faults = await readFaults(pool, spec.channel);
    const rows = await claim(Math.min(batchSize, room), faults);
    for (const row of rows) {
      const p = deliver(row, faults).catch(onError).finally(() => inFlight.delete(p));
      inFlight.add(p);
    }
    return rows.length;
  }

  async function deliver(row: NotificationRow & { lease_token: string }, faults: SandboxFaults): Promise<void> {
    const waitMs = faults.delayMs + (faults.reorder && random() < 0.5 ? Math.floor(random() * reorderMaxHoldMs) : 0);
    if (waitMs > 0 && !(await sleep(waitMs, stopController.signal))) return releaseLease(row);
    const startedAt = new Date();
    const request = spec.buildRequest(row.payload as P, {
      eventId: row.event_id,
      channelReference: row.channel_reference,
      url: row.url,
      attempt: row.attempts,
      now: startedAt,
    });
    const outcome = await send(request);
    if (outcome.aborted) return releaseLease(row);
    const acknowledged = outcome.status !== null && spec.isAcknowledged({ status: outcome.status, body: outcome.body ?? '' });
    await recordAttempt(row, request, startedAt, outcome, acknowledged);
  }

  interface SendOutcome {
    status: number | null;
    body: string | null;
    error: string | null;
    aborted: boolean;
  }

  async function send(request: OutboundRequest): Promise<SendOutcome> {
    const signal = AbortSignal.any([stopController.signal, AbortSignal.timeout(requestTimeoutMs)]);
    try {
      const res = await fetch(request.url, { method: request.method, headers: request.headers, body: request.body, signal, redirect: 'manual' });
      const body = await readLimited(res, MAX_RESPONSE_BYTES);
      return { status: res.status, body, error: null, aborted: false };
    } catch (err) {
      if (stopController.signal.aborted) return { status: null, body: null, error: null, aborted: true };
      const e = err as Error & { cause?: { code?: string; message?: string } };
      const detail = e.name === 'TimeoutError' ? `timed out after ${requestTimeoutMs} ms` : (e.cause?.code ?? e.cause?.message ?? e.message);
      return { status: null, body: null, error: detail, aborted: false };
    }
  }

  async function recordAttempt(row: NotificationRow & { lease_token: string }, request: OutboundRequest, startedAt: Date, outcome: SendOutcome, acknowledged: boolean): Promise<void> {
    const attempt = row.attempts;
    const exhausted = attempt >= row.max_attempts;
    const nextDelayMs = exhausted ? 0 : (spec.scheduleMs[attempt] ?? 0) * opts.timeScale;
    const status: NotificationStatus = acknowledged ? 'delivered' : exhausted ? 'failed' : 'pending';
    const client = await pool.connect();
    try {
      await client.query('BEGIN');
      const updated = await client.query(
        `UPDATE sandbox_notifications
            SET status = $3, lease_token = NULL, lease_until = NULL, last_status_code = $4, last_error = $5,
                delivered_at = CASE WHEN $3 = 'delivered' THEN now() ELSE delivered_at END,
                next_attempt_at = CASE WHEN $3 = 'pending' THEN now() + make_interval(secs => $6::double precision / 1000) ELSE next_attempt_at END,
                updated_at = now()
          WHERE id = $1 AND lease_token = $2 AND status = 'pending'`,
        [row.id, row.lease_token, status, outcome.status, outcome.error, nextDelayMs],
      );
      if (updated.rowCount === 1) {
        await client.query(
          `INSERT INTO sandbox_notification_attempts
             (notification_id, attempt, started_at, finished_at, request_body, status_code, response_body, error, acknowledged)
           VALUES ($1, $2, $3, now(), $4, $5, $6, $7, $8)`,
          [row.id, attempt, startedAt, request.body, outcome.status, outcome.body, outcome.error, acknowledged],
        );
      }
      await client.query('COMMIT');
    } catch (err) {
      await client.query('ROLLBACK').catch(() => {});
      throw err;
    } finally {
      client.release();
    }
  }

  /** Give an attempt back without counting it (stopped before sending). */
  async function releaseLease(row: NotificationRow & { lease_token: string }): Promise<void> {
    await pool.query(
      `UPDATE sandbox_notifications SET attempts = attempts - 1, lease_token = NULL, lease_until = NULL, updated_at = now()
        WHERE id = $1 AND lease_token = $2 AND status = 'pending'`,
      [row.id, row.lease_token],
    );
  }

  function schedule(delayMs: number): void {
    if (!running) return;
    if (timer) clearTimeout(timer);
    timer = setTimeout(tick, delayMs);
  }

  function tick(): void {
    timer = null;
    if (!running) return;
    if (polling) {
      pollAgain = true;
      return;
    }
    polling = pollOnce()
      .then((claimed) => {
        consecutiveErrors = 0;
        return claimed;
      })
      .catch((err) => {
        onError(err);
        consecutiveErrors++;
        return 0;
      })
      .then((claimed) => {
        polling = null;
        const again = consecutiveErrors === 0 && (pollAgain || claimed >= batchSize);
        pollAgain = false;
        // While the database is unreachable, back off (bounded) instead of spinning.
        const backoff = Math.min(pollIntervalMs * 2 ** consecutiveErrors, MAX_ERROR_BACKOFF_MS);
        schedule(again ? 0 : consecutiveErrors > 0 ? backoff : pollIntervalMs);
        return claimed;
      });
  }

  return {
    channel: spec.channel,
    enqueue,
    start() {
      if (running || stopController.signal.aborted) return;
      running = true;
      schedule(0);
    },
    kick() {
      if (!running) return;
      if (polling) pollAgain = true;
      else schedule(0);
    },
    async stop() {
      running = false;
      if (timer) clearTimeout(timer);
      timer = null;
      stopController.abort();
      if (polling) await polling.catch(() => 0);
      await Promise.allSettled([...inFlight]);
    },
    async runOnce() {
      const claimed = await pollOnce();
      await Promise.allSettled([...inFlight]);
      return claimed;
    },
  };
}

function validateSpec(spec: NotificationChannelSpec<never>, timeScale: number): void {
  if (!/^[a-z][a-z0-9_]{0,31}$/.test(spec.channel)) throw new TypeError(`invalid channel name ${spec.channel}`);
  if (spec.scheduleMs.length < 1 || spec.scheduleMs.length > 100) throw new TypeError('scheduleMs must have 1 to 100 entries');
  if (spec.scheduleMs.some((d) => !Number.isFinite(d) || d < 0)) throw new TypeError('scheduleMs entries must be finite and >= 0');
  if (!Number.isFinite(timeScale) || timeScale < 0) throw new TypeError('timeScale must be a finite number >= 0');
}

/** Poll often enough to honour the shortest retry gap, between 20 ms and 1 s. */
function defaultPollInterval(spec: NotificationChannelSpec<never>, timeScale: number): number {
  const gaps = spec.scheduleMs.slice(1).filter((d) => d > 0);
  const shortest = gaps.length > 0 ? Math.min(...gaps) * timeScale : 1000;
  return Math.max(20, Math.min(1000, Math.floor(shortest / 4)));
}

/** Resolves true after `ms`, false if `signal` aborts first. */
function sleep(ms: number, signal: AbortSignal): Promise<boolean> {
  if (signal.aborted) return Promise.resolve(false);
  return new Promise((resolve) => {
    const t = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve(true);
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      resolve(false);
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

async function readLimited(res: Response, maxBytes: number): Promise<string> {
  if (!res.body) return '';
  const reader = res.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  try {
    while (total < maxBytes) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      total += value.length;
    }
  } finally {
    await reader.cancel().catch(() => {});
  }
  return Buffer.concat(chunks).subarray(0, maxBytes).toString('utf8');
}

// ---- Reading the queue (tests, debugging) ------------------------------------------------------

export async function listSandboxNotifications(db: Queryable, filter: { channel: string; channelReference?: string }): Promise<SandboxNotification[]> {
  const { rows } = await db.query<NotificationRow>(
    `SELECT ${NOTIFICATION_COLUMNS} FROM sandbox_notifications
      WHERE channel = $1 AND ($2::text IS NULL OR channel_reference = $2) ORDER BY id`,
    [filter.channel, filter.channelReference ?? null],
  );
  return rows.map(fromRow);
}

export async function listSandboxNotificationAttempts(db: Queryable, notificationId: string): Promise<SandboxNotificationAttempt[]> {
  const { rows } = await db.query<{
    notification_id: string; attempt: number; started_at: Date; finished_at: Date; request_body: string;
    status_code: number | null; response_body: string | null; error: string | null; acknowledged: boolean;
  }>(
    `SELECT notification_id, attempt, started_at, finished_at, request_body, status_code, response_body, error, acknowledged
       FROM sandbox_notification_attempts WHERE notification_id = $1 ORDER BY attempt`,
    [notificationId],
  );
  return rows.map((r) => ({
    notificationId: r.notification_id,
    attempt: r.attempt,
    startedAt: r.started_at,
    finishedAt: r.finished_at,
    requestBody: r.request_body,
    statusCode: r.status_code,
    responseBody: r.response_body,
    error: r.error,
    acknowledged: r.acknowledged,
  }));
}

const FINAL: ReadonlySet<NotificationStatus> = new Set(['delivered', 'failed', 'dropped']);

export function isSettled(rows: readonly SandboxNotification[]): boolean {
  return rows.length > 0 && rows.every((r) => FINAL.has(r.status));
}

/**
 * Wait until the notifications matching the filter satisfy `until` (default: at least one, and all
 * delivered, failed or dropped). Rejects after `timeoutMs` with what was seen.
 */
export async function waitForSandboxNotifications(
  db: Queryable,
  opts: { channel: string; channelReference?: string; timeoutMs: number; pollMs?: number; until?: (rows: SandboxNotification[]) => boolean },
): Promise<SandboxNotification[]> {
  const until = opts.until ?? isSettled;
  const deadline = Date.now() + opts.timeoutMs;
  for (;;) {
    const rows = await listSandboxNotifications(db, opts);
    if (until(rows)) return rows;
    if (Date.now() >= deadline) {
      const seen = rows.map((r) => `#${r.id} ${r.status} attempts=${r.attempts}`).join('; ') || 'none';
      throw new Error(`timed out after ${opts.timeoutMs} ms waiting for ${opts.channel} notifications (${seen})`);
    }
    await new Promise((r) => setTimeout(r, opts.pollMs ?? 25));
  }
}

/**
 * The PayPal sandbox's refunds (table sandbox_paypal_refunds, migration 0023) and what PayPal does
 * with them, each in one transaction:
 *
 * - Every change to a capture's refunds first locks the order holding the capture (`FOR UPDATE`), so
 *   the refundable remainder (capture − PENDING − COMPLETED refunds) is enforced whatever the
 *   concurrency, across processes sharing the database; a refund's own status then moves by
 *   compare-and-set on its `version` (PENDING → COMPLETED | FAILED | CANCELLED, once).
 * - A refund starts COMPLETED (default) or PENDING (the order's refund_mode, set through
 *   `/refunds/mode`); a PENDING one stays so until `/refunds/simulate` finishes it — the sandbox never
 *   finishes it by itself (PayPal's pending refunds wait on an eCheck or the merchant's balance).
 * - When a refund completes, the capture becomes PARTIALLY_REFUNDED or REFUNDED and PayPal's
 *   PAYMENT.CAPTURE.REFUNDED is queued (a reversal: PAYMENT.CAPTURE.REVERSED). PayPal documents no
 *   webhook for a refund that is pending or fails, so none is sent: the merchant's query finds out.
 */
import { inTransaction, type Pool, type Queryable } from '../../store/db.ts';
import { randomUpperAlnum } from './sandbox-keys.ts';
import { findOrderByCustomId, lockOrder, lockOrderByCapture, updateOrder, type RefundMode, type SandboxOrder } from './sandbox-orders.ts';
import {
  CAPTURE_FULLY_REFUNDED, REFUND_AMOUNT_EXCEEDED, REFUND_CURRENCY_MISMATCH, TRANSACTION_REFUSED, invalidId,
  type ErrorDetail, type ParsedRefund, type RefundEventType,
} from './sandbox-wire.ts';

export type SandboxRefundStatus = 'PENDING' | 'COMPLETED' | 'FAILED' | 'CANCELLED';
export type SandboxRefundKind = 'REFUND' | 'REVERSAL';

export interface SandboxRefund {
  id: string;
  clientId: string;
  orderId: string;
  captureId: string;
  requestId: string | null;
  kind: SandboxRefundKind;
  status: SandboxRefundStatus;
  currency: string;
  amountMinor: bigint;
  invoiceId: string | null;
  customId: string | null;
  noteToPayer: string | null;
  totalRefundedMinor: bigint | null;
  version: number;
  createdAt: Date;
  updatedAt: Date;
  completedAt: Date | null;
}

interface Row {
  id: string; client_id: string; order_id: string; capture_id: string; request_id: string | null; kind: SandboxRefundKind;
  status: SandboxRefundStatus; currency: string; amount_minor: string; invoice_id: string | null; custom_id: string | null;
  note_to_payer: string | null; total_refunded_minor: string | null; version: number; created_at: Date; updated_at: Date; completed_at: Date | null;
}

const COLUMNS = `id, client_id, order_id, capture_id, request_id, kind, status, currency, amount_minor, invoice_id, custom_id,
  note_to_payer, total_refunded_minor, version, created_at, updated_at, completed_at`;

function fromRow(r: Row): SandboxRefund {
  return {
    id: r.id, clientId: r.client_id, orderId: r.order_id, captureId: r.capture_id, requestId: r.request_id, kind: r.kind, status: r.status,
    currency: r.currency, amountMinor: BigInt(r.amount_minor), invoiceId: r.invoice_id, customId: r.custom_id, noteToPayer: r.note_to_payer,
    totalRefundedMinor: r.total_refunded_minor === null ? null : BigInt(r.total_refunded_minor), version: r.version,
    createdAt: r.created_at, updatedAt: r.updated_at, completedAt: r.completed_at,
  };
}

/** PayPal refund ids: 17 upper-case letters and digits, like captures. */
export const newRefundId = () => randomUpperAlnum(17);

/** Refunds kept per capture at most (PayPal allows 10 partial refunds; the rest of the money goes in one). */
export const MAX_REFUNDS_PER_CAPTURE = 50;

export async function getRefund(db: Queryable, clientId: string, id: string): Promise<SandboxRefund | null> {
  const { rows } = await db.query<Row>(`SELECT ${COLUMNS} FROM sandbox_paypal_refunds WHERE client_id = $1 AND id = $2`, [clientId, id]);
  return rows[0] ? fromRow(rows[0]) : null;
}

export async function findRefundByRequestId(db: Queryable, clientId: string, requestId: string): Promise<SandboxRefund | null> {
  const { rows } = await db.query<Row>(`SELECT ${COLUMNS} FROM sandbox_paypal_refunds WHERE client_id = $1 AND request_id = $2`, [clientId, requestId]);
  return rows[0] ? fromRow(rows[0]) : null;
}

/** The latest refund carrying this invoice_id (our refund reference). */
export async function findRefundByInvoiceId(db: Queryable, clientId: string, invoiceId: string): Promise<SandboxRefund | null> {
  const { rows } = await db.query<Row>(
    `SELECT ${COLUMNS} FROM sandbox_paypal_refunds WHERE client_id = $1 AND invoice_id = $2 ORDER BY created_at DESC, id LIMIT 1`, [clientId, invoiceId]);
  return rows[0] ? fromRow(rows[0]) : null;
}

export async function listRefunds(db: Queryable, captureId: string): Promise<SandboxRefund[]> {
  const { rows } = await db.query<Row>(
    `SELECT ${COLUMNS} FROM sandbox_paypal_refunds WHERE capture_id = $1 ORDER BY created_at, id LIMIT ${MAX_REFUNDS_PER_CAPTURE}`, [captureId]);
  return rows.map(fromRow);
}

async function sumRefunds(db: Queryable, captureId: string, statuses: readonly SandboxRefundStatus[]): Promise<{ sum: bigint; count: number }> {
  const { rows } = await db.query<{ s: string | null; n: number }>(
    `SELECT sum(amount_minor) AS s, count(*)::int AS n FROM sandbox_paypal_refunds WHERE capture_id = $1 AND status = ANY($2)`, [captureId, statuses]);
  return { sum: BigInt(rows[0]?.s ?? '0'), count: rows[0]?.n ?? 0 };
}

interface NewRefund {
  order: SandboxOrder;
  requestId: string | null;
  kind: SandboxRefundKind;
  status: SandboxRefundStatus;
  amountMinor: bigint;
  invoiceId: string | null;
  customId: string | null;
  noteToPayer: string | null;
  totalRefundedMinor: bigint | null;
}

async function insertRefund(db: Queryable, r: NewRefund): Promise<SandboxRefund> {
  const { rows } = await db.query<Row>(
    `INSERT INTO sandbox_paypal_refunds
       (id, client_id, order_id, capture_id, request_id, kind, status, currency, amount_minor, invoice_id, custom_id, note_to_payer,
        total_refunded_minor, completed_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, CASE WHEN $7 = 'COMPLETED' THEN clock_timestamp() END)
     RETURNING ${COLUMNS}`,
    [
      newRefundId(), r.order.clientId, r.order.id, r.order.captureId, r.requestId, r.kind, r.status, r.order.currency, r.amountMinor.toString(),
      r.invoiceId, r.customId, r.noteToPayer, r.totalRefundedMinor?.toString() ?? null,
    ],
  );
  return fromRow(rows[0]!);
}

/** Compare-and-set: a PENDING refund at `expected.version` moves to `status`; null when it moved meanwhile. */
async function finishRefundRow(db: Queryable, expected: SandboxRefund, status: Exclude<SandboxRefundStatus, 'PENDING'>, totalRefundedMinor: bigint | null): Promise<SandboxRefund | null> {
  const { rows } = await db.query<Row>(
    `UPDATE sandbox_paypal_refunds SET status = $4, total_refunded_minor = $5,
            completed_at = CASE WHEN $4 = 'COMPLETED' THEN clock_timestamp() END,
            version = version + 1, updated_at = clock_timestamp()
      WHERE client_id = $1 AND id = $2 AND version = $3 AND status = 'PENDING'
      RETURNING ${COLUMNS}`,
    [expected.clientId, expected.id, expected.version, status, totalRefundedMinor?.toString() ?? null],
  );
  return rows[0] ? fromRow(rows[0]) : null;
}

/** After a refund completed: the capture is PARTIALLY_REFUNDED or REFUNDED (caller holds the order lock). */
async function settleCapture(db: Queryable, order: SandboxOrder): Promise<SandboxOrder> {
  const completed = (await sumRefunds(db, order.captureId!, ['COMPLETED'])).sum;
  const status = completed >= order.amountMinor ? 'REFUNDED' : completed > 0n ? 'PARTIALLY_REFUNDED' : order.captureStatus!;
  if (status === order.captureStatus) return order;
  const updated = await updateOrder(db, order, { captureStatus: status });
  if (!updated) throw new Error(`sandbox order ${order.id} changed under its lock`);
  return updated;
}

// ---- What PayPal does ------------------------------------------------------------------------------------

export interface RefundSandboxContext {
  pool: Pool;
  clientId: string;
  /** Queue a webhook in the caller's transaction; answers its event id. */
  emit(db: Queryable, type: RefundEventType, refund: SandboxRefund): Promise<string>;
}

export type RefundCallResult =
  | { ok: true; refund: SandboxRefund; replay: boolean }
  | { ok: false; status: 404 | 422; details: ErrorDetail[] };

/**
 * `POST /v2/payments/captures/{id}/refund`. A PayPal-Request-Id seen before answers that refund as
 * it is now. The capture's remainder counts PENDING refunds too (that money is already promised).
 */
export async function refundCapture(s: RefundSandboxContext, captureId: string, requestId: string | null, req: ParsedRefund): Promise<RefundCallResult> {
  return inTransaction(s.pool, async (db) => {
    const order = await lockOrderByCapture(db, s.clientId, captureId);
    if (!order) return { ok: false, status: 404, details: [invalidId('capture_id', captureId)] };
    if (requestId !== null) {
      const prior = await findRefundByRequestId(db, s.clientId, requestId);
      if (prior) return { ok: true, refund: prior, replay: true };
    }
    if (order.captureStatus === 'DECLINED') return { ok: false, status: 422, details: [TRANSACTION_REFUSED] };
    if (req.amount && req.amount.currency !== order.currency) return { ok: false, status: 422, details: [REFUND_CURRENCY_MISMATCH] };
    const committed = await sumRefunds(db, captureId, ['PENDING', 'COMPLETED']);
    const remaining = order.amountMinor - committed.sum;
    if (remaining <= 0n) return { ok: false, status: 422, details: [CAPTURE_FULLY_REFUNDED] };
    const amountMinor = req.amount?.amountMinor ?? remaining;
    if (amountMinor > remaining) return { ok: false, status: 422, details: [REFUND_AMOUNT_EXCEEDED] };
    if (committed.count >= MAX_REFUNDS_PER_CAPTURE) {
      return { ok: false, status: 422, details: [{ issue: 'MAX_NUMBER_OF_REFUNDS_EXCEEDED', description: 'You have exceeded the maximum number of refund attempts for this capture.' }] };
    }
    const status: SandboxRefundStatus = order.refundMode === 'PENDING' ? 'PENDING' : 'COMPLETED';
    const completedBefore = status === 'COMPLETED' ? (await sumRefunds(db, captureId, ['COMPLETED'])).sum : 0n;
    const refund = await insertRefund(db, {
      order, requestId, kind: 'REFUND', status, amountMinor,
      invoiceId: req.invoiceId, customId: req.customId ?? order.customId, noteToPayer: req.noteToPayer,
      totalRefundedMinor: status === 'COMPLETED' ? completedBefore + amountMinor : null,
    });
    if (status === 'COMPLETED') {
      await settleCapture(db, order);
      await s.emit(db, 'PAYMENT.CAPTURE.REFUNDED', refund);
    }
    return { ok: true, refund, replay: false };
  });
}

export type SimulateRefundOutcome = 'succeeded' | 'failed' | 'canceled';
export const REFUND_OUTCOMES: readonly SimulateRefundOutcome[] = ['succeeded', 'failed', 'canceled'];
const FINAL_STATUS: Record<SimulateRefundOutcome, Exclude<SandboxRefundStatus, 'PENDING'>> = { succeeded: 'COMPLETED', failed: 'FAILED', canceled: 'CANCELLED' };

export type SandboxActionResult =
  | { ok: true; refund: SandboxRefund; eventId: string | null }
  | { ok: false; status: 400 | 404 | 409; code: string; message: string; param?: string };

/** `/refunds/simulate`: a PENDING refund completes (capture updated, webhook sent), fails or is cancelled. */
export async function finishRefund(s: RefundSandboxContext, find: { refundReference?: string; refundId?: string }, outcome: SimulateRefundOutcome): Promise<SandboxActionResult> {
  return inTransaction(s.pool, async (db) => {
    const what = find.refundId !== undefined ? `with id ${find.refundId}` : `with invoice_id ${find.refundReference}`;
    const load = () => (find.refundId !== undefined ? getRefund(db, s.clientId, find.refundId) : findRefundByInvoiceId(db, s.clientId, find.refundReference!));
    const found = await load();
    if (!found || (find.refundId !== undefined && find.refundReference !== undefined && found.invoiceId !== find.refundReference)) {
      return { ok: false, status: 404, code: 'refund_not_found', message: `no PayPal sandbox refund ${what}` };
    }
    const order = await lockOrder(db, s.clientId, found.orderId);
    const refund = await getRefund(db, s.clientId, found.id); // read again under the order's lock
    if (!order || !refund) return { ok: false, status: 404, code: 'refund_not_found', message: `no PayPal sandbox refund ${what}` };
    if (refund.status !== 'PENDING') return { ok: false, status: 409, code: 'refund_already_final', message: `refund ${refund.id} is already ${refund.status}` };
    const status = FINAL_STATUS[outcome];
    const total = status === 'COMPLETED' ? (await sumRefunds(db, refund.captureId, ['COMPLETED'])).sum + refund.amountMinor : null;
    const updated = await finishRefundRow(db, refund, status, total);
    if (!updated) throw new Error(`sandbox refund ${refund.id} changed under its order's lock`);
    if (status !== 'COMPLETED') return { ok: true, refund: updated, eventId: null };
    await settleCapture(db, order);
    return { ok: true, refund: updated, eventId: await s.emit(db, 'PAYMENT.CAPTURE.REFUNDED', updated) };
  });
}

/**
 * `/reversals/simulate`: PayPal takes money back from a capture (a dispute lost, an unauthorised
 * payment): a COMPLETED refund of kind REVERSAL, carrying the capture's custom_id and invoice_id,
 * and PAYMENT.CAPTURE.REVERSED. Default amount: what is left of the capture.
 */
export async function reverseCapture(s: RefundSandboxContext, channelReference: string, amountMinor: bigint | null): Promise<SandboxActionResult> {
  return inTransaction(s.pool, async (db) => {
    const latest = await findOrderByCustomId(db, s.clientId, channelReference);
    const order = latest ? await lockOrder(db, s.clientId, latest.id) : null;
    if (!order) return { ok: false, status: 404, code: 'order_not_found', message: `no PayPal sandbox order with custom_id ${channelReference}`, param: 'channel_reference' };
    if (!order.captureId || order.captureStatus === 'DECLINED') {
      return { ok: false, status: 409, code: 'capture_not_reversible', message: `order ${order.id} has no completed capture`, param: 'channel_reference' };
    }
    const remaining = order.amountMinor - (await sumRefunds(db, order.captureId, ['PENDING', 'COMPLETED'])).sum;
    if (remaining <= 0n) return { ok: false, status: 409, code: 'capture_fully_refunded', message: `capture ${order.captureId} has nothing left to reverse`, param: 'channel_reference' };
    const amount = amountMinor ?? remaining;
    if (amount <= 0n || amount > remaining) return { ok: false, status: 400, code: 'amount_invalid', message: `amount must be 1..${remaining}`, param: 'amount' };
    const completedBefore = (await sumRefunds(db, order.captureId, ['COMPLETED'])).sum;
    const refund = await insertRefund(db, {
      order, requestId: null, kind: 'REVERSAL', status: 'COMPLETED', amountMinor: amount,
      invoiceId: order.invoiceId, customId: order.customId, noteToPayer: null, totalRefundedMinor: completedBefore + amount,
    });
    await settleCapture(db, order);
    return { ok: true, refund, eventId: await s.emit(db, 'PAYMENT.CAPTURE.REVERSED', refund) };
  });
}

/** `/refunds/mode`: how the refunds of the latest order for our reference start from now on. */
export async function setRefundMode(s: RefundSandboxContext, channelReference: string, mode: RefundMode): Promise<{ ok: true; order: SandboxOrder } | { ok: false; status: 404; code: string; message: string }> {
  return inTransaction(s.pool, async (db) => {
    const latest = await findOrderByCustomId(db, s.clientId, channelReference);
    const order = latest ? await lockOrder(db, s.clientId, latest.id) : null;
    if (!order) return { ok: false, status: 404, code: 'order_not_found', message: `no PayPal sandbox order with custom_id ${channelReference}` };
    if (order.refundMode === mode) return { ok: true, order };
    const updated = await updateOrder(db, order, { refundMode: mode });
    if (!updated) throw new Error(`sandbox order ${order.id} changed under its lock`);
    return { ok: true, order: updated };
  });
}

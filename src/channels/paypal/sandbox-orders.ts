/**
 * The PayPal sandbox's orders in PostgreSQL (table sandbox_paypal_orders, migration 0012). Every
 * change is a compare-and-set on `version` (read, decide, update only if nobody changed the row
 * meanwhile, else read again — bounded), so several processes sharing the database agree.
 */
import type { Queryable } from '../../store/db.ts';
import type { OrderStatus } from './transformers.ts';
import { randomUpperAlnum } from './sandbox-keys.ts';

export type CaptureOutcome = 'COMPLETED' | 'DECLINED';
/** A capture's status: its outcome, then PARTIALLY_REFUNDED / REFUNDED as refunds complete. */
export type SandboxCaptureStatus = CaptureOutcome | 'PARTIALLY_REFUNDED' | 'REFUNDED';
/** How this order's refunds start: COMPLETED at once (default), or PENDING until /refunds/simulate. */
export type RefundMode = 'COMPLETED' | 'PENDING';

export interface SandboxOrder {
  id: string;
  clientId: string;
  requestId: string | null;
  status: OrderStatus;
  currency: string;
  amountMinor: bigint;
  referenceId: string;
  customId: string | null;
  invoiceId: string | null;
  description: string | null;
  returnUrl: string | null;
  cancelUrl: string | null;
  usesPaymentSource: boolean;
  payerId: string | null;
  payerEmail: string | null;
  captureOutcome: CaptureOutcome | null;
  captureId: string | null;
  captureStatus: SandboxCaptureStatus | null;
  captureRequestId: string | null;
  feeMinor: bigint | null;
  refundMode: RefundMode;
  approvedAt: Date | null;
  capturedAt: Date | null;
  voidedAt: Date | null;
  version: number;
  createdAt: Date;
  updatedAt: Date;
}

export type NewOrder = Pick<SandboxOrder, 'clientId' | 'requestId' | 'currency' | 'amountMinor' | 'referenceId' | 'customId' | 'invoiceId' | 'description' | 'returnUrl' | 'cancelUrl' | 'usesPaymentSource'>;

interface Row {
  id: string; client_id: string; request_id: string | null; status: OrderStatus; currency: string; amount_minor: string;
  reference_id: string; custom_id: string | null; invoice_id: string | null; description: string | null;
  return_url: string | null; cancel_url: string | null; uses_payment_source: boolean; payer_id: string | null; payer_email: string | null;
  capture_outcome: CaptureOutcome | null; capture_id: string | null; capture_status: SandboxCaptureStatus | null; capture_request_id: string | null;
  fee_minor: string | null; refund_mode: RefundMode; approved_at: Date | null; captured_at: Date | null; voided_at: Date | null; version: number;
  created_at: Date; updated_at: Date;
}

const COLUMNS = `id, client_id, request_id, status, currency, amount_minor, reference_id, custom_id, invoice_id, description,
  return_url, cancel_url, uses_payment_source, payer_id, payer_email, capture_outcome, capture_id, capture_status,
  capture_request_id, fee_minor, refund_mode, approved_at, captured_at, voided_at, version, created_at, updated_at`;

function fromRow(r: Row): SandboxOrder {
  return {
    id: r.id, clientId: r.client_id, requestId: r.request_id, status: r.status, currency: r.currency, amountMinor: BigInt(r.amount_minor),
    referenceId: r.reference_id, customId: r.custom_id, invoiceId: r.invoice_id, description: r.description,
    returnUrl: r.return_url, cancelUrl: r.cancel_url, usesPaymentSource: r.uses_payment_source, payerId: r.payer_id, payerEmail: r.payer_email,
    captureOutcome: r.capture_outcome, captureId: r.capture_id, captureStatus: r.capture_status, captureRequestId: r.capture_request_id,
    feeMinor: r.fee_minor === null ? null : BigInt(r.fee_minor), refundMode: r.refund_mode, approvedAt: r.approved_at, capturedAt: r.captured_at, voidedAt: r.voided_at,
    version: r.version, createdAt: r.created_at, updatedAt: r.updated_at,
  };
}

/** PayPal ids are 17 upper-case letters and digits (orders and captures alike). */
export const newOrderId = () => randomUpperAlnum(17);
export const newCaptureId = () => randomUpperAlnum(17);
export const newPayerId = () => randomUpperAlnum(13);

/**
 * Insert, or — when the same PayPal-Request-Id was seen for this client — answer that order
 * (`created: false`): PayPal "returns the latest status of the previous request".
 */
export async function insertOrder(db: Queryable, o: NewOrder): Promise<{ order: SandboxOrder; created: boolean }> {
  const { rows } = await db.query<Row>(
    `INSERT INTO sandbox_paypal_orders
       (id, client_id, request_id, intent, status, currency, amount_minor, reference_id, custom_id, invoice_id, description,
        return_url, cancel_url, uses_payment_source)
     VALUES ($1, $2, $3, 'CAPTURE', $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
     ON CONFLICT (client_id, request_id) DO NOTHING
     RETURNING ${COLUMNS}`,
    [
      newOrderId(), o.clientId, o.requestId, o.usesPaymentSource ? 'PAYER_ACTION_REQUIRED' : 'CREATED', o.currency, o.amountMinor.toString(),
      o.referenceId, o.customId, o.invoiceId, o.description, o.returnUrl, o.cancelUrl, o.usesPaymentSource,
    ],
  );
  if (rows[0]) return { order: fromRow(rows[0]), created: true };
  const existing = await db.query<Row>(`SELECT ${COLUMNS} FROM sandbox_paypal_orders WHERE client_id = $1 AND request_id = $2`, [o.clientId, o.requestId]);
  if (!existing.rows[0]) throw new Error(`sandbox order for request id ${o.requestId} vanished`);
  return { order: fromRow(existing.rows[0]), created: false };
}

export async function getOrder(db: Queryable, clientId: string, id: string): Promise<SandboxOrder | null> {
  const { rows } = await db.query<Row>(`SELECT ${COLUMNS} FROM sandbox_paypal_orders WHERE client_id = $1 AND id = $2`, [clientId, id]);
  return rows[0] ? fromRow(rows[0]) : null;
}

/** The order holding a capture. */
export async function findOrderByCapture(db: Queryable, clientId: string, captureId: string): Promise<SandboxOrder | null> {
  const { rows } = await db.query<Row>(`SELECT ${COLUMNS} FROM sandbox_paypal_orders WHERE client_id = $1 AND capture_id = $2`, [clientId, captureId]);
  return rows[0] ? fromRow(rows[0]) : null;
}

/** The order holding a capture, locked for the caller's transaction (refunds serialise on it). */
export async function lockOrderByCapture(db: Queryable, clientId: string, captureId: string): Promise<SandboxOrder | null> {
  const { rows } = await db.query<Row>(`SELECT ${COLUMNS} FROM sandbox_paypal_orders WHERE client_id = $1 AND capture_id = $2 FOR UPDATE`, [clientId, captureId]);
  return rows[0] ? fromRow(rows[0]) : null;
}

export async function lockOrder(db: Queryable, clientId: string, id: string): Promise<SandboxOrder | null> {
  const { rows } = await db.query<Row>(`SELECT ${COLUMNS} FROM sandbox_paypal_orders WHERE client_id = $1 AND id = $2 FOR UPDATE`, [clientId, id]);
  return rows[0] ? fromRow(rows[0]) : null;
}

/** The latest order carrying our reference as custom_id. */
export async function findOrderByCustomId(db: Queryable, clientId: string, customId: string): Promise<SandboxOrder | null> {
  const { rows } = await db.query<Row>(
    `SELECT ${COLUMNS} FROM sandbox_paypal_orders WHERE client_id = $1 AND custom_id = $2 ORDER BY created_at DESC, id LIMIT 1`,
    [clientId, customId],
  );
  return rows[0] ? fromRow(rows[0]) : null;
}

export interface OrderPatch {
  status?: OrderStatus;
  payerId?: string;
  payerEmail?: string;
  captureOutcome?: CaptureOutcome;
  captureId?: string;
  captureStatus?: SandboxCaptureStatus;
  captureRequestId?: string | null;
  feeMinor?: bigint;
  refundMode?: RefundMode;
  approvedAt?: 'now';
  capturedAt?: 'now';
  voidedAt?: 'now';
}

/** Compare-and-set on version; null when the row moved meanwhile. */
export async function updateOrder(db: Queryable, expected: SandboxOrder, patch: OrderPatch): Promise<SandboxOrder | null> {
  const { rows } = await db.query<Row>(
    `UPDATE sandbox_paypal_orders SET
        status = COALESCE($4, status),
        payer_id = COALESCE($5, payer_id),
        payer_email = COALESCE($6, payer_email),
        capture_outcome = COALESCE($7, capture_outcome),
        capture_id = COALESCE($8, capture_id),
        capture_status = COALESCE($9, capture_status),
        capture_request_id = CASE WHEN $10 THEN $11 ELSE capture_request_id END,
        fee_minor = COALESCE($12, fee_minor),
        approved_at = CASE WHEN $13 THEN clock_timestamp() ELSE approved_at END,
        captured_at = CASE WHEN $14 THEN clock_timestamp() ELSE captured_at END,
        voided_at = CASE WHEN $15 THEN clock_timestamp() ELSE voided_at END,
        refund_mode = COALESCE($16, refund_mode),
        version = version + 1,
        updated_at = clock_timestamp()
      WHERE client_id = $1 AND id = $2 AND version = $3
      RETURNING ${COLUMNS}`,
    [
      expected.clientId, expected.id, expected.version, patch.status ?? null, patch.payerId ?? null, patch.payerEmail ?? null,
      patch.captureOutcome ?? null, patch.captureId ?? null, patch.captureStatus ?? null, 'captureRequestId' in patch, patch.captureRequestId ?? null,
      patch.feeMinor?.toString() ?? null, patch.approvedAt === 'now', patch.capturedAt === 'now', patch.voidedAt === 'now',
      patch.refundMode ?? null,
    ],
  );
  return rows[0] ? fromRow(rows[0]) : null;
}

const MAX_CAS_ROUNDS = 5;

export type Decision<T> = { patch: OrderPatch; then: (updated: SandboxOrder) => T } | { answer: T };

/** Read-decide-write until the compare-and-set holds (bounded). */
export async function mutateOrder<T>(db: Queryable, load: () => Promise<SandboxOrder | null>, decide: (order: SandboxOrder | null) => Decision<T>): Promise<T> {
  for (let round = 0; round < MAX_CAS_ROUNDS; round++) {
    const order = await load();
    const decision = decide(order);
    if ('answer' in decision) return decision.answer;
    const updated = await updateOrder(db, order!, decision.patch);
    if (updated) return decision.then(updated);
  }
  throw new Error('sandbox order kept changing while being updated');
}

/**
 * The refunds we asked PayPal for (table paypal_refund_refs, migration 0023): our refund reference →
 * our trade number, the capture, the amount and note sent, and PayPal's refund id once known.
 *
 * Why a table: `queryRefund` gets our trade number and refund reference, and PayPal's refund id
 * only when the service learnt it. When the refund call's answer was lost (timeout, 5xx after
 * PayPal acted), PayPal's refund id is unknown and there is no "find refund by invoice_id" API:
 * the connector then reads the order (`purchase_units[].payments.refunds[]`, matched on our
 * invoice_id) and, if PayPal shows no such refund, re-sends the very request recorded here with the
 * same PayPal-Request-Id — PayPal answers the refund it made for that id, or makes it now: one
 * refund either way. The row is written BEFORE the refund call, so a refund PayPal may have
 * received is always recorded here.
 *
 * The table also tells a refund webhook about one of OUR refunds (its invoice_id is a reference
 * recorded here) from a refund made on PayPal's site (not recorded: refundReference is dropped and
 * the service records it as a refund the channel started), and gives the trade number of a refund
 * resource that lacks custom_id.
 */
import type { Queryable } from '../../store/db.ts';

export interface RefundRef {
  clientId: string;
  refundReference: string;
  channelReference: string;
  captureId: string;
  currency: string;
  amountMinor: bigint;
  noteToPayer: string | null;
  refundId: string | null;
  status: string | null;
}

export interface RefundRefStore {
  /** Insert; when the reference exists, the stored row (the caller checks it is the same refund). */
  save(ref: Omit<RefundRef, 'refundId' | 'status'>): Promise<RefundRef>;
  get(clientId: string, refundReference: string): Promise<RefundRef | null>;
  /**
   * A refund PayPal confirmed (refund id recorded) on this capture: they all share its trade number.
   * Requests PayPal never confirmed do not count — their capture id may be wrong.
   */
  findByCapture(clientId: string, captureId: string): Promise<RefundRef | null>;
  /**
   * Write PayPal's refund id and latest status. False when the reference is unknown or already
   * names another refund id (the caller treats that as a mismatch).
   */
  record(clientId: string, refundReference: string, refundId: string, status: string): Promise<boolean>;
}

interface Row {
  client_id: string;
  refund_reference: string;
  channel_reference: string;
  capture_id: string;
  currency: string;
  amount_minor: string;
  note_to_payer: string | null;
  refund_id: string | null;
  status: string | null;
}

const COLUMNS = 'client_id, refund_reference, channel_reference, capture_id, currency, amount_minor, note_to_payer, refund_id, status';

function fromRow(r: Row): RefundRef {
  return {
    clientId: r.client_id,
    refundReference: r.refund_reference,
    channelReference: r.channel_reference,
    captureId: r.capture_id,
    currency: r.currency,
    amountMinor: BigInt(r.amount_minor),
    noteToPayer: r.note_to_payer,
    refundId: r.refund_id,
    status: r.status,
  };
}

export function pgRefundRefStore(db: Queryable): RefundRefStore {
  async function get(clientId: string, refundReference: string): Promise<RefundRef | null> {
    const { rows } = await db.query<Row>(`SELECT ${COLUMNS} FROM paypal_refund_refs WHERE client_id = $1 AND refund_reference = $2`, [clientId, refundReference]);
    return rows[0] ? fromRow(rows[0]) : null;
  }
  return {
    get,
    async save(ref) {
      const { rows } = await db.query<Row>(
        `INSERT INTO paypal_refund_refs (client_id, refund_reference, channel_reference, capture_id, currency, amount_minor, note_to_payer)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (client_id, refund_reference) DO NOTHING RETURNING ${COLUMNS}`,
        [ref.clientId, ref.refundReference, ref.channelReference, ref.captureId, ref.currency, ref.amountMinor.toString(), ref.noteToPayer],
      );
      if (rows[0]) return fromRow(rows[0]);
      const existing = await get(ref.clientId, ref.refundReference);
      if (!existing) throw new Error(`paypal_refund_refs row ${ref.refundReference} vanished`);
      return existing;
    },
    async findByCapture(clientId, captureId) {
      const { rows } = await db.query<Row>(
        `SELECT ${COLUMNS} FROM paypal_refund_refs WHERE client_id = $1 AND capture_id = $2 AND refund_id IS NOT NULL ORDER BY created_at LIMIT 1`, [clientId, captureId]);
      return rows[0] ? fromRow(rows[0]) : null;
    },
    async record(clientId, refundReference, refundId, status) {
      try {
        const { rowCount } = await db.query(
          `UPDATE paypal_refund_refs SET refund_id = $3, status = $4, updated_at = clock_timestamp()
            WHERE client_id = $1 AND refund_reference = $2 AND (refund_id IS NULL OR refund_id = $3)`,
          [clientId, refundReference, refundId, status],
        );
        return rowCount === 1;
      } catch (err) {
        // Another of our references already names this refund id (UNIQUE): a mismatch, not a crash.
        if ((err as { code?: string }).code === '23505') return false;
        throw err;
      }
    },
  };
}

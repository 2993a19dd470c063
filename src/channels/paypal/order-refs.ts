/**
 * Our reference → PayPal order id, and the one decision we take about each order: capture it or
 * close it (table paypal_order_refs, migration 0012).
 *
 * Why a table: PayPal assigns the order id, and the connector contract gives queryPayment and
 * closePayment only our reference. Re-POSTing the create call with the same PayPal-Request-Id does
 * return the same order, but PayPal keeps request ids for 6 hours only (72 h on request) and needs
 * the original body; after that the re-POST would create a second order. Webhooks and the active
 * query run far longer (PayPal retries for 3 days), so the id is written down once, here.
 *
 * Why the decision: Orders v2 has no cancel. An order the buyer may still approve is closed on our
 * side by promising never to capture it. `decision` is set by compare-and-set, so a capture
 * (query after CHECKOUT.ORDER.APPROVED) and a close (order expiry) racing in two processes cannot
 * both win: after 'close' no capture is sent; after 'capture' a close finishes the capture instead.
 */
import type { Queryable } from '../../store/db.ts';

export type OrderDecision = 'capture' | 'close';

export interface OrderRef {
  clientId: string;
  channelReference: string;
  orderId: string;
  currency: string;
  amountMinor: bigint;
  decision: OrderDecision | null;
}

export interface OrderRefStore {
  /** Insert; when the reference exists, the stored row (the caller checks it is the same order). */
  save(ref: Omit<OrderRef, 'decision'>): Promise<OrderRef>;
  get(clientId: string, channelReference: string): Promise<OrderRef | null>;
  /** Set the decision unless the other one was taken; answers the decision in force. */
  decide(clientId: string, channelReference: string, decision: OrderDecision): Promise<OrderDecision | null>;
  /** A capture that PayPal can no longer perform (approval gone): close instead. */
  abandonCapture(clientId: string, channelReference: string): Promise<void>;
}

interface Row {
  client_id: string;
  channel_reference: string;
  order_id: string;
  currency: string;
  amount_minor: string;
  decision: OrderDecision | null;
}

const COLUMNS = 'client_id, channel_reference, order_id, currency, amount_minor, decision';

function fromRow(r: Row): OrderRef {
  return {
    clientId: r.client_id,
    channelReference: r.channel_reference,
    orderId: r.order_id,
    currency: r.currency,
    amountMinor: BigInt(r.amount_minor),
    decision: r.decision,
  };
}

export function pgOrderRefStore(db: Queryable): OrderRefStore {
  async function get(clientId: string, channelReference: string): Promise<OrderRef | null> {
    const { rows } = await db.query<Row>(`SELECT ${COLUMNS} FROM paypal_order_refs WHERE client_id = $1 AND channel_reference = $2`, [clientId, channelReference]);
    return rows[0] ? fromRow(rows[0]) : null;
  }
  return {
    get,
    async save(ref) {
      const { rows } = await db.query<Row>(
        `INSERT INTO paypal_order_refs (client_id, channel_reference, order_id, currency, amount_minor)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (client_id, channel_reference) DO NOTHING RETURNING ${COLUMNS}`,
        [ref.clientId, ref.channelReference, ref.orderId, ref.currency, ref.amountMinor.toString()],
      );
      if (rows[0]) return fromRow(rows[0]);
      const existing = await get(ref.clientId, ref.channelReference);
      if (!existing) throw new Error(`paypal_order_refs row ${ref.channelReference} vanished`);
      return existing;
    },
    async decide(clientId, channelReference, decision) {
      const { rows } = await db.query<{ decision: OrderDecision }>(
        `UPDATE paypal_order_refs SET decision = $3, decided_at = COALESCE(decided_at, clock_timestamp())
          WHERE client_id = $1 AND channel_reference = $2 AND (decision IS NULL OR decision = $3)
          RETURNING decision`,
        [clientId, channelReference, decision],
      );
      if (rows[0]) return rows[0].decision;
      // The other decision was taken (read in a new statement: it sees the committed winner).
      return (await get(clientId, channelReference))?.decision ?? null;
    },
    async abandonCapture(clientId, channelReference) {
      await db.query(
        `UPDATE paypal_order_refs SET decision = 'close', decided_at = clock_timestamp()
          WHERE client_id = $1 AND channel_reference = $2 AND decision = 'capture'`,
        [clientId, channelReference],
      );
    },
  };
}

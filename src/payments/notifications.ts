/**
 * Inbound channel notifications: verify (signature) → check (app id, reference, amount) → apply
 * in one transaction with the audit row → acknowledge only after commit. Forged, replayed or
 * mismatched notifications are rejected, kept, and change nothing.
 */
import type { Pool } from '../store/db.ts';
import { inTransaction } from '../store/db.ts';
import type { Acknowledgement, ChannelConnector, NotificationInput } from '../channels/types.ts';
import { applyTradeSnapshot, findPaymentByReference } from './payments.ts';
import { applyRefundNotification } from '../refunds/refunds.ts';

const MAX_STORED_BODY_CHARS = 64 * 1024;

function redactHeaders(headers: NotificationInput['headers']): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(headers)) {
    if (k === 'authorization' || k === 'cookie') continue;
    out[k] = v;
  }
  return out;
}

interface AuditFields { eventId?: string; channelReference?: string; paymentId?: string; outcome: 'applied' | 'duplicate' | 'rejected' | 'ignored'; reason?: string }

async function audit(db: Pick<Pool, 'query'>, channel: string, input: NotificationInput, f: AuditFields) {
  await db.query(
    `INSERT INTO channel_notifications (channel, event_id, channel_reference, payment_id, outcome, reason, headers, raw_body)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
    [channel, f.eventId ?? null, f.channelReference ?? null, f.paymentId ?? null, f.outcome, f.reason ?? null,
      JSON.stringify(redactHeaders(input.headers)), input.rawBody.toString('utf8').slice(0, MAX_STORED_BODY_CHARS)],
  );
}

export interface NotificationResult { ack: Acknowledgement; outcome: AuditFields['outcome']; reason?: string; paymentId?: string }

export async function handleNotification(db: Pool, connector: ChannelConnector, input: NotificationInput): Promise<NotificationResult> {
  const channel = connector.channel;
  const currencyOf = async (ref: string) => (await findPaymentByReference(db, channel, ref))?.currency ?? null;
  const verified = await connector.verifyNotification(input, currencyOf);
  if (!verified.ok) {
    await audit(db, channel, input, { outcome: 'rejected', reason: `verify: ${verified.reason}` });
    return { ack: connector.ackFailure(verified.reason), outcome: 'rejected', reason: verified.reason };
  }
  const n = verified.notification;
  if (n.appId !== undefined && n.appId !== connector.appId) {
    const reason = `app_id_mismatch: ${n.appId}`;
    await audit(db, channel, input, { eventId: n.eventId, outcome: 'rejected', reason });
    return { ack: connector.ackFailure(reason), outcome: 'rejected', reason };
  }
  if (n.kind === 'ignored') {
    // Genuine, but about nothing we track (a test ping, an event type we do not use): acknowledge.
    await audit(db, channel, input, { eventId: n.eventId, channelReference: n.channelReference, outcome: 'ignored', reason: n.reason });
    return { ack: connector.ackSuccess(), outcome: 'ignored', reason: n.reason };
  }
  if (n.kind === 'refund') {
    const r = await inTransaction(db, async (tx) => {
      const applied = await applyRefundNotification(tx, channel, n.refund, n.eventId);
      if (applied.outcome !== 'rejected') {
        await audit(tx, channel, input, { eventId: n.eventId, channelReference: n.refund.channelReference, paymentId: applied.paymentId,
          outcome: applied.outcome === 'applied' ? 'applied' : applied.outcome === 'ignored' ? 'ignored' : 'duplicate', reason: applied.reason });
      }
      return applied;
    });
    if (r.outcome === 'rejected') {
      await audit(db, channel, input, { eventId: n.eventId, channelReference: n.refund.channelReference, paymentId: r.paymentId, outcome: 'rejected', reason: r.reason });
      return { ack: connector.ackFailure(r.reason ?? 'rejected'), outcome: 'rejected', reason: r.reason, paymentId: r.paymentId };
    }
    return { ack: connector.ackSuccess(), outcome: r.outcome === 'applied' ? 'applied' : r.outcome === 'ignored' ? 'ignored' : 'duplicate', reason: r.reason, paymentId: r.paymentId };
  }
  const ref = n.trade.channelReference;
  const base = { eventId: n.eventId, channelReference: ref };
  const payment = await findPaymentByReference(db, channel, ref);
  if (!payment) {
    const reason = 'unknown_reference';
    await audit(db, channel, input, { ...base, outcome: 'rejected', reason });
    return { ack: connector.ackFailure(reason), outcome: 'rejected', reason };
  }
  let trade = n.trade;
  if (n.requery && trade.state === 'pending') {
    // A ChannelError propagates: the answer is a 5xx and the channel retries the notification.
    trade = await connector.queryPayment({ channelReference: ref, currency: payment.currency, channelTransactionId: payment.channel_transaction_id ?? undefined });
  }
  const result = await inTransaction(db, async (tx) => {
    const applied = await applyTradeSnapshot(tx, payment.id, trade, `notification:${n.eventId}`);
    const outcome = applied.outcome === 'applied' ? 'applied' : applied.outcome === 'unchanged' ? 'duplicate' : 'rejected';
    const reason = applied.outcome === 'rejected' ? applied.reason : undefined;
    if (outcome !== 'rejected') await audit(tx, channel, input, { ...base, paymentId: payment.id, outcome, reason });
    return { outcome, reason } as const;
  });
  if (result.outcome === 'rejected') {
    // Written outside the rolled-back path so the evidence survives.
    await audit(db, channel, input, { ...base, paymentId: payment.id, outcome: 'rejected', reason: result.reason });
    return { ack: connector.ackFailure(result.reason ?? 'rejected'), outcome: 'rejected', reason: result.reason, paymentId: payment.id };
  }
  return { ack: connector.ackSuccess(), outcome: result.outcome, paymentId: payment.id };
}

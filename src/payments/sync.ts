/**
 * Settling payments without (or despite) notifications: active query of pending payments with
 * backoff ("补单"), and expiry of unpaid orders, whose open trades are closed at the channel first.
 */
import type { Pool } from '../store/db.ts';
import { inTransaction } from '../store/db.ts';
import type { ChannelConnector, ChannelName } from '../channels/types.ts';
import { applyTradeSnapshot, schedulePoll, type PaymentRow } from './payments.ts';
import { endUnpaidOrder, lockOrder } from '../orders/orders.ts';

export interface SyncContext {
  db: Pool;
  channels: ReadonlyMap<ChannelName, ChannelConnector>;
  pollInitialDelayMs: number;
  pollMaxDelayMs: number;
  /** The service's public base URL (notify URLs for refunds started by the worker). */
  publicBaseUrl: string;
}

/** Stop polling this long after the order expired: the expiry job closes the trade by then. */
const POLL_GRACE_MS = 10 * 60_000;
const MAX_POLL_ATTEMPTS = 500;

export function nextPollDelayMs(attempt: number, initialMs: number, maxMs: number): number {
  const exp = Math.min(attempt, 20);
  return Math.min(initialMs * 2 ** exp, maxMs);
}

export async function pollPayment(ctx: SyncContext, paymentId: string, attempt: number): Promise<string> {
  const { rows } = await ctx.db.query<PaymentRow & { expires_at: Date }>(
    'SELECT p.*, o.expires_at FROM payments p JOIN orders o ON o.id = p.order_id WHERE p.id = $1',
    [paymentId],
  );
  const p = rows[0];
  if (!p) return 'unknown_payment';
  if (p.status !== 'requires_action' && p.status !== 'processing') return `final:${p.status}`;
  const connector = ctx.channels.get(p.channel);
  if (!connector) return 'channel_not_configured';
  // A ChannelError here propagates: the queue retries the job with its own backoff.
  const snapshot = await connector.queryPayment({ channelReference: p.channel_reference, currency: p.currency, channelTransactionId: p.channel_transaction_id ?? undefined });
  const outcome = await inTransaction(ctx.db, async (tx) => {
    const applied = await applyTradeSnapshot(tx, p.id, snapshot, 'query');
    if (applied.outcome === 'unchanged' && applied.payment.status !== 'succeeded') {
      const tooLate = Date.now() > p.expires_at.getTime() + POLL_GRACE_MS || attempt >= MAX_POLL_ATTEMPTS;
      if (!tooLate) {
        const delay = nextPollDelayMs(attempt + 1, ctx.pollInitialDelayMs, ctx.pollMaxDelayMs);
        await schedulePoll(tx, p.id, attempt + 1, new Date(Date.now() + delay));
      }
    }
    return applied;
  });
  return outcome.outcome === 'rejected' ? `rejected:${outcome.reason}` : `${outcome.outcome}:${snapshot.state}`;
}

/**
 * End an unpaid order (expiry or cancel). Each open trade is closed at its channel first; a trade
 * found paid meanwhile pays the order instead, and the order is not ended.
 */
export async function endOrder(ctx: SyncContext, orderId: string, to: 'expired' | 'canceled', reason: string): Promise<string> {
  const { rows: open } = await ctx.db.query<PaymentRow>(
    `SELECT * FROM payments WHERE order_id = $1 AND status IN ('requires_action', 'processing') ORDER BY id`,
    [orderId],
  );
  for (const p of open) {
    const connector = ctx.channels.get(p.channel);
    if (!connector) continue;
    const snapshot = await connector.closePayment({ channelReference: p.channel_reference, currency: p.currency, channelTransactionId: p.channel_transaction_id ?? undefined });
    // A trade that never opened at the channel is as good as closed once we closed it.
    const asClosed = snapshot.state === 'not_found' ? { ...snapshot, state: 'closed' as const } : snapshot;
    await inTransaction(ctx.db, (tx) => applyTradeSnapshot(tx, p.id, asClosed, `close:${reason}`));
  }
  return inTransaction(ctx.db, async (tx) => {
    const order = await lockOrder(tx, orderId);
    if (!order) return 'unknown_order';
    if (order.status !== 'pending') return `already_${order.status}`;
    const stillOpen = await tx.query(
      `SELECT 1 FROM payments WHERE order_id = $1 AND status IN ('requires_action', 'processing') LIMIT 1`,
      [orderId],
    );
    if (stillOpen.rowCount) throw new Error(`order ${orderId} still has an open trade; retrying`);
    await endUnpaidOrder(tx, order, to, reason);
    return to;
  });
}

export async function expireOrder(ctx: SyncContext, orderId: string): Promise<string> {
  const { rows } = await ctx.db.query<{ expires_at: Date; status: string }>('SELECT expires_at, status FROM orders WHERE id = $1', [orderId]);
  const o = rows[0];
  if (!o) return 'unknown_order';
  if (o.status !== 'pending') return `already_${o.status}`;
  if (o.expires_at.getTime() > Date.now()) return 'not_yet';
  return endOrder(ctx, orderId, 'expired', 'expired');
}

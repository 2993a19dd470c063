/**
 * Payments: one attempt to collect an order's total through one channel. Created locally first
 * (so a crash after the channel call still leaves a row the poller finds), then at the channel.
 * Every channel answer — notification, active query, close — goes through `applyTradeSnapshot`,
 * which moves payment and order exactly once under row locks (order first, then payment).
 */
import type { Client, Pool, Queryable } from '../store/db.ts';
import { inTransaction } from '../store/db.ts';
import { newId, newTradeNumber } from '../domain/ids.ts';
import { ApiError, invalid, notFound } from '../domain/errors.ts';
import { toJsonAmount } from '../domain/money.ts';
import { paymentMachine, type PaymentStatus } from '../domain/state-machine.ts';
import { assert } from '../domain/assert.ts';
import { randomUUID } from 'node:crypto';
import { ChannelError, type ChannelConnector, type ChannelName, type NextAction, type PaymentItem, type TradeSnapshot } from '../channels/types.ts';
import { DEFAULT_PRIORITY, paymentMethodsFor, rankMethods, type MethodOption } from '../channels/routing.ts';
import { channelStats } from '../channels/health.ts';
import { assertPayable, getOrderRow, lockOrder, markOrderPaid, type OrderRow } from '../orders/orders.ts';
import { enqueueJob } from '../jobs/queue.ts';
import { postCapture, postOverpayment } from '../ledger/capture.ts';

export interface PaymentRow {
  id: string; order_id: string; channel: ChannelName; method: string; status: PaymentStatus;
  amount: string; currency: string; channel_reference: string; channel_transaction_id: string | null;
  action: NextAction | null; return_url: string | null; failure_code: string | null; failure_message: string | null;
  needs_refund: boolean; refund_reason: string | null; created_at: Date; updated_at: Date; succeeded_at: Date | null;
}

export interface PaymentContext {
  db: Pool;
  channels: ReadonlyMap<ChannelName, ChannelConnector>;
  /** Configured channel priority (routing.ts DEFAULT_PRIORITY when absent). */
  priority?: Partial<Record<ChannelName, number>>;
  publicBaseUrl: string;
  pollInitialDelayMs: number;
}

const unix = (d: Date | null) => (d ? Math.floor(d.getTime() / 1000) : null);

export function paymentJson(p: PaymentRow) {
  return {
    id: p.id, object: 'payment', order_id: p.order_id, channel: p.channel, method: p.method, status: p.status,
    amount: toJsonAmount(BigInt(p.amount)), currency: p.currency, channel_reference: p.channel_reference,
    channel_transaction_id: p.channel_transaction_id, action: p.status === 'requires_action' ? p.action : null,
    failure_code: p.failure_code, failure_message: p.failure_message,
    needs_refund: p.needs_refund, refund_reason: p.refund_reason,
    created: unix(p.created_at), succeeded_at: unix(p.succeeded_at),
  };
}

/** Configured channel connectors, plus the stored-value wallet, which is always there. */
export function availableChannels(ctx: Pick<PaymentContext, 'channels'>): Set<ChannelName> {
  return new Set([...ctx.channels.keys(), 'wallet']);
}

/** The methods an order may use, best first: platform and currency, then priority, success, health. */
export async function rankedMethods(ctx: PaymentContext, order: Pick<OrderRow, 'client_platform' | 'currency'>): Promise<MethodOption[]> {
  const options = paymentMethodsFor(order.client_platform, order.currency, availableChannels(ctx));
  const stats = await channelStats(ctx.db);
  const unhealthy = new Set(options.map((o) => o.channel).filter((c) => stats.get(c)?.healthy === false));
  return rankMethods(options, {
    priority: ctx.priority ?? DEFAULT_PRIORITY,
    successRate: (c) => stats.get(c)?.successRate ?? null,
    unhealthy,
  });
}

export async function listPaymentMethods(ctx: PaymentContext, orderId: string) {
  const order = await getOrderRow(ctx.db, orderId);
  const methods = await rankedMethods(ctx, order);
  return { object: 'list' as const, data: methods.map((m) => ({ object: 'payment_method', ...m })), has_more: false };
}

/** After a failed or canceled attempt: the best method of another channel, else another method. */
async function nextMethod(ctx: PaymentContext, p: PaymentRow): Promise<MethodOption | null> {
  if (p.status !== 'failed' && p.status !== 'canceled') return null;
  const order = await getOrderRow(ctx.db, p.order_id);
  if (order.status !== 'pending') return null;
  const ranked = await rankedMethods(ctx, order);
  return ranked.find((m) => m.channel !== p.channel) ?? ranked.find((m) => m.method !== p.method) ?? null;
}

export async function getPaymentWithAdvice(ctx: PaymentContext, id: string) {
  const { rows } = await ctx.db.query<PaymentRow>('SELECT * FROM payments WHERE id = $1', [id]);
  if (!rows[0]) throw notFound('payment', id);
  return { ...paymentJson(rows[0]), next_method: await nextMethod(ctx, rows[0]) };
}

export interface CreatePaymentInput {
  channel: ChannelName; method?: string; payer?: Record<string, string>; return_url?: string;
}

/** What the channel is told is being bought: a subject line and the items with their store ids. */
async function loadPurchase(db: Queryable, orderId: string): Promise<{ subject: string; items: PaymentItem[] }> {
  const { rows } = await db.query<{ product_id: string; quantity: number; title: string; store_product_ids: Record<string, string> }>(
    `SELECT i.product_id, i.quantity, p.title, p.store_product_ids FROM order_items i JOIN products p ON p.id = i.product_id
      WHERE i.order_id = $1 ORDER BY i.line`,
    [orderId],
  );
  assert(rows.length > 0, `order ${orderId} has no items`);
  const subject = rows.length > 1 ? `${rows[0]!.title} +${rows.length - 1}` : rows[0]!.title;
  return {
    subject: subject.slice(0, 128),
    items: rows.map((r) => ({ productId: r.product_id, quantity: r.quantity, storeProductIds: r.store_product_ids })),
  };
}

export async function createPayment(ctx: PaymentContext, orderId: string, input: CreatePaymentInput) {
  const order = await getOrderRow(ctx.db, orderId);
  assertPayable(order);
  const options = paymentMethodsFor(order.client_platform, order.currency, availableChannels(ctx)).filter((m) => m.channel === input.channel);
  if (options.length === 0) {
    throw invalid('channel_not_available', `Channel '${input.channel}' is not available for a ${order.client_platform} order in ${order.currency}`, 'channel');
  }
  const method = input.method ?? options[0]!.method;
  if (!options.some((m) => m.method === method)) {
    throw invalid('method_not_available', `Method '${method}' of '${input.channel}' is not available for a ${order.client_platform} order`, 'method');
  }
  if (input.channel === 'wallet') return payWithWallet(ctx, orderId);
  const connector = ctx.channels.get(input.channel);
  assert(connector, 'routing offered a channel without a connector');

  // 1. The attempt exists before the channel hears of it, with its first active query scheduled.
  const payment = await inTransaction(ctx.db, async (tx) => {
    const locked = await lockOrder(tx, orderId);
    assert(locked, 'order vanished');
    assertPayable(locked);
    const { rows } = await tx.query<PaymentRow>(
      `INSERT INTO payments (id, order_id, channel, method, status, amount, currency, channel_reference, return_url)
       VALUES ($1, $2, $3, $4, 'requires_action', $5, $6, $7, $8) RETURNING *`,
      [newId('pay'), orderId, input.channel, method, locked.total_amount, locked.currency,
        connector.referenceFormat === 'uuid' ? randomUUID() : newTradeNumber(), input.return_url ?? null],
    );
    const p = rows[0]!;
    await recordPaymentTransition(tx, p.id, 'none', 'requires_action', 'created');
    await schedulePoll(tx, p.id, 0, new Date(Date.now() + ctx.pollInitialDelayMs));
    return p;
  });

  // 2. The channel creates its trade; its next action is stored for the client.
  const purchase = await loadPurchase(ctx.db, orderId);
  try {
    const result = await connector.createPayment({
      channelReference: payment.channel_reference, paymentId: payment.id, orderId, customerId: order.customer_id,
      items: purchase.items, method, amountMinor: BigInt(payment.amount), currency: payment.currency,
      subject: purchase.subject, notifyUrl: `${ctx.publicBaseUrl}/v1/notify/${input.channel}`,
      returnUrl: input.return_url, expiresAt: order.expires_at, payer: input.payer,
    });
    const { rows } = await ctx.db.query<PaymentRow>(
      `UPDATE payments SET action = $2, channel_transaction_id = coalesce(channel_transaction_id, $3), updated_at = now()
        WHERE id = $1 RETURNING *`,
      [payment.id, JSON.stringify(result.action), result.channelTransactionId ?? null],
    );
    return paymentJson(rows[0]!);
  } catch (err) {
    if (!(err instanceof ChannelError)) throw err;
    // The channel refused or could not be reached: this attempt fails, the order stays payable.
    const failed = await failPayment(ctx.db, payment.id, err.code, err.message);
    throw new ApiError(402, 'payment_error', 'channel_error', `The channel could not create the payment: ${err.message}`, undefined, {
      payment: failed ? { ...paymentJson(failed), next_method: await nextMethod(ctx, failed) } : null,
    });
  }
}

/**
 * Paying from the stored-value wallet: one transaction creates the payment, debits the wallet
 * (a tracked balance that may not go negative), marks the order paid and grants access. A balance
 * that does not cover the order rolls everything back and answers 402.
 */
async function payWithWallet(ctx: PaymentContext, orderId: string) {
  const payment = await inTransaction(ctx.db, async (tx) => {
    const locked = await lockOrder(tx, orderId);
    assert(locked, 'order vanished');
    assertPayable(locked);
    const { rows } = await tx.query<PaymentRow>(
      `INSERT INTO payments (id, order_id, channel, method, status, amount, currency, channel_reference)
       VALUES ($1, $2, 'wallet', 'wallet', 'requires_action', $3, $4, $5) RETURNING *`,
      [newId('pay'), orderId, locked.total_amount, locked.currency, newTradeNumber()],
    );
    const p = rows[0]!;
    await recordPaymentTransition(tx, p.id, 'none', 'requires_action', 'created');
    const applied = await applyTradeSnapshot(tx, p.id, {
      state: 'succeeded', channelReference: p.channel_reference, channelTransactionId: p.channel_reference,
      amountMinor: BigInt(p.amount), currency: p.currency, feeMinor: 0n,
    }, 'wallet');
    assert(applied.outcome === 'applied', 'a wallet payment applies at once');
    return applied.payment;
  });
  return paymentJson(payment);
}

async function failPayment(db: Pool, paymentId: string, code: string, message: string): Promise<PaymentRow | null> {
  return inTransaction(db, async (tx) => {
    const { rows } = await tx.query<PaymentRow>(
      `UPDATE payments SET status = 'failed', failure_code = $2, failure_message = $3, updated_at = now()
        WHERE id = $1 AND status IN ('requires_action', 'processing') RETURNING *`,
      [paymentId, code, message.slice(0, 500)],
    );
    if (rows[0]) await recordPaymentTransition(tx, paymentId, 'requires_action', 'failed', `create_failed:${code}`);
    return rows[0] ?? null;
  });
}

export async function recordPaymentTransition(tx: Queryable, paymentId: string, from: string, to: string, reason: string) {
  await tx.query('INSERT INTO payment_transitions (payment_id, from_status, to_status, reason) VALUES ($1, $2, $3, $4)', [paymentId, from, to, reason]);
}

export async function schedulePoll(tx: Queryable, paymentId: string, attempt: number, runAt: Date) {
  await enqueueJob(tx, 'payment_poll', { payment_id: paymentId, attempt }, { runAt, jobKey: `poll:${paymentId}` });
}

export async function getPayment(db: Queryable, id: string) {
  const { rows } = await db.query<PaymentRow>('SELECT * FROM payments WHERE id = $1', [id]);
  if (!rows[0]) throw notFound('payment', id);
  return paymentJson(rows[0]);
}

export async function findPaymentByReference(db: Queryable, channel: ChannelName, channelReference: string): Promise<PaymentRow | null> {
  const { rows } = await db.query<PaymentRow>('SELECT * FROM payments WHERE channel_reference = $1 AND channel = $2', [channelReference, channel]);
  return rows[0] ?? null;
}

export type ApplyOutcome =
  | { outcome: 'applied'; payment: PaymentRow }
  | { outcome: 'unchanged'; payment: PaymentRow }
  | { outcome: 'rejected'; reason: string };

/** Checks a channel's word against the payment we hold: reference, amount, currency. */
export function mismatchReason(p: PaymentRow, s: TradeSnapshot): string | null {
  if (s.channelReference !== p.channel_reference) return 'reference_mismatch';
  if (s.amountMinor !== undefined && s.amountMinor !== BigInt(p.amount)) return `amount_mismatch: expected ${p.amount}, got ${s.amountMinor}`;
  if (s.currency !== undefined && s.currency !== p.currency) return `currency_mismatch: expected ${p.currency}, got ${s.currency}`;
  return null;
}

/**
 * Apply what the channel says about a trade, inside the caller's transaction. Locks the order,
 * then the payment. Succeeded: payment → succeeded once; the order → paid once (access granted),
 * or, when the order is no longer pending, the payment is flagged for refund (a buyer who paid
 * twice, or paid after the order ended). Closed/failed: payment → canceled/failed, order stays
 * payable. Pending/not found: nothing changes.
 */
export async function applyTradeSnapshot(tx: Client, paymentId: string, s: TradeSnapshot, source: string): Promise<ApplyOutcome> {
  const { rows: pre } = await tx.query<{ order_id: string }>('SELECT order_id FROM payments WHERE id = $1', [paymentId]);
  if (!pre[0]) return { outcome: 'rejected', reason: 'unknown_payment' };
  const order = await lockOrder(tx, pre[0].order_id);
  assert(order, 'payment without order');
  const { rows } = await tx.query<PaymentRow>('SELECT * FROM payments WHERE id = $1 FOR UPDATE', [paymentId]);
  const p = rows[0]!;
  const mismatch = mismatchReason(p, s);
  if (mismatch) return { outcome: 'rejected', reason: mismatch };

  if (s.state === 'succeeded') {
    if (p.status === 'succeeded') return { outcome: 'unchanged', payment: p };
    if (s.channelTransactionId) {
      const used = await tx.query('SELECT id FROM payments WHERE channel = $1 AND channel_transaction_id = $2 AND id <> $3',
        [p.channel, s.channelTransactionId, p.id]);
      if (used.rowCount) return { outcome: 'rejected', reason: `transaction_already_used_by:${used.rows[0].id}` };
    }
    if (!paymentMachine.canTransition(p.status, 'succeeded')) {
      // Our record says the attempt ended, the channel says it was paid: money moved. Keep it for
      // a person (reconciliation shows it); never silently flip a final state.
      return { outcome: 'rejected', reason: `payment_is_${p.status}` };
    }
    const updated = await tx.query<PaymentRow>(
      `UPDATE payments SET status = 'succeeded', succeeded_at = now(), updated_at = now(),
              channel_transaction_id = coalesce($3, channel_transaction_id)
        WHERE id = $1 AND status = $2 RETURNING *`,
      [p.id, p.status, s.channelTransactionId ?? null],
    );
    assert(updated.rows.length === 1, 'payment changed under its lock');
    await recordPaymentTransition(tx, p.id, p.status, 'succeeded', source);
    let payment = updated.rows[0]!;
    if (order.status === 'pending') {
      await markOrderPaid(tx, order, p.id, `payment_succeeded:${source}`);
      await postCapture(tx, payment, order.customer_id, s.feeMinor);
    } else {
      payment = await flagForRefund(tx, payment, order);
      await postOverpayment(tx, payment, s.feeMinor);
    }
    return { outcome: 'applied', payment };
  }

  if (s.state === 'closed' || s.state === 'failed') {
    const to: PaymentStatus = s.state === 'closed' ? 'canceled' : 'failed';
    if (!paymentMachine.canTransition(p.status, to)) return { outcome: 'unchanged', payment: p };
    const updated = await tx.query<PaymentRow>(
      `UPDATE payments SET status = $3, updated_at = now(), failure_code = coalesce(failure_code, $4)
        WHERE id = $1 AND status = $2 RETURNING *`,
      [p.id, p.status, to, s.rawStatus ?? s.state],
    );
    assert(updated.rows.length === 1, 'payment changed under its lock');
    await recordPaymentTransition(tx, p.id, p.status, to, source);
    return { outcome: 'applied', payment: updated.rows[0]! };
  }
  return { outcome: 'unchanged', payment: p };
}

async function flagForRefund(tx: Client, payment: PaymentRow, order: OrderRow): Promise<PaymentRow> {
  const reason = order.paid_payment_id && order.paid_payment_id !== payment.id ? 'duplicate_payment' : `order_${order.status}`;
  const { rows } = await tx.query<PaymentRow>(
    'UPDATE payments SET needs_refund = true, refund_reason = $2, updated_at = now() WHERE id = $1 RETURNING *',
    [payment.id, reason],
  );
  // The buyer gets the extra payment back without anyone asking.
  await enqueueJob(tx, 'refund_overpayment', { payment_id: payment.id }, { jobKey: `refund_overpayment:${payment.id}` });
  return rows[0]!;
}

/**
 * The client app hands over the channel's proof of purchase (Apple's signed transaction, Google
 * Play's purchase token). The connector verifies it with the channel; the answer is applied like
 * any other channel word, so whichever of app or notification arrives first credits, once.
 */
export async function confirmPayment(ctx: PaymentContext, paymentId: string, payload: Record<string, unknown>) {
  const { rows } = await ctx.db.query<PaymentRow>('SELECT * FROM payments WHERE id = $1', [paymentId]);
  const p = rows[0];
  if (!p) throw notFound('payment', paymentId);
  const connector = ctx.channels.get(p.channel);
  if (!connector?.confirmPayment) {
    throw invalid('confirm_not_supported', `Payments through '${p.channel}' are confirmed by the channel, not by the client`, 'payment_id');
  }
  let snapshot: TradeSnapshot;
  try {
    snapshot = await connector.confirmPayment({ channelReference: p.channel_reference, currency: p.currency, amountMinor: BigInt(p.amount), payload });
  } catch (err) {
    if (err instanceof ChannelError) {
      throw new ApiError(err.retryable ? 502 : 400, err.retryable ? 'api_error' : 'invalid_request_error', 'confirmation_rejected', err.message);
    }
    throw err;
  }
  const applied = await inTransaction(ctx.db, (tx) => applyTradeSnapshot(tx, p.id, snapshot, 'client_confirm'));
  if (applied.outcome === 'rejected') {
    throw new ApiError(400, 'invalid_request_error', 'confirmation_mismatch', `The proof of purchase does not match this payment: ${applied.reason}`);
  }
  return getPayment(ctx.db, p.id);
}

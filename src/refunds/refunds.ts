/**
 * Refunds: full or partial, through the channel the buyer paid with (or back into the wallet).
 * A refund row is written first under the order's lock — so the sum of refunds can never exceed
 * the payment, whatever the concurrency — then the channel is asked. Every channel answer (the
 * refund call, a refund notification, an active query) goes through `applyRefundSnapshot`, which
 * moves the refund once, posts the ledger reversal, revokes the access it covers and moves the
 * order to partially_refunded / refunded, all in one transaction.
 */
import type { Client, Pool, Queryable } from '../store/db.ts';
import { inTransaction } from '../store/db.ts';
import { newId, newTradeNumber } from '../domain/ids.ts';
import { ApiError, invalid, notFound } from '../domain/errors.ts';
import { toJsonAmount } from '../domain/money.ts';
import { assert } from '../domain/assert.ts';
import { orderMachine } from '../domain/state-machine.ts';
import { ChannelError, type ChannelConnector, type ChannelName, type RefundSnapshot } from '../channels/types.ts';
import { refundFailurePostings, refundPostings, type OriginalPosting, type OriginalSplit } from '../domain/refund-rules.ts';
import { post } from '../ledger/ledger.ts';
import { enqueueJob } from '../jobs/queue.ts';
import { lockOrder, recordTransition, type OrderRow } from '../orders/orders.ts';
import { revokeEntitlements } from '../entitlements/entitlements.ts';
import type { PaymentRow } from '../payments/payments.ts';

export type RefundStatus = 'pending' | 'succeeded' | 'failed';

export interface RefundRow {
  id: string; payment_id: string; order_id: string; amount: string; currency: string; status: RefundStatus;
  refund_reference: string; channel_refund_id: string | null; reason: string | null; initiated_by: string;
  product_ids: string[] | null; force: boolean; failure_code: string | null; failure_message: string | null;
  created_at: Date; updated_at: Date; succeeded_at: Date | null;
}

export interface RefundContext {
  db: Pool;
  channels: ReadonlyMap<ChannelName, ChannelConnector>;
  publicBaseUrl: string;
  pollInitialDelayMs: number;
}

const unix = (d: Date | null) => (d ? Math.floor(d.getTime() / 1000) : null);

export function refundJson(r: RefundRow) {
  return {
    id: r.id, object: 'refund', payment_id: r.payment_id, order_id: r.order_id, amount: toJsonAmount(BigInt(r.amount)),
    currency: r.currency, status: r.status, reason: r.reason, initiated_by: r.initiated_by, product_ids: r.product_ids,
    refund_reference: r.refund_reference, channel_refund_id: r.channel_refund_id,
    failure_code: r.failure_code, failure_message: r.failure_message, created: unix(r.created_at), succeeded_at: unix(r.succeeded_at),
  };
}

async function recordRefundTransition(tx: Queryable, id: string, from: string, to: string, reason: string) {
  await tx.query('INSERT INTO refund_transitions (refund_id, from_status, to_status, reason) VALUES ($1, $2, $3, $4)', [id, from, to, reason]);
}

/** Refunds that count against the payment: succeeded ones and those still under way. */
async function committedRefunds(tx: Queryable, paymentId: string): Promise<bigint> {
  const { rows } = await tx.query<{ s: string | null }>(`SELECT sum(amount) AS s FROM refunds WHERE payment_id = $1 AND status IN ('pending', 'succeeded')`, [paymentId]);
  return BigInt(rows[0]?.s ?? '0');
}

async function succeededRefunds(tx: Queryable, paymentId: string, exceptId?: string): Promise<bigint> {
  const { rows } = await tx.query<{ s: string | null }>(
    `SELECT sum(amount) AS s FROM refunds WHERE payment_id = $1 AND status = 'succeeded' AND ($2::text IS NULL OR id <> $2)`, [paymentId, exceptId ?? null]);
  return BigInt(rows[0]?.s ?? '0');
}

/** The ledger entry a refund reverses: the payment's capture (or overpayment) entry. */
async function originalEntry(tx: Queryable, paymentId: string): Promise<{ id: string; postings: OriginalPosting[]; splits: OriginalSplit[] } | null> {
  return entryByKey(tx, `capture:${paymentId}`);
}

/** An entry's postings and creator splits, by its idempotency key. */
async function entryByKey(tx: Queryable, key: string): Promise<{ id: string; postings: OriginalPosting[]; splits: OriginalSplit[] } | null> {
  const { rows } = await tx.query<{ id: string }>(`SELECT id FROM journal_entries WHERE idempotency_key = $1`, [key]);
  if (!rows[0]) return null;
  const p = await tx.query<{ code: string; type: string; currency: string; may_go_negative: boolean; tracked: boolean; direction: 'debit' | 'credit'; amount: string }>(
    `SELECT a.code, a.type, a.currency, a.may_go_negative, a.tracked, p.direction, p.amount
       FROM postings p JOIN ledger_accounts a ON a.id = p.account_id WHERE p.entry_id = $1 ORDER BY p.line`, [rows[0].id]);
  const s = await tx.query<{ creator_id: string; currency: string; gross_amount: string; fee_amount: string; share_amount: string; matures_at: Date }>(
    `SELECT creator_id, currency, gross_amount, fee_amount, share_amount, matures_at FROM creator_splits WHERE entry_id = $1 ORDER BY creator_id, currency`, [rows[0].id]);
  return {
    id: rows[0].id,
    postings: p.rows.map((r) => ({
      account: { code: r.code, type: r.type as OriginalPosting['account']['type'], currency: r.currency, mayGoNegative: r.may_go_negative, tracked: r.tracked },
      direction: r.direction, amount: BigInt(r.amount),
    })),
    splits: s.rows.map((r) => ({ creatorId: r.creator_id, currency: r.currency, gross: BigInt(r.gross_amount), fee: BigInt(r.fee_amount), share: BigInt(r.share_amount), maturesAt: r.matures_at })),
  };
}

async function walletBalanceOf(tx: Queryable, code: string): Promise<bigint> {
  const { rows } = await tx.query<{ balance: string }>(
    'SELECT b.balance FROM ledger_balances b JOIN ledger_accounts a ON a.id = b.account_id WHERE a.code = $1', [code]);
  return BigInt(rows[0]?.balance ?? '0');
}

export interface CreateRefundInput { payment_id: string; amount?: number; reason?: string; product_ids?: string[]; force?: boolean }

export async function createRefund(ctx: RefundContext, input: CreateRefundInput, opts: { initiatedBy?: 'merchant' | 'automatic' } = {}) {
  const { rows: pre } = await ctx.db.query<PaymentRow>('SELECT * FROM payments WHERE id = $1', [input.payment_id]);
  const payment = pre[0];
  if (!payment) throw notFound('payment', input.payment_id, 'payment_id');
  const connector = ctx.channels.get(payment.channel);
  if (payment.channel !== 'wallet' && !connector?.refundPayment) {
    throw invalid('refund_not_supported', `Refunds of '${payment.channel}' payments are started by the store, not through this API`, 'payment_id');
  }
  const refund = await inTransaction(ctx.db, async (tx) => {
    const order = await lockOrder(tx, payment.order_id);
    assert(order, 'payment without order');
    const { rows } = await tx.query<PaymentRow>('SELECT * FROM payments WHERE id = $1 FOR UPDATE', [payment.id]);
    const p = rows[0]!;
    if (p.status !== 'succeeded') throw invalid('payment_not_refundable', `Payment ${p.id} is ${p.status}`, 'payment_id');
    const total = BigInt(p.amount);
    const remaining = total - (await committedRefunds(tx, p.id));
    const amount = input.amount === undefined ? remaining : BigInt(input.amount);
    if (remaining <= 0n) throw invalid('payment_fully_refunded', `Payment ${p.id} has nothing left to refund`, 'payment_id');
    if (amount <= 0n) throw invalid('amount_invalid', 'amount must be positive', 'amount');
    if (amount > remaining) throw invalid('refund_exceeds_remaining', `amount ${amount} exceeds the refundable remainder ${remaining}`, 'amount');
    if (input.product_ids?.length) {
      const lines = await tx.query('SELECT 1 FROM order_items WHERE order_id = $1 AND product_id = ANY($2)', [p.order_id, input.product_ids]);
      if (lines.rowCount !== new Set(input.product_ids).size) throw invalid('product_not_in_order', 'product_ids must name products of this order', 'product_ids');
    }
    if (!input.force) await refuseSpentCoins(tx, p, total, amount);
    const { rows: created } = await tx.query<RefundRow>(
      `INSERT INTO refunds (id, payment_id, order_id, amount, currency, status, refund_reference, reason, initiated_by, product_ids, force)
       VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8, $9, $10) RETURNING *`,
      [newId('re'), p.id, p.order_id, amount.toString(), p.currency, newTradeNumber(), input.reason ?? null, opts.initiatedBy ?? 'merchant',
        input.product_ids?.length ? input.product_ids : null, input.force ?? false],
    );
    const r = created[0]!;
    await recordRefundTransition(tx, r.id, 'none', 'pending', 'created');
    await enqueueJob(tx, 'refund_poll', { refund_id: r.id, attempt: 0 }, { runAt: new Date(Date.now() + ctx.pollInitialDelayMs), jobKey: `refund_poll:${r.id}` });
    return { refund: r, payment: p };
  });

  if (refund.payment.channel === 'wallet') {
    // Back into the wallet that paid: no channel, done at once.
    await inTransaction(ctx.db, (tx) => applyRefundSnapshot(tx, refund.refund.id, { state: 'succeeded', channelReference: refund.payment.channel_reference, refundReference: refund.refund.refund_reference }, 'wallet'));
    return getRefund(ctx.db, refund.refund.id);
  }
  try {
    const snapshot = await connector!.refundPayment!({
      channelReference: refund.payment.channel_reference,
      channelTransactionId: refund.payment.channel_transaction_id ?? undefined,
      refundReference: refund.refund.refund_reference,
      amountMinor: BigInt(refund.refund.amount),
      paymentAmountMinor: BigInt(refund.payment.amount),
      currency: refund.payment.currency,
      reason: input.reason,
      notifyUrl: `${ctx.publicBaseUrl}/v1/notify/${refund.payment.channel}`,
    });
    await inTransaction(ctx.db, (tx) => applyRefundSnapshot(tx, refund.refund.id, snapshot, 'refund_call'));
  } catch (err) {
    if (!(err instanceof ChannelError)) throw err;
    if (!err.retryable) {
      await inTransaction(ctx.db, (tx) => applyRefundSnapshot(tx, refund.refund.id, {
        state: 'failed', channelReference: refund.payment.channel_reference, refundReference: refund.refund.refund_reference, rawStatus: err.code,
      }, `refund_call_failed:${err.code}`, err.message));
      const failed = await getRefund(ctx.db, refund.refund.id);
      throw new ApiError(402, 'payment_error', 'refund_failed', `The channel refused the refund: ${err.message}`, undefined, { refund: failed });
    }
    // Unknown outcome (timeout, 5xx): the refund stays pending; the poller asks the channel.
  }
  return getRefund(ctx.db, refund.refund.id);
}

/** A coin pack's coins must still be in the wallet to be taken back (unless forced). */
async function refuseSpentCoins(tx: Client, p: PaymentRow, total: bigint, amount: bigint) {
  const original = await originalEntry(tx, p.id);
  if (!original) return;
  for (const o of original.postings) {
    if (o.direction !== 'credit' || !o.account.code.startsWith('customer_wallet:')) continue;
    const needed = (o.amount * amount + total - 1n) / total;
    const balance = await walletBalanceOf(tx, o.account.code);
    if (balance < needed) {
      throw new ApiError(400, 'invalid_request_error', 'coins_already_spent',
        `The buyer has spent the coins of this purchase (${balance} of ${needed} left); refund with force: true to refund anyway`, 'payment_id');
    }
  }
}

/**
 * Apply a channel's word about a refund in the caller's transaction: pending → succeeded |
 * failed once. Succeeded: ledger reversal, access revoked for what it covers, order status.
 */
export async function applyRefundSnapshot(tx: Client, refundId: string, s: RefundSnapshot, source: string, message?: string): Promise<'applied' | 'unchanged' | 'rejected'> {
  const { rows: pre } = await tx.query<{ order_id: string }>('SELECT order_id FROM refunds WHERE id = $1', [refundId]);
  if (!pre[0]) return 'rejected';
  const order = await lockOrder(tx, pre[0].order_id);
  assert(order, 'refund without order');
  const { rows } = await tx.query<RefundRow>('SELECT * FROM refunds WHERE id = $1 FOR UPDATE', [refundId]);
  const r = rows[0]!;
  if (s.amountMinor !== undefined && s.amountMinor !== BigInt(r.amount)) return 'rejected';
  if (s.currency !== undefined && s.currency !== r.currency) return 'rejected';
  if (r.status === 'succeeded' && s.state === 'failed') return failSucceededRefund(tx, order, r, s, source, message);
  if (r.status !== 'pending' || s.state === 'pending') {
    if (s.channelRefundId && !r.channel_refund_id) {
      await tx.query('UPDATE refunds SET channel_refund_id = $2, updated_at = now() WHERE id = $1', [r.id, s.channelRefundId]);
    }
    return 'unchanged';
  }
  if (s.state === 'failed') {
    await tx.query(`UPDATE refunds SET status = 'failed', failure_code = $2, failure_message = $3, updated_at = now() WHERE id = $1 AND status = 'pending'`,
      [r.id, s.rawStatus ?? 'failed', message?.slice(0, 500) ?? null]);
    await recordRefundTransition(tx, r.id, 'pending', 'failed', source);
    return 'applied';
  }
  const { rows: payRows } = await tx.query<PaymentRow>('SELECT * FROM payments WHERE id = $1', [r.payment_id]);
  const p = payRows[0]!;
  await tx.query(
    `UPDATE refunds SET status = 'succeeded', succeeded_at = now(), updated_at = now(), channel_refund_id = coalesce(channel_refund_id, $2)
      WHERE id = $1 AND status = 'pending'`, [r.id, s.channelRefundId ?? null]);
  await recordRefundTransition(tx, r.id, 'pending', 'succeeded', source);
  const before = await succeededRefunds(tx, p.id, r.id);
  await postRefund(tx, r, p, before);
  const fullyRefunded = before + BigInt(r.amount) === BigInt(p.amount);
  if (order.paid_payment_id === p.id) await afterOrderRefund(tx, order, r, fullyRefunded);
  return 'applied';
}

/**
 * The channel took back a refund it had made (Stripe's `refund.failed` after `succeeded`): the
 * money is ours again. The refund ends failed, its ledger entry is reversed, and the order's
 * status follows the refunds that stand. Access taken back by the refund stays taken back: the
 * buyer asked to leave, and the platform decides (GET /v1/refunds/{id} shows failure_code) how
 * to pay them out another way or grant again.
 */
async function failSucceededRefund(tx: Client, order: OrderRow, r: RefundRow, s: RefundSnapshot, source: string, message?: string): Promise<'applied'> {
  const res = await tx.query(
    `UPDATE refunds SET status = 'failed', failure_code = $2, failure_message = $3, updated_at = now() WHERE id = $1 AND status = 'succeeded'`,
    [r.id, s.rawStatus ?? 'failed', (message ?? 'the channel reported the refund failed after it had succeeded').slice(0, 500)]);
  assert(res.rowCount === 1, 'refund row locked as succeeded');
  await recordRefundTransition(tx, r.id, 'succeeded', 'failed', source);
  const entry = await entryByKey(tx, `refund:${r.id}`);
  if (entry) {
    const rules = refundFailurePostings(entry);
    await post(tx, {
      idempotencyKey: `refund_failure:${r.id}`, kind: 'refund_failure', reference: r.id, reverses: entry.id,
      memo: `refund ${r.id} failed at the channel after it had succeeded`, postings: rules.postings,
      splits: rules.splits.map((x) => ({ ...x, kind: 'refund' as const, delayDays: 0 })),
    });
  }
  if (order.paid_payment_id === r.payment_id) {
    const standing = await succeededRefunds(tx, r.payment_id);
    const to = standing === 0n ? 'paid' : 'partially_refunded';
    if (order.status !== to && (order.status === 'refunded' || order.status === 'partially_refunded')) {
      orderMachine.assertTransition(order.status, to);
      const moved = await tx.query(`UPDATE orders SET status = $2, updated_at = now() WHERE id = $1 AND status = $3`, [order.id, to, order.status]);
      if (moved.rowCount === 1) await recordTransition(tx, order.id, order.status, to, `refund_failed:${r.id}`, r.payment_id);
    }
  }
  return 'applied';
}

async function postRefund(tx: Client, r: RefundRow, p: PaymentRow, before: bigint) {
  const original = await originalEntry(tx, p.id);
  if (!original) return; // a zero-amount payment has no entry
  const walletCode = original.postings.find((o) => o.direction === 'credit' && o.account.code.startsWith('customer_wallet:'))?.account.code;
  const rules = refundPostings({
    channel: p.channel, gross: BigInt(p.amount), refundedBefore: before, amount: BigInt(r.amount),
    original: original.postings, splits: original.splits,
    walletBalance: walletCode ? await walletBalanceOf(tx, walletCode) : undefined,
  });
  await post(tx, {
    idempotencyKey: `refund:${r.id}`, kind: 'refund', reference: r.id, memo: `refund of ${p.id}`,
    postings: rules.postings,
    splits: rules.splits.map((x) => ({ ...x, kind: 'refund' as const, delayDays: 0 })),
  });
}

/** Order status and access after a refund of the payment that paid it. */
async function afterOrderRefund(tx: Client, order: OrderRow, r: RefundRow, fullyRefunded: boolean) {
  const to = fullyRefunded ? 'refunded' : 'partially_refunded';
  if (order.status !== to) {
    const res = await tx.query(`UPDATE orders SET status = $2, updated_at = now() WHERE id = $1 AND status IN ('paid', 'partially_refunded')`, [order.id, to]);
    if (res.rowCount === 1) await recordTransition(tx, order.id, order.status, to, `refund:${r.id}`, r.payment_id);
  }
  // A full refund takes back all access; a partial one only the products it names.
  const products = fullyRefunded ? null : r.product_ids;
  if (fullyRefunded || (products && products.length > 0)) await revokeEntitlements(tx, order.id, products);
}

export async function getRefund(db: Queryable, id: string) {
  const { rows } = await db.query<RefundRow>('SELECT * FROM refunds WHERE id = $1', [id]);
  if (!rows[0]) throw notFound('refund', id);
  return refundJson(rows[0]);
}

export async function listRefunds(db: Queryable, q: { payment_id?: string; limit: number; starting_after?: string }) {
  const params: unknown[] = [];
  const where: string[] = [];
  if (q.payment_id) { params.push(q.payment_id); where.push(`payment_id = $${params.length}`); }
  if (q.starting_after) { params.push(q.starting_after); where.push(`id < $${params.length}`); }
  params.push(q.limit + 1);
  const { rows } = await db.query<RefundRow>(`SELECT * FROM refunds ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY id DESC LIMIT $${params.length}`, params);
  return { object: 'list' as const, data: rows.slice(0, q.limit).map(refundJson), has_more: rows.length > q.limit };
}

/**
 * A refund notification: our own refund's outcome, or a refund the store started (Apple,
 * Google), which is recorded here as a new refund of the payment and applied at once.
 */
export async function applyRefundNotification(tx: Client, channel: ChannelName, s: RefundSnapshot, eventId: string): Promise<{ outcome: 'applied' | 'unchanged' | 'ignored' | 'rejected'; reason?: string; paymentId?: string }> {
  const { rows: pays } = await tx.query<PaymentRow>('SELECT * FROM payments WHERE channel = $1 AND channel_reference = $2', [channel, s.channelReference]);
  const p = pays[0];
  if (!p) return { outcome: 'rejected', reason: 'unknown_reference' };
  if (s.refundReference) {
    const { rows } = await tx.query<{ id: string }>('SELECT id FROM refunds WHERE refund_reference = $1 AND payment_id = $2', [s.refundReference, p.id]);
    // A refund made outside Knowpay (the channel's merchant portal): genuine, kept, acknowledged,
    // left for reconciliation and a person.
    if (!rows[0]) return { outcome: 'ignored', reason: `refund not made through Knowpay: ${s.refundReference}`, paymentId: p.id };
    const outcome = await applyRefundSnapshot(tx, rows[0].id, s, `notification:${eventId}`);
    return { outcome, reason: outcome === 'rejected' ? 'refund_mismatch' : undefined, paymentId: p.id };
  }
  if (!s.channelRefundId || s.state !== 'succeeded') return { outcome: 'unchanged', paymentId: p.id };
  // Under the order's lock, so two copies of one store refund arriving together record it once.
  const order = await lockOrder(tx, p.order_id);
  assert(order, 'payment without order');
  const existing = await tx.query<{ id: string }>('SELECT id FROM refunds WHERE payment_id = $1 AND channel_refund_id = $2', [p.id, s.channelRefundId]);
  if (existing.rows[0]) return { outcome: 'unchanged', paymentId: p.id };
  const remaining = BigInt(p.amount) - (await committedRefunds(tx, p.id));
  const amount = s.amountMinor ?? remaining;
  if (p.status !== 'succeeded' || remaining <= 0n || amount > remaining || amount <= 0n) {
    return { outcome: 'rejected', reason: `store_refund_exceeds_remaining:${remaining}`, paymentId: p.id };
  }
  const { rows } = await tx.query<RefundRow>(
    `INSERT INTO refunds (id, payment_id, order_id, amount, currency, status, refund_reference, channel_refund_id, reason, initiated_by, force)
     VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, 'refunded by the store', 'channel', true) RETURNING *`,
    [newId('re'), p.id, p.order_id, amount.toString(), p.currency, newTradeNumber(), s.channelRefundId],
  );
  await recordRefundTransition(tx, rows[0]!.id, 'none', 'pending', `notification:${eventId}`);
  await applyRefundSnapshot(tx, rows[0]!.id, { ...s, amountMinor: amount, currency: p.currency }, `notification:${eventId}`);
  return { outcome: 'applied', paymentId: p.id };
}

export const MAX_REFUND_POLLS = 200;

/** The refund poller: ask the channel about a refund still pending, with backoff. */
export async function pollRefund(ctx: RefundContext & { pollMaxDelayMs: number }, refundId: string, attempt: number): Promise<string> {
  const { rows } = await ctx.db.query<RefundRow & { channel: ChannelName; channel_reference: string; channel_transaction_id: string | null }>(
    `SELECT r.*, p.channel, p.channel_reference, p.channel_transaction_id FROM refunds r JOIN payments p ON p.id = r.payment_id WHERE r.id = $1`, [refundId]);
  const r = rows[0];
  if (!r) return 'unknown_refund';
  if (r.status !== 'pending') return `final:${r.status}`;
  const connector = ctx.channels.get(r.channel);
  if (!connector?.queryRefund) return 'no_query';
  let s: RefundSnapshot;
  try {
    s = await connector.queryRefund({
      channelReference: r.channel_reference, channelTransactionId: r.channel_transaction_id ?? undefined,
      refundReference: r.refund_reference, channelRefundId: r.channel_refund_id ?? undefined, currency: r.currency,
    });
  } catch (err) {
    // The channel never heard of it: our refund call did not arrive. Sending it again with the
    // same refund number is safe (the channel refunds once per number).
    if (!(err instanceof ChannelError) || err.code !== 'refund_not_found' || !connector.refundPayment) throw err;
    const { rows: pays } = await ctx.db.query<PaymentRow>('SELECT * FROM payments WHERE id = $1', [r.payment_id]);
    s = await connector.refundPayment({
      channelReference: r.channel_reference, channelTransactionId: r.channel_transaction_id ?? undefined, refundReference: r.refund_reference,
      amountMinor: BigInt(r.amount), paymentAmountMinor: BigInt(pays[0]!.amount), currency: r.currency, reason: r.reason ?? undefined,
      notifyUrl: `${ctx.publicBaseUrl}/v1/notify/${r.channel}`,
    });
  }
  const outcome = await inTransaction(ctx.db, async (tx) => {
    const o = await applyRefundSnapshot(tx, r.id, s, 'query');
    if (o === 'unchanged' && attempt < MAX_REFUND_POLLS) {
      const delay = Math.min(ctx.pollInitialDelayMs * 2 ** Math.min(attempt + 1, 20), ctx.pollMaxDelayMs);
      await enqueueJob(tx, 'refund_poll', { refund_id: r.id, attempt: attempt + 1 }, { runAt: new Date(Date.now() + delay), jobKey: `refund_poll:${r.id}` });
    }
    return o;
  });
  return `${outcome}:${s.state}`;
}

/** The extra payment of a buyer who paid twice (or after the order ended), refunded in full. */
export async function refundOverpayment(ctx: RefundContext, paymentId: string): Promise<string> {
  const { rows } = await ctx.db.query<PaymentRow>('SELECT * FROM payments WHERE id = $1', [paymentId]);
  const p = rows[0];
  if (!p || !p.needs_refund || p.status !== 'succeeded') return 'not_needed';
  const done = await ctx.db.query(`SELECT 1 FROM refunds WHERE payment_id = $1 AND status IN ('pending', 'succeeded') LIMIT 1`, [p.id]);
  if (done.rowCount) return 'already_refunding';
  const connector = ctx.channels.get(p.channel);
  if (p.channel !== 'wallet' && !connector?.refundPayment) return 'store_refund_needed';
  const r = await createRefund(ctx, { payment_id: p.id, reason: p.refund_reason ?? 'duplicate_payment', force: true }, { initiatedBy: 'automatic' });
  return `refund:${r.id}:${r.status}`;
}

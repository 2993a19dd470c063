/** Payouts: in transit after a settlement run; then paid (money left the bank) or failed (back to available). */
import type { Pool, Queryable } from '../store/db.ts';
import { inTransaction } from '../store/db.ts';
import { ApiError, invalid, notFound } from '../domain/errors.ts';
import { toJsonAmount } from '../domain/money.ts';
import { accounts, type PostingSpec } from '../domain/ledger-rules.ts';
import { post } from '../ledger/ledger.ts';

interface PayoutRow { id: string; settlement_id: string; creator_id: string; currency: string; amount: string; status: string; created_at: Date; updated_at: Date }

function payoutJson(p: PayoutRow) {
  return {
    id: p.id, object: 'payout', settlement_id: p.settlement_id, creator_id: p.creator_id, currency: p.currency,
    amount: toJsonAmount(BigInt(p.amount)), status: p.status, created: Math.floor(p.created_at.getTime() / 1000),
  };
}

export async function getPayout(db: Queryable, id: string) {
  const { rows } = await db.query<PayoutRow>('SELECT * FROM payouts WHERE id = $1', [id]);
  if (!rows[0]) throw notFound('payout', id);
  return payoutJson(rows[0]);
}

export async function listPayouts(db: Queryable, q: { creator_id?: string; settlement_id?: string; limit: number; starting_after?: string }) {
  const params: unknown[] = [];
  const where: string[] = [];
  if (q.creator_id) { params.push(q.creator_id); where.push(`creator_id = $${params.length}`); }
  if (q.settlement_id) { params.push(q.settlement_id); where.push(`settlement_id = $${params.length}`); }
  if (q.starting_after) { params.push(q.starting_after); where.push(`id > $${params.length}`); }
  params.push(q.limit + 1);
  const { rows } = await db.query<PayoutRow>(`SELECT * FROM payouts ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY id LIMIT $${params.length}`, params);
  return { object: 'list' as const, data: rows.slice(0, q.limit).map(payoutJson), has_more: rows.length > q.limit };
}

/** in_transit → paid | failed, compare-and-set, with its ledger entry in the same transaction. */
export async function settlePayout(db: Pool, id: string, to: 'paid' | 'failed') {
  return inTransaction(db, async (tx) => {
    const { rows } = await tx.query<PayoutRow>('SELECT * FROM payouts WHERE id = $1 FOR UPDATE', [id]);
    const p = rows[0];
    if (!p) throw notFound('payout', id);
    if (p.status === to) return payoutJson(p);
    if (p.status !== 'in_transit') throw new ApiError(400, 'invalid_request_error', 'payout_not_in_transit', `Payout ${id} is ${p.status}`);
    const amount = BigInt(p.amount);
    const transit = accounts.payoutsInTransit(p.creator_id, p.currency);
    const postings: PostingSpec[] = to === 'paid'
      ? [{ account: transit, direction: 'debit', amount }, { account: accounts.bank(p.currency), direction: 'credit', amount }]
      : [{ account: transit, direction: 'debit', amount }, { account: accounts.creatorAvailable(p.creator_id, p.currency), direction: 'credit', amount }];
    await post(tx, { idempotencyKey: `payout_${to}:${id}`, kind: `payout_${to}`, reference: id, postings });
    const updated = await tx.query<PayoutRow>(
      `UPDATE payouts SET status = $2, updated_at = now() WHERE id = $1 AND status = 'in_transit' RETURNING *`, [id, to]);
    return payoutJson(updated.rows[0]!);
  });
}

/** A manual adjustment of a creator's share, with a reason; it matures at once and settles next run. */
export async function adjustCreator(db: Pool, input: { creator_id: string; currency: string; amount: number; reason: string; idempotency_key?: string }) {
  if (!Number.isSafeInteger(input.amount) || input.amount === 0) throw invalid('amount_invalid', 'amount must be a non-zero integer', 'amount');
  const c = await db.query('SELECT 1 FROM creators WHERE id = $1', [input.creator_id]);
  if (!c.rowCount) throw notFound('creator', input.creator_id, 'creator_id');
  const amount = BigInt(Math.abs(input.amount));
  const credit = input.amount > 0;
  const pending = accounts.creatorPending(input.creator_id, input.currency);
  const expense = accounts.adjustments(input.currency);
  return inTransaction(db, async (tx) => {
    const res = await post(tx, {
      idempotencyKey: input.idempotency_key ? `adjustment:${input.idempotency_key}` : `adjustment:${Date.now()}:${Math.random()}`,
      kind: 'adjustment', reference: input.creator_id, memo: input.reason.slice(0, 500),
      postings: [
        { account: expense, direction: credit ? 'debit' : 'credit', amount },
        { account: pending, direction: credit ? 'credit' : 'debit', amount },
      ],
      splits: [{ creatorId: input.creator_id, currency: input.currency, gross: 0n, fee: 0n, share: credit ? amount : -amount, kind: 'adjustment', delayDays: 0 }],
    });
    return { object: 'adjustment', entry_id: res.entryId, creator_id: input.creator_id, currency: input.currency, amount: input.amount, reason: input.reason };
  });
}

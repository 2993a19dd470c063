/**
 * Posting a succeeded payment to the ledger, inside the transaction that marks it succeeded:
 * the capture split (creators, platform, fee) for the payment that paid the order, or an
 * overpayment held for refund for a payment that arrived for an order already paid or ended.
 */
import type { Client } from '../store/db.ts';
import { assert } from '../domain/assert.ts';
import { capturePostings, DEFAULT_FEES, estimateFee, overpaymentPostings, type CaptureLine, type FeeSchedule } from '../domain/ledger-rules.ts';
import { post, type PostResult } from './ledger.ts';

interface LineRow {
  creator_id: string; revenue_share_bps: number; settlement_delay_days: number; total_amount: string;
  type: string; quantity: number; wallet_credit_currency: string | null; wallet_credit_amount: string | null;
}

export interface CapturedPayment {
  id: string; order_id: string; channel: string; amount: string; currency: string;
}

/**
 * Fee schedules: the defaults, overridden per channel by KNOWPAY_FEES, e.g.
 * KNOWPAY_FEES='{"alipay":{"bps":55},"stripe":{"bps":340,"fixed":30}}'.
 */
export function loadFeeSchedules(raw = process.env.KNOWPAY_FEES): Record<string, FeeSchedule> {
  const out: Record<string, FeeSchedule> = { ...DEFAULT_FEES };
  if (!raw) return out;
  const parsed = JSON.parse(raw) as Record<string, { bps?: unknown; fixed?: unknown }>;
  for (const [channel, v] of Object.entries(parsed)) {
    const bps = v.bps ?? 0;
    const fixed = v.fixed ?? 0;
    if (!Number.isInteger(bps) || (bps as number) < 0 || (bps as number) > 10000 || !Number.isInteger(fixed) || (fixed as number) < 0) {
      throw new Error(`KNOWPAY_FEES.${channel}: bps must be an integer 0..10000 and fixed a non-negative integer`);
    }
    out[channel] = { bps: bps as number, fixed: BigInt(fixed as number) };
  }
  return out;
}

const FEES = loadFeeSchedules();

export function feeFor(channel: string, gross: bigint, reported?: bigint): bigint {
  if (reported !== undefined) {
    assert(reported >= 0n && reported <= gross, `reported fee ${reported} out of range for gross ${gross}`);
    return reported;
  }
  const schedule = FEES[channel];
  assert(schedule, `no fee schedule for ${channel}`);
  return estimateFee(gross, schedule);
}

export async function postCapture(tx: Client, p: CapturedPayment, customerId: string, reportedFee?: bigint): Promise<PostResult | null> {
  const gross = BigInt(p.amount);
  if (gross === 0n) return null;
  const { rows } = await tx.query<LineRow>(
    `SELECT p.creator_id, c.revenue_share_bps, c.settlement_delay_days, i.total_amount, p.type, i.quantity,
            p.wallet_credit_currency, p.wallet_credit_amount
       FROM order_items i JOIN products p ON p.id = i.product_id JOIN creators c ON c.id = p.creator_id
      WHERE i.order_id = $1 ORDER BY i.line`,
    [p.order_id],
  );
  assert(rows.length > 0, `order ${p.order_id} has no lines`);
  const lines: CaptureLine[] = rows.map((r) => ({
    creatorId: r.creator_id,
    shareBps: r.revenue_share_bps,
    amount: BigInt(r.total_amount),
    walletCredit: r.type === 'coin_pack' && r.wallet_credit_currency
      ? { currency: r.wallet_credit_currency, amount: BigInt(r.wallet_credit_amount!) * BigInt(r.quantity) }
      : null,
  }));
  const fee = feeFor(p.channel, gross, reportedFee);
  await tx.query('UPDATE payments SET fee_amount = $2 WHERE id = $1', [p.id, fee.toString()]);
  const { postings, splits } = capturePostings({ channel: p.channel, currency: p.currency, customerId, gross, fee, lines });
  const delayOf = new Map(rows.map((r) => [r.creator_id, r.settlement_delay_days]));
  return post(tx, {
    idempotencyKey: `capture:${p.id}`,
    kind: 'capture',
    reference: p.id,
    memo: `order ${p.order_id}`,
    postings,
    splits: splits.map((s) => ({ ...s, kind: 'sale' as const, delayDays: delayOf.get(s.creatorId)! })),
  });
}

export async function postOverpayment(tx: Client, p: CapturedPayment, reportedFee?: bigint): Promise<PostResult> {
  const gross = BigInt(p.amount);
  const fee = feeFor(p.channel, gross, reportedFee);
  await tx.query('UPDATE payments SET fee_amount = $2 WHERE id = $1', [p.id, fee.toString()]);
  return post(tx, {
    idempotencyKey: `capture:${p.id}`,
    kind: 'overpayment',
    reference: p.id,
    memo: `order ${p.order_id} was already paid or ended`,
    postings: overpaymentPostings({ channel: p.channel, currency: p.currency, gross, fee }),
  });
}

/**
 * Refund posting rules: a refund reverses its payment's capture entry in proportion to the amount
 * refunded. Each original posting's share is computed cumulatively (floor of amount × refunded so
 * far / gross, and exactly the amount once everything is refunded), so partial refunds never
 * reverse more than the original, and a full refund reverses it exactly.
 *
 *   credit money-in (clearing, or the wallet that paid)   refund − fee given back
 *   credit channel fees                                    the fee share, if the channel returns it
 *   debit  each creator's pending share                    its share of the refund (settled or not:
 *                                                          pending may go negative and nets at the
 *                                                          next run, so a refund after payout is
 *                                                          taken from the next payout)
 *   debit  the buyer's wallet                              coins of a coin pack taken back
 *   debit  platform revenue                                the rest
 */
import { assert } from './assert.ts';
import { accounts, assertBalanced, type AccountSpec, type PostingSpec, type SplitSpec } from './ledger-rules.ts';

/** Whether the channel gives its fee back on a refund (Alipay/WeChat pro rata; Stripe/PayPal keep it; the stores take their commission back). */
export const FEE_REFUNDED: Readonly<Record<string, boolean>> = {
  alipay: true, wechatpay: true, stripe: false, paypal: false, apple_iap: true, google_play: true, wallet: true,
};

export interface OriginalPosting { account: AccountSpec; direction: 'debit' | 'credit'; amount: bigint }
export interface OriginalSplit { creatorId: string; currency: string; gross: bigint; fee: bigint; share: bigint; maturesAt: Date }

export interface RefundRuleInput {
  channel: string;
  gross: bigint;
  refundedBefore: bigint;
  amount: bigint;
  original: readonly OriginalPosting[];
  splits: readonly OriginalSplit[];
  /** Coins still in the buyer's wallet (a coin pack's take-back never overdraws it). */
  walletBalance?: bigint;
}

export interface RefundRuleResult {
  postings: PostingSpec[];
  splits: (SplitSpec & { notBefore: Date })[];
  /** Coins that could not be taken back (already spent), booked as a loss. */
  walletShortfall: bigint;
}

/** The part of `a` that refunding `amount` on top of `before` reverses. */
export function proportionalPart(a: bigint, gross: bigint, before: bigint, amount: bigint): bigint {
  assert(gross > 0n && before >= 0n && amount > 0n && before + amount <= gross, 'refund out of range');
  const cum = (c: bigint) => (c === gross ? a : (a * c) / gross);
  return cum(before + amount) - cum(before);
}

const isMoneyIn = (code: string) => code.startsWith('channel_clearing:') || code.startsWith('customer_wallet:');

export function refundPostings(input: RefundRuleInput): RefundRuleResult {
  const { gross, refundedBefore: before, amount } = input;
  assert(input.original.length >= 2, 'a refund needs the original entry');
  const part = (a: bigint) => proportionalPart(a, gross, before, amount);
  const found = input.original.filter((p) => p.direction === 'debit' && isMoneyIn(p.account.code));
  assert(found.length <= 1, 'the original entry has at most one money-in posting');
  const feeRefundable = FEE_REFUNDED[input.channel] ?? false;
  const feeOriginal = input.original.filter((p) => p.account.code.startsWith('channel_fees:'));
  const feeBack = feeRefundable ? feeOriginal.reduce((s, p) => s + part(p.amount), 0n) : 0n;
  // When the fee took the whole gross, the capture had no money-in posting: it is still the clearing account.
  const base = found[0]?.account ?? accounts.clearing(input.channel, (feeOriginal[0] ?? input.original[0]!).account.currency);
  const moneyIn = [{ account: base, direction: 'debit' as const, amount: 0n }];
  const cur = base.currency;

  const out: PostingSpec[] = [];
  const add = (account: AccountSpec, direction: 'debit' | 'credit', value: bigint) => {
    assert(value >= 0n, `negative ${direction} on ${account.code}`);
    if (value > 0n) out.push({ account, direction, amount: value });
  };
  add(moneyIn[0]!.account, 'credit', amount - feeBack);
  for (const f of feeOriginal) add(f.account, 'credit', feeRefundable ? part(f.amount) : 0n);

  let walletShortfall = 0n;
  const losses = new Map<string, bigint>();
  for (const p of input.original) {
    const code = p.account.code;
    if (p === found[0] || code.startsWith('channel_fees:') || code.startsWith('platform_revenue:')) continue;
    const value = part(p.amount);
    if (p.direction === 'credit' && code.startsWith('customer_wallet:')) {
      // Coins of a coin pack: take back what is left in the wallet; the rest is a loss.
      const available = input.walletBalance ?? value;
      const taken = value < available ? value : available > 0n ? available : 0n;
      add(p.account, 'debit', taken);
      walletShortfall += value - taken;
      losses.set(p.account.currency, (losses.get(p.account.currency) ?? 0n) + value - taken);
      continue;
    }
    add(p.account, p.direction === 'debit' ? 'credit' : 'debit', value);
  }
  for (const [lcur, loss] of losses) add(accounts.refundLosses(lcur), 'debit', loss);

  // Platform revenue absorbs the rest of the base currency, in whichever direction balances it.
  const residual = out.filter((p) => p.account.currency === cur)
    .reduce((s, p) => s + (p.direction === 'credit' ? p.amount : -p.amount), 0n);
  const platform = input.original.find((p) => p.account.code.startsWith('platform_revenue:'))?.account ?? accounts.platformRevenue(cur);
  if (residual > 0n) add(platform, 'debit', residual);
  if (residual < 0n) add(platform, 'credit', -residual);
  assertBalanced(out);

  const splits = input.splits.map((s) => ({
    creatorId: s.creatorId, currency: s.currency,
    gross: -part(s.gross), fee: feeRefundable ? -part(s.fee) : 0n, share: -part(s.share), notBefore: s.maturesAt,
  })).filter((s) => s.gross !== 0n || s.share !== 0n);
  return { postings: out, splits, walletShortfall };
}

/**
 * A refund the channel reports failed after it had succeeded (Stripe: the card can no longer take
 * the money, `refund.failed`): the money is back with us, so the refund's own entry is reversed
 * posting for posting, and its creator splits are given back. Exact for the refund it reverses.
 * Later refunds of the same payment follow refundPostings' cumulative rule over the refunds that
 * stand, so a rounding unit may move between a creator and platform revenue (never out of the
 * books: every entry balances and the residual lands on platform revenue).
 */
export function refundFailurePostings(refund: { postings: readonly OriginalPosting[]; splits: readonly OriginalSplit[] }): {
  postings: PostingSpec[]; splits: (SplitSpec & { notBefore: Date })[];
} {
  assert(refund.postings.length >= 2, 'a refund entry has postings');
  const postings = refund.postings.map((p) => ({ account: p.account, direction: p.direction === 'debit' ? 'credit' as const : 'debit' as const, amount: p.amount }));
  assertBalanced(postings);
  const splits = refund.splits.map((x) => ({ creatorId: x.creatorId, currency: x.currency, gross: -x.gross, fee: -x.fee, share: -x.share, notBefore: x.maturesAt }));
  return { postings, splits };
}

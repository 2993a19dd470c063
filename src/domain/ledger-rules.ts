/**
 * Posting rules: pure functions from a business event to the postings of one journal entry.
 * Every result balances per currency (asserted). Accounts are named by code; the ledger store
 * creates them on first use with the type and flags given here.
 *
 * Capture of a paid order (api.md's split rule): the channel fee comes off the gross first; the
 * fee and any order discount are already spread over the lines in proportion to their amounts by
 * the largest-remainder rule; each creator receives revenue_share_bps of its lines' net, rounded
 * down to the minor unit; the platform keeps the rest. Postings:
 *   debit  channel_clearing:{channel}:{CUR}     gross − fee   (what the channel owes us)
 *   debit  channel_fees:{channel}:{CUR}         fee           (expense)
 *   credit creator_payable:{creator}:pending    Σ shares      (liability, held for the refund window)
 *   credit customer_wallet:{customer}           coin credits  (liability, for coin_pack lines)
 *   credit platform_revenue:{CUR}               the rest      (revenue, gross of the fee expense)
 * Paying with the wallet: the debit side is the buyer's wallet instead of a channel clearing account.
 */
import { assert } from './assert.ts';
import { allocateProportionally, BPS_DENOMINATOR } from './pricing.ts';

export type AccountType = 'asset' | 'liability' | 'revenue' | 'expense' | 'equity';
export type Direction = 'debit' | 'credit';

export interface AccountSpec {
  code: string;
  type: AccountType;
  currency: string;
  /** false: the account's tracked balance may never go below zero (wallets). */
  mayGoNegative: boolean;
  /** true: a balance row is kept in the posting transaction (needed to enforce mayGoNegative). */
  tracked: boolean;
}

export interface PostingSpec { account: AccountSpec; direction: Direction; amount: bigint }

export interface SplitSpec { creatorId: string; currency: string; gross: bigint; fee: bigint; share: bigint }

export const accounts = {
  clearing: (channel: string, cur: string): AccountSpec => ({ code: `channel_clearing:${channel}:${cur}`, type: 'asset', currency: cur, mayGoNegative: true, tracked: false }),
  fees: (channel: string, cur: string): AccountSpec => ({ code: `channel_fees:${channel}:${cur}`, type: 'expense', currency: cur, mayGoNegative: true, tracked: false }),
  creatorPending: (creator: string, cur: string): AccountSpec => ({ code: `creator_payable:${creator}:pending:${cur}`, type: 'liability', currency: cur, mayGoNegative: true, tracked: false }),
  creatorAvailable: (creator: string, cur: string): AccountSpec => ({ code: `creator_payable:${creator}:available:${cur}`, type: 'liability', currency: cur, mayGoNegative: true, tracked: false }),
  payoutsInTransit: (creator: string, cur: string): AccountSpec => ({ code: `payouts_in_transit:${creator}:${cur}`, type: 'liability', currency: cur, mayGoNegative: true, tracked: false }),
  bank: (cur: string): AccountSpec => ({ code: `bank:${cur}`, type: 'asset', currency: cur, mayGoNegative: true, tracked: false }),
  platformRevenue: (cur: string): AccountSpec => ({ code: `platform_revenue:${cur}`, type: 'revenue', currency: cur, mayGoNegative: true, tracked: false }),
  promotions: (cur: string): AccountSpec => ({ code: `promotions:${cur}`, type: 'expense', currency: cur, mayGoNegative: true, tracked: false }),
  wallet: (customer: string, cur: string): AccountSpec => ({ code: `customer_wallet:${encodeURIComponent(customer)}:${cur}`, type: 'liability', currency: cur, mayGoNegative: false, tracked: true }),
  overpayments: (cur: string): AccountSpec => ({ code: `customer_overpayments:${cur}`, type: 'liability', currency: cur, mayGoNegative: true, tracked: false }),
  coinIssuance: (cur: string): AccountSpec => ({ code: `coin_issuance:${cur}`, type: 'equity', currency: cur, mayGoNegative: true, tracked: false }),
  refundLosses: (cur: string): AccountSpec => ({ code: `refund_losses:${cur}`, type: 'expense', currency: cur, mayGoNegative: true, tracked: false }),
  adjustments: (cur: string): AccountSpec => ({ code: `adjustments:${cur}`, type: 'expense', currency: cur, mayGoNegative: true, tracked: false }),
};

export interface FeeSchedule { bps: number; fixed: bigint }

/** Default estimates (the list); a fee the channel reports replaces the estimate. */
export const DEFAULT_FEES: Readonly<Record<string, FeeSchedule>> = {
  alipay: { bps: 60, fixed: 0n },
  wechatpay: { bps: 60, fixed: 0n },
  stripe: { bps: 290, fixed: 30n },
  paypal: { bps: 349, fixed: 49n },
  apple_iap: { bps: 3000, fixed: 0n },
  google_play: { bps: 1500, fixed: 0n },
  wallet: { bps: 0, fixed: 0n },
};

/** fee = round-half-up(gross × bps / 10000) + fixed, never more than the gross, never negative. */
export function estimateFee(gross: bigint, schedule: FeeSchedule): bigint {
  assert(gross >= 0n, 'gross must be non-negative');
  assert(Number.isInteger(schedule.bps) && schedule.bps >= 0 && schedule.bps <= 10000, 'fee bps out of range');
  assert(schedule.fixed >= 0n, 'fixed fee must be non-negative');
  if (gross === 0n) return 0n;
  const pct = (gross * BigInt(schedule.bps) * 2n + BPS_DENOMINATOR) / (2n * BPS_DENOMINATOR);
  const fee = pct + schedule.fixed;
  return fee > gross ? gross : fee;
}

export interface CaptureLine {
  creatorId: string;
  shareBps: number;
  /** The line's total after its share of the order discount. */
  amount: bigint;
  /** coin_pack lines: coins credited to the buyer's wallet. */
  walletCredit?: { currency: string; amount: bigint } | null;
}

export interface CaptureInput {
  /** 'wallet' when the buyer paid from the wallet. */
  channel: string;
  currency: string;
  customerId: string;
  gross: bigint;
  fee: bigint;
  lines: CaptureLine[];
}

export interface CaptureResult { postings: PostingSpec[]; splits: SplitSpec[] }

export function capturePostings(input: CaptureInput): CaptureResult {
  const { currency: cur, gross, fee } = input;
  assert(gross > 0n, 'a capture needs a positive gross');
  assert(fee >= 0n && fee <= gross, 'fee out of range');
  assert(input.lines.length > 0, 'a capture needs lines');
  const lineSum = input.lines.reduce((s, l) => s + l.amount, 0n);
  assert(lineSum === gross, `lines sum to ${lineSum}, gross is ${gross}`);
  const fees = allocateProportionally(fee, input.lines.map((l) => l.amount));

  const shares = new Map<string, SplitSpec>();
  let walletCredit = 0n;
  let promo = 0n;
  const foreignCoins = new Map<string, bigint>();
  input.lines.forEach((line, i) => {
    assert(Number.isInteger(line.shareBps) && line.shareBps >= 0 && line.shareBps <= 10000, 'share bps out of range');
    const lineFee = fees[i]!;
    const wc = line.walletCredit;
    if (wc) {
      // Coins are the platform's liability until spent; no creator share on a coin pack.
      assert(wc.amount > 0n, 'wallet credit must be positive');
      if (wc.currency === cur) {
        walletCredit += wc.amount;
        if (wc.amount > line.amount) promo += wc.amount - line.amount;
      } else {
        // Coins in another currency: the sale is platform revenue here; the coins are issued in
        // their own currency against the coin issuance account (each currency balances alone).
        foreignCoins.set(wc.currency, (foreignCoins.get(wc.currency) ?? 0n) + wc.amount);
      }
      return;
    }
    const net = line.amount - lineFee;
    const share = (net * BigInt(line.shareBps)) / BPS_DENOMINATOR;
    const s = shares.get(line.creatorId) ?? { creatorId: line.creatorId, currency: cur, gross: 0n, fee: 0n, share: 0n };
    s.gross += line.amount;
    s.fee += lineFee;
    s.share += share;
    shares.set(line.creatorId, s);
  });

  const debitSide = input.channel === 'wallet' ? accounts.wallet(input.customerId, cur) : accounts.clearing(input.channel, cur);
  const postings: PostingSpec[] = [];
  const add = (account: AccountSpec, direction: Direction, amount: bigint) => {
    if (amount !== 0n) postings.push({ account, direction, amount });
  };
  add(debitSide, 'debit', gross - fee);
  add(accounts.fees(input.channel, cur), 'debit', fee);
  add(accounts.promotions(cur), 'debit', promo);
  const sortedShares = [...shares.values()].sort((a, b) => (a.creatorId < b.creatorId ? -1 : 1));
  for (const s of sortedShares) add(accounts.creatorPending(s.creatorId, cur), 'credit', s.share);
  add(accounts.wallet(input.customerId, cur), 'credit', walletCredit);
  const totalShares = sortedShares.reduce((sum, s) => sum + s.share, 0n);
  add(accounts.platformRevenue(cur), 'credit', gross + promo - totalShares - walletCredit);
  for (const [wcur, amount] of [...foreignCoins.entries()].sort()) {
    add(accounts.coinIssuance(wcur), 'debit', amount);
    add(accounts.wallet(input.customerId, wcur), 'credit', amount);
  }
  assertBalanced(postings);
  return { postings, splits: sortedShares };
}

/** A payment that arrived for an order already paid (or ended): held for refund to the buyer. */
export function overpaymentPostings(input: { channel: string; currency: string; gross: bigint; fee: bigint }): PostingSpec[] {
  const postings: PostingSpec[] = [];
  if (input.gross - input.fee > 0n) postings.push({ account: accounts.clearing(input.channel, input.currency), direction: 'debit', amount: input.gross - input.fee });
  if (input.fee > 0n) postings.push({ account: accounts.fees(input.channel, input.currency), direction: 'debit', amount: input.fee });
  postings.push({ account: accounts.overpayments(input.currency), direction: 'credit', amount: input.gross });
  assertBalanced(postings);
  return postings;
}

/** Same postings, sides swapped: how any entry is undone. */
export function reversePostings(postings: readonly PostingSpec[]): PostingSpec[] {
  return postings.map((p) => ({ ...p, direction: p.direction === 'debit' ? 'credit' : 'debit' }));
}

export function assertBalanced(postings: readonly PostingSpec[]): void {
  assert(postings.length >= 2, 'an entry needs at least two postings');
  const byCurrency = new Map<string, bigint>();
  for (const p of postings) {
    assert(p.amount > 0n, `posting amount must be positive (${p.account.code}: ${p.amount})`);
    const signed = p.direction === 'debit' ? p.amount : -p.amount;
    byCurrency.set(p.account.currency, (byCurrency.get(p.account.currency) ?? 0n) + signed);
  }
  for (const [cur, diff] of byCurrency) assert(diff === 0n, `entry does not balance in ${cur}: ${diff}`);
}

/** Signed effect of a posting on its account's natural balance (credit-normal for liabilities). */
export function balanceDelta(type: AccountType, direction: Direction, amount: bigint): bigint {
  const debitNormal = type === 'asset' || type === 'expense';
  return (direction === 'debit') === debitNormal ? amount : -amount;
}

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { capturePostings, estimateFee, DEFAULT_FEES, type PostingSpec } from './ledger-rules.ts';
import { proportionalPart, refundPostings } from './refund-rules.ts';

const net = (ps: PostingSpec[]) => {
  const m = new Map<string, bigint>();
  for (const p of ps) m.set(p.account.code, (m.get(p.account.code) ?? 0n) + (p.direction === 'debit' ? p.amount : -p.amount));
  return m;
};

test('proportional parts: cumulative floors, exact at the end, refusing out-of-range refunds', () => {
  assert.equal(proportionalPart(6262n, 9000n, 0n, 1000n), 695n);
  assert.equal(proportionalPart(6262n, 9000n, 1000n, 8000n), 6262n - 695n);
  assert.throws(() => proportionalPart(1n, 100n, 50n, 51n));
  assert.throws(() => proportionalPart(1n, 100n, 0n, 0n));
});

test('a full Alipay refund reverses the capture exactly, the fee included', () => {
  const gross = 9000n;
  const fee = estimateFee(gross, DEFAULT_FEES.alipay!);
  const cap = capturePostings({ channel: 'alipay', currency: 'CNY', customerId: 'c', gross, fee, lines: [{ creatorId: 'cr', shareBps: 7000, amount: gross }] });
  const r = refundPostings({ channel: 'alipay', gross, refundedBefore: 0n, amount: gross, original: cap.postings, splits: cap.splits.map((s) => ({ ...s, maturesAt: new Date(0) })) });
  const sum = net([...cap.postings, ...r.postings]);
  for (const [code, v] of sum) assert.equal(v, 0n, code);
  assert.deepEqual(r.splits.map((s) => [s.gross, s.fee, s.share]), [[-9000n, -54n, -6262n]]);
});

test('Stripe keeps its fee: a full refund leaves the fee as the platform loss', () => {
  const gross = 1000n;
  const fee = estimateFee(gross, DEFAULT_FEES.stripe!);
  const cap = capturePostings({ channel: 'stripe', currency: 'USD', customerId: 'c', gross, fee, lines: [{ creatorId: 'cr', shareBps: 5000, amount: gross }] });
  const r = refundPostings({ channel: 'stripe', gross, refundedBefore: 0n, amount: gross, original: cap.postings, splits: cap.splits.map((s) => ({ ...s, maturesAt: new Date(0) })) });
  const sum = net([...cap.postings, ...r.postings]);
  assert.equal(sum.get('channel_fees:stripe:USD'), fee);
  assert.equal(sum.get('channel_clearing:stripe:USD'), -fee);
  assert.equal(sum.get('creator_payable:cr:pending:USD'), 0n);
});

test('coins already spent are taken back only as far as the wallet holds them; the rest is a loss', () => {
  const cap = capturePostings({ channel: 'alipay', currency: 'CNY', customerId: 'u', gross: 600n, fee: 4n, lines: [{ creatorId: 'p', shareBps: 0, amount: 600n, walletCredit: { currency: 'CNY', amount: 600n } }] });
  const r = refundPostings({ channel: 'alipay', gross: 600n, refundedBefore: 0n, amount: 600n, original: cap.postings, splits: [], walletBalance: 100n });
  assert.equal(r.walletShortfall, 500n);
  assert.ok(r.postings.some((p) => p.account.code === 'refund_losses:CNY' && p.amount === 500n));
});

test('property: any sequence of partial refunds reverses the capture exactly once fully refunded', () => {
  const line = fc.record({ creatorId: fc.constantFrom('a', 'b'), shareBps: fc.integer({ min: 0, max: 10000 }), amount: fc.bigInt({ min: 1n, max: 10n ** 7n }) });
  fc.assert(fc.property(fc.array(line, { minLength: 1, maxLength: 4 }), fc.constantFrom('alipay', 'stripe', 'wallet'), fc.array(fc.integer({ min: 1, max: 100 }), { minLength: 1, maxLength: 6 }), (lines, channel, weights) => {
    const gross = lines.reduce((s, l) => s + l.amount, 0n);
    const fee = estimateFee(gross, DEFAULT_FEES[channel]!);
    const cap = capturePostings({ channel, currency: 'CNY', customerId: 'c', gross, fee, lines });
    const splits = cap.splits.map((s) => ({ ...s, maturesAt: new Date(0) }));
    // Cut the gross into refunds by the weights (the last takes the remainder).
    const totalW = weights.reduce((a, b) => a + b, 0);
    let before = 0n;
    const all: PostingSpec[] = [...cap.postings];
    const shares = new Map<string, bigint>();
    for (const [i, w] of weights.entries()) {
      const amount = i === weights.length - 1 ? gross - before : (gross * BigInt(w)) / BigInt(totalW);
      if (amount <= 0n) continue;
      const r = refundPostings({ channel, gross, refundedBefore: before, amount, original: cap.postings, splits });
      all.push(...r.postings);
      for (const s of r.splits) shares.set(s.creatorId, (shares.get(s.creatorId) ?? 0n) + s.share);
      before += amount;
    }
    assert.equal(before, gross);
    const sum = net(all);
    for (const [code, v] of sum) {
      if (code.startsWith('channel_fees:') || code.startsWith('channel_clearing:') || code.startsWith('platform_revenue:')) continue;
      assert.equal(v, 0n, `${code} reversed exactly`);
    }
    for (const s of cap.splits) assert.equal(shares.get(s.creatorId) ?? 0n, -s.share);
  }), { numRuns: 1500 });
});

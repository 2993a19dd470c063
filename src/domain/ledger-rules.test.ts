import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { accounts, assertBalanced, capturePostings, estimateFee, DEFAULT_FEES, reversePostings, type PostingSpec } from './ledger-rules.ts';

const sum = (ps: PostingSpec[], pred: (p: PostingSpec) => boolean) => ps.filter(pred).reduce((s, p) => s + p.amount, 0n);

test('the issue example: 9000 fen Alipay, 70% creator → fee 54, creator 6262, platform 2738', () => {
  const fee = estimateFee(9000n, DEFAULT_FEES.alipay!);
  assert.equal(fee, 54n);
  const { postings, splits } = capturePostings({ channel: 'alipay', currency: 'CNY', customerId: 'c', gross: 9000n, fee, lines: [{ creatorId: 'cr_1', shareBps: 7000, amount: 9000n }] });
  assert.deepEqual(splits, [{ creatorId: 'cr_1', currency: 'CNY', gross: 9000n, fee: 54n, share: 6262n }]);
  const byCode = Object.fromEntries(postings.map((p) => [p.account.code, `${p.direction}:${p.amount}`]));
  assert.deepEqual(byCode, {
    'channel_clearing:alipay:CNY': 'debit:8946', 'channel_fees:alipay:CNY': 'debit:54',
    'creator_payable:cr_1:pending:CNY': 'credit:6262', 'platform_revenue:CNY': 'credit:2738',
  });
});

test('fee estimates: Stripe 2.9% + 30, capped at the gross, half-up rounding', () => {
  assert.equal(estimateFee(1000n, DEFAULT_FEES.stripe!), 59n);
  assert.equal(estimateFee(10n, DEFAULT_FEES.stripe!), 10n);
  assert.equal(estimateFee(0n, DEFAULT_FEES.stripe!), 0n);
  assert.equal(estimateFee(25n, { bps: 200, fixed: 0n }), 1n); // 0.5 rounds up
  assert.equal(estimateFee(24n, { bps: 200, fixed: 0n }), 0n);
  assert.throws(() => estimateFee(-1n, DEFAULT_FEES.alipay!));
  assert.throws(() => estimateFee(1n, { bps: 10001, fixed: 0n }));
});

test('two creators in one order: fee allocated by largest remainder, every part sums exactly', () => {
  const { postings, splits } = capturePostings({
    channel: 'stripe', currency: 'USD', customerId: 'c', gross: 1001n, fee: 59n,
    lines: [{ creatorId: 'a', shareBps: 5000, amount: 667n }, { creatorId: 'b', shareBps: 9000, amount: 334n }],
  });
  assert.equal(splits.reduce((s, x) => s + x.fee, 0n), 59n);
  assert.equal(splits.reduce((s, x) => s + x.gross, 0n), 1001n);
  assertBalanced(postings);
});

test('a coin pack credits the wallet, in its own currency when it differs', () => {
  const same = capturePostings({ channel: 'apple_iap', currency: 'CNY', customerId: 'u:1', gross: 600n, fee: 180n, lines: [{ creatorId: 'p', shareBps: 7000, amount: 600n, walletCredit: { currency: 'CNY', amount: 600n } }] });
  assert.equal(same.splits.length, 0);
  assert.ok(same.postings.some((p) => p.account.code === 'customer_wallet:u%3A1:CNY' && p.direction === 'credit' && p.amount === 600n));
  const bonus = capturePostings({ channel: 'alipay', currency: 'CNY', customerId: 'u', gross: 600n, fee: 4n, lines: [{ creatorId: 'p', shareBps: 0, amount: 600n, walletCredit: { currency: 'CNY', amount: 700n } }] });
  assert.ok(bonus.postings.some((p) => p.account.code === 'promotions:CNY' && p.amount === 100n));
  const foreign = capturePostings({ channel: 'stripe', currency: 'USD', customerId: 'u', gross: 99n, fee: 33n, lines: [{ creatorId: 'p', shareBps: 0, amount: 99n, walletCredit: { currency: 'CNY', amount: 700n } }] });
  assert.ok(foreign.postings.some((p) => p.account.code === 'coin_issuance:CNY' && p.direction === 'debit'));
  assertBalanced(foreign.postings);
});

test('invalid captures are assertion failures', () => {
  const base = { channel: 'alipay', currency: 'CNY', customerId: 'c', gross: 100n, fee: 1n, lines: [{ creatorId: 'a', shareBps: 7000, amount: 100n }] };
  assert.throws(() => capturePostings({ ...base, gross: 0n, lines: [{ creatorId: 'a', shareBps: 1, amount: 0n }] }));
  assert.throws(() => capturePostings({ ...base, fee: 101n }));
  assert.throws(() => capturePostings({ ...base, lines: [{ creatorId: 'a', shareBps: 7000, amount: 99n }] }));
  assert.throws(() => capturePostings({ ...base, lines: [{ creatorId: 'a', shareBps: 10001, amount: 100n }] }));
  assert.throws(() => capturePostings({ ...base, lines: [] }));
  assert.throws(() => assertBalanced([{ account: accounts.bank('CNY'), direction: 'debit', amount: 1n }, { account: accounts.bank('CNY'), direction: 'credit', amount: 2n }]));
});

test('property: captures balance; shares + platform + fees = gross; shares = floor of net share per line', () => {
  const line = fc.record({ creatorId: fc.constantFrom('a', 'b', 'c'), shareBps: fc.integer({ min: 0, max: 10000 }), amount: fc.bigInt({ min: 0n, max: 10n ** 9n }) });
  fc.assert(fc.property(fc.array(line, { minLength: 1, maxLength: 6 }), fc.integer({ min: 0, max: 3000 }), fc.constantFrom('alipay', 'stripe', 'wallet'), (lines, feeBps, channel) => {
    const gross = lines.reduce((s, l) => s + l.amount, 0n);
    fc.pre(gross > 0n);
    const fee = estimateFee(gross, { bps: feeBps, fixed: 0n });
    const { postings, splits } = capturePostings({ channel, currency: 'CNY', customerId: 'cus', gross, fee, lines });
    assertBalanced(postings);
    const shares = sum(postings, (p) => p.account.code.startsWith('creator_payable:'));
    const platform = sum(postings, (p) => p.account.code.startsWith('platform_revenue:'));
    assert.equal(shares + platform, gross);
    assert.equal(sum(postings, (p) => p.direction === 'debit'), gross);
    assert.equal(splits.reduce((s, x) => s + x.share, 0n), shares);
    assert.equal(splits.reduce((s, x) => s + x.fee, 0n), fee);
    for (const s of splits) assert.ok(s.share <= s.gross - s.fee && s.share >= 0n);
    assertBalanced(reversePostings(postings));
  }), { numRuns: 2000 });
});

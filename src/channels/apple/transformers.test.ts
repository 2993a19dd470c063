/** Pure Apple wire helpers: milliunit prices (exact, property-tested), identifiers, mapping, redaction. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { CURRENCY_EXPONENTS, MAX_AMOUNT_MINOR } from '../../domain/money.ts';
import { canonicalUuid, isAppStoreProductId, isTransactionId, minorToPriceMilli, priceMilliToMinor, redactSecrets, refundOfTransaction, tradeOfTransaction } from './transformers.ts';

const currencies = Object.keys(CURRENCY_EXPONENTS);

test('published-style prices convert exactly', () => {
  assert.deepEqual(priceMilliToMinor(12990, 'USD'), { amountMinor: 1299n, currency: 'USD' }); // the forum's $12.99
  assert.deepEqual(priceMilliToMinor(1990, 'USD'), { amountMinor: 199n, currency: 'USD' });
  assert.deepEqual(priceMilliToMinor(6000, 'CNY'), { amountMinor: 600n, currency: 'CNY' });
  assert.deepEqual(priceMilliToMinor(120000, 'JPY'), { amountMinor: 120n, currency: 'JPY' });
  assert.deepEqual(priceMilliToMinor(1234, 'KWD'), { amountMinor: 1234n, currency: 'KWD' });
  assert.deepEqual(priceMilliToMinor(0, 'USD'), { amountMinor: 0n, currency: 'USD' });
  assert.equal(minorToPriceMilli(1299n, 'USD'), 12990n);
  assert.equal(minorToPriceMilli(120n, 'JPY'), 120000n);
  assert.equal(minorToPriceMilli(1234n, 'KWD'), 1234n);
});

test('prices that are not an exact amount in a known currency are refused', () => {
  const bad: Array<[unknown, unknown]> = [
    [1995, 'USD'], // $1.995: a fraction of a cent
    [120500, 'JPY'], // ¥120.5
    [-10, 'USD'],
    [1.5, 'USD'],
    ['1990', 'USD'],
    [1990, 'usd'], // Apple sends upper case
    [1990, ' USD'],
    [1990, 'XXX'],
    [1990, undefined],
    [undefined, 'USD'],
    [Number.MAX_SAFE_INTEGER + 2, 'USD'],
    [Number.POSITIVE_INFINITY, 'USD'],
    [Number.NaN, 'USD'],
    [Number((MAX_AMOUNT_MINOR + 1n) * 10n), 'USD'],
  ];
  for (const [price, currency] of bad) assert.equal(priceMilliToMinor(price, currency), null, `${String(price)} ${String(currency)}`);
});

test('property: minor → milli → minor is the identity for every currency we know', () => {
  fc.assert(
    fc.property(fc.constantFrom(...currencies), fc.bigInt({ min: 0n, max: MAX_AMOUNT_MINOR }), (currency, minor) => {
      const milli = minorToPriceMilli(minor, currency);
      if (milli > BigInt(Number.MAX_SAFE_INTEGER)) return true; // not a JSON number Apple could send
      const back = priceMilliToMinor(Number(milli), currency);
      return back !== null && back.amountMinor === minor && back.currency === currency;
    }),
    { numRuns: 500 },
  );
});

test('property: a milli price converts only when it is a whole number of minor units, and never rounds', () => {
  fc.assert(
    fc.property(fc.constantFrom(...currencies), fc.integer({ min: 0, max: 2 ** 40 }), (currency, milli) => {
      const factor = 10 ** (3 - CURRENCY_EXPONENTS[currency]!);
      const got = priceMilliToMinor(milli, currency);
      if (milli % factor !== 0 || BigInt(milli / factor) > MAX_AMOUNT_MINOR) return got === null;
      return got !== null && got.amountMinor * BigInt(factor) === BigInt(milli);
    }),
    { numRuns: 500 },
  );
});

test('identifiers: UUIDs (case folded), App Store product ids, transaction ids', () => {
  assert.equal(canonicalUuid('9AD56BD2-0BC6-42E0-AF24-FD996D87A1E6'), '9ad56bd2-0bc6-42e0-af24-fd996d87a1e6');
  for (const bad of ['', 'kp_123', '9ad56bd2-0bc6-42e0-af24-fd996d87a1e', '9ad56bd20bc642e0af24fd996d87a1e6', 42, null, '9ad56bd2-0bc6-42e0-af24-fd996d87a1e6 ']) {
    assert.equal(canonicalUuid(bad), null, String(bad));
  }
  assert.equal(isAppStoreProductId('com.knowpay.coins_100'), true);
  for (const bad of ['', 'coins 100', 'coins-100', 'c'.repeat(256), '课程', 7]) assert.equal(isAppStoreProductId(bad), false, String(bad));
  assert.equal(isTransactionId('2000000123456789'), true);
  for (const bad of ['', '20000001234x', '-1', '1'.repeat(33), 2000000123456789]) assert.equal(isTransactionId(bad), false, String(bad));
});

test('tradeOfTransaction: paid, revoked, and what cannot be matched or priced', () => {
  const tx = { transactionId: '2000000000000001', appAccountToken: 'B4D1E5A2-6A6F-4C1B-9E53-0F3E2A1B7C9D', price: 6000, currency: 'CNY', productId: 'coins_60', quantity: 1 };
  assert.deepEqual(tradeOfTransaction(tx, 'ONE_TIME_CHARGE'), {
    ok: true, state: 'succeeded', channelReference: 'b4d1e5a2-6a6f-4c1b-9e53-0f3e2a1b7c9d', channelTransactionId: '2000000000000001',
    amountMinor: 600n, currency: 'CNY', rawStatus: 'ONE_TIME_CHARGE',
  });
  const revoked = tradeOfTransaction({ ...tx, revocationDate: 1_700_000_000_000, revocationReason: 0 }, 'ONE_TIME_CHARGE');
  assert.equal(revoked.ok && revoked.state, 'failed');
  assert.equal(revoked.ok && revoked.rawStatus, 'REVOKED:0');
  const { appAccountToken: _t, ...noToken } = tx;
  assert.deepEqual(tradeOfTransaction(noToken, 'X'), { ok: false, code: 'reference_missing', reason: 'transaction has no appAccountToken (not bought through Knowpay)' });
  assert.equal((tradeOfTransaction({ ...tx, transactionId: undefined }, 'X') as { code: string }).code, 'transaction_id_missing');
  assert.equal((tradeOfTransaction({ ...tx, price: 6005 }, 'X') as { code: string }).code, 'price_invalid');
  assert.equal((tradeOfTransaction({ ...tx, currency: undefined }, 'X') as { code: string }).code, 'price_invalid');
});

test('refundOfTransaction: a revoked transaction is a refund of its whole price; what is not ours or not revoked is said so', () => {
  const tx = { transactionId: '2000000000000001', appAccountToken: 'B4D1E5A2-6A6F-4C1B-9E53-0F3E2A1B7C9D', price: 6000, currency: 'CNY', revocationDate: 1_700_000_000_000, revocationReason: 1 };
  assert.deepEqual(refundOfTransaction(tx, 'REFUND'), {
    ok: true, channelReference: 'b4d1e5a2-6a6f-4c1b-9e53-0f3e2a1b7c9d', channelTransactionId: '2000000000000001', channelRefundId: '2000000000000001:refund',
    amountMinor: 600n, currency: 'CNY', rawStatus: 'REFUND:1',
  });
  const codeOf = (over: Record<string, unknown>, type = 'REFUND') => (refundOfTransaction({ ...tx, ...over }, type) as { code?: string }).code;
  assert.equal(codeOf({ appAccountToken: undefined }), 'reference_missing');
  assert.equal(codeOf({ inAppOwnershipType: 'FAMILY_SHARED' }, 'REVOKE'), 'family_sharing');
  assert.equal(codeOf({ revocationType: 'FAMILY_REVOKE' }, 'REVOKE'), 'family_sharing');
  assert.equal(codeOf({ revocationDate: undefined }), 'not_revoked');
  assert.equal(codeOf({ transactionId: 'x' }), 'transaction_id_missing');
  assert.equal(codeOf({ price: 6005 }), 'price_invalid');
  assert.equal(codeOf({ revocationType: 'REFUND_PRORATED' }), 'percentage_invalid');
  assert.equal(codeOf({ revocationType: 'REFUND_PRORATED', revocationPercentage: 0 }), 'nothing_refunded');
  assert.equal(codeOf({ inAppOwnershipType: 'PURCHASED' }, 'REVOKE'), undefined);
});

test('refundOfTransaction: a prorated share never exceeds the price and is within half a minor unit of the exact share', () => {
  fc.assert(fc.property(fc.integer({ min: 1, max: 10_000_000 }), fc.integer({ min: 1, max: 100_000 }), (minor, pct) => {
    const r = refundOfTransaction({ transactionId: '1', appAccountToken: 'b4d1e5a2-6a6f-4c1b-9e53-0f3e2a1b7c9d', price: minor * 10, currency: 'CNY', revocationDate: 1, revocationType: 'REFUND_PRORATED', revocationPercentage: pct }, 'REFUND');
    if (!r.ok) return r.code === 'nothing_refunded' && minor * pct < 50_000;
    const exactTimes1e5 = BigInt(minor) * BigInt(pct);
    const diff = r.amountMinor * 100_000n - exactTimes1e5;
    return r.amountMinor <= BigInt(minor) && diff >= -50_000n && diff <= 50_000n;
  }), { numRuns: 300 });
});

test('redactSecrets keeps what a JWS says, drops its signature, and removes keys and tokens', () => {
  const payload = Buffer.from(JSON.stringify({ transactionId: '2000000000000001', price: 6000 })).toString('base64url');
  const jws = `${Buffer.from('{"alg":"ES256","x5c":["MIIB"]}').toString('base64url')}.${payload}.${'s'.repeat(86)}`;
  const out = JSON.stringify(redactSecrets({
    signed_transaction: jws, nested: [{ authorization: 'Bearer abc.def.ghi' }], privateKey: 'x', note: '-----BEGIN PRIVATE KEY-----\nabc', amount: 10n,
  }));
  assert.match(out, /transactionId/);
  assert.doesNotMatch(out, /s{86}/);
  assert.doesNotMatch(out, /Bearer|BEGIN PRIVATE KEY|MIIB/);
  assert.match(out, /"amount":"10"/);
});

/**
 * Apple bill reader (bill.ts), without a database: Get Notification History items signed like the
 * App Store signs them (a generated chain; the reader does not verify), every translation and what
 * is skipped, duplicates, files that are not notification history, and a large file read in
 * bounded memory.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { BillFormatError, type BillLine } from '../../reconciliation/types.ts';
import { appleHistoryItem, readAppleBill, writeAppleBill, type AppleHistoryItem } from './bill.ts';
import { generateSandboxChain, signAppStoreJws } from './jws.ts';
import { readAllLines, billFiles } from '../../../test/support/assertions.ts';

const { dir, fresh, file } = billFiles('apple-bill-test');
const readAll = (p: string) => readAllLines(readAppleBill, p);
async function written(items: AppleHistoryItem[]): Promise<string> {
  const p = fresh();
  assert.equal(await writeAppleBill(p, items), items.length);
  return p;
}

const BUNDLE = 'com.knowpay.test';
const chain = generateSandboxChain();
const x5c = [chain.leafDer, chain.intermediateDer, chain.rootDer];
const sign = (payload: Record<string, unknown>) => signAppStoreJws(payload, chain.leafPrivateKeyPem, x5c);

const T0 = Date.UTC(2026, 2, 5, 10, 0, 0);
let txNo = 0;

function tx(over: Record<string, unknown> = {}): Record<string, unknown> {
  const id = String(2000000000000000 + ++txNo);
  return {
    transactionId: id, originalTransactionId: id, bundleId: BUNDLE, productId: 'coins_60', purchaseDate: T0, originalPurchaseDate: T0,
    quantity: 1, type: 'Consumable', appAccountToken: randomUUID(), inAppOwnershipType: 'PURCHASED', signedDate: T0, environment: 'Sandbox',
    transactionReason: 'PURCHASE', storefront: 'USA', storefrontId: '143441', price: 1990, currency: 'USD', ...over,
  };
}

/** A history item for a notification of `type` carrying `transaction` (none for TEST-like types). */
function item(type: string, transaction: Record<string, unknown> | null, over: Record<string, unknown> = {}): AppleHistoryItem {
  return appleHistoryItem(sign({
    notificationType: type, notificationUUID: randomUUID(), version: '2.0', signedDate: T0,
    data: { bundleId: BUNDLE, bundleVersion: '1', environment: 'Sandbox', ...(transaction ? { signedTransactionInfo: sign(transaction) } : {}) },
    ...over,
  }), [{ attemptDate: T0, sendAttemptResult: 'SUCCESS' }]);
}

async function rejectsFormat(p: string, reason: RegExp) {
  await assert.rejects(readAll(p), (err: unknown) => {
    assert.ok(err instanceof BillFormatError, String(err));
    assert.match(err.message, reason);
    return true;
  });
}

// ---- What is read -------------------------------------------------------------------------------------

test('payments and refunds in Apple\'s history shape: exact amounts, our reference, the refund id the connector stores', async () => {
  const usd = tx({ price: 1990, currency: 'USD' });
  const jpy = tx({ price: 120_000, currency: 'JPY', purchaseDate: T0 + 1000 }); // zero-decimal: 120 yen
  const kwd = tx({ price: 1234, currency: 'KWD' }); // three decimals: 1.234 KWD = 1234 fils
  const upper = tx({ appAccountToken: randomUUID().toUpperCase(), price: 600_0, currency: 'CNY' });
  const sub = tx({ price: 9990, type: 'Non-Renewing Subscription' });
  const renew = tx({ price: 4990 });
  const refunded = { ...usd, revocationDate: T0 + 3600_000, revocationReason: 0, revocationType: 'REFUND_FULL', signedDate: T0 + 3600_000 };
  const prorated: Record<string, unknown> = { ...tx({ price: 9990 }), revocationDate: T0 + 7200_000, revocationType: 'REFUND_PRORATED', revocationPercentage: 50_000 };
  const items = [
    item('ONE_TIME_CHARGE', usd),
    item('ONE_TIME_CHARGE', jpy),
    item('ONE_TIME_CHARGE', kwd),
    item('ONE_TIME_CHARGE', upper),
    item('SUBSCRIBED', sub, { subtype: 'INITIAL_BUY' }),
    item('DID_RENEW', renew),
    item('REFUND', refunded),
    item('REFUND', prorated),
  ];
  const got = await readAll(await written(items));
  assert.deepEqual(got, [
    { lineNo: 1, kind: 'payment', channelReference: usd['appAccountToken'], channelTransactionId: usd['transactionId'], amount: 199n, currency: 'USD', occurredAt: new Date(T0) },
    { lineNo: 2, kind: 'payment', channelReference: jpy['appAccountToken'], channelTransactionId: jpy['transactionId'], amount: 120n, currency: 'JPY', occurredAt: new Date(T0 + 1000) },
    { lineNo: 3, kind: 'payment', channelReference: kwd['appAccountToken'], channelTransactionId: kwd['transactionId'], amount: 1234n, currency: 'KWD', occurredAt: new Date(T0) },
    { lineNo: 4, kind: 'payment', channelReference: String(upper['appAccountToken']).toLowerCase(), channelTransactionId: upper['transactionId'], amount: 600n, currency: 'CNY', occurredAt: new Date(T0) },
    { lineNo: 5, kind: 'payment', channelReference: sub['appAccountToken'], channelTransactionId: sub['transactionId'], amount: 999n, currency: 'USD', occurredAt: new Date(T0) },
    { lineNo: 6, kind: 'payment', channelReference: renew['appAccountToken'], channelTransactionId: renew['transactionId'], amount: 499n, currency: 'USD', occurredAt: new Date(T0) },
    { lineNo: 7, kind: 'refund', channelReference: usd['appAccountToken'], channelTransactionId: `${String(usd['transactionId'])}:refund`, amount: 199n, currency: 'USD', occurredAt: new Date(T0 + 3600_000) },
    // 50 % of 9.99 = 4.995 → 5.00, rounded half up exactly as the connector records the refund.
    { lineNo: 8, kind: 'refund', channelReference: prorated['appAccountToken'], channelTransactionId: `${String(prorated['transactionId'])}:refund`, amount: 500n, currency: 'USD', occurredAt: new Date(T0 + 7200_000) },
  ]);
  for (const l of got) assert.equal('fee' in l, false, 'no fee: the notification carries no commission, so no fee check');
});

test('skipped: other notification types, purchases not bought through Knowpay, Family Sharing copies, free purchases', async () => {
  const paid = tx();
  const items = [
    item('TEST', null),
    item('CONSUMPTION_REQUEST', tx()),
    item('REFUND_DECLINED', paid),
    item('REFUND_REVERSED', paid),
    item('EXPIRED', tx(), { subtype: 'VOLUNTARY' }),
    item('ONE_TIME_CHARGE', tx({ appAccountToken: undefined })), // bought outside Knowpay
    item('ONE_TIME_CHARGE', tx({ appAccountToken: 'not-a-uuid' })),
    item('REVOKE', { ...tx({ inAppOwnershipType: 'FAMILY_SHARED' }), revocationDate: T0, revocationType: 'FAMILY_REVOKE' }),
    item('ONE_TIME_CHARGE', tx({ price: 0 })), // an offer code: no money
    item('ONE_TIME_CHARGE', paid),
  ];
  const got = await readAll(await written(items));
  assert.deepEqual(got.map((l) => [l.lineNo, l.kind, l.channelTransactionId]), [[10, 'payment', paid['transactionId']]]);
});

test('the same notification twice (same notificationUUID) is one line; a whole history answer on one line is read item by item', async () => {
  const a = item('ONE_TIME_CHARGE', tx());
  const b = item('ONE_TIME_CHARGE', tx({ price: 990 }));
  const retry = { ...a, sendAttempts: [{ attemptDate: T0, sendAttemptResult: 'TIMED_OUT' }, { attemptDate: T0 + 3600_000, sendAttemptResult: 'SUCCESS' }] };
  const page = JSON.stringify({ notificationHistory: [b, retry], hasMore: false });
  const lines = ['\uFEFF' + JSON.stringify(a), '', page, JSON.stringify(b)];
  const got = await readAll(file(lines.join('\r\n') + '\r\n'));
  assert.deepEqual(got.map((l) => [l.lineNo, l.amount]), [[1, 199n], [2, 99n]]);
  // Different notifications about different transactions are never collapsed.
  assert.equal(new Set(got.map((l) => l.channelTransactionId)).size, 2);
});

test('an empty history (a day without notifications) has no lines', async () => {
  assert.deepEqual(await readAll(file('')), []);
  assert.deepEqual(await readAll(file('\n\r\n')), []);
  assert.deepEqual(await readAll(file(JSON.stringify({ notificationHistory: [], hasMore: false }) + '\n')), []);
});

// ---- What is refused --------------------------------------------------------------------------------------

test('other channels\' bills are not notification history → BillFormatError saying why', async () => {
  // PayPal's Transaction Search (JSON Lines).
  await rejectsFormat(file(JSON.stringify({ transaction_info: { transaction_id: '5TY05013RG002845M', transaction_event_code: 'T0006', transaction_amount: { currency_code: 'USD', value: '12.34' }, transaction_status: 'S' } }) + '\n'),
    /line 1: no signedPayload: not an App Store Get Notification History file/);
  // Alipay's CSV (as text, and as the GBK bytes Alipay serves).
  await rejectsFormat(file('#支付宝业务明细查询\n支付宝交易号,商户订单号,业务类型,商品名称\n2026030522001,KP1,交易,课程\n'), /line 1 is not JSON: not an App Store Get Notification History file/);
  await rejectsFormat(file(Buffer.from([0x23, 0xd6, 0xa7, 0xb8, 0xb6, 0xb1, 0xa6, 0x0a, 0x31, 0x2c, 0x32, 0x0a])), /line 1 is not JSON/);
  // The zip Alipay serves, and a JSON array.
  await rejectsFormat(file(Buffer.from([0x50, 0x4b, 0x03, 0x04, 0x14, 0x00, 0x08, 0x00, 0x0a])), /line 1 is not JSON/);
  await rejectsFormat(file('[1,2,3]\n'), /no signedPayload/);
  // Stripe's balance transaction.
  await rejectsFormat(file('{"id":"txn_1","object":"balance_transaction","amount":100}\n'), /no signedPayload/);
});

test('a line that is not JSON fails the file, after the good lines before it', async () => {
  const good = JSON.stringify(item('ONE_TIME_CHARGE', tx()));
  const p = file(`${good}\n${good.slice(0, 200)}\n`);
  const seen: BillLine[] = [];
  await assert.rejects(async () => {
    for await (const l of readAppleBill(p)) seen.push(l);
  }, (err: unknown) => err instanceof BillFormatError && /line 2 is not JSON/.test(err.message));
  assert.equal(seen.length, 1);
});

test('payloads that are not App Store JWS → BillFormatError naming the part', async () => {
  const bare = (signedPayload: unknown, extra: Record<string, unknown> = {}) => JSON.stringify({ signedPayload, sendAttempts: [], ...extra }) + '\n';
  const b64 = (v: unknown) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');
  await rejectsFormat(file(bare('hello')), /line 1: signedPayload is not a JWS/);
  await rejectsFormat(file(bare(42)), /no signedPayload/);
  await rejectsFormat(file(bare(`${b64({ alg: 'ES256' })}.${b64('not json')}.c2ln`)), /the payload of signedPayload is not JSON/);
  await rejectsFormat(file(bare(`${b64({ alg: 'ES256' })}.${b64([1, 2])}.c2ln`)), /the payload of signedPayload is not a JSON object/);
  // A JWT of something else (an API bearer token): no notificationType / notificationUUID.
  await rejectsFormat(file(bare(sign({ iss: 'x', aud: 'appstoreconnect-v1', iat: 1, exp: 2 }))), /no notificationType or notificationUUID: not an App Store Server Notification V2/);
  await rejectsFormat(file(bare(sign({ notificationType: 'ONE_TIME_CHARGE', notificationUUID: 'abc' }))), /no notificationType or notificationUUID/);
  await rejectsFormat(file(bare(item('TEST', null).signedPayload, { sendAttempts: 'SUCCESS' })), /sendAttempts is not an array/);
  // A payment notification must carry its signed transaction, as a JWS.
  await rejectsFormat(file(JSON.stringify(item('ONE_TIME_CHARGE', null)) + '\n'), /ONE_TIME_CHARGE notification [0-9a-f-]{36} has no data.signedTransactionInfo/);
  const notJwsTx = appleHistoryItem(sign({ notificationType: 'ONE_TIME_CHARGE', notificationUUID: randomUUID(), data: { signedTransactionInfo: 'eyJ.broken' } }));
  await rejectsFormat(file(JSON.stringify(notJwsTx) + '\n'), /the signedTransactionInfo of notification [0-9a-f-]{36} is not a JWS/);
  // Inside a whole history answer, the item is named.
  await rejectsFormat(file(JSON.stringify({ notificationHistory: [item('TEST', null), { sendAttempts: [] }] }) + '\n'), /line 1, item 2: no signedPayload/);
});

test('prices and transactions that are not exact → BillFormatError with the reason', async () => {
  const one = async (type: string, t: Record<string, unknown>) => file(JSON.stringify(item(type, t)) + '\n');
  await rejectsFormat(await one('ONE_TIME_CHARGE', tx({ transactionId: '2000000000000999', price: 1995, currency: 'USD' })),
    /transaction 2000000000000999 has price 1995 milliunits of USD, not a whole number of minor units \(USD has 2 decimals\)/);
  await rejectsFormat(await one('ONE_TIME_CHARGE', tx({ price: 120_500, currency: 'JPY' })), /price 120500 milliunits of JPY, not a whole number of minor units \(JPY has 0 decimals\)/);
  await rejectsFormat(await one('ONE_TIME_CHARGE', tx({ price: 19.9 })), /price 19.9, not a whole number of milliunits/);
  await rejectsFormat(await one('ONE_TIME_CHARGE', tx({ price: '1990' })), /price "1990", not a whole number of milliunits/);
  await rejectsFormat(await one('ONE_TIME_CHARGE', tx({ price: -1990 })), /not a whole number of milliunits/);
  await rejectsFormat(await one('ONE_TIME_CHARGE', tx({ price: 9_000_000_000_000_000 })), /above the largest amount accepted/);
  await rejectsFormat(await one('ONE_TIME_CHARGE', tx({ currency: 'XYZ' })), /unknown currency "XYZ"/);
  await rejectsFormat(await one('ONE_TIME_CHARGE', tx({ currency: 'usd' })), /unknown currency "usd"/);
  await rejectsFormat(await one('ONE_TIME_CHARGE', tx({ transactionId: undefined })), /carries a transaction without a transactionId/);
  // Refunds: the refunded price must be exact too, and a REFUND must say when it was revoked.
  await rejectsFormat(await one('REFUND', { ...tx({ price: 1995 }), revocationDate: T0 }), /price 1995 milliunits of USD, not a whole number of minor units/);
  await rejectsFormat(await one('REFUND', tx()), /REFUND notification [0-9a-f-]{36}: REFUND for transaction \d+, which has no revocationDate/);
  await rejectsFormat(await one('REFUND', { ...tx(), revocationDate: T0, revocationType: 'REFUND_PRORATED', revocationPercentage: 250_000 }), /revocationPercentage 250000 is not 0..100000/);
});

test('a line longer than the bound is refused without reading it whole', async () => {
  await rejectsFormat(file('{"signedPayload":"' + 'a'.repeat(1100 * 1024)), /line 1 is longer than 1048576 bytes: not an App Store Get Notification History file/);
});

// ---- Scale ---------------------------------------------------------------------------------------------------

test('streams: 60k notifications (every 6th a repeat) read in bounded memory, repeats collapsed', async () => {
  const p = path.join(dir, 'big.jsonl');
  const n = 60_000;
  const header = Buffer.from(JSON.stringify({ alg: 'ES256', x5c: ['MIIB'] })).toString('base64url');
  // The reader verifies nothing, so a fixed signature keeps this fast.
  const jws = (payload: unknown) => `${header}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.c2lnbmF0dXJl`;
  const uuids: string[] = [];
  await writeAppleBill(p, (function* () {
    for (let i = 0; i < n; i++) {
      const repeat = i % 6 === 5;
      const uuid = repeat ? uuids[i - 3]! : randomUUID();
      uuids.push(uuid);
      const t = { transactionId: String(3000000000000000 + (repeat ? i - 3 : i)), appAccountToken: '0f8fad5b-d9cb-469f-a165-70867728950e', price: 990, currency: 'EUR', purchaseDate: T0 + i };
      yield appleHistoryItem(jws({ notificationType: 'ONE_TIME_CHARGE', notificationUUID: uuid, data: { signedTransactionInfo: jws(t) } }), []);
    }
  })());
  const before = process.memoryUsage().heapUsed;
  let count = 0;
  let peak = 0;
  let last = 0n;
  for await (const l of readAppleBill(p)) {
    count++;
    const id = BigInt(l.channelTransactionId!);
    assert.ok(id > last, 'each transaction once, in order');
    last = id;
    if (count % 10_000 === 0) peak = Math.max(peak, process.memoryUsage().heapUsed - before);
  }
  assert.equal(count, n - n / 6);
  assert.ok(peak < 64 * 1024 * 1024, `heap grew by ${Math.round(peak / 1048576)} MiB`);
});

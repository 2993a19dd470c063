/**
 * Connector unit tests without the sandbox server: Apple's published TEST notification at the
 * connector level (clock pinned to its signedDate), notifications and transactions signed with a
 * generated chain (every translation and every refusal), createPayment's action and refusals,
 * confirmPayment's checks, and error mapping.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { APIException } from '@apple/app-store-server-library';
import { ChannelError, type ChannelConnector, type CreatePaymentInput, type VerifyResult } from '../types.ts';
import type { ChannelAuditEntry } from '../module.ts';
import { appleRootCertificates } from './apple-roots.ts';
import { createAppleIapConnector, toChannelError, type AppleIapConfig } from './connector.ts';
import { generateSandboxChain, signAppStoreJws } from './jws.ts';

const fixtures = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../test/fixtures/apple');
const readText = (name: string) => fs.readFileSync(path.join(fixtures, name), 'utf8');
const testCA = fs.readFileSync(path.join(fixtures, 'testCA.der'));

const BUNDLE = 'com.knowpay.test';
const store = generateSandboxChain();
const foreign = generateSandboxChain(new Date(), 'Someone Else');
const x5c = (c: typeof store) => [c.leafDer, c.intermediateDer, c.rootDer];
let audits: ChannelAuditEntry[] = [];

function connector(over: Partial<AppleIapConfig> = {}): ChannelConnector {
  return createAppleIapConnector({
    bundleId: BUNDLE, environment: 'Sandbox', rootCertificates: [store.rootDer], enableOnlineChecks: false,
    audit: (e) => audits.push(e), ...over,
  });
}

const body = (signedPayload: string) => Buffer.from(JSON.stringify({ signedPayload }));
const notify = (c: ChannelConnector, raw: Buffer, contentType: string | undefined = 'application/json') =>
  c.verifyNotification({ headers: contentType ? { 'content-type': contentType } : {}, rawBody: raw }, async () => null);

function transaction(over: Record<string, unknown> = {}): Record<string, unknown> {
  const now = Date.now();
  return {
    transactionId: '2000000000000042', originalTransactionId: '2000000000000042', bundleId: BUNDLE, productId: 'coins_60',
    purchaseDate: now, originalPurchaseDate: now, quantity: 1, type: 'Consumable', appAccountToken: REF,
    inAppOwnershipType: 'PURCHASED', signedDate: now, environment: 'Sandbox', transactionReason: 'PURCHASE',
    storefront: 'CHN', storefrontId: '143465', price: 6000, currency: 'CNY', ...over,
  };
}

function signedTx(over: Record<string, unknown> = {}, chain = store): string {
  return signAppStoreJws(transaction(over), chain.leafPrivateKeyPem, x5c(chain));
}

function notification(type: string, over: Record<string, unknown> = {}, tx: string | null = signedTx(), chain = store): string {
  const payload = {
    notificationType: type, notificationUUID: randomUUID(),
    data: { bundleId: BUNDLE, bundleVersion: '1', environment: 'Sandbox', ...(tx ? { signedTransactionInfo: tx } : {}) },
    version: '2.0', signedDate: Date.now(), ...over,
  };
  return signAppStoreJws(payload, chain.leafPrivateKeyPem, x5c(chain));
}

const REF: string = randomUUID();

function rejected(r: VerifyResult, reason: RegExp, label = '') {
  assert.equal(r.ok, false, label);
  assert.match(!r.ok ? r.reason : '', reason, label);
}

// ---- Apple's published notification --------------------------------------------------------------------

const TEST_SIGNED_AT = 1681314324000;
const fixtureConnector = (over: Partial<AppleIapConfig> = {}) =>
  connector({ bundleId: 'com.example', rootCertificates: [testCA], now: () => new Date(TEST_SIGNED_AT + 5 * 60_000), ...over });

test('Apple\'s TEST notification verifies and is acknowledged as ignored (clock pinned to its signedDate)', async () => {
  const c = fixtureConnector();
  assert.equal(c.appId, 'com.example');
  const r = await notify(c, body(readText('testNotification.jws')));
  assert.deepEqual(r, { ok: true, notification: { eventId: '9ad56bd2-0bc6-42e0-af24-fd996d87a1e6', kind: 'ignored', reason: 'TEST notification', appId: 'com.example' } });
  // Apple posts `application/json`; a missing content type is tolerated.
  assert.equal((await notify(c, body(readText('testNotification.jws')), undefined)).ok, true);
});

test('Apple\'s negative fixtures are rejected by the connector, with the library\'s reason', async () => {
  const c = fixtureConnector();
  rejected(await notify(c, body(readText('wrongBundleId.jws'))), /INVALID_APP_IDENTIFIER/);
  rejected(await notify(c, body(readText('missingX5CHeaderClaim.jws'))), /INVALID_CERTIFICATE/);
  const [h, p, s] = readText('testNotification.jws').split('.') as [string, string, string];
  const payload = JSON.parse(Buffer.from(p, 'base64url').toString('utf8'));
  const tampered = `${h}.${Buffer.from(JSON.stringify({ ...payload, notificationType: 'REFUND' })).toString('base64url')}.${s}`;
  rejected(await notify(c, body(tampered)), /VERIFICATION_FAILURE/);
  rejected(await notify(fixtureConnector({ bundleId: 'com.example.other' }), body(readText('testNotification.jws'))), /INVALID_APP_IDENTIFIER/);
  // Genuine, but years old against the real clock: refused as stale.
  rejected(await notify(fixtureConnector({ now: () => new Date() }), body(readText('testNotification.jws'))), /stale/);
});

test('under Apple\'s real roots (real mode) the test chain and the sandbox chain are foreign', async () => {
  const real = createAppleIapConnector({ bundleId: 'com.example', environment: 'Production', appAppleId: 1234, rootCertificates: appleRootCertificates(), enableOnlineChecks: false, now: () => new Date(TEST_SIGNED_AT) });
  rejected(await notify(real, body(readText('testNotification.jws'))), /VERIFICATION_FAILURE/);
  const realSandboxEnv = createAppleIapConnector({ bundleId: BUNDLE, environment: 'Sandbox', rootCertificates: appleRootCertificates(), enableOnlineChecks: false });
  rejected(await notify(realSandboxEnv, body(notification('ONE_TIME_CHARGE'))), /VERIFICATION_FAILURE/);
  await assert.rejects(realSandboxEnv.confirmPayment!({ channelReference: REF, currency: 'CNY', amountMinor: 600n, payload: { signed_transaction: signedTx() } }), (e: unknown) => e instanceof ChannelError && e.code === 'invalid_signed_transaction');
  assert.throws(() => createAppleIapConnector({ bundleId: BUNDLE, environment: 'LocalTesting' as 'Sandbox', rootCertificates: [store.rootDer], enableOnlineChecks: false }), /Production or Sandbox/);
});

// ---- Notifications signed by the (sandbox) App Store ---------------------------------------------------------

test('ONE_TIME_CHARGE becomes a payment snapshot: reference, transaction, exact amount', async () => {
  const n = notification('ONE_TIME_CHARGE');
  const r = await notify(connector(), body(n));
  assert.ok(r.ok, !r.ok ? r.reason : '');
  const note = r.notification;
  assert.equal(note.kind, 'payment');
  assert.equal(note.appId, BUNDLE);
  assert.match(note.eventId, /^[0-9a-f-]{36}$/);
  assert.deepEqual(note.kind === 'payment' && note.trade, {
    state: 'succeeded', channelReference: REF, channelTransactionId: '2000000000000042', amountMinor: 600n, currency: 'CNY', rawStatus: 'ONE_TIME_CHARGE',
  });
  for (const type of ['SUBSCRIBED', 'DID_RENEW']) {
    const other = await notify(connector(), body(notification(type, { subtype: type === 'SUBSCRIBED' ? 'INITIAL_BUY' : undefined })));
    assert.ok(other.ok && other.notification.kind === 'payment', type);
    assert.equal(other.notification.kind === 'payment' && other.notification.trade.rawStatus, type === 'SUBSCRIBED' ? 'SUBSCRIBED/INITIAL_BUY' : 'DID_RENEW');
  }
  const jpy = await notify(connector(), body(notification('ONE_TIME_CHARGE', {}, signedTx({ price: 120000, currency: 'JPY', appAccountToken: REF.toUpperCase() }))));
  assert.ok(jpy.ok && jpy.notification.kind === 'payment');
  assert.equal(jpy.notification.trade.amountMinor, 120n);
  assert.equal(jpy.notification.trade.channelReference, REF, 'token case-folded to our reference');
});

test('a revoked transaction is not a success', async () => {
  const r = await notify(connector(), body(notification('ONE_TIME_CHARGE', {}, signedTx({ revocationDate: Date.now(), revocationReason: 1 }))));
  assert.ok(r.ok && r.notification.kind === 'payment');
  assert.equal(r.notification.trade.state, 'failed');
  assert.equal(r.notification.trade.rawStatus, 'REVOKED:1');
});

test('TEST, REFUND_DECLINED, REFUND_REVERSED and unknown types are acknowledged as ignored, with our reference when there is one', async () => {
  const test_ = await notify(connector(), body(notification('TEST', {}, null)));
  assert.ok(test_.ok && test_.notification.kind === 'ignored');
  assert.equal(test_.notification.reason, 'TEST notification');
  for (const type of ['CONSUMPTION_REQUEST', 'EXPIRED', 'PRICE_INCREASE']) {
    const r = await notify(connector(), body(notification(type)));
    assert.ok(r.ok && r.notification.kind === 'ignored', type);
    assert.match(r.notification.reason, new RegExp(`${type}.*not handled`));
    assert.equal(r.notification.channelReference, REF);
    assert.equal(r.notification.appId, BUNDLE);
  }
  const declined = await notify(connector(), body(notification('REFUND_DECLINED')));
  assert.ok(declined.ok && declined.notification.kind === 'ignored');
  assert.match(declined.notification.reason, /^REFUND_DECLINED: .*payment stands/);
  assert.equal(declined.notification.channelReference, REF);
  // Apple sends the transaction without its revocation once the refund is reversed.
  const reversed = await notify(connector(), body(notification('REFUND_REVERSED')));
  assert.ok(reversed.ok && reversed.notification.kind === 'ignored');
  assert.match(reversed.notification.reason, /^REFUND_REVERSED: .*a person must re-grant/);
  assert.equal(reversed.notification.channelReference, REF);
  const noToken = await notify(connector(), body(notification('ONE_TIME_CHARGE', {}, signedTx({ appAccountToken: undefined }))));
  assert.ok(noToken.ok && noToken.notification.kind === 'ignored');
  assert.match(noToken.notification.reason, /appAccountToken/);
});

// ---- Refunds the App Store started ------------------------------------------------------------------------

const REVOKED = { revocationDate: Date.now() - 60_000, revocationReason: 1 };
const notifyWith = (c: ChannelConnector, raw: Buffer, currency: string | null) =>
  c.verifyNotification({ headers: { 'content-type': 'application/json' }, rawBody: raw }, async () => currency);

test('REFUND becomes a store-started refund: succeeded, transactionId:refund, our reference, the exact price', async () => {
  const n = notification('REFUND', {}, signedTx(REVOKED));
  const r = await notifyWith(connector(), body(n), 'CNY');
  assert.ok(r.ok, !r.ok ? r.reason : '');
  assert.equal(r.notification.kind, 'refund');
  assert.match(r.notification.eventId, /^[0-9a-f-]{36}$/);
  assert.equal(r.notification.appId, BUNDLE);
  assert.deepEqual(r.notification.kind === 'refund' && r.notification.refund, {
    state: 'succeeded', channelRefundId: '2000000000000042:refund', channelReference: REF, amountMinor: 600n, currency: 'CNY', rawStatus: 'REFUND:1',
  });
  assert.equal(r.notification.kind === 'refund' && 'refundReference' in r.notification.refund, false, 'the store started it: no refund number of ours');
  // Apple's retry posts the same bytes: the same event and the same refund id.
  const again = await notifyWith(connector(), body(n), 'CNY');
  assert.deepEqual(again, r);
  // Another notification about the same refunded transaction (a new UUID, or a REVOKE of the
  // purchase itself): another event, the same refund id, so the service records the refund once.
  for (const type of ['REFUND', 'REVOKE']) {
    const other = await notifyWith(connector(), body(notification(type, {}, signedTx({ ...REVOKED, inAppOwnershipType: 'PURCHASED' }))), 'CNY');
    assert.ok(other.ok && other.notification.kind === 'refund', type);
    assert.notEqual(other.notification.eventId, r.notification.eventId);
    assert.equal(other.notification.refund.channelRefundId, '2000000000000042:refund');
    assert.equal(other.notification.refund.rawStatus, `${type}:1`);
  }
  // Milliunits → minor units exactly, for the whole quantity, in other exponents; currency unknown to the service is fine.
  const jpy = await notifyWith(connector(), body(notification('REFUND', {}, signedTx({ ...REVOKED, revocationReason: 0, price: 240000, currency: 'JPY', quantity: 2 }))), null);
  assert.ok(jpy.ok && jpy.notification.kind === 'refund');
  assert.deepEqual([jpy.notification.refund.amountMinor, jpy.notification.refund.currency, jpy.notification.refund.rawStatus], [240n, 'JPY', 'REFUND:0']);
  const usd = await notifyWith(connector(), body(notification('REFUND', {}, signedTx({ revocationDate: Date.now(), price: 1990, currency: 'USD', appAccountToken: REF.toUpperCase() }))), 'USD');
  assert.ok(usd.ok && usd.notification.kind === 'refund');
  assert.deepEqual([usd.notification.refund.amountMinor, usd.notification.refund.channelReference, usd.notification.refund.rawStatus], [199n, REF, 'REFUND']);
});

test('a prorated REFUND refunds its share of the price, rounded half up to a minor unit', async () => {
  const cases: Array<[number, number, bigint]> = [[6000, 50_000, 300n], [50, 50_000, 3n], [6000, 33_333, 200n], [6000, 100_000, 600n]];
  for (const [price, pct, want] of cases) {
    const r = await notifyWith(connector(), body(notification('REFUND', {}, signedTx({ ...REVOKED, price, revocationType: 'REFUND_PRORATED', revocationPercentage: pct }))), 'CNY');
    assert.ok(r.ok && r.notification.kind === 'refund', `${price} × ${pct}`);
    assert.equal(r.notification.refund.amountMinor, want, `${price} × ${pct}`);
    assert.equal(r.notification.refund.rawStatus, `REFUND:1:REFUND_PRORATED:${pct}`);
  }
  const full = await notifyWith(connector(), body(notification('REFUND', {}, signedTx({ ...REVOKED, revocationType: 'REFUND_FULL', revocationPercentage: 100_000 }))), 'CNY');
  assert.ok(full.ok && full.notification.kind === 'refund');
  assert.deepEqual([full.notification.refund.amountMinor, full.notification.refund.rawStatus], [600n, 'REFUND:1']);
  const nothing = await notifyWith(connector(), body(notification('REFUND', {}, signedTx({ ...REVOKED, price: 10, revocationType: 'REFUND_PRORATED', revocationPercentage: 1_000 }))), 'CNY');
  assert.ok(nothing.ok && nothing.notification.kind === 'ignored');
  assert.match(nothing.notification.reason, /refunds nothing/);
  for (const pct of [100_001, -1, 12.5, undefined]) {
    rejected(await notifyWith(connector(), body(notification('REFUND', {}, signedTx({ ...REVOKED, revocationType: 'REFUND_PRORATED', revocationPercentage: pct }))), 'CNY'), /revocationPercentage/, String(pct));
  }
  // A field of the wrong type is refused by the library's own validation.
  rejected(await notifyWith(connector(), body(notification('REFUND', {}, signedTx({ ...REVOKED, revocationType: 'REFUND_PRORATED', revocationPercentage: '50000' }))), 'CNY'), /signed transaction rejected: FAILURE/);
});

test('what is not a refund of our money is acknowledged as ignored: Family Sharing copies, purchases without our token', async () => {
  for (const over of [{ inAppOwnershipType: 'FAMILY_SHARED' }, { revocationType: 'FAMILY_REVOKE' }]) {
    for (const type of ['REVOKE', 'REFUND']) {
      const r = await notifyWith(connector(), body(notification(type, {}, signedTx({ ...REVOKED, ...over }))), 'CNY');
      assert.ok(r.ok && r.notification.kind === 'ignored', `${type} ${JSON.stringify(over)}`);
      assert.match(r.notification.reason, /Family Sharing/);
      assert.equal(r.notification.channelReference, REF);
    }
  }
  const foreignApp = await notifyWith(connector(), body(notification('REFUND', {}, signedTx({ ...REVOKED, appAccountToken: undefined }))), null);
  assert.ok(foreignApp.ok && foreignApp.notification.kind === 'ignored');
  assert.match(foreignApp.notification.reason, /appAccountToken/);
});

test('refund notifications that cannot be believed or do not fit our payment are rejected, never thrown', async () => {
  const c = connector();
  rejected(await notifyWith(c, body(notification('REFUND', {}, null)), 'CNY'), /REFUND without signedTransactionInfo/);
  rejected(await notifyWith(c, body(notification('REVOKE', {}, null)), 'CNY'), /REVOKE without signedTransactionInfo/);
  rejected(await notifyWith(c, body(notification('REFUND', {}, signedTx())), 'CNY'), /has no revocationDate/);
  rejected(await notifyWith(c, body(notification('REFUND', {}, signedTx({ ...REVOKED, price: 1995, currency: 'USD' }))), 'USD'), /not an exact amount/);
  rejected(await notifyWith(c, body(notification('REFUND', {}, signedTx({ ...REVOKED, transactionId: undefined }))), 'CNY'), /no transactionId/);
  rejected(await notifyWith(c, body(notification('REFUND', {}, signedTx(REVOKED))), 'USD'), /currency_mismatch: the payment is in USD, Apple refunded CNY/);
  // Forged: the whole notification, or the transaction inside, signed by another chain.
  rejected(await notifyWith(c, body(notification('REFUND', {}, signedTx(REVOKED), foreign)), 'CNY'), /VERIFICATION_FAILURE/, 'foreign chain');
  rejected(await notifyWith(c, body(notification('REFUND', {}, signedTx(REVOKED, foreign))), 'CNY'), /signedTransactionInfo: .*VERIFICATION_FAILURE/, 'foreign nested transaction');
  // Tampered: a genuine ONE_TIME_CHARGE turned into a REFUND, a genuine refund moved to another token.
  const [h, p, sig] = notification('ONE_TIME_CHARGE').split('.') as [string, string, string];
  const outer = JSON.parse(Buffer.from(p, 'base64url').toString('utf8'));
  rejected(await notifyWith(c, body(`${h}.${Buffer.from(JSON.stringify({ ...outer, notificationType: 'REFUND' })).toString('base64url')}.${sig}`), 'CNY'), /VERIFICATION_FAILURE/);
  const genuine = signedTx(REVOKED);
  const [th, tp, ts] = genuine.split('.') as [string, string, string];
  const movedTx = `${th}.${Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(tp, 'base64url').toString('utf8')), appAccountToken: randomUUID() })).toString('base64url')}.${ts}`;
  rejected(await notifyWith(c, body(notification('REFUND', {}, movedTx)), 'CNY'), /signedTransactionInfo: .*VERIFICATION_FAILURE/);
  // Stale: a refund signed 9 days ago (by a chain valid then) is refused like any other notification.
  const old = generateSandboxChain(new Date(Date.now() - 30 * 86_400_000));
  const nineDaysAgo = Date.now() - 9 * 86_400_000;
  rejected(await notifyWith(connector({ rootCertificates: [old.rootDer] }), body(notification('REFUND', { signedDate: nineDaysAgo }, signedTx({ ...REVOKED, signedDate: nineDaysAgo }, old), old)), 'CNY'), /stale/);
  // Another bundle's refund.
  rejected(await notifyWith(connector({ bundleId: 'com.knowpay.other' }), body(notification('REFUND', {}, signedTx(REVOKED))), 'CNY'), /INVALID_APP_IDENTIFIER/);
  // The product our payment sold is not the one Apple refunded.
  const strict = connector({ expectedPurchase: async () => ({ productId: 'coins_600', quantity: 1 }) });
  rejected(await notifyWith(strict, body(notification('REFUND', {}, signedTx(REVOKED))), 'CNY'), /product_mismatch: sold coins_600, Apple says coins_60/);
  const matching = connector({ expectedPurchase: async () => ({ productId: 'coins_60', quantity: 1 }) });
  assert.equal((await notifyWith(matching, body(notification('REFUND', {}, signedTx(REVOKED))), 'CNY')).ok, true);
  // An unexpected failure (the product lookup) is a rejection Apple retries, not a throw.
  const broken = connector({ expectedPurchase: async () => { throw new Error('db down'); } });
  rejected(await notifyWith(broken, body(notification('REFUND', {}, signedTx(REVOKED))), 'CNY'), /not processed: db down/);
});

test('forged, foreign, stale, future, and malformed notifications are rejected, never thrown', async () => {
  const c = connector();
  rejected(await notify(c, body(notification('ONE_TIME_CHARGE', {}, signedTx(), foreign))), /VERIFICATION_FAILURE/, 'foreign chain');
  rejected(await notify(c, body(notification('ONE_TIME_CHARGE', {}, signedTx({}, foreign)))), /signedTransactionInfo: .*VERIFICATION_FAILURE/, 'foreign nested transaction');
  // Stale: signed 9 days ago by a chain valid then (the sandbox chain itself starts a day ago).
  const old = generateSandboxChain(new Date(Date.now() - 30 * 86_400_000));
  const oldStore = connector({ rootCertificates: [old.rootDer] });
  const nineDaysAgo = Date.now() - 9 * 86_400_000;
  rejected(await notify(oldStore, body(notification('ONE_TIME_CHARGE', { signedDate: nineDaysAgo }, signedTx({ signedDate: nineDaysAgo }, old), old))), /stale/);
  assert.equal((await notify(oldStore, body(notification('ONE_TIME_CHARGE', { signedDate: Date.now() - 6 * 86_400_000 }, signedTx({}, old), old)))).ok, true, 'a 6-day-old retry is still fresh');
  rejected(await notify(c, body(notification('ONE_TIME_CHARGE', { signedDate: nineDaysAgo }))), /INVALID_CERTIFICATE/, 'before the chain was valid');
  rejected(await notify(c, body(notification('ONE_TIME_CHARGE', { signedDate: Date.now() + 3600_000 }))), /future/);
  rejected(await notify(c, body(notification('ONE_TIME_CHARGE', { signedDate: undefined }))), /signedDate/);
  rejected(await notify(c, body(notification('ONE_TIME_CHARGE', { notificationUUID: 'not-a-uuid' }))), /notificationUUID/);
  rejected(await notify(c, body(notification('ONE_TIME_CHARGE', { data: { bundleId: 'com.other', environment: 'Sandbox' } }))), /INVALID_APP_IDENTIFIER/);
  rejected(await notify(c, body(notification('ONE_TIME_CHARGE', { data: { bundleId: BUNDLE, environment: 'Production' } }))), /INVALID_ENVIRONMENT/);
  rejected(await notify(c, body(notification('ONE_TIME_CHARGE', {}, null))), /without signedTransactionInfo/);
  rejected(await notify(c, body(notification('ONE_TIME_CHARGE', {}, signedTx({ bundleId: 'com.other' })))), /INVALID_APP_IDENTIFIER/);
  rejected(await notify(c, body(notification('ONE_TIME_CHARGE', {}, signedTx({ price: 6005 })))), /not an exact amount/);
  rejected(await notify(c, body(notification('ONE_TIME_CHARGE', {}, signedTx({ transactionId: undefined })))), /transactionId/);
  const good = notification('ONE_TIME_CHARGE');
  const [h, p, s] = good.split('.') as [string, string, string];
  const flipped = `${h}.${p.slice(0, 40)}${p[40] === 'A' ? 'B' : 'A'}${p.slice(41)}.${s}`;
  rejected(await notify(c, body(flipped)), /signedPayload rejected/);
  const malformed: Array<[string, Buffer, string | undefined, RegExp]> = [
    ['form body', Buffer.from(`signedPayload=${good}`), 'application/x-www-form-urlencoded', /content type/],
    ['empty', Buffer.alloc(0), 'application/json', /empty/],
    ['not JSON', Buffer.from('{"signedPayload":'), 'application/json', /JSON/],
    ['not UTF-8', Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), 'application/json', /UTF-8/],
    ['array', Buffer.from('[1]'), 'application/json', /signedPayload missing/],
    ['number payload', Buffer.from('{"signedPayload":5}'), 'application/json', /signedPayload missing/],
    ['huge', Buffer.alloc(300 * 1024, 0x20), 'application/json', /larger than/],
    ['garbage JWS', body('a.b.c'), 'application/json', /rejected/],
  ];
  for (const [label, raw, type, reason] of malformed) rejected(await notify(c, raw, type), reason, label);
});

test('the product and quantity we sold are checked against Apple\'s transaction', async () => {
  const sold = new Map([[REF, { productId: 'coins_60', quantity: 1 }]]);
  const c = connector({ expectedPurchase: async (ref) => sold.get(ref) ?? null });
  assert.equal((await notify(c, body(notification('ONE_TIME_CHARGE')))).ok, true);
  rejected(await notify(c, body(notification('ONE_TIME_CHARGE', {}, signedTx({ productId: 'coins_6' })))), /product_mismatch/);
  rejected(await notify(c, body(notification('ONE_TIME_CHARGE', {}, signedTx({ quantity: 2, price: 12000 })))), /quantity_mismatch/);
  // A reference we do not know passes through: the service answers unknown_reference.
  const other = randomUUID();
  const unknown = await notify(c, body(notification('ONE_TIME_CHARGE', {}, signedTx({ appAccountToken: other }))));
  assert.ok(unknown.ok && unknown.notification.kind === 'payment' && unknown.notification.trade.channelReference === other);
  // The lookup failing is a rejection (Apple retries), not an exception.
  const broken = connector({ expectedPurchase: async () => { throw new Error('db down'); } });
  rejected(await notify(broken, body(notification('ONE_TIME_CHARGE'))), /db down/);
});

// ---- createPayment / query / close ---------------------------------------------------------------------------

const item = (productId: string, apple: string | undefined, quantity = 1) => ({ productId, quantity, storeProductIds: apple === undefined ? {} : { apple_iap: apple } });

function input(over: Partial<CreatePaymentInput> = {}): CreatePaymentInput {
  return {
    channelReference: REF, paymentId: 'pay_1', orderId: 'ord_1', customerId: 'cus_1', items: [item('prod_coins', 'coins_60')], method: 'in_app',
    amountMinor: 600n, currency: 'CNY', subject: '60 coins', notifyUrl: 'http://127.0.0.1:9/v1/notify/apple_iap', expiresAt: new Date(Date.now() + 60_000), ...over,
  };
}

async function refused(p: Promise<unknown>, code: string) {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof ChannelError, String(err));
    assert.equal(err.code, code, err.message);
    assert.equal(err.retryable, false);
    assert.equal(err.channel, 'apple_iap');
    return true;
  });
}

test('createPayment calls nobody and hands the app the StoreKit parameters', async () => {
  audits = [];
  const c = connector();
  assert.deepEqual([...c.methods], ['in_app']);
  assert.equal(c.referenceFormat, 'uuid');
  const r = await c.createPayment(input());
  assert.deepEqual(r, { action: { type: 'app', params: { product_id: 'coins_60', app_account_token: REF, quantity: 1 } } });
  const two = await c.createPayment(input({ items: [item('prod_coins', 'coins_60', 2), item('prod_coins', 'coins_60', 3)] }));
  assert.equal(two.action.type === 'app' && two.action.params['quantity'], 5, 'lines of one product add up');
  assert.equal(audits.length, 2);
  assert.equal(audits[0]!.operation, 'create_payment');
  assert.equal(audits[0]!.channelReference, REF);
});

test('createPayment refuses what one in-app purchase cannot be', async () => {
  audits = [];
  const c = connector();
  await refused(c.createPayment(input({ items: [item('prod_course', undefined)] })), 'store_product_missing');
  await refused(c.createPayment(input({ items: [item('prod_course', '')] })), 'store_product_missing');
  await refused(c.createPayment(input({ items: [item('prod_coins', 'coins_60'), item('prod_course', 'course_1')] })), 'multiple_products');
  await refused(c.createPayment(input({ items: [] })), 'items_missing');
  await refused(c.createPayment(input({ items: [item('prod_coins', 'coins 60')] })), 'store_product_invalid');
  await refused(c.createPayment(input({ items: [item('prod_coins', 'coins_60', 11)] })), 'quantity_invalid');
  await refused(c.createPayment(input({ method: 'qr' })), 'method_not_supported');
  await refused(c.createPayment(input({ channelReference: 'KP0123456789' })), 'reference_invalid');
  await refused(c.createPayment(input({ channelReference: REF.toUpperCase() })), 'reference_invalid');
  await refused(c.createPayment(input({ amountMinor: 0n })), 'amount_invalid');
  await refused(c.createPayment(input({ currency: 'XXX' })), 'currency_not_supported');
  assert.equal(audits.length, 0, 'nothing audited for a refusal before any work');
});

test('query answers pending (Apple cannot be asked by appAccountToken); close answers closed (nothing open at Apple)', async () => {
  const c = connector();
  assert.deepEqual(await c.queryPayment({ channelReference: REF, currency: 'CNY' }), { state: 'pending', channelReference: REF, rawStatus: 'UNKNOWABLE_WITHOUT_TRANSACTION_ID' });
  assert.deepEqual(await c.closePayment({ channelReference: REF, currency: 'CNY' }), { state: 'closed', channelReference: REF, rawStatus: 'NOTHING_TO_CLOSE_AT_APPLE' });
});

// ---- confirmPayment (the app's proof) ------------------------------------------------------------------------

const confirm = (c: ChannelConnector, payload: Record<string, unknown>, ref = REF) => c.confirmPayment!({ channelReference: ref, currency: 'CNY', amountMinor: 600n, payload });

test('confirmPayment verifies the signed transaction and answers the trade with Apple\'s price', async () => {
  audits = [];
  const sold = new Map([[REF, { productId: 'coins_60', quantity: 1 }]]);
  const c = connector({ expectedPurchase: async (ref) => sold.get(ref) ?? null });
  const jws = signedTx();
  assert.deepEqual(await confirm(c, { signed_transaction: jws }), {
    state: 'succeeded', channelReference: REF, channelTransactionId: '2000000000000042', amountMinor: 600n, currency: 'CNY', rawStatus: 'PURCHASED',
  });
  assert.deepEqual(await confirm(c, { signed_transaction: jws, transaction_id: '2000000000000042' }).then((s) => s.state), 'succeeded');
  const revoked = await confirm(c, { signed_transaction: signedTx({ revocationDate: Date.now() }) });
  assert.equal(revoked.state, 'failed');
  const usd = await confirm(connector(), { signed_transaction: signedTx({ price: 990, currency: 'USD' }) });
  assert.deepEqual([usd.amountMinor, usd.currency], [99n, 'USD'], 'the service compares amount and currency with the payment');
  const audit = audits.find((a) => a.operation === 'confirm_payment');
  assert.ok(audit);
  const text = JSON.stringify(audit);
  assert.match(text, /2000000000000042/);
  assert.doesNotMatch(text, new RegExp(jws.split('.')[2]!.slice(0, 30)), 'the JWS signature is not stored');
});

test('confirmPayment refuses proofs that are not this payment\'s', async () => {
  const sold = new Map([[REF, { productId: 'coins_60', quantity: 1 }]]);
  const c = connector({ expectedPurchase: async (ref) => sold.get(ref) ?? null });
  await refused(confirm(c, { signed_transaction: signedTx({ appAccountToken: randomUUID() }) }), 'reference_mismatch');
  await refused(confirm(c, { signed_transaction: signedTx({ appAccountToken: undefined }) }), 'reference_mismatch');
  await refused(confirm(c, { signed_transaction: signedTx({ productId: 'coins_6' }) }), 'product_mismatch');
  await refused(confirm(c, { signed_transaction: signedTx({ quantity: 3, price: 18000 }) }), 'quantity_mismatch');
  await refused(confirm(c, { signed_transaction: signedTx({}, foreign) }), 'invalid_signed_transaction');
  await refused(confirm(c, { signed_transaction: signedTx({ bundleId: 'com.other' }) }), 'invalid_signed_transaction');
  await refused(confirm(c, { signed_transaction: signedTx({ environment: 'Production' }) }), 'invalid_signed_transaction');
  await refused(confirm(c, { signed_transaction: signedTx({ price: 6001 }) }), 'price_invalid');
  await refused(confirm(c, { signed_transaction: signedTx(), transaction_id: '2000000000000043' }), 'transaction_mismatch');
  await refused(confirm(c, { signed_transaction: readText('transactionInfo.jws') }), 'invalid_signed_transaction');
  await refused(confirm(c, {}), 'confirmation_payload_invalid');
  await refused(confirm(c, { signed_transaction: 42 }), 'confirmation_payload_invalid');
  await refused(confirm(c, { signed_transaction: '' }), 'confirmation_payload_invalid');
  await refused(confirm(c, { transaction_id: 'abc' }), 'confirmation_payload_invalid');
  await refused(confirm(c, { transaction_id: '2000000000000042' }), 'server_api_not_configured');
  await refused(confirm(c, { signed_transaction: signedTx() }, 'kp_not_a_uuid'), 'reference_invalid');
});

test('acknowledgements: 200 received; 400 asks Apple to retry', () => {
  const c = connector();
  assert.deepEqual(c.ackSuccess(), { statusCode: 200, contentType: 'text/plain; charset=utf-8', body: 'OK' });
  const fail = c.ackFailure('x'.repeat(500));
  assert.equal(fail.statusCode, 400);
  assert.ok(fail.body.length <= 200);
});

test('toChannelError: Server API answers and transport failures', () => {
  const cases: Array<[unknown, string, boolean]> = [
    [new APIException(401), 'unauthorized', false],
    [new APIException(404, 4040010, 'Transaction id not found.'), 'transaction_not_found', false],
    [new APIException(429, 4290000, 'Rate limit exceeded.'), 'rate_limited', true],
    [new APIException(500, 5000000, 'An unknown error occurred.'), 'apple_unavailable', true],
    [new APIException(400, 4000006, 'Invalid transaction id.'), 'request_rejected', false],
    [Object.assign(new TypeError('fetch failed'), { cause: { code: 'ECONNREFUSED' } }), 'transport_error', true],
    [new DOMException('timed out', 'TimeoutError'), 'transport_error', true],
    [new Error('Unexpected response body format'), 'invalid_response', true],
    [new Error('boom'), 'unexpected_error', false],
  ];
  for (const [err, code, retryable] of cases) {
    const e = toChannelError(err);
    assert.equal(e.code, code, String(err));
    assert.equal(e.retryable, retryable, String(err));
  }
  const kept = new ChannelError('x', 'apple_iap', 'c', true);
  assert.equal(toChannelError(kept), kept);
});

// ---- Real-mode configuration (index.ts) -----------------------------------------------------------------------

test('real credentials from the environment build the real connector (Apple roots, no sandbox); bad ones fail at start', async () => {
  const { appleIapModule } = await import('./index.ts');
  const deps = (env: Record<string, string>) => ({ pool: {} as never, publicBaseUrl: 'http://127.0.0.1:9', sandboxTimeScale: 1, audit: () => {}, env });
  const real = await appleIapModule.create(deps({ APPLE_IAP_BUNDLE_ID: 'com.example', APPLE_IAP_APP_APPLE_ID: '1234', APPLE_IAP_ONLINE_CHECKS: 'false' }));
  assert.equal(real.mountSandbox, undefined);
  assert.equal(real.connector.appId, 'com.example');
  // Apple's test chain is not Apple's production chain.
  const r = await real.connector.verifyNotification({ headers: {}, rawBody: body(readText('testNotification.jws')) }, async () => null);
  assert.match(!r.ok ? r.reason : 'accepted!', /VERIFICATION_FAILURE/);
  const appleSandbox = await appleIapModule.create(deps({ APPLE_IAP_BUNDLE_ID: 'com.example', APPLE_IAP_ENVIRONMENT: 'Sandbox' }));
  assert.equal(appleSandbox.mountSandbox, undefined, 'Apple\'s sandbox environment is still real mode');
  await assert.rejects(appleIapModule.create(deps({ APPLE_IAP_BUNDLE_ID: 'com.example' })), /appAppleId/);
  await assert.rejects(appleIapModule.create(deps({ APPLE_IAP_BUNDLE_ID: 'com.example', APPLE_IAP_ENVIRONMENT: 'LocalTesting' })), /APPLE_IAP_ENVIRONMENT/);
  await assert.rejects(appleIapModule.create(deps({ APPLE_IAP_BUNDLE_ID: 'com.example', APPLE_IAP_APP_APPLE_ID: 'abc' })), /APPLE_IAP_APP_APPLE_ID/);
  await assert.rejects(appleIapModule.create(deps({ APPLE_IAP_BUNDLE_ID: 'com.example', APPLE_IAP_APP_APPLE_ID: '1', APPLE_IAP_ONLINE_CHECKS: 'maybe' })), /APPLE_IAP_ONLINE_CHECKS/);
});

/**
 * The connector against the sandbox over real HTTP (127.0.0.1), wired exactly as the service
 * wires it (appleIapModule.create → connector + mountSandbox): the device's purchase, the buyer's
 * outcome, the signed transaction the app receives, the Server API through the official client
 * subclass, and the signed notifications through the shared dispatcher with Apple's retries.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import Fastify, { type FastifyInstance } from 'fastify';
import { APIException } from '@apple/app-store-server-library';
import { freshDatabase, type TestDatabase } from '../../../test/support/db.ts';
import { getSetting } from '../../store/settings.ts';
import type { ChannelConnector, CreatePaymentInput } from '../types.ts';
import type { ChannelAuditEntry } from '../module.ts';
import { faultsPlugin } from '../sandbox/faults.ts';
import { listSandboxNotificationAttempts, listSandboxNotifications, waitForSandboxNotifications } from '../sandbox/dispatcher.ts';
import { appleRootCertificates } from './apple-roots.ts';
import { createAppleIapConnector } from './connector.ts';
import { APPLE_SANDBOX_BUNDLE_ID, appleIapModule } from './index.ts';
import { decodeJwsUnverified, generateSandboxChain, signAppStoreJws } from './jws.ts';
import { generateAppleSandboxKeys, sandboxChainDer, type AppleSandboxKeys } from './sandbox.ts';
import { AppStoreServerApi } from './server-api.ts';
import { rejectsWith } from '../../../test/support/assertions.ts';
import { freePort } from '../../store/embedded.ts';

const fixtures = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../test/fixtures/apple');
const TIME_SCALE = 0.001;

interface Received { name: string; rawBody: Buffer; contentType: string | undefined; at: number }

let db: TestDatabase;
let app: FastifyInstance;
let base = '';
let connector: ChannelConnector;
let keys: AppleSandboxKeys;
let audits: ChannelAuditEntry[] = [];
const received: Received[] = [];
/** Per receiver name (the app account token, or "test"): the HTTP status for the n-th (1-based) delivery. */
const answers = new Map<string, (n: number) => number>();

/** Test plumbing only: which purchase a delivery is about, read without verification to pick an answer. */
function nameOf(raw: Buffer): string {
  try {
    const outer = decodeJwsUnverified((JSON.parse(raw.toString('utf8')) as { signedPayload: string }).signedPayload);
    const data = outer?.payload['data'] as { signedTransactionInfo?: string } | undefined;
    if (outer?.payload['notificationType'] === 'TEST') return 'test';
    return String(decodeJwsUnverified(data?.signedTransactionInfo)?.payload['appAccountToken'] ?? 'unknown');
  } catch {
    return 'unknown';
  }
}

/** An app as the service builds it: the module's connector and sandbox, the faults, and a notify endpoint at /v1/notify/apple_iap. */
async function buildApp(pool: TestDatabase['pool'], port: number, timeScale: number): Promise<{ app: FastifyInstance; connector: ChannelConnector }> {
  const a = Fastify();
  await a.register(faultsPlugin, { pool });
  const instance = await appleIapModule.create({ pool, publicBaseUrl: `http://127.0.0.1:${port}`, sandboxTimeScale: timeScale, audit: (e) => audits.push(e), env: {} });
  assert.ok(instance.mountSandbox, 'no real credentials: the sandbox runs');
  await instance.mountSandbox(a);
  await a.register(async (r) => {
    r.removeAllContentTypeParsers();
    r.addContentTypeParser('*', { parseAs: 'buffer' }, (_q, body, done) => done(null, body));
    r.post('/v1/notify/apple_iap', async (req, reply) => {
      const rawBody = req.body as Buffer;
      const name = nameOf(rawBody);
      received.push({ name, rawBody, contentType: req.headers['content-type'], at: Date.now() });
      const n = received.filter((x) => x.name === name).length;
      return reply.code((answers.get(name) ?? (() => 200))(n)).type('text/plain').send('');
    });
  });
  await a.listen({ host: '127.0.0.1', port });
  return { app: a, connector: instance.connector };
}

before(async () => {
  db = await freshDatabase();
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  ({ app, connector } = await buildApp(db.pool, port, TIME_SCALE));
  keys = (await getSetting<AppleSandboxKeys>(db.pool, 'sandbox.apple_iap.keys'))!;
});

after(async () => {
  await app.close();
  await db.drop();
});

function input(ref: string, over: Partial<CreatePaymentInput> = {}): CreatePaymentInput {
  return {
    channelReference: ref, paymentId: 'pay_x', orderId: 'ord_x', customerId: 'cus_x', method: 'in_app',
    items: [{ productId: 'prod_coins', quantity: 1, storeProductIds: { apple_iap: 'com.knowpay.coins_60' } }],
    amountMinor: 600n, currency: 'CNY', subject: '60 coins', notifyUrl: `${base}/v1/notify/apple_iap`, expiresAt: new Date(Date.now() + 60_000), ...over,
  };
}

async function post(pathname: string, body: unknown, target = base) {
  const res = await fetch(`${target}/sandbox/apple_iap${pathname}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: res.status, body: (await res.json()) as Record<string, any> };
}

/** What the app does with the action params: start the StoreKit purchase at the price the sheet shows. */
async function startPurchase(params: Record<string, unknown>, amount = 600, currency = 'CNY') {
  return post('/purchase', { product_id: params['product_id'], app_account_token: params['app_account_token'], quantity: params['quantity'], amount, currency });
}

async function createAndStart(amount = 600, currency = 'CNY'): Promise<string> {
  const ref = randomUUID();
  const created = await connector.createPayment(input(ref, { amountMinor: BigInt(amount), currency }));
  assert.equal(created.action.type, 'app');
  const started = await startPurchase(created.action.type === 'app' ? created.action.params : {}, amount, currency);
  assert.equal(started.status, 201, JSON.stringify(started.body));
  return ref;
}

async function waitReceived(name: string, count: number, timeoutMs = 5000): Promise<Received[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const got = received.filter((r) => r.name === name);
    if (got.length >= count) return got;
    if (Date.now() > deadline) throw new Error(`receiver ${name}: ${got.length} of ${count} notifications after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const verify = (c: ChannelConnector, r: Received) => c.verifyNotification({ headers: { 'content-type': r.contentType }, rawBody: r.rawBody }, async () => null);

// ---- Happy path ---------------------------------------------------------------------------------------------

test('the module generates the sandbox keys once; a second process gets the same ones', async () => {
  const again = await appleIapModule.create({ pool: db.pool, publicBaseUrl: base, sandboxTimeScale: TIME_SCALE, audit: () => {}, env: {} });
  assert.equal(again.connector.appId, APPLE_SANDBOX_BUNDLE_ID);
  assert.deepEqual(await getSetting(db.pool, 'sandbox.apple_iap.keys'), keys);
  assert.equal(connector.appId, APPLE_SANDBOX_BUNDLE_ID);
});

test('purchase → simulate succeeded: the app\'s signed transaction, the Server API and the notification all verify and agree', async () => {
  audits = [];
  const ref = await createAndStart(600, 'CNY');
  assert.deepEqual(await connector.queryPayment({ channelReference: ref, currency: 'CNY' }).then((s) => s.state), 'pending');
  const sim = await post('/simulate', { channel_reference: ref, outcome: 'succeeded' });
  assert.equal(sim.status, 200, JSON.stringify(sim.body));
  assert.equal(sim.body['status'], 'purchased');
  assert.match(sim.body['transaction_id'], /^2000000\d{9}$/);
  assert.equal(sim.body['price'], 6000, 'milliunits');
  assert.equal(sim.body['amount'], 600);
  const expected = { state: 'succeeded', channelReference: ref, channelTransactionId: sim.body['transaction_id'], amountMinor: 600n, currency: 'CNY', rawStatus: 'PURCHASED' };

  // 1. What StoreKit hands the app.
  assert.deepEqual(await connector.confirmPayment!({ channelReference: ref, currency: 'CNY', amountMinor: 600n, payload: { signed_transaction: sim.body['signed_transaction'] } }), expected);
  const tx = decodeJwsUnverified(sim.body['signed_transaction'])!.payload;
  assert.equal(tx['appAccountToken'], ref);
  assert.equal(tx['productId'], 'com.knowpay.coins_60');
  assert.equal(tx['environment'], 'Sandbox');
  assert.equal(tx['type'], 'Consumable');
  assert.equal(tx['storefront'], 'CHN');

  // 2. The App Store Server API (Get Transaction Info) through the official client subclass.
  assert.deepEqual(await connector.confirmPayment!({ channelReference: ref, currency: 'CNY', amountMinor: 600n, payload: { transaction_id: sim.body['transaction_id'] } }), expected);
  const call = audits.find((a) => a.operation === 'get_transaction_info');
  assert.ok(call && !call.error);
  assert.doesNotMatch(JSON.stringify(audits), /Bearer|PRIVATE KEY/);

  // 3. The ONE_TIME_CHARGE notification.
  const [note] = await waitReceived(ref, 1);
  assert.equal(note!.contentType, 'application/json');
  const verified = await verify(connector, note!);
  assert.ok(verified.ok, !verified.ok ? verified.reason : '');
  assert.equal(verified.notification.eventId, sim.body['notification'].notification_uuid);
  assert.equal(verified.notification.appId, APPLE_SANDBOX_BUNDLE_ID);
  assert.deepEqual(verified.notification.kind === 'payment' && verified.notification.trade, { ...expected, rawStatus: 'ONE_TIME_CHARGE' });
  const outer = decodeJwsUnverified(JSON.parse(note!.rawBody.toString('utf8')).signedPayload)!.payload;
  assert.equal(outer['version'], '2.0');
  assert.equal((outer['data'] as Record<string, unknown>)['appAppleId'], undefined, 'no appAppleId in the sandbox environment');
});

test('simulate can start the purchase itself; quantity and currencies map to exact milliunits', async () => {
  const ref = randomUUID();
  const sim = await post('/simulate', { channel_reference: ref, outcome: 'succeeded', product_id: 'com.knowpay.coins_60', amount: 1980, currency: 'usd', quantity: 2 });
  assert.equal(sim.status, 200, JSON.stringify(sim.body));
  assert.deepEqual([sim.body['quantity'], sim.body['currency'], sim.body['price'], sim.body['storefront']], [2, 'USD', 19800, 'USA']);
  const snap = await connector.confirmPayment!({ channelReference: ref, currency: 'USD', amountMinor: 1980n, payload: { signed_transaction: sim.body['signed_transaction'] } });
  assert.deepEqual([snap.amountMinor, snap.currency], [1980n, 'USD']);
  const jpy = await post('/simulate', { channel_reference: randomUUID(), outcome: 'succeeded', product_id: 'jp_pack', amount: 160, currency: 'JPY' });
  assert.equal(jpy.body['price'], 160000);
  await waitReceived(ref, 1);
});

// ---- Buyer outcomes and the sandbox's errors ---------------------------------------------------------------

test('failed and canceled: 200, no transaction and no notification; final until the app offers the sheet again', async () => {
  for (const outcome of ['canceled', 'failed']) {
    const ref = await createAndStart();
    const sim = await post('/simulate', { channel_reference: ref, outcome });
    assert.equal(sim.status, 200);
    assert.equal(sim.body['status'], outcome);
    assert.equal(sim.body['signed_transaction'], null);
    assert.equal(sim.body['notification'], null);
    assert.equal(sim.body['transaction_id'], null);
    assert.deepEqual(await listSandboxNotifications(db.pool, { channel: 'apple_iap', channelReference: ref }), []);
    const again = await post('/simulate', { channel_reference: ref, outcome: 'succeeded' });
    assert.equal(again.status, 409);
    assert.equal(again.body['error'].code, 'trade_already_final');
    // The app starts the same purchase again: it is pending once more and can be paid.
    const reopened = await post('/purchase', { product_id: 'com.knowpay.coins_60', app_account_token: ref, amount: 600, currency: 'CNY' });
    assert.equal(reopened.status, 200);
    assert.equal(reopened.body['status'], 'pending');
    assert.equal((await post('/simulate', { channel_reference: ref, outcome: 'succeeded' })).body['status'], 'purchased');
    await waitReceived(ref, 1);
  }
});

test('simulate: unknown 404, bad input 400, mismatch and final 409, in the Knowpay error shape', async () => {
  const unknown = await post('/simulate', { channel_reference: randomUUID(), outcome: 'succeeded' });
  assert.equal(unknown.status, 404);
  assert.deepEqual(Object.keys(unknown.body['error']).sort(), ['code', 'message', 'param', 'type']);
  assert.equal(unknown.body['error'].type, 'invalid_request_error');
  assert.equal(unknown.body['error'].code, 'trade_not_found');
  const notUuid = await post('/simulate', { channel_reference: 'no_such_trade', outcome: 'succeeded' });
  assert.deepEqual([notUuid.status, notUuid.body['error'].code], [404, 'trade_not_found']);
  const ref = await createAndStart();
  const bad: Array<[Record<string, unknown>, string]> = [
    [{ outcome: 'succeeded' }, 'channel_reference'],
    [{ channel_reference: ref, outcome: 'refunded' }, 'outcome'],
    [{ channel_reference: ref, outcome: 'succeeded', product_id: 'x' }, 'amount'],
    [{ channel_reference: ref, outcome: 'succeeded', product_id: 'x y', amount: 600, currency: 'CNY' }, 'product_id'],
    [{ channel_reference: ref, outcome: 'succeeded', product_id: 'x', amount: 1.5, currency: 'CNY' }, 'amount'],
    [{ channel_reference: ref, outcome: 'succeeded', product_id: 'x', amount: '600', currency: 'CNY' }, 'amount'],
    [{ channel_reference: ref, outcome: 'succeeded', product_id: 'x', amount: 600, currency: 'XXX' }, 'currency'],
    [{ channel_reference: ref, outcome: 'succeeded', product_id: 'x', amount: 600, currency: 'CNY', quantity: 11 }, 'quantity'],
  ];
  for (const [body, param] of bad) {
    const r = await post('/simulate', body);
    assert.equal(r.status, 400, JSON.stringify(body));
    assert.equal(r.body['error'].param, param, JSON.stringify(body));
  }
  const notJson = await fetch(`${base}/sandbox/apple_iap/simulate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '[1]' });
  assert.equal(notJson.status, 400);
  const mismatch = await post('/simulate', { channel_reference: ref, outcome: 'succeeded', product_id: 'com.knowpay.coins_60', amount: 1, currency: 'CNY' });
  assert.equal(mismatch.status, 409);
  assert.equal(mismatch.body['error'].code, 'purchase_mismatch');
  assert.equal((await post('/simulate', { channel_reference: ref, outcome: 'succeeded' })).status, 200);
  const twice = await post('/simulate', { channel_reference: ref, outcome: 'canceled' });
  assert.equal(twice.status, 409);
  assert.equal(twice.body['error'].code, 'trade_already_final');
  await waitReceived(ref, 1);
});

test('/purchase: validated, idempotent for the same purchase, 409 for another one or a paid one', async () => {
  const ref = randomUUID();
  const body = { product_id: 'com.knowpay.course_1', app_account_token: ref, amount: 9900, currency: 'CNY', product_type: 'Non-Consumable' };
  assert.equal((await post('/purchase', body)).status, 201);
  const again = await post('/purchase', body);
  assert.equal(again.status, 200);
  assert.equal(again.body['product_type'], 'Non-Consumable');
  assert.equal((await post('/purchase', { ...body, amount: 100 })).body['error'].code, 'purchase_mismatch');
  for (const [over, param] of [[{ app_account_token: 'abc' }, 'app_account_token'], [{ quantity: 0 }, 'quantity'], [{ product_type: 'Subscription' }, 'product_type'], [{ amount: 0 }, 'amount'], [{ currency: undefined }, 'currency']] as const) {
    const r = await post('/purchase', { ...body, ...over });
    assert.equal(r.status, 400, JSON.stringify(over));
    assert.equal(r.body['error'].param, param);
  }
  await post('/simulate', { channel_reference: ref, outcome: 'succeeded' });
  const paid = await post('/purchase', body);
  assert.equal(paid.status, 409);
  assert.equal(paid.body['error'].code, 'trade_already_final');
  const view = await fetch(`${base}/sandbox/apple_iap/purchases/${ref}`);
  assert.equal(((await view.json()) as Record<string, unknown>)['status'], 'purchased');
  assert.equal((await fetch(`${base}/sandbox/apple_iap/purchases/${randomUUID()}`)).status, 404);
  await waitReceived(ref, 1);
});

// ---- The Server API's own checks ---------------------------------------------------------------------------

function apiClient(over: Partial<{ privateKeyPem: string; keyId: string; issuerId: string; bundleId: string }> = {}) {
  return new AppStoreServerApi({
    privateKeyPem: keys.apiPrivateKey, keyId: keys.apiKeyId, issuerId: keys.apiIssuerId, bundleId: APPLE_SANDBOX_BUNDLE_ID,
    baseUrl: `${base}/sandbox/apple_iap`, environment: 'Sandbox', ...over,
  });
}

test('Server API: Apple\'s 401 for a bad token, 400/404 error codes, and the connector\'s mapping', async () => {
  const noAuth = await fetch(`${base}/sandbox/apple_iap/inApps/v1/transactions/2000000000000001`);
  assert.equal(noAuth.status, 401);
  assert.equal(await noAuth.text(), 'Unauthenticated');
  const other = generateAppleSandboxKeys();
  for (const over of [{ privateKeyPem: other.apiPrivateKey }, { keyId: 'ABCDEFGHIJ' }, { issuerId: randomUUID() }, { bundleId: 'com.other.app' }]) {
    await assert.rejects(apiClient(over).getTransactionInfo('2000000000000001'), (e: unknown) => e instanceof APIException && e.httpStatusCode === 401, JSON.stringify(Object.keys(over)));
  }
  await assert.rejects(apiClient().getTransactionInfo('abc'), (e: unknown) => e instanceof APIException && e.httpStatusCode === 400 && e.apiError === 4000006);
  await assert.rejects(apiClient().getTransactionInfo('2000000999999999'), (e: unknown) => e instanceof APIException && e.httpStatusCode === 404 && e.apiError === 4040010 && e.errorMessage === 'Transaction id not found.');

  const ref = await createAndStart();
  const sim = await post('/simulate', { channel_reference: ref, outcome: 'succeeded' });
  const txId = sim.body['transaction_id'] as string;
  const wrongKey = createAppleIapConnector({
    bundleId: APPLE_SANDBOX_BUNDLE_ID, environment: 'Sandbox', rootCertificates: [Buffer.from(keys.rootCertificate, 'base64')], enableOnlineChecks: false,
    serverApi: { privateKeyPem: other.apiPrivateKey, keyId: keys.apiKeyId, issuerId: keys.apiIssuerId, baseUrl: `${base}/sandbox/apple_iap` },
  });
  await rejectsWith(wrongKey.confirmPayment!({ channelReference: ref, currency: 'CNY', amountMinor: 600n, payload: { transaction_id: txId } }), 'unauthorized', false);
  audits = [];
  await rejectsWith(connector.confirmPayment!({ channelReference: ref, currency: 'CNY', amountMinor: 600n, payload: { transaction_id: '2000000999999999' } }), 'transaction_not_found', false);
  const notFound = audits.find((a) => a.operation === 'get_transaction_info');
  assert.deepEqual(notFound?.response, { httpStatusCode: 404, apiError: 4040010, errorMessage: 'Transaction id not found.' });
  assert.equal(notFound?.error, undefined, 'a client\'s unknown transaction id does not count against the channel\'s health');
  // Someone else's transaction id: Apple's answer verifies, but it is not this payment's.
  await rejectsWith(connector.confirmPayment!({ channelReference: randomUUID(), currency: 'CNY', amountMinor: 600n, payload: { transaction_id: txId } }), 'reference_mismatch', false);
  const closed = await freePort();
  const unreachable = createAppleIapConnector({
    bundleId: APPLE_SANDBOX_BUNDLE_ID, environment: 'Sandbox', rootCertificates: [Buffer.from(keys.rootCertificate, 'base64')], enableOnlineChecks: false,
    serverApi: { privateKeyPem: keys.apiPrivateKey, keyId: keys.apiKeyId, issuerId: keys.apiIssuerId, baseUrl: `http://127.0.0.1:${closed}` },
    audit: (e) => audits.push(e),
  });
  audits = [];
  await rejectsWith(unreachable.confirmPayment!({ channelReference: ref, currency: 'CNY', amountMinor: 600n, payload: { transaction_id: txId } }), 'transport_error', true);
  assert.match(audits.find((a) => a.operation === 'get_transaction_info')?.error ?? '', /^transport_error: /);
  await waitReceived(ref, 1);
});

test('Request a Test Notification: a signed TEST arrives and is acknowledged as ignored', async () => {
  const response = await apiClient().requestTestNotification();
  assert.match(response.testNotificationToken ?? '', /^[0-9a-f-]{36}_\d+$/);
  const [note] = await waitReceived('test', 1);
  const verified = await verify(connector, note!);
  assert.ok(verified.ok && verified.notification.kind === 'ignored');
  assert.equal(verified.notification.eventId, response.testNotificationToken!.split('_')[0]);
  await assert.rejects(apiClient({ privateKeyPem: generateAppleSandboxKeys().apiPrivateKey }).requestTestNotification(), (e: unknown) => e instanceof APIException && e.httpStatusCode === 401);
});

// ---- Trust: sandbox data is worthless anywhere else, and only the sandbox's data counts here ---------------

test('what the sandbox signs fails under Apple\'s real roots; foreign chains fail in sandbox mode', async () => {
  const ref = await createAndStart();
  const sim = await post('/simulate', { channel_reference: ref, outcome: 'succeeded' });
  const [note] = await waitReceived(ref, 1);
  const real = createAppleIapConnector({ bundleId: APPLE_SANDBOX_BUNDLE_ID, environment: 'Sandbox', rootCertificates: appleRootCertificates(), enableOnlineChecks: false });
  const r = await verify(real, note!);
  assert.equal(r.ok, false);
  assert.match(!r.ok ? r.reason : '', /VERIFICATION_FAILURE/);
  await rejectsWith(real.confirmPayment!({ channelReference: ref, currency: 'CNY', amountMinor: 600n, payload: { signed_transaction: sim.body['signed_transaction'] } }), 'invalid_signed_transaction', false);

  // Apple's own test chain, and a second sandbox's chain, in front of the sandbox-mode connector.
  const appleTest = Buffer.from(JSON.stringify({ signedPayload: fs.readFileSync(path.join(fixtures, 'testNotification.jws'), 'utf8') }));
  const t = await connector.verifyNotification({ headers: {}, rawBody: appleTest }, async () => null);
  assert.match(!t.ok ? t.reason : 'accepted!', /VERIFICATION_FAILURE/);
  const otherKeys = generateAppleSandboxKeys();
  const tx = decodeJwsUnverified(sim.body['signed_transaction'])!.payload;
  const forgedTx = signAppStoreJws(tx, otherKeys.leafPrivateKey, sandboxChainDer(otherKeys));
  await rejectsWith(connector.confirmPayment!({ channelReference: ref, currency: 'CNY', amountMinor: 600n, payload: { signed_transaction: forgedTx } }), 'invalid_signed_transaction');
  const outer = decodeJwsUnverified(JSON.parse(note!.rawBody.toString('utf8')).signedPayload)!.payload;
  const forgedNote = signAppStoreJws(outer, otherKeys.leafPrivateKey, sandboxChainDer(otherKeys));
  const f = await connector.verifyNotification({ headers: {}, rawBody: Buffer.from(JSON.stringify({ signedPayload: forgedNote })) }, async () => null);
  assert.match(!f.ok ? f.reason : 'accepted!', /VERIFICATION_FAILURE/);
  // Our leaf key with another root's chain in x5c does not help either.
  const mixed = signAppStoreJws(tx, keys.leafPrivateKey, [...sandboxChainDer(otherKeys)]);
  await rejectsWith(connector.confirmPayment!({ channelReference: ref, currency: 'CNY', amountMinor: 600n, payload: { signed_transaction: mixed } }), 'invalid_signed_transaction');
  const chain = generateSandboxChain();
  await rejectsWith(connector.confirmPayment!({ channelReference: ref, currency: 'CNY', amountMinor: 600n, payload: { signed_transaction: signAppStoreJws(tx, chain.leafPrivateKeyPem, [chain.leafDer, chain.intermediateDer, Buffer.from(keys.rootCertificate, 'base64')]) } }), 'invalid_signed_transaction');
  // Tampered in transit.
  const sp = JSON.parse(note!.rawBody.toString('utf8')).signedPayload as string;
  const [h, p, s] = sp.split('.') as [string, string, string];
  const tampered = Buffer.from(JSON.stringify({ signedPayload: `${h}.${p.slice(0, 99)}${p[99] === 'A' ? 'B' : 'A'}${p.slice(100)}.${s}` }));
  assert.equal((await connector.verifyNotification({ headers: {}, rawBody: tampered }, async () => null)).ok, false);
});

// ---- Our payments tell the connector what was sold ---------------------------------------------------------

test('the module compares Apple\'s product with the one our payment asked the app to buy', async () => {
  const ref = randomUUID();
  const created = await connector.createPayment(input(ref));
  await db.pool.query(
    `INSERT INTO orders (id, customer_id, currency, status, subtotal_amount, discount_amount, total_amount, client_platform, expires_at)
     VALUES ($1, 'cus_x', 'CNY', 'pending', 600, 0, 600, 'ios', now() + interval '1 hour')`,
    [`ord_${ref}`],
  );
  await db.pool.query(
    `INSERT INTO payments (id, order_id, channel, method, status, amount, currency, channel_reference, action)
     VALUES ($1, $2, 'apple_iap', 'in_app', 'requires_action', 600, 'CNY', $3, $4)`,
    [`pay_${ref}`, `ord_${ref}`, ref, JSON.stringify(created.action)],
  );
  // The buyer's app (or a tampered one) buys another product of the same price with our token.
  const sim = await post('/simulate', { channel_reference: ref, outcome: 'succeeded', product_id: 'com.knowpay.coins_60b', amount: 600, currency: 'CNY' });
  await rejectsWith(connector.confirmPayment!({ channelReference: ref, currency: 'CNY', amountMinor: 600n, payload: { signed_transaction: sim.body['signed_transaction'] } }), 'product_mismatch', false);
  const [note] = await waitReceived(ref, 1);
  const r = await verify(connector, note!);
  assert.match(!r.ok ? r.reason : 'accepted!', /product_mismatch: sold com\.knowpay\.coins_60, Apple says com\.knowpay\.coins_60b/);
  // The right product passes.
  const ok = randomUUID();
  const okAction = await connector.createPayment(input(ok));
  await db.pool.query(`INSERT INTO payments (id, order_id, channel, method, status, amount, currency, channel_reference, action) VALUES ($1, $2, 'apple_iap', 'in_app', 'requires_action', 600, 'CNY', $3, $4)`, [`pay_${ok}`, `ord_${ref}`, ok, JSON.stringify(okAction.action)]);
  const good = await post('/simulate', { channel_reference: ok, outcome: 'succeeded', product_id: 'com.knowpay.coins_60', amount: 600, currency: 'CNY' });
  assert.equal((await connector.confirmPayment!({ channelReference: ok, currency: 'CNY', amountMinor: 600n, payload: { signed_transaction: good.body['signed_transaction'] } })).state, 'succeeded');
  await waitReceived(ok, 1);
});

async function faults(body: unknown, method = 'POST') {
  const res = await fetch(`${base}/sandbox/faults`, { method, ...(method === 'POST' ? { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) } : {}) });
  return res.status;
}

// ---- Refunds: Apple decides, the sandbox plays it, the connector translates ---------------------------------

/** A paid purchase whose ONE_TIME_CHARGE has arrived; answers its reference and transaction id. */
async function paidPurchase(amount = 600, currency = 'CNY'): Promise<{ ref: string; txId: string }> {
  const ref = await createAndStart(amount, currency);
  const sim = await post('/simulate', { channel_reference: ref, outcome: 'succeeded' });
  assert.equal(sim.status, 200, JSON.stringify(sim.body));
  await waitReceived(ref, 1);
  return { ref, txId: sim.body['transaction_id'] as string };
}

const refundSimulate = (body: unknown, target = base) => post('/refunds/simulate', body, target);
const cny = async () => 'CNY';
const verifyFor = (c: ChannelConnector, r: Received, currency = cny) => c.verifyNotification({ headers: { 'content-type': r.contentType }, rawBody: r.rawBody }, currency);

function signedTransactionOf(r: Received): Record<string, unknown> {
  const outer = decodeJwsUnverified(JSON.parse(r.rawBody.toString('utf8')).signedPayload)!.payload;
  return { notificationType: outer['notificationType'], ...decodeJwsUnverified((outer['data'] as Record<string, string>)['signedTransactionInfo'])!.payload };
}

test('refunds/simulate succeeded: the transaction is revoked, a signed REFUND arrives and verifies as a store-started refund', async () => {
  const { ref, txId } = await paidPurchase();
  const refund = await refundSimulate({ channel_reference: ref, outcome: 'succeeded' });
  assert.equal(refund.status, 200, JSON.stringify(refund.body));
  assert.equal(refund.body['status'], 'purchased', 'a refunded transaction still exists');
  assert.equal(refund.body['transaction_id'], txId);
  assert.equal(refund.body['revocation_reason'], 0);
  assert.ok(Date.parse(refund.body['revocation_date']) <= Date.now());
  assert.equal(refund.body['notification'].notification_type, 'REFUND');

  const [, note] = await waitReceived(ref, 2);
  const tx = signedTransactionOf(note!);
  assert.equal(tx['notificationType'], 'REFUND');
  assert.equal(tx['transactionId'], txId);
  assert.equal(tx['revocationDate'], Date.parse(refund.body['revocation_date']));
  assert.equal(tx['revocationReason'], 0);
  assert.equal(tx['revocationType'], 'REFUND_FULL');
  assert.equal(tx['price'], 6000);

  const verified = await verifyFor(connector, note!);
  assert.ok(verified.ok, !verified.ok ? verified.reason : '');
  assert.deepEqual(verified.notification, {
    eventId: refund.body['notification'].notification_uuid, kind: 'refund', appId: APPLE_SANDBOX_BUNDLE_ID,
    refund: { state: 'succeeded', channelRefundId: `${txId}:refund`, channelReference: ref, amountMinor: 600n, currency: 'CNY', rawStatus: 'REFUND:0' },
  });
  // Delivered again (Apple's retry posts the same bytes): the same event, the same refund.
  assert.deepEqual(await verifyFor(connector, note!), verified);
  // Apple's Server API now answers the revoked transaction: the app's later proof cannot pay.
  const after = await connector.confirmPayment!({ channelReference: ref, currency: 'CNY', amountMinor: 600n, payload: { transaction_id: txId } });
  assert.deepEqual([after.state, after.rawStatus], ['failed', 'REVOKED:0']);
  const [row] = (await listSandboxNotifications(db.pool, { channel: 'apple_iap', channelReference: ref })).slice(-1);
  await waitForSandboxNotifications(db.pool, { channel: 'apple_iap', channelReference: ref, timeoutMs: 5000 });
  assert.equal(row!.eventId, refund.body['notification'].notification_uuid);

  // Once refunded, always refunded: a second call (by token or by transaction id) is 409 and sends nothing.
  for (const body of [{ channel_reference: ref, outcome: 'succeeded' }, { transaction_id: txId, outcome: 'succeeded' }, { channel_reference: ref, outcome: 'declined' }]) {
    const twice = await refundSimulate(body);
    assert.equal(twice.status, 409, JSON.stringify(body));
    assert.equal(twice.body['error'].code, 'already_refunded');
  }
  assert.equal((await listSandboxNotifications(db.pool, { channel: 'apple_iap', channelReference: ref })).length, 2);
  assert.equal((await post('/simulate', { channel_reference: ref, outcome: 'succeeded' })).status, 409, 'the buyer cannot pay the same token again');
});

test('refund by transaction_id, reason 1, in another currency; a duplicated delivery is byte-identical and the same refund', async () => {
  const { ref, txId } = await paidPurchase(1980, 'USD');
  assert.equal(await faults({ channel: 'apple_iap', duplicate_rate: 1 }), 200);
  try {
    const refund = await refundSimulate({ transaction_id: txId, outcome: 'succeeded', reason: 1 });
    assert.equal(refund.status, 200, JSON.stringify(refund.body));
    assert.equal(refund.body['channel_reference'], ref);
    assert.equal(refund.body['revocation_reason'], 1);
    const got = (await waitReceived(ref, 3)).slice(1);
    assert.deepEqual(got[0]!.rawBody, got[1]!.rawBody);
    const results = await Promise.all(got.map((g) => verifyFor(connector, g, async () => 'USD')));
    assert.deepEqual(results[0], results[1]);
    assert.ok(results[0]!.ok && results[0]!.notification.kind === 'refund');
    assert.deepEqual(results[0]!.notification.refund, { state: 'succeeded', channelRefundId: `${txId}:refund`, channelReference: ref, amountMinor: 1980n, currency: 'USD', rawStatus: 'REFUND:1' });
  } finally {
    assert.equal(await faults(null, 'DELETE'), 200);
  }
});

test('declined and reversed: REFUND_DECLINED and REFUND_REVERSED arrive signed and are ignored with a reason; a reversed refund stays reversed', async () => {
  const { ref, txId } = await paidPurchase();
  const declined = await refundSimulate({ channel_reference: ref, outcome: 'declined' });
  assert.equal(declined.status, 200);
  assert.equal(declined.body['revocation_date'], null, 'a declined request changes nothing');
  assert.equal(declined.body['notification'].notification_type, 'REFUND_DECLINED');
  const [, declinedNote] = await waitReceived(ref, 2);
  assert.equal(signedTransactionOf(declinedNote!)['revocationDate'], undefined);
  const d = await verifyFor(connector, declinedNote!);
  assert.ok(d.ok && d.notification.kind === 'ignored');
  assert.match(d.notification.reason, /^REFUND_DECLINED/);
  assert.equal(d.notification.channelReference, ref);

  const nothingToReverse = await refundSimulate({ channel_reference: ref, outcome: 'reversed' });
  assert.deepEqual([nothingToReverse.status, nothingToReverse.body['error'].code], [409, 'not_refunded']);

  assert.equal((await refundSimulate({ channel_reference: ref, outcome: 'succeeded' })).status, 200);
  const reversed = await refundSimulate({ transaction_id: txId, outcome: 'reversed' });
  assert.equal(reversed.status, 200, JSON.stringify(reversed.body));
  assert.equal(reversed.body['revocation_date'], null);
  assert.notEqual(reversed.body['refund_reversed_at'], null);
  assert.equal(reversed.body['notification'].notification_type, 'REFUND_REVERSED');
  const notes = await waitReceived(ref, 4);
  const refundNote = await verifyFor(connector, notes[2]!);
  assert.ok(refundNote.ok && refundNote.notification.kind === 'refund');
  const reversedNote = notes[3]!;
  assert.equal(signedTransactionOf(reversedNote)['revocationDate'], undefined, 'the reversal gives the transaction back');
  const r = await verifyFor(connector, reversedNote);
  assert.ok(r.ok && r.notification.kind === 'ignored');
  assert.match(r.notification.reason, /^REFUND_REVERSED: .*a person must re-grant the content/);
  assert.equal(r.notification.channelReference, ref);
  // The Server API agrees: paid again.
  assert.equal((await connector.confirmPayment!({ channelReference: ref, currency: 'CNY', amountMinor: 600n, payload: { transaction_id: txId } })).state, 'succeeded');
  const again = await refundSimulate({ channel_reference: ref, outcome: 'succeeded' });
  assert.deepEqual([again.status, again.body['error'].code], [409, 'refund_reversed']);
  assert.equal((await listSandboxNotifications(db.pool, { channel: 'apple_iap', channelReference: ref })).length, 4);
});

test('refunds/simulate: unknown 404, not paid 409, bad input 400, in the Knowpay error shape; nothing is sent', async () => {
  const unknown = await refundSimulate({ channel_reference: randomUUID(), outcome: 'succeeded' });
  assert.equal(unknown.status, 404);
  assert.deepEqual(Object.keys(unknown.body['error']).sort(), ['code', 'message', 'param', 'type']);
  assert.deepEqual([unknown.body['error'].type, unknown.body['error'].code, unknown.body['error'].param], ['invalid_request_error', 'trade_not_found', 'channel_reference']);
  for (const body of [{ channel_reference: 'KP_NOT_A_UUID', outcome: 'succeeded' }, { transaction_id: '2000000999999999', outcome: 'succeeded' }, { transaction_id: 'abc', outcome: 'succeeded' }]) {
    const r = await refundSimulate(body);
    assert.deepEqual([r.status, r.body['error'].code], [404, 'trade_not_found'], JSON.stringify(body));
  }
  const pending = await createAndStart();
  const notPaid = await refundSimulate({ channel_reference: pending, outcome: 'succeeded' });
  assert.deepEqual([notPaid.status, notPaid.body['error'].code], [409, 'trade_not_paid']);
  assert.equal((await post('/simulate', { channel_reference: pending, outcome: 'canceled' })).status, 200);
  assert.deepEqual((await refundSimulate({ channel_reference: pending, outcome: 'declined' })).body['error'].code, 'trade_not_paid');
  const { ref, txId } = await paidPurchase();
  const bad: Array<[unknown, string]> = [
    [{ outcome: 'succeeded' }, 'channel_reference'],
    [{ channel_reference: ref, transaction_id: txId, outcome: 'succeeded' }, 'channel_reference'],
    [{ channel_reference: 42, outcome: 'succeeded' }, 'channel_reference'],
    [{ transaction_id: 2000000000000001, outcome: 'succeeded' }, 'transaction_id'],
    [{ channel_reference: ref }, 'outcome'],
    [{ channel_reference: ref, outcome: 'failed' }, 'outcome'],
    [{ channel_reference: ref, outcome: 'succeeded', reason: 2 }, 'reason'],
    [{ channel_reference: ref, outcome: 'succeeded', reason: '1' }, 'reason'],
  ];
  for (const [body, param] of bad) {
    const r = await refundSimulate(body);
    assert.equal(r.status, 400, JSON.stringify(body));
    assert.equal(r.body['error'].param, param, JSON.stringify(body));
  }
  const notObject = await fetch(`${base}/sandbox/apple_iap/refunds/simulate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '[1]' });
  assert.equal(notObject.status, 400);
  for (const r of [pending, ref]) assert.equal((await listSandboxNotifications(db.pool, { channel: 'apple_iap', channelReference: r })).length, r === ref ? 1 : 0);
  assert.equal((await refundSimulate({ channel_reference: ref.toUpperCase(), outcome: 'succeeded' })).status, 200, 'the token is case-insensitive, as a UUID');
  await waitReceived(ref, 2);
});

test('forged and tampered refund notifications are rejected; Apple\'s real roots reject the sandbox\'s refunds', async () => {
  const { ref, txId } = await paidPurchase();
  assert.equal((await refundSimulate({ channel_reference: ref, outcome: 'succeeded' })).status, 200);
  const [, note] = await waitReceived(ref, 2);
  const rejectedWith = async (raw: Buffer, reason: RegExp, c = connector) => {
    const r = await c.verifyNotification({ headers: { 'content-type': 'application/json' }, rawBody: raw }, cny);
    assert.equal(r.ok, false, String(reason));
    assert.match(!r.ok ? r.reason : '', reason);
  };
  const real = createAppleIapConnector({ bundleId: APPLE_SANDBOX_BUNDLE_ID, environment: 'Sandbox', rootCertificates: appleRootCertificates(), enableOnlineChecks: false });
  await rejectedWith(note!.rawBody, /VERIFICATION_FAILURE/, real);
  const signedPayload = JSON.parse(note!.rawBody.toString('utf8')).signedPayload as string;
  const [h, p, s] = signedPayload.split('.') as [string, string, string];
  const outer = decodeJwsUnverified(signedPayload)!.payload;
  const wrap = (jws: string) => Buffer.from(JSON.stringify({ signedPayload: jws }));
  // A byte changed in transit.
  await rejectedWith(wrap(`${h}.${p.slice(0, 99)}${p[99] === 'A' ? 'B' : 'A'}${p.slice(100)}.${s}`), /VERIFICATION_FAILURE/);
  // The payload edited, the signature kept: another notification UUID (to replay as new), another type.
  for (const edit of [{ notificationUUID: randomUUID() }, { notificationType: 'REVOKE' }]) {
    await rejectedWith(wrap(`${h}.${Buffer.from(JSON.stringify({ ...outer, ...edit })).toString('base64url')}.${s}`), /VERIFICATION_FAILURE/);
  }
  // Re-signed by another "App Store" (its own chain): the genuine transaction inside does not help.
  const otherKeys = generateAppleSandboxKeys();
  await rejectedWith(wrap(signAppStoreJws(outer, otherKeys.leafPrivateKey, sandboxChainDer(otherKeys))), /VERIFICATION_FAILURE/);
  // A forged REFUND around a forged transaction of a real purchase, under a genuine-looking chain.
  const tx = decodeJwsUnverified((outer['data'] as Record<string, string>)['signedTransactionInfo'])!.payload;
  const forgedTx = signAppStoreJws({ ...tx, price: 1 }, otherKeys.leafPrivateKey, sandboxChainDer(otherKeys));
  const chainOfOurs = sandboxChainDer(keys);
  const mixed = signAppStoreJws({ ...outer, notificationUUID: randomUUID(), data: { ...(outer['data'] as object), signedTransactionInfo: forgedTx } }, otherKeys.leafPrivateKey, chainOfOurs);
  await rejectedWith(wrap(mixed), /VERIFICATION_FAILURE/);
  // The genuine notification still verifies, for the refund of this transaction only.
  const ok = await verifyFor(connector, note!);
  assert.ok(ok.ok && ok.notification.kind === 'refund' && ok.notification.refund.channelRefundId === `${txId}:refund`);
});

// ---- Delivery: faults, several processes, Apple's retry schedule ---------------------------------------------

test('faults: a dropped notification never arrives (the app\'s proof still settles); a duplicate arrives twice, byte-identical', async () => {
  assert.equal(await faults({ channel: 'apple_iap', drop_rate: 1 }), 200);
  try {
    const dropped = await createAndStart();
    const sim = await post('/simulate', { channel_reference: dropped, outcome: 'succeeded' });
    const [row] = await waitForSandboxNotifications(db.pool, { channel: 'apple_iap', channelReference: dropped, timeoutMs: 2000 });
    assert.equal(row!.status, 'dropped');
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(received.filter((r) => r.name === dropped).length, 0);
    assert.equal((await connector.confirmPayment!({ channelReference: dropped, currency: 'CNY', amountMinor: 600n, payload: { signed_transaction: sim.body['signed_transaction'] } })).state, 'succeeded');

    assert.equal(await faults({ channel: 'apple_iap', drop_rate: 0, duplicate_rate: 1 }), 200);
    const dup = await createAndStart();
    await post('/simulate', { channel_reference: dup, outcome: 'succeeded' });
    const got = await waitReceived(dup, 2);
    assert.deepEqual(got[0]!.rawBody, got[1]!.rawBody);
    for (const g of got) assert.equal((await verify(connector, g)).ok, true);
  } finally {
    assert.equal(await faults(null, 'DELETE'), 200);
  }
});

test('two service processes sharing one database: same purchases, each notification delivered once', async () => {
  const port = await freePort();
  const other = await buildApp(db.pool, port, TIME_SCALE);
  try {
    const refs = await Promise.all(Array.from({ length: 4 }, () => createAndStart()));
    for (const [i, ref] of refs.entries()) {
      const sim = await post('/simulate', { channel_reference: ref, outcome: 'succeeded' }, i % 2 ? base : `http://127.0.0.1:${port}`);
      assert.equal(sim.status, 200);
      assert.equal((await other.connector.confirmPayment!({ channelReference: ref, currency: 'CNY', amountMinor: 600n, payload: { transaction_id: sim.body['transaction_id'] } })).state, 'succeeded');
    }
    for (const ref of refs) await waitReceived(ref, 1);
    await new Promise((r) => setTimeout(r, 300));
    for (const ref of refs) assert.equal(received.filter((r) => r.name === ref).length, 1, `${ref} delivered once`);
    const ids = (await Promise.all(refs.map((ref) => fetch(`${base}/sandbox/apple_iap/purchases/${ref}`).then((r) => r.json() as Promise<Record<string, unknown>>)))).map((p) => p['transaction_id']);
    assert.equal(new Set(ids).size, refs.length, 'transaction ids are unique across processes');
  } finally {
    await other.app.close();
  }
});

test('Apple\'s schedule: retried 1 h and 12 h after the previous attempt (compressed) until 200–206; at most 6 attempts', async () => {
  const isolated = await freshDatabase();
  const port = await freePort();
  const scale = 0.000005; // 1 h → 18 ms, 12 h → 216 ms; the whole 157 h → 2.8 s
  const fast = await buildApp(isolated.pool, port, scale);
  const target = `http://127.0.0.1:${port}`;
  try {
    const statusOf = (n: number) => [500, 207, 206][n - 1] ?? 200;
    const ref = randomUUID();
    answers.set(ref, statusOf);
    const t0 = Date.now();
    assert.equal((await post('/simulate', { channel_reference: ref, outcome: 'succeeded', product_id: 'coins', amount: 600, currency: 'CNY' }, target)).status, 200);
    const got = await waitReceived(ref, 3, 5000);
    const times = [t0, ...got.map((g) => g.at)];
    const gaps = times.slice(1).map((t, i) => t - times[i]!);
    for (const [i, want] of [0, 3600_000 * scale, 12 * 3600_000 * scale].entries()) {
      assert.ok(gaps[i]! >= want - 5 && gaps[i]! < want + 300, `attempt ${i + 1}: gap ${gaps[i]} ms, expected about ${want}`);
    }
    assert.equal(new Set(got.map((g) => g.rawBody.toString('base64'))).size, 1, 'every retry posts the same signed payload');
    await new Promise((r) => setTimeout(r, 600)); // past the next slot (24 h → 432 ms)
    assert.equal(received.filter((r) => r.name === ref).length, 3, 'nothing after 206');
    const [row] = await waitForSandboxNotifications(isolated.pool, { channel: 'apple_iap', channelReference: ref, timeoutMs: 1000 });
    assert.equal(row!.status, 'delivered');
    assert.deepEqual((await listSandboxNotificationAttempts(isolated.pool, row!.id)).map((a) => a.statusCode), [500, 207, 206]);

    const never = randomUUID();
    answers.set(never, () => 503);
    await post('/simulate', { channel_reference: never, outcome: 'succeeded', product_id: 'coins', amount: 600, currency: 'CNY' }, target);
    const [failed] = await waitForSandboxNotifications(isolated.pool, { channel: 'apple_iap', channelReference: never, timeoutMs: 10_000 });
    assert.equal(failed!.status, 'failed');
    assert.equal(failed!.attempts, 6);
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(received.filter((r) => r.name === never).length, 6);
  } finally {
    await fast.app.close();
    await isolated.drop();
  }
});

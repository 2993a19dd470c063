/**
 * The connector against the sandbox over real HTTP (127.0.0.1), through the official
 * `@googleapis/androidpublisher` SDK and google-auth-library: the code that runs here is the
 * code that would run against Google, apart from the token URL and the trusted push key.
 * The module (index.ts) builds both sides, as the service does.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createPublicKey, generateKeyPairSync, type JsonWebKey } from 'node:crypto';
import Fastify, { type FastifyInstance } from 'fastify';
import { androidpublisher, auth as sdkAuth } from '@googleapis/androidpublisher';
import { OAuth2Client } from 'google-auth-library';
import { freshDatabase, type TestDatabase } from '../../../test/support/db.ts';
import { ChannelError, type ChannelConnector, type CreatePaymentInput, type NotificationInput } from '../types.ts';
import type { ChannelAuditEntry } from '../module.ts';
import { faultsPlugin } from '../sandbox/faults.ts';
import { listSandboxNotificationAttempts, listSandboxNotifications, waitForSandboxNotifications } from '../sandbox/dispatcher.ts';
import { getSetting } from '../../store/settings.ts';
import { ANDROIDPUBLISHER_SCOPE, JWT_BEARER_GRANT, serviceAccountTokenClient } from './auth.ts';
import { createGooglePlayConnector, type GooglePlayConfig, type GooglePlayConnector } from './connector.ts';
import {
  GOOGLE_PLAY_SANDBOX_PACKAGE, GOOGLE_PLAY_SANDBOX_PUSH_ACCOUNT, GOOGLE_PLAY_SANDBOX_SERVICE_ACCOUNT, GOOGLE_PLAY_SANDBOX_SUBSCRIPTION,
  googlePlayModule,
} from './index.ts';
import { PUBSUB_PUSH_SCHEDULE_MS, pushBody, signPushToken, type GooglePlaySandboxKeys, type PushPayload } from './sandbox.ts';
import { loadPrivateKey, signJwtRs256 } from './sign.ts';
import { rejectsWith } from '../../../test/support/assertions.ts';
import { freePort } from '../../store/embedded.ts';

const TIME_SCALE = 0.001;
const PKG = GOOGLE_PLAY_SANDBOX_PACKAGE;
const NOTIFY_PATH = '/v1/notify/google_play';

interface Received { headers: Record<string, string | string[] | undefined>; rawBody: Buffer; at: number }

let db: TestDatabase;
let app: FastifyInstance;
let base = '';
let keys: GooglePlaySandboxKeys;
let connector: ChannelConnector;
let audits: ChannelAuditEntry[] = [];
const received: Received[] = [];
/** What the notify receiver answers to the n-th (1-based) delivery of a message id. */
let answer: (messageId: string, n: number) => number = () => 200;
let refCounter = 0;

before(async () => {
  db = await freshDatabase();
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  const instance = await googlePlayModule.create({
    pool: db.pool, publicBaseUrl: base, sandboxTimeScale: TIME_SCALE, env: {},
    audit: (e) => audits.push(e),
  });
  connector = instance.connector;
  assert.ok(instance.mountSandbox, 'no real credentials: the sandbox is mounted');
  keys = (await getSetting<GooglePlaySandboxKeys>(db.pool, 'sandbox.google_play.keys'))!;
  app = Fastify();
  await app.register(faultsPlugin, { pool: db.pool });
  await instance.mountSandbox(app);
  // The service's notify route, as src/http/routes/notify.ts receives it: raw bytes and headers.
  await app.register(async (r) => {
    r.removeAllContentTypeParsers();
    r.addContentTypeParser('*', { parseAs: 'buffer' }, (_q, body, done) => done(null, body));
    r.post(NOTIFY_PATH, async (req, reply) => {
      const rawBody = req.body as Buffer;
      received.push({ headers: req.headers, rawBody, at: Date.now() });
      const id = messageIdOf(rawBody);
      const n = received.filter((x) => messageIdOf(x.rawBody) === id).length;
      return reply.code(answer(id, n)).send('');
    });
  });
  await app.listen({ host: '127.0.0.1', port });
});

after(async () => {
  await app.close();
  await db.drop();
});

function messageIdOf(raw: Buffer): string {
  try {
    return (JSON.parse(raw.toString('utf8')) as { message: { messageId: string } }).message.messageId;
  } catch {
    return '';
  }
}

function newRef(tag: string): string {
  return `KP${tag.toUpperCase()}${process.pid}X${++refCounter}`.slice(0, 32);
}

function input(ref: string, over: Partial<CreatePaymentInput> = {}): CreatePaymentInput {
  return {
    channelReference: ref, paymentId: 'pay_' + ref, orderId: 'ord_' + ref, customerId: 'cus_test',
    items: [{ productId: 'prod_course', quantity: 1, storeProductIds: { google_play: 'course.typescript_advanced' } }],
    method: 'in_app', amountMinor: 1999n, currency: 'USD', subject: 'TypeScript advanced',
    notifyUrl: `${base}${NOTIFY_PATH}`, expiresAt: new Date(Date.now() + 30 * 60_000), ...over,
  };
}

async function post(path: string, body: unknown) {
  const res = await fetch(`${base}/sandbox/google_play${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: res.status, body: (await res.json()) as Record<string, any> };
}

/** createPayment, then what the app does with the action: launch the billing flow (device endpoint). */
async function startPurchase(ref: string, over: Partial<CreatePaymentInput> = {}) {
  const created = await connector.createPayment(input(ref, over));
  assert.equal(created.action.type, 'app');
  const params = created.action.type === 'app' ? created.action.params : {};
  const device = await post('/purchase', params);
  assert.equal(device.status, 200, JSON.stringify(device.body));
  return { params, purchase: device.body };
}

async function simulate(ref: string, outcome: string) {
  return post('/simulate', { channel_reference: ref, outcome });
}

async function waitForPush(messageId: string, count = 1, timeoutMs = 5000): Promise<Received[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const got = received.filter((r) => messageIdOf(r.rawBody) === messageId);
    if (got.length >= count) return got;
    if (Date.now() > deadline) throw new Error(`message ${messageId}: ${got.length} of ${count} pushes after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const usd = async () => 'USD';
const unknownRef = async () => null;

function asInput(r: Received): NotificationInput {
  return { headers: r.headers, rawBody: r.rawBody, contentType: r.headers['content-type'] as string };
}

async function sandboxPurchase(ref: string) {
  const res = await fetch(`${base}/sandbox/google_play/purchases/${ref}`);
  return { status: res.status, body: (await res.json()) as Record<string, any> };
}

// ---- Happy paths -------------------------------------------------------------------------------

test('createPayment makes no call and answers what BillingFlowParams needs', async () => {
  audits = [];
  const ref = newRef('act');
  const created = await connector.createPayment(input(ref));
  assert.equal(created.action.type, 'app');
  const params = created.action.type === 'app' ? created.action.params : {};
  assert.equal(params['package_name'], PKG);
  assert.equal(params['product_id'], 'course.typescript_advanced');
  assert.equal(params['obfuscated_account_id'], ref);
  assert.equal(params['quantity'], 1);
  assert.match(String(params['obfuscated_profile_id']), /^[A-Za-z0-9_-]{43}$/);
  assert.equal(created.channelTransactionId, undefined);
  assert.deepEqual(audits.map((a) => a.operation), ['create_payment']);
  assert.doesNotMatch(JSON.stringify(audits), new RegExp(String(params['obfuscated_profile_id'])));
  // Nothing exists at Google yet.
  assert.equal((await sandboxPurchase(ref)).status, 404);
  assert.deepEqual(await connector.queryPayment({ channelReference: ref, currency: 'USD' }), { state: 'pending', channelReference: ref, rawStatus: 'PURCHASE_TOKEN_REQUIRED' });
});

test('device purchase → pending; simulate succeeded → confirm says succeeded and acknowledges, once', async () => {
  const ref = newRef('conf');
  const { purchase } = await startPurchase(ref);
  assert.equal(purchase['purchase_state'], 2);
  assert.match(purchase['purchase_token'], /^[a-z]{24}\.AO-J1O[A-Za-z0-9_-]{120}$/);
  assert.match(purchase['order_id'], /^GPA\.\d{4}-\d{4}-\d{4}-\d{5}$/);
  const payload = { purchase_token: purchase['purchase_token'], product_id: 'course.typescript_advanced' };

  audits = [];
  const pending = await connector.confirmPayment!({ channelReference: ref, currency: 'USD', amountMinor: 1999n, payload });
  assert.deepEqual(pending, { state: 'pending', channelReference: ref, channelTransactionId: purchase['order_id'], rawStatus: 'PENDING' });
  assert.deepEqual(audits.map((a) => a.operation), ['oauth_token', 'get_purchase'], 'a pending purchase is not acknowledged');

  const sim = await simulate(ref, 'succeeded');
  assert.equal(sim.status, 200);
  assert.equal(sim.body['purchase_token'], purchase['purchase_token'], 'simulate answers what the device receives');
  assert.equal(sim.body['purchase_state'], 0);

  audits = [];
  const paid = await connector.confirmPayment!({ channelReference: ref, currency: 'USD', amountMinor: 1999n, payload });
  assert.deepEqual(paid, { state: 'succeeded', channelReference: ref, channelTransactionId: purchase['order_id'], rawStatus: 'PURCHASED' });
  assert.equal(paid.amountMinor, undefined, 'the Play API reports no price');
  assert.deepEqual(audits.map((a) => a.operation), ['get_purchase', 'acknowledge_purchase']);
  assert.equal((await sandboxPurchase(ref)).body['acknowledgement_state'], 1);
  const get = audits[0]!;
  assert.equal(get.channelReference, ref);
  assert.equal((get.response as any).data.purchaseState, 0);
  const auditText = JSON.stringify(audits);
  assert.doesNotMatch(auditText, new RegExp(purchase['purchase_token'].slice(0, 30)));
  assert.doesNotMatch(auditText, /ya29\.|PRIVATE KEY/);
  assert.match(auditText, /REDACTED sha256:/);

  // Confirming again reads the purchase and does not acknowledge twice.
  audits = [];
  assert.equal((await connector.confirmPayment!({ channelReference: ref, currency: 'USD', amountMinor: 1999n, payload })).state, 'succeeded');
  assert.deepEqual(audits.map((a) => a.operation), ['get_purchase']);
});

test('simulate succeeded pushes a signed RTDN; verify reads the purchase, acknowledges it and says succeeded', async () => {
  const ref = newRef('rtdn');
  const { purchase } = await startPurchase(ref);
  const sim = await simulate(ref, 'succeeded');
  const messageId = sim.body['notification'].message_id as string;
  assert.match(messageId, /^\d{16}$/);
  const [push] = await waitForPush(messageId);
  assert.equal(push!.headers['content-type'], 'application/json');
  assert.match(String(push!.headers['authorization']), /^Bearer [\w-]+\.[\w-]+\.[\w-]+$/);
  assert.match(String(push!.headers['user-agent']), /APIs-Google/);
  const body = JSON.parse(push!.rawBody.toString('utf8'));
  assert.equal(body.subscription, GOOGLE_PLAY_SANDBOX_SUBSCRIPTION);
  assert.equal(body.message.message_id, messageId);
  const rtdn = JSON.parse(Buffer.from(body.message.data, 'base64').toString('utf8'));
  assert.equal(rtdn.packageName, PKG);
  assert.deepEqual(rtdn.oneTimeProductNotification, { version: '1.0', notificationType: 1, purchaseToken: purchase['purchase_token'], sku: 'course.typescript_advanced' });

  // Not yet acknowledged: the receiver here is not the service.
  assert.equal((await sandboxPurchase(ref)).body['acknowledgement_state'], 0);
  // A reference the service does not hold: translated, but not acknowledged.
  const unknown = await connector.verifyNotification(asInput(push!), unknownRef);
  assert.ok(unknown.ok, !unknown.ok ? unknown.reason : '');
  assert.equal((await sandboxPurchase(ref)).body['acknowledgement_state'], 0);

  const verified = await connector.verifyNotification(asInput(push!), usd);
  assert.ok(verified.ok, !verified.ok ? verified.reason : '');
  assert.deepEqual(verified.notification, {
    eventId: messageId, kind: 'payment', appId: PKG,
    trade: { state: 'succeeded', channelReference: ref, channelTransactionId: purchase['order_id'], rawStatus: 'PURCHASED' },
  });
  assert.equal(connector.appId, PKG);
  assert.equal((await sandboxPurchase(ref)).body['acknowledgement_state'], 1);
  // The redelivered message verifies again (idempotent), with the same event id.
  const again = await connector.verifyNotification(asInput(push!), usd);
  assert.ok(again.ok && again.notification.eventId === messageId);
  const [row] = await waitForSandboxNotifications(db.pool, { channel: 'google_play', channelReference: ref, timeoutMs: 5000 });
  assert.equal(row!.status, 'delivered');
  assert.equal(row!.eventId, messageId);
});

test('simulate canceled and failed cancel the purchase: RTDN CANCELED, confirm and verify say closed', async () => {
  for (const outcome of ['canceled', 'failed']) {
    const ref = newRef(outcome.slice(0, 3));
    const { purchase } = await startPurchase(ref);
    const sim = await simulate(ref, outcome);
    assert.equal(sim.status, 200);
    assert.equal(sim.body['purchase_state'], 1);
    const [push] = await waitForPush(sim.body['notification'].message_id);
    const rtdn = JSON.parse(Buffer.from(JSON.parse(push!.rawBody.toString()).message.data, 'base64').toString());
    assert.equal(rtdn.oneTimeProductNotification.notificationType, 2);
    const verified = await connector.verifyNotification(asInput(push!), usd);
    assert.ok(verified.ok && verified.notification.kind === 'payment');
    assert.equal(verified.notification.trade.state, 'closed');
    assert.equal(verified.notification.trade.rawStatus, 'CANCELED');
    const confirmed = await connector.confirmPayment!({ channelReference: ref, currency: 'USD', amountMinor: 1999n, payload: { purchase_token: purchase['purchase_token'], product_id: 'course.typescript_advanced' } });
    assert.equal(confirmed.state, 'closed');
    assert.equal((await sandboxPurchase(ref)).body['acknowledgement_state'], 0, 'a canceled purchase is never acknowledged');
    assert.equal((await simulate(ref, 'succeeded')).status, 409);
  }
});

test('the Play Console test notification verifies and is ignored', async () => {
  const sent = await post('/test_notification', {});
  assert.equal(sent.status, 200);
  const [push] = await waitForPush(sent.body['message_id']);
  const verified = await connector.verifyNotification(asInput(push!), usd);
  assert.deepEqual(verified, { ok: true, notification: { eventId: sent.body['message_id'], kind: 'ignored', reason: 'Play Console test notification', appId: PKG } });
});

// ---- Forged and tampered pushes --------------------------------------------------------------------

/** A genuine push for a paid purchase, to forge variants of. */
async function genuinePush(): Promise<{ ref: string; push: Received; payload: PushPayload; token: string }> {
  const ref = newRef('forge');
  const { purchase } = await startPurchase(ref);
  const sim = await simulate(ref, 'succeeded');
  const [push] = await waitForPush(sim.body['notification'].message_id);
  const body = JSON.parse(push!.rawBody.toString());
  const payload: PushPayload = { message_id: body.message.messageId, publish_time: body.message.publishTime, data: body.message.data, subscription: body.subscription };
  return { ref, push: push!, payload, token: purchase['purchase_token'] };
}

const signer = (over: Partial<Parameters<typeof signPushToken>[0]> = {}) => ({
  privateKey: loadPrivateKey(keys.googlePrivateKey), kid: keys.googleKeyId, audience: `${base}${NOTIFY_PATH}`,
  serviceAccountEmail: GOOGLE_PLAY_SANDBOX_PUSH_ACCOUNT, serviceAccountId: keys.pushServiceAccountId, ...over,
});

function pushInput(payload: PushPayload, authorization: string | undefined, rawBody: Buffer = Buffer.from(pushBody(payload))): NotificationInput {
  return { headers: { 'content-type': 'application/json', ...(authorization !== undefined ? { authorization } : {}) }, rawBody, contentType: 'application/json' };
}

function withData(payload: PushPayload, edit: (rtdn: any) => void): PushPayload {
  const rtdn = JSON.parse(Buffer.from(payload.data, 'base64').toString('utf8'));
  edit(rtdn);
  return { ...payload, data: Buffer.from(JSON.stringify(rtdn)).toString('base64') };
}

test('pushes without a valid Google OIDC token are refused before anything is read, with 401', async () => {
  const { payload } = await genuinePush();
  const now = new Date();
  const good = signPushToken(signer(), now);
  // Our re-signed genuine push verifies: the cases below differ only in what they change.
  const ok = await connector.verifyNotification(pushInput(payload, `Bearer ${good}`), usd);
  assert.ok(ok.ok, !ok.ok ? ok.reason : '');

  const otherKey = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  const cases: Array<[string, string | undefined, RegExp]> = [
    ['no Authorization', undefined, /missing Authorization/],
    ['Basic scheme', 'Basic dXNlcjpwYXNz', /missing Authorization/],
    ['not a JWT', 'Bearer not-a-jwt', /malformed/],
    ['signed by another key, same kid', `Bearer ${signPushToken(signer({ privateKey: otherKey }), now)}`, /invalid token signature/],
    ['unknown kid', `Bearer ${signPushToken(signer({ kid: 'f'.repeat(40) }), now)}`, /unknown key/],
    ['wrong audience', `Bearer ${signPushToken(signer({ audience: 'https://evil.example/notify' }), now)}`, /wrong audience/],
    ['expired', `Bearer ${signPushToken(signer(), new Date(now.getTime() - 2 * 3600_000))}`, /expired/],
    ['issued in the future', `Bearer ${signPushToken(signer(), new Date(now.getTime() + 2 * 3600_000))}`, /not yet valid/],
    ['another service account', `Bearer ${signPushToken(signer({ serviceAccountEmail: 'attacker@evil.iam.gserviceaccount.com' }), now)}`, /another service account/],
    ['email not verified', `Bearer ${signPushToken(signer(), now, { email_verified: false })}`, /not verified/],
    ['wrong issuer', `Bearer ${signPushToken(signer(), now, { iss: 'https://evil.example' })}`, /issuer/],
    ['lifetime too long', `Bearer ${signPushToken(signer(), now, { exp: Math.floor(now.getTime() / 1000) + 3 * 86400 })}`, /too long/],
  ];
  const [h, p] = good.split('.');
  const noneHeader = Buffer.from(JSON.stringify({ alg: 'none', kid: keys.googleKeyId, typ: 'JWT' })).toString('base64url');
  cases.push(['alg none', `Bearer ${noneHeader}.${p}.AAAA`, /algorithm none/]);
  cases.push(['tampered claims', `Bearer ${h}.${Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(p!, 'base64url').toString()), email: GOOGLE_PLAY_SANDBOX_PUSH_ACCOUNT, aud: 'x' })).toString('base64url')}.${good.split('.')[2]}`, /signature|audience/]);
  audits = [];
  for (const [name, authorization, reason] of cases) {
    const result = await connector.verifyNotification(pushInput(payload, authorization), usd);
    assert.equal(result.ok, false, name);
    const why = !result.ok ? result.reason : '';
    assert.match(why, /^unauthenticated: /, name);
    assert.match(why, reason, name);
    assert.doesNotMatch(why, /eyJ[\w-]+\.eyJ/, `${name}: the reason does not quote the token`);
    assert.equal(connector.ackFailure(why).statusCode, 401, name);
  }
  assert.deepEqual(audits, [], 'no API call for an unauthenticated push');
});

test('tampered notification data: only what the Play API says is believed', async () => {
  const { ref, payload, token } = await genuinePush();
  const auth = () => `Bearer ${signPushToken(signer(), new Date())}`;
  const verify = (p: PushPayload, raw?: Buffer<ArrayBufferLike>) => connector.verifyNotification(pushInput(p, auth(), raw), usd);

  // A token nobody issued: Google finds no purchase.
  const forgedToken = await verify(withData(payload, (n) => { n.oneTimeProductNotification.purchaseToken = token.slice(0, -4) + 'AAAA'; }));
  assert.equal(forgedToken.ok, false);
  assert.match(!forgedToken.ok ? forgedToken.reason : '', /purchase_token_not_found/);
  assert.equal(connector.ackFailure(!forgedToken.ok ? forgedToken.reason : '').statusCode, 400);
  // The right token under another sku: Google answers Invalid Value.
  const otherSku = await verify(withData(payload, (n) => { n.oneTimeProductNotification.sku = 'coins.pack_100'; }));
  assert.equal(otherSku.ok, false);
  assert.match(!otherSku.ok ? otherSku.reason : '', /invalid/);
  // CANCELED claimed for a purchased purchase: the API's state wins.
  const flipped = await verify(withData(payload, (n) => { n.oneTimeProductNotification.notificationType = 2; }));
  assert.ok(flipped.ok && flipped.notification.kind === 'payment');
  assert.equal(flipped.notification.trade.state, 'succeeded');
  assert.equal(flipped.notification.trade.channelReference, ref);
  // Another package: no API call, and the foreign appId makes the service refuse it.
  audits = [];
  const foreign = await verify(withData(payload, (n) => { n.packageName = 'com.evil.app'; }));
  assert.deepEqual(foreign, { ok: true, notification: { eventId: payload.message_id, kind: 'ignored', reason: 'notification for package com.evil.app', appId: 'com.evil.app' } });
  assert.notEqual(foreign.ok && foreign.notification.appId, connector.appId);
  assert.deepEqual(audits, []);
  // Structural damage.
  const structural: Array<[string, PushPayload | Buffer, RegExp]> = [
    ['data not base64', { ...payload, data: '***' }, /base64/],
    ['data not JSON', { ...payload, data: Buffer.from('{"packageName":').toString('base64') }, /not a JSON object/],
    ['no notification', withData(payload, (n) => { delete n.oneTimeProductNotification; }), /no notification/],
    ['two notifications', withData(payload, (n) => { n.testNotification = { version: '1.0' }; }), /several/],
    ['bad token chars', withData(payload, (n) => { n.oneTimeProductNotification.purchaseToken = 'a/b'; }), /purchaseToken/],
    ['type as string', withData(payload, (n) => { n.oneTimeProductNotification.notificationType = '1'; }), /notificationType/],
    ['another subscription', { ...payload, subscription: 'projects/evil/subscriptions/x' }, /another subscription/],
    ['no messageId', Buffer.from(JSON.stringify({ message: { data: payload.data }, subscription: payload.subscription })), /messageId/],
    ['ids disagree', Buffer.from(JSON.stringify({ message: { data: payload.data, messageId: '1', message_id: '2' }, subscription: payload.subscription })), /differ/],
    ['empty', Buffer.alloc(0), /empty/],
    ['huge', Buffer.alloc(70 * 1024, 0x20), /larger/],
    ['array', Buffer.from('[]'), /not a JSON object/],
  ];
  for (const [name, p, reason] of structural) {
    const result = Buffer.isBuffer(p) ? await verify(payload, p) : await verify(p);
    assert.equal(result.ok, false, name);
    assert.match(!result.ok ? result.reason : '', reason, name);
  }
  const wrongType = await connector.verifyNotification({ ...pushInput(payload, auth()), contentType: 'text/plain' }, usd);
  assert.match(!wrongType.ok ? wrongType.reason : '', /content type/);
});

test('subscription notifications and voided subscriptions are genuine but ignored, with a reason, without an API call', async () => {
  const { payload } = await genuinePush();
  const auth = `Bearer ${signPushToken(signer(), new Date())}`;
  audits = [];
  for (const [key, inner, reason] of [
    ['subscriptionNotification', { version: '1.0', notificationType: 4, purchaseToken: 'abc.AO-J1O', subscriptionId: 'monthly' }, /subscriptionNotification is not handled/],
    ['voidedPurchaseNotification', { purchaseToken: 'abc.AO-J1O', orderId: 'GPA.1234-5678-9012-34567', productType: 1, refundType: 1 }, /voidedPurchaseNotification for a subscription/],
  ] as const) {
    const p = withData(payload, (n) => { delete n.oneTimeProductNotification; n[key] = inner; });
    const result = await connector.verifyNotification(pushInput(p, auth), usd);
    assert.ok(result.ok && result.notification.kind === 'ignored', key);
    assert.match(result.notification.kind === 'ignored' ? result.notification.reason : '', reason);
  }
  assert.deepEqual(audits, []);
});

// ---- confirm: the purchase must be bound to this payment ----------------------------------------

test('confirm refuses a purchase of another reference, of another product, without the binding, or malformed', async () => {
  const refA = newRef('cfa');
  const refB = newRef('cfb');
  const a = await startPurchase(refA);
  await startPurchase(refB);
  await simulate(refA, 'succeeded');
  const payloadA = { purchase_token: a.purchase['purchase_token'], product_id: 'course.typescript_advanced' };
  // A's purchase token presented for B's payment.
  await rejectsWith(connector.confirmPayment!({ channelReference: refB, currency: 'USD', amountMinor: 1999n, payload: payloadA }), 'reference_mismatch', false);
  assert.equal((await sandboxPurchase(refA)).body['acknowledgement_state'], 0, 'a refused confirm acknowledges nothing');
  // The right token under another product id: Google's Invalid Value.
  await rejectsWith(connector.confirmPayment!({ channelReference: refA, currency: 'USD', amountMinor: 1999n, payload: { ...payloadA, product_id: 'coins.pack_100' } }), 'invalid', false);
  // A token nobody issued.
  await rejectsWith(connector.confirmPayment!({ channelReference: refA, currency: 'USD', amountMinor: 1999n, payload: { ...payloadA, purchase_token: 'zzz.AO-J1Onothing' } }), 'purchase_token_not_found', false);
  for (const payload of [{}, { purchase_token: 'x y', product_id: 'a' }, { purchase_token: 'abc', product_id: 'Bad-Id' }, { purchase_token: 7, product_id: 'a' }]) {
    await rejectsWith(connector.confirmPayment!({ channelReference: refA, currency: 'USD', amountMinor: 1999n, payload: payload as Record<string, unknown> }), 'payload_invalid', false);
  }

  // The app buys a cheap product under an expensive order's reference, with or without the tag it was given.
  const refC = newRef('cheap');
  const expensive = await connector.createPayment(input(refC));
  const tag = expensive.action.type === 'app' ? expensive.action.params['obfuscated_profile_id'] : '';
  for (const [i, profile] of [tag, undefined, 'made-up'].entries()) {
    const ref = i === 0 ? refC : newRef('cheap');
    const bought = await post('/purchase', { product_id: 'coins.pack_10', obfuscated_account_id: ref, ...(profile ? { obfuscated_profile_id: profile } : {}) });
    assert.equal(bought.status, 200);
    await simulate(ref, 'succeeded');
    await rejectsWith(connector.confirmPayment!({ channelReference: ref, currency: 'USD', amountMinor: 1999n, payload: { purchase_token: bought.body['purchase_token'], product_id: 'coins.pack_10' } }), 'purchase_not_bound', false);
    assert.equal((await sandboxPurchase(ref)).body['acknowledgement_state'], 0);
  }
  // The same refusal on the notification path.
  const cheapPush = (await listSandboxNotifications(db.pool, { channel: 'google_play', channelReference: refC }))[0]!;
  const [push] = await waitForPush(cheapPush.eventId);
  const viaPush = await connector.verifyNotification(asInput(push!), usd);
  assert.equal(viaPush.ok, false);
  assert.match(!viaPush.ok ? viaPush.reason : '', /purchase_not_bound/);
});

test('quantity is bound: a purchase of another quantity is refused', async () => {
  const ref = newRef('qty');
  const created = await connector.createPayment(input(ref, { items: [{ productId: 'prod_coins', quantity: 3, storeProductIds: { google_play: 'coins.pack_100' } }] }));
  const params = created.action.type === 'app' ? created.action.params : {};
  assert.equal(params['quantity'], 3);
  const bought = await post('/purchase', { ...params, quantity: 1 });
  await simulate(ref, 'succeeded');
  await rejectsWith(connector.confirmPayment!({ channelReference: ref, currency: 'USD', amountMinor: 1999n, payload: { purchase_token: bought.body['purchase_token'], product_id: 'coins.pack_100' } }), 'purchase_not_bound');

  const ref2 = newRef('qty');
  const created2 = await connector.createPayment(input(ref2, { items: [{ productId: 'prod_coins', quantity: 3, storeProductIds: { google_play: 'coins.pack_100' } }] }));
  const bought2 = await post('/purchase', created2.action.type === 'app' ? created2.action.params : {});
  await simulate(ref2, 'succeeded');
  const ok = await connector.confirmPayment!({ channelReference: ref2, currency: 'USD', amountMinor: 1999n, payload: { purchase_token: bought2.body['purchase_token'], product_id: 'coins.pack_100' } });
  assert.equal(ok.state, 'succeeded');
});

// ---- Acknowledgement ------------------------------------------------------------------------------

function sdkWithToken(accessToken: string) {
  const client = new sdkAuth.OAuth2();
  client.setCredentials({ access_token: accessToken, expiry_date: Date.now() + 3600_000 });
  return androidpublisher({ version: 'v3', auth: client });
}

const opts = () => ({ rootUrl: `${base}/sandbox/google_play/`, retry: false });

async function freshAccessToken(scope = ANDROIDPUBLISHER_SCOPE): Promise<string> {
  const iat = Math.floor(Date.now() / 1000);
  const assertion = signJwtRs256({ iss: GOOGLE_PLAY_SANDBOX_SERVICE_ACCOUNT, scope, aud: `${base}/sandbox/google_play/token`, iat, exp: iat + 3600 }, loadPrivateKey(keys.serviceAccountPrivateKey), keys.serviceAccountKeyId);
  const res = await fetch(`${base}/sandbox/google_play/token`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams({ grant_type: JWT_BEARER_GRANT, assertion }) });
  const body = (await res.json()) as Record<string, unknown>;
  assert.equal(res.status, 200, JSON.stringify(body));
  assert.equal(body['token_type'], 'Bearer');
  assert.equal(body['expires_in'], 3599);
  return body['access_token'] as string;
}

test('acknowledge is idempotent; a pending or canceled purchase cannot be acknowledged', async () => {
  const api = sdkWithToken(await freshAccessToken());
  const ref = newRef('ack');
  const { purchase } = await startPurchase(ref);
  const params = { packageName: PKG, productId: 'course.typescript_advanced', token: purchase['purchase_token'] as string };
  await assert.rejects(api.purchases.products.acknowledge({ ...params, requestBody: {} }, opts()), (err: any) => {
    assert.equal(err.status, 400);
    assert.equal(err.response.data.error.errors[0].reason, 'invalidPurchaseState');
    return true;
  });
  await simulate(ref, 'succeeded');
  const first = await api.purchases.products.acknowledge({ ...params, requestBody: { developerPayload: 'kp' } }, opts());
  assert.equal(first.status, 204);
  const second = await api.purchases.products.acknowledge({ ...params, requestBody: {} }, opts());
  assert.equal(second.status, 204);
  const got = await api.purchases.products.get(params, opts());
  assert.equal(got.data.acknowledgementState, 1);
  assert.equal(got.data.developerPayload, 'kp', 'the second acknowledge changed nothing');
  assert.equal(got.data.kind, 'androidpublisher#productPurchase');
  assert.equal(got.data.purchaseType, 0, 'sandbox purchases are test purchases');
  assert.match(got.data.purchaseTimeMillis ?? '', /^\d{13}$/);
  // The connector sees it acknowledged and does not call acknowledge again.
  audits = [];
  await connector.confirmPayment!({ channelReference: ref, currency: 'USD', amountMinor: 1999n, payload: { purchase_token: params.token, product_id: params.productId } });
  assert.deepEqual(audits.map((a) => a.operation), ['get_purchase']);

  const canceledRef = newRef('ackc');
  const c = await startPurchase(canceledRef);
  await simulate(canceledRef, 'canceled');
  await assert.rejects(api.purchases.products.acknowledge({ ...params, token: c.purchase['purchase_token'], requestBody: {} }, opts()), (err: any) => err.status === 400);
});

// ---- API authentication -----------------------------------------------------------------------------

test('bad credentials get Google\'s real 401/403 answers; the connector raises', async () => {
  const ref = newRef('auth');
  const { purchase } = await startPurchase(ref);
  const params = { packageName: PKG, productId: 'course.typescript_advanced', token: purchase['purchase_token'] as string };
  const url = `${base}/sandbox/google_play/androidpublisher/v3/applications/${PKG}/purchases/products/${params.productId}/tokens/${params.token}`;

  const none = await fetch(url);
  assert.equal(none.status, 401);
  assert.match(none.headers.get('www-authenticate') ?? '', /^Bearer realm="https:\/\/accounts.google.com\/"$/);
  const noneBody = (await none.json()) as any;
  assert.equal(noneBody.error.status, 'UNAUTHENTICATED');
  assert.equal(noneBody.error.errors[0].reason, 'required');

  await assert.rejects(sdkWithToken('ya29.forged').purchases.products.get(params, opts()), (err: any) => {
    assert.equal(err.status, 401);
    assert.equal(err.response.data.error.code, 401);
    assert.match(err.response.data.error.message, /^Request had invalid authentication credentials/);
    assert.equal(err.response.data.error.errors[0].reason, 'authError');
    assert.match(err.response.headers.get('www-authenticate'), /error="invalid_token"/);
    return true;
  });
  await assert.rejects(sdkWithToken(await freshAccessToken('https://www.googleapis.com/auth/cloud-platform')).purchases.products.get(params, opts()), (err: any) => {
    assert.equal(err.status, 403);
    assert.equal(err.response.data.error.errors[0].reason, 'insufficientPermissions');
    return true;
  });
  const good = sdkWithToken(await freshAccessToken());
  await assert.rejects(good.purchases.products.get({ ...params, packageName: 'com.other.app' }, opts()), (err: any) => err.status === 401 && err.response.data.error.errors[0].reason === 'permissionDenied');
  assert.equal((await good.purchases.products.get(params, opts())).status, 200);

  // A connector holding another service account key: the token endpoint refuses the assertion.
  const otherKey = generateKeyPairSync('rsa', { modulusLength: 2048, privateKeyEncoding: { type: 'pkcs8', format: 'pem' }, publicKeyEncoding: { type: 'spki', format: 'pem' } });
  const forged = makeConnector({ auth: serviceAccountTokenClient({ clientEmail: GOOGLE_PLAY_SANDBOX_SERVICE_ACCOUNT, privateKey: otherKey.privateKey, privateKeyId: keys.serviceAccountKeyId, tokenUrl: `${base}/sandbox/google_play/token` }) });
  await rejectsWith(forged.confirmPayment!({ channelReference: ref, currency: 'USD', amountMinor: 1999n, payload: { purchase_token: params.token, product_id: params.productId } }), 'auth_failed', false);
});

test('the token endpoint refuses bad grants with Google\'s error answers', async () => {
  const iat = Math.floor(Date.now() / 1000);
  const key = loadPrivateKey(keys.serviceAccountPrivateKey);
  const aud = `${base}/sandbox/google_play/token`;
  const assertion = (claims: Record<string, unknown>, k = key, kid = keys.serviceAccountKeyId) =>
    signJwtRs256({ iss: GOOGLE_PLAY_SANDBOX_SERVICE_ACCOUNT, scope: ANDROIDPUBLISHER_SCOPE, aud, iat, exp: iat + 3600, ...claims }, k, kid);
  const exchange = async (form: Record<string, string>) => {
    const res = await fetch(aud, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams(form) });
    return { status: res.status, body: (await res.json()) as Record<string, string> };
  };
  const otherKey = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  const cases: Array<[string, Record<string, string>, string, RegExp]> = [
    ['no grant', { assertion: assertion({}) }, 'invalid_request', /grant_type/],
    ['other grant', { grant_type: 'client_credentials', assertion: assertion({}) }, 'unsupported_grant_type', /client_credentials/],
    ['no assertion', { grant_type: JWT_BEARER_GRANT }, 'invalid_request', /assertion/],
    ['garbage', { grant_type: JWT_BEARER_GRANT, assertion: 'abc' }, 'invalid_grant', /malformed/],
    ['other key', { grant_type: JWT_BEARER_GRANT, assertion: assertion({}, otherKey) }, 'invalid_grant', /^Invalid JWT Signature\.$/],
    ['other kid', { grant_type: JWT_BEARER_GRANT, assertion: assertion({}, key, 'abc') }, 'invalid_grant', /Signature/],
    ['unknown account', { grant_type: JWT_BEARER_GRANT, assertion: assertion({ iss: 'x@evil.iam.gserviceaccount.com' }) }, 'invalid_grant', /account not found/],
    ['audience', { grant_type: JWT_BEARER_GRANT, assertion: assertion({ aud: 'https://oauth2.googleapis.com/token' }) }, 'invalid_grant', /audience/],
    ['too long', { grant_type: JWT_BEARER_GRANT, assertion: assertion({ exp: iat + 7200 }) }, 'invalid_grant', /short-lived/],
    ['stale', { grant_type: JWT_BEARER_GRANT, assertion: assertion({ iat: iat - 7200, exp: iat - 3600 }) }, 'invalid_grant', /short-lived/],
    ['no scope', { grant_type: JWT_BEARER_GRANT, assertion: assertion({ scope: '' }) }, 'invalid_scope', /scope/],
  ];
  for (const [name, form, error, description] of cases) {
    const res = await exchange(form);
    assert.equal(res.status, 400, name);
    assert.equal(res.body['error'], error, name);
    assert.match(res.body['error_description'] ?? '', description, name);
  }
  assert.equal((await exchange({ grant_type: JWT_BEARER_GRANT, assertion: assertion({}) })).status, 200);
  const stored = await db.pool.query('SELECT token_sha256 FROM sandbox_google_play_access_tokens LIMIT 1');
  assert.match(stored.rows[0].token_sha256, /^[0-9a-f]{64}$/, 'only the hash of a token is kept');
});

function makeConnector(over: Partial<GooglePlayConfig> = {}): ChannelConnector {
  return createGooglePlayConnector({
    packageName: PKG,
    auth: serviceAccountTokenClient({ clientEmail: GOOGLE_PLAY_SANDBOX_SERVICE_ACCOUNT, privateKey: keys.serviceAccountPrivateKey, privateKeyId: keys.serviceAccountKeyId, tokenUrl: `${base}/sandbox/google_play/token` }),
    rootUrl: `${base}/sandbox/google_play/`,
    bindingSecret: keys.bindingSecret,
    push: { audience: `${base}${NOTIFY_PATH}`, serviceAccountEmail: GOOGLE_PLAY_SANDBOX_PUSH_ACCOUNT, trustedKeys: { [keys.googleKeyId]: keys.googlePublicKey } },
    acceptTestPurchases: true,
    retries: 0,
    ...over,
  });
}

test('a production-configured connector refuses test purchases and acknowledges nothing', async () => {
  const ref = newRef('prod');
  const { purchase } = await startPurchase(ref);
  const sim = await simulate(ref, 'succeeded');
  const production = makeConnector({ acceptTestPurchases: false });
  await rejectsWith(production.confirmPayment!({ channelReference: ref, currency: 'USD', amountMinor: 1999n, payload: { purchase_token: purchase['purchase_token'], product_id: 'course.typescript_advanced' } }), 'test_purchase_refused', false);
  const [push] = await waitForPush(sim.body['notification'].message_id);
  const viaPush = await production.verifyNotification(asInput(push!), usd);
  assert.match(!viaPush.ok ? viaPush.reason : '', /test_purchase_refused/);
  assert.equal((await sandboxPurchase(ref)).body['acknowledgement_state'], 0);
});

test('the sandbox publishes its push key as JWKS; google-auth-library verifies a push with it', async () => {
  const res = await fetch(`${base}/sandbox/google_play/oauth2/v3/certs`);
  const jwks = (await res.json()) as { keys: Array<Record<string, string>> };
  assert.equal(jwks.keys.length, 1);
  assert.equal(jwks.keys[0]!['kid'], keys.googleKeyId);
  assert.equal(jwks.keys[0]!['alg'], 'RS256');
  const token = signPushToken(signer(), new Date());
  const pem = createPublicKey({ key: jwks.keys[0] as JsonWebKey, format: 'jwk' }).export({ type: 'spki', format: 'pem' }).toString();
  const ticket = await new OAuth2Client().verifySignedJwtWithCertsAsync(token, { [keys.googleKeyId]: pem }, `${base}${NOTIFY_PATH}`, ['https://accounts.google.com']);
  assert.equal(ticket.getPayload()?.email, GOOGLE_PLAY_SANDBOX_PUSH_ACCOUNT);
});

// ---- Sandbox endpoints ----------------------------------------------------------------------------

test('device purchase and simulate: validation, idempotency, 404, 409, in the Knowpay error shape', async () => {
  const ref = newRef('dev');
  const body = { product_id: 'course.a', obfuscated_account_id: ref };
  const first = await post('/purchase', body);
  const again = await post('/purchase', body);
  assert.equal(again.status, 200);
  assert.equal(again.body['purchase_token'], first.body['purchase_token'], 'the same pending purchase');
  const other = await post('/purchase', { ...body, product_id: 'course.b' });
  assert.equal(other.status, 409);
  assert.equal(other.body['error'].code, 'purchase_in_progress');
  const bad: Array<[unknown, string]> = [
    [{ ...body, product_id: 'Course-A' }, 'product_id'],
    [{ ...body, obfuscated_account_id: 'x'.repeat(65) }, 'obfuscated_account_id'],
    [{ ...body, obfuscated_profile_id: 'y'.repeat(65) }, 'obfuscated_profile_id'],
    [{ ...body, quantity: 0 }, 'quantity'],
    [{ ...body, package_name: 'com.other' }, 'package_name'],
    [{ ...body, price: 1 }, 'price'],
    [[1], ''],
  ];
  for (const [b, param] of bad) {
    const res = await post('/purchase', b);
    assert.equal(res.status, 400, JSON.stringify(b));
    assert.equal(res.body['error'].type, 'invalid_request_error');
    if (param) assert.equal(res.body['error'].param, param);
  }
  assert.equal((await simulate('KPNOSUCHREF', 'succeeded')).status, 404);
  assert.equal((await simulate('KPNOSUCHREF', 'succeeded')).body['error'].code, 'purchase_not_found');
  assert.equal((await simulate(ref, 'refunded')).status, 400);
  assert.equal((await post('/simulate', { outcome: 'succeeded' })).status, 400);
  assert.equal((await simulate(ref, 'succeeded')).status, 200);
  const twice = await simulate(ref, 'canceled');
  assert.equal(twice.status, 409);
  assert.equal(twice.body['error'].code, 'purchase_already_final');
  assert.equal((await post('/purchase', body)).status, 409, 'no new purchase over a final one');
});

test('concurrent simulate calls settle a purchase once and publish one notification', async () => {
  const ref = newRef('race');
  await startPurchase(ref);
  const results = await Promise.all(['succeeded', 'canceled', 'succeeded', 'failed'].map((o) => simulate(ref, o)));
  assert.deepEqual(results.map((r) => r.status).sort(), [200, 409, 409, 409]);
  const rows = await listSandboxNotifications(db.pool, { channel: 'google_play', channelReference: ref });
  assert.equal(rows.length, 1);
});

test('a push that is not acknowledged is redelivered on Pub/Sub\'s backoff (compressed), same messageId, fresh token', async () => {
  const ref = newRef('retry');
  await startPurchase(ref);
  answer = (_id, n) => (n <= 2 ? 503 : 204);
  try {
    const sim = await simulate(ref, 'succeeded');
    const id = sim.body['notification'].message_id as string;
    const pushes = await waitForPush(id, 3, 10_000);
    const [row] = await waitForSandboxNotifications(db.pool, { channel: 'google_play', channelReference: ref, timeoutMs: 5000 });
    assert.equal(row!.status, 'delivered');
    assert.equal(row!.attempts, 3);
    assert.equal(row!.maxAttempts, 100);
    const attempts = await listSandboxNotificationAttempts(db.pool, row!.id);
    assert.deepEqual(attempts.map((a) => [a.statusCode, a.acknowledged]), [[503, false], [503, false], [204, true]]);
    assert.doesNotMatch(attempts.map((a) => a.requestBody).join(), /Bearer|eyJ[\w-]+\.eyJ/, 'the OIDC token is not stored with the attempt');
    // 10 s then 20 s, × 0.001.
    assert.ok(pushes[1]!.at - pushes[0]!.at >= 9, `gap ${pushes[1]!.at - pushes[0]!.at} ms`);
    assert.ok(pushes[2]!.at - pushes[1]!.at >= 19, `gap ${pushes[2]!.at - pushes[1]!.at} ms`);
    assert.equal(new Set(pushes.map((p) => p.rawBody.toString())).size, 1, 'the same message body');
    assert.equal(new Set(pushes.map((p) => String(p.headers['authorization']))).size >= 1, true);
    for (const p of pushes) assert.ok((await connector.verifyNotification(asInput(p), usd)).ok);
  } finally {
    answer = () => 200;
  }
  assert.deepEqual(PUBSUB_PUSH_SCHEDULE_MS.slice(0, 9).map((ms) => ms / 1000), [0, 10, 20, 40, 80, 160, 320, 600, 600]);
  assert.equal(PUBSUB_PUSH_SCHEDULE_MS.length, 100);
});

test('faults: a duplicated push arrives twice with the same messageId; a dropped one never', async () => {
  const setFaults = (body: unknown) => fetch(`${base}/sandbox/faults`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  try {
    assert.equal((await setFaults({ channel: 'google_play', duplicate_rate: 1 })).status, 200);
    const ref = newRef('dup');
    await startPurchase(ref);
    const sim = await simulate(ref, 'succeeded');
    const pushes = await waitForPush(sim.body['notification'].message_id, 2);
    const [a, b] = await Promise.all(pushes.map((p) => connector.verifyNotification(asInput(p), usd)));
    assert.ok(a!.ok && b!.ok && a!.notification.eventId === b!.notification.eventId);

    assert.equal((await setFaults({ channel: 'google_play', duplicate_rate: 0, drop_rate: 1 })).status, 200);
    const dropRef = newRef('drop');
    const { purchase } = await startPurchase(dropRef);
    const dropped = await simulate(dropRef, 'succeeded');
    const rows = await listSandboxNotifications(db.pool, { channel: 'google_play', channelReference: dropRef });
    assert.deepEqual(rows.map((r) => r.status), ['dropped']);
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(received.filter((r) => messageIdOf(r.rawBody) === dropped.body['notification'].message_id).length, 0);
    // The app's confirm still settles it.
    const confirmed = await connector.confirmPayment!({ channelReference: dropRef, currency: 'USD', amountMinor: 1999n, payload: { purchase_token: purchase['purchase_token'], product_id: 'course.typescript_advanced' } });
    assert.equal(confirmed.state, 'succeeded');
  } finally {
    await fetch(`${base}/sandbox/faults`, { method: 'DELETE' });
  }
});

// ---- Refusals and transport -----------------------------------------------------------------------

test('createPayment refuses what Play cannot sell; query and close need no call', async () => {
  const ref = newRef('refuse');
  await rejectsWith(connector.createPayment(input(ref, { items: [{ productId: 'prod_x', quantity: 1, storeProductIds: {} }] })), 'store_product_missing', false);
  await rejectsWith(connector.createPayment(input(ref, { items: [{ productId: 'prod_x', quantity: 1, storeProductIds: { apple_iap: 'com.x' } }] })), 'store_product_missing', false);
  await rejectsWith(connector.createPayment(input(ref, { items: [{ productId: 'prod_x', quantity: 1, storeProductIds: { google_play: 'Bad Id' } }] })), 'store_product_invalid', false);
  const two = input(ref).items;
  await rejectsWith(connector.createPayment(input(ref, { items: [...two, ...two] })), 'multiple_items_not_supported', false);
  await rejectsWith(connector.createPayment(input(ref, { items: [] })), 'multiple_items_not_supported', false);
  await rejectsWith(connector.createPayment(input(ref, { items: [{ ...two[0]!, quantity: 0 }] })), 'quantity_invalid', false);
  await rejectsWith(connector.createPayment(input(ref, { method: 'card' })), 'method_not_supported', false);
  await rejectsWith(connector.createPayment(input(ref, { currency: 'XYZ' })), 'currency_not_supported', false);
  await rejectsWith(connector.createPayment(input('K'.repeat(65))), 'reference_invalid', false);
  assert.deepEqual(await connector.closePayment({ channelReference: ref, currency: 'USD' }), { state: 'not_found', channelReference: ref, rawStatus: 'NOT_CANCELABLE_AT_GOOGLE_PLAY' });
  assert.deepEqual([...connector.methods], ['in_app']);
});

test('an unreachable API is a retryable ChannelError; verify answers 503 for it', async () => {
  const deadPort = await freePort();
  const dead = makeConnector({ rootUrl: `http://127.0.0.1:${deadPort}/`, timeoutMs: 2000 });
  const ref = newRef('dead');
  const { purchase } = await startPurchase(ref);
  await rejectsWith(dead.confirmPayment!({ channelReference: ref, currency: 'USD', amountMinor: 1999n, payload: { purchase_token: purchase['purchase_token'], product_id: 'course.typescript_advanced' } }), 'transport_error', true);
  const sim = await simulate(ref, 'succeeded');
  const [push] = await waitForPush(sim.body['notification'].message_id);
  const result = await dead.verifyNotification(asInput(push!), usd);
  assert.equal(result.ok, false);
  assert.match(!result.ok ? result.reason : '', /^unavailable: transport_error/);
  assert.equal(dead.ackFailure(!result.ok ? result.reason : '').statusCode, 503);
});

test('two service processes sharing one database: same keys, same purchases, each push delivered once', async () => {
  const second = await googlePlayModule.create({ pool: db.pool, publicBaseUrl: base, sandboxTimeScale: TIME_SCALE, env: {}, audit: () => {} });
  const ref = newRef('twoproc');
  const a = await connector.createPayment(input(ref));
  const b = await second.connector.createPayment(input(ref));
  assert.deepEqual(a.action, b.action, 'the stored sandbox keys are reused');
  const port2 = await freePort();
  const app2 = Fastify();
  await app2.register(faultsPlugin, { pool: db.pool });
  await second.mountSandbox!(app2);
  await app2.listen({ host: '127.0.0.1', port: port2 });
  try {
    const device = await post('/purchase', a.action.type === 'app' ? a.action.params : {});
    const sim = await fetch(`http://127.0.0.1:${port2}/sandbox/google_play/simulate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ channel_reference: ref, outcome: 'succeeded' }) });
    assert.equal(sim.status, 200);
    const id = ((await sim.json()) as any).notification.message_id as string;
    await waitForPush(id);
    const [row] = await waitForSandboxNotifications(db.pool, { channel: 'google_play', channelReference: ref, timeoutMs: 5000 });
    assert.equal(row!.attempts, 1);
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(received.filter((r) => messageIdOf(r.rawBody) === id).length, 1);
    // The second process's connector reads what the first process's sandbox stored.
    const paid = await second.connector.confirmPayment!({ channelReference: ref, currency: 'USD', amountMinor: 1999n, payload: { purchase_token: device.body['purchase_token'], product_id: 'course.typescript_advanced' } });
    assert.equal(paid.state, 'succeeded');
  } finally {
    await app2.close();
  }
});

// ---- Refunds: Google voids a purchase, the connector translates the voided RTDN -------------------------

/** A paid purchase, confirmed (so acknowledged) as the service does; answers its reference, token and order id. */
async function paidPurchase(tag: string, over: Partial<CreatePaymentInput> = {}): Promise<{ ref: string; token: string; orderId: string; productId: string }> {
  const ref = newRef(tag);
  const { purchase, params } = await startPurchase(ref, over);
  const sim = await simulate(ref, 'succeeded');
  assert.equal(sim.status, 200);
  await waitForPush(sim.body['notification'].message_id);
  const productId = params['product_id'] as string;
  const confirmed = await connector.confirmPayment!({ channelReference: ref, currency: 'USD', amountMinor: 1999n, payload: { purchase_token: purchase['purchase_token'], product_id: productId } });
  assert.equal(confirmed.state, 'succeeded');
  return { ref, token: purchase['purchase_token'], orderId: purchase['order_id'], productId };
}

const refundSimulate = (body: unknown) => post('/refunds/simulate', body);

function rtdnOf(r: Received): any {
  return JSON.parse(Buffer.from(JSON.parse(r.rawBody.toString('utf8')).message.data, 'base64').toString('utf8'));
}

test('refunds/simulate voids a paid purchase; the voided RTDN verifies, is resolved by token and bound, and is a store-started refund', async () => {
  const { ref, token, orderId, productId } = await paidPurchase('rfd');
  const refund = await refundSimulate({ channel_reference: ref, outcome: 'succeeded' });
  assert.equal(refund.status, 200, JSON.stringify(refund.body));
  assert.equal(refund.body['purchase_state'], 1, 'a refunded purchase reads as CANCELED');
  assert.equal(refund.body['acknowledgement_state'], 1, 'it was acknowledged before');
  assert.deepEqual([refund.body['voided_reason'], refund.body['voided_source']], [1, 0]);
  assert.ok(Date.parse(refund.body['voided_at']) <= Date.now());
  const messageId = refund.body['notification'].message_id as string;
  const [push] = await waitForPush(messageId);
  const rtdn = rtdnOf(push!);
  assert.equal(rtdn.packageName, PKG);
  assert.equal(rtdn.eventTimeMillis, String(Date.parse(refund.body['voided_at'])));
  assert.deepEqual(rtdn.voidedPurchaseNotification, { purchaseToken: token, orderId, productType: 2, refundType: 1 });

  audits = [];
  const verified = await connector.verifyNotification(asInput(push!), usd);
  assert.ok(verified.ok, !verified.ok ? verified.reason : '');
  assert.deepEqual(verified.notification, {
    eventId: messageId, kind: 'refund', appId: PKG,
    refund: { state: 'succeeded', channelRefundId: `${orderId}:voided`, channelReference: ref, rawStatus: 'VOIDED:FULL_REFUND' },
  });
  assert.equal(verified.notification.kind === 'refund' && verified.notification.refund.amountMinor, undefined, 'Play reports no price');
  const read = audits.find((a) => a.operation === 'get_purchase_v2');
  assert.ok(read && !read.error);
  assert.equal((read.response as any).data.purchaseStateContext.purchaseState, 'CANCELLED');
  assert.equal((read.response as any).data.productLineItem[0].productOfferDetails.refundableQuantity, 0);
  assert.doesNotMatch(JSON.stringify(audits), new RegExp(token.slice(0, 30)), 'the purchase token is fingerprinted');
  assert.ok(!audits.some((a) => a.operation === 'acknowledge_purchase'));
  // Redelivered: the same event, the same refund.
  assert.deepEqual(await connector.verifyNotification(asInput(push!), usd), verified);
  // products.get agrees: CANCELED, nothing left to refund; confirming now says closed.
  const api = sdkWithToken(await freshAccessToken());
  const v1 = await api.purchases.products.get({ packageName: PKG, productId, token }, opts());
  assert.deepEqual([v1.data.purchaseState, v1.data.refundableQuantity, v1.data.acknowledgementState], [1, 0, 1]);
  const closed = await connector.confirmPayment!({ channelReference: ref, currency: 'USD', amountMinor: 1999n, payload: { purchase_token: token, product_id: productId } });
  assert.deepEqual([closed.state, closed.rawStatus], ['closed', 'CANCELED']);

  // Twice, by either key: 409, and nothing more is published.
  for (const body of [{ channel_reference: ref, outcome: 'succeeded' }, { purchase_token: token, outcome: 'succeeded' }]) {
    const twice = await refundSimulate(body);
    assert.deepEqual([twice.status, twice.body['error'].code], [409, 'purchase_already_refunded'], JSON.stringify(body).slice(0, 60));
  }
  const rows = await waitForSandboxNotifications(db.pool, { channel: 'google_play', channelReference: ref, timeoutMs: 5000 });
  assert.deepEqual(rows.map((r) => r.status), ['delivered', 'delivered']);
  assert.equal(rows[1]!.eventId, messageId);
});

test('refund by purchase token; Pub/Sub redelivers the voided RTDN with the same messageId, and it is the same refund', async () => {
  const { ref, token, orderId } = await paidPurchase('rfr', { items: [{ productId: 'prod_coins', quantity: 3, storeProductIds: { google_play: 'coins.pack_100' } }] });
  answer = (_id, n) => (n === 1 ? 503 : 204);
  try {
    const refund = await refundSimulate({ purchase_token: token, outcome: 'succeeded', voided_reason: 7, voided_source: 2 });
    assert.equal(refund.status, 200, JSON.stringify(refund.body));
    assert.equal(refund.body['channel_reference'], ref);
    assert.deepEqual([refund.body['voided_reason'], refund.body['voided_source']], [7, 2]);
    const pushes = await waitForPush(refund.body['notification'].message_id, 2, 10_000);
    assert.equal(pushes[0]!.rawBody.toString('utf8'), pushes[1]!.rawBody.toString('utf8'), 'the same message; only its OIDC token is fresh');
    const results = await Promise.all(pushes.map((p) => connector.verifyNotification(asInput(p), usd)));
    assert.deepEqual(results[0], results[1]);
    assert.ok(results[0]!.ok && results[0]!.notification.kind === 'refund');
    assert.deepEqual(results[0]!.notification.refund, { state: 'succeeded', channelRefundId: `${orderId}:voided`, channelReference: ref, rawStatus: 'VOIDED:FULL_REFUND' });
  } finally {
    answer = () => 200;
  }
});

test('refunds/simulate: unknown 404, not paid 409, bad input 400, in the Knowpay error shape; nothing is published', async () => {
  const unknown = await refundSimulate({ channel_reference: 'KPNOSUCHREF', outcome: 'succeeded' });
  assert.equal(unknown.status, 404);
  assert.deepEqual(Object.keys(unknown.body['error']).sort(), ['code', 'message', 'param', 'type']);
  assert.deepEqual([unknown.body['error'].type, unknown.body['error'].code, unknown.body['error'].param], ['invalid_request_error', 'purchase_not_found', 'channel_reference']);
  for (const purchase_token of ['zzzzzzzz.AO-J1Onothing', 'a/b']) {
    const r = await refundSimulate({ purchase_token, outcome: 'succeeded' });
    assert.deepEqual([r.status, r.body['error'].code, r.body['error'].param], [404, 'purchase_not_found', 'purchase_token'], purchase_token);
  }
  const pendingRef = newRef('rfp');
  await startPurchase(pendingRef);
  const pending = await refundSimulate({ channel_reference: pendingRef, outcome: 'succeeded' });
  assert.deepEqual([pending.status, pending.body['error'].code], [409, 'purchase_not_refundable']);
  const canceledRef = newRef('rfc');
  await startPurchase(canceledRef);
  await simulate(canceledRef, 'canceled');
  assert.deepEqual((await refundSimulate({ channel_reference: canceledRef, outcome: 'succeeded' })).body['error'].code, 'purchase_not_refundable');
  const { ref, token } = await paidPurchase('rfb');
  const bad: Array<[unknown, string]> = [
    [{ outcome: 'succeeded' }, 'purchase_token'],
    [{ purchase_token: token, channel_reference: ref, outcome: 'succeeded' }, 'purchase_token'],
    [{ purchase_token: 5, outcome: 'succeeded' }, 'purchase_token'],
    [{ channel_reference: '', outcome: 'succeeded' }, 'channel_reference'],
    [{ channel_reference: ref }, 'outcome'],
    [{ channel_reference: ref, outcome: 'failed' }, 'outcome'],
    [{ channel_reference: ref, outcome: 'succeeded', voided_reason: 9 }, 'voided_reason'],
    [{ channel_reference: ref, outcome: 'succeeded', voided_reason: '1' }, 'voided_reason'],
    [{ channel_reference: ref, outcome: 'succeeded', voided_source: -1 }, 'voided_source'],
  ];
  for (const [body, param] of bad) {
    const r = await refundSimulate(body);
    assert.equal(r.status, 400, JSON.stringify(body).slice(0, 80));
    assert.equal(r.body['error'].param, param, JSON.stringify(body).slice(0, 80));
  }
  const notObject = await fetch(`${base}/sandbox/google_play/refunds/simulate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '[1]' });
  assert.equal(notObject.status, 400);
  assert.equal((await sandboxPurchase(ref)).body['voided_at'], null, 'a refused request changes nothing');
  for (const r of [pendingRef, canceledRef, ref]) {
    const rows = await listSandboxNotifications(db.pool, { channel: 'google_play', channelReference: r });
    assert.equal(rows.length, r === pendingRef ? 0 : 1, r);
  }
});

test('forged and tampered voided notifications: the push must be Google\'s, and only what the Play API says is believed', async () => {
  const { ref, token, orderId } = await paidPurchase('rft');
  const other = await paidPurchase('rfo');
  const refund = await refundSimulate({ channel_reference: ref, outcome: 'succeeded' });
  const [push] = await waitForPush(refund.body['notification'].message_id);
  const body = JSON.parse(push!.rawBody.toString('utf8'));
  const payload: PushPayload = { message_id: body.message.messageId, publish_time: body.message.publishTime, data: body.message.data, subscription: body.subscription };
  const auth = () => `Bearer ${signPushToken(signer(), new Date())}`;
  const verifyAs = (p: PushPayload, authorization: string | undefined, c = connector) => c.verifyNotification(pushInput(p, authorization), usd);
  const verify = (p: PushPayload) => verifyAs(p, auth());
  const voided = (edit: (v: any) => void) => withData(payload, (n) => edit(n.voidedPurchaseNotification));

  // Not from Google's push service: refused before anything is read.
  audits = [];
  for (const authorization of [undefined, `Bearer ${signPushToken(signer({ privateKey: generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey }), new Date())}`, `Bearer ${signPushToken(signer({ audience: 'https://evil.example/notify' }), new Date())}`]) {
    const r = await verifyAs(payload, authorization);
    assert.match(!r.ok ? r.reason : 'accepted!', /^unauthenticated: /);
  }
  assert.deepEqual(audits, []);
  const reject = async (p: PushPayload, reason: RegExp, c = connector) => {
    const r = await verifyAs(p, auth(), c);
    assert.equal(r.ok, false, String(reason));
    assert.match(!r.ok ? r.reason : '', reason);
  };
  // A token nobody issued; another order id than the purchase's; another paid purchase's token with this order id.
  await reject(voided((v) => { v.purchaseToken = token.slice(0, -4) + 'AAAA'; }), /purchase_token_not_found/);
  await reject(voided((v) => { v.orderId = other.orderId; }), /order_mismatch/);
  await reject(voided((v) => { v.purchaseToken = other.token; }), /order_mismatch/);
  // Structural damage.
  await reject(voided((v) => { v.orderId = 'GPA 1'; }), /orderId/);
  await reject(voided((v) => { delete v.orderId; }), /orderId/);
  await reject(voided((v) => { v.productType = '2'; }), /productType/);
  await reject(voided((v) => { v.refundType = 1.5; }), /refundType/);
  await reject(voided((v) => { v.productType = 3; }), /unknown productType 3/);
  await reject(voided((v) => { v.purchaseToken = 'a/b'; }), /purchaseToken/);
  // A purchase Knowpay never issued (no binding tag), voided: refused like its payment was.
  const loose = newRef('rfl');
  const bought = await post('/purchase', { product_id: 'coins.pack_10', obfuscated_account_id: loose });
  await simulate(loose, 'succeeded');
  const looseRefund = await refundSimulate({ purchase_token: bought.body['purchase_token'], outcome: 'succeeded' });
  assert.equal(looseRefund.status, 200);
  const [loosePush] = await waitForPush(looseRefund.body['notification'].message_id);
  const looseResult = await connector.verifyNotification(asInput(loosePush!), usd);
  assert.match(!looseResult.ok ? looseResult.reason : 'accepted!', /purchase_not_bound/);
  // A production-configured connector refuses a license tester's refund as it refused the purchase.
  await reject(payload, /test_purchase_refused/, makeConnector({ acceptTestPurchases: false }));

  // Genuine, but not something Knowpay can book alone: partial refunds are left to a person.
  for (const [edit, what] of [[(v: any) => { v.refundType = 2; }, /quantity-based partial refund/], [(v: any) => { v.refundType = 7; }, /refundType 7/]] as const) {
    const r = await verify(voided(edit));
    assert.ok(r.ok && r.notification.kind === 'ignored');
    assert.match(r.notification.reason, what);
    assert.match(r.notification.reason, /a person must record this refund/);
    assert.equal(r.notification.channelReference, ref);
  }
  // No refundType (older notifications): a one-unit purchase can only have been refunded whole.
  const noType = await verify(voided((v) => { delete v.refundType; }));
  assert.ok(noType.ok && noType.notification.kind === 'refund');
  assert.equal(noType.notification.refund.channelRefundId, `${orderId}:voided`);
  // And the genuine push is still a refund of this order only.
  const ok = await verify(payload);
  assert.ok(ok.ok && ok.notification.kind === 'refund' && ok.notification.refund.channelReference === ref);
});

test('a multi-unit purchase voided without refundType is left to a person (Play reports neither price nor refunded units there)', async () => {
  const { ref } = await paidPurchase('rfq', { items: [{ productId: 'prod_coins', quantity: 3, storeProductIds: { google_play: 'coins.pack_100' } }] });
  const refund = await refundSimulate({ channel_reference: ref, outcome: 'succeeded' });
  const [push] = await waitForPush(refund.body['notification'].message_id);
  const body = JSON.parse(push!.rawBody.toString('utf8'));
  const payload: PushPayload = { message_id: body.message.messageId, publish_time: body.message.publishTime, data: body.message.data, subscription: body.subscription };
  const full = await connector.verifyNotification(pushInput(payload, `Bearer ${signPushToken(signer(), new Date())}`), usd);
  assert.ok(full.ok && full.notification.kind === 'refund', 'refundType 1: the whole order');
  const untyped = withData(payload, (n) => { delete n.voidedPurchaseNotification.refundType; });
  const r = await connector.verifyNotification(pushInput(untyped, `Bearer ${signPushToken(signer(), new Date())}`), usd);
  assert.ok(r.ok && r.notification.kind === 'ignored');
  assert.match(r.notification.reason, /without refundType .*3 units, 0 still refundable/);
});

test('purchases.voidedpurchases.list through the official SDK: what was refunded, oldest first, paged', async () => {
  const api = sdkWithToken(await freshAccessToken());
  await new Promise((r) => setTimeout(r, 5));
  const since = Date.now(); // after every refund of the tests before this one
  const refunded: Array<{ orderId: string; token: string }> = [];
  for (let i = 0; i < 3; i++) {
    const p = await paidPurchase(`rfv${i}`);
    assert.equal((await refundSimulate({ channel_reference: p.ref, outcome: 'succeeded', voided_reason: i })).status, 200);
    refunded.push(p);
  }
  const notRefunded = await paidPurchase('rfv9');
  const first = await api.purchases.voidedpurchases.list({ packageName: PKG, startTime: String(since), maxResults: 2 }, opts());
  assert.equal(first.status, 200);
  assert.equal(first.data.voidedPurchases?.length, 2);
  const next = first.data.tokenPagination?.nextPageToken;
  assert.ok(next);
  const second = await api.purchases.voidedpurchases.list({ packageName: PKG, token: next, maxResults: 2 }, opts());
  assert.equal(second.data.tokenPagination, undefined, 'the last page');
  const all = [...first.data.voidedPurchases!, ...second.data.voidedPurchases!];
  assert.deepEqual(all.map((v) => v.orderId), refunded.map((p) => p.orderId));
  assert.ok(!all.some((v) => v.orderId === notRefunded.orderId));
  assert.deepEqual(all.map((v) => v.voidedReason), [0, 1, 2]);
  for (const [i, v] of all.entries()) {
    assert.equal(v.kind, 'androidpublisher#voidedPurchase');
    assert.equal(v.purchaseToken, refunded[i]!.token);
    assert.equal(v.voidedSource, 0);
    assert.ok(Number(v.voidedTimeMillis) >= Number(v.purchaseTimeMillis));
  }
  const times = all.map((v) => Number(v.voidedTimeMillis));
  assert.deepEqual([...times].sort((a, b) => a - b), times);
  // A window that ends before them finds none of them; bad parameters get Google's 400.
  const before = await api.purchases.voidedpurchases.list({ packageName: PKG, startTime: String(since - 60_000), endTime: String(since - 1) }, opts());
  assert.ok(!before.data.voidedPurchases?.some((v) => refunded.some((p) => p.orderId === v.orderId)));
  for (const bad of [{ maxResults: 0 }, { maxResults: 1001 }, { startTime: String(Date.now() - 40 * 86_400_000) }, { startTime: String(since), endTime: String(since - 1) }, { token: 'not-a-cursor' }, { type: 3 }]) {
    await assert.rejects(api.purchases.voidedpurchases.list({ packageName: PKG, ...bad }, opts()), (err: any) => err.status === 400, JSON.stringify(bad));
  }
  await assert.rejects(api.purchases.voidedpurchases.list({ packageName: 'com.other.app' }, opts()), (err: any) => err.status === 401);

  // The connector's reading of the same list: our words, the notification's refund ids, audited without tokens.
  audits = [];
  const listed = await (connector as GooglePlayConnector).listVoidedPurchases({ startTime: new Date(since) });
  assert.equal(listed.truncated, false);
  assert.deepEqual(listed.voidedPurchases.map((v) => [v.orderId, v.channelRefundId, v.voidedReason, v.voidedSource]), refunded.map((p, i) => [p.orderId, `${p.orderId}:voided`, i, 0]));
  assert.ok(listed.voidedPurchases.every((v) => v.voidedAt instanceof Date && v.purchaseTime instanceof Date && v.voidedQuantity === null));
  assert.deepEqual(audits.map((a) => a.operation).filter((o) => o !== 'oauth_token'), ['list_voided_purchases']);
  assert.doesNotMatch(JSON.stringify(audits), new RegExp(refunded[0]!.token.slice(0, 30)));
  await rejectsWith((connector as GooglePlayConnector).listVoidedPurchases({ maxPages: 0 }), 'parameter_invalid', false);
  await rejectsWith((connector as GooglePlayConnector).listVoidedPurchases({ startTime: new Date(Date.now() - 40 * 86_400_000) }), 'invalid', false);
  await assert.rejects(sdkWithToken('ya29.forged').purchases.voidedpurchases.list({ packageName: PKG }, opts()), (err: any) => err.status === 401);
});

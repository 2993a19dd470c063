/**
 * Connector unit tests without the sandbox or a database: push authentication (every refusal
 * happens before any API call), envelope and notification parsing, action shape, refusals, error
 * mapping, redaction. There are no Google-made signed fixtures for RTDN pushes (Google publishes
 * none), so pushes are signed here with a generated key the connector is told to trust.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import fc from 'fast-check';
import { ChannelError, type ChannelConnector, type CreatePaymentInput, type NotificationInput } from '../types.ts';
import type { ChannelAuditEntry } from '../module.ts';
import { ANDROIDPUBLISHER_SCOPE, DEVSTORAGE_READ_ONLY_SCOPE, googleServiceAccountAuth, parseServiceAccountJson, serviceAccountTokenClient } from './auth.ts';
import { googlePlayModule } from './index.ts';
import type { Pool } from '../../store/db.ts';
import { createGooglePlayConnector, snapshotOf, type GooglePlayConfig, type GooglePlayConnector } from './connector.ts';
import { bindingMatches, loadPrivateKey } from './sign.ts';
import { generateGooglePlaySandboxKeys, parseApiPath, pushBody, pushPayload, signPushToken, type GooglePlaySandboxKeys, type PushPayload } from './sandbox.ts';
import { oneTimeProductNotificationJson, redactSecrets, testNotificationJson, toChannelError } from './transformers.ts';

const PKG = 'com.knowpay.test';
const AUDIENCE = 'https://pay.example.com/v1/notify/google_play';
const PUSH_SA = 'rtdn-push@knowpay-test.iam.gserviceaccount.com';
const SUBSCRIPTION = 'projects/knowpay-test/subscriptions/rtdn';

let keys: GooglePlaySandboxKeys;
let connector: ChannelConnector;
let audits: ChannelAuditEntry[] = [];
/** A server that counts every request: the "API" and the token endpoint of the connector. */
let hits = 0;
let server: http.Server;
let serverUrl = '';

before(async () => {
  keys = await generateGooglePlaySandboxKeys();
  server = http.createServer((req, res) => {
    hits++;
    req.resume();
    res.writeHead(503, { 'content-type': 'application/json' }).end('{"error":{"code":503,"message":"Backend Error","status":"UNAVAILABLE"}}');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  serverUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  connector = makeConnector();
});

after(async () => {
  await new Promise<void>((r) => server.close(() => r()));
});

function makeConnector(over: Partial<GooglePlayConfig> = {}): ChannelConnector {
  return createGooglePlayConnector({
    packageName: PKG,
    auth: serviceAccountTokenClient({ clientEmail: 'api@knowpay-test.iam.gserviceaccount.com', privateKey: keys.serviceAccountPrivateKey, privateKeyId: keys.serviceAccountKeyId, tokenUrl: `${serverUrl}/token` }),
    rootUrl: `${serverUrl}/`,
    bindingSecret: keys.bindingSecret,
    push: { audience: AUDIENCE, serviceAccountEmail: PUSH_SA, subscription: SUBSCRIPTION, trustedKeys: { [keys.googleKeyId]: keys.googlePublicKey } },
    acceptTestPurchases: true,
    retries: 0,
    timeoutMs: 2000,
    audit: (e) => audits.push(e),
    ...over,
  });
}

const signer = () => ({ privateKey: loadPrivateKey(keys.googlePrivateKey), kid: keys.googleKeyId, audience: AUDIENCE, serviceAccountEmail: PUSH_SA, serviceAccountId: keys.pushServiceAccountId });

function push(payload: PushPayload, authorization: string | null = `Bearer ${signPushToken(signer(), new Date())}`): NotificationInput {
  return {
    headers: { 'content-type': 'application/json', ...(authorization !== null ? { authorization } : {}) },
    rawBody: Buffer.from(pushBody(payload)),
    contentType: 'application/json',
  };
}

const oneTime = (over: Partial<{ packageName: string; notificationType: number; purchaseToken: string; sku: string }> = {}) =>
  pushPayload(oneTimeProductNotificationJson({ packageName: PKG, eventTimeMillis: Date.now(), notificationType: 1, purchaseToken: 'abcdefgh.AO-J1Otoken', sku: 'course.a', ...over }), SUBSCRIPTION);

const usd = async () => 'USD';

test('a genuine test notification verifies without any API call; eventId = messageId, appId = package', async () => {
  const before = hits;
  const payload = pushPayload(testNotificationJson(PKG, 1_700_000_000_000), SUBSCRIPTION);
  const result = await connector.verifyNotification(push(payload), usd);
  assert.deepEqual(result, { ok: true, notification: { eventId: payload.message_id, kind: 'ignored', reason: 'Play Console test notification', appId: PKG } });
  assert.equal(hits, before);
});

test('every authentication failure is refused before the API is called, with 401', async () => {
  const before = hits;
  audits = [];
  const payload = oneTime();
  const other = await generateGooglePlaySandboxKeys();
  const now = new Date();
  const tokens: Array<[string, string | null]> = [
    ['none', null],
    ['empty bearer', 'Bearer '],
    ['two tokens', `Bearer a.b.c, Bearer d.e.f`],
    ['foreign key', `Bearer ${signPushToken({ ...signer(), privateKey: loadPrivateKey(other.googlePrivateKey) }, now)}`],
    ['wrong audience', `Bearer ${signPushToken({ ...signer(), audience: AUDIENCE + '/' }, now)}`],
    ['expired', `Bearer ${signPushToken(signer(), new Date(now.getTime() - 3 * 3600_000))}`],
    ['other account', `Bearer ${signPushToken({ ...signer(), serviceAccountEmail: 'x@y.iam.gserviceaccount.com' }, now)}`],
  ];
  for (const [name, authorization] of tokens) {
    const result = await connector.verifyNotification(push(payload, authorization), usd);
    assert.equal(result.ok, false, name);
    const reason = !result.ok ? result.reason : '';
    assert.match(reason, /^unauthenticated: /, name);
    assert.deepEqual(connector.ackFailure(reason), { statusCode: 401, contentType: 'text/plain; charset=utf-8', body: 'unauthenticated' }, name);
  }
  assert.equal(hits, before, 'no request left the connector');
  assert.deepEqual(audits, []);
});

test('fast-check: a push whose token is signed over different claims never verifies', async () => {
  const payload = pushPayload(testNotificationJson(PKG, 1), SUBSCRIPTION);
  const good = signPushToken(signer(), new Date());
  const [h, p, s] = good.split('.') as [string, string, string];
  await fc.assert(
    fc.asyncProperty(fc.integer({ min: 0, max: p.length - 1 }), fc.constantFrom(...'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'), async (at, ch) => {
      fc.pre(p[at] !== ch);
      const tampered = `${h}.${p.slice(0, at)}${ch}${p.slice(at + 1)}.${s}`;
      const result = await connector.verifyNotification(push(payload, `Bearer ${tampered}`), usd);
      return result.ok === false || /* base64url padding bits: the same claims */ Buffer.from(p.slice(0, at) + ch + p.slice(at + 1), 'base64url').equals(Buffer.from(p, 'base64url'));
    }),
    { numRuns: 60 },
  );
});

test('a foreign package, a foreign subscription, and unhandled notification types', async () => {
  const before = hits;
  const foreign = await connector.verifyNotification(push(oneTime({ packageName: 'com.other.app' })), usd);
  assert.ok(foreign.ok && foreign.notification.kind === 'ignored');
  assert.equal(foreign.notification.appId, 'com.other.app', 'the service refuses a foreign appId');
  const otherSub = await connector.verifyNotification(push({ ...oneTime(), subscription: 'projects/x/subscriptions/y' }), usd);
  assert.deepEqual(otherSub, { ok: false, reason: 'push from another subscription projects/x/subscriptions/y' });
  const sub = pushPayload(JSON.stringify({ version: '1.0', packageName: PKG, eventTimeMillis: '1', subscriptionNotification: { version: '1.0', notificationType: 2, purchaseToken: 't', subscriptionId: 'm' } }), SUBSCRIPTION);
  const subResult = await connector.verifyNotification(push(sub), usd);
  assert.ok(subResult.ok && subResult.notification.kind === 'ignored');
  assert.equal(hits, before);
});

test('when the API is unavailable verify asks for a redelivery (503), and confirm raises a retryable error', async () => {
  audits = [];
  const result = await connector.verifyNotification(push(oneTime()), usd);
  assert.equal(result.ok, false);
  const reason = !result.ok ? result.reason : '';
  // The token endpoint itself answers 503 here.
  assert.match(reason, /^unavailable: auth_failed: token endpoint answered 503/);
  assert.equal(connector.ackFailure(reason).statusCode, 503);
  await assert.rejects(
    connector.confirmPayment!({ channelReference: 'KP1', currency: 'USD', amountMinor: 100n, payload: { purchase_token: 'abc.AO-J1Ox', product_id: 'course.a' } }),
    (err: unknown) => err instanceof ChannelError && err.code === 'auth_failed' && err.retryable === true,
  );
  assert.ok(audits.length === 0 || audits.every((a) => !JSON.stringify(a).includes('abc.AO-J1Ox')));
});

test('acknowledgements: 200 acknowledges; rejections are 400, 401 or 503 so Pub/Sub redelivers', () => {
  assert.deepEqual(connector.ackSuccess(), { statusCode: 200, contentType: 'text/plain; charset=utf-8', body: 'ok' });
  assert.equal(connector.ackFailure('unknown_reference').statusCode, 400);
  assert.equal(connector.ackFailure('amount_mismatch: x').statusCode, 400);
  assert.equal(connector.ackFailure('unauthenticated: token expired').statusCode, 401);
  assert.equal(connector.ackFailure('unavailable: transport_error: x').statusCode, 503);
  assert.doesNotMatch(connector.ackFailure('purchase_not_bound: secret detail').body, /secret/);
  assert.equal(connector.channel, 'google_play');
  assert.equal(connector.appId, PKG);
  assert.equal(connector.referenceFormat, 'trade_number');
});

const baseInput: CreatePaymentInput = {
  channelReference: 'KP01JABCDEF', paymentId: 'pay_1', orderId: 'ord_1', customerId: 'cus_1',
  items: [{ productId: 'prod_1', quantity: 1, storeProductIds: { google_play: 'course.a' } }],
  method: 'in_app', amountMinor: 999n, currency: 'usd', subject: 'Course A', notifyUrl: 'https://pay.example.com/v1/notify/google_play',
  expiresAt: new Date(Date.now() + 60_000),
};

test('createPayment: the action binds reference, product and quantity; refusals are not retryable', async () => {
  const before = hits;
  const { action } = await connector.createPayment(baseInput);
  assert.equal(action.type, 'app');
  const params = action.type === 'app' ? action.params : {};
  assert.deepEqual(Object.keys(params).sort(), ['obfuscated_account_id', 'obfuscated_profile_id', 'package_name', 'product_id', 'quantity']);
  const binding = { packageName: PKG, reference: 'KP01JABCDEF', productId: 'course.a', quantity: 1 };
  assert.ok(bindingMatches(keys.bindingSecret, binding, params['obfuscated_profile_id']));
  assert.ok(!bindingMatches(keys.bindingSecret, { ...binding, productId: 'course.b' }, params['obfuscated_profile_id']));
  assert.equal(hits, before, 'createPayment makes no call');
  const refusals: Array<[Partial<CreatePaymentInput>, string]> = [
    [{ items: [{ productId: 'p', quantity: 1, storeProductIds: {} }] }, 'store_product_missing'],
    [{ items: [{ productId: 'p', quantity: 1, storeProductIds: { google_play: '' } }] }, 'store_product_missing'],
    [{ items: [{ productId: 'p', quantity: 1, storeProductIds: { google_play: '.bad' } }] }, 'store_product_invalid'],
    [{ items: [{ productId: 'p', quantity: 101, storeProductIds: { google_play: 'a' } }] }, 'quantity_invalid'],
    [{ items: [{ productId: 'p', quantity: 1.5, storeProductIds: { google_play: 'a' } }] }, 'quantity_invalid'],
    [{ method: 'qr' }, 'method_not_supported'],
    [{ channelReference: 'has space' }, 'reference_invalid'],
    [{ channelReference: '' }, 'reference_invalid'],
  ];
  for (const [over, code] of refusals) {
    await assert.rejects(connector.createPayment({ ...baseInput, ...over }), (err: unknown) => err instanceof ChannelError && err.code === code && !err.retryable, code);
  }
});

test('snapshots: only purchased and canceled are final; unknown states stay pending; no amount', () => {
  assert.deepEqual(snapshotOf({ purchaseState: 0, orderId: 'GPA.1234-5678-9012-34567' }, 'KP1'), { state: 'succeeded', channelReference: 'KP1', channelTransactionId: 'GPA.1234-5678-9012-34567', rawStatus: 'PURCHASED' });
  assert.deepEqual(snapshotOf({ purchaseState: 1 }, 'KP1'), { state: 'closed', channelReference: 'KP1', rawStatus: 'CANCELED' });
  assert.deepEqual(snapshotOf({ purchaseState: 2, orderId: '' }, 'KP1'), { state: 'pending', channelReference: 'KP1', rawStatus: 'PENDING' });
  assert.equal(snapshotOf({}, 'KP1').state, 'pending');
  fc.assert(fc.property(fc.integer().filter((n) => n !== 0 && n !== 1), (n) => snapshotOf({ purchaseState: n }, 'KP1').state === 'pending' && snapshotOf({ purchaseState: n }, 'KP1').amountMinor === undefined));
});

test('toChannelError maps the SDK\'s failures', () => {
  const gaxios = (status: number, reason?: string) => ({ message: 'x', response: { status, data: { error: { code: status, message: 'm', status: 'S', ...(reason ? { errors: [{ reason }] } : {}) } } } });
  const cases: Array<[unknown, string, boolean]> = [
    [gaxios(401), 'unauthenticated', false],
    [gaxios(403), 'permission_denied', false],
    [gaxios(404, 'purchaseTokenNotFound'), 'purchase_token_not_found', false],
    [gaxios(404), 'not_found', false],
    [gaxios(410, 'purchaseTokenNoLongerValid'), 'purchase_token_no_longer_valid', false],
    [gaxios(400, 'invalid'), 'invalid', false],
    [gaxios(400, 'invalidPurchaseState'), 'invalid_purchase_state', false],
    [gaxios(400), 'invalid_request', false],
    [gaxios(408), 'http_error', true],
    [gaxios(429), 'http_error', true],
    [gaxios(502), 'http_error', true],
    [{ message: 'request to x failed', code: 'ECONNREFUSED' }, 'transport_error', true],
    [{ message: 'aborted', name: 'AbortError' }, 'transport_error', true],
    [new Error('weird'), 'unexpected_error', false],
    [new ChannelError('kept', 'google_play', 'kept_code', true), 'kept_code', true],
  ];
  for (const [err, code, retryable] of cases) {
    const e = toChannelError(err);
    assert.equal(e.code, code, JSON.stringify(err));
    assert.equal(e.retryable, retryable, JSON.stringify(err));
    assert.equal(e.channel, 'google_play');
  }
});

test('redaction fingerprints tokens, keys and binding tags, deeply', () => {
  const out = JSON.stringify(redactSecrets({
    packageName: PKG, token: 'secret-token-1', nested: [{ purchaseToken: 'secret-token-2', obfuscatedExternalProfileId: 'tag' }],
    params: { obfuscated_profile_id: 'tag2', private_key: '-----BEGIN PRIVATE KEY-----' }, header: 'Bearer ya29.secret', amount: 5n,
  }));
  assert.doesNotMatch(out, /secret-token|ya29|PRIVATE KEY|"tag2?"/);
  assert.match(out, /com\.knowpay\.test/);
  assert.match(out, /REDACTED sha256:[0-9a-f]{12}/);
  assert.match(out, /"amount":"5"/);
});

test('configuration is checked at construction', () => {
  assert.throws(() => makeConnector({ packageName: 'nodots' }), /packageName/);
  assert.throws(() => makeConnector({ bindingSecret: 'short' }), /bindingSecret/);
  assert.throws(() => makeConnector({ retries: 9 }), /retries/);
  assert.throws(() => makeConnector({ rootUrl: 'not a url' }));
  assert.throws(() => makeConnector({ push: { audience: '', serviceAccountEmail: PUSH_SA } }), /audience/);
  assert.throws(() => makeConnector({ push: { audience: AUDIENCE, serviceAccountEmail: 'nobody' } }), /service account/);
});

test('service account JSON keys are parsed strictly', () => {
  const good = JSON.stringify({ type: 'service_account', client_email: 'a@b.iam.gserviceaccount.com', private_key: keys.serviceAccountPrivateKey, private_key_id: 'k1' });
  assert.equal(parseServiceAccountJson(good).client_email, 'a@b.iam.gserviceaccount.com');
  assert.throws(() => parseServiceAccountJson('{'), /not JSON/);
  assert.throws(() => parseServiceAccountJson(JSON.stringify({ type: 'authorized_user' })), /service_account/);
  assert.throws(() => parseServiceAccountJson(JSON.stringify({ type: 'service_account', client_email: 'a@b', private_key: 'nope' })));
});

test('the sandbox splits API paths itself (tokens are longer than the router\'s parameter limit)', () => {
  const token = 'abcdefghijklmnopqrstuvwx.AO-J1O' + 'x'.repeat(120);
  assert.deepEqual(parseApiPath(`/sandbox/google_play/androidpublisher/v3/applications/com.a.b/purchases/products/p.1/tokens/${token}`), { packageName: 'com.a.b', productId: 'p.1', token, verb: null });
  assert.deepEqual(parseApiPath(`/androidpublisher/v3/applications/com.a.b/purchases/products/p.1/tokens/${token}:acknowledge?x=1`), { packageName: 'com.a.b', productId: 'p.1', token, verb: 'acknowledge' });
  assert.equal(parseApiPath('/androidpublisher/v3/applications/com.a.b/purchases/products/p.1/tokens/a%2Fb')?.token, 'a/b');
  for (const bad of [
    '/androidpublisher/v3/applications/com.a.b/purchases/subscriptions/p/tokens/t',
    '/androidpublisher/v3/applications/com.a.b/purchases/products/p/tokens',
    '/androidpublisher/v3/applications/com.a.b/purchases/products/p/tokens/t/extra',
    '/androidpublisher/v3/applications/com.a.b/purchases/products/p/tokens/%E0%A4%A',
    '/other',
  ]) assert.equal(parseApiPath(bad), null, bad);
});

test('real credentials from the environment build a production connector: no sandbox, Google\'s API, strict purchases', async () => {
  const json = JSON.stringify({ type: 'service_account', client_email: 'play-api@prod.iam.gserviceaccount.com', private_key: keys.serviceAccountPrivateKey, private_key_id: 'k1' });
  const env = {
    GOOGLE_PLAY_PACKAGE_NAME: 'com.knowpay.app', GOOGLE_PLAY_SERVICE_ACCOUNT_JSON: json,
    GOOGLE_PLAY_PUSH_AUDIENCE: AUDIENCE, GOOGLE_PLAY_PUSH_SERVICE_ACCOUNT: PUSH_SA,
  };
  const deps = { pool: {} as Pool, publicBaseUrl: 'http://127.0.0.1:1', sandboxTimeScale: 1, audit: () => {}, env };
  const instance = await googlePlayModule.create(deps);
  assert.equal(instance.mountSandbox, undefined);
  assert.equal(instance.connector.appId, 'com.knowpay.app');
  assert.equal(instance.connector.downloadBill, undefined, 'no reports bucket configured: no bill download');
  const withReports = await googlePlayModule.create({ ...deps, env: { ...env, GOOGLE_PLAY_REPORTS_BUCKET: 'pubsite_prod_rev_01234567890987654321' } });
  assert.equal(typeof withReports.connector.downloadBill, 'function');
  // Incomplete credentials fall back to the sandbox (which needs the database): here, it throws on the fake pool.
  await assert.rejects(googlePlayModule.create({ ...deps, env: { ...env, GOOGLE_PLAY_PUSH_SERVICE_ACCOUNT: '' } }));
  // google-auth-library's service account client, with the androidpublisher and devstorage.read_only scopes, no network needed to build it.
  const auth = googleServiceAccountAuth(parseServiceAccountJson(json)) as unknown as { getClient(): Promise<{ email?: string; scopes?: string | string[] }> };
  const client = await auth.getClient();
  assert.equal(client.email, 'play-api@prod.iam.gserviceaccount.com');
  assert.deepEqual(client.scopes, [ANDROIDPUBLISHER_SCOPE, DEVSTORAGE_READ_ONLY_SCOPE]);
});

test('idempotent calls are retried on 5xx (bounded), 4xx are not', async () => {
  const seen: string[] = [];
  let failuresLeft = 2;
  const tag = (await connector.createPayment(baseInput)).action;
  const profile = tag.type === 'app' ? tag.params['obfuscated_profile_id'] : '';
  const flaky = http.createServer((req, res) => {
    req.resume();
    seen.push(`${req.method} ${(req.url ?? '').split('/').pop()!.slice(0, 24)}`);
    if (req.url === '/token') return res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ access_token: 'ya29.test', expires_in: 3599, token_type: 'Bearer' }));
    if (req.url?.includes('/tokens/bad')) return res.writeHead(400, { 'content-type': 'application/json' }).end('{"error":{"code":400,"message":"Invalid Value","errors":[{"reason":"invalid"}]}}');
    if (req.method === 'GET' && failuresLeft-- > 0) return res.writeHead(503, { 'content-type': 'application/json' }).end('{"error":{"code":503,"message":"Backend Error"}}');
    if (req.method === 'POST') return res.writeHead(204).end();
    return res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({
      kind: 'androidpublisher#productPurchase', purchaseState: 0, acknowledgementState: 0, consumptionState: 0, orderId: 'GPA.1111-2222-3333-44444',
      productId: 'course.a', obfuscatedExternalAccountId: 'KP01JABCDEF', obfuscatedExternalProfileId: profile, purchaseTimeMillis: '1700000000000',
    }));
  });
  await new Promise<void>((r) => flaky.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(flaky.address() as AddressInfo).port}`;
  try {
    const c = makeConnector({
      rootUrl: `${url}/`, retries: 2,
      auth: serviceAccountTokenClient({ clientEmail: 'api@knowpay-test.iam.gserviceaccount.com', privateKey: keys.serviceAccountPrivateKey, privateKeyId: keys.serviceAccountKeyId, tokenUrl: `${url}/token` }),
    });
    const paid = await c.confirmPayment!({ channelReference: 'KP01JABCDEF', currency: 'USD', amountMinor: 999n, payload: { purchase_token: 'good.AO-J1Ox', product_id: 'course.a' } });
    assert.deepEqual(paid, { state: 'succeeded', channelReference: 'KP01JABCDEF', channelTransactionId: 'GPA.1111-2222-3333-44444', rawStatus: 'PURCHASED' });
    assert.deepEqual(seen, ['POST token', 'GET good.AO-J1Ox', 'GET good.AO-J1Ox', 'GET good.AO-J1Ox', 'POST good.AO-J1Ox:acknowledge']);
    seen.length = 0;
    await assert.rejects(c.confirmPayment!({ channelReference: 'KP01JABCDEF', currency: 'USD', amountMinor: 999n, payload: { purchase_token: 'bad', product_id: 'course.a' } }), (e: unknown) => e instanceof ChannelError && e.code === 'invalid');
    assert.deepEqual(seen, ['GET bad'], 'a 400 is not retried');
  } finally {
    await new Promise<void>((r) => flaky.close(() => r()));
  }
});

// ---- Voided purchases (refunds Google started) ----------------------------------------------------

const voided = (over: Record<string, unknown> = {}) =>
  pushPayload(JSON.stringify({
    version: '1.0', packageName: PKG, eventTimeMillis: String(Date.now()),
    voidedPurchaseNotification: { purchaseToken: 'voided.AO-J1Otoken', orderId: 'GPA.1111-2222-3333-44444', productType: 2, refundType: 1, ...over },
  }), SUBSCRIPTION);

test('voided notifications: malformed ones are refused and subscriptions ignored, without an API call; an unavailable API asks for a redelivery', async () => {
  const before = hits;
  for (const [over, reason] of [
    [{ orderId: undefined }, /orderId/], [{ orderId: 'GPA 1' }, /orderId/], [{ purchaseToken: 'a b' }, /purchaseToken/],
    [{ productType: 'x' }, /productType/], [{ refundType: 1.5 }, /refundType/],
  ] as const) {
    const r = await connector.verifyNotification(push(voided(over)), usd);
    assert.match(!r.ok ? r.reason : 'accepted!', reason, JSON.stringify(over));
    assert.equal(connector.ackFailure(!r.ok ? r.reason : '').statusCode, 400);
  }
  const sub = await connector.verifyNotification(push(voided({ productType: 1 })), usd);
  assert.ok(sub.ok && sub.notification.kind === 'ignored');
  assert.match(sub.notification.reason, /subscription/);
  assert.equal(hits, before, 'nothing was read');
  const unavailable = await connector.verifyNotification(push(voided()), usd);
  assert.match(!unavailable.ok ? unavailable.reason : 'accepted!', /^unavailable: /);
  assert.equal(connector.ackFailure(!unavailable.ok ? unavailable.reason : '').statusCode, 503);
});

test('voided notifications are resolved with productsv2 by token alone, and checked like a payment', async () => {
  const tag = (await connector.createPayment(baseInput)).action;
  const profile = tag.type === 'app' ? tag.params['obfuscated_profile_id'] : '';
  const goodV2 = {
    kind: 'androidpublisher#productPurchaseV2', orderId: 'GPA.1111-2222-3333-44444', obfuscatedExternalAccountId: 'KP01JABCDEF', obfuscatedExternalProfileId: profile,
    productLineItem: [{ productId: 'course.a', productOfferDetails: { quantity: 1, refundableQuantity: 0 } }],
    purchaseStateContext: { purchaseState: 'CANCELLED' }, acknowledgementState: 'ACKNOWLEDGEMENT_STATE_ACKNOWLEDGED',
  };
  let answerV2: Record<string, unknown> = goodV2;
  const paths: string[] = [];
  const api = http.createServer((req, res) => {
    req.resume();
    if (req.url === '/token') return res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ access_token: 'ya29.test', expires_in: 3599, token_type: 'Bearer' }));
    paths.push(`${req.method} ${req.url}`);
    return res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(answerV2));
  });
  await new Promise<void>((r) => api.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(api.address() as AddressInfo).port}`;
  try {
    const c = makeConnector({
      rootUrl: `${url}/`,
      auth: serviceAccountTokenClient({ clientEmail: 'api@knowpay-test.iam.gserviceaccount.com', privateKey: keys.serviceAccountPrivateKey, privateKeyId: keys.serviceAccountKeyId, tokenUrl: `${url}/token` }),
    });
    const payload = voided();
    const r = await c.verifyNotification(push(payload), usd);
    assert.deepEqual(r, {
      ok: true,
      notification: { eventId: payload.message_id, kind: 'refund', appId: PKG, refund: { state: 'succeeded', channelRefundId: 'GPA.1111-2222-3333-44444:voided', channelReference: 'KP01JABCDEF', rawStatus: 'VOIDED:FULL_REFUND' } },
    });
    assert.deepEqual(paths, [`GET /androidpublisher/v3/applications/${PKG}/purchases/productsv2/tokens/voided.AO-J1Otoken`]);
    const cases: Array<[Record<string, unknown>, RegExp, 'rejected' | 'ignored']> = [
      [{ ...goodV2, obfuscatedExternalProfileId: 'made-up' }, /purchase_not_bound/, 'rejected'],
      [{ ...goodV2, productLineItem: [{ productId: 'course.b', productOfferDetails: { quantity: 1 } }] }, /purchase_not_bound/, 'rejected'],
      [{ ...goodV2, productLineItem: [{ productId: 'course.a', productOfferDetails: { quantity: 2 } }] }, /purchase_not_bound/, 'rejected'],
      [{ ...goodV2, productLineItem: [...goodV2.productLineItem, ...goodV2.productLineItem] }, /not one product/, 'rejected'],
      [{ ...goodV2, productLineItem: [] }, /not one product/, 'rejected'],
      [{ ...goodV2, orderId: 'GPA.9999-2222-3333-44444' }, /order_mismatch/, 'rejected'],
      [{ ...goodV2, obfuscatedExternalAccountId: undefined }, /not started from a Knowpay payment/, 'ignored'],
    ];
    for (const [body, reason, outcome] of cases) {
      answerV2 = body;
      const result = await c.verifyNotification(push(voided()), usd);
      if (outcome === 'rejected') assert.match(!result.ok ? result.reason : 'accepted!', reason);
      else assert.match(result.ok && result.notification.kind === 'ignored' ? result.notification.reason : 'not ignored', reason);
    }
    answerV2 = { ...goodV2, testPurchaseContext: { fopType: 'TEST' } };
    assert.equal((await c.verifyNotification(push(voided()), usd)).ok, true, 'test purchases accepted where configured');
    const production = makeConnector({
      rootUrl: `${url}/`, acceptTestPurchases: false,
      auth: serviceAccountTokenClient({ clientEmail: 'api@knowpay-test.iam.gserviceaccount.com', privateKey: keys.serviceAccountPrivateKey, privateKeyId: keys.serviceAccountKeyId, tokenUrl: `${url}/token` }),
    });
    assert.match(await production.verifyNotification(push(voided()), usd).then((x) => (!x.ok ? x.reason : 'accepted!')), /test_purchase_refused/);
  } finally {
    await new Promise<void>((r) => api.close(() => r()));
  }
});

test('listVoidedPurchases follows page tokens up to maxPages and says when it stopped early', async () => {
  const seen: string[] = [];
  let page = 0;
  const api = http.createServer((req, res) => {
    req.resume();
    if (req.url === '/token') return res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ access_token: 'ya29.test', expires_in: 3599, token_type: 'Bearer' }));
    seen.push(req.url ?? '');
    page++;
    const entry = { kind: 'androidpublisher#voidedPurchase', purchaseToken: `t${page}.AO-J1O`, orderId: `GPA.0000-0000-0000-0000${page}`, purchaseTimeMillis: '1700000000000', voidedTimeMillis: '1700000600000', voidedSource: 0, voidedReason: 1 };
    return res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ voidedPurchases: [entry], tokenPagination: { nextPageToken: `p${page}` } }));
  });
  await new Promise<void>((r) => api.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(api.address() as AddressInfo).port}`;
  try {
    const c = makeConnector({
      rootUrl: `${url}/`,
      auth: serviceAccountTokenClient({ clientEmail: 'api@knowpay-test.iam.gserviceaccount.com', privateKey: keys.serviceAccountPrivateKey, privateKeyId: keys.serviceAccountKeyId, tokenUrl: `${url}/token` }),
    }) as GooglePlayConnector;
    const r = await c.listVoidedPurchases({ startTime: new Date(1_700_000_000_000), maxPages: 2 });
    assert.equal(r.truncated, true);
    assert.deepEqual(r.voidedPurchases.map((v) => v.channelRefundId), ['GPA.0000-0000-0000-00001:voided', 'GPA.0000-0000-0000-00002:voided']);
    assert.equal(r.voidedPurchases[0]!.voidedAt.getTime(), 1_700_000_600_000);
    assert.match(seen[0]!, /startTime=1700000000000/);
    assert.match(seen[1]!, /token=p1/);
    assert.doesNotMatch(seen[1]!, /startTime/, 'a page token replaces the window');
  } finally {
    await new Promise<void>((r) => api.close(() => r()));
  }
});

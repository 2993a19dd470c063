/**
 * The connector against the sandbox over real HTTP (127.0.0.1) through the official SDK: the code
 * that runs here is the code that would run against api.stripe.com. The app is built like the
 * service's (formbody at the root, Knowpay's own idempotency layer, the shared faults plugin).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import Fastify, { type FastifyInstance } from 'fastify';
import formbody from '@fastify/formbody';
import Stripe from 'stripe';
import { freshDatabase, type TestDatabase } from '../../../test/support/db.ts';
import { installIdempotency } from '../../http/idempotency.ts';
import { ChannelError, type ChannelConnector, type CreatePaymentInput } from '../types.ts';
import { faultsPlugin } from '../sandbox/faults.ts';
import { listSandboxNotificationAttempts, waitForSandboxNotifications } from '../sandbox/dispatcher.ts';
import { createStripeConnector, prefixedHttpClient, type StripeAuditEntry, type StripeConfig } from './connector.ts';
import {
  KNOWPAY_ENABLED_EVENTS, STRIPE_NOTIFY_SCHEDULE_MS, generateStripeSandboxKeys, presentedKey, redactKey, stripeNotificationSpec, stripeSandboxPlugin,
  type StripeSandboxKeys,
} from './sandbox.ts';
import { rejectsWith as rejectsWithChannelError } from '../../../test/support/assertions.ts';
import { freePort } from '../../store/embedded.ts';

const TIME_SCALE = 0.001;
const ALL_EVENTS_SECRET = 'whsec_alleventsendpointsecret0000';

interface Received { name: string; rawBody: Buffer; headers: Record<string, string | string[] | undefined>; at: number; ref: string | null; type: string }

let db: TestDatabase;
let keys: StripeSandboxKeys;
let app: FastifyInstance;
let base = '';
let connector: ChannelConnector;
let allEvents: ChannelConnector;
let audits: StripeAuditEntry[] = [];
const received: Received[] = [];
/** Per reference: the HTTP status to answer to the n-th (1-based) delivery. */
const answers = new Map<string, (n: number) => number>();
let refCounter = 0;

/** A Fastify app as the service builds it, with the sandbox and two webhook receivers. */
async function buildApp(pool: TestDatabase['pool'], port: number, timeScale: number): Promise<FastifyInstance> {
  const a = Fastify();
  await a.register(formbody);
  installIdempotency(a, pool);
  await a.register(faultsPlugin, { pool });
  const origin = `http://127.0.0.1:${port}`;
  await a.register(stripeSandboxPlugin, {
    prefix: '/sandbox/stripe', pool, accountId: keys.accountId, secretKey: keys.secretKey, timeScale,
    webhookEndpoints: [
      { id: keys.webhookEndpointId, url: `${origin}/hooks/main`, secret: keys.webhookSecret, enabledEvents: KNOWPAY_ENABLED_EVENTS },
      { id: 'we_1alleventsendpoint', url: `${origin}/hooks/all`, secret: ALL_EVENTS_SECRET, enabledEvents: ['*'] },
    ],
  });
  await a.register(async (r) => {
    r.removeAllContentTypeParsers();
    r.addContentTypeParser('*', { parseAs: 'buffer' }, (_q, body, done) => done(null, body));
    r.post<{ Params: { name: string } }>('/hooks/:name', async (req, reply) => {
      const rawBody = req.body as Buffer;
      const event = JSON.parse(rawBody.toString('utf8')) as { type: string; data: { object: { metadata?: Record<string, string> } } };
      const ref = event.data.object.metadata?.['knowpay_reference'] ?? null;
      const name = req.params.name;
      received.push({ name, rawBody, headers: req.headers, at: Date.now(), ref, type: event.type });
      const n = received.filter((x) => x.name === name && x.ref === ref && x.type === event.type).length;
      const status = name === 'main' && ref ? (answers.get(ref) ?? (() => 200))(n) : 200;
      return reply.code(status).type('application/json').send(status < 300 ? '{"received":true}' : '{"error":"not now"}');
    });
  });
  await a.listen({ host: '127.0.0.1', port });
  return a;
}

function makeConnector(over: Partial<StripeConfig> = {}): ChannelConnector {
  return createStripeConnector({
    secretKey: keys.secretKey, webhookSecret: keys.webhookSecret, accountId: keys.accountId,
    apiBase: `${base}/sandbox/stripe`, timeoutMs: 5000, audit: (e) => audits.push(e), ...over,
  });
}

/** The official SDK pointed at the sandbox, for what the connector does not do (confirm, search). */
function sdk(key = keys.secretKey, target = base): Stripe {
  const url = new URL(target);
  return new Stripe(key, {
    host: url.hostname, port: url.port, protocol: 'http', maxNetworkRetries: 0,
    httpClient: prefixedHttpClient(Stripe.createNodeHttpClient(), '/sandbox/stripe'),
  });
}

before(async () => {
  db = await freshDatabase();
  keys = generateStripeSandboxKeys();
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  app = await buildApp(db.pool, port, TIME_SCALE);
  connector = makeConnector();
  allEvents = makeConnector({ webhookSecret: ALL_EVENTS_SECRET });
});

after(async () => {
  await app.close();
  await db.drop();
});

function newRef(tag: string): string {
  return `KP${tag}${process.pid}x${++refCounter}`;
}

function input(ref: string, over: Partial<CreatePaymentInput> = {}): CreatePaymentInput {
  return {
    channelReference: ref, paymentId: 'pay_' + ref, orderId: 'ord_' + ref, customerId: 'cus_test', items: [],
    method: 'card', amountMinor: 1234n, currency: 'USD', subject: 'Course: TypeScript in depth',
    notifyUrl: `${base}/v1/notify/stripe`, expiresAt: new Date(Date.now() + 30 * 60_000), ...over,
  };
}

async function simulate(ref: string, outcome: string, target = base) {
  const res = await fetch(`${target}/sandbox/stripe/simulate`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ channel_reference: ref, outcome }),
  });
  return { status: res.status, body: (await res.json()) as Record<string, any> };
}

async function waitReceived(filter: (r: Received) => boolean, count: number, timeoutMs = 5000): Promise<Received[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const got = received.filter(filter);
    if (got.length >= count) return got;
    if (Date.now() > deadline) throw new Error(`${got.length} of ${count} webhooks after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const mainFor = (ref: string, type?: string) => (r: Received) => r.name === 'main' && r.ref === ref && (type === undefined || r.type === type);
const verify = (c: ChannelConnector, r: Received, body = r.rawBody) =>
  c.verifyNotification({ headers: r.headers, rawBody: body, contentType: String(r.headers['content-type']) }, async () => null);

const rejectsWith = (p: Promise<unknown>, code: string, retryable?: boolean) => rejectsWithChannelError(p, code, retryable, undefined, 'stripe');

async function raw(method: string, path: string, opts: { key?: string | null; body?: string; idempotencyKey?: string; headers?: Record<string, string> } = {}) {
  const headers: Record<string, string> = { 'content-type': 'application/x-www-form-urlencoded', ...opts.headers };
  if (opts.key !== null) headers['authorization'] = `Bearer ${opts.key ?? keys.secretKey}`;
  if (opts.idempotencyKey) headers['idempotency-key'] = opts.idempotencyKey;
  const res = await fetch(`${base}/sandbox/stripe${path}`, { method, headers, ...(opts.body !== undefined ? { body: opts.body } : {}) });
  const text = await res.text();
  return { status: res.status, headers: res.headers, text, json: JSON.parse(text) as Record<string, any> };
}

// ---- Happy paths ---------------------------------------------------------------------------------

test('create answers a client_secret and the pi_ id; query finds it pending through the Search API', async () => {
  audits = [];
  const ref = newRef('create');
  const created = await connector.createPayment(input(ref));
  assert.equal(created.action.type, 'client_secret');
  const secret = created.action.type === 'client_secret' ? created.action.client_secret : '';
  assert.match(created.channelTransactionId ?? '', /^pi_[A-Za-z0-9]{24}$/);
  assert.ok(secret.startsWith(`${created.channelTransactionId}_secret_`), secret);

  const snap = await connector.queryPayment({ channelReference: ref, currency: 'USD' });
  assert.deepEqual(snap, { state: 'pending', channelReference: ref, channelTransactionId: created.channelTransactionId, amountMinor: 1234n, currency: 'USD', rawStatus: 'requires_payment_method' });

  const pi = await sdk().paymentIntents.retrieve(created.channelTransactionId!);
  assert.equal(pi.amount, 1234);
  assert.equal(pi.currency, 'usd');
  assert.equal(pi.description, 'Course: TypeScript in depth');
  assert.deepEqual(pi.metadata, { knowpay_reference: ref, knowpay_payment_id: `pay_${ref}`, knowpay_order_id: `ord_${ref}`, knowpay_customer_id: 'cus_test' });
  assert.deepEqual(pi.allowed_payment_method_types, ['card']);
  assert.deepEqual(pi.payment_method_types, ['card']);
  assert.equal(pi.livemode, false);
  assert.equal(pi.client_secret, secret);

  assert.deepEqual(audits.map((a) => a.operation), ['create_payment', 'query_payment']);
  const [create, query] = audits;
  assert.deepEqual((create!.request as any).params.metadata.knowpay_reference, ref);
  assert.equal((create!.request as any).idempotencyKey, ref);
  assert.equal((query!.request as any).params.query, `metadata['knowpay_reference']:'${ref}'`);
  const text = JSON.stringify(audits);
  assert.doesNotMatch(text, /_secret_[A-Za-z0-9]/, 'client_secret redacted');
  assert.doesNotMatch(text, /sk_test_[A-Za-z0-9]|whsec_[A-Za-z0-9]/, 'no keys in the audit');
  assert.match(text, /"request_id":"req_/);
});

test('simulate succeeded: query says succeeded; the signed webhook verifies through the connector', async () => {
  const ref = newRef('paid');
  const created = await connector.createPayment(input(ref, { amountMinor: 9000n }));
  const sim = await simulate(ref, 'succeeded');
  assert.equal(sim.status, 200);
  assert.equal(sim.body['status'], 'succeeded');
  assert.equal(sim.body['amount'], 9000);
  assert.equal(sim.body['currency'], 'USD');
  assert.match(sim.body['payment_intent'].latest_charge, /^ch_/);
  assert.equal(sim.body['events'].length, 2, 'charge.succeeded and payment_intent.succeeded');

  const snap = await connector.queryPayment({ channelReference: ref, currency: 'USD' });
  assert.deepEqual(snap, { state: 'succeeded', channelReference: ref, channelTransactionId: created.channelTransactionId, amountMinor: 9000n, currency: 'USD', rawStatus: 'succeeded' });

  const [hook] = await waitReceived(mainFor(ref), 1);
  assert.equal(hook!.type, 'payment_intent.succeeded', 'the main endpoint only gets the subscribed types');
  assert.equal(hook!.headers['content-type'], 'application/json; charset=utf-8');
  assert.match(String(hook!.headers['user-agent']), /^Stripe\/1\.0/);
  assert.match(String(hook!.headers['stripe-signature']), /^t=\d{10},v1=[0-9a-f]{64}$/);
  const text = hook!.rawBody.toString('utf8');
  assert.ok(text.startsWith('{\n  "id": "evt_'), 'pretty-printed like Stripe');
  const verified = await verify(connector, hook!);
  assert.ok(verified.ok, !verified.ok ? verified.reason : '');
  assert.equal(verified.notification.kind, 'payment');
  assert.equal(verified.notification.appId, undefined, "an account's own events carry no account");
  assert.ok(verified.notification.kind === 'payment');
  assert.match(verified.notification.eventId, /^evt_/);
  assert.deepEqual(verified.notification.trade, snap);
  // The same event through the API.
  const event = await sdk().events.retrieve(verified.notification.eventId);
  assert.equal(event.type, 'payment_intent.succeeded');
  assert.equal((event.data.object as { id: string }).id, created.channelTransactionId);
  assert.equal(event.pending_webhooks, 2);

  // Tampered in transit, signed for another endpoint, or replayed late: refused.
  const tampered = Buffer.from(text.replace('"amount": 9000', '"amount": 9'));
  assert.notEqual(tampered.toString(), text);
  assert.equal((await verify(connector, hook!, tampered)).ok, false);
  assert.equal((await verify(allEvents, hook!)).ok, false, 'another endpoint secret');
  const late = makeConnector({ now: () => Date.now() + 400_000 });
  const stale = await verify(late, hook!);
  assert.equal(stale.ok, false);
  assert.match(!stale.ok ? stale.reason : '', /tolerance/);
});

test('simulate failed: query and webhook say failed; the buyer may still pay the same PaymentIntent, as on Stripe', async () => {
  const ref = newRef('fail');
  await connector.createPayment(input(ref));
  const sim = await simulate(ref, 'failed');
  assert.equal(sim.status, 200);
  assert.equal(sim.body['status'], 'requires_payment_method');
  assert.equal(sim.body['payment_intent'].last_payment_error.code, 'card_declined');
  const snap = await connector.queryPayment({ channelReference: ref, currency: 'USD' });
  assert.equal(snap.state, 'failed');
  assert.equal(snap.rawStatus, 'requires_payment_method');
  const [hook] = await waitReceived(mainFor(ref), 1);
  assert.equal(hook!.type, 'payment_intent.payment_failed');
  const v = await verify(connector, hook!);
  assert.ok(v.ok && v.notification.kind === 'payment');
  assert.equal(v.notification.trade.state, 'failed');

  assert.equal((await simulate(ref, 'succeeded')).status, 200, 'requires_payment_method is not final');
  assert.equal((await connector.queryPayment({ channelReference: ref, currency: 'USD' })).state, 'succeeded');
});

test('simulate canceled closes the PaymentIntent and sends payment_intent.canceled; a final one answers 409', async () => {
  const ref = newRef('cancel');
  await connector.createPayment(input(ref));
  const sim = await simulate(ref, 'canceled');
  assert.equal(sim.status, 200);
  assert.equal(sim.body['status'], 'canceled');
  assert.equal(sim.body['payment_intent'].cancellation_reason, 'abandoned');
  const [hook] = await waitReceived(mainFor(ref), 1);
  const v = await verify(connector, hook!);
  assert.ok(v.ok && v.notification.kind === 'payment');
  assert.equal(v.notification.trade.state, 'closed');
  assert.equal((await connector.queryPayment({ channelReference: ref, currency: 'USD' })).state, 'closed');
  for (const outcome of ['succeeded', 'failed', 'canceled']) {
    const again = await simulate(ref, outcome);
    assert.equal(again.status, 409, outcome);
    assert.equal(again.body['error'].code, 'trade_already_final');
    assert.equal(again.body['error'].type, 'invalid_request_error');
  }
});

test('an endpoint subscribed to every event gets the rest too; the connector answers them as ignored', async () => {
  const ref = newRef('all');
  await connector.createPayment(input(ref));
  await simulate(ref, 'succeeded');
  const got = await waitReceived((r) => r.name === 'all' && r.ref === ref, 3);
  assert.deepEqual(got.map((g) => g.type).sort(), ['charge.succeeded', 'payment_intent.created', 'payment_intent.succeeded']);
  for (const g of got) {
    const v = await verify(allEvents, g);
    assert.ok(v.ok, !v.ok ? v.reason : '');
    if (g.type === 'payment_intent.succeeded') {
      assert.equal(v.notification.kind, 'payment');
    } else {
      assert.deepEqual({ kind: v.notification.kind, ref: v.notification.kind === 'ignored' ? v.notification.channelReference : null }, { kind: 'ignored', ref });
    }
    assert.equal((await verify(connector, g)).ok, false, 'signed with the other endpoint secret');
  }
});

// ---- Close ---------------------------------------------------------------------------------------

test('close cancels an open PaymentIntent; closing again, or a paid one, reports what it is', async () => {
  audits = [];
  const ref = newRef('close');
  await connector.createPayment(input(ref));
  const closed = await connector.closePayment({ channelReference: ref, currency: 'USD' });
  assert.equal(closed.state, 'closed');
  assert.equal(closed.rawStatus, 'canceled');
  assert.deepEqual((audits.at(-1)!.request as any).params, { cancellation_reason: 'abandoned' });
  assert.equal((await simulate(ref, 'succeeded')).status, 409, 'the buyer can no longer pay');
  const calls = audits.length;
  assert.equal((await connector.closePayment({ channelReference: ref, currency: 'USD' })).state, 'closed');
  assert.equal(audits.length, calls + 1, 'only the search: nothing to cancel');

  const paid = newRef('close_paid');
  await connector.createPayment(input(paid));
  await simulate(paid, 'succeeded');
  const snap = await connector.closePayment({ channelReference: paid, currency: 'USD' });
  assert.equal(snap.state, 'succeeded');
  assert.equal(snap.amountMinor, 1234n);

  const failed = newRef('close_failed');
  await connector.createPayment(input(failed));
  await simulate(failed, 'failed');
  assert.equal((await connector.closePayment({ channelReference: failed, currency: 'USD' })).state, 'closed', 'a declined PaymentIntent is canceled too');
  assert.equal((await simulate(failed, 'succeeded')).status, 409);

  const unknown = newRef('close_unknown');
  assert.deepEqual(await connector.closePayment({ channelReference: unknown, currency: 'USD' }), { state: 'not_found', channelReference: unknown });
  assert.deepEqual(await connector.queryPayment({ channelReference: unknown, currency: 'USD' }), { state: 'not_found', channelReference: unknown });
});

test('cancel of a paid PaymentIntent is Stripe\'s payment_intent_unexpected_state with the object', async () => {
  const ref = newRef('cancel_paid');
  const created = await connector.createPayment(input(ref));
  await simulate(ref, 'succeeded');
  const res = await raw('POST', `/v1/payment_intents/${created.channelTransactionId}/cancel`, { body: '' });
  assert.equal(res.status, 400);
  assert.equal(res.json['error'].code, 'payment_intent_unexpected_state');
  assert.equal(res.json['error'].type, 'invalid_request_error');
  assert.match(res.json['error'].message, /status of succeeded/);
  assert.equal(res.json['error'].payment_intent.status, 'succeeded');
  const bad = await raw('POST', `/v1/payment_intents/${created.channelTransactionId}/cancel`, { body: 'cancellation_reason=bored' });
  assert.equal(bad.status, 400);
  assert.equal(bad.json['error'].param, 'cancellation_reason');
});

// ---- Idempotency ---------------------------------------------------------------------------------

test('the reference is the Idempotency-Key: the same create answers the same PaymentIntent, other parameters are refused', async () => {
  const ref = newRef('idem');
  const a = await connector.createPayment(input(ref));
  const b = await connector.createPayment(input(ref));
  assert.deepEqual(b, a, 'same PaymentIntent, same client_secret');
  await rejectsWith(connector.createPayment(input(ref, { amountMinor: 1235n })), 'idempotency_error', false);
  const { rows } = await db.pool.query(`SELECT count(*)::int AS n FROM sandbox_stripe_payment_intents WHERE object->'metadata'->>'knowpay_reference' = $1`, [ref]);
  assert.equal(rows[0].n, 1);

  // On the wire: a replay says so; other parameters get Stripe's 400 message, not Knowpay's 409.
  const body = 'amount=5000&currency=usd&metadata[knowpay_reference]=' + ref + 'r';
  const first = await raw('POST', '/v1/payment_intents', { body, idempotencyKey: `${ref}-raw` });
  const replay = await raw('POST', '/v1/payment_intents', { body, idempotencyKey: `${ref}-raw` });
  assert.equal(first.status, 200);
  assert.equal(replay.text, first.text);
  assert.equal(replay.headers.get('idempotent-replayed'), 'true');
  assert.equal(replay.headers.get('original-request'), first.headers.get('request-id'));
  assert.notEqual(replay.headers.get('request-id'), first.headers.get('request-id'));
  const other = await raw('POST', '/v1/payment_intents', { body: body.replace('5000', '5001'), idempotencyKey: `${ref}-raw` });
  assert.equal(other.status, 400);
  assert.deepEqual(other.json, {
    error: {
      message: `Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '${ref}-raw' if you meant to execute a different request.`,
      type: 'idempotency_error',
    },
  });
  const knowpayRows = await db.pool.query('SELECT 1 FROM idempotency_keys WHERE key = $1', [`${ref}-raw`]);
  assert.equal(knowpayRows.rowCount, 0, "the service's own idempotency layer never saw the key");
  // A key never reaches Stripe's store when validation failed: it stays usable.
  const invalid = await raw('POST', '/v1/payment_intents', { body: 'amount=abc&currency=usd', idempotencyKey: `${ref}-v` });
  assert.equal(invalid.status, 400);
  assert.equal((await raw('POST', '/v1/payment_intents', { body: 'amount=700&currency=usd', idempotencyKey: `${ref}-v` })).status, 200);
  const long = await raw('POST', '/v1/payment_intents', { body: 'amount=700&currency=usd', idempotencyKey: 'k'.repeat(256) });
  assert.equal(long.status, 400);
});

test('concurrent requests with one key create one PaymentIntent: the others replay it or get 409', async () => {
  const ref = newRef('race');
  const body = `amount=2500&currency=eur&metadata[knowpay_reference]=${ref}`;
  const results = await Promise.all(Array.from({ length: 8 }, () => raw('POST', '/v1/payment_intents', { body, idempotencyKey: ref })));
  const ids = new Set(results.filter((r) => r.status === 200).map((r) => r.json['id']));
  assert.equal(ids.size, 1, `statuses ${results.map((r) => r.status).join(',')}`);
  for (const r of results.filter((x) => x.status !== 200)) {
    assert.equal(r.status, 409);
    assert.equal(r.json['error'].type, 'idempotency_error');
  }
  const { rows } = await db.pool.query(`SELECT count(*)::int AS n FROM sandbox_stripe_payment_intents WHERE object->'metadata'->>'knowpay_reference' = $1`, [ref]);
  assert.equal(rows[0].n, 1);
});

// ---- Authentication and validation ---------------------------------------------------------------

test('a wrong or missing key gets Stripe\'s 401; Basic auth with the key works', async () => {
  const wrongKey = 'sk_test_' + 'x'.repeat(40) + 'wxyz';
  await rejectsWith(makeConnector({ secretKey: wrongKey }).createPayment(input(newRef('auth'))), 'authentication_error', false);
  await rejectsWith(makeConnector({ secretKey: wrongKey }).queryPayment({ channelReference: 'KPx', currency: 'USD' }), 'authentication_error', false);
  const wrong = await raw('GET', '/v1/payment_intents/pi_123', { key: wrongKey });
  assert.equal(wrong.status, 401);
  assert.deepEqual(wrong.json, { error: { message: `Invalid API Key provided: sk_test_${'*'.repeat(40)}wxyz`, type: 'invalid_request_error' } });
  assert.match(wrong.headers.get('request-id') ?? '', /^req_/);
  const missing = await raw('GET', '/v1/payment_intents/pi_123', { key: null });
  assert.equal(missing.status, 401);
  assert.match(missing.json['error'].message, /^You did not provide an API key/);
  assert.equal(missing.json['error'].type, 'invalid_request_error');
  const publishable = await raw('GET', '/v1/payment_intents/pi_123', { key: keys.publishableKey });
  assert.equal(publishable.status, 401);
  const basic = await raw('GET', '/v1/payment_intents/pi_123', { key: null, headers: { authorization: `Basic ${Buffer.from(`${keys.secretKey}:`).toString('base64')}` } });
  assert.equal(basic.status, 404, 'authenticated; the PaymentIntent does not exist');
  assert.deepEqual(basic.json, {
    error: { code: 'resource_missing', doc_url: 'https://stripe.com/docs/error-codes/resource-missing', message: "No such payment_intent: 'pi_123'", param: 'intent', type: 'invalid_request_error' },
  });
  await assert.rejects(sdk(wrongKey).paymentIntents.list(), (e: unknown) => e instanceof Stripe.errors.StripeAuthenticationError);
});

test('Stripe\'s validation answers: amounts, currencies, unknown parameters', async () => {
  const s = sdk();
  const expectError = async (params: Record<string, unknown>, code: string | undefined, param: string | undefined, message?: RegExp) => {
    await assert.rejects(s.paymentIntents.create(params as never), (e: any) => {
      assert.ok(e instanceof Stripe.errors.StripeInvalidRequestError, String(e));
      assert.equal(e.code, code, e.message);
      assert.equal(e.param, param);
      if (message) assert.match(e.message, message);
      return true;
    });
  };
  await expectError({ amount: 10, currency: 'usd' }, 'amount_too_small', 'amount', /at least 0\.50 usd/);
  await expectError({ amount: 49, currency: 'jpy' }, 'amount_too_small', 'amount', /at least 50 jpy/);
  await expectError({ amount: 100_000_000, currency: 'usd' }, 'amount_too_large', 'amount');
  await expectError({ amount: 0, currency: 'usd' }, 'parameter_invalid_integer', 'amount');
  await expectError({ amount: 1005, currency: 'kwd' }, 'invalid_charge_amount', 'amount');
  await expectError({ amount: 150, currency: 'isk' }, 'invalid_charge_amount_no_decimal_compatible', 'amount');
  await expectError({ currency: 'usd' }, 'parameter_missing', 'amount');
  await expectError({ amount: 1000 }, 'parameter_missing', 'currency');
  await expectError({ amount: 1000, currency: 'xyz' }, undefined, 'currency', /Invalid currency: xyz/);
  await expectError({ amount: 1000, currency: 'usd', colour: 'red' }, 'parameter_unknown', 'colour');
  await expectError({ amount: 1000, currency: 'usd', allowed_payment_method_types: ['alipay'] }, 'payment_method_unactivated', 'allowed_payment_method_types');
  await expectError({ amount: 1000, currency: 'usd', allowed_payment_method_types: ['card'], automatic_payment_methods: { enabled: true } }, 'parameters_exclusive', 'allowed_payment_method_types');
  await expectError({ amount: 1000, currency: 'usd', metadata: { k: 'v'.repeat(501) } }, undefined, 'metadata[k]');
  await expectError({ amount: 1000, currency: 'usd', capture_method: 'manual' }, undefined, 'capture_method');
  const okUpper = await s.paymentIntents.create({ amount: 1000, currency: 'USD' });
  assert.equal(okUpper.currency, 'usd');
  assert.equal(okUpper.automatic_payment_methods?.enabled, true, 'automatic payment methods by default');
  const legacy = await raw('POST', '/v1/payment_intents', { body: 'amount=1000&currency=usd&payment_method_types[]=card' });
  assert.equal(legacy.status, 200, 'the pre-endive field is accepted');
  const malformed = await raw('POST', '/v1/payment_intents', { body: 'amount=1000&currency=usd&metadata[a]=1&metadata[a]=2' });
  assert.equal(malformed.status, 400);
  const json = await raw('POST', '/v1/payment_intents', { body: '{"amount":1000}', headers: { 'content-type': 'application/json' } });
  assert.equal(json.status, 400);
  assert.equal(json.json['error'].type, 'invalid_request_error');
});

test('the connector refuses what Stripe cannot take before any call', async () => {
  audits = [];
  await rejectsWith(connector.createPayment(input(newRef('r'), { method: 'alipay' })), 'method_not_supported', false);
  await rejectsWith(connector.createPayment(input(newRef('r'), { currency: 'LYD', amountMinor: 1000n })), 'currency_not_supported', false);
  await rejectsWith(connector.createPayment(input(newRef('r'), { currency: 'XXX' })), 'currency_not_supported', false);
  await rejectsWith(connector.createPayment(input(newRef('r'), { currency: 'KWD', amountMinor: 1001n })), 'amount_invalid', false);
  await rejectsWith(connector.createPayment(input(newRef('r'), { amountMinor: 0n })), 'amount_invalid', false);
  await rejectsWith(connector.createPayment(input(newRef('r'), { amountMinor: 100_000_000n })), 'amount_invalid', false);
  await rejectsWith(connector.createPayment(input("KP'x")), 'reference_invalid', false);
  await rejectsWith(connector.createPayment(input('K'.repeat(65))), 'reference_invalid', false);
  await rejectsWith(connector.createPayment(input(newRef('r'), { subject: '   ' })), 'subject_invalid', false);
  await rejectsWith(connector.queryPayment({ channelReference: "x' OR status:'succeeded", currency: 'USD' }), 'reference_invalid', false);
  await rejectsWith(connector.closePayment({ channelReference: 'KPok', currency: 'IQD' }), 'currency_not_supported', false);
  assert.equal(audits.length, 0, 'nothing was sent');
  // Stripe's own refusal comes back as its code.
  await rejectsWith(connector.createPayment(input(newRef('small'), { amountMinor: 10n })), 'amount_too_small', false);
});

test('zero-decimal, three-decimal and ISK amounts convert at the edge, both ways', async () => {
  const cases: Array<[string, bigint, number]> = [['JPY', 500n, 500], ['KWD', 1230n, 1230], ['ISK', 5n, 500], ['EUR', 999n, 999], ['UGX', 3000n, 3000]];
  for (const [currency, minor, stripeAmount] of cases) {
    const ref = newRef(currency);
    const created = await connector.createPayment(input(ref, { currency, amountMinor: minor }));
    const pi = await sdk().paymentIntents.retrieve(created.channelTransactionId!);
    assert.deepEqual([pi.amount, pi.currency], [stripeAmount, currency.toLowerCase()], currency);
    await simulate(ref, 'succeeded');
    const snap = await connector.queryPayment({ channelReference: ref, currency });
    assert.deepEqual([snap.state, snap.amountMinor, snap.currency], ['succeeded', minor, currency], currency);
    const [hook] = await waitReceived(mainFor(ref), 1);
    const v = await verify(connector, hook!);
    assert.ok(v.ok && v.notification.kind === 'payment');
    assert.deepEqual([v.notification.trade.amountMinor, v.notification.trade.currency], [minor, currency]);
  }
});

// ---- The rest of the API ---------------------------------------------------------------------------

test('search: fields, operators, AND/OR, negation, pagination; malformed queries are 400', async () => {
  const s = sdk();
  const tag = newRef('search');
  const made: string[] = [];
  for (const [amount, currency] of [[1000, 'gbp'], [2000, 'gbp'], [3000, 'gbp'], [4000, 'chf']] as const) {
    const pi = await s.paymentIntents.create({ amount, currency, metadata: { batch: tag, amount: String(amount) } });
    made.push(pi.id);
  }
  await s.paymentIntents.cancel(made[3]!);
  const ids = async (query: string, limit = 10) => (await s.paymentIntents.search({ query, limit })).data.map((p) => p.id).sort();
  assert.deepEqual(await ids(`metadata['batch']:'${tag}'`), [...made].sort());
  assert.deepEqual(await ids(`metadata["batch"]:"${tag}" AND amount>=2000 AND currency:'gbp'`), [made[1]!, made[2]!].sort());
  assert.deepEqual(await ids(`metadata['batch']:'${tag}' AND -status:'canceled'`), made.slice(0, 3).sort());
  assert.deepEqual(await ids(`metadata['amount']:'1000' OR metadata['amount']:'4000'`).then((l) => l.filter((id) => made.includes(id))), [made[0]!, made[3]!].sort());
  assert.deepEqual(await ids(`metadata['batch']:'${tag}' AND amount<1500`), [made[0]!]);
  const page1 = await s.paymentIntents.search({ query: `metadata['batch']:'${tag}'`, limit: 3 });
  assert.equal(page1.has_more, true);
  assert.equal(page1.object, 'search_result');
  const page2 = await s.paymentIntents.search({ query: `metadata['batch']:'${tag}'`, limit: 3, page: page1.next_page! });
  assert.equal(page2.has_more, false);
  assert.equal(page2.next_page, null);
  assert.deepEqual([...page1.data, ...page2.data].map((p) => p.id).sort(), [...made].sort());
  for (const bad of [`metadata['batch']:'x' AND amount>1 OR status:'x'`, `colour:'red'`, `status>'x'`, `metadata['batch']:'unterminated`, `amount:'ten'`, '']) {
    await assert.rejects(s.paymentIntents.search({ query: bad }), (e: any) => e instanceof Stripe.errors.StripeInvalidRequestError && (e.param === 'query'), bad);
  }
  await assert.rejects(s.paymentIntents.search({ query: `status:'x'`, limit: 101 }), (e: any) => e.param === 'limit');
  await assert.rejects(s.paymentIntents.search({ query: `status:'x'`, page: 'garbage' }), (e: any) => e.param === 'page');
});

test('confirm with Stripe\'s test cards: paid, declined (402 card_error), and the state rules', async () => {
  const s = sdk();
  const ok = await s.paymentIntents.create({ amount: 1500, currency: 'usd', metadata: { knowpay_reference: newRef('cv') } });
  const paid = await s.paymentIntents.confirm(ok.id, { payment_method: 'pm_card_visa' });
  assert.equal(paid.status, 'succeeded');
  assert.equal(paid.amount_received, 1500);
  assert.match(String(paid.latest_charge), /^ch_/);
  await assert.rejects(s.paymentIntents.confirm(ok.id, { payment_method: 'pm_card_visa' }), (e: any) => e.code === 'payment_intent_unexpected_state' && e.statusCode === 400);

  const ref = newRef('cd');
  const declined = await s.paymentIntents.create({ amount: 1500, currency: 'usd', metadata: { knowpay_reference: ref } });
  await assert.rejects(s.paymentIntents.confirm(declined.id, { payment_method: 'pm_card_chargeDeclinedInsufficientFunds' }), (e: any) => {
    assert.ok(e instanceof Stripe.errors.StripeCardError);
    assert.equal(e.code, 'card_declined');
    assert.equal(e.decline_code, 'insufficient_funds');
    assert.equal(e.payment_intent?.status, 'requires_payment_method');
    return true;
  });
  assert.equal((await connector.queryPayment({ channelReference: ref, currency: 'USD' })).state, 'failed');
  await assert.rejects(s.paymentIntents.confirm(declined.id, { payment_method: 'pm_card_nonsense' }), (e: any) => e.code === 'resource_missing' && e.param === 'payment_method');
  await assert.rejects(s.paymentIntents.confirm(declined.id, {}), (e: any) => e.code === 'payment_intent_unexpected_state');
  const retried = await s.paymentIntents.confirm(declined.id, { payment_method: 'pm_card_mastercard' });
  assert.equal(retried.status, 'succeeded');
  assert.equal(retried.last_payment_error, null);
  const [hook] = await waitReceived(mainFor(ref, 'payment_intent.succeeded'), 1);
  assert.ok((await verify(connector, hook!)).ok);

  const atOnce = await s.paymentIntents.create({ amount: 800, currency: 'usd', confirm: true, payment_method: 'pm_card_visa' });
  assert.equal(atOnce.status, 'succeeded');
});

test('unknown objects and routes answer Stripe\'s 404s', async () => {
  await assert.rejects(sdk().paymentIntents.retrieve('pi_doesnotexist'), (e: any) => e.code === 'resource_missing' && e.statusCode === 404);
  await assert.rejects(sdk().events.retrieve('evt_nothing'), (e: any) => e.code === 'resource_missing');
  const route = await raw('GET', '/v1/customers');
  assert.equal(route.status, 404);
  assert.match(route.json['error'].message, /^Unrecognized request URL \(GET: \/v1\/customers\)/);
  assert.equal(route.json['error'].type, 'invalid_request_error');
  assert.equal((await raw('GET', '/v1/customers', { key: null })).status, 401, 'authentication comes before routing');
  const unknownParam = await raw('GET', '/v1/payment_intents/pi_x?expand[]=customer');
  assert.equal(unknownParam.status, 400);
  assert.equal(unknownParam.json['error'].param, 'expand');
});

test('simulate: unknown reference 404, bad input 400, in the Knowpay error shape', async () => {
  const unknown = await simulate('KPnosuch', 'succeeded');
  assert.equal(unknown.status, 404);
  assert.deepEqual(Object.keys(unknown.body['error']).sort(), ['code', 'message', 'param', 'type']);
  assert.equal(unknown.body['error'].code, 'trade_not_found');
  const ref = newRef('sim');
  await connector.createPayment(input(ref));
  const badOutcome = await simulate(ref, 'refunded');
  assert.equal(badOutcome.status, 400);
  assert.equal(badOutcome.body['error'].param, 'outcome');
  const missing = await fetch(`${base}/sandbox/stripe/simulate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ outcome: 'succeeded' }) });
  assert.equal(missing.status, 400);
  assert.equal(((await missing.json()) as any).error.param, 'channel_reference');
  const view = await fetch(`${base}/sandbox/stripe/trades/${ref}`);
  assert.equal(view.status, 200);
  const body = (await view.json()) as Record<string, any>;
  assert.equal(body['status'], 'requires_payment_method');
  assert.equal(body['events'].length, 1, 'payment_intent.created');
  assert.equal((await fetch(`${base}/sandbox/stripe/trades/KPnothing`)).status, 404);
});

// ---- Delivery: retries, faults, several processes ----------------------------------------------------

test('a failing endpoint is retried on Stripe\'s (compressed) schedule with the same event, signed afresh', async () => {
  const ref = newRef('retry');
  answers.set(ref, (n) => (n === 1 ? 500 : n === 2 ? 302 : 200));
  await connector.createPayment(input(ref));
  const t0 = Date.now();
  assert.equal((await simulate(ref, 'succeeded')).status, 200);
  const got = await waitReceived(mainFor(ref), 3, 8000);
  const times = [t0, ...got.map((g) => g.at)];
  const gaps = times.slice(1).map((t, i) => t - times[i]!);
  const expected = [0, 60, 300]; // at once, 1 min, 5 min; × 0.001
  for (const [i, want] of expected.entries()) {
    assert.ok(gaps[i]! >= want - 5 && gaps[i]! < want + 400, `attempt ${i + 1}: gap ${gaps[i]} ms, expected about ${want}`);
  }
  const bodies = new Set(got.map((g) => g.rawBody.toString('utf8')));
  assert.equal(bodies.size, 1, 'the same bytes every time');
  const stamps = got.map((g) => Number(/^t=(\d+)/.exec(String(g.headers['stripe-signature']))![1]));
  assert.ok(stamps.every((t, i) => i === 0 || t >= stamps[i - 1]!));
  for (const g of got) assert.ok((await verify(connector, g)).ok);
  await new Promise((r) => setTimeout(r, 2000)); // the next slot would be +30 min × 0.001 = 1.8 s
  assert.equal(received.filter(mainFor(ref)).length, 3, 'nothing after the 2xx');
  const rows = await waitForSandboxNotifications(db.pool, { channel: 'stripe', channelReference: ref, timeoutMs: 1000, until: (r) => r.some((x) => x.url.endsWith('/hooks/main') && x.status === 'delivered') });
  const main = rows.find((r) => r.url.endsWith('/hooks/main'))!;
  assert.equal(main.attempts, 3);
  const attempts = await listSandboxNotificationAttempts(db.pool, main.id);
  assert.deepEqual(attempts.map((a) => [a.statusCode, a.acknowledged]), [[500, false], [302, false], [200, true]]);
});

test('attempts are bounded: an endpoint that never answers 2xx gets exactly 12 deliveries', async () => {
  const isolated = await freshDatabase();
  const port = await freePort();
  const fast = await buildApp(isolated.pool, port, 0.00001); // 67.6 h in about 2.4 s
  try {
    const c = makeConnector({ apiBase: `http://127.0.0.1:${port}/sandbox/stripe` });
    const ref = newRef('never');
    answers.set(ref, () => 503);
    await c.createPayment(input(ref));
    assert.equal((await simulate(ref, 'succeeded', `http://127.0.0.1:${port}`)).status, 200);
    const rows = await waitForSandboxNotifications(isolated.pool, { channel: 'stripe', channelReference: ref, timeoutMs: 15000 });
    const main = rows.find((r) => r.url.endsWith('/hooks/main'))!;
    assert.equal(main.status, 'failed');
    assert.equal(main.attempts, 12);
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(received.filter(mainFor(ref)).length, 12);
  } finally {
    await fast.close();
    await isolated.drop();
  }
});

async function faults(body: unknown, method = 'POST') {
  const res = await fetch(`${base}/sandbox/faults`, { method, ...(method === 'POST' ? { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) } : {}) });
  return { status: res.status, body: (await res.json()) as Record<string, any> };
}

test('faults: a dropped webhook never arrives (the query still settles); a duplicated one arrives twice, identical', async () => {
  try {
    assert.equal((await faults({ channel: 'stripe', drop_rate: 1 })).status, 200);
    const dropped = newRef('drop');
    await connector.createPayment(input(dropped));
    await simulate(dropped, 'succeeded');
    const rows = await waitForSandboxNotifications(db.pool, { channel: 'stripe', channelReference: dropped, timeoutMs: 2000 });
    assert.ok(rows.every((r) => r.status === 'dropped'));
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(received.filter(mainFor(dropped)).length, 0);
    assert.equal((await connector.queryPayment({ channelReference: dropped, currency: 'USD' })).state, 'succeeded');

    assert.equal((await faults({ channel: 'stripe', drop_rate: 0, duplicate_rate: 1 })).status, 200);
    const dup = newRef('dup');
    await connector.createPayment(input(dup));
    await simulate(dup, 'succeeded');
    const got = await waitReceived(mainFor(dup), 2);
    assert.equal(got[0]!.rawBody.toString(), got[1]!.rawBody.toString());
    const [a, b] = await Promise.all(got.map((g) => verify(connector, g)));
    assert.ok(a!.ok && b!.ok && a!.notification.eventId === b!.notification.eventId, 'the same event id: the receiver deduplicates');
  } finally {
    assert.equal((await faults(null, 'DELETE')).status, 200);
  }
});

test('two service processes sharing one database see the same PaymentIntents and deliver each webhook once', async () => {
  const port = await freePort();
  const other = await buildApp(db.pool, port, TIME_SCALE);
  try {
    const otherConnector = makeConnector({ apiBase: `http://127.0.0.1:${port}/sandbox/stripe` });
    const refs = Array.from({ length: 6 }, () => newRef('multi'));
    for (const [i, ref] of refs.entries()) await (i % 2 ? connector : otherConnector).createPayment(input(ref));
    for (const [i, ref] of refs.entries()) assert.equal((await simulate(ref, 'succeeded', i % 2 ? `http://127.0.0.1:${port}` : base)).status, 200);
    for (const ref of refs) assert.equal((await otherConnector.queryPayment({ channelReference: ref, currency: 'USD' })).state, 'succeeded');
    for (const ref of refs) await waitReceived(mainFor(ref), 1);
    await new Promise((r) => setTimeout(r, 400));
    for (const ref of refs) assert.equal(received.filter(mainFor(ref)).length, 1, `${ref} delivered once`);
  } finally {
    await other.close();
  }
});

// ---- Malformed traffic and the pieces on their own --------------------------------------------------

test('malformed API requests get Stripe-shaped 4xx answers and change nothing', async () => {
  const before = await db.pool.query('SELECT count(*)::int AS n FROM sandbox_stripe_payment_intents');
  const huge = await raw('POST', '/v1/payment_intents', { body: `amount=1000&currency=usd&description=${'x'.repeat(300 * 1024)}` });
  assert.equal(huge.status, 413);
  assert.equal(huge.json['error'].type, 'invalid_request_error');
  const badEscape = await raw('POST', '/v1/payment_intents', { body: 'amount=1000&currency=usd&description=%zz' });
  assert.equal(badEscape.status, 400);
  assert.match(badEscape.json['error'].message, /percent-encoding/);
  const deep = await raw('POST', '/v1/payment_intents', { body: 'amount=1000&currency=usd&metadata[a][b][c][d][e][f]=1' });
  assert.equal(deep.status, 400);
  const badJson = await raw('POST', '/v1/payment_intents', { body: '{', headers: { 'content-type': 'application/json' } });
  assert.equal(badJson.status, 400);
  assert.equal(badJson.json['error'].type, 'invalid_request_error');
  for (const path of ['/v1/payment_intents/pi_missing/confirm', '/v1/payment_intents/pi_missing/cancel']) {
    const r = await raw('POST', path, { body: '' });
    assert.equal(r.status, 404, path);
    assert.equal(r.json['error'].code, 'resource_missing');
  }
  const unknownConfirmParam = await raw('POST', '/v1/payment_intents/pi_missing/confirm', { body: 'amount=5' });
  assert.equal(unknownConfirmParam.json['error'].code, 'parameter_unknown');
  const emptyKey = await raw('POST', '/v1/payment_intents', { body: 'amount=1000&currency=usd', headers: { 'idempotency-key': '' } });
  assert.equal(emptyKey.status, 400, 'an empty Idempotency-Key');
  const after = await db.pool.query('SELECT count(*)::int AS n FROM sandbox_stripe_payment_intents');
  assert.equal(after.rows[0].n, before.rows[0].n);
  // The same key on another endpoint is another request: refused like other parameters.
  const ref = newRef('keypath');
  const created = await raw('POST', '/v1/payment_intents', { body: 'amount=1000&currency=usd', idempotencyKey: ref });
  assert.equal(created.status, 200);
  const elsewhere = await raw('POST', `/v1/payment_intents/${created.json['id']}/cancel`, { body: 'amount=1000&currency=usd', idempotencyKey: ref });
  assert.equal(elsewhere.status, 400);
  const samePathOtherBody = await raw('POST', `/v1/payment_intents/${created.json['id']}/cancel`, { body: '', idempotencyKey: ref });
  assert.equal(samePathOtherBody.json['error'].type, 'idempotency_error');
  assert.equal((await sdk().paymentIntents.retrieve(created.json['id'])).status, 'requires_payment_method', 'nothing was canceled');
});

test('keys: how a presented key is read and shown', () => {
  assert.equal(presentedKey('Bearer sk_test_abc'), 'sk_test_abc');
  assert.equal(presentedKey('bearer   sk_test_abc '), 'sk_test_abc');
  assert.equal(presentedKey(`Basic ${Buffer.from('sk_test_abc:').toString('base64')}`), 'sk_test_abc');
  for (const h of [undefined, '', 'Bearer', 'Bearer a b', 'Token sk_test_abc', `Basic ${Buffer.from(':pw').toString('base64')}`, 'Basic !!!']) {
    assert.equal(presentedKey(h), null, String(h));
  }
  assert.equal(redactKey('sk_test_0123456789abcd'), 'sk_test_**********abcd');
  assert.equal(redactKey('pk_live_0123456789'), 'pk_live_******6789');
  assert.equal(redactKey('undefined'), '*****ined');
  assert.equal(redactKey('abc'), '***');
  assert.equal(redactKey('sk_test_abcd'), '************');
});

test('the webhook spec: Stripe headers, 2xx only, 12 attempts within three days; an unknown endpoint is sent unsigned', async () => {
  const endpoints = new Map([['we_1', { id: 'we_1', url: 'http://x/h', secret: 'whsec_spec', enabledEvents: ['*'] }]]);
  const spec = stripeNotificationSpec(endpoints);
  assert.equal(spec.scheduleMs.length, 12);
  const total = STRIPE_NOTIFY_SCHEDULE_MS.reduce((a, b) => a + b, 0);
  assert.ok(total <= 72 * 3600_000 && total > 60 * 3600_000, `${total / 3600_000} h`);
  const body = JSON.stringify({ id: 'evt_1', object: 'event', type: 'ping', data: { object: { id: 'x' } }, livemode: false }, null, 2);
  const ctx = { eventId: 'evt_1', channelReference: 'r', url: 'http://x/h', attempt: 1, now: new Date() };
  const req = spec.buildRequest({ endpoint_id: 'we_1', body }, ctx);
  assert.equal(req.body, body);
  const c = makeConnector({ webhookSecret: 'whsec_spec' });
  assert.ok((await c.verifyNotification({ headers: req.headers, rawBody: Buffer.from(req.body), contentType: req.headers['content-type'] }, async () => null)).ok);
  const orphan = spec.buildRequest({ endpoint_id: 'we_gone', body }, ctx);
  assert.match(orphan.headers['stripe-signature']!, /^t=\d+$/);
  assert.equal((await c.verifyNotification({ headers: orphan.headers, rawBody: Buffer.from(orphan.body) }, async () => null)).ok, false);
  for (const status of [200, 201, 204, 299]) assert.equal(spec.isAcknowledged({ status, body: '' }), true, String(status));
  for (const status of [199, 301, 302, 400, 404, 500, 503]) assert.equal(spec.isAcknowledged({ status, body: '{"received":true}' }), false, String(status));
});

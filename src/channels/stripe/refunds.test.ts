/**
 * Refunds: the connector against the sandbox over real HTTP (127.0.0.1) through the official SDK.
 * Two mounts of the sandbox share one database and one account: `/sandbox/stripe` leaves pending
 * refunds to `/refunds/simulate` (refundSettleMs: null, deterministic), `/sandbox/stripe-auto`
 * finishes them by itself after Stripe's delay × timeScale.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import Fastify, { type FastifyInstance } from 'fastify';
import formbody from '@fastify/formbody';
import Stripe from 'stripe';
import { freshDatabase, type TestDatabase } from '../../../test/support/db.ts';
import { installIdempotency } from '../../http/idempotency.ts';
import { ChannelError, type ChannelConnector, type CreatePaymentInput, type RefundRequest } from '../types.ts';
import { faultsPlugin } from '../sandbox/faults.ts';
import { createStripeConnector, prefixedHttpClient, type StripeAuditEntry, type StripeConfig } from './connector.ts';
import { KNOWPAY_ENABLED_EVENTS, generateStripeSandboxKeys, stripeSandboxPlugin, type StripeSandboxKeys } from './sandbox.ts';
import { rejectsWith as rejectsWithChannelError } from '../../../test/support/assertions.ts';
import { freePort } from '../../store/embedded.ts';

const TIME_SCALE = 0.001;

interface Received { rawBody: Buffer; headers: Record<string, string | string[] | undefined>; ref: string | null; type: string; status: string | null }

let db: TestDatabase;
let keys: StripeSandboxKeys;
let app: FastifyInstance;
let base = '';
let connector: ChannelConnector;
let auto: ChannelConnector;
let audits: StripeAuditEntry[] = [];
const received: Received[] = [];
let counter = 0;

before(async () => {
  db = await freshDatabase();
  keys = generateStripeSandboxKeys();
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  app = Fastify();
  await app.register(formbody);
  installIdempotency(app, db.pool);
  await app.register(faultsPlugin, { pool: db.pool });
  const endpoints = [{ id: keys.webhookEndpointId, url: `${base}/hooks/main`, secret: keys.webhookSecret, enabledEvents: KNOWPAY_ENABLED_EVENTS }];
  const common = { pool: db.pool, accountId: keys.accountId, secretKey: keys.secretKey, timeScale: TIME_SCALE, webhookEndpoints: endpoints };
  await app.register(stripeSandboxPlugin, { prefix: '/sandbox/stripe', ...common, refundSettleMs: null });
  await app.register(stripeSandboxPlugin, { prefix: '/sandbox/stripe-auto', ...common, deliverNotifications: false });
  await app.register(async (r) => {
    r.removeAllContentTypeParsers();
    r.addContentTypeParser('*', { parseAs: 'buffer' }, (_q, body, done) => done(null, body));
    r.post('/hooks/main', async (req, reply) => {
      const rawBody = req.body as Buffer;
      const event = JSON.parse(rawBody.toString('utf8')) as { type: string; data: { object: { status?: string; metadata?: Record<string, string> } } };
      const object = event.data.object;
      received.push({ rawBody, headers: req.headers, ref: object.metadata?.['knowpay_reference'] ?? null, type: event.type, status: object.status ?? null });
      return reply.code(200).type('application/json').send('{"received":true}');
    });
  });
  await app.listen({ host: '127.0.0.1', port });
  connector = makeConnector();
  auto = makeConnector({ apiBase: `${base}/sandbox/stripe-auto` });
});

after(async () => {
  await app.close();
  await db.drop();
});

function makeConnector(over: Partial<StripeConfig> = {}): ChannelConnector {
  return createStripeConnector({
    secretKey: keys.secretKey, webhookSecret: keys.webhookSecret, accountId: keys.accountId,
    apiBase: `${base}/sandbox/stripe`, timeoutMs: 5000, maxNetworkRetries: 0, audit: (e) => audits.push(e), ...over,
  });
}

function sdk(): Stripe {
  const url = new URL(base);
  return new Stripe(keys.secretKey, { host: url.hostname, port: url.port, protocol: 'http', maxNetworkRetries: 0, httpClient: prefixedHttpClient(Stripe.createNodeHttpClient(), '/sandbox/stripe') });
}

const newRef = (tag: string) => `KP${tag}${process.pid}x${++counter}`;

/** A paid PaymentIntent: created through the connector, paid by the sandbox's buyer. */
async function paid(tag: string, amountMinor = 9000n, opts: { currency?: string; paymentMethod?: string } = {}): Promise<{ ref: string; pi: string; amountMinor: bigint; currency: string }> {
  const ref = newRef(tag);
  const currency = opts.currency ?? 'USD';
  const input: CreatePaymentInput = {
    channelReference: ref, paymentId: `pay_${ref}`, orderId: `ord_${ref}`, customerId: 'cus_test', items: [], method: 'card', amountMinor, currency,
    subject: 'Course: refunds in depth', notifyUrl: `${base}/v1/notify/stripe`, expiresAt: new Date(Date.now() + 60_000),
  };
  const created = await connector.createPayment(input);
  const sim = await post('/sandbox/stripe/simulate', { channel_reference: ref, outcome: 'succeeded', ...(opts.paymentMethod ? { payment_method: opts.paymentMethod } : {}) });
  assert.equal(sim.status, 200, JSON.stringify(sim.body));
  return { ref, pi: created.channelTransactionId!, amountMinor, currency };
}

function refund(p: { ref: string; pi: string; amountMinor: bigint; currency: string }, refundReference: string, amountMinor: bigint, over: Partial<RefundRequest> = {}): RefundRequest {
  return { channelReference: p.ref, channelTransactionId: p.pi, refundReference, amountMinor, paymentAmountMinor: p.amountMinor, currency: p.currency, notifyUrl: `${base}/v1/notify/stripe`, ...over };
}

async function post(path: string, body: unknown) {
  const res = await fetch(`${base}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: res.status, body: (await res.json()) as Record<string, any> };
}

async function get(path: string) {
  const res = await fetch(`${base}${path}`);
  return { status: res.status, body: (await res.json()) as Record<string, any> };
}

async function raw(method: string, path: string, body?: string, key: string | null = keys.secretKey) {
  const headers: Record<string, string> = { 'content-type': 'application/x-www-form-urlencoded' };
  if (key !== null) headers['authorization'] = `Bearer ${key}`;
  const res = await fetch(`${base}/sandbox/stripe${path}`, { method, headers, ...(body !== undefined ? { body } : {}) });
  return { status: res.status, json: (await res.json()) as Record<string, any> };
}

const rejectsWith = (p: Promise<unknown>, code: string, retryable = false, message?: RegExp) => rejectsWithChannelError(p, code, retryable, message, 'stripe');

async function waitFor<T>(what: string, probe: () => Promise<T | null | undefined | false>, timeoutMs = 5000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const hooksFor = (ref: string, type?: string) => received.filter((r) => r.ref === ref && (type === undefined || r.type === type));
const verify = (c: ChannelConnector, r: Received, body = r.rawBody) =>
  c.verifyNotification({ headers: r.headers, rawBody: body, contentType: String(r.headers['content-type']) }, async () => null);

// ---- Full, partial, several partials, over-refund ---------------------------------------------------

test('a full refund is succeeded at once; the charge is used up, the PaymentIntent stays succeeded; audited, redacted', async () => {
  const p = await paid('full', 9000n);
  audits = [];
  const snap = await connector.refundPayment!(refund(p, `RF${p.ref}`, 9000n, { reason: 'requested_by_customer' }));
  assert.equal(snap.state, 'succeeded');
  assert.equal(snap.rawStatus, 'succeeded');
  assert.equal(snap.refundReference, `RF${p.ref}`);
  assert.equal(snap.channelReference, p.ref);
  assert.equal(snap.amountMinor, 9000n);
  assert.equal(snap.currency, 'USD');
  assert.match(snap.channelRefundId ?? '', /^re_[A-Za-z0-9]{24}$/);

  const trade = await get(`/sandbox/stripe/trades/${p.ref}`);
  assert.equal(trade.body['status'], 'succeeded', 'Stripe keeps the PaymentIntent succeeded after a refund');
  assert.equal(trade.body['amount_refunded'], 9000);
  assert.equal(trade.body['amount_refundable'], 0);
  assert.equal(trade.body['refunds'].length, 1);
  assert.equal((await connector.queryPayment({ channelReference: p.ref, currency: 'USD', channelTransactionId: p.pi })).state, 'succeeded');

  const r = await sdk().refunds.retrieve(snap.channelRefundId!);
  assert.equal(r.payment_intent, p.pi);
  assert.equal(r.reason, 'requested_by_customer');
  assert.deepEqual(r.metadata, { knowpay_refund_reference: `RF${p.ref}`, knowpay_reference: p.ref });
  assert.match(String(r.charge), /^ch_/);

  assert.deepEqual(audits.map((a) => a.operation), ['refund_payment', 'refund_payment', 'refund_payment', 'query_payment']);
  const [intentRead, lookup, create] = audits;
  assert.equal((intentRead!.request as any).path, `/v1/payment_intents/${p.pi}`);
  assert.equal((lookup!.request as any).path, '/v1/refunds');
  assert.equal((create!.request as any).path, '/v1/refunds');
  assert.equal((create!.request as any).idempotencyKey, `RF${p.ref}`);
  assert.equal((create!.request as any).params.amount, 9000);
  assert.ok(audits.every((a) => a.channelReference === p.ref && !a.error));
  assert.match(JSON.stringify(create!.response), /"status":"succeeded"/);
  assert.doesNotMatch(JSON.stringify(audits), /sk_test_[A-Za-z0-9]|whsec_[A-Za-z0-9]/);

  // Nothing is left: Stripe's charge_already_refunded, not retryable.
  await rejectsWith(connector.refundPayment!(refund(p, `RF${p.ref}b`, 1n)), 'charge_already_refunded', false, /has already been refunded/);
});

test('several partial refunds up to the total; more than the remainder is Stripe\'s amount_too_large', async () => {
  const p = await paid('partial', 9000n);
  const first = await connector.refundPayment!(refund(p, `RF${p.ref}a`, 2000n));
  const second = await connector.refundPayment!(refund(p, `RF${p.ref}b`, 3000n));
  assert.deepEqual([first.state, second.state], ['succeeded', 'succeeded']);
  assert.notEqual(first.channelRefundId, second.channelRefundId);
  assert.equal((await get(`/sandbox/stripe/trades/${p.ref}`)).body['amount_refundable'], 4000);

  await rejectsWith(connector.refundPayment!(refund(p, `RF${p.ref}c`, 4001n)), 'amount_too_large', false, /^Refund amount \(\$40\.01\) is greater than unrefunded amount on charge \(\$40\.00\)$/);
  const last = await connector.refundPayment!(refund(p, `RF${p.ref}d`, 4000n));
  assert.equal(last.state, 'succeeded');
  const trade = await get(`/sandbox/stripe/trades/${p.ref}`);
  assert.deepEqual([trade.body['amount_refunded'], trade.body['amount_refundable'], trade.body['refunds'].length], [9000, 0, 3]);
  await rejectsWith(connector.refundPayment!(refund(p, `RF${p.ref}e`, 1n)), 'charge_already_refunded');
  // The refused ones made no refund.
  const all = await sdk().refunds.list({ payment_intent: p.pi, limit: 100 });
  assert.deepEqual(all.data.map((r) => r.amount).sort(), [2000, 3000, 4000]);
});

test('a first refund larger than the payment is refused; zero-decimal currencies refund in their own units', async () => {
  const p = await paid('over', 1234n);
  await rejectsWith(connector.refundPayment!(refund(p, `RF${p.ref}`, 1235n)), 'amount_too_large', false, /\(\$12\.35\) is greater than unrefunded amount on charge \(\$12\.34\)/);
  assert.equal((await get(`/sandbox/stripe/trades/${p.ref}`)).body['refunds'].length, 0);

  const yen = await paid('yen', 5000n, { currency: 'JPY' });
  const snap = await connector.refundPayment!(refund(yen, `RF${yen.ref}`, 1500n));
  assert.deepEqual([snap.amountMinor, snap.currency], [1500n, 'JPY']);
  await rejectsWith(connector.refundPayment!(refund(yen, `RF${yen.ref}b`, 3501n)), 'amount_too_large', false, /\(¥3501\) is greater than unrefunded amount on charge \(¥3500\)/);
});

test('concurrent refunds never exceed the charge: exactly the ones that fit succeed', async () => {
  const p = await paid('race', 3000n);
  const results = await Promise.allSettled(Array.from({ length: 5 }, (_, i) => makeConnector({ maxNetworkRetries: 2 }).refundPayment!(refund(p, `RF${p.ref}n${i}`, 1000n))));
  const ok = results.filter((r) => r.status === 'fulfilled');
  const refused = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
  assert.equal(ok.length, 3, JSON.stringify(refused.map((r) => String(r.reason))));
  for (const r of refused) assert.ok(r.reason instanceof ChannelError && ['amount_too_large', 'charge_already_refunded'].includes(r.reason.code), String(r.reason));
  const trade = await get(`/sandbox/stripe/trades/${p.ref}`);
  assert.deepEqual([trade.body['amount_refunded'], trade.body['refunds'].length], [3000, 3]);
});

// ---- Idempotency -----------------------------------------------------------------------------------

test('one refund number refunds once: a replay answers the same refund; another amount is refused', async () => {
  const p = await paid('idem', 9000n);
  const ref = `RF${p.ref}`;
  const first = await connector.refundPayment!(refund(p, ref, 2500n));
  const again = await connector.refundPayment!(refund(p, ref, 2500n));
  assert.deepEqual(again, first);
  await rejectsWith(connector.refundPayment!(refund(p, ref, 2600n)), 'idempotency_error');
  assert.equal((await get(`/sandbox/stripe/trades/${p.ref}`)).body['refunds'].length, 1);

  // Stripe's own Idempotency-Key layer, as the SDK's retries meet it: replayed, or refused for other parameters.
  const s = sdk();
  const params = { payment_intent: p.pi, amount: 1000, metadata: { knowpay_refund_reference: `${ref}k`, knowpay_reference: p.ref } };
  const a = await s.refunds.create(params, { idempotencyKey: `${ref}k` });
  const b = await s.refunds.create(params, { idempotencyKey: `${ref}k` });
  assert.equal(b.id, a.id);
  assert.equal(b.lastResponse.headers['idempotent-replayed'], 'true');
  await assert.rejects(s.refunds.create({ ...params, amount: 1001 }, { idempotencyKey: `${ref}k` }), (e: any) => e.rawType === 'idempotency_error' && e.statusCode === 400);
  assert.equal((await get(`/sandbox/stripe/trades/${p.ref}`)).body['amount_refunded'], 3500);
});

// ---- Query -----------------------------------------------------------------------------------------

test('query by refund number and by refund id; unknown ones are refund_not_found', async () => {
  const p = await paid('query', 9000n);
  const made = await connector.refundPayment!(refund(p, `RF${p.ref}`, 1000n));
  const q = { channelReference: p.ref, channelTransactionId: p.pi, refundReference: `RF${p.ref}`, currency: 'USD' };
  assert.deepEqual(await connector.queryRefund!(q), made);
  assert.deepEqual(await connector.queryRefund!({ ...q, channelRefundId: made.channelRefundId! }), made);
  // Without the pi_ id: found through the Search API.
  assert.deepEqual(await connector.queryRefund!({ channelReference: p.ref, refundReference: `RF${p.ref}`, currency: 'USD' }), made);

  await rejectsWith(connector.queryRefund!({ ...q, refundReference: `RF${p.ref}none` }), 'refund_not_found');
  await rejectsWith(connector.queryRefund!({ ...q, channelRefundId: 're_3NoSuchRefund000000000000' }), 'refund_not_found');
  await rejectsWith(connector.queryRefund!({ ...q, channelReference: newRef('nothing'), channelTransactionId: undefined }), 'refund_not_found');
  // A refund id of another refund number, or another payment: not taken as the one asked about.
  const other = await paid('query_other', 2000n);
  const foreign = await connector.refundPayment!(refund(other, `RF${other.ref}`, 500n));
  await rejectsWith(connector.queryRefund!({ ...q, channelRefundId: foreign.channelRefundId! }), 'invalid_response');
  await rejectsWith(connector.queryRefund!({ ...q, currency: 'EUR' }), 'invalid_response');
});

test('refunding what was never paid is refused: by the connector first, by the sandbox as Stripe does', async () => {
  const ref = newRef('unpaid');
  const created = await connector.createPayment({
    channelReference: ref, paymentId: `pay_${ref}`, orderId: `ord_${ref}`, customerId: 'cus_test', items: [], method: 'card', amountMinor: 1000n,
    currency: 'USD', subject: 'Course', notifyUrl: `${base}/v1/notify/stripe`, expiresAt: new Date(Date.now() + 60_000),
  });
  const p = { ref, pi: created.channelTransactionId!, amountMinor: 1000n, currency: 'USD' };
  await rejectsWith(connector.refundPayment!(refund(p, `RF${ref}`, 500n)), 'payment_not_refundable');
  await assert.rejects(sdk().refunds.create({ payment_intent: p.pi, amount: 500 }), (e: any) => e.statusCode === 400 && e.message === `This PaymentIntent (${p.pi}) does not have a successful charge to refund.`);
  await rejectsWith(connector.refundPayment!(refund(p, `RF${ref}`, 500n, { channelTransactionId: 'pi_3NoSuchIntent0000000000000' })), 'resource_missing');
});

// ---- Notifications -----------------------------------------------------------------------------------

test('refund webhooks are signed, delivered, and verify to kind refund; tampered, foreign or stale ones are refused', async () => {
  const p = await paid('hook', 9000n);
  const made = await connector.refundPayment!(refund(p, `RF${p.ref}`, 3000n));
  const [hook] = await waitFor('refund.created', async () => {
    const got = hooksFor(p.ref, 'refund.created');
    return got.length > 0 ? got : null;
  });
  assert.deepEqual(hooksFor(p.ref).map((h) => h.type).sort(), ['payment_intent.succeeded', 'refund.created'], 'charge.refunded is not subscribed');
  assert.match(String(hook!.headers['stripe-signature']), /^t=\d{10},v1=[0-9a-f]{64}$/);
  const v = await verify(connector, hook!);
  assert.ok(v.ok, !v.ok ? v.reason : '');
  assert.equal(v.notification.kind, 'refund');
  assert.ok(v.notification.kind === 'refund');
  assert.match(v.notification.eventId, /^evt_/);
  assert.deepEqual(v.notification.refund, made);
  const event = await sdk().events.retrieve(v.notification.eventId);
  assert.equal(event.type, 'refund.created');

  const text = hook!.rawBody.toString('utf8');
  const tampered = Buffer.from(text.replace('"amount": 3000', '"amount": 9000'));
  assert.notEqual(tampered.toString(), text);
  assert.equal((await verify(connector, hook!, tampered)).ok, false);
  const rerouted = Buffer.from(text.replaceAll(p.ref, newRef('elsewhere')));
  assert.equal((await verify(connector, hook!, rerouted)).ok, false);
  assert.equal((await verify(makeConnector({ webhookSecret: 'whsec_someoneelse000000000000000' }), hook!)).ok, false);
  const stale = await verify(makeConnector({ now: () => Date.now() + 400_000 }), hook!);
  assert.equal(stale.ok, false);
  const unsigned = await connector.verifyNotification({ headers: { 'content-type': 'application/json' }, rawBody: hook!.rawBody }, async () => null);
  assert.deepEqual(unsigned, { ok: false, reason: 'missing Stripe-Signature header' });
});

// ---- Pending refunds -------------------------------------------------------------------------------

test('pm_card_pendingRefund: pending at first; simulate succeeded finishes it, with refund.updated; a second simulate is 409', async () => {
  const p = await paid('pending', 9000n, { paymentMethod: 'pm_card_pendingRefund' });
  const made = await connector.refundPayment!(refund(p, `RF${p.ref}`, 9000n));
  assert.deepEqual([made.state, made.rawStatus], ['pending', 'pending']);
  const q = { channelReference: p.ref, channelTransactionId: p.pi, refundReference: `RF${p.ref}`, currency: 'USD' };
  assert.equal((await connector.queryRefund!(q)).state, 'pending');
  await rejectsWith(connector.refundPayment!(refund(p, `RF${p.ref}b`, 1n)), 'charge_already_refunded', false);

  const sim = await post('/sandbox/stripe/refunds/simulate', { refund_reference: `RF${p.ref}`, outcome: 'succeeded' });
  assert.equal(sim.status, 200, JSON.stringify(sim.body));
  assert.deepEqual([sim.body['status'], sim.body['id'], sim.body['amount'], sim.body['currency'], sim.body['channel_reference']], ['succeeded', made.channelRefundId, 9000, 'USD', p.ref]);
  assert.equal(sim.body['events'].length, 2, 'refund.updated and charge.refund.updated');
  assert.equal((await connector.queryRefund!(q)).state, 'succeeded');

  const updated = await waitFor('refund.updated', async () => hooksFor(p.ref, 'refund.updated')[0]);
  const v = await verify(connector, updated);
  assert.ok(v.ok && v.notification.kind === 'refund');
  assert.deepEqual([v.notification.refund.state, v.notification.refund.refundReference, v.notification.refund.amountMinor], ['succeeded', `RF${p.ref}`, 9000n]);
  const created = await waitFor('refund.created', async () => hooksFor(p.ref, 'refund.created')[0]);
  const vc = await verify(connector, created);
  assert.equal(vc.ok && vc.notification.kind === 'refund' && vc.notification.refund.state, 'pending');

  for (const outcome of ['succeeded', 'failed']) {
    const again = await post('/sandbox/stripe/refunds/simulate', { channel_refund_id: made.channelRefundId, outcome });
    assert.equal(again.status, 409);
    assert.equal(again.body['error'].code, 'refund_already_final');
  }
});

test('a pending refund simulated failed gives the amount back: refund.failed verifies as failed, and the money can be refunded again', async () => {
  const p = await paid('pendfail', 5000n, { paymentMethod: 'pm_card_pendingRefund' });
  const made = await connector.refundPayment!(refund(p, `RF${p.ref}`, 5000n));
  assert.equal(made.state, 'pending');
  assert.equal((await get(`/sandbox/stripe/trades/${p.ref}`)).body['amount_refundable'], 0, 'a pending refund holds its amount');
  const sim = await post('/sandbox/stripe/refunds/simulate', { channel_refund_id: made.channelRefundId, refund_reference: `RF${p.ref}`, outcome: 'failed' });
  assert.equal(sim.status, 200);
  assert.equal(sim.body['refund'].failure_reason, 'expired_or_canceled_card');
  assert.equal(sim.body['events'].length, 3);
  const q = { channelReference: p.ref, channelTransactionId: p.pi, refundReference: `RF${p.ref}`, currency: 'USD' };
  assert.deepEqual([(await connector.queryRefund!(q)).state, (await connector.queryRefund!(q)).rawStatus], ['failed', 'failed']);
  assert.equal((await get(`/sandbox/stripe/trades/${p.ref}`)).body['amount_refundable'], 5000);

  const failed = await waitFor('refund.failed', async () => hooksFor(p.ref, 'refund.failed')[0]);
  const v = await verify(connector, failed);
  assert.ok(v.ok && v.notification.kind === 'refund');
  assert.equal(v.notification.refund.state, 'failed');
  const updated = await waitFor('refund.updated', async () => hooksFor(p.ref, 'refund.updated')[0]);
  const vu = await verify(connector, updated);
  assert.ok(vu.ok && vu.notification.kind === 'refund');
  assert.deepEqual([vu.notification.refund.state, vu.notification.refund.channelRefundId], ['failed', made.channelRefundId]);
  assert.notEqual(vu.notification.eventId, v.notification.eventId, 'two events, two ids');

  // The same number answers the failed refund (never a second one); a new number refunds again.
  assert.equal((await connector.refundPayment!(refund(p, `RF${p.ref}`, 5000n))).state, 'failed');
  const retry = await connector.refundPayment!(refund(p, `RF${p.ref}r`, 5000n));
  assert.equal(retry.state, 'pending');
});

test('the sandbox finishes pending refunds by itself after Stripe\'s delay × timeScale; pm_card_refundFail turns succeeded into failed', async () => {
  const p = await paid('auto', 4000n, { paymentMethod: 'pm_card_pendingRefund' });
  const made = await auto.refundPayment!(refund(p, `RF${p.ref}`, 1000n));
  assert.equal(made.state, 'pending');
  const q = { channelReference: p.ref, channelTransactionId: p.pi, refundReference: `RF${p.ref}`, currency: 'USD' };
  const done = await waitFor('auto settle', async () => {
    const s = await auto.queryRefund!(q);
    return s.state !== 'pending' ? s : null;
  });
  assert.equal(done.state, 'succeeded');
  const view = await get(`/sandbox/stripe/refunds/${made.channelRefundId}`);
  assert.deepEqual([view.body['status'], view.body['settle_at']], ['succeeded', null]);
  assert.equal((await post('/sandbox/stripe/refunds/simulate', { refund_reference: `RF${p.ref}`, outcome: 'failed' })).status, 409);

  const f = await paid('refundfail', 4000n, { paymentMethod: 'pm_card_refundFail' });
  const first = await auto.refundPayment!(refund(f, `RF${f.ref}`, 4000n));
  assert.equal(first.state, 'succeeded', 'Stripe answers succeeded first');
  const qf = { channelReference: f.ref, channelTransactionId: f.pi, refundReference: `RF${f.ref}`, currency: 'USD' };
  const later = await waitFor('refund failure', async () => {
    const s = await auto.queryRefund!(qf);
    return s.state === 'failed' ? s : null;
  });
  assert.equal(later.rawStatus, 'failed');
  assert.equal((await get(`/sandbox/stripe/trades/${f.ref}`)).body['amount_refundable'], 4000, 'the failed refund gave its amount back');
  // The plain mount never finishes one by itself.
  const m = await paid('manual', 2000n, { paymentMethod: 'pm_card_pendingRefund' });
  await connector.refundPayment!(refund(m, `RF${m.ref}`, 2000n));
  const mf = await paid('manualfail', 2000n, { paymentMethod: 'pm_card_refundFail' });
  await connector.refundPayment!(refund(mf, `RF${mf.ref}`, 2000n));
  await new Promise((r) => setTimeout(r, 150));
  assert.equal((await connector.queryRefund!({ channelReference: m.ref, channelTransactionId: m.pi, refundReference: `RF${m.ref}`, currency: 'USD' })).state, 'pending');
  const qmf = { channelReference: mf.ref, channelTransactionId: mf.pi, refundReference: `RF${mf.ref}`, currency: 'USD' };
  assert.equal((await connector.queryRefund!(qmf)).state, 'succeeded');
  // There, simulate fails a pm_card_refundFail refund that still says succeeded; an ordinary one it does not touch.
  assert.equal((await post('/sandbox/stripe/refunds/simulate', { refund_reference: `RF${mf.ref}`, outcome: 'succeeded' })).status, 409);
  assert.equal((await post('/sandbox/stripe/refunds/simulate', { refund_reference: `RF${mf.ref}`, outcome: 'failed' })).status, 200);
  assert.equal((await connector.queryRefund!(qmf)).state, 'failed');
  const plain = await paid('manualplain', 2000n);
  await connector.refundPayment!(refund(plain, `RF${plain.ref}`, 2000n));
  assert.equal((await post('/sandbox/stripe/refunds/simulate', { refund_reference: `RF${plain.ref}`, outcome: 'failed' })).status, 409);
});

// ---- The sandbox's refusals --------------------------------------------------------------------------

test('refunds/simulate: bad input 400, unknown 404, mismatched id and number 404, in the Knowpay error shape', async () => {
  const p = await paid('simbad', 3000n, { paymentMethod: 'pm_card_pendingRefund' });
  const made = await connector.refundPayment!(refund(p, `RF${p.ref}`, 1000n));
  const cases: Array<[unknown, number, string]> = [
    [[], 400, 'parameter_invalid'],
    [{ outcome: 'succeeded' }, 400, 'parameter_missing'],
    [{ refund_reference: `RF${p.ref}`, outcome: 'refunded' }, 400, 'parameter_invalid'],
    [{ refund_reference: `RF${p.ref}` }, 400, 'parameter_invalid'],
    [{ refund_reference: 7, outcome: 'succeeded' }, 400, 'parameter_invalid'],
    [{ channel_refund_id: 'ch_3Abc', outcome: 'succeeded' }, 400, 'parameter_invalid'],
    [{ refund_reference: 'RFnothing', outcome: 'succeeded' }, 404, 'refund_not_found'],
    [{ channel_refund_id: 're_3NoSuchRefund000000000000', outcome: 'succeeded' }, 404, 'refund_not_found'],
    [{ channel_refund_id: made.channelRefundId, refund_reference: 'RFother', outcome: 'succeeded' }, 404, 'refund_not_found'],
  ];
  for (const [body, status, code] of cases) {
    const r = await post('/sandbox/stripe/refunds/simulate', body);
    assert.equal(r.status, status, JSON.stringify(body));
    assert.equal(r.body['error'].code, code, JSON.stringify(body));
    assert.equal(r.body['error'].type, 'invalid_request_error');
  }
  assert.equal((await connector.queryRefund!({ channelReference: p.ref, channelTransactionId: p.pi, refundReference: `RF${p.ref}`, currency: 'USD' })).state, 'pending', 'nothing changed');
  assert.equal((await get('/sandbox/stripe/refunds/RFnothing')).status, 404);
  // The buyer's card must fit the outcome.
  const ref = newRef('simcard');
  await connector.createPayment({ channelReference: ref, paymentId: 'pay_x', orderId: 'ord_x', customerId: 'cus_x', items: [], method: 'card', amountMinor: 1000n, currency: 'USD', subject: 'x', notifyUrl: `${base}/n`, expiresAt: new Date(Date.now() + 60_000) });
  for (const [outcome, pm] of [['succeeded', 'pm_card_chargeDeclined'], ['failed', 'pm_card_visa'], ['canceled', 'pm_card_visa'], ['succeeded', 'pm_card_nonsense'], ['succeeded', 7]]) {
    const r = await post('/sandbox/stripe/simulate', { channel_reference: ref, outcome, payment_method: pm });
    assert.equal(r.status, 400, `${outcome} ${pm}`);
    assert.equal(r.body['error'].param, 'payment_method');
  }
});

test('POST /v1/refunds answers Stripe\'s 4xx for bad requests and changes nothing', async () => {
  const p = await paid('api', 3000n);
  const cases: Array<[string, number, string | undefined, string | undefined]> = [
    ['amount=100', 400, 'parameter_missing', 'payment_intent'],
    [`payment_intent=${p.pi}&amount=abc`, 400, 'parameter_invalid_integer', 'amount'],
    [`payment_intent=${p.pi}&amount=0`, 400, 'parameter_invalid_integer', 'amount'],
    [`payment_intent=${p.pi}&amount=-5`, 400, 'parameter_invalid_integer', 'amount'],
    [`payment_intent=${p.pi}&reason=because`, 400, undefined, 'reason'],
    [`payment_intent=${p.pi}&refund_everything=true`, 400, 'parameter_unknown', 'refund_everything'],
    [`payment_intent=${p.pi}&metadata=x`, 400, undefined, 'metadata'],
    ['payment_intent=pi_3NoSuchIntent0000000000000', 404, 'resource_missing', 'payment_intent'],
    ['payment_intent=nope', 404, 'resource_missing', 'payment_intent'],
    ['charge=ch_3NoSuchCharge0000000000000', 404, 'resource_missing', 'charge'],
    [`payment_intent=${p.pi}&charge=ch_3NotThisCharge000000000000`, 400, undefined, 'charge'],
  ];
  for (const [body, status, code, param] of cases) {
    const r = await raw('POST', '/v1/refunds', body);
    assert.equal(r.status, status, body);
    assert.equal(r.json['error'].code, code, body);
    assert.equal(r.json['error'].param, param, body);
  }
  const noKey = await raw('POST', '/v1/refunds', `payment_intent=${p.pi}`, null);
  assert.equal(noKey.status, 401);
  const wrongKey = await raw('GET', '/v1/refunds', undefined, 'sk_test_51wrongkey000000000000');
  assert.equal(wrongKey.status, 401);
  assert.match(wrongKey.json['error'].message, /^Invalid API Key provided: sk_test_\*+0000$/);
  assert.equal((await get(`/sandbox/stripe/trades/${p.ref}`)).body['amount_refundable'], 3000, 'nothing was refunded');
  assert.equal((await raw('GET', '/v1/refunds/re_3NoSuchRefund000000000000')).status, 404);
  assert.equal((await raw('GET', '/v1/refunds?limit=101')).status, 400);
  assert.equal((await raw('GET', '/v1/refunds?starting_after=re_3NoSuchRefund000000000000')).status, 404);
  assert.equal((await raw('GET', '/v1/refunds?expand[]=data.charge')).status, 400);
});

test('refund by charge id, and the list endpoint pages newest first with starting_after', async () => {
  const p = await paid('list', 5000n);
  const s = sdk();
  const pi = await s.paymentIntents.retrieve(p.pi);
  const byCharge = await s.refunds.create({ charge: String(pi.latest_charge), amount: 500 });
  assert.equal(byCharge.payment_intent, p.pi);
  assert.equal(byCharge.status, 'succeeded');
  for (let i = 0; i < 4; i++) await s.refunds.create({ payment_intent: p.pi, amount: 100 + i });
  const page1 = await s.refunds.list({ payment_intent: p.pi, limit: 3 });
  assert.equal(page1.data.length, 3);
  assert.equal(page1.has_more, true);
  const page2 = await s.refunds.list({ payment_intent: p.pi, limit: 3, starting_after: page1.data[2]!.id });
  assert.equal(page2.has_more, false);
  const ids = [...page1.data, ...page2.data].map((r) => r.id);
  assert.equal(new Set(ids).size, 5);
  assert.ok(ids.includes(byCharge.id));
  const byChargeList = await s.refunds.list({ charge: String(pi.latest_charge), limit: 100 });
  assert.equal(byChargeList.data.length, 5);
  const other = await s.refunds.list({ payment_intent: 'pi_3NoSuchIntent0000000000000' });
  assert.equal(other.data.length, 0);
});

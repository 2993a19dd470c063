/**
 * Connector unit tests without the sandbox: webhook translation (signed with our own secret),
 * error mapping against small fake servers, response checks, configuration.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import Stripe from 'stripe';
import { ChannelError, type ChannelConnector, type CreatePaymentInput } from '../types.ts';
import { createStripeConnector, prefixedHttpClient, toChannelError, type StripeAuditEntry, type StripeConfig } from './connector.ts';
import { signStripeWebhook } from './webhook.ts';

const SECRET = 'whsec_connectorunittestsecret01234';
const KEY = 'sk_test_51unittestkey0000000000';
const NOW_S = 1_800_000_000;

let audits: StripeAuditEntry[] = [];
const make = (over: Partial<StripeConfig> = {}) =>
  createStripeConnector({ secretKey: KEY, webhookSecret: SECRET, accountId: 'acct_1Unit', apiBase: 'http://127.0.0.1:9/sandbox/stripe', now: () => NOW_S * 1000, maxNetworkRetries: 0, timeoutMs: 2000, audit: (e) => audits.push(e), ...over });
const connector = make();

function intent(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    id: 'pi_3Abc', object: 'payment_intent', amount: 1234, amount_received: 0, currency: 'usd', status: 'requires_payment_method',
    metadata: { knowpay_reference: 'KP1', knowpay_payment_id: 'pay_1' }, last_payment_error: null, latest_charge: null, created: NOW_S, livemode: false, ...over,
  };
}

function event(type: string, object: Record<string, unknown>, over: Record<string, unknown> = {}): Record<string, unknown> {
  return { id: 'evt_3Xyz', object: 'event', api_version: '2026-10-28.endive', created: NOW_S, data: { object }, livemode: false, pending_webhooks: 1, request: { id: null, idempotency_key: null }, type, ...over };
}

async function deliver(c: ChannelConnector, body: unknown, opts: { secret?: string; t?: number; contentType?: string } = {}) {
  const text = typeof body === 'string' ? body : JSON.stringify(body, null, 2);
  const header = signStripeWebhook(text, opts.secret ?? SECRET, opts.t ?? NOW_S);
  return c.verifyNotification({ headers: { 'stripe-signature': header }, rawBody: Buffer.from(text), contentType: opts.contentType ?? 'application/json; charset=utf-8' }, async () => null);
}

// ---- Webhook translation -------------------------------------------------------------------------

test('payment events become payment snapshots from the PaymentIntent they carry', async () => {
  const paid = await deliver(connector, event('payment_intent.succeeded', intent({ status: 'succeeded', amount_received: 1234, latest_charge: 'ch_1' })));
  assert.deepEqual(paid, {
    ok: true,
    notification: { eventId: 'evt_3Xyz', kind: 'payment', trade: { state: 'succeeded', channelReference: 'KP1', channelTransactionId: 'pi_3Abc', amountMinor: 1234n, currency: 'USD', rawStatus: 'succeeded' } },
  });
  const failed = await deliver(connector, event('payment_intent.payment_failed', intent({ last_payment_error: { code: 'card_declined' } })));
  assert.equal(failed.ok && failed.notification.kind === 'payment' && failed.notification.trade.state, 'failed');
  const canceled = await deliver(connector, event('payment_intent.canceled', intent({ status: 'canceled' })));
  assert.equal(canceled.ok && canceled.notification.kind === 'payment' && canceled.notification.trade.state, 'closed');
  // The PaymentIntent decides, not the event name: an unknown status stays pending.
  const odd = await deliver(connector, event('payment_intent.succeeded', intent({ status: 'requires_reauthorization' })));
  assert.equal(odd.ok && odd.notification.kind === 'payment' && odd.notification.trade.state, 'pending');
  // Paid less than asked (a partial capture): the snapshot carries what was received.
  const partial = await deliver(connector, event('payment_intent.succeeded', intent({ status: 'succeeded', amount_received: 1000 })));
  assert.equal(partial.ok && partial.notification.kind === 'payment' && partial.notification.trade.amountMinor, 1000n);
  const yen = await deliver(connector, event('payment_intent.succeeded', intent({ status: 'succeeded', amount: 500, amount_received: 500, currency: 'jpy' })));
  assert.deepEqual(yen.ok && yen.notification.kind === 'payment' && [yen.notification.trade.amountMinor, yen.notification.trade.currency], [500n, 'JPY']);
  const krona = await deliver(connector, event('payment_intent.succeeded', intent({ status: 'succeeded', amount: 500, amount_received: 500, currency: 'isk' })));
  assert.deepEqual(krona.ok && krona.notification.kind === 'payment' && [krona.notification.trade.amountMinor, krona.notification.trade.currency], [5n, 'ISK']);
});

test('other events, and PaymentIntents made outside Knowpay, are genuine but ignored', async () => {
  const created = await deliver(connector, event('payment_intent.created', intent()));
  assert.deepEqual(created, { ok: true, notification: { eventId: 'evt_3Xyz', kind: 'ignored', reason: 'event type payment_intent.created is not used', channelReference: 'KP1' } });
  const charge = await deliver(connector, event('charge.succeeded', { id: 'ch_1', object: 'charge', metadata: { knowpay_reference: 'KP1' } }));
  assert.equal(charge.ok && charge.notification.kind, 'ignored');
  const foreign = await deliver(connector, event('payment_intent.succeeded', intent({ status: 'succeeded', metadata: { order: '7' } })));
  assert.deepEqual(foreign, { ok: true, notification: { eventId: 'evt_3Xyz', kind: 'ignored', reason: 'payment_intent pi_3Abc was not created by Knowpay' } });
  const ping = await deliver(connector, event('account.updated', { id: 'acct_1' }));
  assert.equal(ping.ok && ping.notification.kind, 'ignored');
});

test('Connect events carry their account as appId; the caller compares it with connector.appId', async () => {
  assert.equal(connector.appId, 'acct_1Unit');
  const connect = await deliver(connector, event('payment_intent.succeeded', intent({ status: 'succeeded', amount_received: 1234 }), { account: 'acct_1Other' }));
  assert.equal(connect.ok && connect.notification.appId, 'acct_1Other');
  const own = await deliver(connector, event('payment_intent.succeeded', intent({ status: 'succeeded', amount_received: 1234 })));
  assert.equal(own.ok && 'appId' in own.notification, false);
});

test('signed but malformed or foreign-mode events are refused with a reason', async () => {
  const cases: Array<[unknown, RegExp]> = [
    [event('payment_intent.succeeded', intent(), { livemode: true }), /livemode=true/],
    [event('payment_intent.succeeded', intent({ amount: '12.34' })), /malformed payment_intent/],
    [event('payment_intent.succeeded', intent({ object: 'charge' })), /malformed payment_intent/],
    [event('payment_intent.succeeded', intent({ metadata: { knowpay_reference: 7 } })), /malformed payment_intent/],
    [event('payment_intent.succeeded', intent({ currency: 'lyd' })), /unusable amount/],
    [event('payment_intent.succeeded', intent({ currency: 'isk', amount: 150 })), /unusable amount/],
    [event('payment_intent.succeeded', intent(), { id: 'evt_bad id' }), /valid id/],
    [event('payment_intent.succeeded', intent(), { object: 'list' }), /not an event/],
    [event('payment_intent.succeeded', intent(), { type: '' }), /without a type/],
    [{ ...event('x', {}), data: null }, /without data.object/],
  ];
  for (const [body, reason] of cases) {
    const r = await deliver(connector, body);
    assert.equal(r.ok, false, String(reason));
    assert.match(!r.ok ? r.reason : '', reason);
  }
  const live = make({ secretKey: 'sk_live_51unittestkey0000000000' });
  assert.equal((await deliver(live, event('payment_intent.succeeded', intent()))).ok, false, 'a test event on a live key');
});

test('forged, tampered, stale and foreign-secret webhooks are refused; verifyNotification never throws', async () => {
  const good = event('payment_intent.succeeded', intent({ status: 'succeeded', amount_received: 1234 }));
  assert.ok((await deliver(connector, good)).ok);
  assert.equal((await deliver(connector, good, { secret: 'whsec_someoneelse' })).ok, false);
  assert.equal((await deliver(connector, good, { t: NOW_S - 301 })).ok, false);
  assert.equal((await deliver(connector, good, { t: NOW_S + 301 })).ok, false);
  assert.equal((await deliver(connector, good, { contentType: 'application/x-www-form-urlencoded' })).ok, false);
  const text = JSON.stringify(good, null, 2);
  const header = signStripeWebhook(text, SECRET, NOW_S);
  const forged = Buffer.from(text.replace('"amount": 1234', '"amount": 1'));
  assert.equal((await connector.verifyNotification({ headers: { 'stripe-signature': header }, rawBody: forged }, async () => null)).ok, false);
  const capitalised = await connector.verifyNotification({ headers: { 'Stripe-Signature': header }, rawBody: Buffer.from(text) }, async () => null);
  assert.ok(capitalised.ok, 'header names are case-insensitive');
  const noHeader = await connector.verifyNotification({ headers: {}, rawBody: Buffer.from(text) }, async () => null);
  assert.deepEqual(noHeader, { ok: false, reason: 'missing Stripe-Signature header' });
  const weird = await connector.verifyNotification({ headers: { 'stripe-signature': header }, rawBody: 'not a buffer' as unknown as Buffer }, async () => null);
  assert.equal(weird.ok, false);
});

test('acknowledgements: 200 {"received":true}; failures 400 with a bounded reason', () => {
  assert.deepEqual(connector.ackSuccess(), { statusCode: 200, contentType: 'application/json', body: '{"received":true}' });
  const failure = connector.ackFailure('x'.repeat(1000));
  assert.equal(failure.statusCode, 400);
  assert.equal(failure.contentType, 'application/json');
  const parsed = JSON.parse(failure.body) as { received: boolean; error: string };
  assert.equal(parsed.received, false);
  assert.equal(parsed.error.length, 200);
  assert.deepEqual([...connector.methods], ['card']);
  assert.equal(connector.channel, 'stripe');
});

// ---- Against fake servers ------------------------------------------------------------------------

let server: http.Server;
let origin = '';
let handler: (req: http.IncomingMessage, body: string, res: http.ServerResponse) => void = (_q, _b, s) => s.end();
const seen: Array<{ method: string; url: string; headers: http.IncomingHttpHeaders; body: string }> = [];
before(async () => {
  server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body });
      handler(req, body, res);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
after(async () => {
  server.closeAllConnections();
  await new Promise<void>((r) => server.close(() => r()));
});

const json = (status: number, body: unknown, headers: Record<string, string> = {}) => (_q: http.IncomingMessage, _b: string, s: http.ServerResponse) =>
  s.writeHead(status, { 'content-type': 'application/json', 'request-id': 'req_fake', ...headers }).end(typeof body === 'string' ? body : JSON.stringify(body));
const at = (over: Partial<StripeConfig> = {}) => make({ apiBase: `${origin}/sandbox/stripe`, ...over });

const input: CreatePaymentInput = {
  channelReference: 'KP1', paymentId: 'pay_1', orderId: 'ord_1', customerId: 'cus_1', items: [], method: 'card', amountMinor: 1234n,
  currency: 'usd', subject: 'Course', notifyUrl: 'http://x/v1/notify/stripe', expiresAt: new Date(),
};

async function rejects(p: Promise<unknown>, code: string, retryable: boolean) {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof ChannelError, String(err));
    assert.equal(err.code, code, err.message);
    assert.equal(err.retryable, retryable, `${code} retryable`);
    return true;
  });
}

test('requests go to the base path, form-encoded, with the key, the version and our reference as Idempotency-Key', async () => {
  seen.length = 0;
  handler = json(200, { ...intent(), client_secret: 'pi_3Abc_secret_xyz' });
  const r = await at().createPayment(input);
  assert.deepEqual(r, { action: { type: 'client_secret', client_secret: 'pi_3Abc_secret_xyz' }, channelTransactionId: 'pi_3Abc' });
  const req = seen[0]!;
  assert.equal(req.method, 'POST');
  assert.equal(req.url, '/sandbox/stripe/v1/payment_intents');
  assert.equal(req.headers['authorization'], `Bearer ${KEY}`);
  assert.equal(req.headers['idempotency-key'], 'KP1');
  assert.equal(req.headers['stripe-version'], Stripe.API_VERSION);
  assert.equal(req.headers['content-type'], 'application/x-www-form-urlencoded');
  const form = new URLSearchParams(req.body);
  assert.equal(form.get('amount'), '1234');
  assert.equal(form.get('currency'), 'usd');
  assert.equal(form.get('allowed_payment_method_types[0]'), 'card');
  assert.equal(form.get('metadata[knowpay_reference]'), 'KP1');
  assert.equal(form.get('metadata[knowpay_payment_id]'), 'pay_1');
  assert.equal(form.get('description'), 'Course');
  // Without a path in the base URL, the SDK's own paths are used as they are.
  seen.length = 0;
  await at({ apiBase: origin }).createPayment(input);
  assert.equal(seen[0]!.url, '/v1/payment_intents');
});

test('answers that do not match what was asked are invalid_response', async () => {
  handler = json(200, { ...intent({ amount: 1 }), client_secret: 'pi_3Abc_secret_xyz' });
  await rejects(at().createPayment(input), 'invalid_response', false);
  handler = json(200, intent());
  await rejects(at().createPayment(input), 'invalid_response', false);
  handler = json(200, { ...intent({ metadata: { knowpay_reference: 'KP2' } }), client_secret: 'pi_3Abc_secret_xyz' });
  await rejects(at().createPayment(input), 'invalid_response', false);
  handler = json(200, { object: 'customer', id: 'cus_1' });
  await rejects(at().createPayment(input), 'invalid_response', false);
  handler = json(200, { object: 'search_result', data: [{ id: 'nope' }] });
  await rejects(at().queryPayment({ channelReference: 'KP1', currency: 'USD' }), 'invalid_response', false);
  handler = json(200, { object: 'search_result' });
  await rejects(at().queryPayment({ channelReference: 'KP1', currency: 'USD' }), 'invalid_response', true);
  // A loose search answering another reference's PaymentIntent is ignored, not taken.
  handler = json(200, { object: 'search_result', data: [intent({ metadata: { knowpay_reference: 'KP2' } })], has_more: false });
  assert.deepEqual(await at().queryPayment({ channelReference: 'KP1', currency: 'USD' }), { state: 'not_found', channelReference: 'KP1' });
});

test('query picks the paid PaymentIntent when a reference has several, else the newest', async () => {
  handler = json(200, { object: 'search_result', data: [intent({ id: 'pi_3New', created: NOW_S }), intent({ id: 'pi_3Paid', status: 'succeeded', amount_received: 1234, created: NOW_S - 100 })], has_more: false });
  const paid = await at().queryPayment({ channelReference: 'KP1', currency: 'USD' });
  assert.deepEqual([paid.state, paid.channelTransactionId], ['succeeded', 'pi_3Paid']);
  handler = json(200, { object: 'search_result', data: [intent({ id: 'pi_3Old', created: NOW_S - 100, status: 'canceled' }), intent({ id: 'pi_3New', created: NOW_S })], has_more: false });
  const newest = await at().queryPayment({ channelReference: 'KP1', currency: 'USD' });
  assert.deepEqual([newest.state, newest.channelTransactionId], ['pending', 'pi_3New']);
  assert.match(seen.at(-1)!.url, /^\/sandbox\/stripe\/v1\/payment_intents\/search\?query=metadata\[%27knowpay_reference%27\]%3A%27KP1%27&limit=10$/);
});

test('close: a PaymentIntent paid meanwhile answers succeeded; one that stays open is a retryable error', async () => {
  let step = 0;
  const unexpected = { error: { code: 'payment_intent_unexpected_state', message: 'You cannot cancel this PaymentIntent because it has a status of succeeded.', type: 'invalid_request_error' } };
  handler = (q, b, s) => {
    step++;
    if (q.url!.includes('/search')) return json(200, { object: 'search_result', data: [intent()], has_more: false })(q, b, s);
    if (q.url!.endsWith('/cancel')) return json(400, unexpected)(q, b, s);
    return json(200, intent({ status: 'succeeded', amount_received: 1234 }))(q, b, s);
  };
  const snap = await at().closePayment({ channelReference: 'KP1', currency: 'USD' });
  assert.equal(snap.state, 'succeeded');
  assert.equal(step, 3, 'search, cancel, retrieve');
  handler = (q, b, s) => {
    if (q.url!.includes('/search')) return json(200, { object: 'search_result', data: [intent({ status: 'processing' })], has_more: false })(q, b, s);
    if (q.url!.endsWith('/cancel')) return json(400, unexpected)(q, b, s);
    return json(200, intent({ status: 'processing' }))(q, b, s);
  };
  await rejects(at().closePayment({ channelReference: 'KP1', currency: 'USD' }), 'payment_intent_unexpected_state', true);
  handler = (q, b, s) => json(200, { object: 'search_result', data: [intent({ status: 'succeeded', amount_received: 1234 })], has_more: false })(q, b, s);
  assert.equal((await at().closePayment({ channelReference: 'KP1', currency: 'USD' })).state, 'succeeded', 'nothing to cancel');
});

test('HTTP and transport failures map to ChannelErrors with the right retryability, and are audited', async () => {
  audits = [];
  const cases: Array<[number, unknown, string, boolean]> = [
    [401, { error: { message: 'Invalid API Key provided: sk_test_***', type: 'invalid_request_error' } }, 'authentication_error', false],
    [403, { error: { message: 'no permission', type: 'invalid_request_error' } }, 'permission_error', false],
    [429, { error: { message: 'slow down', type: 'invalid_request_error', code: 'rate_limit' } }, 'rate_limited', true],
    [400, { error: { message: 'Keys for idempotent requests …', type: 'idempotency_error' } }, 'idempotency_error', false],
    [409, { error: { message: 'in progress', type: 'idempotency_error' } }, 'idempotency_error', true],
    [402, { error: { message: 'Your card was declined.', type: 'card_error', code: 'card_declined' } }, 'card_declined', false],
    [400, { error: { message: 'Amount must be at least $0.50 usd', type: 'invalid_request_error', code: 'amount_too_small' } }, 'amount_too_small', false],
    [400, { error: { message: 'lock', type: 'invalid_request_error', code: 'lock_timeout' } }, 'lock_timeout', true],
    [500, { error: { message: 'An unknown error occurred', type: 'api_error' } }, 'api_error', true],
    [200, '<html>captive portal</html>', 'api_error', true],
  ];
  for (const [status, body, code, retryable] of cases) {
    handler = json(status, body);
    await rejects(at().createPayment(input), code, retryable);
  }
  assert.equal(audits.length, cases.length);
  assert.ok(audits.every((a) => a.operation === 'create_payment' && a.channelReference === 'KP1' && a.error));
  assert.equal((audits[0]!.response as any).status, 401);
  assert.doesNotMatch(JSON.stringify(audits), /sk_test_51unittest/);

  const closed = http.createServer();
  await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
  const port = (closed.address() as AddressInfo).port;
  await new Promise<void>((r) => closed.close(() => r()));
  await rejects(at({ apiBase: `http://127.0.0.1:${port}` }).queryPayment({ channelReference: 'KP1', currency: 'USD' }), 'transport_error', true);
  handler = () => {}; // never answers
  await rejects(at({ timeoutMs: 300 }).queryPayment({ channelReference: 'KP1', currency: 'USD' }), 'transport_error', true);
});

test('the SDK\'s own retries reuse our Idempotency-Key', async () => {
  seen.length = 0;
  let n = 0;
  handler = (q, b, s) => (++n === 1 ? json(500, { error: { type: 'api_error', message: 'boom' } })(q, b, s) : json(200, { ...intent(), client_secret: 'pi_3Abc_secret_x' })(q, b, s));
  await at({ maxNetworkRetries: 1 }).createPayment(input);
  assert.equal(seen.length, 2);
  assert.deepEqual(seen.map((r) => r.headers['idempotency-key']), ['KP1', 'KP1']);
  assert.equal(seen[0]!.body, seen[1]!.body);
});

test('toChannelError keeps ChannelErrors and maps unknown failures as not retryable', () => {
  const e = new ChannelError('x', 'stripe', 'c', true);
  assert.equal(toChannelError(e), e);
  assert.deepEqual([toChannelError(new Error('boom')).code, toChannelError(new Error('boom')).retryable], ['unexpected_error', false]);
  assert.equal(toChannelError(new Stripe.errors.StripeConnectionError({ message: 'reset' })).code, 'transport_error');
});

test('configuration is checked up front', () => {
  assert.throws(() => make({ secretKey: '' }), /secretKey/);
  assert.throws(() => make({ secretKey: 'pk_test_abc' }), /sk_/);
  assert.throws(() => make({ webhookSecret: '' }), /webhookSecret/);
  assert.throws(() => make({ accountId: '' }), /accountId/);
  assert.throws(() => make({ apiBase: 'not a url' }));
  assert.throws(() => make({ apiBase: 'ftp://x' }), /http/);
  assert.throws(() => make({ apiBase: 'http://x/?q=1' }), /plain origin/);
  assert.throws(() => make({ toleranceS: 0 }), /toleranceS/);
  assert.throws(() => make({ maxNetworkRetries: 9 }), /maxNetworkRetries/);
  assert.throws(() => prefixedHttpClient(Stripe.createNodeHttpClient(), 'sandbox'), /base path/);
  assert.throws(() => prefixedHttpClient(Stripe.createNodeHttpClient(), '/a b'), /base path/);
  assert.ok(make({ secretKey: 'rk_live_abc', apiBase: 'https://api.stripe.com' }));
});

// ---- Refunds: webhook translation and wire checks (fake servers) ----------------------------------

function refundObj(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    id: 're_3Ref', object: 'refund', amount: 500, balance_transaction: null, charge: 'ch_3Abc', created: NOW_S, currency: 'usd',
    metadata: { knowpay_refund_reference: 'RF1', knowpay_reference: 'KP1' }, payment_intent: 'pi_3Abc', reason: null, status: 'succeeded', ...over,
  };
}

test('refund events become refund snapshots from the Refund they carry, whatever the event name', async () => {
  const expected = { state: 'succeeded', refundReference: 'RF1', channelRefundId: 're_3Ref', channelReference: 'KP1', amountMinor: 500n, currency: 'USD', rawStatus: 'succeeded' };
  for (const type of ['refund.created', 'refund.updated', 'refund.failed', 'charge.refund.updated']) {
    const r = await deliver(connector, event(type, refundObj()));
    assert.deepEqual(r, { ok: true, notification: { eventId: 'evt_3Xyz', kind: 'refund', refund: expected } }, type);
  }
  const states: Array<[string, string]> = [['pending', 'pending'], ['requires_action', 'pending'], ['failed', 'failed'], ['canceled', 'failed'], ['on_hold', 'pending']];
  for (const [status, state] of states) {
    const r = await deliver(connector, event('refund.updated', refundObj({ status })));
    assert.equal(r.ok && r.notification.kind === 'refund' && r.notification.refund.state, state, status);
  }
  const yen = await deliver(connector, event('refund.created', refundObj({ amount: 300, currency: 'jpy' })));
  assert.deepEqual(yen.ok && yen.notification.kind === 'refund' && [yen.notification.refund.amountMinor, yen.notification.refund.currency], [300n, 'JPY']);
  // An expanded payment_intent, and a refund with our trade number but no refund number.
  const expanded = await deliver(connector, event('refund.updated', refundObj({ payment_intent: intent(), metadata: { knowpay_reference: 'KP1' } })));
  assert.ok(expanded.ok && expanded.notification.kind === 'refund');
  assert.equal('refundReference' in expanded.notification.refund, false);
  assert.equal(expanded.notification.refund.channelRefundId, 're_3Ref');
  const connect = await deliver(connector, event('refund.updated', refundObj(), { account: 'acct_1Other' }));
  assert.equal(connect.ok && connect.notification.appId, 'acct_1Other');
});

test('refunds made outside Knowpay, and charge.refunded, are genuine but ignored', async () => {
  const dashboard = await deliver(connector, event('refund.created', refundObj({ metadata: {} })));
  assert.deepEqual(dashboard, { ok: true, notification: { eventId: 'evt_3Xyz', kind: 'ignored', reason: 'refund re_3Ref was not made by Knowpay (no metadata.knowpay_reference)' } });
  const nullMetadata = await deliver(connector, event('refund.created', refundObj({ metadata: null })));
  assert.equal(nullMetadata.ok && nullMetadata.notification.kind, 'ignored');
  const charge = await deliver(connector, event('charge.refunded', { id: 'ch_3Abc', object: 'charge', amount_refunded: 500, metadata: { knowpay_reference: 'KP1' } }));
  assert.deepEqual(charge, { ok: true, notification: { eventId: 'evt_3Xyz', kind: 'ignored', reason: 'event type charge.refunded is not used', channelReference: 'KP1' } });
});

test('signed but malformed refund events are refused with a reason', async () => {
  const cases: Array<[Record<string, unknown>, RegExp]> = [
    [refundObj({ object: 'charge' }), /malformed refund/],
    [refundObj({ id: 'ch_3Abc' }), /malformed refund/],
    [refundObj({ amount: '5.00' }), /malformed refund/],
    [refundObj({ status: '' }), /malformed refund/],
    [refundObj({ payment_intent: 7 }), /malformed refund/],
    [refundObj({ metadata: { knowpay_reference: 1 } }), /malformed refund/],
    [refundObj({ currency: 'lyd' }), /unusable amount/],
    [refundObj({ amount: 0 }), /unusable amount/],
    [refundObj({ amount: 150, currency: 'isk' }), /unusable amount/],
  ];
  for (const [object, reason] of cases) {
    const r = await deliver(connector, event('refund.updated', object));
    assert.equal(r.ok, false, String(reason));
    assert.match(!r.ok ? r.reason : '', reason);
  }
  // Tampered after signing, or signed with another secret.
  const text = JSON.stringify(event('refund.updated', refundObj()), null, 2);
  const header = signStripeWebhook(text, SECRET, NOW_S);
  const tampered = Buffer.from(text.replace('"amount": 500', '"amount": 50000'));
  assert.equal((await connector.verifyNotification({ headers: { 'stripe-signature': header }, rawBody: tampered }, async () => null)).ok, false);
  assert.equal((await deliver(connector, event('refund.updated', refundObj()), { secret: 'whsec_forger' })).ok, false);
});

const refundInput = {
  channelReference: 'KP1', channelTransactionId: 'pi_3Abc', refundReference: 'RF1', amountMinor: 500n, paymentAmountMinor: 1234n,
  currency: 'USD', notifyUrl: 'http://x/v1/notify/stripe',
};
const paidIntent = () => intent({ status: 'succeeded', amount_received: 1234, latest_charge: 'ch_3Abc' });
const list = (data: unknown[], hasMore = false) => ({ object: 'list', data, has_more: hasMore, url: '/v1/refunds' });

/** A fake Stripe for refunds: retrieve answers the paid PaymentIntent, list and create as given. */
function refundServer(over: { list?: (url: string) => unknown; create?: (form: URLSearchParams) => [number, unknown]; retrieve?: () => [number, unknown] }) {
  return (q: http.IncomingMessage, b: string, s: http.ServerResponse) => {
    const url = q.url ?? '';
    if (url.includes('/v1/payment_intents/')) return json(200, paidIntent())(q, b, s);
    if (q.method === 'GET' && url.includes('/v1/refunds?')) return json(200, over.list ? over.list(url) : list([]))(q, b, s);
    if (q.method === 'GET' && url.includes('/v1/refunds/')) {
      const [status, body] = over.retrieve ? over.retrieve() : [200, refundObj()];
      return json(status, body)(q, b, s);
    }
    if (q.method === 'POST' && url.endsWith('/v1/refunds')) {
      const [status, body] = over.create ? over.create(new URLSearchParams(b)) : [200, refundObj()];
      return json(status, body)(q, b, s);
    }
    return json(404, { error: { type: 'invalid_request_error', message: `Unrecognized request URL (${q.method}: ${url})` } })(q, b, s);
  };
}

test('refundPayment sends the refund number as Idempotency-Key and in metadata; Stripe reasons pass, free text goes to metadata', async () => {
  seen.length = 0;
  handler = refundServer({});
  const snap = await at().refundPayment!({ ...refundInput, reason: 'requested_by_customer' });
  assert.deepEqual(snap, { state: 'succeeded', refundReference: 'RF1', channelRefundId: 're_3Ref', channelReference: 'KP1', amountMinor: 500n, currency: 'USD', rawStatus: 'succeeded' });
  assert.deepEqual(seen.map((r) => `${r.method} ${r.url.split('?')[0]}`), ['GET /sandbox/stripe/v1/payment_intents/pi_3Abc', 'GET /sandbox/stripe/v1/refunds', 'POST /sandbox/stripe/v1/refunds']);
  assert.match(seen[1]!.url, /payment_intent=pi_3Abc&limit=100$/);
  const post = seen[2]!;
  assert.equal(post.headers['idempotency-key'], 'RF1');
  const form = new URLSearchParams(post.body);
  assert.deepEqual(Object.fromEntries(form), {
    payment_intent: 'pi_3Abc', amount: '500', reason: 'requested_by_customer',
    'metadata[knowpay_refund_reference]': 'RF1', 'metadata[knowpay_reference]': 'KP1',
  });
  seen.length = 0;
  await at().refundPayment!({ ...refundInput, reason: '  Course was not as described  ' });
  const free = new URLSearchParams(seen.at(-1)!.body);
  assert.equal(free.get('reason'), null, 'free text is not a Stripe reason');
  assert.equal(free.get('metadata[knowpay_refund_reason]'), 'Course was not as described');
});

test('refundPayment: an earlier refund with the same number is answered, never made again', async () => {
  seen.length = 0;
  handler = refundServer({ list: () => list([refundObj({ id: 're_3Other', metadata: { knowpay_refund_reference: 'RF9', knowpay_reference: 'KP1' } }), refundObj({ status: 'pending' })]) });
  const snap = await at().refundPayment!(refundInput);
  assert.deepEqual([snap.channelRefundId, snap.state], ['re_3Ref', 'pending']);
  assert.equal(seen.filter((r) => r.method === 'POST').length, 0, 'no second refund');
  // The same number for another amount is refused, not answered with the first refund.
  await rejects(at().refundPayment!({ ...refundInput, amountMinor: 600n }), 'idempotency_error', false);
  // A failed one and a succeeded one with the same number (a repeat after the key expired): the succeeded one decides.
  handler = refundServer({ list: () => list([refundObj({ id: 're_3Failed', status: 'failed', created: NOW_S + 5 }), refundObj()]) });
  assert.equal((await at().refundPayment!(refundInput)).channelRefundId, 're_3Ref');
  // Pages are followed (bounded) with starting_after.
  seen.length = 0;
  const firstPage = Array.from({ length: 100 }, (_, i) => refundObj({ id: `re_3P${i}`, amount: 1, metadata: { knowpay_refund_reference: `RFX${i}`, knowpay_reference: 'KP1' } }));
  handler = refundServer({ list: (url) => (url.includes('starting_after=re_3P99') ? list([refundObj()]) : list(firstPage, true)) });
  assert.equal((await at().refundPayment!(refundInput)).channelRefundId, 're_3Ref');
  assert.equal(seen.filter((r) => r.url.includes('/v1/refunds?')).length, 2);
  handler = refundServer({ list: () => list([refundObj({ id: 're_3Loop', metadata: {} })], true) });
  await rejects(at().refundPayment!(refundInput), 'too_many_refunds', false);
});

test('refundPayment: Stripe\'s refusals keep their codes and are not retryable; message-only ones are recognised', async () => {
  const cases: Array<[unknown, string]> = [
    [{ error: { type: 'invalid_request_error', code: 'amount_too_large', param: 'amount', message: 'Refund amount ($20.00) is greater than unrefunded amount on charge ($12.34)' } }, 'amount_too_large'],
    [{ error: { type: 'invalid_request_error', param: 'amount', message: 'Refund amount ($20.00) is greater than unrefunded amount on charge ($12.34)' } }, 'amount_too_large'],
    [{ error: { type: 'invalid_request_error', code: 'charge_already_refunded', message: 'Charge ch_3Abc has already been refunded.' } }, 'charge_already_refunded'],
    [{ error: { type: 'invalid_request_error', message: 'Charge ch_3Abc has already been refunded.' } }, 'charge_already_refunded'],
    [{ error: { type: 'invalid_request_error', message: 'This PaymentIntent (pi_3Abc) does not have a successful charge to refund.' } }, 'payment_not_refundable'],
    [{ error: { type: 'invalid_request_error', code: 'charge_disputed', message: 'Charge ch_3Abc has been charged back; cannot issue a refund.' } }, 'charge_disputed'],
    [{ error: { type: 'invalid_request_error', message: 'Something else entirely' } }, 'invalid_request_error'],
  ];
  for (const [body, code] of cases) {
    handler = refundServer({ create: () => [400, body] });
    await rejects(at().refundPayment!(refundInput), code, false);
  }
  handler = refundServer({ create: () => [500, { error: { type: 'api_error', message: 'boom' } }] });
  await rejects(at({ maxNetworkRetries: 0 }).refundPayment!(refundInput), 'api_error', true);
});

test('refundPayment: answers that are not the refund asked for are invalid_response', async () => {
  const cases: unknown[] = [
    refundObj({ amount: 400 }),
    refundObj({ payment_intent: 'pi_3Else' }),
    refundObj({ metadata: { knowpay_refund_reference: 'RF2', knowpay_reference: 'KP1' } }),
    refundObj({ metadata: { knowpay_refund_reference: 'RF1', knowpay_reference: 'KP2' } }),
    refundObj({ currency: 'eur' }),
    { object: 'charge', id: 'ch_3Abc' },
  ];
  for (const body of cases) {
    handler = refundServer({ create: () => [200, body] });
    await rejects(at().refundPayment!(refundInput), 'invalid_response', false);
  }
  handler = refundServer({ list: () => list([{ object: 'refund', id: 'nope' }]) });
  await rejects(at().refundPayment!(refundInput), 'invalid_response', false);
  handler = refundServer({ list: () => list([refundObj({ payment_intent: 'pi_3Else' })]) });
  await rejects(at().refundPayment!(refundInput), 'invalid_response', false);
});

test('refundPayment refuses what cannot be refunded before any refund call', async () => {
  audits = [];
  seen.length = 0;
  handler = refundServer({});
  await rejects(at().refundPayment!({ ...refundInput, amountMinor: 0n }), 'amount_invalid', false);
  await rejects(at().refundPayment!({ ...refundInput, refundReference: 'bad ref' }), 'refund_reference_invalid', false);
  await rejects(at().refundPayment!({ ...refundInput, channelReference: '' }), 'reference_invalid', false);
  await rejects(at().refundPayment!({ ...refundInput, currency: 'LYD' }), 'currency_not_supported', false);
  assert.equal(seen.length, 0);
  await rejects(at().refundPayment!({ ...refundInput, currency: 'EUR' }), 'currency_mismatch', false);
  handler = (q, b, s) => json(200, intent())(q, b, s);
  await rejects(at().refundPayment!(refundInput), 'payment_not_refundable', false);
  assert.equal(seen.filter((r) => r.url.includes('/v1/refunds')).length, 0, 'only the PaymentIntent was read');
  assert.ok(audits.every((a) => a.operation === 'refund_payment'));
});

test('queryRefund: by id (retrieve) or by refund number (list); missing ones are refund_not_found', async () => {
  seen.length = 0;
  handler = refundServer({});
  const q = { channelReference: 'KP1', channelTransactionId: 'pi_3Abc', refundReference: 'RF1', currency: 'USD' };
  assert.equal((await at().queryRefund!({ ...q, channelRefundId: 're_3Ref' })).state, 'succeeded');
  assert.equal(seen.at(-1)!.url, '/sandbox/stripe/v1/refunds/re_3Ref');
  handler = refundServer({ list: () => list([refundObj({ status: 'pending' })]) });
  assert.equal((await at().queryRefund!(q)).state, 'pending');
  handler = refundServer({});
  await rejects(at().queryRefund!(q), 'refund_not_found', false);
  handler = refundServer({ retrieve: () => [404, { error: { type: 'invalid_request_error', code: 'resource_missing', message: "No such refund: 're_3Nope'" } }] });
  await rejects(at().queryRefund!({ ...q, channelRefundId: 're_3Nope' }), 'refund_not_found', false);
  await rejects(at().queryRefund!({ ...q, channelRefundId: 'ch_3Abc' }), 'refund_id_invalid', false);
  handler = refundServer({ retrieve: () => [200, refundObj({ metadata: { knowpay_refund_reference: 'RF2', knowpay_reference: 'KP1' } })] });
  await rejects(at().queryRefund!({ ...q, channelRefundId: 're_3Ref' }), 'invalid_response', false);
  handler = refundServer({ retrieve: () => [200, refundObj({ payment_intent: 'pi_3Else' })] });
  await rejects(at().queryRefund!({ ...q, channelRefundId: 're_3Ref' }), 'invalid_response', false);
});

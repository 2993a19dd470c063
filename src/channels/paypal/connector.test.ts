/**
 * The connector against the sandbox over real HTTP (127.0.0.1), built by the module as setup.ts
 * builds it: the fetch calls, OAuth, signatures and certificate downloads that run here are the
 * ones that would run against PayPal.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createPrivateKey, X509Certificate } from 'node:crypto';
import fc from 'fast-check';
import { ChannelError, type VerifiedNotification } from '../types.ts';
import { paypalModule } from './index.ts';
import { eventOf, startHarness, type Harness, type Received } from './harness.ts';
import { signTransmission } from './sandbox.ts';
import { generateSandboxCertificates } from './sandbox-keys.ts';
import { toPayPalValue, fromPayPalValue, translateEvent, redactSecrets } from './transformers.ts';
import { rejectsWith } from '../../../test/support/assertions.ts';

let h: Harness;

before(async () => {
  h = await startHarness({ timeScale: 0.001 });
});

after(async () => {
  await h.close();
});

const usd = async () => 'USD';

async function verify(r: Received, currencyOf: (ref: string) => Promise<string | null> = usd) {
  return h.connector.verifyNotification({ headers: r.headers, rawBody: r.rawBody, contentType: 'application/json' }, currencyOf);
}

function paymentOf(n: VerifiedNotification) {
  assert.equal(n.kind, 'payment');
  return n as Extract<VerifiedNotification, { kind: 'payment' }>;
}

const byType = (ref: string, type: string) => (_r: Received, e: Record<string, any>) =>
  e['event_type'] === type && (e['resource']['custom_id'] === ref || e['resource']['purchase_units']?.[0]?.['custom_id'] === ref);

async function sandboxOrder(ref: string): Promise<Record<string, any>> {
  const res = await fetch(`${h.base}/sandbox/paypal/orders/${ref}`);
  return (await res.json()) as Record<string, any>;
}

test('createPayment: an order with our reference, a redirect to the approval page, the order id as transaction id', async () => {
  const ref = h.newRef('create');
  const result = await h.connector.createPayment(h.input(ref));
  const order = await sandboxOrder(ref);
  assert.equal(order['status'], 'PAYER_ACTION_REQUIRED');
  assert.equal(order['value'], '12.34');
  assert.deepEqual(result, { action: { type: 'redirect', url: `${h.base}/sandbox/paypal/checkoutnow?token=${order['order_id']}` }, channelTransactionId: order['order_id'] });
  const page = await fetch(result.action.type === 'redirect' ? result.action.url : '');
  assert.equal(page.status, 200);
  assert.match(await page.text(), /<strong id="amount">12\.34<\/strong> USD/);
  // The request on the wire, as audited: idempotency key, custom_id/invoice_id, decimal string.
  const create = h.audits.find((a) => a.operation === 'create_payment' && a.channelReference === ref)!;
  const req = create.request as { headers: Record<string, string>; body: any };
  assert.equal(req.headers['paypal-request-id'], ref);
  assert.equal(req.headers['authorization'], 'Bearer [REDACTED]');
  assert.deepEqual(req.body.purchase_units[0], { custom_id: ref, invoice_id: ref, description: 'Course: Advanced TypeScript', amount: { currency_code: 'USD', value: '12.34' } });
  assert.equal(req.body.payment_source.paypal.experience_context.return_url, `${h.base}/return/${ref}`);
});

test('createPayment is idempotent per reference: same PayPal order, one sandbox order', async () => {
  const ref = h.newRef('idem');
  const [a, b] = await Promise.all([h.connector.createPayment(h.input(ref)), h.connector.createPayment(h.input(ref))]);
  const c = await h.connector.createPayment(h.input(ref));
  assert.equal(a.channelTransactionId, b.channelTransactionId);
  assert.equal(a.channelTransactionId, c.channelTransactionId);
  const { rows } = await h.db.pool.query('SELECT count(*)::int AS n FROM sandbox_paypal_orders WHERE custom_id = $1', [ref]);
  assert.equal(rows[0].n, 1);
  // The same reference with another amount is not the same payment.
  await rejectsWith(h.connector.createPayment(h.input(ref, { amountMinor: 999n })), 'reference_reused', false);
});

test('createPayment refuses what PayPal cannot take, before any call', async () => {
  const calls = h.audits.length;
  const ref = h.newRef('refuse');
  await rejectsWith(h.connector.createPayment(h.input(ref, { method: 'card' })), 'method_not_supported', false);
  await rejectsWith(h.connector.createPayment(h.input(ref, { currency: 'CNY' })), 'currency_not_supported', false);
  await rejectsWith(h.connector.createPayment(h.input(ref, { currency: 'XXX' })), 'currency_not_supported', false);
  await rejectsWith(h.connector.createPayment(h.input(ref, { amountMinor: 0n })), 'amount_invalid', false);
  await rejectsWith(h.connector.createPayment(h.input(ref, { currency: 'TWD', amountMinor: 12345n })), 'amount_invalid', false);
  await rejectsWith(h.connector.createPayment(h.input('bad ref/1')), 'reference_invalid', false);
  await rejectsWith(h.connector.createPayment(h.input(ref, { subject: '   ' })), 'subject_invalid', false);
  assert.equal(h.audits.length, calls, 'no channel call was made');
});

test('JPY and TWD go out as whole units; amounts round-trip exactly (fast-check)', async () => {
  const ref = h.newRef('jpy');
  await h.connector.createPayment(h.input(ref, { currency: 'JPY', amountMinor: 500n }));
  assert.equal((await sandboxOrder(ref))['value'], '500');
  const twd = h.newRef('twd');
  await h.connector.createPayment(h.input(twd, { currency: 'TWD', amountMinor: 12300n }));
  assert.equal((await sandboxOrder(twd))['value'], '123');
  fc.assert(fc.property(fc.bigInt({ min: 1n, max: 10n ** 12n }), fc.constantFrom('USD', 'JPY', 'EUR', 'HUF', 'GBP'), (minor, currency) => {
    const v = toPayPalValue(minor, currency);
    if (currency === 'HUF' && minor % 100n !== 0n) return v === null;
    return v !== null && fromPayPalValue(v, currency) === minor;
  }), { numRuns: 500 });
});

test('succeeded: APPROVED webhook verifies and asks for a requery; the query captures; the capture webhook agrees', async () => {
  const ref = h.newRef('ok');
  const created = await h.connector.createPayment(h.input(ref));
  assert.deepEqual(await h.connector.queryPayment({ channelReference: ref, currency: 'USD' }), {
    state: 'pending', channelReference: ref, channelTransactionId: created.channelTransactionId, amountMinor: 1234n, currency: 'USD', rawStatus: 'PAYER_ACTION_REQUIRED',
  });
  const sim = await h.simulate(ref, 'succeeded');
  assert.equal(sim.status, 200, JSON.stringify(sim.body));
  assert.equal(sim.body['status'], 'APPROVED');

  const [approved] = await h.waitReceived(byType(ref, 'CHECKOUT.ORDER.APPROVED'));
  const v1 = await verify(approved!);
  assert.ok(v1.ok, !v1.ok ? v1.reason : '');
  const n1 = paymentOf(v1.notification);
  assert.equal(n1.requery, true);
  assert.equal(n1.appId, h.connector.appId);
  assert.equal(n1.eventId, sim.body['notification']['event_id']);
  assert.deepEqual(n1.trade, { state: 'pending', channelReference: ref, channelTransactionId: created.channelTransactionId, amountMinor: 1234n, currency: 'USD', rawStatus: 'APPROVED' });

  // What the service does with requery: ask (this captures).
  const snapshot = await h.connector.queryPayment({ channelReference: ref, currency: 'USD' });
  const order = await sandboxOrder(ref);
  assert.equal(order['status'], 'COMPLETED');
  assert.deepEqual(snapshot, { state: 'succeeded', channelReference: ref, channelTransactionId: order['capture_id'], amountMinor: 1234n, currency: 'USD', rawStatus: 'COMPLETED/COMPLETED' });
  const capture = h.audits.find((a) => a.operation === 'capture_payment' && a.channelReference === ref)!;
  assert.equal((capture.request as { headers: Record<string, string> }).headers['paypal-request-id'], `${ref}:capture`);

  const [completed] = await h.waitReceived(byType(ref, 'PAYMENT.CAPTURE.COMPLETED'));
  const v2 = await verify(completed!);
  assert.ok(v2.ok, !v2.ok ? v2.reason : '');
  const n2 = paymentOf(v2.notification);
  assert.equal(n2.requery, undefined);
  assert.deepEqual(n2.trade, { state: 'succeeded', channelReference: ref, channelTransactionId: order['capture_id'], amountMinor: 1234n, currency: 'USD', rawStatus: 'COMPLETED' });
  assert.equal(eventOf(completed!)['resource']['seller_receivable_breakdown']['paypal_fee']['value'], '0.92');

  // Asking again captures nothing more.
  assert.deepEqual(await h.connector.queryPayment({ channelReference: ref, currency: 'USD' }), snapshot);
  assert.equal(h.audits.filter((a) => a.operation === 'capture_payment' && a.channelReference === ref).length, 1);
});

test('failed: the capture is DECLINED → failed, and PAYMENT.CAPTURE.DENIED says the same', async () => {
  const ref = h.newRef('fail');
  await h.connector.createPayment(h.input(ref));
  assert.equal((await h.simulate(ref, 'failed')).status, 200);
  const snapshot = await h.connector.queryPayment({ channelReference: ref, currency: 'USD' });
  assert.equal(snapshot.state, 'failed');
  assert.equal(snapshot.rawStatus, 'COMPLETED/DECLINED');
  const [denied] = await h.waitReceived(byType(ref, 'PAYMENT.CAPTURE.DENIED'));
  const v = await verify(denied!);
  assert.ok(v.ok, !v.ok ? v.reason : '');
  assert.deepEqual(paymentOf(v.notification).trade, { state: 'failed', channelReference: ref, channelTransactionId: snapshot.channelTransactionId, amountMinor: 1234n, currency: 'USD', rawStatus: 'DECLINED' });
});

test('canceled: VOIDED → the VOIDED webhook asks for a requery, the query answers closed', async () => {
  const ref = h.newRef('void');
  await h.connector.createPayment(h.input(ref));
  assert.equal((await h.simulate(ref, 'canceled')).status, 200);
  const [voided] = await h.waitReceived(byType(ref, 'CHECKOUT.ORDER.VOIDED'));
  const v = await verify(voided!);
  assert.ok(v.ok, !v.ok ? v.reason : '');
  assert.equal(paymentOf(v.notification).requery, true);
  const snapshot = await h.connector.queryPayment({ channelReference: ref, currency: 'USD' });
  assert.equal(snapshot.state, 'closed');
  assert.equal(snapshot.rawStatus, 'VOIDED');
  assert.equal((await h.connector.closePayment({ channelReference: ref, currency: 'USD' })).state, 'closed');
});

test('close before approval: closed for good — a later approval is never captured', async () => {
  const ref = h.newRef('close');
  await h.connector.createPayment(h.input(ref));
  const closed = await h.connector.closePayment({ channelReference: ref, currency: 'USD' });
  assert.equal(closed.state, 'closed');
  assert.equal(closed.rawStatus, 'PAYER_ACTION_REQUIRED');
  // The buyer still approves at PayPal (the link lives on there), and the webhook arrives.
  assert.equal((await h.simulate(ref, 'succeeded')).status, 200);
  const [approved] = await h.waitReceived(byType(ref, 'CHECKOUT.ORDER.APPROVED'));
  assert.ok((await verify(approved!)).ok);
  const after = await h.connector.queryPayment({ channelReference: ref, currency: 'USD' });
  assert.deepEqual([after.state, after.rawStatus], ['closed', 'APPROVED']);
  const order = await sandboxOrder(ref);
  assert.equal(order['status'], 'APPROVED');
  assert.equal(order['capture_id'], null);
  assert.equal(h.audits.filter((a) => a.operation === 'capture_payment' && a.channelReference === ref).length, 0);
});

test('close after the capture was decided finishes the capture and reports it; query and close racing agree', async () => {
  const ref = h.newRef('closecap');
  await h.connector.createPayment(h.input(ref));
  await h.simulate(ref, 'succeeded');
  const paid = await h.connector.queryPayment({ channelReference: ref, currency: 'USD' });
  assert.equal(paid.state, 'succeeded');
  assert.deepEqual(await h.connector.closePayment({ channelReference: ref, currency: 'USD' }), paid);

  for (let i = 0; i < 6; i++) {
    const r = h.newRef('race');
    await h.connector.createPayment(h.input(r));
    await h.simulate(r, 'succeeded');
    const [q, c] = await Promise.all([
      h.connector.queryPayment({ channelReference: r, currency: 'USD' }),
      h.connector.closePayment({ channelReference: r, currency: 'USD' }),
    ]);
    const order = await sandboxOrder(r);
    if (order['capture_id']) {
      assert.deepEqual([q.state, c.state], ['succeeded', 'succeeded'], `race ${i}`);
    } else {
      assert.deepEqual([q.state, c.state], ['closed', 'closed'], `race ${i}`);
    }
  }
});

test('concurrent queries of an approved order capture once', async () => {
  const ref = h.newRef('twice');
  await h.connector.createPayment(h.input(ref));
  await h.simulate(ref, 'succeeded');
  const results = await Promise.all([1, 2, 3].map(() => h.connector.queryPayment({ channelReference: ref, currency: 'USD' })));
  assert.ok(results.every((r) => r.state === 'succeeded' && r.channelTransactionId === results[0]!.channelTransactionId), JSON.stringify(results, (_k, v) => (typeof v === 'bigint' ? v.toString() : v)));
  const { rows } = await h.db.pool.query('SELECT count(*)::int AS n FROM sandbox_paypal_orders WHERE custom_id = $1 AND capture_id IS NOT NULL', [ref]);
  assert.equal(rows[0].n, 1);
  const captured = h.received.filter((r) => byType(ref, 'PAYMENT.CAPTURE.COMPLETED')(r, eventOf(r)));
  assert.ok(captured.length <= 1);
});

test('unknown references are not_found; a currency other than the order\'s is refused', async () => {
  assert.deepEqual(await h.connector.queryPayment({ channelReference: 'KPNEVERCREATED1', currency: 'USD' }), { state: 'not_found', channelReference: 'KPNEVERCREATED1' });
  assert.deepEqual(await h.connector.closePayment({ channelReference: 'KPNEVERCREATED1', currency: 'USD' }), { state: 'not_found', channelReference: 'KPNEVERCREATED1' });
  const ref = h.newRef('cur');
  await h.connector.createPayment(h.input(ref));
  await rejectsWith(h.connector.queryPayment({ channelReference: ref, currency: 'EUR' }), 'currency_mismatch', false);
  await rejectsWith(h.connector.queryPayment({ channelReference: ref, currency: 'CNY' }), 'currency_not_supported', false);
});

test('bad credentials: PayPal\'s 401 invalid_client, not retried', async () => {
  const bad = h.makeConnector({ clientSecret: 'E-wrong-secret' });
  const before = h.audits.filter((a) => a.operation === 'oauth_token').length;
  await rejectsWith(bad.createPayment(h.input(h.newRef('badauth'))), 'invalid_client', false);
  const tokenCalls = h.audits.filter((a) => a.operation === 'oauth_token').slice(before);
  assert.equal(tokenCalls.length, 1);
  assert.deepEqual((tokenCalls[0]!.response as { status: number; body: unknown }).body, { error: 'invalid_client', error_description: 'Client Authentication failed' });
  assert.equal((tokenCalls[0]!.request as { headers: Record<string, string> }).headers['authorization'], 'Basic [REDACTED]');
  const unknownApp = h.makeConnector({ clientId: 'AnotherApp' });
  await rejectsWith(unknownApp.createPayment(h.input(h.newRef('badapp'))), 'invalid_client', false);
});

test('the token is fetched once and reused; a 401 invalid_token gets one fresh token and one retry', async () => {
  const c = h.makeConnector({ baseUrl: `${h.base}/mitm/expire/sandbox/paypal` });
  const tokensBefore = h.audits.filter((a) => a.operation === 'oauth_token').length;
  const ref = h.newRef('tok');
  await c.createPayment(h.input(ref));
  await c.queryPayment({ channelReference: ref, currency: 'USD' });
  await c.queryPayment({ channelReference: ref, currency: 'USD' });
  assert.equal(h.audits.filter((a) => a.operation === 'oauth_token').length - tokensBefore, 1);
  // Now PayPal forgets the token once.
  let expired = 0;
  h.mitm.set('expire', { intercept: (_n, path) => (path.startsWith('/v2/') && expired++ === 0 ? { status: 401, body: '{"error":"invalid_token","error_description":"Access Token not found in cache"}' } : undefined) });
  assert.equal((await c.queryPayment({ channelReference: ref, currency: 'USD' })).state, 'pending');
  assert.equal(h.audits.filter((a) => a.operation === 'oauth_token').length - tokensBefore, 2);
  // Always 401: one refresh, then the error.
  h.mitm.set('expire', { intercept: (_n, path) => (path.startsWith('/v2/') ? { status: 401, body: '{"error":"invalid_token","error_description":"Token signature verification failed"}' } : undefined) });
  await rejectsWith(c.queryPayment({ channelReference: ref, currency: 'USD' }), 'invalid_token', false);
});

test('transport: 503 and timeouts are retried (bounded) for idempotent calls; persistent failure is a retryable ChannelError', async () => {
  const ref = h.newRef('flaky');
  await h.connector.createPayment(h.input(ref));
  h.mitm.set('flaky', { intercept: (n, path) => (path.startsWith('/v2/') && n <= 3 ? { status: 503, body: '{"name":"SERVICE_UNAVAILABLE","message":"Service Unavailable."}' } : undefined) });
  const c = h.makeConnector({ baseUrl: `${h.base}/mitm/flaky/sandbox/paypal`, maxAttempts: 3 });
  // Token (call 1) succeeds; GET calls 2 and 3 answer 503; the third attempt gets through.
  assert.equal((await c.queryPayment({ channelReference: ref, currency: 'USD' })).state, 'pending');

  h.mitm.set('down', { intercept: (_n, path) => (path.startsWith('/v2/') ? { status: 500, body: '{"name":"INTERNAL_SERVER_ERROR","message":"An internal server error has occurred."}' } : undefined) });
  const down = h.makeConnector({ baseUrl: `${h.base}/mitm/down/sandbox/paypal`, maxAttempts: 2 });
  await rejectsWith(down.queryPayment({ channelReference: ref, currency: 'USD' }), 'INTERNAL_SERVER_ERROR', true);
  assert.equal(h.mitmCounts.get('down'), 3, 'token + 2 attempts');

  h.mitm.set('slow', { intercept: (_n, path) => (path.startsWith('/v2/') ? { status: 200, body: '{}', delayMs: 400 } : undefined) });
  const slow = h.makeConnector({ baseUrl: `${h.base}/mitm/slow/sandbox/paypal`, timeoutMs: 100, maxAttempts: 2 });
  await rejectsWith(slow.queryPayment({ channelReference: ref, currency: 'USD' }), 'timeout', true);

  const nowhere = h.makeConnector({ baseUrl: 'http://127.0.0.1:9/sandbox/paypal', maxAttempts: 2 });
  await rejectsWith(nowhere.queryPayment({ channelReference: ref, currency: 'USD' }), 'transport_error', true);

  h.mitm.set('garbage', { intercept: (_n, path) => (path.startsWith('/v2/') ? { status: 200, body: '{"unexpected":true}' } : undefined) });
  const garbage = h.makeConnector({ baseUrl: `${h.base}/mitm/garbage/sandbox/paypal` });
  await rejectsWith(garbage.queryPayment({ channelReference: ref, currency: 'USD' }), 'invalid_response', true);
});

test('a PayPal answer about another order or reference is refused', async () => {
  const ref = h.newRef('swap');
  const other = h.newRef('swap');
  await h.connector.createPayment(h.input(ref));
  await h.connector.createPayment(h.input(other));
  const otherId = (await sandboxOrder(other))['order_id'];
  // Serve the other order's representation for ours.
  const token = await (await fetch(`${h.base}/sandbox/paypal/v1/oauth2/token`, {
    method: 'POST', headers: { authorization: 'Basic ' + Buffer.from(`${h.keys.clientId}:${h.keys.clientSecret}`).toString('base64'), 'content-type': 'application/x-www-form-urlencoded' }, body: 'grant_type=client_credentials',
  })).json() as { access_token: string };
  const otherJson = await (await fetch(`${h.base}/sandbox/paypal/v2/checkout/orders/${otherId}`, { headers: { authorization: `Bearer ${token.access_token}` } })).text();
  h.mitm.set('swap', { intercept: (_n, path) => (path.startsWith('/v2/checkout/orders/') ? { status: 200, body: otherJson } : undefined) });
  const c = h.makeConnector({ baseUrl: `${h.base}/mitm/swap/sandbox/paypal` });
  await rejectsWith(c.queryPayment({ channelReference: ref, currency: 'USD' }), 'invalid_response', false);
});

test('verifyNotification: tampered, stale, forged, foreign-key and off-list deliveries are refused', async () => {
  const ref = h.newRef('neg');
  await h.connector.createPayment(h.input(ref));
  await h.simulate(ref, 'succeeded');
  const [genuine] = await h.waitReceived(byType(ref, 'CHECKOUT.ORDER.APPROVED'));
  assert.ok((await verify(genuine!)).ok);

  const tampered = Buffer.from(genuine!.rawBody);
  const at = tampered.indexOf('"12.34"') + 2;
  tampered[at] = 0x39; // 12.34 → 19.34
  assert.deepEqual(await verify({ ...genuine!, rawBody: tampered }), { ok: false, reason: 'invalid signature' });

  const later = h.makeConnector({ now: () => new Date(Date.now() + 16 * 60_000) });
  const stale = await later.verifyNotification({ headers: genuine!.headers, rawBody: genuine!.rawBody }, usd);
  assert.equal(stale.ok, false);
  assert.match(!stale.ok ? stale.reason : '', /stale transmission/);

  // Signed by a key that is not the certificate's, pointing at the sandbox's certificate.
  const other = await generateSandboxCertificates();
  const forgedHeaders = signTransmission(genuine!.rawBody.toString(), {
    webhookId: h.keys.webhookId, certUrl: String(genuine!.headers['paypal-cert-url']), key: createPrivateKey(other.signingKeyPem),
  }, new Date());
  assert.deepEqual(await verify({ ...genuine!, headers: forgedHeaders }), { ok: false, reason: 'invalid signature' });

  // A whole foreign chain: a connector trusting another sandbox's root refuses the genuine delivery.
  const foreignTrust = h.makeConnector({ trustAnchors: [new X509Certificate(other.caCertPem)] });
  assert.deepEqual(await foreignTrust.verifyNotification({ headers: genuine!.headers, rawBody: genuine!.rawBody }, usd), { ok: false, reason: 'certificate chain does not reach a trusted anchor' });

  // The sandbox's certificate URL is accepted only in sandbox mode.
  const realMode = h.makeConnector({ sandboxCertPrefix: undefined });
  const off = await realMode.verifyNotification({ headers: genuine!.headers, rawBody: genuine!.rawBody }, usd);
  assert.deepEqual(off, { ok: false, reason: 'certificate URL must be https, got http:' });

  // Another webhook registration's deliveries do not verify with ours.
  const otherHook = h.makeConnector({ webhookId: 'OTHERWEBHOOK00001' });
  assert.deepEqual(await otherHook.verifyNotification({ headers: genuine!.headers, rawBody: genuine!.rawBody }, usd), { ok: false, reason: 'invalid signature' });

  // Right signature, but our payment is in another currency.
  const wrongCurrency = await verify(genuine!, async () => 'EUR');
  assert.deepEqual(wrongCurrency, { ok: false, reason: 'currency mismatch: event USD, payment EUR' });
});

test('verifyNotification translates only after the signature; odd events are refused or ignored', async () => {
  const key = createPrivateKey(h.keys.signingKeyPem);
  const certUrl = `${h.base}/sandbox/paypal/v1/notifications/certs/CERT-${h.keys.certId}`;
  const deliver = (event: unknown) => {
    const raw = Buffer.from(JSON.stringify(event));
    return h.connector.verifyNotification({ headers: signTransmission(raw.toString(), { webhookId: h.keys.webhookId, certUrl, key }, new Date()), rawBody: raw }, usd);
  };
  const capture = (over: Record<string, unknown>) => ({
    id: 'WH-TEST', event_type: 'PAYMENT.CAPTURE.COMPLETED',
    resource: { id: 'CAP1', status: 'COMPLETED', amount: { currency_code: 'USD', value: '12.34' }, custom_id: 'KPREF1', payee: { merchant_id: h.keys.merchantId }, ...over },
  });
  const ok = await deliver(capture({}));
  assert.ok(ok.ok);
  assert.deepEqual(ok.notification, { eventId: 'WH-TEST', kind: 'payment', appId: h.keys.merchantId, trade: { state: 'succeeded', channelReference: 'KPREF1', channelTransactionId: 'CAP1', amountMinor: 1234n, currency: 'USD', rawStatus: 'COMPLETED' } });
  // Another merchant's capture: translated with its payee, so the service's app-id check refuses it.
  const foreign = await deliver(capture({ payee: { merchant_id: 'SOMEONEELSE01' } }));
  assert.ok(foreign.ok && foreign.notification.appId === 'SOMEONEELSE01' && foreign.notification.appId !== h.connector.appId);
  assert.deepEqual(await deliver(capture({ status: 'PENDING' })), { ok: false, reason: 'PAYMENT.CAPTURE.COMPLETED with capture status PENDING' });
  assert.deepEqual(await deliver(capture({ amount: { currency_code: 'USD', value: '12.345' } })), { ok: false, reason: 'PAYMENT.CAPTURE.COMPLETED: unparsable amount' });
  assert.deepEqual(await deliver(capture({ amount: { currency_code: 'usd', value: '12.34' } })), { ok: false, reason: 'PAYMENT.CAPTURE.COMPLETED: unparsable amount' });
  assert.deepEqual(await deliver({ id: 'WH-2', event_type: 'PAYMENT.CAPTURE.COMPLETED', resource: { nope: 1 } }), { ok: false, reason: 'PAYMENT.CAPTURE.COMPLETED: resource is not a capture' });
  const noCustom = await deliver(capture({ custom_id: undefined }));
  assert.deepEqual(noCustom, { ok: true, notification: { eventId: 'WH-TEST', kind: 'ignored', reason: 'capture without custom_id (not created by Knowpay)' } });
  // Refund events are translated (refunds.test.ts); one whose resource is not a refund is refused.
  const refunded = await deliver({ id: 'WH-3', event_type: 'PAYMENT.CAPTURE.REFUNDED', resource: { id: 'R1', custom_id: 'KPREF1' } });
  assert.deepEqual(refunded, { ok: false, reason: 'PAYMENT.CAPTURE.REFUNDED: resource is not a refund' });
  const pending = await deliver({ id: 'WH-4', event_type: 'PAYMENT.CAPTURE.PENDING', resource: { id: 'C1', status: 'PENDING', custom_id: 'KPREF1' } });
  assert.deepEqual(pending, { ok: true, notification: { eventId: 'WH-4', kind: 'ignored', reason: 'event type PAYMENT.CAPTURE.PENDING is not used', channelReference: 'KPREF1' } });
  assert.deepEqual(await deliver([1, 2]), { ok: false, reason: 'body is not a webhook event' });
  const raw = Buffer.from([0x7b, 0xff, 0x7d]);
  const notUtf8 = await h.connector.verifyNotification({ headers: signTransmission(raw.toString('latin1'), { webhookId: h.keys.webhookId, certUrl, key }, new Date()), rawBody: raw }, usd);
  assert.equal(notUtf8.ok, false);
  // Without a merchant id configured, no app id is claimed.
  const plain = translateEvent({ id: 'e', eventType: 'PAYMENT.CAPTURE.COMPLETED', resource: capture({}).resource }, null);
  assert.ok(plain.ok && plain.notification.kind === 'payment' && !('appId' in plain.notification));
});

test('acknowledgements: 2xx delivered, anything else retried by PayPal', () => {
  assert.deepEqual(h.connector.ackSuccess(), { statusCode: 200, contentType: 'application/json', body: '{}' });
  const failure = h.connector.ackFailure('invalid signature');
  assert.equal(failure.statusCode, 400);
  assert.doesNotMatch(failure.body, /signature/);
  assert.equal(h.connector.appId, h.keys.merchantId);
  assert.deepEqual([...h.connector.methods], ['paypal']);
});

test('audit entries never carry secrets', () => {
  const text = JSON.stringify(h.audits, (_k, v) => (typeof v === 'bigint' ? v.toString() : v));
  assert.ok(h.audits.length > 10);
  assert.doesNotMatch(text, /A21AA/, 'access tokens');
  assert.ok(!text.includes(h.keys.clientSecret), 'client secret');
  assert.ok(!text.includes(Buffer.from(`${h.keys.clientId}:${h.keys.clientSecret}`).toString('base64')), 'basic credentials');
  assert.deepEqual(redactSecrets({ access_token: 'x', nested: [{ authorization: 'Bearer y' }], note: 'Basic abc' }), { access_token: '[REDACTED]', nested: [{ authorization: 'Bearer [REDACTED]' }], note: 'Basic [REDACTED]' });
});

test('the module: sandbox keys are generated once and reused; real credentials select the real API without a sandbox', async () => {
  const again = await paypalModule.create({ pool: h.db.pool, publicBaseUrl: h.base, sandboxTimeScale: 0.001, audit: () => {}, env: {} });
  assert.equal(again.connector.appId, h.keys.merchantId);
  assert.ok(again.mountSandbox);
  const real = await paypalModule.create({
    pool: h.db.pool, publicBaseUrl: h.base, sandboxTimeScale: 1, audit: () => {},
    env: { PAYPAL_CLIENT_ID: 'live-id', PAYPAL_CLIENT_SECRET: 'live-secret', PAYPAL_WEBHOOK_ID: '8PT597110X687430LKGECATA' },
  });
  assert.equal(real.mountSandbox, undefined);
  assert.equal(real.connector.appId, '8PT597110X687430LKGECATA');
  // The sandbox's own certificate URL is not accepted by a real-mode connector.
  const ref = h.newRef('realmode');
  await h.connector.createPayment(h.input(ref));
  await h.simulate(ref, 'canceled');
  const [voided] = await h.waitReceived(byType(ref, 'CHECKOUT.ORDER.VOIDED'));
  const refused = await real.connector.verifyNotification({ headers: voided!.headers, rawBody: voided!.rawBody }, usd);
  assert.deepEqual(refused, { ok: false, reason: 'certificate URL must be https, got http:' });
});

/**
 * Refunds, connector ↔ sandbox over real HTTP: full, partial and several partial refunds, PayPal's
 * refusal beyond the remainder, idempotency per refund reference, queries (by refund id, by our
 * reference through the order, by re-sending a recorded request), pending refunds finished by the
 * sandbox, and refund webhooks (verified, translated, matched to our records; forged ones refused).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createPrivateKey } from 'node:crypto';
import type { RefundRequest, VerifiedNotification } from '../types.ts';
import { eventOf, startHarness, type Harness, type Received } from './harness.ts';
import { signTransmission } from './sandbox.ts';
import { generateSandboxCertificates } from './sandbox-keys.ts';
import { rejectsWith } from '../../../test/support/assertions.ts';

let h: Harness;

before(async () => {
  h = await startHarness({ timeScale: 0.001 });
});

after(async () => {
  await h.close();
});

const usd = async () => 'USD';
let refundCounter = 0;
const newRefundRef = () => `KPR${process.pid}x${++refundCounter}x${Date.now() % 100000}`;

function refundInput(ref: string, amountMinor: bigint, over: Partial<RefundRequest> = {}): RefundRequest {
  return {
    channelReference: ref, refundReference: newRefundRef(), amountMinor, paymentAmountMinor: 1234n, currency: 'USD',
    reason: 'Requested by the buyer', notifyUrl: `${h.base}/v1/notify/paypal`, ...over,
  };
}

async function sandboxOrder(ref: string): Promise<Record<string, any>> {
  return (await fetch(`${h.base}/sandbox/paypal/orders/${ref}`)).json() as Promise<Record<string, any>>;
}

const refundEvent = (ref: string, type = 'PAYMENT.CAPTURE.REFUNDED', refundId?: string) => (_r: Received, e: Record<string, any>) =>
  e['event_type'] === type && e['resource']['custom_id'] === ref && (refundId === undefined || e['resource']['id'] === refundId);

function refundOf(n: VerifiedNotification) {
  assert.equal(n.kind, 'refund', JSON.stringify(n, (_k, v) => (typeof v === 'bigint' ? `${v}n` : v)));
  return n as Extract<VerifiedNotification, { kind: 'refund' }>;
}

async function verify(r: { headers: Received['headers']; rawBody: Buffer }, currencyOf: (ref: string) => Promise<string | null> = usd) {
  return h.connector.verifyNotification({ headers: r.headers, rawBody: r.rawBody, contentType: 'application/json' }, currencyOf);
}

/** A refund webhook as the sandbox would sign it (for resources the sandbox would not produce). */
function signed(event: unknown) {
  const key = createPrivateKey(h.keys.signingKeyPem);
  const certUrl = `${h.base}/sandbox/paypal/v1/notifications/certs/CERT-${h.keys.certId}`;
  const raw = Buffer.from(JSON.stringify(event));
  return { headers: signTransmission(raw.toString(), { webhookId: h.keys.webhookId, certUrl, key }, new Date()), rawBody: raw };
}

test('full refund: one synchronous COMPLETED refund, the capture REFUNDED, PAYMENT.CAPTURE.REFUNDED verifies as our refund', async () => {
  const ref = h.newRef('rfull');
  const captureId = await h.pay(ref);
  const input = refundInput(ref, 1234n, { channelTransactionId: captureId });
  const snapshot = await h.connector.refundPayment!(input);
  const order = await sandboxOrder(ref);
  assert.equal(order['refunds'].length, 1);
  const refundId = order['refunds'][0]['refund_id'];
  assert.deepEqual(snapshot, { state: 'succeeded', refundReference: input.refundReference, channelRefundId: refundId, channelReference: ref, amountMinor: 1234n, currency: 'USD', rawStatus: 'COMPLETED' });
  assert.equal(order['capture_status'], 'REFUNDED');

  // The request on the wire, as audited.
  const call = h.audits.find((a) => a.operation === 'refund_payment' && a.channelReference === ref)!;
  const req = call.request as { url: string; headers: Record<string, string>; body: any };
  assert.equal(req.url, `${h.base}/sandbox/paypal/v2/payments/captures/${captureId}/refund`);
  assert.equal(req.headers['paypal-request-id'], input.refundReference);
  assert.equal(req.headers['authorization'], 'Bearer [REDACTED]');
  assert.deepEqual(req.body, { amount: { currency_code: 'USD', value: '12.34' }, invoice_id: input.refundReference, custom_id: ref, note_to_payer: 'Requested by the buyer' });

  const [delivered] = await h.waitReceived(refundEvent(ref));
  const event = eventOf(delivered!);
  assert.equal(event['resource_type'], 'refund');
  assert.equal(event['resource']['links'].find((l: any) => l.rel === 'up').href, `${h.base}/sandbox/paypal/v2/payments/captures/${captureId}`);
  const v = await verify(delivered!);
  assert.ok(v.ok, !v.ok ? v.reason : '');
  const n = refundOf(v.notification);
  assert.equal(n.eventId, event['id']);
  assert.equal(n.appId, h.connector.appId);
  assert.deepEqual(n.refund, { state: 'succeeded', refundReference: input.refundReference, channelRefundId: refundId, channelReference: ref, amountMinor: 1234n, currency: 'USD', rawStatus: 'COMPLETED' });

  // The query agrees, by PayPal's refund id and by our reference alone.
  assert.deepEqual(await h.connector.queryRefund!({ channelReference: ref, refundReference: input.refundReference, channelRefundId: refundId, currency: 'USD' }), snapshot);
  assert.deepEqual(await h.connector.queryRefund!({ channelReference: ref, refundReference: input.refundReference, currency: 'USD' }), snapshot);
  // The payment itself stays paid: refunds are tracked on their own.
  const paid = await h.connector.queryPayment({ channelReference: ref, currency: 'USD' });
  assert.deepEqual([paid.state, paid.rawStatus], ['succeeded', 'COMPLETED/REFUNDED']);
  // Nothing is left: PayPal's own refusal, not retryable.
  await rejectsWith(h.connector.refundPayment!(refundInput(ref, 1n, { channelTransactionId: captureId })), 'CAPTURE_FULLY_REFUNDED', false);
});

test('several partial refunds up to the capture; beyond the remainder PayPal refuses with REFUND_AMOUNT_EXCEEDED', async () => {
  const ref = h.newRef('rpart');
  const captureId = await h.pay(ref, { amountMinor: 1000n });
  const first = await h.connector.refundPayment!(refundInput(ref, 300n, { channelTransactionId: captureId, paymentAmountMinor: 1000n }));
  assert.deepEqual([first.state, first.amountMinor], ['succeeded', 300n]);
  assert.equal((await sandboxOrder(ref))['capture_status'], 'PARTIALLY_REFUNDED');
  const paid = await h.connector.queryPayment({ channelReference: ref, currency: 'USD' });
  assert.deepEqual([paid.state, paid.rawStatus], ['succeeded', 'COMPLETED/PARTIALLY_REFUNDED']);

  const second = await h.connector.refundPayment!(refundInput(ref, 200n, { channelTransactionId: captureId, paymentAmountMinor: 1000n }));
  assert.equal(second.state, 'succeeded');
  assert.notEqual(second.channelRefundId, first.channelRefundId);
  const tooMuch = refundInput(ref, 501n, { channelTransactionId: captureId, paymentAmountMinor: 1000n });
  await rejectsWith(h.connector.refundPayment!(tooMuch), 'REFUND_AMOUNT_EXCEEDED', false);
  // The refusal is final when asked again too (the recorded request is re-sent and refused again).
  assert.deepEqual(await h.connector.queryRefund!({ channelReference: ref, refundReference: tooMuch.refundReference, currency: 'USD' }), {
    state: 'failed', refundReference: tooMuch.refundReference, channelReference: ref, amountMinor: 501n, currency: 'USD', rawStatus: 'REFUND_AMOUNT_EXCEEDED',
  });
  const last = await h.connector.refundPayment!(refundInput(ref, 500n, { channelTransactionId: captureId, paymentAmountMinor: 1000n }));
  assert.equal(last.state, 'succeeded');
  const order = await sandboxOrder(ref);
  assert.equal(order['capture_status'], 'REFUNDED');
  assert.deepEqual(order['refunds'].map((r: any) => [r.amount, r.status]), [[300, 'COMPLETED'], [200, 'COMPLETED'], [500, 'COMPLETED']]);
  // Each completed refund sent its own webhook; the last one's total is the whole capture.
  const events = await h.waitReceived(refundEvent(ref), 3);
  const totals = events.map((e) => eventOf(e)['resource']['seller_payable_breakdown']['total_refunded_amount']['value']).sort();
  assert.deepEqual(totals, ['10.00', '3.00', '5.00']);
});

test('idempotent per refund reference: replays and concurrent calls give one refund; the reference with another amount is refused', async () => {
  const ref = h.newRef('ridem');
  const captureId = await h.pay(ref);
  const input = refundInput(ref, 400n, { channelTransactionId: captureId });
  const [a, b] = await Promise.all([h.connector.refundPayment!(input), h.connector.refundPayment!(input)]);
  const c = await h.connector.refundPayment!(input);
  assert.deepEqual(a, b);
  assert.deepEqual(a, c);
  const order = await sandboxOrder(ref);
  assert.equal(order['refunds'].length, 1);
  assert.equal(order['refunds'][0]['amount'], 400);
  await rejectsWith(h.connector.refundPayment!({ ...input, amountMinor: 401n }), 'reference_reused', false);
  await rejectsWith(h.connector.refundPayment!({ ...input, channelReference: h.newRef('ridem') }), 'reference_reused', false);
  assert.equal((await sandboxOrder(ref))['refunds'].length, 1);
  // One webhook for the one refund.
  await h.waitReceived(refundEvent(ref));
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(h.received.filter((r) => refundEvent(ref)(r, eventOf(r))).length, 1);
});

test('the capture is found without channelTransactionId, or when it names the order; unknown or unpaid payments are refused', async () => {
  const ref = h.newRef('rcap');
  await h.pay(ref);
  const orderId = (await sandboxOrder(ref))['order_id'];
  const viaOrder = await h.connector.refundPayment!(refundInput(ref, 100n, { channelTransactionId: orderId }));
  const viaRef = await h.connector.refundPayment!(refundInput(ref, 100n));
  assert.deepEqual([viaOrder.state, viaRef.state], ['succeeded', 'succeeded']);

  await rejectsWith(h.connector.refundPayment!(refundInput(h.newRef('rnone'), 100n)), 'payment_not_found', false);
  const unpaid = h.newRef('runpaid');
  await h.connector.createPayment(h.input(unpaid));
  await rejectsWith(h.connector.refundPayment!(refundInput(unpaid, 100n)), 'payment_not_captured', false);
  const declined = h.newRef('rdecl');
  await h.connector.createPayment(h.input(declined));
  await h.simulate(declined, 'failed');
  assert.equal((await h.connector.queryPayment({ channelReference: declined, currency: 'USD' })).state, 'failed');
  await rejectsWith(h.connector.refundPayment!(refundInput(declined, 100n)), 'payment_not_captured', false);
  // A capture id PayPal does not know: its 404, not retryable.
  await rejectsWith(h.connector.refundPayment!(refundInput(ref, 100n, { channelTransactionId: 'NOSUCHCAPTURE0001' })), 'INVALID_RESOURCE_ID', false);
});

test('refundPayment refuses what PayPal cannot take, before any call', async () => {
  const ref = h.newRef('rbad');
  const before = h.audits.length;
  await rejectsWith(h.connector.refundPayment!(refundInput(ref, 0n)), 'amount_invalid', false);
  await rejectsWith(h.connector.refundPayment!(refundInput(ref, -5n)), 'amount_invalid', false);
  await rejectsWith(h.connector.refundPayment!(refundInput(ref, 12345n, { currency: 'TWD' })), 'amount_invalid', false);
  await rejectsWith(h.connector.refundPayment!(refundInput(ref, 100n, { currency: 'XXX' })), 'currency_not_supported', false);
  await rejectsWith(h.connector.refundPayment!(refundInput(ref, 100n, { refundReference: 'bad ref/../x' })), 'reference_invalid', false);
  await rejectsWith(h.connector.refundPayment!(refundInput(ref, 100n, { channelTransactionId: '../orders/X' })), 'reference_invalid', false);
  assert.equal(h.audits.length, before, 'no channel call');
  // Our payment is in USD: asking in EUR is refused.
  const paid = h.newRef('rcur');
  await h.pay(paid);
  await rejectsWith(h.connector.refundPayment!(refundInput(paid, 100n, { currency: 'EUR' })), 'currency_mismatch', false);
});

test('a lost answer: the query finds the refund on the order by our invoice_id, then asks PayPal by its refund id', async () => {
  const ref = h.newRef('rlost');
  const captureId = await h.pay(ref);
  // PayPal performs every attempt (same PayPal-Request-Id: one refund) but every answer is lost.
  h.mitm.set('lost', { replace: (_n, path) => (path.endsWith('/refund') ? { status: 502, body: '{"name":"BAD_GATEWAY"}' } : undefined) });
  const lossy = h.makeConnector({ baseUrl: `${h.base}/mitm/lost/sandbox/paypal`, maxAttempts: 2 });
  const input = refundInput(ref, 700n, { channelTransactionId: captureId });
  await rejectsWith(lossy.refundPayment!(input), 'BAD_GATEWAY', true);
  const order = await sandboxOrder(ref);
  assert.equal(order['refunds'].length, 1, 'one refund for two attempts');
  const auditsBefore = h.audits.length;
  const found = await h.connector.queryRefund!({ channelReference: ref, refundReference: input.refundReference, currency: 'USD' });
  assert.deepEqual(found, { state: 'succeeded', refundReference: input.refundReference, channelRefundId: order['refunds'][0]['refund_id'], channelReference: ref, amountMinor: 700n, currency: 'USD', rawStatus: 'COMPLETED' });
  const asked = h.audits.slice(auditsBefore).map((a) => `${a.operation} ${(a.request as { method: string }).method}`);
  assert.deepEqual(asked.filter((x) => x.startsWith('query_refund')), ['query_refund GET']);
  assert.match(String((h.audits.slice(auditsBefore).find((a) => a.operation === 'query_refund')!.request as { url: string }).url), /\/v2\/checkout\/orders\//);
  // Now recorded: the next query goes straight to the refund.
  const n = h.audits.length;
  assert.deepEqual(await h.connector.queryRefund!({ channelReference: ref, refundReference: input.refundReference, currency: 'USD' }), found);
  assert.match(String((h.audits.slice(n).find((a) => a.operation === 'query_refund')!.request as { url: string }).url), /\/v2\/payments\/refunds\//);
});

test('a request that never reached PayPal: the query re-sends the recorded request (once), and an unknown reference stays pending', async () => {
  const ref = h.newRef('rnever');
  const captureId = await h.pay(ref);
  h.mitm.set('never', { intercept: (_n, path) => (path.endsWith('/refund') ? { status: 503, body: '{"name":"SERVICE_UNAVAILABLE"}' } : undefined) });
  const down = h.makeConnector({ baseUrl: `${h.base}/mitm/never/sandbox/paypal`, maxAttempts: 2 });
  const input = refundInput(ref, 250n, { channelTransactionId: captureId });
  await rejectsWith(down.refundPayment!(input), 'SERVICE_UNAVAILABLE', true);
  assert.equal((await sandboxOrder(ref))['refunds'].length, 0);
  const [q1, q2] = await Promise.all([
    h.connector.queryRefund!({ channelReference: ref, refundReference: input.refundReference, currency: 'USD' }),
    h.connector.queryRefund!({ channelReference: ref, refundReference: input.refundReference, currency: 'USD' }),
  ]);
  assert.equal(q1.state, 'succeeded');
  assert.deepEqual(q1, q2);
  assert.equal((await sandboxOrder(ref))['refunds'].length, 1);
  // A reference this connector never recorded (never sent): not an outcome.
  const unknown = newRefundRef();
  assert.deepEqual(await h.connector.queryRefund!({ channelReference: ref, refundReference: unknown, currency: 'USD' }), {
    state: 'pending', refundReference: unknown, channelReference: ref, rawStatus: 'NOT_FOUND',
  });
  // Our reference asked under another trade or currency is refused; an unknown refund id is retried later.
  await rejectsWith(h.connector.queryRefund!({ channelReference: h.newRef('rother'), refundReference: input.refundReference, currency: 'USD' }), 'reference_reused', false);
  await rejectsWith(h.connector.queryRefund!({ channelReference: ref, refundReference: input.refundReference, currency: 'EUR' }), 'reference_reused', false);
  await rejectsWith(h.connector.queryRefund!({ channelReference: ref, refundReference: unknown, channelRefundId: 'NOSUCHREFUND00001', currency: 'USD' }), 'refund_not_found', true);
  await rejectsWith(h.connector.queryRefund!({ channelReference: ref, refundReference: unknown, channelRefundId: 'x/../y', currency: 'USD' }), 'reference_invalid', false);
});

test('pending refunds: no webhook while PENDING; /refunds/simulate completes one (webhook) and fails another (query only)', async () => {
  const ref = h.newRef('rpend');
  const captureId = await h.pay(ref, { amountMinor: 1000n });
  const mode = await h.sandboxPost('/refunds/mode', { channel_reference: ref, mode: 'pending' });
  assert.deepEqual([mode.status, mode.body['refund_mode']], [200, 'pending']);
  const a = refundInput(ref, 600n, { channelTransactionId: captureId, paymentAmountMinor: 1000n });
  const pending = await h.connector.refundPayment!(a);
  assert.deepEqual([pending.state, pending.rawStatus], ['pending', 'PENDING']);
  assert.equal((await sandboxOrder(ref))['capture_status'], 'COMPLETED', 'a pending refund does not refund the capture yet');
  // PENDING money is promised: only 400 is left.
  await rejectsWith(h.connector.refundPayment!(refundInput(ref, 401n, { channelTransactionId: captureId })), 'REFUND_AMOUNT_EXCEEDED', false);
  const b = refundInput(ref, 400n, { channelTransactionId: captureId, paymentAmountMinor: 1000n });
  assert.equal((await h.connector.refundPayment!(b)).state, 'pending');
  assert.equal((await h.connector.queryRefund!({ channelReference: ref, refundReference: a.refundReference, currency: 'USD' })).state, 'pending');

  const done = await h.sandboxPost('/refunds/simulate', { refund_reference: a.refundReference, outcome: 'succeeded' });
  assert.equal(done.status, 200, JSON.stringify(done.body));
  assert.equal(done.body['status'], 'COMPLETED');
  const [event] = await h.waitReceived(refundEvent(ref, 'PAYMENT.CAPTURE.REFUNDED', pending.channelRefundId));
  const v = await verify(event!);
  assert.ok(v.ok, !v.ok ? v.reason : '');
  assert.deepEqual(refundOf(v.notification).refund, { ...pending, state: 'succeeded', rawStatus: 'COMPLETED' });
  assert.equal(refundOf(v.notification).eventId, done.body['notification']['event_id']);
  assert.equal((await h.connector.queryRefund!({ channelReference: ref, refundReference: a.refundReference, currency: 'USD' })).state, 'succeeded');
  assert.equal((await sandboxOrder(ref))['capture_status'], 'PARTIALLY_REFUNDED');

  const bSnap = await h.connector.queryRefund!({ channelReference: ref, refundReference: b.refundReference, currency: 'USD' });
  const failed = await h.sandboxPost('/refunds/simulate', { channel_refund_id: bSnap.channelRefundId, outcome: 'failed' });
  assert.equal(failed.body['notification'], null, 'PayPal documents no webhook for a failed refund');
  assert.deepEqual(await h.connector.queryRefund!({ channelReference: ref, refundReference: b.refundReference, currency: 'USD' }), { ...bSnap, state: 'failed', rawStatus: 'FAILED' });
  const again = await h.sandboxPost('/refunds/simulate', { refund_reference: b.refundReference, outcome: 'succeeded' });
  assert.deepEqual([again.status, again.body['error']['code']], [409, 'refund_already_final']);
  // The failed refund's money is refundable again.
  const c = await h.connector.refundPayment!(refundInput(ref, 400n, { channelTransactionId: captureId, paymentAmountMinor: 1000n }));
  assert.equal(c.state, 'pending');
  const canceled = await h.sandboxPost('/refunds/simulate', { channel_refund_id: c.channelRefundId, outcome: 'canceled' });
  assert.equal(canceled.body['status'], 'CANCELLED');
  assert.deepEqual((await h.connector.queryRefund!({ channelReference: ref, refundReference: c.refundReference!, channelRefundId: c.channelRefundId!, currency: 'USD' })).state, 'failed');
});

test('refund webhooks: tampered, forged, stale, foreign-registration and wrong-currency deliveries are refused', async () => {
  const ref = h.newRef('rforge');
  const captureId = await h.pay(ref);
  await h.connector.refundPayment!(refundInput(ref, 500n, { channelTransactionId: captureId }));
  const [genuine] = await h.waitReceived(refundEvent(ref));
  assert.ok((await verify(genuine!)).ok);

  const text = genuine!.rawBody.toString('utf8');
  const tampered = Buffer.from(text.replace('"value":"5.00"', '"value":"9.00"'));
  assert.notEqual(tampered.toString(), text);
  assert.deepEqual(await verify({ ...genuine!, rawBody: tampered }), { ok: false, reason: 'invalid signature' });
  const otherStatus = Buffer.from(text.replace('"status":"COMPLETED"', '"status":"FAILED"'));
  assert.deepEqual(await verify({ ...genuine!, rawBody: otherStatus }), { ok: false, reason: 'invalid signature' });

  const other = await generateSandboxCertificates();
  const forged = signTransmission(text, { webhookId: h.keys.webhookId, certUrl: String(genuine!.headers['paypal-cert-url']), key: createPrivateKey(other.signingKeyPem) }, new Date());
  assert.deepEqual(await verify({ ...genuine!, headers: forged }), { ok: false, reason: 'invalid signature' });
  // A forged refund that was never made, signed with a foreign key: refused before anything is read.
  const fake = JSON.parse(text);
  fake.resource.amount.value = '12.34';
  const fakeRaw = JSON.stringify(fake);
  const fakeHeaders = signTransmission(fakeRaw, { webhookId: h.keys.webhookId, certUrl: String(genuine!.headers['paypal-cert-url']), key: createPrivateKey(other.signingKeyPem) }, new Date());
  assert.deepEqual(await verify({ headers: fakeHeaders, rawBody: Buffer.from(fakeRaw) }), { ok: false, reason: 'invalid signature' });

  const stale = signTransmission(text, { webhookId: h.keys.webhookId, certUrl: String(genuine!.headers['paypal-cert-url']), key: createPrivateKey(h.keys.signingKeyPem) }, new Date(Date.now() - 3600_000));
  assert.match((await verify({ ...genuine!, headers: stale }) as { reason: string }).reason, /stale transmission/);
  const otherHook = h.makeConnector({ webhookId: 'OTHERWEBHOOK00001' });
  assert.deepEqual(await otherHook.verifyNotification({ headers: genuine!.headers, rawBody: genuine!.rawBody }, usd), { ok: false, reason: 'invalid signature' });
  assert.deepEqual(await verify(genuine!, async () => 'EUR'), { ok: false, reason: 'currency mismatch: event USD, payment EUR' });
});

test('refund webhooks are matched to our records: refunds made on PayPal\'s site, missing custom_id, mismatches', async () => {
  const ref = h.newRef('rmatch');
  const captureId = await h.pay(ref);
  const ours = await h.connector.refundPayment!(refundInput(ref, 100n, { channelTransactionId: captureId }));
  const [genuine] = await h.waitReceived(refundEvent(ref));
  const base = eventOf(genuine!);
  const event = (resource: Record<string, unknown>, type = 'PAYMENT.CAPTURE.REFUNDED') => ({ ...base, id: `WH-${type.length}-${Object.keys(resource).join('')}`, event_type: type, resource: { ...base['resource'], ...resource } });
  const strip = (e: Record<string, any>, key: string) => { delete e['resource'][key]; return e; };
  const verified = async (e: unknown) => verify(signed(e));

  // Made on PayPal's site: an invoice_id we never recorded, or the order's own (= trade number).
  for (const invoice of ['SHOP-INVOICE-77', ref]) {
    const v = await verified(event({ id: 'SITEREFUND000001', invoice_id: invoice }));
    assert.ok(v.ok);
    assert.deepEqual(refundOf(v.notification).refund, { state: 'succeeded', channelRefundId: 'SITEREFUND000001', channelReference: ref, amountMinor: 100n, currency: 'USD', rawStatus: 'COMPLETED' });
  }
  // Ours without custom_id: the trade number comes from our records.
  const noCustom = await verified(strip(event({}), 'custom_id'));
  assert.ok(noCustom.ok);
  assert.deepEqual(refundOf(noCustom.notification).refund, ours);
  // Not ours, no custom_id: our records of the capture name the trade…
  const viaRecords = await verified(strip(event({ id: 'SITEREFUND000002', invoice_id: 'SHOP-INVOICE-78' }), 'custom_id'));
  assert.ok(viaRecords.ok);
  assert.equal(refundOf(viaRecords.notification).refund.channelReference, ref);
  // …or, for a capture we never refunded, the capture itself (GET /v2/payments/captures/{id}).
  const untouched = h.newRef('rmatch');
  const untouchedCapture = await h.pay(untouched);
  const calls = h.audits.length;
  const viaCapture = await verified(strip(event({ id: 'SITEREFUND000004', invoice_id: 'SHOP-INVOICE-79', links: [{ rel: 'up', href: `${h.base}/sandbox/paypal/v2/payments/captures/${untouchedCapture}`, method: 'GET' }] }), 'custom_id'));
  assert.ok(viaCapture.ok);
  assert.deepEqual(refundOf(viaCapture.notification).refund, { state: 'succeeded', channelRefundId: 'SITEREFUND000004', channelReference: untouched, amountMinor: 100n, currency: 'USD', rawStatus: 'COMPLETED' });
  assert.deepEqual(h.audits.slice(calls).map((a) => a.operation), ['query_capture']);
  // A capture nobody knows — even one we once asked to refund and PayPal refused: acknowledged and ignored.
  await rejectsWith(h.connector.refundPayment!(refundInput(ref, 1n, { channelTransactionId: 'NOSUCHCAPTURE0002' })), 'INVALID_RESOURCE_ID', false);
  const unknownCapture = await verified(strip(event({ id: 'SITEREFUND000003', invoice_id: 'SHOP-X', links: [{ rel: 'up', href: `${h.base}/sandbox/paypal/v2/payments/captures/NOSUCHCAPTURE0002`, method: 'GET' }] }), 'custom_id'));
  assert.deepEqual(unknownCapture, { ok: true, notification: { eventId: `WH-24-idinvoice_idlinks`, kind: 'ignored', reason: 'refund of a capture not created by Knowpay' } });

  // Mismatches with our records are refused.
  assert.deepEqual(await verified(event({ custom_id: 'KPSOMEOTHERTRADE' })), { ok: false, reason: `refund ${ours.channelRefundId} names trade KPSOMEOTHERTRADE, our refund ${ours.refundReference} is of ${ref}` });
  assert.deepEqual(await verified(event({ id: 'ANOTHERREFUND0001' })), { ok: false, reason: `refund ANOTHERREFUND0001 carries our reference ${ours.refundReference}, which is PayPal refund ${ours.channelRefundId}` });
  assert.deepEqual(await verified(event({ amount: { currency_code: 'USD', value: '1.001' } })), { ok: false, reason: 'PAYMENT.CAPTURE.REFUNDED: unparsable amount' });
  assert.deepEqual(await verified(event({ status: undefined })), { ok: false, reason: 'PAYMENT.CAPTURE.REFUNDED: resource is not a refund' });
  // Statuses: unknown → pending, CANCELLED → failed.
  const odd = await verified(event({ status: 'UNDER_REVIEW' }));
  assert.ok(odd.ok && refundOf(odd.notification).refund.state === 'pending');
  const cancelled = await verified(event({ status: 'CANCELLED' }));
  assert.ok(cancelled.ok && refundOf(cancelled.notification).refund.state === 'failed');
  // Another merchant's refund carries its merchant id, so the service's app-id check refuses it.
  const foreign = await verified(event({ payer: { merchant_id: 'SOMEONEELSE01' } }));
  assert.ok(foreign.ok && foreign.notification.appId === 'SOMEONEELSE01');
});

test('PAYMENT.CAPTURE.REVERSED: PayPal takes the rest back; a refund of the channel\'s, never one of our references', async () => {
  const ref = h.newRef('rrev');
  const captureId = await h.pay(ref);
  await h.connector.refundPayment!(refundInput(ref, 234n, { channelTransactionId: captureId }));
  const reversed = await h.sandboxPost('/reversals/simulate', { channel_reference: ref });
  assert.equal(reversed.status, 200, JSON.stringify(reversed.body));
  assert.deepEqual([reversed.body['kind'], reversed.body['amount'], reversed.body['refund_reference']], ['reversal', 1000, ref]);
  const [event] = await h.waitReceived(refundEvent(ref, 'PAYMENT.CAPTURE.REVERSED'));
  const v = await verify(event!);
  assert.ok(v.ok, !v.ok ? v.reason : '');
  assert.deepEqual(refundOf(v.notification).refund, { state: 'succeeded', channelRefundId: reversed.body['refund_id'], channelReference: ref, amountMinor: 1000n, currency: 'USD', rawStatus: 'COMPLETED' });
  assert.equal((await sandboxOrder(ref))['capture_status'], 'REFUNDED');
  await rejectsWith(h.connector.refundPayment!(refundInput(ref, 1n, { channelTransactionId: captureId })), 'CAPTURE_FULLY_REFUNDED', false);
  const twice = await h.sandboxPost('/reversals/simulate', { channel_reference: ref });
  assert.deepEqual([twice.status, twice.body['error']['code']], [409, 'capture_fully_refunded']);
});

test('refund calls are audited without secrets; a bad refund answer from "PayPal" is refused', async () => {
  const text = JSON.stringify(h.audits.filter((a) => a.operation.includes('refund')), (_k, v) => (typeof v === 'bigint' ? v.toString() : v));
  assert.ok(text.length > 100);
  assert.doesNotMatch(text, /A21AA/);
  assert.ok(!text.includes(h.keys.clientSecret));
  // An answer for another refund reference, or another amount, is not ours.
  const ref = h.newRef('rswap');
  const captureId = await h.pay(ref);
  const swapped = (over: Record<string, unknown>) => JSON.stringify({
    id: 'SWAPPEDREFUND0001', status: 'COMPLETED', amount: { currency_code: 'USD', value: '1.00' }, invoice_id: 'x', custom_id: ref,
    links: [{ rel: 'up', href: `${h.base}/sandbox/paypal/v2/payments/captures/${captureId}`, method: 'GET' }], ...over,
  });
  for (const [mode, over] of [['swapinv', { invoice_id: 'KPSOMEONEELSE' }], ['swapamt', { amount: { currency_code: 'USD', value: '2.00' } }], ['swapcap', { links: [{ rel: 'up', href: 'https://api-m.paypal.com/v2/payments/captures/OTHERCAPTURE00001' }] }]] as const) {
    const input = refundInput(ref, 100n, { channelTransactionId: captureId });
    h.mitm.set(mode, { intercept: (_n, path) => (path.endsWith('/refund') ? { status: 201, body: swapped(Object.assign({ invoice_id: input.refundReference }, over)) } : undefined) });
    await rejectsWith(h.makeConnector({ baseUrl: `${h.base}/mitm/${mode}/sandbox/paypal` }).refundPayment!(input), 'reference_reused', false);
  }
  h.mitm.set('rgarbage', { intercept: (_n, path) => (path.endsWith('/refund') ? { status: 201, body: '{"ok":true}' } : undefined) });
  await rejectsWith(h.makeConnector({ baseUrl: `${h.base}/mitm/rgarbage/sandbox/paypal` }).refundPayment!(refundInput(ref, 100n, { channelTransactionId: captureId })), 'invalid_response', true);
  assert.equal((await sandboxOrder(ref))['refunds'].length, 0);
});

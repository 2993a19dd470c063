/**
 * The PayPal sandbox's refunds over raw HTTP: PayPal's validation and error answers, the refundable
 * remainder (also under concurrency), idempotency per PayPal-Request-Id, the capture's status, the
 * helper routes (/refunds/mode, /refunds/simulate, /reversals/simulate) and refund webhooks.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { eventOf, startHarness, type Harness } from './harness.ts';
import { mintAccessToken } from './sandbox-keys.ts';

let h: Harness;
let api = '';
let token = '';

before(async () => {
  h = await startHarness({ timeScale: 0.001 });
  api = `${h.base}/sandbox/paypal`;
  const res = await fetch(`${api}/v1/oauth2/token`, {
    method: 'POST',
    headers: { authorization: 'Basic ' + Buffer.from(`${h.keys.clientId}:${h.keys.clientSecret}`).toString('base64'), 'content-type': 'application/x-www-form-urlencoded' },
    body: 'grant_type=client_credentials',
  });
  token = ((await res.json()) as { access_token: string }).access_token;
});

after(async () => {
  await h.close();
});

async function call(method: 'GET' | 'POST', path: string, opts: { body?: unknown; raw?: string; headers?: Record<string, string>; bearer?: string | null } = {}) {
  const headers: Record<string, string> = { ...(opts.bearer === null ? {} : { authorization: `Bearer ${opts.bearer ?? token}` }), ...opts.headers };
  const body = opts.raw ?? (opts.body === undefined ? undefined : JSON.stringify(opts.body));
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(`${api}${path}`, { method, headers, ...(body !== undefined ? { body } : {}) });
  const text = await res.text();
  return { status: res.status, body: (text ? JSON.parse(text) : null) as Record<string, any> };
}

const issueOf = (res: { body: Record<string, any> }): string | undefined => res.body['details']?.[0]?.['issue'];

/** A captured order of `value` in `currency` (raw HTTP); answers its reference, order and capture ids. */
async function captured(value = '10.00', currency = 'USD', outcome: 'succeeded' | 'failed' = 'succeeded') {
  const ref = h.newRef('sbr');
  const created = await call('POST', '/v2/checkout/orders', {
    body: { intent: 'CAPTURE', purchase_units: [{ custom_id: ref, invoice_id: ref, amount: { currency_code: currency, value } }], payment_source: { paypal: { experience_context: { return_url: `${h.base}/back` } } } },
  });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  assert.equal((await h.simulate(ref, outcome)).status, 200);
  const cap = await call('POST', `/v2/checkout/orders/${created.body['id']}/capture`, { body: {}, headers: { prefer: 'return=representation' } });
  assert.equal(cap.status, 201);
  return { ref, orderId: created.body['id'] as string, captureId: cap.body['purchase_units'][0]['payments']['captures'][0]['id'] as string };
}

const refund = (captureId: string, body?: unknown, headers: Record<string, string> = {}) =>
  call('POST', `/v2/payments/captures/${captureId}/refund`, { ...(body === undefined ? {} : { body }), headers: { prefer: 'return=representation', ...headers } });

test('refund: PayPal\'s validation, auth and not-found answers; nothing is refunded by a refused request', async () => {
  const { captureId, ref } = await captured();
  const amount = (value: string, currency_code = 'USD') => ({ amount: { currency_code, value } });
  const cases: Array<[string, () => ReturnType<typeof call>, number, string | undefined]> = [
    ['malformed JSON', () => call('POST', `/v2/payments/captures/${captureId}/refund`, { raw: '{"amount":' }), 400, 'MALFORMED_REQUEST_JSON'],
    ['array body', () => refund(captureId, [1]), 400, 'MALFORMED_REQUEST_JSON'],
    ['amount not an object', () => refund(captureId, { amount: '1.00' }), 400, 'INVALID_PARAMETER_SYNTAX'],
    ['no currency', () => refund(captureId, { amount: { value: '1.00' } }), 400, 'MISSING_REQUIRED_PARAMETER'],
    ['no value', () => refund(captureId, { amount: { currency_code: 'USD' } }), 400, 'MISSING_REQUIRED_PARAMETER'],
    ['unknown currency', () => refund(captureId, amount('1.00', 'XXX')), 422, 'CURRENCY_NOT_SUPPORTED'],
    ['value syntax', () => refund(captureId, amount('1,00')), 400, 'INVALID_PARAMETER_SYNTAX'],
    ['three decimals', () => refund(captureId, amount('1.001')), 422, 'DECIMAL_PRECISION'],
    ['zero', () => refund(captureId, amount('0.00')), 422, 'CANNOT_BE_ZERO_OR_NEGATIVE'],
    ['other currency', () => refund(captureId, amount('1.00', 'EUR')), 422, 'REFUND_CAPTURE_CURRENCY_MISMATCH'],
    ['more than captured', () => refund(captureId, amount('10.01')), 422, 'REFUND_AMOUNT_EXCEEDED'],
    ['note too long', () => refund(captureId, { ...amount('1.00'), note_to_payer: 'x'.repeat(256) }), 400, 'INVALID_STRING_LENGTH'],
    ['invoice_id not a string', () => refund(captureId, { ...amount('1.00'), invoice_id: 7 }), 400, 'INVALID_PARAMETER_SYNTAX'],
    ['empty custom_id', () => refund(captureId, { ...amount('1.00'), custom_id: '' }), 400, 'INVALID_STRING_LENGTH'],
    ['request id too long', () => refund(captureId, amount('1.00'), { 'paypal-request-id': 'r'.repeat(109) }), 400, 'INVALID_STRING_LENGTH'],
    ['unknown capture', () => refund('NOSUCHCAPTURE0001', amount('1.00')), 404, 'INVALID_RESOURCE_ID'],
    ['no token', () => call('POST', `/v2/payments/captures/${captureId}/refund`, { body: amount('1.00'), bearer: null }), 401, undefined],
    ['forged token', () => call('POST', `/v2/payments/captures/${captureId}/refund`, { body: amount('1.00'), bearer: mintAccessToken('another-secret', h.keys.clientId, 600) }), 401, undefined],
  ];
  for (const [what, send, status, issue] of cases) {
    const res = await send();
    assert.equal(res.status, status, `${what}: ${JSON.stringify(res.body)}`);
    if (issue) assert.equal(issueOf(res), issue, what);
  }
  const forged = await call('POST', `/v2/payments/captures/${captureId}/refund`, { body: amount('1.00'), bearer: mintAccessToken('another-secret', h.keys.clientId, 600) });
  assert.equal(forged.body['error'], 'invalid_token');
  const view = await (await fetch(`${api}/orders/${ref}`)).json() as Record<string, any>;
  assert.deepEqual([view['capture_status'], view['refunds']], ['COMPLETED', []]);
  // A declined capture cannot be refunded.
  const declined = await captured('5.00', 'USD', 'failed');
  assert.deepEqual(((r) => [r.status, issueOf(r)])(await refund(declined.captureId, amount('1.00'))), [422, 'TRANSACTION_REFUSED']);
});

test('refund: partial refunds to the remainder, an empty body refunds the rest; the capture and the order show it', async () => {
  const { captureId, orderId, ref } = await captured('10.00');
  const first = await refund(captureId, { amount: { currency_code: 'USD', value: '2.50' }, invoice_id: 'INV-1', note_to_payer: 'Sorry' });
  assert.equal(first.status, 201);
  assert.deepEqual({ ...first.body, create_time: undefined, update_time: undefined }, {
    id: first.body['id'], amount: { currency_code: 'USD', value: '2.50' }, invoice_id: 'INV-1', custom_id: ref, note_to_payer: 'Sorry',
    seller_payable_breakdown: {
      gross_amount: { currency_code: 'USD', value: '2.50' }, paypal_fee: { currency_code: 'USD', value: '0.00' },
      net_amount: { currency_code: 'USD', value: '2.50' }, total_refunded_amount: { currency_code: 'USD', value: '2.50' },
    },
    status: 'COMPLETED', payer: { email_address: h.keys.merchantEmail, merchant_id: h.keys.merchantId }, create_time: undefined, update_time: undefined,
    links: [
      { href: `${api}/v2/payments/refunds/${first.body['id']}`, rel: 'self', method: 'GET' },
      { href: `${api}/v2/payments/captures/${captureId}`, rel: 'up', method: 'GET' },
    ],
  });
  const capture = await call('GET', `/v2/payments/captures/${captureId}`);
  assert.deepEqual([capture.status, capture.body['status'], capture.body['custom_id']], [200, 'PARTIALLY_REFUNDED', ref]);
  assert.ok(capture.body['links'].some((l: any) => l.rel === 'refund'));
  // Prefer: return=minimal (PayPal's default) answers id, status and links only.
  const minimal = await call('POST', `/v2/payments/captures/${captureId}/refund`, { body: { amount: { currency_code: 'USD', value: '1.00' } } });
  assert.deepEqual(Object.keys(minimal.body).sort(), ['id', 'links', 'status']);
  // No amount: what is left (10.00 − 2.50 − 1.00).
  const rest = await refund(captureId, {});
  assert.equal(rest.body['amount']['value'], '6.50');
  assert.equal(rest.body['seller_payable_breakdown']['total_refunded_amount']['value'], '10.00');
  const done = await call('GET', `/v2/payments/captures/${captureId}`);
  assert.equal(done.body['status'], 'REFUNDED');
  assert.ok(!done.body['links'].some((l: any) => l.rel === 'refund'), 'nothing left to refund');
  const order = await call('GET', `/v2/checkout/orders/${orderId}`);
  assert.equal(order.body['status'], 'COMPLETED');
  assert.deepEqual(order.body['purchase_units'][0]['payments']['refunds'].map((r: any) => r.amount.value), ['2.50', '1.00', '6.50']);
  assert.deepEqual(issueOf(await refund(captureId, {})), 'CAPTURE_FULLY_REFUNDED');
  assert.deepEqual(issueOf(await refund(captureId, { amount: { currency_code: 'USD', value: '0.01' } })), 'CAPTURE_FULLY_REFUNDED');
  // GET a refund; unknown ids are PayPal's 404.
  const got = await call('GET', `/v2/payments/refunds/${first.body['id']}`);
  assert.deepEqual([got.status, got.body['id'], got.body['status']], [200, first.body['id'], 'COMPLETED']);
  assert.deepEqual(((r) => [r.status, issueOf(r), r.body['details'][0]['field']])(await call('GET', '/v2/payments/refunds/NOSUCHREFUND00001')), [404, 'INVALID_RESOURCE_ID', 'refund_id']);
  assert.equal((await call('GET', '/v2/payments/captures/NOSUCHCAPTURE0001')).status, 404);
  assert.equal((await call('GET', `/v2/payments/refunds/${first.body['id']}`, { bearer: null })).status, 401);
});

test('refund: a PayPal-Request-Id seen before answers that refund (as it is now), even with another body', async () => {
  const { captureId } = await captured('10.00');
  const a = await refund(captureId, { amount: { currency_code: 'USD', value: '3.00' } }, { 'paypal-request-id': 'refund-once' });
  const b = await refund(captureId, { amount: { currency_code: 'USD', value: '4.00' } }, { 'paypal-request-id': 'refund-once' });
  assert.deepEqual([a.status, b.status], [201, 200]);
  assert.equal(b.body['id'], a.body['id']);
  assert.equal(b.body['amount']['value'], '3.00');
  // Without a request id every POST refunds.
  const c = await refund(captureId, { amount: { currency_code: 'USD', value: '3.00' } });
  const d = await refund(captureId, { amount: { currency_code: 'USD', value: '3.00' } });
  assert.notEqual(c.body['id'], d.body['id']);
  assert.equal(issueOf(await refund(captureId, { amount: { currency_code: 'USD', value: '1.01' } })), 'REFUND_AMOUNT_EXCEEDED');
});

test('the remainder holds under concurrency: of 6 simultaneous 3.00 refunds of 10.00, exactly 3 are made', async () => {
  const { captureId, ref } = await captured('10.00');
  const results = await Promise.all(Array.from({ length: 6 }, (_, i) => refund(captureId, { amount: { currency_code: 'USD', value: '3.00' } }, { 'paypal-request-id': `${ref}-c${i}` })));
  assert.deepEqual(results.map((r) => r.status).sort(), [201, 201, 201, 422, 422, 422]);
  assert.ok(results.filter((r) => r.status === 422).every((r) => issueOf(r) === 'REFUND_AMOUNT_EXCEEDED'));
  const view = await (await fetch(`${api}/orders/${ref}`)).json() as Record<string, any>;
  assert.equal(view['refunds'].length, 3);
  assert.equal(view['capture_status'], 'PARTIALLY_REFUNDED');
  // The totals each refund reports are 3, 6 and 9, in some order.
  const totals = results.filter((r) => r.status === 201).map((r) => r.body['seller_payable_breakdown']['total_refunded_amount']['value']).sort();
  assert.deepEqual(totals, ['3.00', '6.00', '9.00']);
});

test('JPY refunds are whole yen', async () => {
  const { captureId } = await captured('1500', 'JPY');
  assert.equal(issueOf(await refund(captureId, { amount: { currency_code: 'JPY', value: '1.5' } })), 'DECIMALS_NOT_SUPPORTED');
  const ok = await refund(captureId, { amount: { currency_code: 'JPY', value: '500' } });
  assert.deepEqual([ok.status, ok.body['amount']['value'], ok.body['seller_payable_breakdown']['paypal_fee']['value']], [201, '500', '0']);
});

test('/refunds/mode, /refunds/simulate, /reversals/simulate: Knowpay-shaped 400/404/409 answers', async () => {
  const { captureId, ref } = await captured('10.00');
  const post = h.sandboxPost;
  const code = (r: { status: number; body: Record<string, any> }) => [r.status, r.body['error']?.['code']];
  assert.deepEqual(code(await post('/refunds/mode', { channel_reference: ref, mode: 'later' })), [400, 'parameter_invalid']);
  assert.deepEqual(code(await post('/refunds/mode', { mode: 'pending' })), [400, 'parameter_missing']);
  assert.deepEqual(code(await post('/refunds/mode', { channel_reference: 'KPNOSUCH', mode: 'pending' })), [404, 'order_not_found']);
  assert.deepEqual(code(await post('/refunds/simulate', { outcome: 'succeeded' })), [400, 'parameter_missing']);
  assert.deepEqual(code(await post('/refunds/simulate', { refund_reference: 'x', outcome: 'maybe' })), [400, 'parameter_invalid']);
  assert.deepEqual(code(await post('/refunds/simulate', { refund_reference: 5, outcome: 'succeeded' })), [400, 'parameter_invalid']);
  assert.deepEqual(code(await post('/refunds/simulate', { refund_reference: 'KPNOSUCH', outcome: 'succeeded' })), [404, 'refund_not_found']);
  assert.deepEqual(code(await post('/refunds/simulate', { channel_refund_id: 'NOSUCHREFUND00001', outcome: 'failed' })), [404, 'refund_not_found']);
  assert.deepEqual(code(await post('/reversals/simulate', { channel_reference: ref, amount: 1.5 })), [400, 'parameter_invalid']);
  assert.deepEqual(code(await post('/reversals/simulate', { channel_reference: 'KPNOSUCH' })), [404, 'order_not_found']);
  assert.deepEqual(code(await post('/reversals/simulate', { channel_reference: ref, amount: 1001 })), [400, 'amount_invalid']);
  const notJson = await fetch(`${api}/refunds/simulate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{' });
  assert.equal(notJson.status, 400);

  assert.equal((await post('/refunds/mode', { channel_reference: ref, mode: 'pending' })).body['refund_mode'], 'pending');
  const pending = await refund(captureId, { amount: { currency_code: 'USD', value: '4.00' }, invoice_id: `${ref}-R1` });
  assert.deepEqual([pending.body['status'], pending.body['status_details']], ['PENDING', { reason: 'ECHECK' }]);
  assert.equal(pending.body['seller_payable_breakdown'], undefined);
  // The id and the reference must name the same refund.
  assert.deepEqual(code(await post('/refunds/simulate', { refund_reference: 'KPOTHER', channel_refund_id: pending.body['id'], outcome: 'succeeded' })), [404, 'refund_not_found']);
  const done = await post('/refunds/simulate', { refund_reference: `${ref}-R1`, channel_refund_id: pending.body['id'], outcome: 'succeeded' });
  assert.deepEqual([done.status, done.body['status'], done.body['amount']], [200, 'COMPLETED', 400]);
  assert.deepEqual(code(await post('/refunds/simulate', { channel_refund_id: pending.body['id'], outcome: 'failed' })), [409, 'refund_already_final']);
  // Back to completed: refunds are synchronous again.
  await post('/refunds/mode', { channel_reference: ref, mode: 'completed' });
  assert.equal((await refund(captureId, { amount: { currency_code: 'USD', value: '1.00' } })).body['status'], 'COMPLETED');
  const reversal = await post('/reversals/simulate', { channel_reference: ref, amount: 100 });
  assert.deepEqual([reversal.status, reversal.body['kind'], reversal.body['status']], [200, 'reversal', 'COMPLETED']);
  const declined = await captured('5.00', 'USD', 'failed');
  assert.deepEqual(code(await post('/reversals/simulate', { channel_reference: declined.ref })), [409, 'capture_not_reversible']);
});

test('refund webhooks: PAYMENT.CAPTURE.REFUNDED when a refund completes, retried on PayPal\'s schedule and signed per attempt; none while pending or when failed', async () => {
  const { captureId, ref } = await captured('10.00');
  // The first delivery of this refund's webhook is refused by the receiver: PayPal tries again.
  let refused = 0;
  h.answer = (_n, raw) => {
    const e = JSON.parse(raw.toString('utf8'));
    if (e.event_type === 'PAYMENT.CAPTURE.REFUNDED' && e.resource.custom_id === ref && refused === 0) {
      refused++;
      return 500;
    }
    return 200;
  };
  try {
    const made = await refund(captureId, { amount: { currency_code: 'USD', value: '2.00' } });
    const deliveries = await h.waitReceived((_r, e) => e['event_type'] === 'PAYMENT.CAPTURE.REFUNDED' && e['resource']['custom_id'] === ref, 2);
    const [first, second] = deliveries;
    assert.equal(eventOf(first!)['id'], eventOf(second!)['id'], 'the event id is stable across attempts');
    assert.notEqual(first!.headers['paypal-transmission-id'], second!.headers['paypal-transmission-id']);
    assert.ok(second!.at - first!.at >= 50, 'the second attempt waits PayPal\'s first retry delay × timeScale');
    assert.equal(eventOf(first!)['resource']['id'], made.body['id']);
    assert.equal(eventOf(first!)['summary'], 'A 2.00 USD capture payment was refunded');
  } finally {
    h.answer = () => 200;
  }
  await h.sandboxPost('/refunds/mode', { channel_reference: ref, mode: 'pending' });
  const pending = await refund(captureId, { amount: { currency_code: 'USD', value: '1.00' }, invoice_id: `${ref}-P` });
  await h.sandboxPost('/refunds/simulate', { refund_reference: `${ref}-P`, outcome: 'failed' });
  await new Promise((r) => setTimeout(r, 150));
  assert.equal(h.received.filter((r) => eventOf(r)['resource']['id'] === pending.body['id']).length, 0);
  const view = await (await fetch(`${api}/orders/${ref}`)).json() as Record<string, any>;
  assert.deepEqual(view['refunds'].map((r: any) => r.status), ['COMPLETED', 'FAILED']);
  assert.equal(view['capture_status'], 'PARTIALLY_REFUNDED');
});

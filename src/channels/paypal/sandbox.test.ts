/**
 * The PayPal sandbox over raw HTTP: PayPal's answers (OAuth, REST auth, validation, capture rules,
 * idempotency), the buyer (simulate, approval page), the certificate, and webhook delivery with
 * PayPal's retry schedule through the shared dispatcher and its faults.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import Fastify from 'fastify';
import { listSandboxNotificationAttempts, listSandboxNotifications, waitForSandboxNotifications } from '../sandbox/dispatcher.ts';
import { paypalModule } from './index.ts';
import { eventOf, freePort, startHarness, type Harness } from './harness.ts';
import { PAYPAL_NOTIFY_SCHEDULE_MS } from './sandbox.ts';
import { mintAccessToken } from './sandbox-keys.ts';

let h: Harness;
let api = '';
let token = '';

before(async () => {
  h = await startHarness({ timeScale: 0.001 });
  api = `${h.base}/sandbox/paypal`;
  token = (await getToken()).body['access_token'];
});

after(async () => {
  await h.close();
});

async function getToken(auth = 'Basic ' + Buffer.from(`${h.keys.clientId}:${h.keys.clientSecret}`).toString('base64'), body = 'grant_type=client_credentials') {
  const res = await fetch(`${api}/v1/oauth2/token`, { method: 'POST', headers: { ...(auth ? { authorization: auth } : {}), 'content-type': 'application/x-www-form-urlencoded' }, body });
  return { status: res.status, body: (await res.json()) as Record<string, any> };
}

async function call(method: 'GET' | 'POST', path: string, opts: { body?: unknown; raw?: string; headers?: Record<string, string>; bearer?: string | null } = {}) {
  const headers: Record<string, string> = { ...(opts.bearer === null ? {} : { authorization: `Bearer ${opts.bearer ?? token}` }), ...opts.headers };
  const body = opts.raw ?? (opts.body === undefined ? undefined : JSON.stringify(opts.body));
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(`${api}${path}`, { method, headers, ...(body !== undefined ? { body } : {}) });
  const text = await res.text();
  return { status: res.status, body: (text ? JSON.parse(text) : null) as Record<string, any>, headers: res.headers };
}

function orderBody(over: Record<string, unknown> = {}, unit: Record<string, unknown> = {}) {
  return {
    intent: 'CAPTURE',
    purchase_units: [{ custom_id: h.newRef('sb'), amount: { currency_code: 'USD', value: '10.00' }, ...unit }],
    payment_source: { paypal: { experience_context: { return_url: `${h.base}/back`, cancel_url: `${h.base}/cancel` } } },
    ...over,
  };
}

function issueOf(res: { body: Record<string, any> }): string | undefined {
  return res.body['details']?.[0]?.['issue'];
}

test('OAuth: client credentials give a 9-hour bearer token; bad credentials are PayPal\'s 401 invalid_client', async () => {
  const ok = await getToken();
  assert.equal(ok.status, 200);
  assert.equal(ok.body['token_type'], 'Bearer');
  assert.equal(ok.body['expires_in'], 32400);
  assert.match(ok.body['access_token'], /^A21AA/);
  const wrongSecret = await getToken('Basic ' + Buffer.from(`${h.keys.clientId}:nope`).toString('base64'));
  assert.deepEqual(wrongSecret, { status: 401, body: { error: 'invalid_client', error_description: 'Client Authentication failed' } });
  assert.equal((await getToken('Basic ' + Buffer.from(`other:${h.keys.clientSecret}`).toString('base64'))).status, 401);
  assert.equal((await getToken('')).status, 401);
  assert.equal((await getToken(`Bearer ${token}`)).status, 401);
  assert.deepEqual(await getToken(undefined, ''), { status: 400, body: { error: 'unsupported_grant_type', error_description: 'Grant Type is NULL' } });
  assert.deepEqual(await getToken(undefined, 'grant_type=password'), { status: 400, body: { error: 'unsupported_grant_type', error_description: 'unsupported grant_type' } });
});

test('REST auth: missing, forged, expired and foreign tokens are refused as PayPal refuses them', async () => {
  const missing = await call('GET', '/v2/checkout/orders/X', { bearer: null });
  assert.equal(missing.status, 401);
  assert.equal(missing.body['name'], 'AUTHENTICATION_FAILURE');
  assert.deepEqual((await call('GET', '/v2/checkout/orders/X', { bearer: token.slice(0, -2) + 'xx' })).body, { error: 'invalid_token', error_description: 'Token signature verification failed' });
  const expired = mintAccessToken(h.keys.tokenSecret, h.keys.clientId, 60, Date.now() - 120_000);
  assert.deepEqual((await call('GET', '/v2/checkout/orders/X', { bearer: expired })).body, { error: 'invalid_token', error_description: 'Access Token not found in cache' });
  const otherApp = mintAccessToken(h.keys.tokenSecret, 'another-client', 60);
  assert.equal((await call('GET', '/v2/checkout/orders/X', { bearer: otherApp })).status, 401);
  const otherSecret = mintAccessToken('not-the-secret', h.keys.clientId, 60);
  assert.equal((await call('GET', '/v2/checkout/orders/X', { bearer: otherSecret })).status, 401);
});

test('create: PayPal\'s validation answers', async () => {
  const cases: Array<[string, { body?: unknown; raw?: string }, number, string]> = [
    ['malformed JSON', { raw: '{"intent":' }, 400, 'MALFORMED_REQUEST_JSON'],
    ['no intent', { body: orderBody({ intent: undefined }) }, 400, 'MISSING_REQUIRED_PARAMETER'],
    ['AUTHORIZE', { body: orderBody({ intent: 'AUTHORIZE' }) }, 400, 'INVALID_PARAMETER_VALUE'],
    ['no purchase units', { body: orderBody({ purchase_units: [] }) }, 400, 'MISSING_REQUIRED_PARAMETER'],
    ['two purchase units', { body: orderBody({ purchase_units: [{ amount: { currency_code: 'USD', value: '1.00' } }, { amount: { currency_code: 'USD', value: '1.00' } }] }) }, 400, 'INVALID_ARRAY_MAX_ITEMS'],
    ['CNY', { body: orderBody({}, { amount: { currency_code: 'CNY', value: '10.00' } }) }, 422, 'CURRENCY_NOT_SUPPORTED'],
    ['JPY decimals', { body: orderBody({}, { amount: { currency_code: 'JPY', value: '500.00' } }) }, 400, 'DECIMALS_NOT_SUPPORTED'],
    ['three decimals', { body: orderBody({}, { amount: { currency_code: 'USD', value: '1.234' } }) }, 400, 'DECIMAL_PRECISION'],
    ['zero', { body: orderBody({}, { amount: { currency_code: 'USD', value: '0.00' } }) }, 422, 'CANNOT_BE_ZERO_OR_NEGATIVE'],
    ['negative', { body: orderBody({}, { amount: { currency_code: 'USD', value: '-1.00' } }) }, 400, 'INVALID_PARAMETER_SYNTAX'],
    ['number value', { body: orderBody({}, { amount: { currency_code: 'USD', value: 10 } }) }, 400, 'MISSING_REQUIRED_PARAMETER'],
    ['custom_id too long', { body: orderBody({}, { custom_id: 'x'.repeat(128) }) }, 400, 'INVALID_STRING_LENGTH'],
    ['bad return_url', { body: orderBody({ payment_source: { paypal: { experience_context: { return_url: 'javascript:alert(1)' } } } }) }, 400, 'INVALID_PARAMETER_SYNTAX'],
  ];
  for (const [name, req, status, issue] of cases) {
    const res = await call('POST', '/v2/checkout/orders', req);
    assert.equal(res.status, status, name);
    assert.equal(issueOf(res), issue, name);
    assert.match(res.body['debug_id'], /^[0-9a-f]{13}$/, name);
    assert.equal(res.body['links'][0]['rel'], 'information_link', name);
  }
  const textPlain = await fetch(`${api}/v2/checkout/orders`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'text/plain' }, body: 'hello' });
  assert.equal(textPlain.status, 415);
  assert.equal(((await textPlain.json()) as { name: string }).name, 'UNSUPPORTED_MEDIA_TYPE');
  const huge = await call('POST', '/v2/checkout/orders', { raw: JSON.stringify(orderBody({ pad: 'x'.repeat(70 * 1024) })) });
  assert.equal(huge.status, 400);
  assert.equal(huge.body['name'], 'INVALID_REQUEST');
  const { rows } = await h.db.pool.query('SELECT count(*)::int AS n FROM sandbox_paypal_orders');
  assert.equal(rows[0].n, 0, 'nothing was created');
});

test('create: the classic flow (CREATED + approve link) and the payment_source flow (PAYER_ACTION_REQUIRED + payer-action); Prefer honoured', async () => {
  const classic = await call('POST', '/v2/checkout/orders', { body: { intent: 'CAPTURE', purchase_units: [{ amount: { currency_code: 'EUR', value: '5.5' } }], application_context: { return_url: `${h.base}/back` } } });
  assert.equal(classic.status, 201);
  assert.deepEqual(Object.keys(classic.body).sort(), ['id', 'links', 'status']);
  assert.equal(classic.body['status'], 'CREATED');
  assert.match(classic.body['id'], /^[0-9A-Z]{17}$/);
  assert.deepEqual(classic.body['links'].map((l: { rel: string }) => l.rel), ['self', 'approve', 'update', 'capture']);
  const full = await call('POST', '/v2/checkout/orders', { body: orderBody(), headers: { prefer: 'return=representation' } });
  assert.equal(full.body['status'], 'PAYER_ACTION_REQUIRED');
  assert.deepEqual(full.body['links'].map((l: { rel: string }) => l.rel), ['self', 'payer-action']);
  assert.deepEqual(full.body['purchase_units'][0]['amount'], { currency_code: 'USD', value: '10.00' });
  assert.equal(full.body['purchase_units'][0]['payee']['merchant_id'], h.keys.merchantId);
  const got = await call('GET', `/v2/checkout/orders/${full.body['id']}`);
  assert.deepEqual(got.body, full.body);
});

test('create is idempotent per PayPal-Request-Id (200 with the same order); without it every POST creates', async () => {
  const body = orderBody();
  const first = await call('POST', '/v2/checkout/orders', { body, headers: { 'paypal-request-id': 'req-1' } });
  const again = await call('POST', '/v2/checkout/orders', { body, headers: { 'paypal-request-id': 'req-1' } });
  assert.deepEqual([first.status, again.status], [201, 200]);
  assert.equal(again.body['id'], first.body['id']);
  const a = await call('POST', '/v2/checkout/orders', { body });
  const b = await call('POST', '/v2/checkout/orders', { body });
  assert.notEqual(a.body['id'], b.body['id']);
  assert.equal((await call('POST', '/v2/checkout/orders', { body, headers: { 'paypal-request-id': 'r'.repeat(109) } })).status, 400);
});

test('capture: only an approved order, once; replays by PayPal-Request-Id; PayPal\'s 404/422 answers otherwise', async () => {
  const ref = h.newRef('cap');
  const created = await call('POST', '/v2/checkout/orders', { body: orderBody({}, { custom_id: ref }) });
  const id = created.body['id'];
  const early = await call('POST', `/v2/checkout/orders/${id}/capture`, { body: {} });
  assert.deepEqual([early.status, issueOf(early)], [422, 'ORDER_NOT_APPROVED']);
  assert.equal((await h.simulate(ref, 'succeeded')).status, 200);
  const captured = await call('POST', `/v2/checkout/orders/${id}/capture`, { headers: { 'paypal-request-id': 'cap-1', prefer: 'return=representation' } });
  assert.equal(captured.status, 201);
  assert.equal(captured.body['status'], 'COMPLETED');
  const capture = captured.body['purchase_units'][0]['payments']['captures'][0];
  assert.equal(capture['status'], 'COMPLETED');
  assert.deepEqual(capture['seller_receivable_breakdown'], { gross_amount: { currency_code: 'USD', value: '10.00' }, paypal_fee: { currency_code: 'USD', value: '0.84' }, net_amount: { currency_code: 'USD', value: '9.16' } });
  assert.equal(captured.body['payer']['payer_id'].length, 13);
  const replay = await call('POST', `/v2/checkout/orders/${id}/capture`, { headers: { 'paypal-request-id': 'cap-1', prefer: 'return=representation' } });
  assert.equal(replay.status, 200);
  assert.equal(replay.body['purchase_units'][0]['payments']['captures'][0]['id'], capture['id']);
  const second = await call('POST', `/v2/checkout/orders/${id}/capture`, { headers: { 'paypal-request-id': 'cap-2' } });
  assert.deepEqual([second.status, issueOf(second)], [422, 'ORDER_ALREADY_CAPTURED']);
  const unknown = await call('POST', '/v2/checkout/orders/NOSUCHORDER000000/capture', { body: {} });
  assert.deepEqual([unknown.status, unknown.body['name'], issueOf(unknown)], [404, 'RESOURCE_NOT_FOUND', 'INVALID_RESOURCE_ID']);
  assert.equal((await call('GET', '/v2/checkout/orders/NOSUCHORDER000000')).status, 404);
  assert.deepEqual(issueOf(await call('POST', `/v2/checkout/orders/${id}/capture`, { raw: '[1,' })), 'MALFORMED_REQUEST_JSON');

  const voidRef = h.newRef('capvoid');
  const toVoid = await call('POST', '/v2/checkout/orders', { body: orderBody({}, { custom_id: voidRef }) });
  await h.simulate(voidRef, 'canceled');
  const voided = await call('POST', `/v2/checkout/orders/${toVoid.body['id']}/capture`, { body: {} });
  assert.deepEqual([voided.status, issueOf(voided)], [422, 'ORDER_COMPLETED_OR_VOIDED']);
});

test('simulate: 404 for an unknown reference, 409 once the buyer has acted, 400 for bad input', async () => {
  const unknown = await h.simulate('KPNOSUCHREF', 'succeeded');
  assert.deepEqual(unknown, { status: 404, body: { error: { type: 'invalid_request_error', code: 'order_not_found', message: 'no PayPal sandbox order with custom_id KPNOSUCHREF', param: 'channel_reference' } } });
  const ref = h.newRef('sim');
  await call('POST', '/v2/checkout/orders', { body: orderBody({}, { custom_id: ref }) });
  assert.equal((await h.simulate(ref, 'maybe')).status, 400);
  const missing = await fetch(`${api}/simulate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"outcome":"succeeded"}' });
  assert.equal(missing.status, 400);
  const notJson = await fetch(`${api}/simulate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{' });
  assert.equal(notJson.status, 400);
  assert.equal((await h.simulate(ref, 'succeeded')).status, 200);
  const twice = await h.simulate(ref, 'canceled');
  assert.deepEqual([twice.status, twice.body['error']['code']], [409, 'order_already_approved']);
  const voidRef = h.newRef('sim');
  await call('POST', '/v2/checkout/orders', { body: orderBody({}, { custom_id: voidRef }) });
  assert.equal((await h.simulate(voidRef, 'canceled')).body['status'], 'VOIDED');
  const final = await h.simulate(voidRef, 'succeeded');
  assert.deepEqual([final.status, final.body['error']['code']], [409, 'order_already_final']);
});

test('the approval page: Pay Now approves and returns the buyer with token and PayerID; Cancel returns without a change', async () => {
  const ref = h.newRef('page');
  const created = await call('POST', '/v2/checkout/orders', { body: orderBody({}, { custom_id: ref, description: 'Course <b>1</b>' }) });
  const id = created.body['id'];
  const html = await (await fetch(`${api}/checkoutnow?token=${id}`)).text();
  assert.match(html, /Course &lt;b&gt;1&lt;\/b&gt;/);
  assert.match(html, /<strong id="amount">10\.00<\/strong> USD/);
  assert.equal((await fetch(`${api}/checkoutnow?token=NOPE`)).status, 404);
  const form = (action: string) => fetch(`${api}/checkoutnow/${action}`, { method: 'POST', redirect: 'manual', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: `token=${id}` });
  const cancel = await form('cancel');
  assert.equal(cancel.status, 302);
  assert.equal(cancel.headers.get('location'), `${h.base}/cancel?token=${id}`);
  assert.equal((await call('GET', `/v2/checkout/orders/${id}`)).body['status'], 'PAYER_ACTION_REQUIRED');
  const approve = await form('approve');
  assert.equal(approve.status, 302);
  const back = new URL(approve.headers.get('location')!);
  assert.equal(`${back.origin}${back.pathname}`, `${h.base}/back`);
  assert.equal(back.searchParams.get('token'), id);
  const order = await call('GET', `/v2/checkout/orders/${id}`);
  assert.equal(order.body['status'], 'APPROVED');
  assert.equal(back.searchParams.get('PayerID'), order.body['payer']['payer_id']);
  await h.waitReceived((_r, e) => e['event_type'] === 'CHECKOUT.ORDER.APPROVED' && e['resource']['id'] === id);
  assert.equal((await form('approve')).status, 409);
});

test('the certificate URL serves the signing certificate, issued by the sandbox root', async () => {
  const res = await fetch(`${api}/v1/notifications/certs/CERT-${h.keys.certId}`);
  assert.equal(res.status, 200);
  const pem = await res.text();
  assert.equal(pem, h.keys.signingCertPem);
  const leaf = new X509Certificate(pem);
  assert.ok(leaf.checkIssued(new X509Certificate(h.keys.caCertPem)) && leaf.verify(new X509Certificate(h.keys.caCertPem).publicKey));
  assert.equal((await fetch(`${api}/v1/notifications/certs/CERT-other`)).status, 404);
});

test('webhooks follow PayPal\'s schedule × timeScale: each attempt signed afresh, the event id stable, 2xx acknowledges', async () => {
  assert.equal(PAYPAL_NOTIFY_SCHEDULE_MS.length, 25);
  const totalH = PAYPAL_NOTIFY_SCHEDULE_MS.reduce((a, b) => a + b, 0) / 3600_000;
  assert.ok(totalH > 72 && totalH < 80, `${totalH} h`);
  const ref = h.newRef('retry');
  await h.connector.createPayment(h.input(ref));
  const seen = new Map<string, number>();
  h.answer = (_n, raw) => {
    const id = String(JSON.parse(raw.toString())['id']);
    const count = (seen.get(id) ?? 0) + 1;
    seen.set(id, count);
    return count < 3 ? 503 : 200;
  };
  try {
    const sim = await h.simulate(ref, 'succeeded');
    const eventId = sim.body['notification']['event_id'];
    const [row] = await waitForSandboxNotifications(h.db.pool, { channel: 'paypal', channelReference: ref, timeoutMs: 5000 });
    assert.equal(row!.status, 'delivered');
    assert.equal(row!.attempts, 3);
    const attempts = await listSandboxNotificationAttempts(h.db.pool, row!.id);
    assert.deepEqual(attempts.map((a) => [a.statusCode, a.acknowledged]), [[503, false], [503, false], [200, true]]);
    const gap1 = attempts[1]!.startedAt.getTime() - attempts[0]!.finishedAt.getTime();
    const gap2 = attempts[2]!.startedAt.getTime() - attempts[1]!.finishedAt.getTime();
    assert.ok(gap1 >= 55 && gap2 >= 295, `gaps ${gap1} ms, ${gap2} ms (1 min and 5 min × 0.001)`);
    const deliveries = h.received.filter((r) => eventOf(r)['id'] === eventId);
    assert.equal(deliveries.length, 3);
    const transmissionIds = new Set(deliveries.map((d) => d.headers['paypal-transmission-id']));
    assert.equal(transmissionIds.size, 3);
    for (const d of deliveries) {
      const v = await h.connector.verifyNotification({ headers: d.headers, rawBody: d.rawBody }, async () => 'USD');
      assert.ok(v.ok && v.notification.eventId === eventId, !v.ok ? v.reason : '');
    }
  } finally {
    h.answer = () => 200;
  }
});

test('faults apply: a dropped webhook never arrives (the query still settles); a duplicated one arrives twice, same event id', async () => {
  const setFaults = (body: object) => fetch(`${h.base}/sandbox/faults`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  try {
    assert.equal((await setFaults({ channel: 'paypal', drop_rate: 1 })).status, 200);
    const dropped = h.newRef('drop');
    await h.connector.createPayment(h.input(dropped));
    await h.simulate(dropped, 'succeeded');
    const rows = await listSandboxNotifications(h.db.pool, { channel: 'paypal', channelReference: dropped });
    assert.deepEqual(rows.map((r) => r.status), ['dropped']);
    assert.equal((await h.connector.queryPayment({ channelReference: dropped, currency: 'USD' })).state, 'succeeded');

    assert.equal((await setFaults({ channel: 'paypal', drop_rate: 0, duplicate_rate: 1 })).status, 200);
    const dup = h.newRef('dup');
    await h.connector.createPayment(h.input(dup));
    const sim = await h.simulate(dup, 'canceled');
    const twice = await h.waitReceived((_r, e) => e['id'] === sim.body['notification']['event_id'], 2);
    assert.equal(twice.length, 2);
    for (const d of twice) assert.ok((await h.connector.verifyNotification({ headers: d.headers, rawBody: d.rawBody }, async () => 'USD')).ok);
  } finally {
    await fetch(`${h.base}/sandbox/faults`, { method: 'DELETE' });
  }
});

test('two service processes sharing the database: same credentials, tokens and orders valid on both', async () => {
  const port2Base = `http://127.0.0.1:${await freePort()}`;
  const instance = await paypalModule.create({ pool: h.db.pool, publicBaseUrl: port2Base, sandboxTimeScale: 0.001, audit: () => {}, env: {} });
  const other = Fastify();
  await instance.mountSandbox!(other);
  await other.listen({ host: '127.0.0.1', port: Number(new URL(port2Base).port) });
  try {
    assert.equal(instance.connector.appId, h.connector.appId);
    const ref = h.newRef('multi');
    const created = await h.connector.createPayment(h.input(ref));
    // A token minted by process 1 is accepted by process 2, which sees process 1's order.
    const res = await fetch(`${port2Base}/sandbox/paypal/v2/checkout/orders/${created.channelTransactionId}`, { headers: { authorization: `Bearer ${token}` } });
    assert.equal(res.status, 200);
    assert.equal(((await res.json()) as { id: string }).id, created.channelTransactionId);
    // Process 2's connector settles process 1's payment (the order reference is in the shared table).
    await h.simulate(ref, 'succeeded');
    assert.equal((await instance.connector.queryPayment({ channelReference: ref, currency: 'USD' })).state, 'succeeded');
  } finally {
    await other.close();
  }
});

/**
 * The connector against the sandbox over real HTTP (127.0.0.1), through the official SDK's
 * `gateway` option: the code that runs here is the code that would run against Alipay.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import Fastify, { type FastifyInstance } from 'fastify';
import formbody from '@fastify/formbody';
import { AlipaySdk } from 'alipay-sdk';
import { freshDatabase, type TestDatabase } from '../../../test/support/db.ts';
import type { ChannelConnector, CreatePaymentInput } from '../types.ts';
import { faultsPlugin } from '../sandbox/faults.ts';
import { listSandboxNotificationAttempts, waitForSandboxNotifications } from '../sandbox/dispatcher.ts';
import { createAlipayConnector, type AlipayAuditEntry } from './connector.ts';
import { alipaySandboxPlugin, generateAlipaySandboxKeys, type AlipaySandboxKeys } from './sandbox.ts';
import { verifyAlipayNotifySignature } from './sign.ts';
import { parseAlipayTime, parseFormBody, parseFormText } from './transformers.ts';
import { rejectsWith } from '../../../test/support/assertions.ts';
import { freePort } from '../../store/embedded.ts';

const APP_ID = '2021000000000001';
const TIME_SCALE = 0.001;

interface Received { name: string; rawBody: Buffer; contentType: string | undefined; at: number }

let db: TestDatabase;
let keys: AlipaySandboxKeys;
let app: FastifyInstance;
let base = '';
let connector: ChannelConnector;
let audits: AlipayAuditEntry[] = [];
const received: Received[] = [];
/** Per receiver name: what to answer to the n-th (1-based) notification. */
const answers = new Map<string, (n: number) => string>();
let refCounter = 0;

function flipChar(s: string, at: number): string {
  return s.slice(0, at) + (s[at] === 'A' ? 'B' : 'A') + s.slice(at + 1);
}

/** A Fastify app as the service would build it: formbody at the root, sandbox + faults, a notify receiver. */
async function buildApp(pool: TestDatabase['pool'], port: number, sandboxKeys: AlipaySandboxKeys, timeScale: number): Promise<FastifyInstance> {
  const a = Fastify();
  await a.register(formbody);
  await a.register(faultsPlugin, { pool });
  await a.register(alipaySandboxPlugin, {
    prefix: '/sandbox/alipay', pool, appId: APP_ID, appPublicKey: sandboxKeys.appPublicKey, alipayPrivateKey: sandboxKeys.alipayPrivateKey,
    publicBaseUrl: `http://127.0.0.1:${port}`, timeScale,
  });
  await a.register(async (r) => {
    r.removeContentTypeParser('application/x-www-form-urlencoded');
    r.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'buffer' }, (_q, body, done) => done(null, body));
    r.post<{ Params: { name: string } }>('/notify/:name', async (req, reply) => {
      const name = req.params.name;
      received.push({ name, rawBody: req.body as Buffer, contentType: req.headers['content-type'], at: Date.now() });
      const n = received.filter((x) => x.name === name).length;
      return reply.type('text/plain').send((answers.get(name) ?? (() => 'success'))(n));
    });
  });
  // A man in the middle that alters the gateway's signed responses.
  await a.register(async (r) => {
    r.removeContentTypeParser('application/x-www-form-urlencoded');
    r.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, (_q, body, done) => done(null, body));
    r.post<{ Params: { mode: string } }>('/tamper/:mode/gateway.do', async (req, reply) => {
      const query = (req.raw.url ?? '').split('?')[1] ?? '';
      const res = await a.inject({ method: 'POST', url: `/sandbox/alipay/gateway.do?${query}`, payload: req.body as string, headers: { 'content-type': req.headers['content-type'] ?? '' } });
      let body = res.body;
      if (req.params.mode === 'content') body = body.replace('"TRADE_SUCCESS"', '"TRADE_CLOSED"').replace('"10000"', '"10000" ');
      if (req.params.mode === 'sign') body = body.replace(/"sign":"([^"]+)"/, (_m, s: string) => `"sign":"${flipChar(s, 30)}"`);
      if (req.params.mode === 'nosign') body = body.replace(/,"sign":"[^"]+"/, '');
      return reply.type('application/json; charset=utf-8').send(body);
    });
  });
  await a.listen({ host: '127.0.0.1', port });
  return a;
}

function makeConnector(overrides: Partial<Parameters<typeof createAlipayConnector>[0]> = {}): ChannelConnector {
  return createAlipayConnector({
    appId: APP_ID, privateKey: keys.appPrivateKey, alipayPublicKey: keys.alipayPublicKey,
    gateway: `${base}/sandbox/alipay/gateway.do`, timeoutMs: 5000, audit: (e) => audits.push(e), ...overrides,
  });
}

before(async () => {
  db = await freshDatabase();
  keys = await generateAlipaySandboxKeys();
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  app = await buildApp(db.pool, port, keys, TIME_SCALE);
  connector = makeConnector();
});

after(async () => {
  await app.close();
  await db.drop();
});

function newRef(tag: string): string {
  return `kp_${tag}_${process.pid}_${++refCounter}`;
}

function input(ref: string, over: Partial<CreatePaymentInput> = {}): CreatePaymentInput {
  return {
    channelReference: ref, paymentId: 'pay_' + ref, orderId: 'ord_' + ref, customerId: 'cus_test', items: [],
    method: 'qr', amountMinor: 1234n, currency: 'CNY', subject: '课程：TypeScript 进阶',
    notifyUrl: `${base}/notify/${ref}`, expiresAt: new Date(Date.now() + 30 * 60_000), ...over,
  };
}

async function simulate(ref: string, outcome: string, target = base) {
  const res = await fetch(`${target}/sandbox/alipay/simulate`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ channel_reference: ref, outcome }),
  });
  return { status: res.status, body: (await res.json()) as Record<string, any> };
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

// ---- Happy paths -----------------------------------------------------------------------------

test('precreate answers a QR code; the trade does not exist for query until the buyer scans', async () => {
  audits = [];
  const ref = newRef('qr');
  const created = await connector.createPayment(input(ref));
  assert.equal(created.action.type, 'qr_code');
  const qr = created.action.type === 'qr_code' ? created.action.qr_code_url : '';
  assert.ok(qr.startsWith(`${base}/sandbox/alipay/qr/`), qr);
  assert.deepEqual(await connector.queryPayment({ channelReference: ref, currency: 'CNY' }), { state: 'not_found', channelReference: ref });

  const scan = await fetch(qr);
  assert.equal(scan.status, 200);
  const html = await scan.text();
  assert.match(html, /12\.34/);
  assert.match(html, /课程：TypeScript 进阶/);
  const pending = await connector.queryPayment({ channelReference: ref, currency: 'CNY' });
  assert.equal(pending.state, 'pending');
  assert.equal(pending.rawStatus, 'WAIT_BUYER_PAY');
  assert.equal(pending.amountMinor, 1234n);
  assert.match(pending.channelTransactionId ?? '', /^\d{28}$/);

  const [pre] = audits;
  assert.equal(pre!.operation, 'create_payment');
  assert.equal(pre!.channelReference, ref);
  assert.deepEqual((pre!.request as any).bizContent.total_amount, '12.34');
  assert.equal((pre!.response as any).code, '10000');
  assert.doesNotMatch(JSON.stringify(audits), /PRIVATE KEY|"sign":"[^[]/);
});

test('simulate succeeded: query says succeeded with the amount; the signed notification verifies', async () => {
  const ref = newRef('paid');
  await connector.createPayment(input(ref, { amountMinor: 9000n }));
  const sim = await simulate(ref, 'succeeded');
  assert.equal(sim.status, 200);
  assert.equal(sim.body['trade_status'], 'TRADE_SUCCESS');
  assert.equal(sim.body['amount'], 9000);
  assert.equal(sim.body['total_amount'], '90.00');
  assert.match(sim.body['trade_no'], /^\d{28}$/);
  assert.ok(sim.body['gmt_payment']);

  const snap = await connector.queryPayment({ channelReference: ref, currency: 'CNY' });
  assert.deepEqual(snap, { state: 'succeeded', channelReference: ref, channelTransactionId: sim.body['trade_no'], amountMinor: 9000n, currency: 'CNY', rawStatus: 'TRADE_SUCCESS' });

  const [note] = await waitReceived(ref, 1);
  assert.match(note!.contentType ?? '', /^application\/x-www-form-urlencoded/);
  const verified = await connector.verifyNotification({ headers: {}, rawBody: note!.rawBody, contentType: note!.contentType }, async () => 'CNY');
  assert.ok(verified.ok, !verified.ok ? verified.reason : '');
  assert.ok(verified.notification.kind === 'payment');
  assert.equal(verified.notification.eventId, sim.body['notification'].notify_id);
  assert.equal(verified.notification.appId, APP_ID);
  assert.deepEqual(verified.notification.trade, { state: 'succeeded', channelReference: ref, channelTransactionId: sim.body['trade_no'], amountMinor: 9000n, currency: 'CNY', rawStatus: 'TRADE_SUCCESS' });

  const form = parseFormBody(note!.rawBody);
  assert.ok(form.ok);
  const p = form.params;
  for (const field of ['notify_time', 'notify_type', 'notify_id', 'app_id', 'charset', 'version', 'sign_type', 'sign', 'trade_no', 'out_trade_no', 'trade_status', 'total_amount', 'receipt_amount', 'buyer_id', 'gmt_create', 'gmt_payment', 'subject', 'seller_id', 'fund_bill_list']) {
    assert.ok(p[field], `notification carries ${field}`);
  }
  assert.equal(p['notify_type'], 'trade_status_sync');
  assert.equal(p['sign_type'], 'RSA2');
  assert.ok(parseAlipayTime(p['notify_time']!), 'notify_time in Alipay format');
  // Signed by the V1 rule, like the published Alipay notification, and the official SDK agrees.
  const sdk = new AlipaySdk({ appId: APP_ID, privateKey: keys.appPrivateKey, keyType: 'PKCS8', alipayPublicKey: keys.alipayPublicKey });
  assert.equal(sdk.checkNotifySignV2({ ...p }), true);
  assert.equal(verifyAlipayNotifySignature({ ...p, total_amount: '0.01' }, keys.alipayPublicKey), false);
  // Tampered on the way: rejected by the connector.
  const tampered = Buffer.from(note!.rawBody.toString('utf8').replace('total_amount=90.00', 'total_amount=0.01'));
  assert.deepEqual(await connector.verifyNotification({ headers: {}, rawBody: tampered }, async () => 'CNY'), { ok: false, reason: 'invalid signature' });
});

test('a receiver answering anything but "success" is retried on Alipay\'s (compressed) schedule, then left alone', async () => {
  const ref = newRef('retry');
  answers.set(ref, (n) => (n === 1 ? 'fail' : n === 2 ? 'SUCCESS' : n === 3 ? 'success\n' : 'success'));
  await connector.createPayment(input(ref));
  const t0 = Date.now();
  assert.equal((await simulate(ref, 'succeeded')).status, 200);
  const got = await waitReceived(ref, 4, 8000);
  const times = [t0, ...got.map((g) => g.at)];
  const gaps = times.slice(1).map((t, i) => t - times[i]!);
  const expected = [0, 240, 600, 600]; // Alipay: at once, 4 min, 10 min, 10 min; × 0.001
  for (const [i, want] of expected.entries()) {
    assert.ok(gaps[i]! >= want - 5 && gaps[i]! < want + 500, `attempt ${i + 1}: gap ${gaps[i]} ms, expected about ${want}`);
  }
  const ids = got.map((g) => (parseFormBody(g.rawBody) as { params: Record<string, string> }).params['notify_id']);
  assert.equal(new Set(ids).size, 1, 'notify_id is stable across retries');
  for (const g of got) assert.ok((await connector.verifyNotification({ headers: {}, rawBody: g.rawBody }, async () => 'CNY')).ok);
  await new Promise((r) => setTimeout(r, 3800)); // the next slot would be +1 h × 0.001 = 3.6 s
  assert.equal(received.filter((r) => r.name === ref).length, 4, 'no attempt after "success"');
  const [row] = await waitForSandboxNotifications(db.pool, { channel: 'alipay', channelReference: ref, timeoutMs: 1000 });
  assert.equal(row!.status, 'delivered');
  assert.equal(row!.attempts, 4);
  const attempts = await listSandboxNotificationAttempts(db.pool, row!.id);
  assert.deepEqual(attempts.map((a) => a.responseBody), ['fail', 'SUCCESS', 'success\n', 'success']);
});

test('close of an unpaid trade answers closed, and the buyer can no longer pay', async () => {
  const qrRef = newRef('close_qr');
  await connector.createPayment(input(qrRef));
  const closedQr = await connector.closePayment({ channelReference: qrRef, currency: 'CNY' });
  assert.equal(closedQr.state, 'closed');
  const sim = await simulate(qrRef, 'succeeded');
  assert.equal(sim.status, 409);
  assert.equal(sim.body['error'].code, 'trade_already_final');

  const pageRef = newRef('close_page');
  const page = await connector.createPayment(input(pageRef, { method: 'page' }));
  assert.equal((await fetch(page.action.type === 'redirect' ? page.action.url : '')).status, 200); // the browser opens the cashier
  const closed = await connector.closePayment({ channelReference: pageRef, currency: 'CNY' });
  assert.equal(closed.state, 'closed');
  assert.match(closed.channelTransactionId ?? '', /^\d{28}$/);
  const after = await connector.queryPayment({ channelReference: pageRef, currency: 'CNY' });
  assert.equal(after.state, 'closed');
  assert.equal(after.rawStatus, 'TRADE_CLOSED');
  // Closing again: Alipay answers ACQ.TRADE_STATUS_ERROR; the connector reports the state it finds.
  assert.equal((await connector.closePayment({ channelReference: pageRef, currency: 'CNY' })).state, 'closed');
});

test('close of a paid trade answers succeeded (paid meanwhile)', async () => {
  const ref = newRef('close_paid');
  await connector.createPayment(input(ref));
  await simulate(ref, 'succeeded');
  const snap = await connector.closePayment({ channelReference: ref, currency: 'CNY' });
  assert.equal(snap.state, 'succeeded');
  assert.equal(snap.amountMinor, 1234n);
});

test('page pay: the browser opens the signed URL, sees the amount, pays, and returns with a signed result', async () => {
  const ref = newRef('page');
  const r = await connector.createPayment(input(ref, { method: 'page', amountMinor: 4999n, returnUrl: `${base}/shop/return?order=1` }));
  const url = r.action.type === 'redirect' ? r.action.url : '';
  assert.ok(url.startsWith(`${base}/sandbox/alipay/gateway.do?`));
  const res = await fetch(url);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /text\/html/);
  const html = await res.text();
  assert.match(html, /id="total_amount">49\.99</);
  const tradeNo = /name="trade_no" value="(\d{28})"/.exec(html)?.[1];
  assert.ok(tradeNo);
  assert.equal((await connector.queryPayment({ channelReference: ref, currency: 'CNY' })).state, 'pending');

  const pay = await fetch(`${base}/sandbox/alipay/cashier/pay`, {
    method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: `trade_no=${tradeNo}`, redirect: 'manual',
  });
  assert.equal(pay.status, 302);
  const back = new URL(pay.headers.get('location') ?? '');
  assert.equal(`${back.origin}${back.pathname}`, `${base}/shop/return`);
  const params = Object.fromEntries(back.searchParams);
  assert.equal(params['order'], '1');
  assert.equal(params['method'], 'alipay.trade.page.pay.return');
  assert.equal(params['total_amount'], '49.99');
  const { order: _o, ...signed } = params;
  assert.equal(verifyAlipayNotifySignature(signed, keys.alipayPublicKey), true);
  assert.equal((await connector.queryPayment({ channelReference: ref, currency: 'CNY' })).state, 'succeeded');
  await waitReceived(ref, 1);
});

test('wap pay opens the cashier in WAIT_BUYER_PAY', async () => {
  const ref = newRef('wap');
  const r = await connector.createPayment(input(ref, { method: 'wap', returnUrl: `${base}/m/return` }));
  const html = await (await fetch(r.action.type === 'redirect' ? r.action.url : '')).text();
  assert.match(html, /12\.34/);
  const snap = await connector.queryPayment({ channelReference: ref, currency: 'CNY' });
  assert.equal(snap.rawStatus, 'WAIT_BUYER_PAY');
});

test('app pay: the app submits the order string, the trade exists; a tampered order string is refused', async () => {
  const ref = newRef('app');
  const r = await connector.createPayment(input(ref, { method: 'app', amountMinor: 600n }));
  const orderString = r.action.type === 'app' ? String(r.action.params['order_string']) : '';
  const tampered = orderString.replace(encodeURIComponent('"total_amount":"6.00"'), encodeURIComponent('"total_amount":"0.01"'));
  assert.notEqual(tampered, orderString);
  const bad = await fetch(`${base}/sandbox/alipay/app`, { method: 'POST', headers: { 'content-type': 'text/plain' }, body: tampered });
  assert.equal(bad.status, 400);
  assert.equal(((await bad.json()) as any).error.code, 'invalid_signature');
  assert.equal((await connector.queryPayment({ channelReference: ref, currency: 'CNY' })).state, 'not_found');

  const ok = await fetch(`${base}/sandbox/alipay/app`, { method: 'POST', headers: { 'content-type': 'text/plain' }, body: orderString });
  assert.equal(ok.status, 200);
  assert.equal(((await ok.json()) as any).trade_status, 'WAIT_BUYER_PAY');
  const snap = await connector.queryPayment({ channelReference: ref, currency: 'CNY' });
  assert.equal(snap.state, 'pending');
  assert.equal(snap.amountMinor, 600n);
  const json = await fetch(`${base}/sandbox/alipay/app`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ order_string: orderString }) });
  assert.equal(json.status, 200, 'opening again is idempotent');
});

test('the same out_trade_no is idempotent; a different amount or a paid trade is refused with Alipay\'s error', async () => {
  const ref = newRef('idem');
  const a = await connector.createPayment(input(ref));
  const b = await connector.createPayment(input(ref));
  assert.deepEqual(b.action, a.action, 'same QR code');
  await rejectsWith(connector.createPayment(input(ref, { amountMinor: 1235n })), 'ACQ.CONTEXT_INCONSISTENT', false);
  await simulate(ref, 'succeeded');
  await rejectsWith(connector.createPayment(input(ref)), 'ACQ.TRADE_HAS_SUCCESS', false);
});

test('time_expire is honoured: no payment after it', async () => {
  const pastRef = newRef('expired');
  await connector.createPayment(input(pastRef, { expiresAt: new Date(Date.now() - 60_000) }));
  const sim = await simulate(pastRef, 'succeeded');
  assert.equal(sim.status, 409);
  assert.equal(sim.body['error'].code, 'trade_expired');
  assert.equal((await connector.queryPayment({ channelReference: pastRef, currency: 'CNY' })).state, 'not_found', 'never scanned');

  const soonRef = newRef('soon');
  const page = await connector.createPayment(input(soonRef, { method: 'page', expiresAt: new Date(Date.now() + 2500) }));
  await fetch(page.action.type === 'redirect' ? page.action.url : '');
  assert.equal((await connector.queryPayment({ channelReference: soonRef, currency: 'CNY' })).state, 'pending');
  await new Promise((r) => setTimeout(r, 2600));
  const closed = await connector.queryPayment({ channelReference: soonRef, currency: 'CNY' });
  assert.equal(closed.state, 'closed');
  assert.equal((await simulate(soonRef, 'succeeded')).body['error'].code, 'trade_expired');

  const pastPage = await connector.createPayment(input(newRef('past_page'), { method: 'page', expiresAt: new Date(Date.now() - 60_000) }));
  assert.match(await (await fetch(pastPage.action.type === 'redirect' ? pastPage.action.url : '')).text(), /ACQ\.TRADE_HAS_CLOSE/);
});

test('simulate canceled closes the trade and notifies TRADE_CLOSED', async () => {
  const ref = newRef('cancel');
  await connector.createPayment(input(ref));
  const sim = await simulate(ref, 'canceled');
  assert.equal(sim.status, 200);
  assert.equal(sim.body['trade_status'], 'TRADE_CLOSED');
  const [note] = await waitReceived(ref, 1);
  const v = await connector.verifyNotification({ headers: {}, rawBody: note!.rawBody }, async () => 'CNY');
  assert.ok(v.ok && v.notification.kind === 'payment');
  assert.equal(v.notification.trade.state, 'closed');
  assert.equal((await connector.queryPayment({ channelReference: ref, currency: 'CNY' })).state, 'closed');
  const failedRef = newRef('failed');
  await connector.createPayment(input(failedRef));
  assert.equal((await simulate(failedRef, 'failed')).body['trade_status'], 'TRADE_CLOSED');
});

// ---- Negative paths --------------------------------------------------------------------------

test('query and close of an unknown trade answer not_found', async () => {
  const ref = newRef('unknown');
  assert.deepEqual(await connector.queryPayment({ channelReference: ref, currency: 'CNY' }), { state: 'not_found', channelReference: ref });
  assert.deepEqual(await connector.closePayment({ channelReference: ref, currency: 'CNY' }), { state: 'not_found', channelReference: ref });
});

test('simulate: unknown trade 404, bad input 400, final trade 409, all in the Knowpay error shape', async () => {
  const unknown = await simulate('no_such_trade', 'succeeded');
  assert.equal(unknown.status, 404);
  assert.equal(unknown.body['error'].type, 'invalid_request_error');
  assert.equal(unknown.body['error'].code, 'trade_not_found');
  assert.equal(typeof unknown.body['error'].message, 'string');
  const ref = newRef('sim');
  await connector.createPayment(input(ref));
  const badOutcome = await simulate(ref, 'refunded');
  assert.equal(badOutcome.status, 400);
  assert.equal(badOutcome.body['error'].param, 'outcome');
  const missing = await fetch(`${base}/sandbox/alipay/simulate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ outcome: 'succeeded' }) });
  assert.equal(missing.status, 400);
  assert.equal(((await missing.json()) as any).error.param, 'channel_reference');
  assert.equal((await simulate(ref, 'succeeded')).status, 200);
  const again = await simulate(ref, 'canceled');
  assert.equal(again.status, 409);
  assert.equal(again.body['error'].code, 'trade_already_final');
  await waitReceived(ref, 1);
});

test('a request signed with the wrong key gets Alipay\'s real 40002 isv.invalid-signature', async () => {
  const wrong = generateKeyPairSync('rsa', { modulusLength: 2048, privateKeyEncoding: { type: 'pkcs1', format: 'pem' }, publicKeyEncoding: { type: 'spki', format: 'pem' } });
  const sdk = new AlipaySdk({ appId: APP_ID, privateKey: wrong.privateKey, alipayPublicKey: keys.alipayPublicKey, gateway: `${base}/sandbox/alipay/gateway.do`, camelcase: false });
  const res = await sdk.exec('alipay.trade.query', { bizContent: { out_trade_no: 'x1' } }, { validateSign: true });
  assert.equal(res.code, '40002');
  assert.equal(res.msg, 'Invalid Arguments');
  assert.equal(res.sub_code, 'isv.invalid-signature');
  assert.match(String(res.sub_msg), /验签出错.*app_id=2021000000000001&amp;biz_content=/);
  await rejectsWith(makeConnector({ privateKey: wrong.privateKey }).queryPayment({ channelReference: 'x1', currency: 'CNY' }), 'isv.invalid-signature', false);
  await rejectsWith(makeConnector({ privateKey: wrong.privateKey }).createPayment(input(newRef('wrongkey'))), 'isv.invalid-signature', false);
});

test('gateway common-parameter errors: app id, missing signature, unknown method, empty parameter', async () => {
  const gateway = `${base}/sandbox/alipay/gateway.do`;
  const otherApp = new AlipaySdk({ appId: '2021999999999999', privateKey: keys.appPrivateKey, keyType: 'PKCS8', alipayPublicKey: keys.alipayPublicKey, gateway, camelcase: false });
  const r1 = await otherApp.exec('alipay.trade.query', { bizContent: { out_trade_no: 'x' } }, { validateSign: true });
  assert.deepEqual([r1.code, r1.sub_code], ['40002', 'isv.invalid-app-id']);

  const post = async (params: Record<string, string>) => {
    const res = await fetch(gateway, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams(params).toString() });
    return (await res.json()) as Record<string, any>;
  };
  const unsigned = await post({ app_id: APP_ID, method: 'alipay.trade.query', charset: 'utf-8', sign_type: 'RSA2', timestamp: '2026-11-22 10:00:00', version: '1.0', biz_content: '{"out_trade_no":"x"}' });
  assert.deepEqual([unsigned['alipay_trade_query_response'].code, unsigned['alipay_trade_query_response'].sub_code], ['40001', 'isv.missing-signature']);
  assert.ok(unsigned['sign'], 'errors are signed too');
  const noMethod = await post({ app_id: APP_ID });
  assert.equal(noMethod['error_response'].sub_code, 'isv.missing-method');
  const sdk = new AlipaySdk({ appId: APP_ID, privateKey: keys.appPrivateKey, keyType: 'PKCS8', alipayPublicKey: keys.alipayPublicKey, gateway, camelcase: false });
  const unknown = await sdk.exec('alipay.trade.refund.nothing', { bizContent: { out_trade_no: 'x' } });
  assert.equal(unknown.sub_code, 'isv.invalid-method');
  // The SDK signs an empty parameter as "k="; Alipay drops empty values from the string it checks.
  const empty = await sdk.exec('alipay.trade.query', { bizContent: { out_trade_no: 'x' }, return_url: '' }, { validateSign: true });
  assert.deepEqual([empty.code, empty.sub_code], ['40002', 'isv.invalid-signature']);
  const fine = await sdk.exec('alipay.trade.query', { bizContent: { out_trade_no: 'x' } }, { validateSign: true });
  assert.deepEqual([fine.code, fine.sub_code], ['40004', 'ACQ.TRADE_NOT_EXIST']);
});

test('a tampered or unsigned response makes the connector raise', async () => {
  const ref = newRef('mitm');
  await connector.createPayment(input(ref));
  await simulate(ref, 'succeeded');
  for (const mode of ['content', 'sign', 'nosign']) {
    const c = makeConnector({ gateway: `${base}/tamper/${mode}/gateway.do` });
    await rejectsWith(c.queryPayment({ channelReference: ref, currency: 'CNY' }), 'invalid_response_signature', false);
    await rejectsWith(c.createPayment(input(newRef('mitm_pre'))), 'invalid_response_signature', false);
  }
  const passthrough = makeConnector({ gateway: `${base}/tamper/none/gateway.do` });
  assert.equal((await passthrough.queryPayment({ channelReference: ref, currency: 'CNY' })).state, 'succeeded', 'the proxy itself is transparent');
  // The genuine sandbox answer, checked against another "Alipay" key, fails too.
  const otherAlipay = generateKeyPairSync('rsa', { modulusLength: 2048, publicKeyEncoding: { type: 'spki', format: 'pem' }, privateKeyEncoding: { type: 'pkcs8', format: 'pem' } });
  await rejectsWith(makeConnector({ alipayPublicKey: otherAlipay.publicKey }).queryPayment({ channelReference: ref, currency: 'CNY' }), 'invalid_response_signature', false);
});

test('a tampered page-pay URL is refused by the cashier and creates nothing', async () => {
  const ref = newRef('page_tamper');
  const r = await connector.createPayment(input(ref, { method: 'page' }));
  const url = new URL(r.action.type === 'redirect' ? r.action.url : '');
  const biz = JSON.parse(url.searchParams.get('biz_content')!);
  url.searchParams.set('biz_content', JSON.stringify({ ...biz, total_amount: '0.01' }));
  const html = await (await fetch(url)).text();
  assert.match(html, /isv\.invalid-signature/);
  assert.equal((await connector.queryPayment({ channelReference: ref, currency: 'CNY' })).state, 'not_found');
});

// ---- Faults and several processes ---------------------------------------------------------------

async function faults(body: unknown, method = 'POST') {
  const res = await fetch(`${base}/sandbox/faults`, { method, ...(method === 'POST' ? { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) } : {}) });
  return { status: res.status, body: (await res.json()) as Record<string, any> };
}

test('faults: drop loses the notification entirely; duplicate delivers it twice; bad input is a 400', async () => {
  assert.equal((await faults({ channel: 'alipay', drop_rate: 2 })).status, 400);
  assert.equal((await faults({ channel: 'alipay', drop_rate: 2 })).body['error'].param, 'drop_rate');
  assert.equal((await faults({ duplicate_rate: -1 })).status, 400);
  assert.equal((await faults({ reorder: 1 })).status, 400);

  assert.equal((await faults({ channel: 'alipay', drop_rate: 1 })).status, 200);
  const dropped = newRef('drop');
  await connector.createPayment(input(dropped));
  assert.equal((await simulate(dropped, 'succeeded')).status, 200);
  const [row] = await waitForSandboxNotifications(db.pool, { channel: 'alipay', channelReference: dropped, timeoutMs: 2000 });
  assert.equal(row!.status, 'dropped');
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(received.filter((r) => r.name === dropped).length, 0);
  assert.equal((await connector.queryPayment({ channelReference: dropped, currency: 'CNY' })).state, 'succeeded', 'the query still settles it');

  assert.equal((await faults({ channel: 'alipay', drop_rate: 0, duplicate_rate: 1, delay_ms: 200 })).status, 200);
  const dup = newRef('dup');
  await connector.createPayment(input(dup));
  const t0 = Date.now();
  await simulate(dup, 'succeeded');
  const got = await waitReceived(dup, 2);
  assert.ok(got[0]!.at - t0 >= 195, 'delay_ms applied');
  const ids = got.map((g) => (parseFormText(g.rawBody.toString('utf8')) as { params: Record<string, string> }).params['notify_id']);
  assert.equal(ids[0], ids[1], 'the duplicate is the same notification');
  for (const g of got) assert.ok((await connector.verifyNotification({ headers: {}, rawBody: g.rawBody }, async () => 'CNY')).ok);

  assert.equal((await faults(null, 'DELETE')).status, 200);
  const clean = newRef('clean');
  await connector.createPayment(input(clean));
  await simulate(clean, 'succeeded');
  await waitReceived(clean, 1);
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(received.filter((r) => r.name === clean).length, 1);
});

test('two service processes sharing one database see the same trades and deliver each notification once', async () => {
  const port = await freePort();
  const other = await buildApp(db.pool, port, keys, TIME_SCALE);
  try {
    const otherConnector = makeConnector({ gateway: `http://127.0.0.1:${port}/sandbox/alipay/gateway.do` });
    const refs = Array.from({ length: 6 }, () => newRef('multi'));
    for (const ref of refs) await connector.createPayment(input(ref));
    for (const [i, ref] of refs.entries()) {
      assert.equal((await simulate(ref, 'succeeded', i % 2 ? base : `http://127.0.0.1:${port}`)).status, 200);
    }
    for (const ref of refs) assert.equal((await otherConnector.queryPayment({ channelReference: ref, currency: 'CNY' })).state, 'succeeded');
    for (const ref of refs) await waitReceived(ref, 1);
    await new Promise((r) => setTimeout(r, 400));
    for (const ref of refs) assert.equal(received.filter((r) => r.name === ref).length, 1, `${ref} delivered once`);
  } finally {
    await other.close();
  }
});

test('attempts are bounded: a receiver that never acknowledges gets exactly 8 notifications', async () => {
  const isolated = await freshDatabase();
  const port = await freePort();
  const fast = await buildApp(isolated.pool, port, keys, 0.00002); // the ~25 h schedule in ~1.8 s
  try {
    const c = makeConnector({ gateway: `http://127.0.0.1:${port}/sandbox/alipay/gateway.do` });
    const ref = newRef('never');
    answers.set(ref, () => 'fail');
    await c.createPayment(input(ref, { notifyUrl: `http://127.0.0.1:${port}/notify/${ref}` }));
    assert.equal((await simulate(ref, 'succeeded', `http://127.0.0.1:${port}`)).status, 200);
    const [row] = await waitForSandboxNotifications(isolated.pool, { channel: 'alipay', channelReference: ref, timeoutMs: 15000 });
    assert.equal(row!.status, 'failed');
    assert.equal(row!.attempts, 8);
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(received.filter((r) => r.name === ref).length, 8);
  } finally {
    await fast.close();
    await isolated.drop();
  }
});

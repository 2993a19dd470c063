/**
 * Refunds over real HTTP: the connector (official SDK, response signatures checked) against the
 * sandbox's alipay.trade.refund / alipay.trade.fastpay.refund.query, refunds in PostgreSQL, and
 * the refund notifications the sandbox signs and sends.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { generateKeyPairSync } from 'node:crypto';
import Fastify, { type FastifyInstance } from 'fastify';
import formbody from '@fastify/formbody';
import { AlipaySdk } from 'alipay-sdk';
import { freshDatabase, type TestDatabase } from '../../../test/support/db.ts';
import { ChannelError, type ChannelConnector, type RefundRequest } from '../types.ts';
import { waitForSandboxNotifications } from '../sandbox/dispatcher.ts';
import { createAlipayConnector, type AlipayAuditEntry } from './connector.ts';
import { alipaySandboxPlugin, generateAlipaySandboxKeys, type AlipaySandboxKeys } from './sandbox.ts';
import { signAlipayNotification } from './sign.ts';
import { parseFormBody } from './transformers.ts';
import { rejectsWith } from '../../../test/support/assertions.ts';

const APP_ID = '2021000000000001';

interface Received { name: string; rawBody: Buffer; contentType: string | undefined }

let db: TestDatabase;
let keys: AlipaySandboxKeys;
let app: FastifyInstance;
let base = '';
let connector: ChannelConnector;
let audits: AlipayAuditEntry[] = [];
const received: Received[] = [];
let counter = 0;

before(async () => {
  db = await freshDatabase();
  keys = await generateAlipaySandboxKeys();
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  base = `http://127.0.0.1:${port}`;
  app = Fastify();
  await app.register(formbody);
  await app.register(alipaySandboxPlugin, {
    prefix: '/sandbox/alipay', pool: db.pool, appId: APP_ID, appPublicKey: keys.appPublicKey, alipayPrivateKey: keys.alipayPrivateKey,
    publicBaseUrl: base, timeScale: 0.001,
  });
  await app.register(async (r) => {
    r.removeContentTypeParser('application/x-www-form-urlencoded');
    r.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'buffer' }, (_q, body, done) => done(null, body));
    r.post<{ Params: { name: string } }>('/notify/:name', async (req, reply) => {
      received.push({ name: req.params.name, rawBody: req.body as Buffer, contentType: req.headers['content-type'] });
      return reply.type('text/plain').send('success');
    });
  });
  // A man in the middle that breaks the signature of the gateway's answers.
  await app.register(async (r) => {
    r.removeContentTypeParser('application/x-www-form-urlencoded');
    r.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, (_q, body, done) => done(null, body));
    r.post('/tamper/gateway.do', async (req, reply) => {
      const query = (req.raw.url ?? '').split('?')[1] ?? '';
      const res = await app.inject({ method: 'POST', url: `/sandbox/alipay/gateway.do?${query}`, payload: req.body as string, headers: { 'content-type': req.headers['content-type'] ?? '' } });
      return reply.type('application/json; charset=utf-8').send(res.body.replace('"fund_change":"Y"', '"fund_change":"N"'));
    });
  });
  await app.listen({ host: '127.0.0.1', port });
  connector = makeConnector();
});

after(async () => {
  await app.close();
  await db.drop();
});

function makeConnector(gateway = `${base}/sandbox/alipay/gateway.do`): ChannelConnector {
  return createAlipayConnector({
    appId: APP_ID, privateKey: keys.appPrivateKey, alipayPublicKey: keys.alipayPublicKey, gateway, timeoutMs: 5000, audit: (e) => audits.push(e),
  });
}

const newRef = (tag: string) => `kp_${tag}_${process.pid}_${++counter}`;
const newRefundRef = () => `KPR${process.pid}x${++counter}`;

/** A paid trade of `amountMinor` fen whose notifications go to receiver `ref`. */
async function paidTrade(amountMinor: bigint, tag = 'rf'): Promise<string> {
  const ref = newRef(tag);
  await connector.createPayment({
    channelReference: ref, paymentId: 'pay_' + ref, orderId: 'ord_' + ref, customerId: 'cus_test', items: [], method: 'qr',
    amountMinor, currency: 'CNY', subject: '退款测试', notifyUrl: `${base}/notify/${ref}`, expiresAt: new Date(Date.now() + 30 * 60_000),
  });
  const res = await post('/sandbox/alipay/simulate', { channel_reference: ref, outcome: 'succeeded' });
  assert.equal(res.status, 200);
  await waitReceived(ref, 1); // the payment notification
  return ref;
}

function refundInput(ref: string, amountMinor: bigint, refundReference = newRefundRef(), over: Partial<RefundRequest> = {}): RefundRequest {
  return {
    channelReference: ref, refundReference, amountMinor, paymentAmountMinor: 0n, currency: 'CNY', reason: '用户申请退款',
    notifyUrl: `${base}/v1/notify/alipay`, ...over,
  };
}

async function post(path: string, body: unknown) {
  const res = await fetch(`${base}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: res.status, body: (await res.json()) as Record<string, any> };
}

async function sandboxTrade(ref: string) {
  return (await (await fetch(`${base}/sandbox/alipay/trades/${ref}`)).json()) as Record<string, any>;
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

const paramsOf = (r: Received) => (parseFormBody(r.rawBody) as { ok: true; params: Record<string, string> }).params;
const cny = async () => 'CNY';

// ---- Happy paths -------------------------------------------------------------------------------

test('full refund: succeeded at once, the trade becomes TRADE_CLOSED, the refund notification verifies and translates', async () => {
  const ref = await paidTrade(9000n, 'full');
  audits = [];
  const refundReference = newRefundRef();
  const snap = await connector.refundPayment!(refundInput(ref, 9000n, refundReference));
  assert.deepEqual(snap, { state: 'succeeded', refundReference, channelReference: ref, amountMinor: 9000n, currency: 'CNY', rawStatus: 'fund_change=Y' });

  const trade = await connector.queryPayment({ channelReference: ref, currency: 'CNY' });
  assert.equal(trade.rawStatus, 'TRADE_CLOSED');
  assert.deepEqual(await connector.queryRefund!({ channelReference: ref, refundReference, currency: 'CNY' }), {
    state: 'succeeded', refundReference, channelReference: ref, amountMinor: 9000n, currency: 'CNY', rawStatus: 'REFUND_SUCCESS',
  });

  const [, note] = await waitReceived(ref, 2);
  const p = paramsOf(note!);
  assert.equal(p['notify_type'], 'trade_status_sync');
  assert.equal(p['trade_status'], 'TRADE_CLOSED');
  assert.equal(p['refund_fee'], '90.00');
  assert.equal(p['out_biz_no'], refundReference);
  assert.match(p['gmt_refund'] ?? '', /^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3}$/);
  assert.ok(p['gmt_close'] && p['gmt_payment'] && p['receipt_amount'], 'a refunded trade still reports its payment');
  const sdk = new AlipaySdk({ appId: APP_ID, privateKey: keys.appPrivateKey, keyType: 'PKCS8', alipayPublicKey: keys.alipayPublicKey });
  assert.equal(sdk.checkNotifySignV2({ ...p }), true, 'the official SDK verifies it');
  const verified = await connector.verifyNotification({ headers: {}, rawBody: note!.rawBody, contentType: note!.contentType }, cny);
  assert.ok(verified.ok, !verified.ok ? verified.reason : '');
  assert.deepEqual(verified.notification, {
    eventId: p['notify_id'], kind: 'refund', appId: APP_ID,
    refund: { state: 'succeeded', channelReference: ref, refundReference, currency: 'CNY', rawStatus: 'TRADE_CLOSED' },
  });

  assert.deepEqual(audits.map((a) => a.operation), ['refund_payment', 'query_payment', 'query_refund']);
  const [call] = audits;
  assert.equal(call!.channelReference, ref);
  assert.deepEqual((call!.request as any).bizContent, { out_trade_no: ref, refund_amount: '90.00', out_request_no: refundReference, refund_reason: '用户申请退款' });
  assert.equal((call!.response as any).fund_change, 'Y');
  assert.doesNotMatch(JSON.stringify(audits), /PRIVATE KEY|"sign":"[^[]/);
});

test('several partial refunds: the trade stays TRADE_SUCCESS until the last fen, each notification carries the refunded total', async () => {
  const ref = await paidTrade(10000n, 'partial');
  const r1 = await connector.refundPayment!(refundInput(ref, 3000n));
  assert.equal(r1.state, 'succeeded');
  assert.equal((await connector.queryPayment({ channelReference: ref, currency: 'CNY' })).rawStatus, 'TRADE_SUCCESS');
  const r2 = await connector.refundPayment!(refundInput(ref, 5000n));
  assert.equal(r2.state, 'succeeded');
  assert.equal(r2.amountMinor, 5000n);
  assert.equal((await connector.queryPayment({ channelReference: ref, currency: 'CNY' })).state, 'succeeded', 'partially refunded is still paid');
  const r3 = await connector.refundPayment!(refundInput(ref, 2000n));
  assert.equal(r3.state, 'succeeded');
  assert.equal((await connector.queryPayment({ channelReference: ref, currency: 'CNY' })).rawStatus, 'TRADE_CLOSED');

  // Deliveries may overtake each other: order them by the refunded total they carry.
  const notes = (await waitReceived(ref, 4)).slice(1).map(paramsOf).sort((a, b) => Number(a['refund_fee']) - Number(b['refund_fee']));
  assert.deepEqual(notes.map((n) => [n['trade_status'], n['refund_fee'], n['out_biz_no']]), [
    ['TRADE_SUCCESS', '30.00', r1.refundReference], ['TRADE_SUCCESS', '80.00', r2.refundReference], ['TRADE_CLOSED', '100.00', r3.refundReference],
  ]);
  assert.equal(new Set(notes.map((n) => n['notify_id'])).size, 3, 'one notification per refund');
  for (const [i, r] of [r1, r2, r3].entries()) {
    assert.deepEqual(await connector.queryRefund!({ channelReference: ref, refundReference: r.refundReference!, currency: 'CNY' }), {
      state: 'succeeded', refundReference: r.refundReference, channelReference: ref, amountMinor: [3000n, 5000n, 2000n][i], currency: 'CNY', rawStatus: 'REFUND_SUCCESS',
    });
  }
  const view = await sandboxTrade(ref);
  assert.deepEqual(view['refunds'].map((r: any) => [r.out_request_no, r.amount, r.status]), [
    [r1.refundReference, 3000, 'REFUND_SUCCESS'], [r2.refundReference, 5000, 'REFUND_SUCCESS'], [r3.refundReference, 2000, 'REFUND_SUCCESS'],
  ]);
});

test('the same refundReference twice refunds once: the replay answers succeeded (confirmed by the refund query)', async () => {
  const ref = await paidTrade(5000n, 'replay');
  audits = [];
  const refundReference = newRefundRef();
  const first = await connector.refundPayment!(refundInput(ref, 1000n, refundReference));
  const again = await connector.refundPayment!(refundInput(ref, 1000n, refundReference));
  assert.equal(first.state, 'succeeded');
  assert.deepEqual(again, { state: 'succeeded', refundReference, channelReference: ref, amountMinor: 1000n, currency: 'CNY', rawStatus: 'REFUND_SUCCESS' });
  assert.deepEqual(audits.map((a) => [a.operation, (a.response as any).fund_change ?? (a.response as any).refund_status]), [
    ['refund_payment', 'Y'], ['refund_payment', 'N'], ['refund_payment_confirm', 'REFUND_SUCCESS'],
  ]);
  assert.equal((audits[1]!.response as any).refund_fee, '10.00', 'nothing more was refunded');

  // Concurrent replays of one new reference: one refund.
  const concurrentRef = newRefundRef();
  const all = await Promise.all(Array.from({ length: 5 }, () => connector.refundPayment!(refundInput(ref, 700n, concurrentRef))));
  assert.ok(all.every((s) => s.state === 'succeeded' && s.amountMinor === 700n));
  const view = await sandboxTrade(ref);
  assert.deepEqual(view['refunds'].map((r: any) => [r.out_request_no, r.amount, r.executions]), [[refundReference, 1000, 1], [concurrentRef, 700, 1]]);
  await waitReceived(ref, 3);
  await new Promise((r) => setTimeout(r, 300)); // room for any (wrong) extra notification
  const notes = received.filter((r) => r.name === ref).slice(1).map(paramsOf);
  assert.deepEqual(notes.map((n) => n['out_biz_no']).sort(), [refundReference, concurrentRef].sort(), 'one notification per refund, none for replays');
});

// ---- Refusals ----------------------------------------------------------------------------------

test('more than the remainder is Alipay\'s refusal: refund_exceeds_remaining, not retryable, nothing refunded', async () => {
  const ref = await paidTrade(10000n, 'over');
  await rejectsWith(connector.refundPayment!(refundInput(ref, 10001n)), 'refund_exceeds_remaining', false, /ACQ\.REFUND_AMT_NOT_EQUAL_TOTAL/);
  assert.equal((await connector.refundPayment!(refundInput(ref, 6000n))).state, 'succeeded');
  const refused = newRefundRef();
  await rejectsWith(connector.refundPayment!(refundInput(ref, 4001n, refused)), 'refund_exceeds_remaining', false, /ACQ\.REASON_TRADE_REFUND_FEE_ERR/);
  assert.deepEqual(await connector.queryRefund!({ channelReference: ref, refundReference: refused, currency: 'CNY' }), { state: 'pending', refundReference: refused, channelReference: ref },
    'a refused refund is unknown to Alipay: no amount, no status');
  assert.equal((await connector.queryPayment({ channelReference: ref, currency: 'CNY' })).rawStatus, 'TRADE_SUCCESS');
  // Exactly the remainder is fine; after it the trade is closed and refuses any more.
  assert.equal((await connector.refundPayment!(refundInput(ref, 4000n))).state, 'succeeded');
  await rejectsWith(connector.refundPayment!(refundInput(ref, 1n)), 'ACQ.TRADE_HAS_CLOSE', false);
  assert.deepEqual((await sandboxTrade(ref))['refunds'].map((r: any) => r.amount), [6000, 4000]);
});

test('concurrent refunds that together exceed the total: exactly those that fit succeed', async () => {
  const ref = await paidTrade(10000n, 'race');
  const results = await Promise.allSettled(Array.from({ length: 5 }, () => connector.refundPayment!(refundInput(ref, 3000n))));
  const ok = results.filter((r) => r.status === 'fulfilled');
  const refused = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
  assert.equal(ok.length, 3);
  assert.equal(refused.length, 2);
  for (const r of refused) assert.equal((r.reason as ChannelError).code, 'refund_exceeds_remaining');
  const view = await sandboxTrade(ref);
  assert.equal(view['refunds'].reduce((s: number, r: any) => s + r.amount, 0), 9000);
  assert.equal(view['trade_status'], 'TRADE_SUCCESS');
});

test('a replay with another amount, an unpaid, closed or unknown trade: Alipay\'s own refusals', async () => {
  const ref = await paidTrade(5000n, 'refuse');
  const refundReference = newRefundRef();
  await connector.refundPayment!(refundInput(ref, 1000n, refundReference));
  await rejectsWith(connector.refundPayment!(refundInput(ref, 1500n, refundReference)), 'ACQ.DISCORDANT_REPEAT_REQUEST', false);

  const unpaid = newRef('unpaid');
  const page = await connector.createPayment({
    channelReference: unpaid, paymentId: 'p', orderId: 'o', customerId: 'c', items: [], method: 'page', amountMinor: 100n, currency: 'CNY',
    subject: 's', notifyUrl: `${base}/notify/${unpaid}`, expiresAt: new Date(Date.now() + 60_000),
  });
  await fetch(page.action.type === 'redirect' ? page.action.url : ''); // the buyer opens the cashier: WAIT_BUYER_PAY
  await rejectsWith(connector.refundPayment!(refundInput(unpaid, 100n)), 'ACQ.TRADE_STATUS_ERROR', false);
  await connector.closePayment({ channelReference: unpaid, currency: 'CNY' });
  await rejectsWith(connector.refundPayment!(refundInput(unpaid, 100n)), 'ACQ.TRADE_HAS_CLOSE', false);

  const unknown = newRef('nosuch');
  await rejectsWith(connector.refundPayment!(refundInput(unknown, 100n)), 'ACQ.TRADE_NOT_EXIST', false);
  await rejectsWith(connector.queryRefund!({ channelReference: unknown, refundReference: 'KPX1', currency: 'CNY' }), 'ACQ.TRADE_NOT_EXIST', false);
  // Refused before any call.
  audits = [];
  await rejectsWith(connector.refundPayment!(refundInput(ref, 0n)), 'amount_invalid', false);
  await rejectsWith(connector.refundPayment!(refundInput(ref, 100n, 'bad ref')), 'refund_reference_invalid', false);
  await rejectsWith(connector.refundPayment!(refundInput(ref, 100n, undefined, { currency: 'USD' })), 'currency_not_supported', false);
  await rejectsWith(connector.queryRefund!({ channelReference: ref, refundReference: 'x'.repeat(65), currency: 'CNY' }), 'refund_reference_invalid', false);
  assert.equal(audits.length, 0);
});

test('gateway checks apply to refunds: wrong key refused, raw requests validated', async () => {
  const wrong = generateKeyPairSync('rsa', { modulusLength: 2048, privateKeyEncoding: { type: 'pkcs1', format: 'pem' }, publicKeyEncoding: { type: 'spki', format: 'pem' } });
  const ref = await paidTrade(1000n, 'gw');
  const badKey = createAlipayConnector({ appId: APP_ID, privateKey: wrong.privateKey, alipayPublicKey: keys.alipayPublicKey, gateway: `${base}/sandbox/alipay/gateway.do` });
  await rejectsWith(badKey.refundPayment!(refundInput(ref, 100n)), 'isv.invalid-signature', false);
  assert.deepEqual((await sandboxTrade(ref))['refunds'], [], 'nothing refunded');

  const sdk = new AlipaySdk({ appId: APP_ID, privateKey: keys.appPrivateKey, keyType: 'PKCS8', alipayPublicKey: keys.alipayPublicKey, gateway: `${base}/sandbox/alipay/gateway.do`, camelcase: false });
  const exec = (method: string, bizContent: Record<string, unknown>) => sdk.exec(method, { bizContent }, { validateSign: true });
  for (const bad of [{ out_trade_no: ref, refund_amount: '1.001', out_request_no: 'a' }, { out_trade_no: ref, refund_amount: '-1', out_request_no: 'a' },
    { refund_amount: '1.00', out_request_no: 'a' }, { out_trade_no: ref, refund_amount: '1.00', out_request_no: 'x'.repeat(65) }]) {
    const res = await exec('alipay.trade.refund', bad);
    assert.deepEqual([res.code, res.sub_code], ['40004', 'ACQ.INVALID_PARAMETER'], JSON.stringify(bad));
  }
  const partialWithoutRequestNo = await exec('alipay.trade.refund', { out_trade_no: ref, refund_amount: '1.00' });
  assert.equal(partialWithoutRequestNo.sub_code, 'ACQ.REFUND_AMT_NOT_EQUAL_TOTAL', 'a partial refund needs out_request_no');
  const noRequestNo = await exec('alipay.trade.fastpay.refund.query', { out_trade_no: ref });
  assert.equal(noRequestNo.sub_code, 'ACQ.INVALID_PARAMETER');
  // A full refund without out_request_no: Alipay uses the out_trade_no, and the query finds it by it.
  const full = await exec('alipay.trade.refund', { out_trade_no: ref, refund_amount: '10.00' });
  assert.deepEqual([full.code, full.fund_change, full.refund_fee], ['10000', 'Y', '10.00']);
  const byTradeNo = await exec('alipay.trade.fastpay.refund.query', { out_trade_no: ref, out_request_no: ref, query_options: ['gmt_refund_pay'] });
  assert.equal(byTradeNo.refund_status, 'REFUND_SUCCESS');
  assert.match(String(byTradeNo.gmt_refund_pay), /^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$/);
});

test('a refund answer whose signature does not verify is an unknown outcome (retryable), never a failure', async () => {
  const ref = await paidTrade(2000n, 'mitm');
  const refundReference = newRefundRef();
  await rejectsWith(makeConnector(`${base}/tamper/gateway.do`).refundPayment!(refundInput(ref, 500n, refundReference)), 'invalid_response_signature', true);
  // It did happen: the query (genuine answer) says so.
  assert.equal((await connector.queryRefund!({ channelReference: ref, refundReference, currency: 'CNY' })).state, 'succeeded');
});

// ---- Refunds the sandbox holds, finished by simulate -------------------------------------------------

test('pending mode: fund_change=N, the refund stays pending until simulated succeeded, then it is notified', async () => {
  const ref = await paidTrade(8000n, 'held');
  const mode = await post('/sandbox/alipay/refunds/mode', { channel_reference: ref, mode: 'pending' });
  assert.equal(mode.status, 200);
  assert.equal(mode.body['refund_mode'], 'pending');
  const refundReference = newRefundRef();
  const snap = await connector.refundPayment!(refundInput(ref, 8000n, refundReference));
  assert.deepEqual(snap, { state: 'pending', refundReference, channelReference: ref, amountMinor: 8000n, currency: 'CNY', rawStatus: 'fund_change=N' });
  assert.deepEqual(await connector.queryRefund!({ channelReference: ref, refundReference, currency: 'CNY' }), { state: 'pending', refundReference, channelReference: ref, amountMinor: 8000n, currency: 'CNY' });
  assert.equal((await connector.queryPayment({ channelReference: ref, currency: 'CNY' })).rawStatus, 'TRADE_SUCCESS');
  await rejectsWith(connector.refundPayment!(refundInput(ref, 1n)), 'refund_exceeds_remaining', false); // held amounts count
  assert.equal(received.filter((r) => r.name === ref).length, 1, 'no refund notification yet');

  const sim = await post('/sandbox/alipay/refunds/simulate', { refund_reference: refundReference, outcome: 'succeeded' });
  assert.equal(sim.status, 200);
  assert.equal(sim.body['status'], 'REFUND_SUCCESS');
  assert.equal(sim.body['trade_status'], 'TRADE_CLOSED');
  assert.equal(sim.body['amount'], 8000);
  const [, note] = await waitReceived(ref, 2);
  assert.equal(paramsOf(note!)['notify_id'], sim.body['notification'].notify_id);
  const v = await connector.verifyNotification({ headers: {}, rawBody: note!.rawBody }, cny);
  assert.ok(v.ok && v.notification.kind === 'refund');
  assert.equal(v.notification.refund.refundReference, refundReference);
  assert.equal((await connector.queryRefund!({ channelReference: ref, refundReference, currency: 'CNY' })).state, 'succeeded');
  assert.equal((await connector.refundPayment!(refundInput(ref, 8000n, refundReference))).state, 'succeeded', 'a replay after success');
  const again = await post('/sandbox/alipay/refunds/simulate', { refund_reference: refundReference, channel_reference: ref, outcome: 'failed' });
  assert.equal(again.status, 409);
  assert.equal(again.body['error'].code, 'refund_already_final');
});

test('pending mode, simulated failed: the amount is released and the same reference can be sent again', async () => {
  const ref = await paidTrade(3000n, 'heldfail');
  await post('/sandbox/alipay/refunds/mode', { channel_reference: ref, mode: 'pending' });
  const refundReference = newRefundRef();
  assert.equal((await connector.refundPayment!(refundInput(ref, 3000n, refundReference))).state, 'pending');
  const sim = await post('/sandbox/alipay/refunds/simulate', { refund_reference: refundReference, outcome: 'failed' });
  assert.equal(sim.status, 200);
  assert.equal(sim.body['status'], 'REFUND_FAIL');
  assert.equal(sim.body['notification'], null, 'Alipay sends nothing for a failed refund');
  // Alipay's query cannot tell failed from not received: still pending, no amount.
  assert.deepEqual(await connector.queryRefund!({ channelReference: ref, refundReference, currency: 'CNY' }), { state: 'pending', refundReference, channelReference: ref });
  await post('/sandbox/alipay/refunds/mode', { channel_reference: ref, mode: 'sync' });
  const retried = await connector.refundPayment!(refundInput(ref, 3000n, refundReference));
  assert.equal(retried.state, 'succeeded');
  const view = await sandboxTrade(ref);
  assert.deepEqual(view['refunds'].map((r: any) => [r.status, r.executions]), [['REFUND_SUCCESS', 2]]);
  assert.equal(view['trade_status'], 'TRADE_CLOSED');
  await waitReceived(ref, 2);
});

test('refunds/simulate and refunds/mode refuse bad input in the Knowpay error shape', async () => {
  const ref = await paidTrade(1000n, 'simbad');
  const cases: Array<[string, unknown, number, string, string?]> = [
    ['/sandbox/alipay/refunds/simulate', { refund_reference: 'x', outcome: 'refunded' }, 400, 'parameter_invalid', 'outcome'],
    ['/sandbox/alipay/refunds/simulate', { outcome: 'succeeded' }, 400, 'parameter_missing', 'refund_reference'],
    ['/sandbox/alipay/refunds/simulate', { channel_refund_id: 'r1', outcome: 'succeeded' }, 400, 'parameter_invalid', 'channel_refund_id'],
    ['/sandbox/alipay/refunds/simulate', { refund_reference: 'KPnone', outcome: 'succeeded' }, 404, 'refund_not_found', 'refund_reference'],
    ['/sandbox/alipay/refunds/simulate', [1, 2], 400, 'parameter_invalid'],
    ['/sandbox/alipay/refunds/mode', { channel_reference: ref, mode: 'async' }, 400, 'parameter_invalid', 'mode'],
    ['/sandbox/alipay/refunds/mode', { mode: 'pending' }, 400, 'parameter_missing', 'channel_reference'],
    ['/sandbox/alipay/refunds/mode', { channel_reference: 'kp_nosuch', mode: 'pending' }, 404, 'trade_not_found', 'channel_reference'],
  ];
  for (const [path, body, status, code, param] of cases) {
    const res = await post(path, body);
    assert.equal(res.status, status, `${path} ${JSON.stringify(body)}`);
    assert.equal(res.body['error'].type, 'invalid_request_error');
    assert.equal(res.body['error'].code, code);
    if (param) assert.equal(res.body['error'].param, param);
  }
  // A refund that finished synchronously is not simulatable.
  const r = await connector.refundPayment!(refundInput(ref, 100n));
  const done = await post('/sandbox/alipay/refunds/simulate', { refund_reference: r.refundReference, outcome: 'succeeded' });
  assert.equal(done.status, 409);
  assert.equal(done.body['error'].code, 'refund_already_final');
});

// ---- Notifications -------------------------------------------------------------------------------

test('a forged or tampered refund notification is rejected', async () => {
  const ref = await paidTrade(6000n, 'forge');
  const refundReference = newRefundRef();
  await connector.refundPayment!(refundInput(ref, 2500n, refundReference));
  const [, note] = await waitReceived(ref, 2);
  const raw = note!.rawBody.toString('utf8');
  for (const [from, to] of [[`out_biz_no=${refundReference}`, 'out_biz_no=KPFORGED'], ['refund_fee=25.00', 'refund_fee=60.00'], ['trade_status=TRADE_SUCCESS', 'trade_status=TRADE_CLOSED']] as const) {
    assert.ok(raw.includes(from), from);
    const tampered = Buffer.from(raw.replace(from, to));
    assert.deepEqual(await connector.verifyNotification({ headers: {}, rawBody: tampered }, cny), { ok: false, reason: 'invalid signature' }, from);
  }
  // Signed by someone else's key, with every field right.
  const p = paramsOf(note!);
  const other = generateKeyPairSync('rsa', { modulusLength: 2048, privateKeyEncoding: { type: 'pkcs8', format: 'pem' }, publicKeyEncoding: { type: 'spki', format: 'pem' } });
  const forged = Buffer.from(new URLSearchParams(signAlipayNotification({ ...p, refund_fee: '60.00' }, other.privateKey)).toString());
  assert.deepEqual(await connector.verifyNotification({ headers: {}, rawBody: forged }, cny), { ok: false, reason: 'invalid signature' });
  const { sign: _s, ...unsigned } = p;
  assert.deepEqual(await connector.verifyNotification({ headers: {}, rawBody: Buffer.from(new URLSearchParams(unsigned).toString()) }, cny), { ok: false, reason: 'missing sign' });
  // The genuine one still verifies.
  const v = await connector.verifyNotification({ headers: {}, rawBody: note!.rawBody }, cny);
  assert.ok(v.ok && v.notification.kind === 'refund' && v.notification.refund.refundReference === refundReference);
  const rows = await waitForSandboxNotifications(db.pool, { channel: 'alipay', channelReference: ref, timeoutMs: 3000, until: (rs) => rs.length === 2 && rs.every((r) => r.status !== 'pending') });
  assert.deepEqual(rows.map((r) => [r.status, r.attempts]), [['delivered', 1], ['delivered', 1]]);
});

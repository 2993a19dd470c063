/**
 * Refunds over real HTTP: the connector (through the SDK) against the sandbox, which runs them as
 * WeChat Pay does — accepted in PROCESSING, finished later (by itself, or by /refunds/simulate),
 * then a signed, encrypted REFUND.* callback through the shared dispatcher.
 *
 * Two sandbox instances share one database: `auto` finishes refunds by itself (60 s × 0.001), and
 * `manual` leaves them PROCESSING (refundSettleMs: null) until simulated.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import Fastify, { type FastifyInstance } from 'fastify';
import formbody from '@fastify/formbody';
import { freshDatabase, type TestDatabase } from '../../../test/support/db.ts';
import { ChannelError, type ChannelConnector, type RefundRequest } from '../types.ts';
import { faultsPlugin } from '../sandbox/faults.ts';
import { listSandboxNotificationAttempts, waitForSandboxNotifications } from '../sandbox/dispatcher.ts';
import { createWechatpayConnector, type WechatpayAuditEntry, type WechatpayConfig } from './connector.ts';
import { generateWechatpaySandboxKeys, wechatpaySandboxPlugin, type WechatpaySandboxKeys } from './sandbox.ts';
import { decryptResource, encryptResource, signatureHeaders, signRequest } from './sign.ts';
import { parseRfc3339 } from './transformers.ts';
import { rejectsWith } from '../../../test/support/assertions.ts';
import { freePort } from '../../store/embedded.ts';

const MCHID = '1900000109';
const APPID = 'wx8888888888888888';
const TIME_SCALE = 0.001;
const SETTLE_MS = 60_000; // × 0.001 = 60 ms

interface Received { name: string; rawBody: Buffer; headers: Record<string, string | string[] | undefined>; at: number }

let db: TestDatabase;
let keys: WechatpaySandboxKeys;
let auto: FastifyInstance;
let manual: FastifyInstance;
let base = '';
let manualBase = '';
let connector: ChannelConnector;
let manualConnector: ChannelConnector;
let audits: WechatpayAuditEntry[] = [];
const received: Received[] = [];
const answers = new Map<string, (n: number) => number>();
let counter = 0;

async function buildApp(port: number, refundSettleMs: number | null): Promise<FastifyInstance> {
  const a = Fastify();
  await a.register(formbody);
  await a.register(faultsPlugin, { pool: db.pool });
  await a.register(wechatpaySandboxPlugin, {
    prefix: '/sandbox/wechatpay', pool: db.pool, mchid: MCHID, appids: [APPID], merchantSerial: keys.merchantSerial,
    merchantPublicKey: keys.merchantPublicKey, platformPrivateKey: keys.platformPrivateKey, platformPublicKeyId: keys.platformPublicKeyId,
    apiV3Key: keys.apiV3Key, publicBaseUrl: `http://127.0.0.1:${port}`, timeScale: TIME_SCALE, refundSettleMs,
  });
  await a.register(async (r) => {
    r.removeAllContentTypeParsers();
    r.addContentTypeParser('*', { parseAs: 'buffer' }, (_q, body, done) => done(null, body));
    r.post<{ Params: { name: string } }>('/notify/:name', async (req, reply) => {
      const name = req.params.name;
      received.push({ name, rawBody: req.body as Buffer, headers: req.headers, at: Date.now() });
      const n = received.filter((x) => x.name === name).length;
      return reply.code((answers.get(name) ?? (() => 204))(n)).send();
    });
  });
  await a.listen({ host: '127.0.0.1', port });
  return a;
}

function makeConnector(target: string, over: Partial<WechatpayConfig> = {}): ChannelConnector {
  return createWechatpayConnector({
    mchid: MCHID, appid: APPID, merchantSerial: keys.merchantSerial, privateKey: keys.merchantPrivateKey,
    platformKeys: { [keys.platformPublicKeyId]: keys.platformPublicKey }, apiV3Key: keys.apiV3Key, baseURL: `${target}/sandbox/wechatpay/`,
    timeoutMs: 5000, audit: (e) => audits.push(e), ...over,
  });
}

before(async () => {
  db = await freshDatabase();
  keys = await generateWechatpaySandboxKeys();
  const [p1, p2] = [await freePort(), await freePort()];
  base = `http://127.0.0.1:${p1}`;
  manualBase = `http://127.0.0.1:${p2}`;
  auto = await buildApp(p1, SETTLE_MS);
  manual = await buildApp(p2, null);
  connector = makeConnector(base);
  manualConnector = makeConnector(manualBase);
});

after(async () => {
  await auto.close();
  await manual.close();
  await db.drop();
});

const newRef = (tag: string) => `KP${tag}${process.pid}x${++counter}`.slice(0, 32);

/** A paid trade of `amount` fen at the sandbox. */
async function paidTrade(tag: string, amount: bigint, c = connector, target = base): Promise<string> {
  const ref = newRef(tag);
  await c.createPayment({
    channelReference: ref, paymentId: 'pay_' + ref, orderId: 'ord_' + ref, customerId: 'cr_test', items: [], method: 'native',
    amountMinor: amount, currency: 'CNY', subject: '课程', notifyUrl: `${target}/notify/${ref}`, expiresAt: new Date(Date.now() + 600_000),
  });
  const res = await fetch(`${target}/sandbox/wechatpay/simulate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ channel_reference: ref, outcome: 'succeeded' }) });
  assert.equal(res.status, 200);
  return ref;
}

function refund(ref: string, refundReference: string, amount: bigint, total: bigint, target = base): RefundRequest {
  return { channelReference: ref, refundReference, amountMinor: amount, paymentAmountMinor: total, currency: 'CNY', reason: '课程退款', notifyUrl: `${target}/notify/${refundReference}` };
}

async function waitReceived(name: string, count: number, timeoutMs = 5000): Promise<Received[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const got = received.filter((r) => r.name === name);
    if (got.length >= count) return got;
    if (Date.now() > deadline) throw new Error(`receiver ${name}: ${got.length} of ${count} callbacks after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 15));
  }
}

const verify = (c: ChannelConnector, r: Pick<Received, 'headers' | 'rawBody'>) =>
  c.verifyNotification({ headers: r.headers, rawBody: r.rawBody, contentType: 'application/json' }, async () => 'CNY');

async function simulateRefund(body: Record<string, unknown>, target = manualBase) {
  const res = await fetch(`${target}/sandbox/wechatpay/refunds/simulate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: res.status, body: (await res.json()) as Record<string, any> };
}

async function tradeView(ref: string) {
  return (await (await fetch(`${base}/sandbox/wechatpay/trades/${ref}`)).json()) as Record<string, any>;
}

/** A raw, correctly signed call (for requests the connector would never send). */
async function signedFetch(method: 'GET' | 'POST', path: string, body?: unknown, privateKey = keys.merchantPrivateKey) {
  const url = `/sandbox/wechatpay${path}`;
  const raw = body === undefined ? '' : JSON.stringify(body);
  const authorization = signRequest({ method, url, body: raw, mchid: MCHID, serialNo: keys.merchantSerial, privateKey });
  const res = await fetch(`${base}${url}`, { method, headers: { authorization, 'content-type': 'application/json' }, ...(method === 'POST' ? { body: raw } : {}) });
  const text = await res.text();
  return { status: res.status, signed: res.headers.get('wechatpay-signature') !== null, body: text ? (JSON.parse(text) as Record<string, any>) : null };
}

// ---- Happy paths ------------------------------------------------------------------------------------------

test('full refund: PROCESSING (pending) at once, SUCCESS by itself; the REFUND.SUCCESS callback verifies and translates', async () => {
  const ref = await paidTrade('full', 9000n);
  const rf = newRef('RFfull');
  audits = [];
  const t0 = Date.now();
  const snap = await connector.refundPayment!(refund(ref, rf, 9000n, 9000n));
  assert.equal(snap.state, 'pending');
  assert.equal(snap.rawStatus, 'PROCESSING');
  assert.match(snap.channelRefundId ?? '', /^50\d{27}$/);
  assert.deepEqual({ ...snap, channelRefundId: undefined }, { state: 'pending', refundReference: rf, channelRefundId: undefined, channelReference: ref, amountMinor: 9000n, currency: 'CNY', rawStatus: 'PROCESSING' });

  const trade = await connector.queryPayment({ channelReference: ref, currency: 'CNY' });
  assert.equal(trade.rawStatus, 'REFUND', 'trade_state REFUND (转入退款) once a refund is accepted');
  assert.equal(trade.state, 'succeeded', 'a refunded trade was still paid');

  const [cb] = await waitReceived(rf, 1);
  assert.ok(cb!.at - t0 >= 55, `finished by itself after about 60 ms, not at once (${cb!.at - t0} ms)`);
  const verified = await verify(connector, cb!);
  assert.ok(verified.ok, !verified.ok ? verified.reason : '');
  assert.equal(verified.notification.kind, 'refund');
  assert.equal(verified.notification.appId, connector.appId);
  assert.ok(verified.notification.kind === 'refund');
  assert.deepEqual(verified.notification.refund, { state: 'succeeded', refundReference: rf, channelRefundId: snap.channelRefundId, channelReference: ref, amountMinor: 9000n, currency: 'CNY', rawStatus: 'SUCCESS' });

  // The wire: WeChat Pay's envelope; resource original_type "refund", AAD "refund", encrypted with the APIv3 key.
  const body = JSON.parse(cb!.rawBody.toString('utf8'));
  assert.deepEqual(Object.keys(body), ['id', 'create_time', 'resource_type', 'event_type', 'summary', 'resource']);
  assert.equal(verified.notification.eventId, body.id);
  assert.deepEqual([body.event_type, body.summary, body.resource.original_type, body.resource.associated_data], ['REFUND.SUCCESS', '退款成功', 'refund', 'refund']);
  const plain = JSON.parse(decryptResource(body.resource, Buffer.from(keys.apiV3Key))!.toString('utf8'));
  assert.deepEqual(Object.keys(plain), ['mchid', 'transaction_id', 'out_trade_no', 'refund_id', 'out_refund_no', 'refund_status', 'success_time', 'user_received_account', 'amount']);
  assert.deepEqual(plain.amount, { total: 9000, refund: 9000, payer_total: 9000, payer_refund: 9000 });
  assert.equal(plain.transaction_id, trade.channelTransactionId);
  assert.ok(parseRfc3339(plain.success_time));

  assert.deepEqual(await connector.queryRefund!({ channelReference: ref, refundReference: rf, currency: 'CNY' }), { ...snap, state: 'succeeded', rawStatus: 'SUCCESS' });
  assert.deepEqual(audits.map((a) => a.operation), ['refund_payment', 'query_payment', 'query_refund']);
  assert.deepEqual((audits[0]!.request as any).body, { out_trade_no: ref, out_refund_no: rf, reason: '课程退款', notify_url: `${base}/notify/${rf}`, amount: { refund: 9000, total: 9000, currency: 'CNY' } });
  assert.equal(audits[0]!.channelReference, ref);
  assert.doesNotMatch(JSON.stringify(audits), /PRIVATE KEY|WECHATPAY2-SHA256-RSA2048 mchid/);
});

test('several partial refunds up to exactly the total; one fen more is WeChat Pay\'s INVALID_REQUEST → refund_exceeds_remaining', async () => {
  const ref = await paidTrade('part', 9000n);
  const parts = [3000n, 2500n, 3500n];
  const refs = parts.map(() => newRef('RFpart'));
  const snaps = [];
  for (const [i, amount] of parts.entries()) snaps.push(await connector.refundPayment!(refund(ref, refs[i]!, amount, 9000n)));
  assert.deepEqual(snaps.map((s) => [s.state, s.amountMinor]), [['pending', 3000n], ['pending', 2500n], ['pending', 3500n]]);
  assert.equal(new Set(snaps.map((s) => s.channelRefundId)).size, 3, 'three refunds');
  await rejectsWith(connector.refundPayment!(refund(ref, newRef('RFmore'), 1n, 9000n)), 'refund_exceeds_remaining', false, /申请退款金额超过订单可退金额/);
  for (const [i, rf] of refs.entries()) {
    const [cb] = await waitReceived(rf, 1);
    const v = await verify(connector, cb!);
    assert.ok(v.ok && v.notification.kind === 'refund');
    assert.deepEqual([v.notification.refund.state, v.notification.refund.amountMinor, v.notification.refund.refundReference], ['succeeded', parts[i], rf]);
  }
  const view = await tradeView(ref);
  assert.equal(view['trade_state'], 'REFUND');
  assert.deepEqual(view['refunds'].map((r: any) => [r.refund_reference, r.amount, r.status]), refs.map((rf, i) => [rf, Number(parts[i]), 'SUCCESS']));
  await rejectsWith(connector.refundPayment!(refund(ref, newRef('RFmore'), 1n, 9000n)), 'refund_exceeds_remaining', false);
});

test('the same refundReference twice refunds once: same refund id, one callback; replayed after success it answers succeeded', async () => {
  const ref = await paidTrade('idem', 5000n);
  const rf = newRef('RFidem');
  const first = await connector.refundPayment!(refund(ref, rf, 2000n, 5000n));
  const again = await connector.refundPayment!(refund(ref, rf, 2000n, 5000n));
  assert.deepEqual(again, first);
  await waitReceived(rf, 1);
  const later = await connector.refundPayment!(refund(ref, rf, 2000n, 5000n));
  assert.deepEqual(later, { ...first, state: 'succeeded', rawStatus: 'SUCCESS' });
  await new Promise((r) => setTimeout(r, 150));
  assert.equal(received.filter((r) => r.name === rf).length, 1, 'one callback');
  const view = await tradeView(ref);
  assert.equal(view['refunds'].length, 1);
  // The remainder counted it once: 3000 is still refundable, 3001 is not.
  await rejectsWith(connector.refundPayment!(refund(ref, newRef('RFidem'), 3001n, 5000n)), 'refund_exceeds_remaining', false);
  assert.equal((await connector.refundPayment!(refund(ref, newRef('RFidem'), 3000n, 5000n))).state, 'pending');
});

test('concurrent refunds: one refundReference sent 6 times at once is one refund; 6 different ones of 40% each: exactly 2 pass', async () => {
  const ref = await paidTrade('conc', 1000n);
  const rf = newRef('RFsame');
  // Through both sandbox instances (two "processes" on one database).
  const same = await Promise.all(Array.from({ length: 6 }, (_, i) => (i % 2 ? connector : manualConnector).refundPayment!(refund(ref, rf, 100n, 1000n))));
  assert.equal(new Set(same.map((s) => s.channelRefundId)).size, 1);
  const ref2 = await paidTrade('conc', 1000n);
  const results = await Promise.allSettled(Array.from({ length: 6 }, (_, i) => (i % 2 ? connector : manualConnector).refundPayment!(refund(ref2, newRef('RFrace'), 400n, 1000n))));
  const ok = results.filter((r) => r.status === 'fulfilled');
  const refused = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
  assert.equal(ok.length, 2, JSON.stringify(refused.map((r) => String(r.reason))));
  for (const r of refused) assert.equal((r.reason as ChannelError).code, 'refund_exceeds_remaining');
  const view = await tradeView(ref2);
  assert.equal(view['refunds'].length, 2);
});

test('two processes that both finish refunds by themselves finish each once: one REFUND.SUCCESS per refund', async () => {
  const port = await freePort();
  const second = await buildApp(port, SETTLE_MS);
  try {
    const other = makeConnector(`http://127.0.0.1:${port}`);
    const ref = await paidTrade('twice', 600n);
    const rfs = Array.from({ length: 6 }, () => newRef('RFtwice'));
    await Promise.all(rfs.map((rf, i) => (i % 2 ? connector : other).refundPayment!(refund(ref, rf, 100n, 600n))));
    for (const rf of rfs) await waitReceived(rf, 1);
    await new Promise((r) => setTimeout(r, 250));
    for (const rf of rfs) assert.equal(received.filter((r) => r.name === rf).length, 1, `${rf}: one callback`);
    const rows = await waitForSandboxNotifications(db.pool, { channel: 'wechatpay', channelReference: ref, timeoutMs: 2000 });
    assert.equal(rows.length, 7, 'the payment callback and six refund callbacks');
  } finally {
    await second.close();
  }
});

test('refunds left PROCESSING are finished by /refunds/simulate: failed → ABNORMAL (REFUND.ABNORMAL), CLOSED on request; the remainder comes back', async () => {
  const ref = await paidTrade('sim', 3000n, manualConnector, manualBase);
  const [a, b, c] = [newRef('RFsimA'), newRef('RFsimB'), newRef('RFsimC')];
  const sa = await manualConnector.refundPayment!(refund(ref, a, 1000n, 3000n, manualBase));
  const sb = await manualConnector.refundPayment!(refund(ref, b, 1000n, 3000n, manualBase));
  await manualConnector.refundPayment!(refund(ref, c, 1000n, 3000n, manualBase));
  await new Promise((r) => setTimeout(r, 200)); // longer than the auto instance's 60 ms: these have no settle time
  assert.equal((await manualConnector.queryRefund!({ channelReference: ref, refundReference: a, currency: 'CNY' })).state, 'pending');
  assert.equal(received.filter((r) => [a, b, c].includes(r.name)).length, 0);
  await rejectsWith(manualConnector.refundPayment!(refund(ref, newRef('RFsimD'), 1n, 3000n, manualBase)), 'refund_exceeds_remaining', false);

  const failed = await simulateRefund({ refund_reference: a, outcome: 'failed' });
  assert.equal(failed.status, 200);
  assert.deepEqual([failed.body['status'], failed.body['notification'].event_type, failed.body['channel_refund_id']], ['ABNORMAL', 'REFUND.ABNORMAL', sa.channelRefundId]);
  const [cbA] = await waitReceived(a, 1);
  const vA = await verify(manualConnector, cbA!);
  assert.ok(vA.ok && vA.notification.kind === 'refund');
  assert.deepEqual([vA.notification.refund.state, vA.notification.refund.rawStatus, vA.notification.eventId], ['failed', 'ABNORMAL', failed.body['notification'].id]);
  assert.equal(JSON.parse(cbA!.rawBody.toString()).summary, '退款异常');
  assert.deepEqual(await manualConnector.queryRefund!({ channelReference: ref, refundReference: a, currency: 'CNY' }), { ...sa, state: 'failed', rawStatus: 'ABNORMAL' });

  const closed = await simulateRefund({ channel_refund_id: sb.channelRefundId, outcome: 'failed', failure_status: 'CLOSED' });
  assert.equal(closed.status, 200);
  const [cbB] = await waitReceived(b, 1);
  const vB = await verify(manualConnector, cbB!);
  assert.ok(vB.ok && vB.notification.kind === 'refund');
  assert.deepEqual([vB.notification.refund.state, vB.notification.refund.rawStatus], ['failed', 'CLOSED']);

  const succeeded = await simulateRefund({ refund_reference: c, channel_refund_id: undefined, outcome: 'succeeded' });
  assert.equal(succeeded.status, 200);
  const [cbC] = await waitReceived(c, 1);
  const vC = await verify(manualConnector, cbC!);
  assert.ok(vC.ok && vC.notification.kind === 'refund' && vC.notification.refund.state === 'succeeded');
  // ABNORMAL and CLOSED gave their 2000 back.
  await rejectsWith(manualConnector.refundPayment!(refund(ref, newRef('RFsimE'), 2001n, 3000n, manualBase)), 'refund_exceeds_remaining', false);
  assert.equal((await manualConnector.refundPayment!(refund(ref, newRef('RFsimE'), 2000n, 3000n, manualBase))).state, 'pending');
  // Finished refunds cannot be finished again.
  const again = await simulateRefund({ refund_reference: a, outcome: 'succeeded' });
  assert.deepEqual([again.status, again.body['error'].code], [409, 'refund_already_final']);
});

test('an unacknowledged refund callback is retried on WeChat Pay\'s schedule; a refund without notify_url settles silently', async () => {
  const ref = await paidTrade('retry', 800n);
  const rf = newRef('RFretry');
  answers.set(rf, (n) => (n < 3 ? 500 : 204));
  await connector.refundPayment!(refund(ref, rf, 800n, 800n));
  const got = await waitReceived(rf, 3, 5000);
  assert.ok(got[1]!.at - got[0]!.at >= 12 && got[2]!.at - got[1]!.at >= 12, 'about 15 s × 0.001 apart');
  assert.equal(new Set(got.map((g) => g.rawBody.toString())).size, 1, 'the same callback each time');
  for (const g of got) assert.ok((await verify(connector, g)).ok, 'each attempt freshly signed');
  const rows = await waitForSandboxNotifications(db.pool, { channel: 'wechatpay', channelReference: ref, timeoutMs: 2000, until: (r) => r.some((x) => x.status === 'delivered' && x.attempts === 3) });
  const row = rows.find((x) => x.attempts === 3)!;
  assert.deepEqual((await listSandboxNotificationAttempts(db.pool, row.id)).map((x) => x.statusCode), [500, 500, 204]);

  const quiet = await paidTrade('quiet', 500n);
  const rq = newRef('RFquiet');
  const raw = await signedFetch('POST', '/v3/refund/domestic/refunds', { out_trade_no: quiet, out_refund_no: rq, amount: { refund: 500, total: 500, currency: 'CNY' } });
  assert.deepEqual([raw.status, raw.body!['status']], [200, 'PROCESSING']);
  const deadline = Date.now() + 3000;
  while ((await connector.queryRefund!({ channelReference: quiet, refundReference: rq, currency: 'CNY' })).state === 'pending' && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  assert.equal((await connector.queryRefund!({ channelReference: quiet, refundReference: rq, currency: 'CNY' })).state, 'succeeded');
  const notes = await waitForSandboxNotifications(db.pool, { channel: 'wechatpay', channelReference: quiet, timeoutMs: 0, until: () => true });
  assert.equal(notes.length, 1, 'only the payment callback: WeChat Pay has nowhere to send the refund one');
});

test('the refund answer and query have WeChat Pay\'s shape; a refundReference using | * @ works through the path', async () => {
  const ref = await paidTrade('shape', 1234n);
  const rf = `RF|${process.pid}*x@${++counter}-_`;
  const snap = await connector.refundPayment!(refund(ref, rf, 234n, 1234n));
  assert.equal(snap.refundReference, rf);
  assert.equal((await connector.queryRefund!({ channelReference: ref, refundReference: rf, currency: 'CNY' })).channelRefundId, snap.channelRefundId);
  const q = await signedFetch('GET', `/v3/refund/domestic/refunds/${encodeURIComponent(rf)}`);
  assert.equal(q.status, 200);
  assert.ok(q.signed);
  assert.deepEqual(Object.keys(q.body!).sort(), ['amount', 'channel', 'create_time', 'funds_account', 'out_refund_no', 'out_trade_no', 'promotion_detail', 'refund_id', 'status', 'transaction_id', 'user_received_account'].concat(q.body!['success_time'] ? ['success_time'] : []).sort());
  assert.deepEqual(q.body!['amount'], { total: 1234, refund: 234, from: [], payer_total: 1234, payer_refund: 234, settlement_refund: 234, settlement_total: 1234, discount_refund: 0, currency: 'CNY', refund_fee: 0 });
  assert.equal(q.body!['channel'], 'ORIGINAL');
  assert.ok(parseRfc3339(q.body!['create_time']));
  // By transaction_id instead of out_trade_no: the same trade.
  const byTxn = await signedFetch('POST', '/v3/refund/domestic/refunds', { transaction_id: q.body!['transaction_id'], out_refund_no: newRef('RFtxn'), amount: { refund: 1000, total: 1234, currency: 'CNY' } });
  assert.deepEqual([byTxn.status, byTxn.body!['out_trade_no']], [200, ref]);
  const tooMuch = await signedFetch('POST', '/v3/refund/domestic/refunds', { transaction_id: q.body!['transaction_id'], out_refund_no: newRef('RFtxn'), amount: { refund: 1, total: 1234, currency: 'CNY' } });
  assert.deepEqual([tooMuch.status, tooMuch.body], [400, { code: 'INVALID_REQUEST', message: '申请退款金额超过订单可退金额' }]);
  assert.ok(tooMuch.signed, 'errors are signed too');
});

// ---- Refusals ------------------------------------------------------------------------------------------------

test('refunds of an unpaid, closed or unknown trade: RESOURCE_NOT_EXISTS; another total: INVALID_REQUEST; all non-retryable', async () => {
  const unpaid = newRef('unpaid');
  await connector.createPayment({
    channelReference: unpaid, paymentId: 'p', orderId: 'o', customerId: 'c', items: [], method: 'native', amountMinor: 100n, currency: 'CNY',
    subject: '课程', notifyUrl: `${base}/notify/${unpaid}`, expiresAt: new Date(Date.now() + 600_000),
  });
  await rejectsWith(connector.refundPayment!(refund(unpaid, newRef('RFx'), 100n, 100n)), 'RESOURCE_NOT_EXISTS', false);
  await connector.closePayment({ channelReference: unpaid, currency: 'CNY' });
  await rejectsWith(connector.refundPayment!(refund(unpaid, newRef('RFx'), 100n, 100n)), 'RESOURCE_NOT_EXISTS', false);
  await rejectsWith(connector.refundPayment!(refund(newRef('nosuch'), newRef('RFx'), 100n, 100n)), 'RESOURCE_NOT_EXISTS', false);
  const ref = await paidTrade('total', 700n);
  await rejectsWith(connector.refundPayment!(refund(ref, newRef('RFx'), 100n, 701n)), 'INVALID_REQUEST', false, /订单金额或退款金额与之前请求不一致/);
  await rejectsWith(connector.refundPayment!(refund(ref, newRef('RFx'), 701n, 700n)), 'refund_exceeds_remaining', false);
  // The same out_refund_no again with another amount, or for another trade: INVALID_REQUEST, nothing changes.
  const rf = newRef('RFmis');
  await connector.refundPayment!(refund(ref, rf, 100n, 700n));
  await rejectsWith(connector.refundPayment!(refund(ref, rf, 200n, 700n)), 'INVALID_REQUEST', false, /不一致/);
  const other = await paidTrade('total', 700n);
  await rejectsWith(connector.refundPayment!(refund(other, rf, 100n, 700n)), 'INVALID_REQUEST', false);
  assert.equal((await tradeView(other))['trade_state'], 'SUCCESS', 'a refused refund leaves the trade alone');
  assert.equal((await tradeView(ref))['refunds'].length, 1);
  // A refunded trade cannot be closed: close answers the (signed) query's state.
  assert.equal((await connector.closePayment({ channelReference: ref, currency: 'CNY' })).rawStatus, 'REFUND');
});

test('WeChat Pay\'s limits: at most 50 refunds of one trade, none a year after payment', async () => {
  const ref = await paidTrade('fifty', 100n);
  for (let i = 0; i < 50; i++) {
    const r = await signedFetch('POST', '/v3/refund/domestic/refunds', { out_trade_no: ref, out_refund_no: `${ref}R${i}`, amount: { refund: 1, total: 100, currency: 'CNY' } });
    assert.equal(r.status, 200, `refund ${i + 1}`);
  }
  const fiftyFirst = await signedFetch('POST', '/v3/refund/domestic/refunds', { out_trade_no: ref, out_refund_no: `${ref}R50`, amount: { refund: 1, total: 100, currency: 'CNY' } });
  assert.deepEqual([fiftyFirst.status, fiftyFirst.body!['code']], [400, 'INVALID_REQUEST']);
  assert.match(fiftyFirst.body!['message'], /50次/);
  const replay = await signedFetch('POST', '/v3/refund/domestic/refunds', { out_trade_no: ref, out_refund_no: `${ref}R7`, amount: { refund: 1, total: 100, currency: 'CNY' } });
  assert.equal(replay.status, 200, 'an existing refund is still answered');

  const old = await paidTrade('old', 100n);
  await db.pool.query(`UPDATE sandbox_wechatpay_trades SET success_time = now() - interval '366 days' WHERE out_trade_no = $1`, [old]);
  await rejectsWith(connector.refundPayment!(refund(old, newRef('RFold'), 100n, 100n)), 'INVALID_REQUEST', false, /超过一年/);
  await db.pool.query(`UPDATE sandbox_wechatpay_trades SET success_time = now() - interval '364 days' WHERE out_trade_no = $1`, [old]);
  assert.equal((await connector.refundPayment!(refund(old, newRef('RFold'), 100n, 100n))).state, 'pending');
});

test('query of an unknown refund: refund_not_found (retryable); a refund of another trade: invalid_response', async () => {
  await rejectsWith(connector.queryRefund!({ channelReference: 'KP0123456789', refundReference: newRef('RFnone'), currency: 'CNY' }), 'refund_not_found', true);
  const raw = await signedFetch('GET', `/v3/refund/domestic/refunds/${newRef('RFnone')}`);
  assert.deepEqual([raw.status, raw.body], [404, { code: 'RESOURCE_NOT_EXISTS', message: '退款单不存在' }]);
  const ref = await paidTrade('foreign', 300n);
  const rf = newRef('RFforeign');
  await connector.refundPayment!(refund(ref, rf, 300n, 300n));
  await rejectsWith(connector.queryRefund!({ channelReference: 'KP0123456789', refundReference: rf, currency: 'CNY' }), 'invalid_response', false);
});

test('refund requests are authenticated like every other call: another key → 401 SIGN_ERROR, unsigned answer', async () => {
  const wrong = generateKeyPairSync('rsa', { modulusLength: 2048, privateKeyEncoding: { type: 'pkcs8', format: 'pem' }, publicKeyEncoding: { type: 'spki', format: 'pem' } });
  const ref = await paidTrade('auth', 300n);
  const raw = await signedFetch('POST', '/v3/refund/domestic/refunds', { out_trade_no: ref, out_refund_no: newRef('RFauth'), amount: { refund: 300, total: 300, currency: 'CNY' } }, wrong.privateKey);
  assert.deepEqual([raw.status, raw.body!['code'], raw.signed], [401, 'SIGN_ERROR', false]);
  const q = await signedFetch('GET', `/v3/refund/domestic/refunds/${newRef('RFauth')}`, undefined, wrong.privateKey);
  assert.deepEqual([q.status, q.body!['code']], [401, 'SIGN_ERROR']);
  const unsigned = await fetch(`${base}/sandbox/wechatpay/v3/refund/domestic/refunds`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
  assert.equal(unsigned.status, 401);
  const c = makeConnector(base, { privateKey: wrong.privateKey });
  await rejectsWith(c.refundPayment!(refund(ref, newRef('RFauth'), 300n, 300n)), 'SIGN_ERROR', false);
  await rejectsWith(c.queryRefund!({ channelReference: ref, refundReference: newRef('RFauth'), currency: 'CNY' }), 'SIGN_ERROR', false);
  assert.equal((await tradeView(ref))['trade_state'], 'SUCCESS', 'nothing was refunded');
});

test('refund validation answers PARAM_ERROR in WeChat Pay\'s wording', async () => {
  const ref = await paidTrade('val', 500n);
  const ok = { out_trade_no: ref, out_refund_no: newRef('RFval'), amount: { refund: 100, total: 500, currency: 'CNY' } };
  const cases: Array<[Record<string, unknown>, RegExp]> = [
    [{ ...ok, out_trade_no: undefined }, /二选一/],
    [{ ...ok, out_refund_no: undefined }, /商户退款单号.*必填/],
    [{ ...ok, out_refund_no: 'RF/1' }, /商户退款单号/],
    [{ ...ok, out_refund_no: 'R'.repeat(65) }, /商户退款单号/],
    [{ ...ok, amount: undefined }, /金额信息.*必填/],
    [{ ...ok, amount: { total: 500, currency: 'CNY' } }, /退款金额.*必填/],
    [{ ...ok, amount: { refund: 0, total: 500, currency: 'CNY' } }, /退款金额/],
    [{ ...ok, amount: { refund: 1.5, total: 500, currency: 'CNY' } }, /退款金额/],
    [{ ...ok, amount: { refund: 100, total: '500', currency: 'CNY' } }, /总金额/],
    [{ ...ok, amount: { refund: 100, total: 500 } }, /货币类型.*必填/],
    [{ ...ok, amount: { refund: 100, total: 500, currency: 'USD' } }, /货币类型/],
    [{ ...ok, reason: '退'.repeat(27) }, /退款原因.*80字节/],
    [{ ...ok, notify_url: 'https://x.example/n?a=1' }, /通知地址/],
    [{ ...ok, funds_account: 'UNSETTLED' }, /退款资金来源/],
    [{ ...ok, transaction_id: 'abc' }, /微信支付订单号/],
  ];
  for (const [body, message] of cases) {
    const r = await signedFetch('POST', '/v3/refund/domestic/refunds', body);
    assert.deepEqual([r.status, r.body!['code']], [400, 'PARAM_ERROR'], JSON.stringify(body));
    assert.match(r.body!['message'], message, JSON.stringify(body));
  }
  const notJson = await fetch(`${base}/sandbox/wechatpay/v3/refund/domestic/refunds`, {
    method: 'POST', body: '{nope',
    headers: { 'content-type': 'application/json', authorization: signRequest({ method: 'POST', url: '/sandbox/wechatpay/v3/refund/domestic/refunds', body: '{nope', mchid: MCHID, serialNo: keys.merchantSerial, privateKey: keys.merchantPrivateKey }) },
  });
  assert.equal(notJson.status, 400);
  assert.equal((await tradeView(ref))['refunds'].length, 0);
  // A transaction_id of another trade than out_trade_no.
  const other = await paidTrade('val', 500n);
  const txn = (await connector.queryPayment({ channelReference: other, currency: 'CNY' })).channelTransactionId;
  const mixed = await signedFetch('POST', '/v3/refund/domestic/refunds', { ...ok, transaction_id: txn });
  assert.deepEqual([mixed.status, mixed.body!['code']], [400, 'INVALID_REQUEST']);
});

test('/refunds/simulate refuses garbage: 400 bad input, 404 unknown (or mismatched) refund, 409 finished, Knowpay error shape', async () => {
  const cases: Array<[Record<string, unknown>, number, string, string]> = [
    [{ outcome: 'succeeded' }, 400, 'parameter_missing', 'refund_reference'],
    [{ refund_reference: 'RF1', outcome: 'refunded' }, 400, 'parameter_invalid', 'outcome'],
    [{ refund_reference: 'RF1', outcome: 'failed', failure_status: 'PROCESSING' }, 400, 'parameter_invalid', 'failure_status'],
    [{ refund_reference: 42, outcome: 'failed' }, 400, 'parameter_invalid', 'refund_reference'],
    [{ refund_reference: 'RF_NO_SUCH_REFUND', outcome: 'succeeded' }, 404, 'refund_not_found', 'refund_reference'],
    [{ channel_refund_id: '50000000000000000000000000000', outcome: 'succeeded' }, 404, 'refund_not_found', 'channel_refund_id'],
  ];
  for (const [body, status, code, param] of cases) {
    const r = await simulateRefund(body);
    assert.deepEqual([r.status, r.body['error']?.code, r.body['error']?.param, r.body['error']?.type], [status, code, param, 'invalid_request_error'], JSON.stringify(body));
  }
  const ref = await paidTrade('simbad', 300n, manualConnector, manualBase);
  const [a, b] = [newRef('RFsb'), newRef('RFsb')];
  const sa = await manualConnector.refundPayment!(refund(ref, a, 100n, 300n, manualBase));
  await manualConnector.refundPayment!(refund(ref, b, 100n, 300n, manualBase));
  const mismatched = await simulateRefund({ refund_reference: b, channel_refund_id: sa.channelRefundId, outcome: 'succeeded' });
  assert.equal(mismatched.status, 404, 'reference and id of two different refunds');
  const notJson = await fetch(`${manualBase}/sandbox/wechatpay/refunds/simulate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '[1]' });
  assert.equal(notJson.status, 400);
  assert.equal((await simulateRefund({ refund_reference: a, channel_refund_id: sa.channelRefundId, outcome: 'succeeded' })).status, 200);
  assert.equal((await simulateRefund({ refund_reference: a, outcome: 'failed' })).status, 409);
  assert.equal((await manualConnector.queryRefund!({ channelReference: ref, refundReference: b, currency: 'CNY' })).state, 'pending', 'the other refund is untouched');
});

test('forged or tampered refund callbacks are rejected; a genuine one checked late is too', async () => {
  const ref = await paidTrade('forge', 600n);
  const rf = newRef('RFforge');
  await connector.refundPayment!(refund(ref, rf, 600n, 600n));
  const [cb] = await waitReceived(rf, 1);
  assert.ok((await verify(connector, cb!)).ok);
  const text = cb!.rawBody.toString('utf8');
  // One byte of the body changed (the event type), the signature of another body, a signature by the merchant key.
  assert.deepEqual(await verify(connector, { headers: cb!.headers, rawBody: Buffer.from(text.replace('REFUND.SUCCESS', 'REFUND.CLOSED')) }), { ok: false, reason: 'invalid signature' });
  const resigned = signatureHeaders(text, keys.platformPublicKeyId, keys.merchantPrivateKey);
  assert.deepEqual(await verify(connector, { headers: lower(resigned), rawBody: cb!.rawBody }), { ok: false, reason: 'invalid signature' });
  // Checked 301 s later.
  assert.match(((await verify(makeConnector(base, { now: () => new Date(Date.now() + 301_000) }), cb!)) as { reason: string }).reason, /away from now/);
  // Signed with the platform key, but the encrypted resource swapped for one under another APIv3 key.
  const body = JSON.parse(text);
  const otherKey = Buffer.from('Z'.repeat(32));
  const plain = JSON.parse(decryptResource(body.resource, Buffer.from(keys.apiV3Key))!.toString());
  const swapped = JSON.stringify({ ...body, resource: encryptResource(JSON.stringify(plain), otherKey, 'refund', 'refund') });
  assert.deepEqual(await verify(connector, { headers: lower(signatureHeaders(swapped, keys.platformPublicKeyId, keys.platformPrivateKey)), rawBody: Buffer.from(swapped) }), { ok: false, reason: 'resource decryption failed' });
  // Genuinely signed and encrypted, but saying REFUND.SUCCESS over an ABNORMAL refund.
  const contradiction = JSON.stringify({ ...body, resource: encryptResource(JSON.stringify({ ...plain, refund_status: 'ABNORMAL' }), Buffer.from(keys.apiV3Key), 'refund', 'refund') });
  const r = await verify(connector, { headers: lower(signatureHeaders(contradiction, keys.platformPublicKeyId, keys.platformPrivateKey)), rawBody: Buffer.from(contradiction) });
  assert.deepEqual(r, { ok: false, reason: 'refund_status ABNORMAL contradicts event_type REFUND.SUCCESS' });
});

function lower(h: Record<string, string>): Record<string, string> {
  return { 'content-type': 'application/json', ...Object.fromEntries(Object.entries(h).map(([k, v]) => [k.toLowerCase(), v])) };
}

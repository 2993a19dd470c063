/**
 * Connector unit tests without the sandbox: notification verification against the published
 * Alipay notification, input refusals, locally signed page/wap/app requests, error mapping.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { AlipayRequestError } from 'alipay-sdk';
import { ChannelError, type ChannelConnector } from '../types.ts';
import { createAlipayConnector, toChannelError, type AlipayAuditEntry } from './connector.ts';
import { generateAlipaySandboxKeys, type AlipaySandboxKeys } from './sandbox.ts';
import { signAlipayNotification, signAlipayResponse, verifyAlipayRequestSignature } from './sign.ts';
import { parseAlipayTime, parseFormText } from './transformers.ts';

const fixtures = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../test/fixtures/alipay');
const notify = JSON.parse(fs.readFileSync(path.join(fixtures, 'notify.json'), 'utf8')) as Record<string, string>;
const notifyKey = fs.readFileSync(path.join(fixtures, 'alipay-public-key.pem'), 'utf8');

let keys: AlipaySandboxKeys;
let audits: AlipayAuditEntry[] = [];
/** A connector whose Alipay public key is the one that signed the published notification. */
let fixtureConnector: ChannelConnector;
/** A connector whose Alipay key pair we hold, so we can sign notifications ourselves. */
let ownConnector: ChannelConnector;
const GATEWAY = 'http://127.0.0.1:9/gateway.do';

before(async () => {
  keys = await generateAlipaySandboxKeys();
  fixtureConnector = createAlipayConnector({ appId: notify['app_id']!, privateKey: keys.appPrivateKey, alipayPublicKey: notifyKey, gateway: GATEWAY });
  ownConnector = createAlipayConnector({
    appId: '2021000000000001', privateKey: keys.appPrivateKey, alipayPublicKey: keys.alipayPublicKey, gateway: GATEWAY,
    audit: (e) => audits.push(e),
  });
});

const form = (params: Record<string, string>) => Buffer.from(new URLSearchParams(params).toString(), 'utf8');
const FORM_TYPE = 'application/x-www-form-urlencoded; charset=utf-8';
const cny = async () => 'CNY';

test('verifyNotification accepts the published Alipay notification and translates it', async () => {
  const result = await fixtureConnector.verifyNotification({ headers: {}, rawBody: form(notify), contentType: FORM_TYPE }, cny);
  assert.ok(result.ok, !result.ok ? result.reason : '');
  assert.deepEqual(result.notification, {
    eventId: '2019081500222155624068450559358070',
    kind: 'payment',
    appId: '2019073166072302',
    trade: {
      state: 'succeeded',
      channelReference: '20190815155618536-564-57',
      channelTransactionId: '2019081522001468450512505578',
      amountMinor: 10n,
      currency: 'CNY',
      rawStatus: 'TRADE_SUCCESS',
    },
  });
  // Unknown reference: currency defaults to CNY.
  const unknown = await fixtureConnector.verifyNotification({ headers: { 'content-type': FORM_TYPE }, rawBody: form(notify) }, async () => null);
  assert.ok(unknown.ok);
});

test('verifyNotification rejects a tampered published notification, byte by byte', async () => {
  const raw = form(notify);
  const probes = ['total_amount=0.10', 'trade_status=TRADE_SUCCESS', 'out_trade_no=2019', 'app_id=2019'];
  for (const probe of probes) {
    assert.ok(raw.indexOf(probe) >= 0, probe);
    const at = raw.indexOf(probe) + probe.length - 1;
    const tampered = Buffer.from(raw);
    tampered[at] = tampered[at] === 0x30 ? 0x31 : 0x30;
    const result = await fixtureConnector.verifyNotification({ headers: {}, rawBody: tampered, contentType: FORM_TYPE }, cny);
    assert.deepEqual(result, { ok: false, reason: 'invalid signature' }, probe);
  }
  const signAt = raw.indexOf('sign=') + 40;
  const badSign = Buffer.from(raw);
  badSign[signAt] = badSign[signAt] === 0x41 ? 0x42 : 0x41;
  assert.deepEqual(await fixtureConnector.verifyNotification({ headers: {}, rawBody: badSign }, cny), { ok: false, reason: 'invalid signature' });
  // Right notification, wrong Alipay key.
  assert.deepEqual(await ownConnector.verifyNotification({ headers: {}, rawBody: raw }, cny), { ok: false, reason: 'invalid signature' });
});

test('verifyNotification rejects malformed messages with a clear reason and never throws', async () => {
  const cases: Array<[string, Buffer, string | undefined, RegExp]> = [
    ['json body', Buffer.from(JSON.stringify(notify)), 'application/json', /content type/],
    ['empty body', Buffer.alloc(0), FORM_TYPE, /empty/],
    ['not UTF-8', Buffer.concat([form(notify), Buffer.from([0x26, 0x78, 0x3d, 0xff, 0xfe])]), FORM_TYPE, /UTF-8/],
    ['repeated key', Buffer.concat([form(notify), Buffer.from('&total_amount=0.10')]), FORM_TYPE, /repeated/],
    ['missing sign', form({ ...notify, sign: '' }), FORM_TYPE, /missing sign/],
    ['RSA (SHA1)', form({ ...notify, sign_type: 'RSA' }), FORM_TYPE, /sign_type/],
    ['GBK charset', form({ ...notify, charset: 'gbk' }), FORM_TYPE, /charset/],
    ['huge body', Buffer.alloc(70 * 1024, 0x61), FORM_TYPE, /larger than/],
    ['bad escape', Buffer.from('a=%zz&sign=x'), FORM_TYPE, /percent/],
  ];
  for (const [name, rawBody, contentType, reason] of cases) {
    const result = await fixtureConnector.verifyNotification({ headers: {}, rawBody, ...(contentType ? { contentType } : {}) }, cny);
    assert.equal(result.ok, false, name);
    assert.match(!result.ok ? result.reason : '', reason, name);
  }
});

test('verifyNotification checks fields and amount after the signature', async () => {
  const base: Record<string, string> = { ...notify, app_id: '2021000000000001', auth_app_id: '2021000000000001' };
  const sign = (p: Record<string, string>) => form(signAlipayNotification(p, keys.alipayPrivateKey));
  assert.ok((await ownConnector.verifyNotification({ headers: {}, rawBody: sign(base) }, cny)).ok, 'our own signing verifies');

  const { notify_id: _n, ...noNotifyId } = base;
  const r1 = await ownConnector.verifyNotification({ headers: {}, rawBody: sign(noNotifyId) }, cny);
  assert.deepEqual(r1, { ok: false, reason: 'missing fields: notify_id' });
  for (const bad of ['abc', '0.101', '-1.00', '0.00', '1e3']) {
    const r = await ownConnector.verifyNotification({ headers: {}, rawBody: sign({ ...base, total_amount: bad }) }, cny);
    assert.equal(r.ok, false, bad);
    assert.match(!r.ok ? r.reason : '', /total_amount/);
  }
  const other = await ownConnector.verifyNotification({ headers: {}, rawBody: sign({ ...base, notify_type: 'servicemarket_order_notify' }) }, cny);
  assert.deepEqual(other, { ok: false, reason: 'unsupported notify_type servicemarket_order_notify' });
  const weird = await ownConnector.verifyNotification({ headers: {}, rawBody: sign(base) }, async () => 'XXX');
  assert.equal(weird.ok, false);
  // Unknown status stays pending; closed maps to closed; the currency comes from our payment.
  const pending = await ownConnector.verifyNotification({ headers: {}, rawBody: sign({ ...base, trade_status: 'SOMETHING_NEW' }) }, cny);
  assert.equal(pending.ok && pending.notification.kind === 'payment' && pending.notification.trade.state, 'pending');
  const closed = await ownConnector.verifyNotification({ headers: {}, rawBody: sign({ ...base, trade_status: 'TRADE_CLOSED' }) }, cny);
  assert.equal(closed.ok && closed.notification.kind === 'payment' && closed.notification.trade.state, 'closed');
  const finished = await ownConnector.verifyNotification({ headers: {}, rawBody: sign({ ...base, trade_status: 'TRADE_FINISHED' }) }, cny);
  assert.equal(finished.ok && finished.notification.kind === 'payment' && finished.notification.trade.state, 'succeeded');
});

test('acknowledgements are Alipay\'s exact bodies', () => {
  assert.deepEqual(ownConnector.ackSuccess(), { statusCode: 200, contentType: 'text/plain', body: 'success' });
  assert.deepEqual(ownConnector.ackFailure('bad'), { statusCode: 200, contentType: 'text/plain', body: 'fail' });
  assert.deepEqual([...ownConnector.methods], ['qr', 'page', 'wap', 'app']);
});

const baseInput = {
  channelReference: 'kp_ref_001',
  paymentId: 'pay_test', orderId: 'ord_test', customerId: 'cus_test', items: [],
  amountMinor: 1234n,
  currency: 'CNY',
  subject: '课程 A&B',
  notifyUrl: 'http://127.0.0.1:4000/v1/notify/alipay',
  expiresAt: new Date('2026-11-22T04:00:00Z'),
};

async function rejects(p: Promise<unknown>, code: string, retryable: boolean) {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof ChannelError, String(err));
    assert.equal(err.code, code);
    assert.equal(err.retryable, retryable);
    assert.equal(err.channel, 'alipay');
    return true;
  });
}

test('refuses what Alipay cannot do before any call: currency, method, amount, reference, subject', async () => {
  audits = [];
  await rejects(ownConnector.createPayment({ ...baseInput, method: 'qr', currency: 'USD' }), 'currency_not_supported', false);
  await rejects(ownConnector.createPayment({ ...baseInput, method: 'qr', currency: 'usd' }), 'currency_not_supported', false);
  await rejects(ownConnector.queryPayment({ channelReference: 'x', currency: 'EUR' }), 'currency_not_supported', false);
  await rejects(ownConnector.closePayment({ channelReference: 'x', currency: 'JPY' }), 'currency_not_supported', false);
  await rejects(ownConnector.createPayment({ ...baseInput, method: 'card' }), 'method_not_supported', false);
  await rejects(ownConnector.createPayment({ ...baseInput, method: 'qr', amountMinor: 0n }), 'amount_invalid', false);
  await rejects(ownConnector.createPayment({ ...baseInput, method: 'qr', amountMinor: 10_000_000_001n }), 'amount_invalid', false);
  await rejects(ownConnector.createPayment({ ...baseInput, method: 'qr', channelReference: 'a b' }), 'reference_invalid', false);
  await rejects(ownConnector.createPayment({ ...baseInput, method: 'qr', channelReference: 'x'.repeat(65) }), 'reference_invalid', false);
  await rejects(ownConnector.createPayment({ ...baseInput, method: 'qr', subject: '  ' }), 'subject_invalid', false);
  assert.equal(audits.length, 0, 'nothing was sent');
});

test('page, wap and app payments are signed locally, verifiably, with GMT+8 times and no empty parameters', async () => {
  const appPub = keys.appPublicKey;
  audits = [];
  const page = await ownConnector.createPayment({ ...baseInput, method: 'page', returnUrl: 'https://shop.example/return?x=1' });
  assert.equal(page.action.type, 'redirect');
  const pageUrl = new URL(page.action.type === 'redirect' ? page.action.url : '');
  assert.equal(`${pageUrl.origin}${pageUrl.pathname}`, 'http://127.0.0.1:9/gateway.do');
  const pageParams = Object.fromEntries(pageUrl.searchParams);
  assert.equal(verifyAlipayRequestSignature(pageParams, appPub), true);
  assert.equal(pageParams['method'], 'alipay.trade.page.pay');
  assert.equal(pageParams['return_url'], 'https://shop.example/return?x=1');
  assert.equal(pageParams['notify_url'], baseInput.notifyUrl);
  assert.ok(Object.values(pageParams).every((v) => v !== ''), 'no empty parameter');
  const biz = JSON.parse(pageParams['biz_content']!);
  assert.deepEqual(biz, { out_trade_no: 'kp_ref_001', total_amount: '12.34', subject: '课程 A&B', product_code: 'FAST_INSTANT_TRADE_PAY', time_expire: '2026-11-22 12:00:00' });
  const ts = parseAlipayTime(pageParams['timestamp']!);
  assert.ok(ts && Math.abs(ts.getTime() - Date.now()) < 60_000, `timestamp ${pageParams['timestamp']} is GMT+8 now`);

  const wap = await ownConnector.createPayment({ ...baseInput, method: 'wap', returnUrl: 'https://shop.example/r' });
  const wapParams = Object.fromEntries(new URL(wap.action.type === 'redirect' ? wap.action.url : '').searchParams);
  assert.equal(verifyAlipayRequestSignature(wapParams, appPub), true);
  assert.equal(JSON.parse(wapParams['biz_content']!).product_code, 'QUICK_WAP_WAY');
  assert.equal(JSON.parse(wapParams['biz_content']!).quit_url, 'https://shop.example/r');

  const noReturn = await ownConnector.createPayment({ ...baseInput, method: 'wap' });
  const noReturnParams = Object.fromEntries(new URL(noReturn.action.type === 'redirect' ? noReturn.action.url : '').searchParams);
  assert.equal('return_url' in noReturnParams, false);
  assert.equal('quit_url' in JSON.parse(noReturnParams['biz_content']!), false);

  const app = await ownConnector.createPayment({ ...baseInput, method: 'app' });
  assert.equal(app.action.type, 'app');
  const orderString = app.action.type === 'app' ? String(app.action.params['order_string']) : '';
  const parsed = parseFormText(orderString);
  assert.ok(parsed.ok);
  assert.equal(verifyAlipayRequestSignature(parsed.params, appPub), true);
  assert.equal(parsed.params['method'], 'alipay.trade.app.pay');
  assert.equal(JSON.parse(parsed.params['biz_content']!).product_code, 'QUICK_MSECURITY_PAY');

  assert.equal(audits.length, 4);
  for (const a of audits) {
    assert.equal(a.operation, 'create_payment');
    assert.equal(a.channelReference, 'kp_ref_001');
    assert.doesNotMatch(JSON.stringify(a), /sign=(?!\[REDACTED\])/, 'signature redacted from the audit');
    assert.doesNotMatch(JSON.stringify(a), /PRIVATE KEY/);
  }
});

test('accepts keys as PEM (PKCS#1 or PKCS#8) or as Alipay\'s bare base64', async () => {
  const { createPrivateKey } = await import('node:crypto');
  const pkcs1 = createPrivateKey(keys.appPrivateKey).export({ type: 'pkcs1', format: 'pem' }).toString();
  const bare = keys.appPrivateKey.replace(/-----[^-]+-----/g, '').replace(/\s+/g, '');
  const barePub = keys.alipayPublicKey.replace(/-----[^-]+-----/g, '').replace(/\s+/g, '');
  for (const privateKey of [pkcs1, bare]) {
    const c = createAlipayConnector({ appId: '2021000000000001', privateKey, alipayPublicKey: barePub, gateway: GATEWAY });
    const r = await c.createPayment({ ...baseInput, method: 'page' });
    const params = Object.fromEntries(new URL(r.action.type === 'redirect' ? r.action.url : '').searchParams);
    assert.equal(verifyAlipayRequestSignature(params, keys.appPublicKey), true);
  }
  assert.throws(() => createAlipayConnector({ appId: '', privateKey: pkcs1, alipayPublicKey: barePub, gateway: GATEWAY }), /appId/);
  assert.throws(() => createAlipayConnector({ appId: 'x', privateKey: pkcs1, alipayPublicKey: barePub, gateway: 'not a url' }));
});

// ---- Transport and protocol failures against small fake gateways ---------------------------------

let server: http.Server;
let base = '';
let handler: (req: http.IncomingMessage, res: http.ServerResponse) => void = (_q, s) => s.end();
before(async () => {
  server = http.createServer((req, res) => handler(req, res));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
after(async () => {
  server.closeAllConnections();
  await new Promise<void>((r) => server.close(() => r()));
});

function connectorAt(gateway: string, timeoutMs?: number) {
  return createAlipayConnector({
    appId: '2021000000000001', privateKey: keys.appPrivateKey, alipayPublicKey: keys.alipayPublicKey, gateway,
    ...(timeoutMs ? { timeoutMs } : {}), audit: (e) => audits.push(e),
  });
}

test('transport failures are retryable ChannelErrors, and audited', async () => {
  audits = [];
  const closed = http.createServer();
  await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
  const port = (closed.address() as AddressInfo).port;
  await new Promise<void>((r) => closed.close(() => r()));
  await rejects(connectorAt(`http://127.0.0.1:${port}/gateway.do`).queryPayment({ channelReference: 'r1', currency: 'CNY' }), 'transport_error', true);
  assert.equal(audits.length, 1);
  assert.equal(audits[0]!.operation, 'query_payment');
  assert.match(audits[0]!.error ?? '', /transport_error/);

  handler = () => {}; // never answers
  await rejects(connectorAt(`${base}/gateway.do`, 300).queryPayment({ channelReference: 'r1', currency: 'CNY' }), 'transport_error', true);
});

test('HTTP errors, garbage and unsigned responses map to the right ChannelError', async () => {
  handler = (_q, s) => s.writeHead(502).end('bad gateway');
  await rejects(connectorAt(`${base}/gateway.do`).queryPayment({ channelReference: 'r1', currency: 'CNY' }), 'http_error', true);
  handler = (_q, s) => s.writeHead(200, { 'content-type': 'text/html' }).end('<html>captive portal</html>');
  await rejects(connectorAt(`${base}/gateway.do`).queryPayment({ channelReference: 'r1', currency: 'CNY' }), 'invalid_response', true);
  handler = (_q, s) => s.writeHead(200).end('{"alipay_trade_query_response":{"code":"10000","msg":"Success","trade_status":"TRADE_SUCCESS"}}');
  await rejects(connectorAt(`${base}/gateway.do`).queryPayment({ channelReference: 'r1', currency: 'CNY' }), 'invalid_response_signature', false);
  handler = (_q, s) => s.writeHead(200).end('{"alipay_trade_query_response":{"code":"10000","msg":"Success","trade_status":"TRADE_SUCCESS"},"sign":"AAAA"}');
  await rejects(connectorAt(`${base}/gateway.do`).queryPayment({ channelReference: 'r1', currency: 'CNY' }), 'invalid_response_signature', false);
});

test('toChannelError keeps ChannelErrors and maps unknown failures as not retryable', () => {
  const e = new ChannelError('x', 'alipay', 'c', true);
  assert.equal(toChannelError(e), e);
  assert.equal(toChannelError(new Error('boom')).code, 'unexpected_error');
  assert.equal(toChannelError(new AlipayRequestError('something else')).retryable, false);
  assert.equal(toChannelError(new AlipayRequestError('HTTP 请求错误, status: 404')).retryable, false);
});

// ---- Refunds: notification translation and answers from fake gateways -----------------------------

test('a refund notification (refund_fee / out_biz_no) translates to kind refund; a payment one stays a payment', async () => {
  const base: Record<string, string> = { ...notify, app_id: '2021000000000001', auth_app_id: '2021000000000001', total_amount: '100.00' };
  const sign = (p: Record<string, string>) => form(signAlipayNotification(p, keys.alipayPrivateKey));
  const verify = (p: Record<string, string>) => ownConnector.verifyNotification({ headers: {}, rawBody: sign(p), contentType: FORM_TYPE }, cny);

  const partial = await verify({ ...base, trade_status: 'TRADE_SUCCESS', refund_fee: '30.00', gmt_refund: '2026-11-22 12:00:00.123', out_biz_no: 'KPREFUND1' });
  assert.deepEqual(partial, {
    ok: true,
    notification: {
      eventId: notify['notify_id'], kind: 'refund', appId: '2021000000000001',
      refund: { state: 'succeeded', channelReference: notify['out_trade_no'], refundReference: 'KPREFUND1', currency: 'CNY', rawStatus: 'TRADE_SUCCESS' },
    },
  });
  const full = await verify({ ...base, trade_status: 'TRADE_CLOSED', refund_fee: '100.00', out_biz_no: 'KPREFUND2' });
  assert.ok(full.ok && full.notification.kind === 'refund');
  assert.equal(full.notification.refund.amountMinor, undefined, 'refund_fee is the refunded total, not this refund');
  assert.equal(full.notification.refund.rawStatus, 'TRADE_CLOSED');
  // A refund made elsewhere (no out_biz_no): a refund without our reference, for the caller to ignore.
  const noRef = await verify({ ...base, refund_fee: '1.00' });
  assert.ok(noRef.ok && noRef.notification.kind === 'refund');
  assert.equal(noRef.notification.refund.refundReference, undefined);
  const onlyRef = await verify({ ...base, out_biz_no: 'KPREFUND3' });
  assert.ok(onlyRef.ok && onlyRef.notification.kind === 'refund' && onlyRef.notification.refund.refundReference === 'KPREFUND3');
  // refund_fee 0.00 alone is no refund.
  const zero = await verify({ ...base, refund_fee: '0.00' });
  assert.ok(zero.ok && zero.notification.kind === 'payment');
  const hkd = await ownConnector.verifyNotification({ headers: {}, rawBody: sign({ ...base, out_biz_no: 'R' }) }, async () => 'HKD');
  assert.ok(hkd.ok && hkd.notification.kind === 'refund' && hkd.notification.refund.currency === 'HKD');
});

test('a refund notification with an impossible refund_fee, or tampered, is rejected', async () => {
  const base: Record<string, string> = { ...notify, app_id: '2021000000000001', total_amount: '100.00', out_biz_no: 'KPREFUND1' };
  const sign = (p: Record<string, string>) => form(signAlipayNotification(p, keys.alipayPrivateKey));
  for (const bad of ['abc', '100.01', '-1.00', '0.00', '1.001', '1e2']) {
    const r = await ownConnector.verifyNotification({ headers: {}, rawBody: sign({ ...base, refund_fee: bad }) }, cny);
    assert.equal(r.ok, false, bad);
    assert.match(!r.ok ? r.reason : '', /refund_fee/, bad);
  }
  const genuine = sign({ ...base, refund_fee: '10.00' }).toString('utf8');
  for (const [from, to] of [['out_biz_no=KPREFUND1', 'out_biz_no=KPREFUND9'], ['refund_fee=10.00', 'refund_fee=20.00']] as const) {
    const r = await ownConnector.verifyNotification({ headers: {}, rawBody: Buffer.from(genuine.replace(from, to)) }, cny);
    assert.deepEqual(r, { ok: false, reason: 'invalid signature' }, from);
  }
  // Added after signing: a payment notification cannot be turned into a refund one.
  const payment = sign({ ...notify, app_id: '2021000000000001' }).toString('utf8');
  const added = await ownConnector.verifyNotification({ headers: {}, rawBody: Buffer.from(`${payment}&out_biz_no=KPREFUND1`) }, cny);
  assert.deepEqual(added, { ok: false, reason: 'invalid signature' });
});

/** A fake gateway answering each method with `answers[method]`, signed by "Alipay" unless `raw`. */
function fakeGateway(answers: Record<string, Record<string, unknown> | { status: number }>) {
  handler = (req, res) => {
    const method = new URL(req.url ?? '/', 'http://x').searchParams.get('method') ?? '';
    const answer = answers[method];
    req.resume();
    req.on('end', () => {
      if (!answer) return res.writeHead(500).end();
      if ('status' in answer && typeof answer.status === 'number') return res.writeHead(answer.status).end('unavailable');
      const key = `${method.replaceAll('.', '_')}_response`;
      res.writeHead(200, { 'content-type': 'application/json; charset=utf-8' }).end(signAlipayResponse(key, answer, keys.alipayPrivateKey));
    });
  };
}

const refundReq = { channelReference: 'kp_ref_1', refundReference: 'KPR1', amountMinor: 1000n, paymentAmountMinor: 5000n, currency: 'CNY', notifyUrl: 'http://127.0.0.1/n' };
const refundOk = (fund_change?: string) => ({ code: '10000', msg: 'Success', trade_no: '2026112222001400000000000001', out_trade_no: 'kp_ref_1', refund_fee: '10.00', ...(fund_change ? { fund_change } : {}) });
const queryAnswer = (over: Record<string, unknown> = {}) => ({ code: '10000', msg: 'Success', trade_no: '2026112222001400000000000001', out_trade_no: 'kp_ref_1', out_request_no: 'KPR1', ...over });
const refundFailure = (sub_code: string) => ({ code: '40004', msg: 'Business Failed', sub_code, sub_msg: sub_code });

test('refund answers: fund_change N is confirmed by the query, and a failed confirmation is pending, never an error', async () => {
  const c = connectorAt(`${base}/gateway.do`);
  fakeGateway({ 'alipay.trade.refund': refundOk('N'), 'alipay.trade.fastpay.refund.query': { status: 502 } });
  assert.deepEqual(await c.refundPayment!(refundReq), { state: 'pending', refundReference: 'KPR1', channelReference: 'kp_ref_1', amountMinor: 1000n, currency: 'CNY', rawStatus: 'fund_change=N' });
  fakeGateway({ 'alipay.trade.refund': refundOk(), 'alipay.trade.fastpay.refund.query': queryAnswer({ refund_amount: '10.00', refund_status: 'REFUND_SUCCESS' }) });
  assert.deepEqual(await c.refundPayment!(refundReq), { state: 'succeeded', refundReference: 'KPR1', channelReference: 'kp_ref_1', amountMinor: 1000n, currency: 'CNY', rawStatus: 'REFUND_SUCCESS' });
  fakeGateway({ 'alipay.trade.refund': refundOk('N'), 'alipay.trade.fastpay.refund.query': queryAnswer({ refund_amount: '10.00' }) });
  assert.equal((await c.refundPayment!(refundReq)).rawStatus, 'fund_change=N');
  // Unknown statuses are pending.
  fakeGateway({ 'alipay.trade.fastpay.refund.query': queryAnswer({ refund_amount: '10.00', refund_status: 'REFUND_PROCESSING' }) });
  assert.deepEqual(await c.queryRefund!({ channelReference: 'kp_ref_1', refundReference: 'KPR1', currency: 'CNY' }), {
    state: 'pending', refundReference: 'KPR1', channelReference: 'kp_ref_1', amountMinor: 1000n, currency: 'CNY', rawStatus: 'REFUND_PROCESSING',
  });
});

test('refund refusals map to ChannelErrors: over-refund clear and final, system error retryable, bad answers refused', async () => {
  const c = connectorAt(`${base}/gateway.do`);
  audits = [];
  for (const [sub, code, retryable] of [
    ['ACQ.REASON_TRADE_REFUND_FEE_ERR', 'refund_exceeds_remaining', false],
    ['ACQ.REFUND_AMT_NOT_EQUAL_TOTAL', 'refund_exceeds_remaining', false],
    ['ACQ.SYSTEM_ERROR', 'ACQ.SYSTEM_ERROR', true],
    ['ACQ.SELLER_BALANCE_NOT_ENOUGH', 'ACQ.SELLER_BALANCE_NOT_ENOUGH', false],
    ['ACQ.TRADE_HAS_FINISHED', 'ACQ.TRADE_HAS_FINISHED', false],
  ] as const) {
    fakeGateway({ 'alipay.trade.refund': refundFailure(sub) });
    await rejects(c.refundPayment!(refundReq), code, retryable);
  }
  assert.equal(audits.length, 5);
  assert.ok(audits.every((a) => a.operation === 'refund_payment' && a.channelReference === 'kp_ref_1'));

  fakeGateway({ 'alipay.trade.refund': { ...refundOk('Y'), out_trade_no: 'kp_other' } });
  await rejects(c.refundPayment!(refundReq), 'invalid_response', true); // accepted, about another trade: outcome unknown
  fakeGateway({ 'alipay.trade.fastpay.refund.query': queryAnswer({ out_request_no: 'KPR2', refund_status: 'REFUND_SUCCESS' }) });
  await rejects(c.queryRefund!({ channelReference: 'kp_ref_1', refundReference: 'KPR1', currency: 'CNY' }), 'invalid_response', false);
  fakeGateway({ 'alipay.trade.fastpay.refund.query': queryAnswer({ refund_amount: 'ten', refund_status: 'REFUND_SUCCESS' }) });
  await rejects(c.queryRefund!({ channelReference: 'kp_ref_1', refundReference: 'KPR1', currency: 'CNY' }), 'invalid_response', false);
  fakeGateway({ 'alipay.trade.fastpay.refund.query': refundFailure('ACQ.TRADE_NOT_EXIST') });
  await rejects(c.queryRefund!({ channelReference: 'kp_ref_1', refundReference: 'KPR1', currency: 'CNY' }), 'ACQ.TRADE_NOT_EXIST', false);
  // An unsigned answer or no answer: the refund may have happened — retryable.
  handler = (_q, s) => s.writeHead(200).end('{"alipay_trade_refund_response":{"code":"10000","msg":"Success","fund_change":"Y"}}');
  await rejects(c.refundPayment!(refundReq), 'invalid_response_signature', true);
  handler = (_q, s) => s.writeHead(502).end('bad gateway');
  await rejects(c.refundPayment!(refundReq), 'http_error', true);
});

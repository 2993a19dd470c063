/**
 * Connector tests without the sandbox: the official example request and response through the SDK
 * (clock and nonce pinned), callbacks (the Go SDK's genuine one, then our own signed ones with
 * every way to forge or break them), refusals before any call, and error mapping against small
 * fake servers.
 */
import { after, afterEach, before, mock, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import { createPrivateKey, generateKeyPairSync } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { Formatter, Wechatpay } from 'wechatpay-axios-plugin';
import { ChannelError, type ChannelConnector, type CreatePaymentInput, type RefundRequest } from '../types.ts';
import { createWechatpayConnector, toChannelError, type WechatpayAuditEntry, type WechatpayConfig } from './connector.ts';
import { encryptResource, parseAuthorization, requestMessage, rsaVerify, signatureHeaders, verifyJsapiPayParams } from './sign.ts';

const fixtures = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../test/fixtures/wechatpay');
const read = (p: string) => fs.readFileSync(path.join(fixtures, p), 'utf8');
const json = (p: string) => JSON.parse(read(p));

const exampleKeyPem = createPrivateKey({ key: Buffer.from(read('official-doc/apiclient_test_key.pkcs8.der.base64.txt').trim(), 'base64'), format: 'der', type: 'pkcs8' })
  .export({ type: 'pkcs8', format: 'pem' }).toString();
const requestVectors = json('official-doc/request-signatures.json') as { merchant: { mchid: string; serial_no: string }; vectors: Array<Record<string, string>> };
const responseFixture = json('official-doc/response-verify.json') as { headers: Record<string, string>; body: string; publicKey: string };
const officialPubKeyId = responseFixture.headers['Wechatpay-Serial']!;
const officialPubPem = read(`official-doc/${responseFixture.publicKey}`);
const goNotification = json('go-sdk/notification.json') as { headers: Record<string, string>; mockedNow: number };
const goNotificationBody = fs.readFileSync(path.join(fixtures, 'go-sdk/notification.body.txt'));

const pemPair = () => generateKeyPairSync('rsa', { modulusLength: 2048, publicKeyEncoding: { type: 'spki', format: 'pem' }, privateKeyEncoding: { type: 'pkcs8', format: 'pem' } });
const merchant = pemPair();
const platform = pemPair();
const PLATFORM_ID = 'PUB_KEY_ID_0000000000000000000000000000000042';
const MCHID = '1900000109';
const APPID = 'wx8888888888888888';
const APIV3_KEY = 'a'.repeat(16) + 'B'.repeat(16);
const NOW = new Date('2026-11-22T08:00:00Z');

// ---- A small HTTP server whose answers each test chooses ---------------------------------------

interface Captured { method: string; url: string; headers: http.IncomingHttpHeaders; body: Buffer }
let server: http.Server;
let base = '';
let captured: Captured[] = [];
let handler: (req: Captured, res: http.ServerResponse) => void = (_q, s) => s.end();

before(async () => {
  server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const c = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks) };
      captured.push(c);
      handler(c, res);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
});
after(async () => {
  server.closeAllConnections();
  await new Promise<void>((r) => server.close(() => r()));
});
afterEach(() => {
  mock.timers.reset();
  mock.restoreAll();
  captured = [];
});

/** Answer signed by our "platform" key (the way the sandbox and WeChat Pay do). */
function signedAnswer(res: http.ServerResponse, status: number, body: string, tamper?: (h: Record<string, string>) => void) {
  const headers = signatureHeaders(body, PLATFORM_ID, platform.privateKey);
  tamper?.(headers);
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', ...headers }).end(body);
}

let audits: WechatpayAuditEntry[] = [];

function connector(over: Partial<WechatpayConfig> = {}): ChannelConnector {
  return createWechatpayConnector({
    mchid: MCHID, appid: APPID, merchantSerial: 'ABCDEF0123456789ABCDEF0123456789ABCDEF01', privateKey: merchant.privateKey,
    platformKeys: { [PLATFORM_ID]: platform.publicKey }, apiV3Key: APIV3_KEY, baseURL: base, timeoutMs: 3000,
    audit: (e) => audits.push(e), now: () => NOW, ...over,
  });
}

const input = (over: Partial<CreatePaymentInput> = {}): CreatePaymentInput => ({
  channelReference: 'KP01JD7ZQ8X4R2M5N6P7Q8R9S0T1UV', paymentId: 'pay_test', orderId: 'ord_test', customerId: 'cr_test', items: [],
  method: 'native', amountMinor: 1234n, currency: 'CNY', subject: '课程：TypeScript 进阶', notifyUrl: 'https://shop.example/v1/notify/wechatpay',
  expiresAt: new Date('2026-11-22T09:00:00Z'), ...over,
});

async function rejects(p: Promise<unknown>, code: string, retryable?: boolean) {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof ChannelError, String(err));
    assert.equal(err.code, code, err.message);
    assert.equal(err.channel, 'wechatpay');
    if (retryable !== undefined) assert.equal(err.retryable, retryable, err.message);
    return true;
  });
}

// ---- Known answers through the SDK -------------------------------------------------------------------

/** The SDK exactly as the connector builds it, with WeChat Pay's example merchant (key, mchid, serial). */
function exampleSdk() {
  const { mchid, serial_no } = requestVectors.merchant;
  return new Wechatpay({ mchid, serial: serial_no, privateKey: exampleKeyPem, certs: { [officialPubKeyId]: officialPubPem }, baseURL: base, timeout: 3000 });
}

test('through the SDK, with the example key, clock and nonce pinned, requests carry the official signatures', async () => {
  const { mchid, serial_no } = requestVectors.merchant;
  const vectors = requestVectors.vectors.filter((v) => v['id'] === 'get-path-param' || v['id']!.startsWith('post-body-jsapi'));
  assert.equal(vectors.length, 3);
  for (const v of vectors) {
    const sdk = exampleSdk();
    mock.method(Formatter, 'nonce', () => v['nonce']);
    mock.timers.enable({ apis: ['Date'], now: Number(v['timestamp']) * 1000 });
    handler = (_q, s) => s.writeHead(204).end(); // unsigned: the SDK refuses the answer, which we also check
    const body = v['body'] ? JSON.parse(v['body']) : undefined;
    const call = v['method'] === 'GET' ? sdk.chain(v['url']!.slice(1)).get() : sdk.chain(v['url']!.slice(1)).post(body);
    await rejects(call.catch((err: unknown) => { throw toChannelError(err); }), 'invalid_response_signature', false);
    const req = captured.at(-1)!;
    assert.equal(req.method, v['method']);
    assert.equal(req.url, v['url']);
    assert.equal(req.body.toString('utf8'), v['body'], 'the exact body bytes were sent');
    const auth = parseAuthorization(req.headers.authorization);
    assert.deepEqual(auth, { mchid, serial_no, timestamp: v['timestamp'], nonce_str: v['nonce'], signature: v['expectedSignature'] }, v['id']);
    mock.timers.reset();
    mock.restoreAll();
  }
});

test('the official signed response verifies through the connector (PUB_KEY_ID mode), clock pinned', async () => {
  const c = connector({ platformKeys: { [officialPubKeyId]: officialPubPem } });
  const answer = (body: string, headers: Record<string, string>) => (_q: Captured, s: http.ServerResponse) => {
    const { 'Content-Length': _len, ...rest } = headers;
    s.writeHead(200, rest).end(body);
  };
  mock.timers.enable({ apis: ['Date'], now: Number(responseFixture.headers['Wechatpay-Timestamp']) * 1000 });
  handler = answer(responseFixture.body, responseFixture.headers);
  const created = await c.createPayment(input());
  assert.deepEqual(created, { action: { type: 'qr_code', qr_code_url: 'weixin://wxpay/bizpayurl?pr=JyC91EIz1' } });

  // One byte changed in the body, a changed nonce, a signature from elsewhere: refused.
  handler = answer(responseFixture.body.replace('JyC91EIz1', 'JyC91EIz2'), responseFixture.headers);
  await rejects(c.createPayment(input()), 'invalid_response_signature', false);
  handler = answer(responseFixture.body, { ...responseFixture.headers, 'Wechatpay-Nonce': responseFixture.headers['Wechatpay-Nonce']!.replace('d8', 'd9') });
  await rejects(c.createPayment(input()), 'invalid_response_signature', false);
  handler = answer(responseFixture.body, { ...responseFixture.headers, 'Wechatpay-Serial': PLATFORM_ID });
  await rejects(c.createPayment(input()), 'invalid_response_signature', false);
  // The genuine answer replayed 301 s later.
  mock.timers.setTime((Number(responseFixture.headers['Wechatpay-Timestamp']) + 301) * 1000);
  handler = answer(responseFixture.body, responseFixture.headers);
  await rejects(c.createPayment(input()), 'invalid_response_signature', false);
});

// ---- Callbacks -------------------------------------------------------------------------------------------

const cny = async () => 'CNY';

test('the Go SDK\'s genuine callback passes the signature check (certificate mode, clock pinned) and stops at decryption', async () => {
  const c = connector({ platformKeys: { D7CE59D1F522D701: read('go-sdk/wechatpay_cert_D7CE59D1F522D701.pem') }, now: () => new Date(goNotification.mockedNow * 1000) });
  const ok = await c.verifyNotification({ headers: goNotification.headers, rawBody: goNotificationBody, contentType: 'application/json' }, cny);
  // Its resource is encrypted with a 16-byte test key; a real APIv3 key (which this connector insists on) is 32 bytes.
  assert.deepEqual(ok, { ok: false, reason: 'resource decryption failed' });
  const tampered = Buffer.from(goNotificationBody);
  tampered[20] = tampered[20]! ^ 1;
  assert.deepEqual(await c.verifyNotification({ headers: goNotification.headers, rawBody: tampered }, cny), { ok: false, reason: 'invalid signature' });
  const late = connector({ platformKeys: { D7CE59D1F522D701: read('go-sdk/wechatpay_cert_D7CE59D1F522D701.pem') }, now: () => new Date((goNotification.mockedNow + 301) * 1000) });
  const stale = await late.verifyNotification({ headers: goNotification.headers, rawBody: goNotificationBody }, cny);
  assert.equal(stale.ok, false);
  assert.match(!stale.ok ? stale.reason : '', /301 s away/);
  const foreign = await connector({ now: () => new Date(goNotification.mockedNow * 1000) }).verifyNotification({ headers: goNotification.headers, rawBody: goNotificationBody }, cny);
  assert.deepEqual(foreign, { ok: false, reason: 'unknown Wechatpay-Serial D7CE59D1F522D701' });
});

interface CallbackOptions { eventType?: string; resource?: Record<string, unknown>; key?: string; signer?: string; serial?: string; at?: Date; aad?: string; aadInBody?: string; originalType?: string; envelope?: Record<string, unknown> }

function transaction(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    mchid: MCHID, appid: APPID, out_trade_no: 'KP01JD7ZQ8X4R2M5N6P7Q8R9S0T1UV', transaction_id: '4200000985202611224234534876',
    trade_type: 'NATIVE', trade_state: 'SUCCESS', trade_state_desc: '支付成功', bank_type: 'OTHERS', attach: '', success_time: '2026-11-22T16:00:00+08:00',
    payer: { openid: 'oUpF8uMuAJO_M2pxb1Q9zNjWeS6o' }, amount: { total: 1234, payer_total: 1234, currency: 'CNY', payer_currency: 'CNY' }, ...over,
  };
}

function callback(o: CallbackOptions = {}): { headers: Record<string, string>; rawBody: Buffer } {
  const encrypted = encryptResource(JSON.stringify(o.resource ?? transaction()), Buffer.from(o.key ?? APIV3_KEY), o.originalType ?? 'transaction', o.aad ?? 'transaction');
  const resource = o.aadInBody === undefined ? encrypted : { ...encrypted, associated_data: o.aadInBody };
  const body = JSON.stringify({
    id: 'EV-2026-0001', create_time: '2026-11-22T16:00:01+08:00', resource_type: 'encrypt-resource', event_type: o.eventType ?? 'TRANSACTION.SUCCESS',
    summary: '支付成功', resource, ...(o.envelope ?? {}),
  });
  const headers = signatureHeaders(body, o.serial ?? PLATFORM_ID, o.signer ?? platform.privateKey, Math.floor((o.at ?? NOW).getTime() / 1000));
  return { headers: { 'content-type': 'application/json', ...Object.fromEntries(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v])) }, rawBody: Buffer.from(body) };
}

test('a signed TRANSACTION.SUCCESS callback becomes a payment snapshot with mchid as appId', async () => {
  const c = connector();
  const r = await c.verifyNotification(callback(), cny);
  assert.deepEqual(r, {
    ok: true,
    notification: {
      eventId: 'EV-2026-0001', kind: 'payment', appId: MCHID,
      trade: { state: 'succeeded', channelReference: 'KP01JD7ZQ8X4R2M5N6P7Q8R9S0T1UV', channelTransactionId: '4200000985202611224234534876', amountMinor: 1234n, currency: 'CNY', rawStatus: 'SUCCESS' },
    },
  });
  assert.equal(c.appId, MCHID);
  // A callback for another merchant decrypts (same key here) but names another mchid: the caller rejects it on appId.
  const other = await c.verifyNotification(callback({ resource: transaction({ mchid: '1230000109' }) }), cny);
  assert.ok(other.ok && other.notification.appId === '1230000109');
  // Unknown trade_state stays pending; missing currency defaults to CNY.
  const odd = await c.verifyNotification(callback({ resource: transaction({ trade_state: 'SOMETHING_NEW', amount: { total: 5 } }) }), cny);
  assert.ok(odd.ok && odd.notification.kind === 'payment');
  assert.equal(odd.notification.trade.state, 'pending');
  assert.equal(odd.notification.trade.currency, 'CNY');
});

/** A REFUND.* resource as WeChat Pay encrypts it (original_type "refund"; the amount has no currency). */
function refundNotice(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    mchid: MCHID, transaction_id: '4200000985202611224234534876', out_trade_no: 'KP01JD7ZQ8X4R2M5N6P7Q8R9S0T1UV', refund_id: '50300506452026112214147497880',
    out_refund_no: 'KP01JD80000000000000REFUND01', refund_status: 'SUCCESS', success_time: '2026-11-22T16:05:00+08:00', user_received_account: '支付用户零钱',
    amount: { total: 1234, refund: 400, payer_total: 1234, payer_refund: 400 }, ...over,
  };
}

const refundCallback = (eventType: string, resource: Record<string, unknown>, over: CallbackOptions = {}) =>
  callback({ eventType, resource, originalType: 'refund', aad: 'refund', ...over });

test('REFUND.SUCCESS / ABNORMAL / CLOSED callbacks become refund snapshots: our refundReference echoed, the refund\'s amount', async () => {
  const c = connector();
  const cases: Array<[string, string, string]> = [['REFUND.SUCCESS', 'SUCCESS', 'succeeded'], ['REFUND.ABNORMAL', 'ABNORMAL', 'failed'], ['REFUND.CLOSED', 'CLOSED', 'failed']];
  for (const [eventType, status, state] of cases) {
    const r = await c.verifyNotification(refundCallback(eventType, refundNotice({ refund_status: status })), cny);
    assert.deepEqual(r, {
      ok: true,
      notification: {
        eventId: 'EV-2026-0001', kind: 'refund', appId: MCHID,
        refund: {
          state, refundReference: 'KP01JD80000000000000REFUND01', channelRefundId: '50300506452026112214147497880', channelReference: 'KP01JD7ZQ8X4R2M5N6P7Q8R9S0T1UV',
          amountMinor: 400n, currency: 'CNY', rawStatus: status,
        },
      },
    }, eventType);
  }
  // Another merchant's refund decrypts (same key here) but names its mchid: the caller rejects it on appId.
  const other = await c.verifyNotification(refundCallback('REFUND.SUCCESS', refundNotice({ mchid: '1230000109' })), cny);
  assert.ok(other.ok && other.notification.appId === '1230000109');
  // Events we do not use are still acknowledged as ignored.
  const unused = await c.verifyNotification(callback({ eventType: 'PAYSCORE.USER_OPEN_SERVICE', resource: { mchid: MCHID, out_contract_code: 'x' } }), cny);
  assert.ok(unused.ok && unused.notification.kind === 'ignored');
});

test('refund callbacks that are forged, contradictory or incomplete are rejected, never thrown', async () => {
  const c = connector();
  const cases: Array<[string, { headers: Record<string, string>; rawBody: Buffer }, RegExp]> = [
    ['signed by the merchant key', refundCallback('REFUND.SUCCESS', refundNotice(), { signer: merchant.privateKey }), /^invalid signature$/],
    ['signed 301 s ago', refundCallback('REFUND.SUCCESS', refundNotice(), { at: new Date(NOW.getTime() - 301_000) }), /301 s away/],
    ['encrypted with another APIv3 key', refundCallback('REFUND.SUCCESS', refundNotice(), { key: 'b'.repeat(32) }), /decryption failed/],
    ['SUCCESS event over an ABNORMAL refund', refundCallback('REFUND.SUCCESS', refundNotice({ refund_status: 'ABNORMAL' })), /contradicts event_type REFUND.SUCCESS/],
    ['CLOSED event over a SUCCESS refund', refundCallback('REFUND.CLOSED', refundNotice()), /contradicts/],
    ['PROCESSING is never called back', refundCallback('REFUND.SUCCESS', refundNotice({ refund_status: 'PROCESSING' })), /contradicts/],
    ['a transaction resource under a refund event', callback({ eventType: 'REFUND.SUCCESS', resource: refundNotice() }), /original_type "transaction"/],
    ['no out_refund_no', refundCallback('REFUND.SUCCESS', refundNotice({ out_refund_no: undefined })), /missing fields: out_refund_no/],
    ['no refund_id', refundCallback('REFUND.SUCCESS', refundNotice({ refund_id: '' })), /missing fields: refund_id/],
    ['no out_trade_no, no mchid', refundCallback('REFUND.SUCCESS', refundNotice({ out_trade_no: undefined, mchid: undefined })), /missing fields: mchid, out_trade_no/],
    ['refund as a string', refundCallback('REFUND.SUCCESS', refundNotice({ amount: { total: 1234, refund: '400' } })), /amount.refund/],
    ['refund zero', refundCallback('REFUND.SUCCESS', refundNotice({ amount: { total: 1234, refund: 0 } })), /amount.refund/],
    ['refund above the total', refundCallback('REFUND.SUCCESS', refundNotice({ amount: { total: 300, refund: 400 } })), /amount.total/],
    ['no amount', refundCallback('REFUND.SUCCESS', refundNotice({ amount: undefined })), /amount.refund/],
  ];
  for (const [name, cb, reason] of cases) {
    const r = await c.verifyNotification(cb, cny);
    assert.equal(r.ok, false, name);
    assert.match(!r.ok ? r.reason : '', reason, name);
  }
});

test('forged, tampered, stale, foreign-key and undecryptable callbacks are rejected, never thrown', async () => {
  const c = connector();
  const good = callback();
  const cases: Array<[string, { headers: Record<string, string>; rawBody: Buffer }, RegExp]> = [
    ['signed by another key (a bad-signature probe)', callback({ signer: merchant.privateKey }), /^invalid signature$/],
    ['one byte of the body changed', { headers: good.headers, rawBody: Buffer.from(good.rawBody.toString().replace('EV-2026-0001', 'EV-2026-0002')) }, /^invalid signature$/],
    ['trailing newline added', { headers: good.headers, rawBody: Buffer.concat([good.rawBody, Buffer.from('\n')]) }, /^invalid signature$/],
    ['nonce header changed', { headers: { ...good.headers, 'wechatpay-nonce': 'x' + good.headers['wechatpay-nonce']!.slice(1) }, rawBody: good.rawBody }, /^invalid signature$/],
    ['timestamp header moved by 1 s', { headers: { ...good.headers, 'wechatpay-timestamp': String(Number(good.headers['wechatpay-timestamp']) + 1) }, rawBody: good.rawBody }, /^invalid signature$/],
    ['signed 301 s ago', callback({ at: new Date(NOW.getTime() - 301_000) }), /301 s away/],
    ['signed 301 s ahead', callback({ at: new Date(NOW.getTime() + 301_000) }), /301 s away/],
    ['unknown serial', callback({ serial: 'PUB_KEY_ID_0000000000000000000000000000000043' }), /unknown Wechatpay-Serial/],
    ['encrypted with another APIv3 key', callback({ key: 'b'.repeat(32) }), /decryption failed/],
    ['AAD changed (then signed)', callback({ aadInBody: 'transactioN' }), /decryption failed/],
    ['missing signature header', { headers: { ...good.headers, 'wechatpay-signature': '' }, rawBody: good.rawBody }, /missing Wechatpay/],
    ['no headers at all', { headers: {}, rawBody: good.rawBody }, /missing Wechatpay/],
    ['signature type SM2', { headers: { ...good.headers, 'wechatpay-signature-type': 'WECHATPAY2-SM2-WITH-SM3' }, rawBody: good.rawBody }, /signature type/],
    ['non-numeric timestamp', { headers: { ...good.headers, 'wechatpay-timestamp': 'NaN' }, rawBody: good.rawBody }, /malformed Wechatpay-Timestamp/],
  ];
  for (const [name, cb, reason] of cases) {
    const r = await c.verifyNotification(cb, cny);
    assert.equal(r.ok, false, name);
    assert.match(!r.ok ? r.reason : '', reason, name);
  }
});

test('after the signature: envelope, resource and field checks', async () => {
  const c = connector();
  const signedBody = (body: string) => {
    const h = signatureHeaders(body, PLATFORM_ID, platform.privateKey, Math.floor(NOW.getTime() / 1000));
    return { headers: Object.fromEntries(Object.entries(h).map(([k, v]) => [k.toLowerCase(), v])), rawBody: Buffer.from(body) };
  };
  const cases: Array<[string, { headers: Record<string, string>; rawBody: Buffer; contentType?: string }, RegExp]> = [
    ['not JSON', signedBody('success'), /not UTF-8 JSON/],
    ['not UTF-8', { ...signedBody('x'), rawBody: Buffer.from([0x7b, 0xff, 0x7d]) }, /invalid signature/],
    ['an array', signedBody('[]'), /not a JSON object/],
    ['plain resource', callback({ envelope: { resource_type: 'plain' } }), /resource_type/],
    ['other algorithm', callback({ envelope: { resource: { algorithm: 'AEAD_SM4_GCM', ciphertext: 'x', nonce: 'y' } } }), /algorithm/],
    ['no id', callback({ envelope: { id: '' } }), /id/],
    ['missing transaction_id', callback({ resource: transaction({ transaction_id: undefined }) }), /missing fields: transaction_id/],
    ['missing out_trade_no', callback({ resource: transaction({ out_trade_no: '' }) }), /missing fields: out_trade_no/],
    ['another appid', callback({ resource: transaction({ appid: 'wx0000000000000000' }) }), /appid_mismatch/],
    ['amount as string', callback({ resource: transaction({ amount: { total: '1234', currency: 'CNY' } }) }), /amount.total/],
    ['amount zero', callback({ resource: transaction({ amount: { total: 0, currency: 'CNY' } }) }), /amount.total/],
    ['amount fractional', callback({ resource: transaction({ amount: { total: 12.5, currency: 'CNY' } }) }), /amount.total/],
    ['amount beyond int32', callback({ resource: transaction({ amount: { total: 2_147_483_648, currency: 'CNY' } }) }), /amount.total/],
    ['USD', callback({ resource: transaction({ amount: { total: 100, currency: 'USD' } }) }), /currency/],
    ['JSON content type required', { ...callback(), contentType: 'application/x-www-form-urlencoded' }, /content type/],
    ['empty body', { headers: callback().headers, rawBody: Buffer.alloc(0) }, /empty body/],
    ['oversized body', { headers: callback().headers, rawBody: Buffer.alloc(70 * 1024, 0x20) }, /larger than/],
  ];
  for (const [name, cb, reason] of cases) {
    const r = await c.verifyNotification(cb, cny);
    assert.equal(r.ok, false, name);
    assert.match(!r.ok ? r.reason : '', reason, name);
  }
  const nonJson = encryptResource('not json', Buffer.from(APIV3_KEY), 'transaction', 'transaction');
  const body = JSON.stringify({ id: 'E1', create_time: 'x', resource_type: 'encrypt-resource', event_type: 'TRANSACTION.SUCCESS', resource: nonJson });
  assert.deepEqual(await c.verifyNotification(signedBody(body), cny), { ok: false, reason: 'decrypted resource is not JSON' });
});

test('acknowledgements: 204 on success; a FAIL JSON with a 4xx so WeChat Pay retries', () => {
  const c = connector();
  assert.deepEqual(c.ackSuccess(), { statusCode: 204, contentType: 'application/json', body: '' });
  const fail = c.ackFailure('invalid signature');
  assert.equal(fail.statusCode, 400);
  assert.deepEqual(JSON.parse(fail.body), { code: 'FAIL', message: 'invalid signature' });
  assert.deepEqual([...c.methods], ['native', 'jsapi', 'h5', 'app']);
  assert.equal(c.channel, 'wechatpay');
});

// ---- Refusals before any call, configuration ---------------------------------------------------------------

test('refuses what WeChat Pay cannot do before any call', async () => {
  audits = [];
  captured = [];
  const c = connector();
  await rejects(c.createPayment(input({ currency: 'USD' })), 'currency_not_supported', false);
  await rejects(c.queryPayment({ channelReference: 'KP0123456789', currency: 'HKD' }), 'currency_not_supported', false);
  await rejects(c.closePayment({ channelReference: 'KP0123456789', currency: 'EUR' }), 'currency_not_supported', false);
  await rejects(c.createPayment(input({ method: 'micropay' })), 'method_not_supported', false);
  await rejects(c.createPayment(input({ amountMinor: 0n })), 'amount_invalid', false);
  await rejects(c.createPayment(input({ amountMinor: -5n })), 'amount_invalid', false);
  await rejects(c.createPayment(input({ amountMinor: 2_147_483_648n })), 'amount_invalid', false);
  await rejects(c.createPayment(input({ channelReference: 'KP123' })), 'reference_invalid', false);
  await rejects(c.createPayment(input({ channelReference: 'K'.repeat(33) })), 'reference_invalid', false);
  await rejects(c.createPayment(input({ channelReference: 'KP0123456789/../x' })), 'reference_invalid', false);
  await rejects(c.queryPayment({ channelReference: 'KP01?mchid=1', currency: 'CNY' }), 'reference_invalid', false);
  await rejects(c.createPayment(input({ subject: '   ' })), 'subject_invalid', false);
  await rejects(c.createPayment(input({ method: 'jsapi' })), 'payer_openid_required', false);
  await rejects(c.createPayment(input({ method: 'jsapi', payer: { openid: 'bad openid' } })), 'payer_openid_required', false);
  await rejects(c.createPayment(input({ method: 'h5' })), 'payer_client_ip_required', false);
  await rejects(c.createPayment(input({ method: 'h5', payer: { client_ip: '300.1.1.1' } })), 'payer_client_ip_required', false);
  assert.equal(audits.length, 0, 'nothing was audited');
  assert.equal(captured.length, 0, 'nothing was sent');
});

test('configuration is checked at construction', () => {
  const base = {
    mchid: MCHID, appid: APPID, merchantSerial: 'ABC', privateKey: merchant.privateKey, platformKeys: { [PLATFORM_ID]: platform.publicKey },
    apiV3Key: APIV3_KEY, baseURL: 'http://127.0.0.1:9/',
  };
  assert.ok(createWechatpayConnector(base));
  assert.throws(() => createWechatpayConnector({ ...base, apiV3Key: 'testMchAPIv3Key0' }), /32 ASCII/);
  assert.throws(() => createWechatpayConnector({ ...base, apiV3Key: '密'.repeat(32) }), /32 ASCII/);
  assert.throws(() => createWechatpayConnector({ ...base, platformKeys: {} }), /1 to 16/);
  assert.throws(() => createWechatpayConnector({ ...base, platformKeys: { ABC: platform.publicKey } }), /merchant serial/);
  assert.throws(() => createWechatpayConnector({ ...base, platformKeys: { F5765756002FDD77: read('go-sdk/wechatpay_cert_D7CE59D1F522D701.pem') } }), /does not match/);
  assert.throws(() => createWechatpayConnector({ ...base, mchid: 'abc' }), /digits/);
  assert.throws(() => createWechatpayConnector({ ...base, appid: '' }), /appid/);
  assert.throws(() => createWechatpayConnector({ ...base, baseURL: 'not a url' }));
  assert.throws(() => createWechatpayConnector({ ...base, baseURL: 'ftp://x/' }), /http/);
});

// ---- Against small fake servers ---------------------------------------------------------------------------------

test('native / jsapi / app / h5 orders: the request WeChat Pay receives, and the actions', async () => {
  audits = [];
  const c = connector({ appids: { jsapi: 'wxminiprogram00001', app: 'wxmobileapp0000001' } });
  handler = (q, s) => {
    const path = q.url.split('?')[0]!;
    const body = path.endsWith('/native') ? { code_url: 'weixin://wxpay/bizpayurl?pr=abc' } : path.endsWith('/h5') ? { h5_url: 'https://wx.tenpay.com/cgi-bin/mmpayweb-bin/checkmweb?prepay_id=wx1&package=1' } : { prepay_id: 'wx201410272009395522657a690389285100' };
    signedAnswer(s, 200, JSON.stringify(body));
  };
  const native = await c.createPayment(input());
  assert.deepEqual(native.action, { type: 'qr_code', qr_code_url: 'weixin://wxpay/bizpayurl?pr=abc' });
  const sent = captured.at(-1)!;
  assert.equal(sent.method, 'POST');
  assert.equal(sent.url, '/v3/pay/transactions/native');
  assert.deepEqual(JSON.parse(sent.body.toString()), {
    appid: APPID, mchid: MCHID, description: '课程：TypeScript 进阶', out_trade_no: 'KP01JD7ZQ8X4R2M5N6P7Q8R9S0T1UV', time_expire: '2026-11-22T17:00:00+08:00',
    attach: 'pay_test', notify_url: 'https://shop.example/v1/notify/wechatpay', amount: { total: 1234, currency: 'CNY' },
  });
  // The Authorization verifies over exactly what was sent.
  const auth = parseAuthorization(sent.headers.authorization)!;
  assert.equal(auth.mchid, MCHID);
  assert.equal(rsaVerify(requestMessage('POST', sent.url, auth.timestamp, auth.nonce_str, sent.body), auth.signature, merchant.publicKey), true);
  assert.equal(rsaVerify(requestMessage('POST', sent.url, auth.timestamp, auth.nonce_str, Buffer.concat([sent.body, Buffer.from(' ')])), auth.signature, merchant.publicKey), false);

  const jsapi = await c.createPayment(input({ method: 'jsapi', payer: { openid: 'oUpF8uMuAJO_M2pxb1Q9zNjWeS6o' } }));
  assert.equal(jsapi.action.type, 'app');
  const jp = (jsapi.action as { params: Record<string, unknown> }).params;
  assert.equal(jp['appId'], 'wxminiprogram00001');
  assert.equal(jp['package'], 'prepay_id=wx201410272009395522657a690389285100');
  assert.equal(jp['signType'], 'RSA');
  assert.equal(jp['timeStamp'], String(Math.floor(NOW.getTime() / 1000)));
  assert.equal(verifyJsapiPayParams(jp, (await import('node:crypto')).createPublicKey(merchant.publicKey)), true);
  assert.deepEqual(JSON.parse(captured.at(-1)!.body.toString()).payer, { openid: 'oUpF8uMuAJO_M2pxb1Q9zNjWeS6o' });
  assert.equal(JSON.parse(captured.at(-1)!.body.toString()).appid, 'wxminiprogram00001');

  const app = await c.createPayment(input({ method: 'app' }));
  const ap = (app.action as { params: Record<string, unknown> }).params;
  assert.deepEqual(Object.keys(ap).sort(), ['appid', 'noncestr', 'package', 'partnerid', 'prepayid', 'sign', 'timestamp']);
  assert.equal(ap['partnerid'], MCHID);
  assert.equal(ap['package'], 'Sign=WXPay');

  const h5 = await c.createPayment(input({ method: 'h5', payer: { client_ip: '203.0.113.7' }, returnUrl: 'https://shop.example/paid?o=1&x=y' }));
  assert.deepEqual(h5.action, { type: 'redirect', url: 'https://wx.tenpay.com/cgi-bin/mmpayweb-bin/checkmweb?prepay_id=wx1&package=1&redirect_url=https%3A%2F%2Fshop.example%2Fpaid%3Fo%3D1%26x%3Dy' });
  assert.deepEqual(JSON.parse(captured.at(-1)!.body.toString()).scene_info, { payer_client_ip: '203.0.113.7', h5_info: { type: 'Wap' } });

  assert.equal(audits.length, 4);
  for (const a of audits) {
    assert.equal(a.operation, 'create_payment');
    assert.equal(a.channelReference, 'KP01JD7ZQ8X4R2M5N6P7Q8R9S0T1UV');
    assert.doesNotMatch(JSON.stringify(a), /PRIVATE KEY|WECHATPAY2-SHA256/);
  }
});

test('query: states mapped, amount in fen, out_trade_no and mchid checked; ORDER_NOT_EXIST is not_found', async () => {
  const c = connector();
  const ref = 'KP01JD7ZQ8X4R2M5N6P7Q8R9S0T1UV';
  const states: Array<[string, string]> = [['SUCCESS', 'succeeded'], ['REFUND', 'succeeded'], ['NOTPAY', 'pending'], ['USERPAYING', 'pending'], ['CLOSED', 'closed'], ['REVOKED', 'closed'], ['PAYERROR', 'failed'], ['NEW_STATE', 'pending']];
  for (const [raw, state] of states) {
    handler = (_q, s) => signedAnswer(s, 200, JSON.stringify({ ...transaction({ trade_state: raw }), out_trade_no: ref }));
    const snap = await c.queryPayment({ channelReference: ref, currency: 'cny' });
    assert.deepEqual(snap, { state, channelReference: ref, channelTransactionId: '4200000985202611224234534876', amountMinor: 1234n, currency: 'CNY', rawStatus: raw });
  }
  assert.equal(captured.at(-1)!.url, `/v3/pay/transactions/out-trade-no/${ref}?mchid=${MCHID}`);
  assert.equal(captured.at(-1)!.method, 'GET');
  handler = (_q, s) => signedAnswer(s, 404, JSON.stringify({ code: 'ORDER_NOT_EXIST', message: '订单不存在' }));
  assert.deepEqual(await c.queryPayment({ channelReference: ref, currency: 'CNY' }), { state: 'not_found', channelReference: ref });
  handler = (_q, s) => signedAnswer(s, 200, JSON.stringify(transaction({ out_trade_no: 'KP_SOMEONE_ELSE_000001' })));
  await rejects(c.queryPayment({ channelReference: ref, currency: 'CNY' }), 'invalid_response', false);
  handler = (_q, s) => signedAnswer(s, 200, JSON.stringify(transaction({ mchid: '1230000109' })));
  await rejects(c.queryPayment({ channelReference: ref, currency: 'CNY' }), 'invalid_response', false);
  handler = (_q, s) => signedAnswer(s, 200, JSON.stringify(transaction({ amount: { total: 12.34 } })));
  await rejects(c.queryPayment({ channelReference: ref, currency: 'CNY' }), 'invalid_response', false);
  handler = (_q, s) => signedAnswer(s, 200, JSON.stringify(transaction({ trade_state: undefined })));
  await rejects(c.queryPayment({ channelReference: ref, currency: 'CNY' }), 'invalid_response', true);
  handler = (_q, s) => signedAnswer(s, 200, '"just a string"');
  await rejects(c.queryPayment({ channelReference: ref, currency: 'CNY' }), 'invalid_response', true);
});

test('close: 204 → closed; ORDERPAID → the query\'s succeeded; ORDER_NOT_EXIST → not_found', async () => {
  const c = connector();
  const ref = 'KP01JD7ZQ8X4R2M5N6P7Q8R9S0T1UV';
  handler = (_q, s) => signedAnswer(s, 204, '');
  assert.deepEqual(await c.closePayment({ channelReference: ref, currency: 'CNY' }), { state: 'closed', channelReference: ref, rawStatus: 'CLOSED' });
  assert.equal(captured.at(-1)!.url, `/v3/pay/transactions/out-trade-no/${ref}/close`);
  assert.deepEqual(JSON.parse(captured.at(-1)!.body.toString()), { mchid: MCHID });
  handler = (q, s) => (q.url.endsWith('/close') ? signedAnswer(s, 400, JSON.stringify({ code: 'ORDERPAID', message: '该订单已支付' })) : signedAnswer(s, 200, JSON.stringify(transaction())));
  const paid = await c.closePayment({ channelReference: ref, currency: 'CNY' });
  assert.equal(paid.state, 'succeeded');
  assert.equal(paid.amountMinor, 1234n);
  handler = (q, s) => (q.url.endsWith('/close') ? signedAnswer(s, 400, JSON.stringify({ code: 'ORDERPAID', message: '?' })) : signedAnswer(s, 200, JSON.stringify(transaction({ trade_state: 'NOTPAY' }))));
  await rejects(c.closePayment({ channelReference: ref, currency: 'CNY' }), 'ORDERPAID', true);
  handler = (_q, s) => signedAnswer(s, 404, JSON.stringify({ code: 'ORDER_NOT_EXIST', message: '订单不存在' }));
  assert.deepEqual(await c.closePayment({ channelReference: ref, currency: 'CNY' }), { state: 'not_found', channelReference: ref });
  handler = (_q, s) => signedAnswer(s, 204, '', (h) => { h['Wechatpay-Signature'] = h['Wechatpay-Signature']!.replace(/^./, (ch) => (ch === 'A' ? 'B' : 'A')); });
  await rejects(c.closePayment({ channelReference: ref, currency: 'CNY' }), 'invalid_response_signature', false);
});

// ---- Refunds against small fake servers ---------------------------------------------------------------------------

const REF = 'KP01JD7ZQ8X4R2M5N6P7Q8R9S0T1UV';
const RF = 'KP01JD80000000000000REFUND01';

function refundInput(over: Partial<RefundRequest> = {}): RefundRequest {
  return { channelReference: REF, refundReference: RF, amountMinor: 400n, paymentAmountMinor: 1234n, currency: 'CNY', reason: '课程退款', notifyUrl: 'https://shop.example/v1/notify/wechatpay', ...over };
}

/** A refund as WeChat Pay answers the refund call and the refund query. */
function wireRefund(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    refund_id: '50300506452026112214147497880', out_refund_no: RF, transaction_id: '4200000985202611224234534876', out_trade_no: REF, channel: 'ORIGINAL',
    user_received_account: '支付用户零钱', create_time: '2026-11-22T16:04:00+08:00', status: 'PROCESSING', funds_account: 'AVAILABLE',
    amount: { total: 1234, refund: 400, from: [], payer_total: 1234, payer_refund: 400, settlement_refund: 400, settlement_total: 1234, discount_refund: 0, currency: 'CNY', refund_fee: 0 },
    promotion_detail: [], ...over,
  };
}

test('refund: the request WeChat Pay receives, signed; every refund_status mapped (unknown → pending); audited', async () => {
  audits = [];
  const c = connector();
  handler = (_q, s) => signedAnswer(s, 200, JSON.stringify(wireRefund()));
  const snap = await c.refundPayment!(refundInput());
  assert.deepEqual(snap, { state: 'pending', refundReference: RF, channelRefundId: '50300506452026112214147497880', channelReference: REF, amountMinor: 400n, currency: 'CNY', rawStatus: 'PROCESSING' });
  const sent = captured.at(-1)!;
  assert.equal(sent.method, 'POST');
  assert.equal(sent.url, '/v3/refund/domestic/refunds');
  assert.equal(sent.body.toString('utf8'), JSON.stringify({ out_trade_no: REF, out_refund_no: RF, reason: '课程退款', notify_url: 'https://shop.example/v1/notify/wechatpay', amount: { refund: 400, total: 1234, currency: 'CNY' } }));
  const auth = parseAuthorization(sent.headers.authorization)!;
  assert.equal(rsaVerify(requestMessage('POST', sent.url, auth.timestamp, auth.nonce_str, sent.body), auth.signature, merchant.publicKey), true);
  for (const [status, state] of [['SUCCESS', 'succeeded'], ['CLOSED', 'failed'], ['ABNORMAL', 'failed'], ['PROCESSING', 'pending'], ['SOMETHING_NEW', 'pending']] as const) {
    handler = (_q, s) => signedAnswer(s, 200, JSON.stringify(wireRefund({ status })));
    assert.deepEqual([(await c.refundPayment!(refundInput())).state, (await c.queryRefund!({ channelReference: REF, refundReference: RF, currency: 'CNY' })).state], [state, state], status);
  }
  // A reason is cut to WeChat Pay's 80 bytes on a character boundary; none at all is left out.
  handler = (_q, s) => signedAnswer(s, 200, JSON.stringify(wireRefund()));
  await c.refundPayment!(refundInput({ reason: '退'.repeat(30) }));
  assert.equal(JSON.parse(captured.at(-1)!.body.toString()).reason, '退'.repeat(26));
  await c.refundPayment!(refundInput({ reason: '  ' }));
  assert.equal('reason' in JSON.parse(captured.at(-1)!.body.toString()), false);
  assert.equal(audits[0]!.operation, 'refund_payment');
  assert.equal(audits[0]!.channelReference, REF);
  assert.deepEqual((audits[0]!.response as any).status, 200);
  assert.ok(audits.some((a) => a.operation === 'query_refund'));
  assert.doesNotMatch(JSON.stringify(audits), /PRIVATE KEY|WECHATPAY2-SHA256/);
});

test('refund answers that do not match the request are refused as invalid_response', async () => {
  const c = connector();
  const cases: Array<[string, Record<string, unknown>, boolean]> = [
    ['another out_refund_no', wireRefund({ out_refund_no: 'KP_SOMEONE_ELSE' }), false],
    ['no out_refund_no', wireRefund({ out_refund_no: undefined }), false],
    ['another trade', wireRefund({ out_trade_no: 'KP_SOMEONE_ELSE_000001' }), false],
    ['another amount', wireRefund({ amount: { total: 1234, refund: 401, currency: 'CNY' } }), false],
    ['a fractional amount', wireRefund({ amount: { total: 1234, refund: 4.5, currency: 'CNY' } }), false],
    ['USD', wireRefund({ amount: { total: 1234, refund: 400, currency: 'USD' } }), false],
    ['no status', wireRefund({ status: undefined }), true],
  ];
  for (const [name, body, retryable] of cases) {
    handler = (_q, s) => signedAnswer(s, 200, JSON.stringify(body));
    await rejects(c.refundPayment!(refundInput()), 'invalid_response', retryable);
    if (name !== 'another amount') await rejects(c.queryRefund!({ channelReference: REF, refundReference: RF, currency: 'CNY' }), 'invalid_response', retryable);
  }
  handler = (_q, s) => signedAnswer(s, 200, JSON.stringify(wireRefund()), (h) => { h['Wechatpay-Signature'] = h['Wechatpay-Signature']!.replace(/^./, (ch) => (ch === 'A' ? 'B' : 'A')); });
  await rejects(c.refundPayment!(refundInput()), 'invalid_response_signature', false);
  handler = (_q, s) => s.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(wireRefund()));
  await rejects(c.queryRefund!({ channelReference: REF, refundReference: RF, currency: 'CNY' }), 'invalid_response_signature', false);
});

test('refund refusals: 申请退款金额超过订单可退金额 → refund_exceeds_remaining; others keep WeChat Pay\'s code; 5xx retryable', async () => {
  audits = [];
  const c = connector();
  const answer = (status: number, code: string, message: string) => (_q: Captured, s: http.ServerResponse) => signedAnswer(s, status, JSON.stringify({ code, message }));
  handler = answer(400, 'INVALID_REQUEST', '申请退款金额超过订单可退金额');
  await rejects(c.refundPayment!(refundInput()), 'refund_exceeds_remaining', false);
  assert.match(audits.at(-1)!.error ?? '', /INVALID_REQUEST/, 'the audit keeps WeChat Pay\'s own code');
  handler = answer(400, 'INVALID_REQUEST', '订单金额或退款金额与之前请求不一致，请核实后再试');
  await rejects(c.refundPayment!(refundInput()), 'INVALID_REQUEST', false);
  handler = answer(403, 'NOT_ENOUGH', '基本账户余额不足，请充值后重新发起');
  await rejects(c.refundPayment!(refundInput()), 'NOT_ENOUGH', false);
  handler = answer(404, 'RESOURCE_NOT_EXISTS', '订单不存在');
  await rejects(c.refundPayment!(refundInput()), 'RESOURCE_NOT_EXISTS', false);
  handler = answer(403, 'USER_ACCOUNT_ABNORMAL', '退款请求失败');
  await rejects(c.refundPayment!(refundInput()), 'USER_ACCOUNT_ABNORMAL', false);
  handler = answer(500, 'SYSTEM_ERROR', '系统超时');
  await rejects(c.refundPayment!(refundInput()), 'SYSTEM_ERROR', true);
  handler = answer(429, 'FREQUENCY_LIMITED', '频率限制');
  await rejects(c.refundPayment!(refundInput()), 'FREQUENCY_LIMITED', true);
  handler = answer(404, 'RESOURCE_NOT_EXISTS', '退款单不存在');
  await rejects(c.queryRefund!({ channelReference: REF, refundReference: RF, currency: 'CNY' }), 'refund_not_found', true);
  handler = answer(400, 'INVALID_REQUEST', '申请退款金额超过订单可退金额');
  await rejects(c.queryRefund!({ channelReference: REF, refundReference: RF, currency: 'CNY' }), 'INVALID_REQUEST', false);
  assert.equal(audits.length, 9);
  for (const a of audits) assert.ok(a.error, a.operation);
});

test('refund and refund query refuse what WeChat Pay cannot take before any call', async () => {
  audits = [];
  captured = [];
  const c = connector();
  await rejects(c.refundPayment!(refundInput({ currency: 'USD' })), 'currency_not_supported', false);
  await rejects(c.refundPayment!(refundInput({ amountMinor: 0n })), 'amount_invalid', false);
  await rejects(c.refundPayment!(refundInput({ amountMinor: -1n })), 'amount_invalid', false);
  await rejects(c.refundPayment!(refundInput({ amountMinor: 2_147_483_648n })), 'amount_invalid', false);
  await rejects(c.refundPayment!(refundInput({ paymentAmountMinor: 0n })), 'payment_amount_invalid', false);
  await rejects(c.refundPayment!(refundInput({ channelReference: 'KP1' })), 'reference_invalid', false);
  await rejects(c.refundPayment!(refundInput({ refundReference: '' })), 'refund_reference_invalid', false);
  await rejects(c.refundPayment!(refundInput({ refundReference: 'R'.repeat(65) })), 'refund_reference_invalid', false);
  await rejects(c.refundPayment!(refundInput({ refundReference: 'RF/../x' })), 'refund_reference_invalid', false);
  await rejects(c.refundPayment!(refundInput({ notifyUrl: 'https://shop.example/notify?x=1' })), 'notify_url_invalid', false);
  await rejects(c.refundPayment!(refundInput({ notifyUrl: 'ftp://shop.example/notify' })), 'notify_url_invalid', false);
  await rejects(c.queryRefund!({ channelReference: REF, refundReference: 'RF?mchid=1', currency: 'CNY' }), 'refund_reference_invalid', false);
  await rejects(c.queryRefund!({ channelReference: REF, refundReference: RF, currency: 'HKD' }), 'currency_not_supported', false);
  assert.equal(audits.length, 0, 'nothing was audited');
  assert.equal(captured.length, 0, 'nothing was sent');
});

test('refund query through the connector carries the official request signature (example key, clock and nonce pinned)', async () => {
  const v = requestVectors.vectors.find((x) => x['url'] === '/v3/refund/domestic/refunds/123123123123')!;
  assert.ok(v, 'the official refund-query vector');
  const { mchid, serial_no } = requestVectors.merchant;
  const c = connector({ mchid, merchantSerial: serial_no, privateKey: exampleKeyPem, platformKeys: { [officialPubKeyId]: officialPubPem } });
  mock.method(Formatter, 'nonce', () => v['nonce']);
  mock.timers.enable({ apis: ['Date'], now: Number(v['timestamp']) * 1000 });
  handler = (_q, s) => s.writeHead(404, { 'content-type': 'application/json' }).end('{"code":"RESOURCE_NOT_EXISTS","message":"退款单不存在"}');
  await rejects(c.queryRefund!({ channelReference: REF, refundReference: '123123123123', currency: 'CNY' }), 'refund_not_found', true);
  const req = captured.at(-1)!;
  assert.deepEqual([req.method, req.url, req.body.length], ['GET', v['url'], 0]);
  assert.deepEqual(parseAuthorization(req.headers.authorization), { mchid, serial_no, timestamp: v['timestamp'], nonce_str: v['nonce'], signature: v['expectedSignature'] });
});

test('HTTP errors, garbage, unsigned answers and transport failures map to the right ChannelError, audited', async () => {
  audits = [];
  const c = connector();
  const q = () => c.queryPayment({ channelReference: 'KP01JD7ZQ8X4R2M5N6P7Q8R9S0T1UV', currency: 'CNY' });
  handler = (_q, s) => s.writeHead(401, { 'content-type': 'application/json' }).end(JSON.stringify({ code: 'SIGN_ERROR', message: '错误的签名，验签失败' }));
  await rejects(q(), 'SIGN_ERROR', false);
  handler = (_q, s) => signedAnswer(s, 400, JSON.stringify({ code: 'PARAM_ERROR', message: 'x' }));
  await rejects(q(), 'PARAM_ERROR', false);
  handler = (_q, s) => signedAnswer(s, 500, JSON.stringify({ code: 'SYSTEM_ERROR', message: '系统异常' }));
  await rejects(q(), 'SYSTEM_ERROR', true);
  handler = (_q, s) => signedAnswer(s, 429, JSON.stringify({ code: 'FREQUENCY_LIMITED', message: '频率超限' }));
  await rejects(q(), 'FREQUENCY_LIMITED', true);
  handler = (_q, s) => s.writeHead(502, { 'content-type': 'text/html' }).end('<html>bad gateway</html>');
  await rejects(q(), 'http_502', true);
  handler = (_q, s) => s.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(transaction()));
  await rejects(q(), 'invalid_response_signature', false);
  handler = (_q, s) => signedAnswer(s, 200, JSON.stringify(transaction()), (h) => { h['Wechatpay-Timestamp'] = String(Number(h['Wechatpay-Timestamp']) - 400); });
  await rejects(q(), 'invalid_response_signature', false);
  handler = (_q, s) => signedAnswer(s, 200, JSON.stringify(transaction()), (h) => { h['Wechatpay-Serial'] = 'PUB_KEY_ID_0000000000000000000000000000000099'; });
  await rejects(q(), 'invalid_response_signature', false);
  handler = () => {}; // never answers
  await rejects(connector({ timeoutMs: 300 }).queryPayment({ channelReference: 'KP01JD7ZQ8X4R2M5N6P7Q8R9S0T1UV', currency: 'CNY' }), 'transport_error', true);
  const closed = http.createServer();
  await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
  const port = (closed.address() as AddressInfo).port;
  await new Promise<void>((r) => closed.close(() => r()));
  await rejects(connector({ baseURL: `http://127.0.0.1:${port}/` }).queryPayment({ channelReference: 'KP01JD7ZQ8X4R2M5N6P7Q8R9S0T1UV', currency: 'CNY' }), 'transport_error', true);
  assert.ok(audits.length >= 10);
  for (const a of audits) {
    assert.equal(a.operation, 'query_payment');
    assert.ok(a.error, 'each failure is audited with its error');
  }
  server.closeAllConnections();
});

test('toChannelError keeps ChannelErrors and maps unknown failures as not retryable', () => {
  const e = new ChannelError('x', 'wechatpay', 'c', true);
  assert.equal(toChannelError(e), e);
  assert.equal(toChannelError(new Error('boom')).code, 'unexpected_error');
  assert.equal(toChannelError(new Error('boom')).retryable, false);
  assert.equal(toChannelError({ isAxiosError: true, code: 'ECONNRESET', message: 'socket hang up' }).code, 'transport_error');
  assert.equal(toChannelError({ isAxiosError: true, response: { status: 403, data: { code: 'OUT_TRADE_NO_USED', message: '商户订单号重复' } } }).retryable, false);
  assert.equal(toChannelError({ code: 'EV3_RES_HEADER_SIGNATURE_DIGEST', message: 'x' }).code, 'invalid_response_signature');
});

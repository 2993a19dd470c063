/**
 * The connector against the sandbox over real HTTP (127.0.0.1), through the SDK's `baseURL`
 * option: the code that runs here is the code that would run against WeChat Pay.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createPublicKey, generateKeyPairSync } from 'node:crypto';
import Fastify, { type FastifyInstance } from 'fastify';
import formbody from '@fastify/formbody';
import { freshDatabase, type TestDatabase } from '../../../test/support/db.ts';
import type { ChannelConnector, CreatePaymentInput } from '../types.ts';
import { faultsPlugin } from '../sandbox/faults.ts';
import { listSandboxNotificationAttempts, waitForSandboxNotifications } from '../sandbox/dispatcher.ts';
import { createWechatpayConnector, type WechatpayAuditEntry, type WechatpayConfig } from './connector.ts';
import { generateWechatpaySandboxKeys, wechatpaySandboxPlugin, WECHATPAY_NOTIFY_SCHEDULE_MS, type WechatpaySandboxKeys } from './sandbox.ts';
import { decryptResource, readSignatureHeaders, signRequest, verifyWechatpaySignature } from './sign.ts';
import { parseRfc3339 } from './transformers.ts';
import { rejectsWith } from '../../../test/support/assertions.ts';
import { freePort } from '../../store/embedded.ts';

const MCHID = '1900000109';
const APPID = 'wx8888888888888888';
const TIME_SCALE = 0.001;

interface Received { name: string; rawBody: Buffer; headers: Record<string, string | string[] | undefined>; at: number }
interface Answer { status: number; body?: string }

let db: TestDatabase;
let keys: WechatpaySandboxKeys;
let app: FastifyInstance;
let base = '';
let connector: ChannelConnector;
let audits: WechatpayAuditEntry[] = [];
const received: Received[] = [];
/** Per receiver name: what to answer to the n-th (1-based) callback. */
const answers = new Map<string, (n: number) => Answer>();
let refCounter = 0;

function flipChar(s: string, at: number): string {
  return s.slice(0, at) + (s[at] === 'A' ? 'B' : 'A') + s.slice(at + 1);
}

/** A Fastify app as the service builds it: formbody at the root, faults, the sandbox, a callback receiver, a tampering proxy. */
async function buildApp(pool: TestDatabase['pool'], port: number, k: WechatpaySandboxKeys, timeScale: number, now?: () => Date): Promise<FastifyInstance> {
  const a = Fastify();
  await a.register(formbody);
  await a.register(faultsPlugin, { pool });
  await a.register(wechatpaySandboxPlugin, {
    prefix: '/sandbox/wechatpay', pool, mchid: MCHID, appids: [APPID, 'wxminiprogram00001'], merchantSerial: k.merchantSerial,
    merchantPublicKey: k.merchantPublicKey, platformPrivateKey: k.platformPrivateKey, platformPublicKeyId: k.platformPublicKeyId,
    apiV3Key: k.apiV3Key, publicBaseUrl: `http://127.0.0.1:${port}`, timeScale, ...(now ? { now } : {}),
  });
  await a.register(async (r) => {
    r.removeAllContentTypeParsers();
    r.addContentTypeParser('*', { parseAs: 'buffer' }, (_q, body, done) => done(null, body));
    r.post<{ Params: { name: string } }>('/notify/:name', async (req, reply) => {
      const name = req.params.name;
      received.push({ name, rawBody: req.body as Buffer, headers: req.headers, at: Date.now() });
      const n = received.filter((x) => x.name === name).length;
      const answer: Answer = (answers.get(name) ?? ((): Answer => ({ status: 204 })))(n);
      return reply.code(answer.status).type('application/json').send(answer.body ?? '');
    });
    // A man in the middle that alters the sandbox's signed answers.
    r.all<{ Params: { mode: string; '*': string } }>('/tamper/:mode/*', async (req, reply) => {
      const rest = (req.raw.url ?? '').slice(`/tamper/${req.params.mode}`.length);
      const headers: Record<string, string> = {};
      for (const [hk, hv] of Object.entries(req.headers)) if (typeof hv === 'string' && !['host', 'content-length'].includes(hk)) headers[hk] = hv;
      // The merchant signed the URL it called (/tamper/…); the request is re-signed for the sandbox's
      // path: this proxy stands for the network, what it does to the answers is the point.
      const url = rest;
      const body = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
      headers['authorization'] = signRequest({ method: req.method, url, body, mchid: MCHID, serialNo: k.merchantSerial, privateKey: k.merchantPrivateKey });
      const res = await a.inject({ method: req.method as 'GET' | 'POST', url, headers, payload: body.length ? body : undefined });
      let out = res.body;
      const outHeaders: Record<string, string> = {};
      for (const [hk, hv] of Object.entries(res.headers)) if (typeof hv === 'string' && hk !== 'content-length') outHeaders[hk] = hv;
      if (req.params.mode === 'content') out = out.includes('"NOTPAY"') ? out.replace('"NOTPAY"', '"SUCCESS"') : out.replace('{"', '{ "');
      if (req.params.mode === 'sign') outHeaders['wechatpay-signature'] = flipChar(outHeaders['wechatpay-signature'] ?? '', 30);
      if (req.params.mode === 'nosign') delete outHeaders['wechatpay-signature'];
      if (req.params.mode === 'stale') outHeaders['wechatpay-timestamp'] = String(Number(outHeaders['wechatpay-timestamp']) - 301);
      return reply.code(res.statusCode).headers(outHeaders).send(out);
    });
  });
  await a.listen({ host: '127.0.0.1', port });
  return a;
}

function makeConnector(over: Partial<WechatpayConfig> = {}, k = keys, target = base): ChannelConnector {
  return createWechatpayConnector({
    mchid: MCHID, appid: APPID, appids: { jsapi: 'wxminiprogram00001' }, merchantSerial: k.merchantSerial, privateKey: k.merchantPrivateKey,
    platformKeys: { [k.platformPublicKeyId]: k.platformPublicKey }, apiV3Key: k.apiV3Key, baseURL: `${target}/sandbox/wechatpay/`, timeoutMs: 5000,
    audit: (e) => audits.push(e), ...over,
  });
}

before(async () => {
  db = await freshDatabase();
  keys = await generateWechatpaySandboxKeys();
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
  return `KP${tag}${process.pid}x${++refCounter}`.slice(0, 32);
}

function input(ref: string, over: Partial<CreatePaymentInput> = {}): CreatePaymentInput {
  return {
    channelReference: ref, paymentId: 'pay_' + ref, orderId: 'ord_' + ref, customerId: 'cr_test', items: [],
    method: 'native', amountMinor: 1234n, currency: 'CNY', subject: '课程：TypeScript 进阶',
    notifyUrl: `${base}/notify/${ref}`, expiresAt: new Date(Date.now() + 30 * 60_000), ...over,
  };
}

async function simulate(ref: string, outcome: string, target = base) {
  const res = await fetch(`${target}/sandbox/wechatpay/simulate`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ channel_reference: ref, outcome }),
  });
  return { status: res.status, body: (await res.json()) as Record<string, any> };
}

async function waitReceived(name: string, count: number, timeoutMs = 5000): Promise<Received[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const got = received.filter((r) => r.name === name);
    if (got.length >= count) return got;
    if (Date.now() > deadline) throw new Error(`receiver ${name}: ${got.length} of ${count} callbacks after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const verify = (c: ChannelConnector, r: Received) => c.verifyNotification({ headers: r.headers, rawBody: r.rawBody, contentType: r.headers['content-type'] as string }, async () => 'CNY');

/** A raw, correctly signed call to the sandbox (for requests the connector would never send). */
async function signedFetch(method: 'GET' | 'POST', path: string, body?: unknown, over: { privateKey?: string; serialNo?: string; mchid?: string; timestamp?: number } = {}) {
  const url = `/sandbox/wechatpay${path}`;
  const raw = body === undefined ? '' : typeof body === 'string' ? body : JSON.stringify(body);
  const authorization = signRequest({
    method, url, body: raw, mchid: over.mchid ?? MCHID, serialNo: over.serialNo ?? keys.merchantSerial, privateKey: over.privateKey ?? keys.merchantPrivateKey,
    ...(over.timestamp !== undefined ? { timestamp: over.timestamp } : {}),
  });
  const res = await fetch(`${base}${url}`, { method, headers: { authorization, 'content-type': 'application/json', accept: 'application/json' }, ...(method === 'POST' ? { body: raw } : {}) });
  const text = await res.text();
  return { status: res.status, headers: Object.fromEntries(res.headers), text, body: text ? (JSON.parse(text) as Record<string, any>) : null };
}

// ---- Happy paths -------------------------------------------------------------------------------------------

test('native: the order answers a weixin:// code_url; the trade exists at once in NOTPAY; scanning shows the cashier', async () => {
  audits = [];
  const ref = newRef('nat');
  const created = await connector.createPayment(input(ref));
  assert.equal(created.action.type, 'qr_code');
  const codeUrl = created.action.type === 'qr_code' ? created.action.qr_code_url : '';
  assert.match(codeUrl, /^weixin:\/\/wxpay\/bizpayurl\?pr=[A-Za-z0-9]{9}$/);
  const pending = await connector.queryPayment({ channelReference: ref, currency: 'CNY' });
  assert.deepEqual(pending, { state: 'pending', channelReference: ref, amountMinor: 1234n, currency: 'CNY', rawStatus: 'NOTPAY' });
  const scan = await fetch(`${base}/sandbox/wechatpay/scan?code_url=${encodeURIComponent(codeUrl)}`);
  assert.equal(scan.status, 200);
  const html = await scan.text();
  assert.match(html, /id="amount_total">12\.34</);
  assert.match(html, /课程：TypeScript 进阶/);
  assert.equal((await fetch(`${base}/sandbox/wechatpay/scan?code_url=weixin%3A%2F%2Fwxpay%2Fbizpayurl%3Fpr%3Dnope`)).status, 404);

  const [create, query] = audits;
  assert.equal(create!.operation, 'create_payment');
  assert.equal(create!.channelReference, ref);
  assert.deepEqual((create!.request as any).body.amount, { total: 1234, currency: 'CNY' });
  assert.equal((create!.response as any).status, 200);
  assert.equal(query!.operation, 'query_payment');
  assert.doesNotMatch(JSON.stringify(audits), /PRIVATE KEY|WECHATPAY2-SHA256-RSA2048 mchid/);
});

test('every sandbox answer is signed with the platform key (PUB_KEY_ID mode), 204s and errors included', async () => {
  const pub = createPublicKey(keys.platformPublicKey);
  const k = new Map([[keys.platformPublicKeyId, pub]]);
  const nowS = Math.floor(Date.now() / 1000);
  const ref = newRef('sig');
  await connector.createPayment(input(ref));
  for (const r of [
    await signedFetch('GET', `/v3/pay/transactions/out-trade-no/${ref}?mchid=${MCHID}`),
    await signedFetch('GET', `/v3/pay/transactions/out-trade-no/NOSUCHREF1?mchid=${MCHID}`),
    await signedFetch('POST', `/v3/pay/transactions/out-trade-no/${ref}/close`, { mchid: MCHID }),
  ]) {
    const h = readSignatureHeaders(r.headers)!;
    assert.ok(h, `signed ${r.status}`);
    assert.equal(h.serial, keys.platformPublicKeyId);
    assert.equal(r.headers['wechatpay-signature-type'], 'WECHATPAY2-SHA256-RSA2048');
    assert.ok(r.headers['request-id']);
    assert.deepEqual(verifyWechatpaySignature(h, r.text, k, nowS), { ok: true });
    assert.equal(verifyWechatpaySignature(h, r.text + ' ', k, nowS).ok, false);
  }
});

test('simulate succeeded: query says succeeded; the encrypted, signed TRANSACTION.SUCCESS callback verifies and decrypts', async () => {
  const ref = newRef('paid');
  await connector.createPayment(input(ref, { amountMinor: 9000n }));
  const sim = await simulate(ref, 'succeeded');
  assert.equal(sim.status, 200);
  assert.equal(sim.body['trade_state'], 'SUCCESS');
  assert.equal(sim.body['amount'], 9000);
  assert.match(sim.body['transaction_id'], /^4200\d{24}$/);
  assert.equal(sim.body['notification'].event_type, 'TRANSACTION.SUCCESS');

  const snap = await connector.queryPayment({ channelReference: ref, currency: 'CNY' });
  assert.deepEqual(snap, { state: 'succeeded', channelReference: ref, channelTransactionId: sim.body['transaction_id'], amountMinor: 9000n, currency: 'CNY', rawStatus: 'SUCCESS' });

  const [cb] = await waitReceived(ref, 1);
  assert.equal(cb!.headers['content-type'], 'application/json');
  assert.equal(cb!.headers['wechatpay-serial'], keys.platformPublicKeyId);
  const verified = await verify(connector, cb!);
  assert.ok(verified.ok, !verified.ok ? verified.reason : '');
  assert.ok(verified.notification.kind === 'payment');
  assert.equal(verified.notification.eventId, sim.body['notification'].id);
  assert.equal(verified.notification.appId, MCHID);
  assert.equal(verified.notification.appId, connector.appId, 'a genuine callback matches the connector');
  assert.deepEqual(verified.notification.trade, { state: 'succeeded', channelReference: ref, channelTransactionId: sim.body['transaction_id'], amountMinor: 9000n, currency: 'CNY', rawStatus: 'SUCCESS' });

  // The wire format: WeChat Pay's envelope, resource encrypted with the APIv3 key.
  const body = JSON.parse(cb!.rawBody.toString('utf8'));
  assert.deepEqual(Object.keys(body), ['id', 'create_time', 'resource_type', 'event_type', 'summary', 'resource']);
  assert.equal(body.resource_type, 'encrypt-resource');
  assert.deepEqual(Object.keys(body.resource).sort(), ['algorithm', 'associated_data', 'ciphertext', 'nonce', 'original_type']);
  assert.equal(body.resource.algorithm, 'AEAD_AES_256_GCM');
  assert.ok(parseRfc3339(body.create_time));
  const plain = JSON.parse(decryptResource(body.resource, Buffer.from(keys.apiV3Key))!.toString('utf8'));
  assert.equal(plain.mchid, MCHID);
  assert.equal(plain.appid, APPID);
  assert.equal(plain.trade_type, 'NATIVE');
  assert.equal(plain.attach, 'pay_' + ref);
  assert.deepEqual(plain.amount, { total: 9000, payer_total: 9000, currency: 'CNY', payer_currency: 'CNY' });
  assert.match(plain.success_time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+08:00$/);
  assert.match(plain.payer.openid, /^o[A-Za-z0-9]{27}$/);
  assert.equal(decryptResource(body.resource, Buffer.from('x'.repeat(32))), null);

  // Tampered on the way, or checked 301 s later: rejected.
  const tampered = { ...cb!, rawBody: Buffer.from(cb!.rawBody.toString('utf8').replace('"TRANSACTION.SUCCESS"', '"TRANSACTION.SUCCES5"')) };
  assert.deepEqual(await verify(connector, tampered), { ok: false, reason: 'invalid signature' });
  const later = makeConnector({ now: () => new Date(Date.now() + 301_000) });
  assert.match(((await verify(later, cb!)) as { reason: string }).reason, /away from now/);
  const otherKeys = await generateWechatpaySandboxKeys();
  const foreign = makeConnector({ platformKeys: { [keys.platformPublicKeyId]: otherKeys.platformPublicKey } });
  assert.deepEqual(await verify(foreign, cb!), { ok: false, reason: 'invalid signature' });
  const otherApiKey = makeConnector({ apiV3Key: otherKeys.apiV3Key });
  assert.deepEqual(await verify(otherApiKey, cb!), { ok: false, reason: 'resource decryption failed' });
});

test('an unacknowledged callback is retried on WeChat Pay\'s (compressed) schedule, freshly signed, until a 2xx', async () => {
  const ref = newRef('retry');
  answers.set(ref, (n) => (n === 1 ? { status: 500, body: '{"code":"FAIL","message":"db down"}' } : n === 2 ? { status: 400, body: '{"code":"FAIL","message":"失败"}' } : n === 3 ? { status: 404 } : { status: 200 }));
  await connector.createPayment(input(ref));
  const t0 = Date.now();
  assert.equal((await simulate(ref, 'succeeded')).status, 200);
  const got = await waitReceived(ref, 4, 8000);
  const times = [t0, ...got.map((g) => g.at)];
  const gaps = times.slice(1).map((t, i) => t - times[i]!);
  const expected = [0, 15, 15, 30]; // at once, 15 s, 15 s, 30 s; × 0.001
  for (const [i, want] of expected.entries()) {
    assert.ok(gaps[i]! >= want - 5 && gaps[i]! < want + 400, `attempt ${i + 1}: gap ${gaps[i]} ms, expected about ${want}`);
  }
  const bodies = new Set(got.map((g) => g.rawBody.toString('utf8')));
  assert.equal(bodies.size, 1, 'the same body (same id) on every retry');
  assert.equal(new Set(got.map((g) => g.headers['wechatpay-nonce'])).size, 4, 'a fresh signature per attempt');
  for (const g of got) assert.ok((await verify(connector, g)).ok);
  await new Promise((r) => setTimeout(r, 900)); // the next slots would be +180 ms and +600 ms
  assert.equal(received.filter((r) => r.name === ref).length, 4, 'no attempt after the 2xx');
  const [row] = await waitForSandboxNotifications(db.pool, { channel: 'wechatpay', channelReference: ref, timeoutMs: 1000 });
  assert.equal(row!.status, 'delivered');
  assert.equal(row!.attempts, 4);
  const attempts = await listSandboxNotificationAttempts(db.pool, row!.id);
  assert.deepEqual(attempts.map((a) => [a.statusCode, a.acknowledged]), [[500, false], [400, false], [404, false], [200, true]]);
});

test('the schedule is WeChat Pay\'s: 16 attempts over about 24 h', () => {
  assert.equal(WECHATPAY_NOTIFY_SCHEDULE_MS.length, 16);
  assert.deepEqual(WECHATPAY_NOTIFY_SCHEDULE_MS.slice(1).map((ms) => ms / 1000), [15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800, 10800, 21600, 21600]);
  const totalH = WECHATPAY_NOTIFY_SCHEDULE_MS.reduce((a, b) => a + b, 0) / 3_600_000;
  assert.ok(totalH > 24 && totalH < 24.1, `${totalH} h`);
});

test('jsapi: prepay_id, signed mini-program parameters the WeChat client accepts; a tampered paySign is refused', async () => {
  const ref = newRef('js');
  const r = await connector.createPayment(input(ref, { method: 'jsapi', payer: { openid: 'oUpF8uMuAJO_M2pxb1Q9zNjWeS6o' }, amountMinor: 600n }));
  assert.equal(r.action.type, 'app');
  const params = (r.action as { params: Record<string, unknown> }).params;
  assert.match(String(params['package']), /^prepay_id=wx\d{14}[0-9a-f]{20}$/);
  assert.equal(params['appId'], 'wxminiprogram00001');
  const ok = await fetch(`${base}/sandbox/wechatpay/client/request-payment`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(params) });
  assert.equal(ok.status, 200);
  const view = (await ok.json()) as Record<string, any>;
  assert.equal(view['trade_type'], 'JSAPI');
  assert.equal(view['amount'], 600);
  for (const bad of [{ ...params, paySign: flipChar(String(params['paySign']), 20) }, { ...params, timeStamp: String(Number(params['timeStamp']) + 1) }, { ...params, signType: 'MD5' }]) {
    const res = await fetch(`${base}/sandbox/wechatpay/client/request-payment`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(bad) });
    assert.equal(res.status, 400);
    assert.equal(((await res.json()) as any).error.code, 'invalid_signature');
  }
  await simulate(ref, 'succeeded');
  const [cb] = await waitReceived(ref, 1);
  const plain = JSON.parse(decryptResource(JSON.parse(cb!.rawBody.toString()).resource, Buffer.from(keys.apiV3Key))!.toString());
  assert.equal(plain.trade_type, 'JSAPI');
  assert.equal(plain.appid, 'wxminiprogram00001');
  assert.equal(plain.payer.openid, 'oUpF8uMuAJO_M2pxb1Q9zNjWeS6o', 'the buyer is the openid the order named');
  assert.ok((await verify(connector, cb!)).ok, 'the per-method appid is accepted');
});

test('app: APP parameters (partnerid, Sign=WXPay, sign over the bare prepay id) accepted; tampered refused', async () => {
  const ref = newRef('app');
  const r = await connector.createPayment(input(ref, { method: 'app' }));
  const params = (r.action as { params: Record<string, unknown> }).params;
  const send = (p: unknown) => fetch(`${base}/sandbox/wechatpay/client/request-payment`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(p) });
  const ok = await send(params);
  assert.equal(ok.status, 200);
  assert.equal(((await ok.json()) as any).trade_type, 'APP');
  assert.equal((await send({ ...params, sign: flipChar(String(params['sign']), 5) })).status, 400);
  assert.equal((await send({ ...params, partnerid: '1230000109' })).status, 400);
  assert.equal((await send({ ...params, prepayid: 'wx00000000000000000000000000000000ff' })).status, 400, 'signature covers the prepay id');
});

test('h5: h5_url opens the sandbox cashier; paying redirects to the merchant\'s redirect_url; the callback follows', async () => {
  const ref = newRef('h5');
  const r = await connector.createPayment(input(ref, { method: 'h5', amountMinor: 4999n, payer: { client_ip: '203.0.113.9' }, returnUrl: `${base}/shop/return?order=1` }));
  assert.equal(r.action.type, 'redirect');
  const url = r.action.type === 'redirect' ? r.action.url : '';
  assert.ok(url.startsWith(`${base}/sandbox/wechatpay/cgi-bin/mmpayweb-bin/checkmweb?prepay_id=wx`), url);
  assert.ok(url.endsWith(`&redirect_url=${encodeURIComponent(`${base}/shop/return?order=1`)}`), url);
  const page = await fetch(url);
  assert.equal(page.status, 200);
  const html = await page.text();
  assert.match(html, /id="amount_total">49\.99</);
  const prepayId = /name="prepay_id" value="(wx[0-9a-f]+)"/.exec(html)?.[1];
  assert.ok(prepayId);
  assert.equal((await connector.queryPayment({ channelReference: ref, currency: 'CNY' })).state, 'pending');
  const pay = await fetch(`${base}/sandbox/wechatpay/cashier/pay`, {
    method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, redirect: 'manual',
    body: new URLSearchParams({ prepay_id: prepayId!, redirect_url: `${base}/shop/return?order=1` }).toString(),
  });
  assert.equal(pay.status, 302);
  assert.equal(pay.headers.get('location'), `${base}/shop/return?order=1`);
  assert.equal((await connector.queryPayment({ channelReference: ref, currency: 'CNY' })).state, 'succeeded');
  const [cb] = await waitReceived(ref, 1);
  assert.ok((await verify(connector, cb!)).ok);
  // Paying twice: refused; an unknown prepay id: 404.
  const again = await fetch(`${base}/sandbox/wechatpay/cashier/pay`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: `prepay_id=${prepayId}` });
  assert.equal(again.status, 409);
  assert.equal((await fetch(`${base}/sandbox/wechatpay/cgi-bin/mmpayweb-bin/checkmweb?prepay_id=wx000`)).status, 404);
});

test('close of an unpaid trade answers closed (204), again closed; the buyer can no longer pay', async () => {
  const ref = newRef('close');
  await connector.createPayment(input(ref));
  assert.deepEqual(await connector.closePayment({ channelReference: ref, currency: 'CNY' }), { state: 'closed', channelReference: ref, rawStatus: 'CLOSED' });
  assert.equal((await connector.queryPayment({ channelReference: ref, currency: 'CNY' })).state, 'closed');
  assert.equal((await connector.closePayment({ channelReference: ref, currency: 'CNY' })).state, 'closed', 'closing again is a no-op');
  const sim = await simulate(ref, 'succeeded');
  assert.equal(sim.status, 409);
  assert.equal(sim.body['error'].code, 'trade_already_final');
  await rejectsWith(connector.createPayment(input(ref)), 'ORDER_CLOSED', false);
});

test('close of a paid trade: WeChat Pay answers ORDERPAID, the connector reports succeeded', async () => {
  const ref = newRef('closepaid');
  await connector.createPayment(input(ref));
  await simulate(ref, 'succeeded');
  const raw = await signedFetch('POST', `/v3/pay/transactions/out-trade-no/${ref}/close`, { mchid: MCHID });
  assert.equal(raw.status, 400);
  assert.equal(raw.body!['code'], 'ORDERPAID');
  const snap = await connector.closePayment({ channelReference: ref, currency: 'CNY' });
  assert.equal(snap.state, 'succeeded');
  assert.equal(snap.amountMinor, 1234n);
  await waitReceived(ref, 1);
});

test('the same out_trade_no is idempotent; changed fields are OUT_TRADE_NO_USED; a paid trade is ORDERPAID', async () => {
  const ref = newRef('idem');
  const a = await connector.createPayment(input(ref));
  const b = await connector.createPayment(input(ref));
  assert.deepEqual(b.action, a.action, 'same code_url');
  await rejectsWith(connector.createPayment(input(ref, { amountMinor: 1235n })), 'OUT_TRADE_NO_USED', false);
  await rejectsWith(connector.createPayment(input(ref, { subject: '另一个课程' })), 'OUT_TRADE_NO_USED', false);
  await rejectsWith(connector.createPayment(input(ref, { method: 'app' })), 'OUT_TRADE_NO_USED', false);
  const h5Ref = newRef('idemh5');
  const h1 = await connector.createPayment(input(h5Ref, { method: 'h5', payer: { client_ip: '203.0.113.1' } }));
  const h2 = await connector.createPayment(input(h5Ref, { method: 'h5', payer: { client_ip: '2001:db8::1' } }));
  assert.deepEqual(h2.action, h1.action, 'the client IP may change between attempts');
  await simulate(ref, 'succeeded');
  await rejectsWith(connector.createPayment(input(ref)), 'ORDERPAID', false);
  await waitReceived(ref, 1);
});

test('time_expire is honoured: no payment after it; the trade stays NOTPAY until closed', async () => {
  const ref = newRef('exp');
  await connector.createPayment(input(ref, { expiresAt: new Date(Date.now() - 60_000) }));
  const sim = await simulate(ref, 'succeeded');
  assert.equal(sim.status, 409);
  assert.equal(sim.body['error'].code, 'trade_expired');
  assert.equal((await connector.queryPayment({ channelReference: ref, currency: 'CNY' })).rawStatus, 'NOTPAY');
  assert.equal((await connector.closePayment({ channelReference: ref, currency: 'CNY' })).state, 'closed');
  const soon = newRef('soon');
  await connector.createPayment(input(soon, { expiresAt: new Date(Date.now() + 1500) }));
  await new Promise((r) => setTimeout(r, 1600));
  assert.equal((await simulate(soon, 'succeeded')).body['error'].code, 'trade_expired');
});

test('simulate failed → PAYERROR (failed), canceled → CLOSED (closed): found by query, no callback (WeChat Pay sends none)', async () => {
  const failed = newRef('fail');
  await connector.createPayment(input(failed));
  const f = await simulate(failed, 'failed');
  assert.equal(f.status, 200);
  assert.equal(f.body['trade_state'], 'PAYERROR');
  assert.equal(f.body['notification'], null);
  const fs = await connector.queryPayment({ channelReference: failed, currency: 'CNY' });
  assert.deepEqual([fs.state, fs.rawStatus], ['failed', 'PAYERROR']);
  const canceled = newRef('cancel');
  await connector.createPayment(input(canceled));
  assert.equal((await simulate(canceled, 'canceled')).body['trade_state'], 'CLOSED');
  assert.equal((await connector.queryPayment({ channelReference: canceled, currency: 'CNY' })).state, 'closed');
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(received.filter((r) => r.name === failed || r.name === canceled).length, 0);
  assert.deepEqual(await waitForSandboxNotifications(db.pool, { channel: 'wechatpay', channelReference: failed, timeoutMs: 0, until: () => true }), []);
});

// ---- Negative paths ----------------------------------------------------------------------------------------

test('query and close of an unknown trade answer not_found (ORDER_NOT_EXIST)', async () => {
  const ref = newRef('unknown');
  assert.deepEqual(await connector.queryPayment({ channelReference: ref, currency: 'CNY' }), { state: 'not_found', channelReference: ref });
  assert.deepEqual(await connector.closePayment({ channelReference: ref, currency: 'CNY' }), { state: 'not_found', channelReference: ref });
  const raw = await signedFetch('GET', `/v3/pay/transactions/out-trade-no/${ref}?mchid=${MCHID}`);
  assert.equal(raw.status, 404);
  assert.deepEqual(raw.body, { code: 'ORDER_NOT_EXIST', message: '订单不存在' });
});

test('simulate: unknown trade 404, bad input 400, final trade 409, in the Knowpay error shape', async () => {
  const unknown = await simulate('NO_SUCH_TRADE', 'succeeded');
  assert.equal(unknown.status, 404);
  assert.deepEqual(Object.keys(unknown.body['error']).sort(), ['code', 'message', 'param', 'type']);
  assert.equal(unknown.body['error'].type, 'invalid_request_error');
  assert.equal(unknown.body['error'].code, 'trade_not_found');
  const ref = newRef('sim');
  await connector.createPayment(input(ref));
  const bad = await simulate(ref, 'refunded');
  assert.equal(bad.status, 400);
  assert.equal(bad.body['error'].param, 'outcome');
  const missing = await fetch(`${base}/sandbox/wechatpay/simulate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ outcome: 'succeeded' }) });
  assert.equal(missing.status, 400);
  assert.equal(((await missing.json()) as any).error.param, 'channel_reference');
  const notJson = await fetch(`${base}/sandbox/wechatpay/simulate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{oops' });
  assert.equal(notJson.status, 400);
  assert.equal((await simulate(ref, 'succeeded')).status, 200);
  const again = await simulate(ref, 'failed');
  assert.equal(again.status, 409);
  assert.equal(again.body['error'].code, 'trade_already_final');
  await waitReceived(ref, 1);
});

test('a request signed with another key gets WeChat Pay\'s 401 SIGN_ERROR; the connector raises SIGN_ERROR', async () => {
  const wrong = generateKeyPairSync('rsa', { modulusLength: 2048, privateKeyEncoding: { type: 'pkcs8', format: 'pem' }, publicKeyEncoding: { type: 'spki', format: 'pem' } });
  const raw = await signedFetch('GET', `/v3/pay/transactions/out-trade-no/X123456?mchid=${MCHID}`, undefined, { privateKey: wrong.privateKey });
  assert.equal(raw.status, 401);
  assert.equal(raw.body!['code'], 'SIGN_ERROR');
  assert.equal(raw.body!['message'], '错误的签名，验签失败');
  assert.equal(raw.body!['detail'].detail.issue, 'sign not match');
  assert.equal(raw.body!['detail'].sign_information.method, 'GET');
  assert.match(raw.body!['detail'].sign_information.truncated_sign_message, /^GET\n\/sandbox\/wechatpay\/v3\/pay\/transactions\/out-trade-no\/X123456\?mchid=1900000109\n\d+\n[A-Za-z0-9]{32}\n\n$/);
  audits = [];
  const c = makeConnector({ privateKey: wrong.privateKey });
  await rejectsWith(c.queryPayment({ channelReference: 'X123456', currency: 'CNY' }), 'SIGN_ERROR', false);
  await rejectsWith(c.createPayment(input(newRef('wrongkey'))), 'SIGN_ERROR', false);
  await rejectsWith(c.closePayment({ channelReference: 'X123456', currency: 'CNY' }), 'SIGN_ERROR', false);
  assert.equal(audits.length, 3);
  assert.equal((audits[0]!.response as any).status, 401);
});

test('Authorization checks: missing, malformed, wrong serial, wrong mchid, stale timestamp, body changed after signing', async () => {
  const path = `/sandbox/wechatpay/v3/pay/transactions/out-trade-no/X123456?mchid=${MCHID}`;
  const none = await fetch(`${base}${path}`);
  assert.equal(none.status, 401);
  assert.equal(((await none.json()) as any).code, 'SIGN_ERROR');
  assert.equal(none.headers.get('wechatpay-signature'), null, 'a 401 is not signed');
  const malformed = await fetch(`${base}${path}`, { headers: { authorization: 'WECHATPAY2-SHA256-RSA2048 mchid=1900000109' } });
  assert.equal(malformed.status, 401);
  const serial = await signedFetch('GET', path.slice('/sandbox/wechatpay'.length), undefined, { serialNo: 'DEADBEEF' });
  assert.deepEqual([serial.status, serial.body!['code']], [401, 'SIGN_ERROR']);
  assert.match(serial.body!['message'], /证书序列号/);
  const mch = await signedFetch('GET', path.slice('/sandbox/wechatpay'.length), undefined, { mchid: '1230000109' });
  assert.deepEqual([mch.status, mch.body!['code']], [400, 'MCH_NOT_EXISTS']);
  const stale = await signedFetch('GET', path.slice('/sandbox/wechatpay'.length), undefined, { timestamp: Math.floor(Date.now() / 1000) - 301 });
  assert.deepEqual([stale.status, stale.body!['code'], stale.body!['detail'].detail.issue], [401, 'SIGN_ERROR', 'timestamp expired']);
  const fresh = await signedFetch('GET', path.slice('/sandbox/wechatpay'.length), undefined, { timestamp: Math.floor(Date.now() / 1000) - 200 });
  assert.equal(fresh.status, 404, 'inside the window: authenticated, then ORDER_NOT_EXIST');
  // Signed for one body, sent with another.
  const url = '/sandbox/wechatpay/v3/pay/transactions/native';
  const signedBody = JSON.stringify({ appid: APPID, mchid: MCHID, description: 'x', out_trade_no: newRef('swap'), notify_url: `${base}/notify/x`, amount: { total: 1 } });
  const authorization = signRequest({ method: 'POST', url, body: signedBody, mchid: MCHID, serialNo: keys.merchantSerial, privateKey: keys.merchantPrivateKey });
  const swapped = await fetch(`${base}${url}`, { method: 'POST', headers: { authorization, 'content-type': 'application/json' }, body: signedBody.replace('"total":1', '"total":2') });
  assert.equal(swapped.status, 401);
  const ok = await fetch(`${base}${url}`, { method: 'POST', headers: { authorization, 'content-type': 'application/json' }, body: signedBody });
  assert.equal(ok.status, 200, 'the same request, unaltered, is accepted');
});

test('order validation answers PARAM_ERROR / APPID_MCHID_NOT_MATCH like WeChat Pay', async () => {
  const order = (over: Record<string, unknown>) => ({ appid: APPID, mchid: MCHID, description: '课程', out_trade_no: newRef('val'), notify_url: `${base}/notify/v`, amount: { total: 100, currency: 'CNY' }, ...over });
  const cases: Array<[string, Record<string, unknown>, number, string, RegExp]> = [
    ['native', order({ amount: { total: 0 } }), 400, 'PARAM_ERROR', /总金额/],
    ['native', order({ amount: { total: 1.5 } }), 400, 'PARAM_ERROR', /总金额/],
    ['native', order({ amount: { total: 100, currency: 'USD' } }), 400, 'PARAM_ERROR', /货币类型/],
    ['native', order({ description: undefined }), 400, 'PARAM_ERROR', /商品描述.*必填/],
    ['native', order({ description: '课'.repeat(43) }), 400, 'PARAM_ERROR', /127字节/],
    ['native', order({ out_trade_no: 'ab' }), 400, 'PARAM_ERROR', /商户订单号/],
    ['native', order({ notify_url: 'https://x.example/n?a=1' }), 400, 'PARAM_ERROR', /通知地址/],
    ['native', order({ time_expire: '2026-11-22 10:00:00' }), 400, 'PARAM_ERROR', /rfc3339/],
    ['native', order({ mchid: '1230000109' }), 400, 'PARAM_ERROR', /商户号不一致/],
    ['native', order({ appid: 'wx0000000000000000' }), 400, 'APPID_MCHID_NOT_MATCH', /AppID/],
    ['jsapi', order({}), 400, 'PARAM_ERROR', /payer\/openid.*用户标识/],
    ['h5', order({ scene_info: { payer_client_ip: '1.2.3.4' } }), 400, 'PARAM_ERROR', /场景类型/],
    ['h5', order({ scene_info: { payer_client_ip: 'nope', h5_info: { type: 'Wap' } } }), 400, 'PARAM_ERROR', /用户终端IP/],
    ['micropay', order({}), 404, 'NOT_FOUND', /./],
  ];
  for (const [method, body, status, code, message] of cases) {
    const r = await signedFetch('POST', `/v3/pay/transactions/${method}`, body);
    assert.deepEqual([r.status, r.body!['code']], [status, code], `${method} ${JSON.stringify(body).slice(0, 80)}`);
    assert.match(r.body!['message'], message);
  }
  const notJson = await signedFetch('POST', '/v3/pay/transactions/native', '{not json');
  assert.deepEqual([notJson.status, notJson.body!['code']], [400, 'PARAM_ERROR']);
  const q1 = await signedFetch('GET', '/v3/pay/transactions/out-trade-no/X123456');
  assert.deepEqual([q1.status, q1.body!['code']], [400, 'PARAM_ERROR']);
  const q2 = await signedFetch('GET', '/v3/pay/transactions/out-trade-no/X123456?mchid=1230000109');
  assert.deepEqual([q2.status, q2.body!['code']], [400, 'PARAM_ERROR']);
  const c1 = await signedFetch('POST', '/v3/pay/transactions/out-trade-no/X123456/close', {});
  assert.deepEqual([c1.status, c1.body!['code']], [400, 'PARAM_ERROR']);
});

test('a tampered, unsigned, re-signed or stale answer makes the connector raise', async () => {
  const ref = newRef('mitm');
  await connector.createPayment(input(ref));
  for (const mode of ['content', 'sign', 'nosign', 'stale']) {
    const c = makeConnector({}, keys, `${base}/tamper/${mode}`);
    await rejectsWith(c.queryPayment({ channelReference: ref, currency: 'CNY' }), 'invalid_response_signature', false);
    await rejectsWith(c.createPayment(input(newRef(`mitm${mode}`))), 'invalid_response_signature', false);
  }
  const passthrough = makeConnector({}, keys, `${base}/tamper/none`);
  assert.equal((await passthrough.queryPayment({ channelReference: ref, currency: 'CNY' })).rawStatus, 'NOTPAY', 'the proxy itself is transparent');
  const otherKeys = await generateWechatpaySandboxKeys();
  const foreign = makeConnector({ platformKeys: { [keys.platformPublicKeyId]: otherKeys.platformPublicKey } });
  await rejectsWith(foreign.queryPayment({ channelReference: ref, currency: 'CNY' }), 'invalid_response_signature', false);
  const unknownId = makeConnector({ platformKeys: { PUB_KEY_ID_0000000000000000000000000000000000: keys.platformPublicKey } });
  await rejectsWith(unknownId.queryPayment({ channelReference: ref, currency: 'CNY' }), 'invalid_response_signature', false);
});

test('the trade view and client endpoints refuse garbage', async () => {
  const view = await fetch(`${base}/sandbox/wechatpay/trades/NOPE123`);
  assert.equal(view.status, 404);
  const rp = await fetch(`${base}/sandbox/wechatpay/client/request-payment`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '[]' });
  assert.equal(rp.status, 400);
  const noPrepay = await fetch(`${base}/sandbox/wechatpay/cashier/pay`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: 'x=1' });
  assert.equal(noPrepay.status, 400);
});

// ---- Faults and several processes -----------------------------------------------------------------------------

async function faults(body: unknown, method = 'POST') {
  const res = await fetch(`${base}/sandbox/faults`, { method, ...(method === 'POST' ? { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) } : {}) });
  return { status: res.status, body: (await res.json()) as Record<string, any> };
}

test('faults: drop loses the callback (query settles it); duplicate + delay delivers it twice, late, identical', async () => {
  try {
    assert.equal((await faults({ channel: 'wechatpay', drop_rate: 1 })).status, 200);
    const dropped = newRef('drop');
    await connector.createPayment(input(dropped));
    assert.equal((await simulate(dropped, 'succeeded')).status, 200);
    const [row] = await waitForSandboxNotifications(db.pool, { channel: 'wechatpay', channelReference: dropped, timeoutMs: 2000 });
    assert.equal(row!.status, 'dropped');
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(received.filter((r) => r.name === dropped).length, 0);
    assert.equal((await connector.queryPayment({ channelReference: dropped, currency: 'CNY' })).state, 'succeeded', 'the query still settles it');

    assert.equal((await faults({ channel: 'wechatpay', drop_rate: 0, duplicate_rate: 1, delay_ms: 200 })).status, 200);
    const dup = newRef('dup');
    await connector.createPayment(input(dup));
    const t0 = Date.now();
    await simulate(dup, 'succeeded');
    const got = await waitReceived(dup, 2);
    assert.ok(got[0]!.at - t0 >= 195, 'delay_ms applied');
    assert.equal(got[0]!.rawBody.toString(), got[1]!.rawBody.toString(), 'the duplicate is the same callback');
    for (const g of got) assert.ok((await verify(connector, g)).ok);
  } finally {
    assert.equal((await faults(null, 'DELETE')).status, 200);
  }
});

test('two service processes sharing one database see the same trades and deliver each callback once', async () => {
  const port = await freePort();
  const other = await buildApp(db.pool, port, keys, TIME_SCALE);
  try {
    const otherConnector = makeConnector({}, keys, `http://127.0.0.1:${port}`);
    const refs = Array.from({ length: 6 }, () => newRef('multi'));
    for (const [i, ref] of refs.entries()) await (i % 2 ? connector : otherConnector).createPayment(input(ref));
    for (const [i, ref] of refs.entries()) assert.equal((await simulate(ref, 'succeeded', i % 2 ? base : `http://127.0.0.1:${port}`)).status, 200);
    for (const ref of refs) assert.equal((await otherConnector.queryPayment({ channelReference: ref, currency: 'CNY' })).state, 'succeeded');
    for (const ref of refs) await waitReceived(ref, 1);
    await new Promise((r) => setTimeout(r, 300));
    for (const ref of refs) assert.equal(received.filter((r) => r.name === ref).length, 1, `${ref} delivered once`);
  } finally {
    await other.close();
  }
});

test('attempts are bounded: a receiver that never acknowledges gets exactly 16 callbacks', async () => {
  const isolated = await freshDatabase();
  const port = await freePort();
  const fast = await buildApp(isolated.pool, port, keys, 0.00001); // the ~24 h schedule in ~0.9 s
  try {
    const c = makeConnector({}, keys, `http://127.0.0.1:${port}`);
    const ref = newRef('never');
    answers.set(ref, () => ({ status: 500, body: '{"code":"FAIL","message":"失败"}' }));
    await c.createPayment(input(ref, { notifyUrl: `http://127.0.0.1:${port}/notify/${ref}` }));
    assert.equal((await simulate(ref, 'succeeded', `http://127.0.0.1:${port}`)).status, 200);
    const [row] = await waitForSandboxNotifications(isolated.pool, { channel: 'wechatpay', channelReference: ref, timeoutMs: 15000 });
    assert.equal(row!.status, 'failed');
    assert.equal(row!.attempts, 16);
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(received.filter((r) => r.name === ref).length, 16);
  } finally {
    await fast.close();
    await isolated.drop();
  }
});

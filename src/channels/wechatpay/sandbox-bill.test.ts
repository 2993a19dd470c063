/**
 * The trade bill over real HTTP: the connector's downloadBill (signed tradebill call, signed
 * download, SHA1 check) against the sandbox after paid and refunded trades, read back with
 * readWechatpayBill; then the ways a download must fail (hash mismatch, foreign download_url,
 * unsigned download, future day), and a day without trades (NO_STATEMENT_EXIST → empty bill).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import Fastify, { type FastifyInstance } from 'fastify';
import { freshDatabase, type TestDatabase } from '../../../test/support/db.ts';
import { estimateFee, DEFAULT_FEES } from '../../domain/ledger-rules.ts';
import { ChannelError, type ChannelConnector } from '../types.ts';
import type { BillLine } from '../../reconciliation/types.ts';
import { createWechatpayConnector, type WechatpayAuditEntry } from './connector.ts';
import { generateWechatpaySandboxKeys, wechatpaySandboxPlugin, type WechatpaySandboxKeys } from './sandbox.ts';
import { signatureHeaders, signRequest } from './sign.ts';
import { readWechatpayBill } from './bill.ts';
import { readAllLines } from '../../../test/support/assertions.ts';
import { freePort } from '../../store/embedded.ts';

const MCHID = '1900000109';
const APPID = 'wx8888888888888888';
const DAY = '2026-11-20';

let db: TestDatabase;
let keys: WechatpaySandboxKeys;
let app: FastifyInstance;
let base = '';
let connector: ChannelConnector;
let audits: WechatpayAuditEntry[] = [];
let counter = 0;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'wx-sandbox-bill-'));

const makeConnector = (baseURL: string) => createWechatpayConnector({
  mchid: MCHID, appid: APPID, merchantSerial: keys.merchantSerial, privateKey: keys.merchantPrivateKey,
  platformKeys: { [keys.platformPublicKeyId]: keys.platformPublicKey }, apiV3Key: keys.apiV3Key, baseURL, timeoutMs: 5000, audit: (e) => audits.push(e),
});

before(async () => {
  db = await freshDatabase();
  keys = await generateWechatpaySandboxKeys();
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  app = Fastify();
  await app.register(wechatpaySandboxPlugin, {
    prefix: '/sandbox/wechatpay', pool: db.pool, mchid: MCHID, appids: [APPID], merchantSerial: keys.merchantSerial,
    merchantPublicKey: keys.merchantPublicKey, platformPrivateKey: keys.platformPrivateKey, platformPublicKeyId: keys.platformPublicKeyId,
    apiV3Key: keys.apiV3Key, publicBaseUrl: base, timeScale: 0.001, refundSettleMs: null, deliverNotifications: false,
  });
  await app.listen({ host: '127.0.0.1', port });
  connector = makeConnector(`${base}/sandbox/wechatpay/`);
});

after(async () => {
  await app.close();
  await db.drop();
  fs.rmSync(tmp, { recursive: true, force: true });
});

const post = (p: string, body: unknown) => fetch(`${base}/sandbox/wechatpay${p}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });

async function trade(amount: bigint, pay: boolean): Promise<string> {
  const ref = `KPBILL${process.pid}x${++counter}`;
  await connector.createPayment({
    channelReference: ref, paymentId: 'pay_' + ref, orderId: 'ord_' + ref, customerId: 'cr_test', items: [], method: 'native',
    amountMinor: amount, currency: 'CNY', subject: '课程, 第一讲', notifyUrl: `${base}/notify/${ref}`, expiresAt: new Date(Date.now() + 600_000),
  });
  if (pay) assert.equal((await post('/simulate', { channel_reference: ref, outcome: 'succeeded' })).status, 200);
  return ref;
}

async function refund(ref: string, rf: string, amount: bigint, total: bigint, outcome: 'succeeded' | null) {
  await connector.refundPayment!({ channelReference: ref, refundReference: rf, amountMinor: amount, paymentAmountMinor: total, currency: 'CNY', notifyUrl: `${base}/notify/${rf}` });
  if (outcome) assert.equal((await post('/refunds/simulate', { refund_reference: rf, outcome })).status, 200);
}

const readAll = (p: string) => readAllLines(readWechatpayBill, p);

const file = () => path.join(tmp, `bill-${++counter}.csv`);

test('downloadBill: the day\'s payments and successful refunds, amounts and 0.6% fees as the ledger estimates them', async () => {
  const a = await trade(10000n, true);
  const b = await trade(333n, true);
  const c = await trade(2599n, true);
  await trade(500n, false); // never paid: not billed
  await refund(a, `re_${a}_1`, 3000n, 10000n, 'succeeded');
  await refund(a, `re_${a}_2`, 7000n, 10000n, 'succeeded');
  await refund(b, `re_${b}_1`, 100n, 333n, null); // still PROCESSING: not billed
  // Move the day's activity to DAY, Beijing time (a past day, as WeChat Pay bills it).
  await db.pool.query(`UPDATE sandbox_wechatpay_trades SET success_time = $1::timestamptz + (out_trade_no = $2)::int * interval '1 hour' WHERE success_time IS NOT NULL`,
    [`${DAY}T09:00:00+08:00`, b]);
  await db.pool.query(`UPDATE sandbox_wechatpay_refunds SET success_time = $1::timestamptz + interval '1 minute' * (CASE WHEN out_refund_no LIKE '%_2' THEN 2 ELSE 1 END) WHERE success_time IS NOT NULL`,
    [`${DAY}T23:58:00+08:00`]);
  const txid = async (ref: string) => (await db.pool.query<{ transaction_id: string }>('SELECT transaction_id FROM sandbox_wechatpay_trades WHERE out_trade_no = $1', [ref])).rows[0]!.transaction_id;

  audits = [];
  const dest = file();
  await connector.downloadBill!({ billDate: DAY, destination: dest });
  assert.deepEqual(audits.map((x) => x.operation), ['download_bill', 'download_bill_file']);
  assert.deepEqual(audits[0]!.request, { method: 'GET', path: 'v3/bill/tradebill', params: { bill_date: DAY, bill_type: 'ALL' } });
  const text = fs.readFileSync(dest, 'utf8');
  assert.match(text, /^交易时间,公众账号ID,/);
  assert.match(text, /`0\.60000,`0\.60%/, 'fees in yuan with 5 decimals, rate 0.60%');
  assert.match(text, /`-0\.18000,`0\.60%/, 'refund lines give the fee back (negative)');
  assert.match(text, /总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额\r\n`4,`129\.32,`30\.00,`0\.00,`0\.59592,`129\.32,`30\.00\r\n$/);

  const fee = (fen: bigint) => estimateFee(fen, DEFAULT_FEES.wechatpay!);
  const at = (t: string) => new Date(t);
  // The second refund of a finished at 00:00 the next day (Beijing): on the next day's bill.
  assert.deepEqual(await readAll(dest), [
    { lineNo: 1, kind: 'payment', channelReference: a, channelTransactionId: await txid(a), amount: 10000n, fee: fee(10000n), currency: 'CNY', occurredAt: at(`${DAY}T01:00:00Z`) },
    { lineNo: 2, kind: 'payment', channelReference: c, channelTransactionId: await txid(c), amount: 2599n, fee: fee(2599n), currency: 'CNY', occurredAt: at(`${DAY}T01:00:00Z`) },
    { lineNo: 3, kind: 'payment', channelReference: b, channelTransactionId: await txid(b), amount: 333n, fee: fee(333n), currency: 'CNY', occurredAt: at(`${DAY}T02:00:00Z`) },
    { lineNo: 4, kind: 'refund', channelReference: a, channelTransactionId: await txid(a), refundReference: `re_${a}_1`, amount: 3000n, fee: fee(3000n), currency: 'CNY', occurredAt: at(`${DAY}T15:59:00Z`) },
  ]);
  const next = file();
  await connector.downloadBill!({ billDate: '2026-11-21', destination: next });
  assert.deepEqual((await readAll(next)).map((l) => [l.kind, l.refundReference, l.amount, l.fee]), [['refund', `re_${a}_2`, 7000n, fee(7000n)]]);
});

test('a day without trades: NO_STATEMENT_EXIST becomes an empty bill that reads as zero lines', async () => {
  const dest = file();
  await connector.downloadBill!({ billDate: '2026-01-05', destination: dest });
  assert.deepEqual(await readAll(dest), []);
});

test('a future day and a malformed date are refused', async () => {
  await assert.rejects(connector.downloadBill!({ billDate: '2999-01-01', destination: file() }), (e: unknown) => e instanceof ChannelError && e.code === 'INVALID_REQUEST' && !e.retryable);
  await assert.rejects(connector.downloadBill!({ billDate: '2026-13-45', destination: file() }), (e: unknown) => e instanceof ChannelError && e.code === 'bill_date_invalid');
});

test('the sandbox download needs the merchant\'s signature, and its answer is not signed', async () => {
  const url = `/sandbox/wechatpay/v3/bill/tradebill?bill_date=${DAY}&bill_type=ALL`;
  const signed = (u: string) => ({ authorization: signRequest({ method: 'GET', url: u, mchid: MCHID, serialNo: keys.merchantSerial, privateKey: keys.merchantPrivateKey }) });
  const answer = await fetch(base + url, { headers: signed(url) });
  assert.equal(answer.status, 200);
  assert.ok(answer.headers.get('wechatpay-signature'), 'the tradebill answer is signed');
  const { download_url: downloadUrl } = (await answer.json()) as { download_url: string };
  const u = new URL(downloadUrl);
  assert.equal((await fetch(u)).status, 401);
  const ok = await fetch(u, { headers: signed(u.pathname + u.search) });
  assert.equal(ok.status, 200);
  assert.equal(ok.headers.get('wechatpay-signature'), null);
  assert.match(await ok.text(), /^交易时间/);
  const forged = new URL(downloadUrl);
  forged.searchParams.set('token', forged.searchParams.get('token')!.replace(/.$/, (ch) => (ch === 'A' ? 'B' : 'A')));
  assert.equal((await fetch(forged, { headers: signed(forged.pathname + forged.search) })).status, 400);
});

/** A fake WeChat Pay whose tradebill answer (properly signed) is chosen per test. */
async function fakeWechatpay(answer: (origin: string) => Record<string, unknown>, file: string): Promise<{ origin: string; close: () => Promise<void> }> {
  const srv = http.createServer((req, res) => {
    const origin = `http://127.0.0.1:${(srv.address() as net.AddressInfo).port}`;
    if (req.url?.startsWith('/v3/bill/tradebill')) {
      const body = JSON.stringify(answer(origin));
      res.writeHead(200, { 'content-type': 'application/json', ...signatureHeaders(body, keys.platformPublicKeyId, keys.platformPrivateKey) }).end(body);
    } else {
      res.writeHead(200, { 'content-type': 'application/octet-stream' }).end(file);
    }
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const origin = `http://127.0.0.1:${(srv.address() as net.AddressInfo).port}`;
  return { origin, close: () => new Promise<void>((r) => { srv.closeAllConnections(); srv.close(() => r()); }) };
}

test('a bill whose SHA1 is not hash_value is refused and not left behind; a download_url on another host is never fetched', async () => {
  const fake = await fakeWechatpay((origin) => ({ hash_type: 'SHA1', hash_value: '0'.repeat(40), download_url: `${origin}/v3/billdownload/file?token=x` }), '交易时间\r\n');
  const dest = file();
  await assert.rejects(makeConnector(`${fake.origin}/`).downloadBill!({ billDate: DAY, destination: dest }),
    (e: unknown) => e instanceof ChannelError && e.code === 'bill_hash_mismatch' && e.retryable);
  assert.equal(fs.existsSync(dest), false);
  await fake.close();

  const other = await fakeWechatpay(() => ({ hash_type: 'SHA1', hash_value: '0'.repeat(40), download_url: 'http://127.0.0.2:9/v3/billdownload/file?token=x' }), '');
  await assert.rejects(makeConnector(`${other.origin}/`).downloadBill!({ billDate: DAY, destination: file() }),
    (e: unknown) => e instanceof ChannelError && e.code === 'invalid_response' && /is not on/.test(e.message));
  await other.close();
});

/**
 * Google Play's bill end to end, over real HTTP (127.0.0.1) against the sandbox and a fresh
 * database: the sandbox builds the month's earnings report from its purchases and serves it as
 * Cloud Storage does; the connector (as index.ts builds it) downloads it, keeps the bill day of its
 * app, and the reader and Knowpay's reconciliation read it. orders.get through queryPayment, and
 * the refusals: a day not begun, a report not published, bad credentials, another bucket.
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
import type { ChannelConnector, CreatePaymentInput } from '../types.ts';
import type { ChannelAuditEntry } from '../module.ts';
import { getSetting } from '../../store/settings.ts';
import { DEFAULT_FEES, estimateFee } from '../../domain/ledger-rules.ts';
import { runReconciliation } from '../../reconciliation/reconcile.ts';
import type { BillLine } from '../../reconciliation/types.ts';
import { ANDROIDPUBLISHER_SCOPE, DEVSTORAGE_READ_ONLY_SCOPE, JWT_BEARER_GRANT, serviceAccountTokenClient } from './auth.ts';
import { createGooglePlayConnector } from './connector.ts';
import { GOOGLE_PLAY_SANDBOX_PACKAGE, GOOGLE_PLAY_SANDBOX_SERVICE_ACCOUNT, googlePlayModule } from './index.ts';
import type { GooglePlaySandboxKeys } from './sandbox.ts';
import { sandboxReportsBucket } from './sandbox-reports.ts';
import { earningsObjectName, pacificDay, parseReportTime, readGooglePlayBill } from './bill.ts';
import { loadPrivateKey, signJwtRs256 } from './sign.ts';
import { writeAlipayBillZip } from '../alipay/bill.ts';
import { rejectsWith, readAllLines } from '../../../test/support/assertions.ts';
import { freePort } from '../../store/embedded.ts';

const PKG = GOOGLE_PLAY_SANDBOX_PACKAGE;
const SKU = 'course.typescript_advanced';
const BUCKET = sandboxReportsBucket(PKG);
const DEVELOPER_ID = BUCKET.slice('pubsite_prod_rev_'.length);

let db: TestDatabase;
let app: FastifyInstance;
let base = '';
let keys: GooglePlaySandboxKeys;
let connector: ChannelConnector;
let audits: ChannelAuditEntry[] = [];
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'play-bill-download-'));
let fileNo = 0;
const newFile = () => path.join(dir, `bill-${++fileNo}.csv`);

let refCounter = 0;
const newRef = (tag: string) => `KP${tag.toUpperCase()}${process.pid}X${++refCounter}`.slice(0, 32);

async function post(p: string, body: unknown) {
  const res = await fetch(`${base}/sandbox/google_play${p}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: res.status, body: (await res.json()) as Record<string, any> };
}

/** A Knowpay order and payment for the reference (the sandbox prices a purchase by its payment). */
async function insertPayment(ref: string, amount: bigint, currency: string): Promise<string> {
  const orderId = `ord_${ref}`;
  const paymentId = `pay_${ref}`;
  await db.pool.query(
    `INSERT INTO orders (id, customer_id, currency, status, subtotal_amount, discount_amount, total_amount, client_platform, expires_at)
     VALUES ($1, 'cus_play', $2, 'pending', $3, 0, $3, 'android', now() + interval '30 minutes')`, [orderId, currency, amount]);
  await db.pool.query(
    `INSERT INTO payments (id, order_id, channel, method, status, amount, currency, channel_reference)
     VALUES ($1, $2, 'google_play', 'in_app', 'processing', $3, $4, $5)`, [paymentId, orderId, amount, currency, ref]);
  return paymentId;
}

function input(ref: string): CreatePaymentInput {
  return {
    channelReference: ref, paymentId: 'pay_' + ref, orderId: 'ord_' + ref, customerId: 'cus_play',
    items: [{ productId: 'prod_course', quantity: 1, storeProductIds: { google_play: SKU } }],
    method: 'in_app', amountMinor: 1999n, currency: 'USD', subject: 'TypeScript advanced',
    notifyUrl: `${base}/v1/notify/google_play`, expiresAt: new Date(Date.now() + 30 * 60_000),
  };
}

interface Bought { ref: string; orderId: string; token: string }

/** The app starts the purchase (device endpoint); the buyer then pays, cancels, or nothing yet. */
async function buy(tag: string, o: { price?: [bigint, string]; outcome?: 'succeeded' | 'canceled' } = {}): Promise<Bought> {
  const ref = newRef(tag);
  if (o.price) await insertPayment(ref, o.price[0], o.price[1]);
  const created = await connector.createPayment(input(ref));
  const device = await post('/purchase', created.action.type === 'app' ? created.action.params : {});
  assert.equal(device.status, 200, JSON.stringify(device.body));
  if (o.outcome) assert.equal((await post('/simulate', { channel_reference: ref, outcome: o.outcome })).status, 200);
  return { ref, orderId: device.body['order_id'], token: device.body['purchase_token'] };
}

const readAll = (p: string) => readAllLines(readGooglePlayBill, p);

async function accessToken(scope: string): Promise<string> {
  const iat = Math.floor(Date.now() / 1000);
  const assertion = signJwtRs256({ iss: GOOGLE_PLAY_SANDBOX_SERVICE_ACCOUNT, scope, aud: `${base}/sandbox/google_play/token`, iat, exp: iat + 3600 }, loadPrivateKey(keys.serviceAccountPrivateKey), keys.serviceAccountKeyId);
  const res = await fetch(`${base}/sandbox/google_play/token`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams({ grant_type: JWT_BEARER_GRANT, assertion }) });
  assert.equal(res.status, 200);
  return ((await res.json()) as { access_token: string }).access_token;
}

const fee = (amount: bigint) => estimateFee(amount, DEFAULT_FEES.google_play!);
const day = (offsetDays: number, from = new Date()) => pacificDay(new Date(from.getTime() + offsetDays * 86_400_000));

/** The 15th and 16th of last month (Pacific): days of another report object. */
function lastMonth(): { d15: string; d16: string; d17: string } {
  const [y, m] = pacificDay(new Date()).split('-').map(Number) as [number, number];
  const py = m === 1 ? y - 1 : y;
  const pm = String(m === 1 ? 12 : m - 1).padStart(2, '0');
  return { d15: `${py}-${pm}-15`, d16: `${py}-${pm}-16`, d17: `${py}-${pm}-17` };
}

let A: Bought; // paid, USD 19.99 (its payment)
let B: Bought; // paid, JPY 1200, then refunded by Google
let C: Bought; // paid, no Knowpay payment: the sandbox's default price, USD 0.99
let D: Bought; // pending
let E: Bought; // canceled
let F: Bought; // paid on the 15th of last month
let G: Bought; // paid on the 16th of last month

before(async () => {
  db = await freshDatabase();
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  const instance = await googlePlayModule.create({ pool: db.pool, publicBaseUrl: base, sandboxTimeScale: 0.001, env: {}, audit: (e) => audits.push(e) });
  connector = instance.connector;
  keys = (await getSetting<GooglePlaySandboxKeys>(db.pool, 'sandbox.google_play.keys'))!;
  app = Fastify();
  await instance.mountSandbox!(app);
  app.post('/v1/notify/google_play', async (_req, reply) => reply.code(200).send('ok')); // notifications are not the subject here
  await app.listen({ host: '127.0.0.1', port });

  A = await buy('a', { price: [1999n, 'USD'], outcome: 'succeeded' });
  B = await buy('b', { price: [1200n, 'JPY'], outcome: 'succeeded' });
  assert.equal((await post('/refunds/simulate', { channel_reference: B.ref, outcome: 'succeeded' })).status, 200);
  C = await buy('c', { outcome: 'succeeded' });
  D = await buy('d', { price: [500n, 'USD'] });
  E = await buy('e', { price: [500n, 'USD'], outcome: 'canceled' });
  F = await buy('f', { price: [700n, 'EUR'], outcome: 'succeeded' });
  G = await buy('g', { price: [800n, 'EUR'], outcome: 'succeeded' });
  const { d15, d16 } = lastMonth();
  await db.pool.query(`UPDATE sandbox_google_play_purchases SET purchase_time = $2 WHERE order_id = $1`, [F.orderId, parseReportTime(d15, '11:30:00 PM')]);
  await db.pool.query(`UPDATE sandbox_google_play_purchases SET purchase_time = $2 WHERE order_id = $1`, [G.orderId, parseReportTime(d16, '12:00:00 AM')]);
});

after(async () => {
  await app?.close();
  await db?.drop();
  fs.rmSync(dir, { recursive: true, force: true });
});

const FIXED = () => new Set([A, B, C, D, E, F, G].map((b) => b.orderId));
const ofFixtures = (lines: BillLine[]) => lines.filter((l) => FIXED().has(l.channelTransactionId!.replace(/:voided$/, '')));
const sorted = (lines: BillLine[]) => [...lines].sort((x, y) => `${x.channelTransactionId}${x.kind}`.localeCompare(`${y.channelTransactionId}${y.kind}`)).map(({ lineNo: _n, occurredAt: _t, ...rest }) => rest);

// ---- Positive cases ---------------------------------------------------------------------------------

test('the sandbox serves the month\'s earnings report; the connector writes the bill day of its app; the reader reads it', async () => {
  audits = [];
  const dest = newFile();
  await connector.downloadBill!({ billDate: day(0), destination: dest });
  const lines = ofFixtures(await readAll(dest));
  assert.deepEqual(sorted(lines), sorted([
    { lineNo: 0, kind: 'payment', channelReference: '', channelTransactionId: A.orderId, amount: 1999n, fee: fee(1999n), currency: 'USD' },
    { lineNo: 0, kind: 'payment', channelReference: '', channelTransactionId: B.orderId, amount: 1200n, fee: 180n, currency: 'JPY' },
    { lineNo: 0, kind: 'refund', channelReference: '', channelTransactionId: `${B.orderId}:voided`, amount: 1200n, fee: 180n, currency: 'JPY' },
    { lineNo: 0, kind: 'payment', channelReference: '', channelTransactionId: C.orderId, amount: 99n, fee: 15n, currency: 'USD' },
  ]));
  assert.equal(fee(1999n), 300n);
  for (const l of lines) assert.equal(pacificDay(l.occurredAt!), day(0));
  // The download is not left behind; the call is audited with what it found.
  assert.deepEqual(fs.readdirSync(dir).filter((f) => f.endsWith('.download')), []);
  const entry = audits.find((a) => a.operation === 'download_bill');
  assert.ok(entry, 'audited');
  assert.deepEqual((entry.request as Record<string, unknown>)['object'], earningsObjectName(day(0).slice(0, 7).replace('-', ''), DEVELOPER_ID));
  assert.equal((entry.response as Record<string, unknown>)['status'], 200);
});

test('days of last month come from last month\'s object, each day only its own rows; a quiet day is an empty bill', async () => {
  const { d15, d16, d17 } = lastMonth();
  const got: Record<string, BillLine[]> = {};
  for (const d of [d15, d16, d17]) {
    const dest = newFile();
    await connector.downloadBill!({ billDate: d, destination: dest });
    got[d] = await readAll(dest);
  }
  assert.deepEqual(sorted(got[d15]!), [{ kind: 'payment', channelReference: '', channelTransactionId: F.orderId, amount: 700n, fee: 105n, currency: 'EUR' }]);
  assert.deepEqual(sorted(got[d16]!), [{ kind: 'payment', channelReference: '', channelTransactionId: G.orderId, amount: 800n, fee: 120n, currency: 'EUR' }]);
  assert.deepEqual(got[d17], []);
  assert.equal(got[d15]![0]!.occurredAt!.toISOString(), parseReportTime(d15, '11:30:00 PM')!.toISOString());
});

test('the downloaded day reconciles: matched by the order id, the refund by `${orderId}:voided`, the unknown purchase missing in the ledger', async () => {
  // Knowpay's side: A and B paid (channel_transaction_id = the order id, the estimated 15% fee), B refunded by Google.
  for (const [b, amount] of [[A, 1999n], [B, 1200n]] as const) {
    await db.pool.query(`UPDATE payments SET status = 'succeeded', channel_transaction_id = $2, fee_amount = $3, succeeded_at = now() WHERE channel_reference = $1`, [b.ref, b.orderId, fee(amount)]);
    await db.pool.query(`UPDATE orders SET status = 'paid', paid_at = now() WHERE id = $1`, [`ord_${b.ref}`]);
  }
  await db.pool.query(
    `INSERT INTO refunds (id, payment_id, order_id, amount, currency, status, refund_reference, channel_refund_id, initiated_by, succeeded_at)
     VALUES ('re_b', $1, $2, 1200, 'JPY', 'succeeded', 'KRB', $3, 'channel', now())`, [`pay_${B.ref}`, `ord_${B.ref}`, `${B.orderId}:voided`]);
  const file = newFile();
  await connector.downloadBill!({ billDate: day(0), destination: file });
  audits = [];
  const recon = await runReconciliation({ db: db.pool, channels: new Map([['google_play', connector]]) }, {
    channel: 'google_play', billDate: day(0), source: 'download', file, reader: readGooglePlayBill,
  });
  assert.equal(recon.status, 'completed');
  const summary = recon.summary as Record<string, number>;
  assert.deepEqual({ lines: summary['lines'], matched: summary['matched'], missing_in_ledger: summary['missing_in_ledger'], healed: summary['healed'] },
    { lines: 4, matched: 3, missing_in_ledger: 1, healed: 0 }, JSON.stringify(summary));
  assert.equal(summary['amount_mismatch'], 0, JSON.stringify(summary));
  assert.equal(summary['fee_mismatch'], 0, JSON.stringify(summary));
  assert.equal(summary['missing_in_channel'], 0, JSON.stringify(summary));
  assert.equal(summary['status_mismatch'], 0, JSON.stringify(summary));
  const { rows } = await db.pool.query<{ kind: string; evidence: { channel_transaction_id: string } }>(`SELECT kind, evidence FROM recon_exceptions WHERE recon_id = $1`, [recon.id]);
  assert.deepEqual(rows.map((r) => [r.kind, r.evidence.channel_transaction_id]).filter(([, id]) => FIXED().has(id!)), [['missing_in_ledger', C.orderId]]);
  // Healing asked Google whose order C is (orders.get, then the purchase): no payment of ours is open for it.
  assert.ok(audits.some((a) => a.operation === 'get_order' && (a.request as Record<string, unknown>)['orderId'] === C.orderId));
});

test('queryPayment finds a trade by its order id (orders.get → purchase), with or without our reference', async () => {
  audits = [];
  const expectedA = { state: 'succeeded', channelReference: A.ref, channelTransactionId: A.orderId, rawStatus: 'PURCHASED' };
  assert.deepEqual(await connector.queryPayment({ channelReference: '', currency: 'USD', channelTransactionId: A.orderId }), expectedA);
  assert.deepEqual(await connector.queryPayment({ channelReference: A.ref, currency: 'USD', channelTransactionId: A.orderId }), expectedA);
  assert.deepEqual(audits.map((a) => a.operation).slice(0, 2), ['get_order', 'get_purchase']);
  assert.deepEqual(await connector.queryPayment({ channelReference: '', currency: 'USD', channelTransactionId: D.orderId }), { state: 'pending', channelReference: D.ref, channelTransactionId: D.orderId, rawStatus: 'PENDING' });
  assert.deepEqual(await connector.queryPayment({ channelReference: E.ref, currency: 'USD', channelTransactionId: E.orderId }), { state: 'closed', channelReference: E.ref, channelTransactionId: E.orderId, rawStatus: 'CANCELED' });
  assert.deepEqual(await connector.queryPayment({ channelReference: '', currency: 'JPY', channelTransactionId: B.orderId }), { state: 'closed', channelReference: B.ref, channelTransactionId: B.orderId, rawStatus: 'CANCELED' });
  // Without an order id, nothing can be asked: the old answer.
  assert.deepEqual(await connector.queryPayment({ channelReference: A.ref, currency: 'USD' }), { state: 'pending', channelReference: A.ref, rawStatus: 'PURCHASE_TOKEN_REQUIRED' });
});

test('queryPayment acknowledges a paid purchase only when the caller names its reference', async () => {
  const purchaseOf = async (ref: string) => ((await (await fetch(`${base}/sandbox/google_play/purchases/${ref}`)).json()) as Record<string, any>);
  const H = await buy('h', { outcome: 'succeeded' });
  const I = await buy('i', { outcome: 'succeeded' });
  assert.equal((await purchaseOf(H.ref))['acknowledgement_state'], 0);
  await connector.queryPayment({ channelReference: '', currency: 'USD', channelTransactionId: H.orderId });
  assert.equal((await purchaseOf(H.ref))['acknowledgement_state'], 0, 'no reference: nothing acknowledged');
  await connector.queryPayment({ channelReference: I.ref, currency: 'USD', channelTransactionId: I.orderId });
  assert.equal((await purchaseOf(I.ref))['acknowledgement_state'], 1);
});

test('orders.get answers state, price and history as Google does', async () => {
  const token = await accessToken(ANDROIDPUBLISHER_SCOPE);
  const get = async (orderId: string) => {
    const res = await fetch(`${base}/sandbox/google_play/androidpublisher/v3/applications/${PKG}/orders/${encodeURIComponent(orderId)}`, { headers: { authorization: `Bearer ${token}` } });
    return { status: res.status, body: (await res.json()) as Record<string, any> };
  };
  const a = await get(A.orderId);
  assert.equal(a.status, 200);
  assert.equal(a.body['state'], 'PROCESSED');
  assert.equal(a.body['purchaseToken'], A.token);
  assert.deepEqual(a.body['total'], { currencyCode: 'USD', units: '19', nanos: 990_000_000 });
  assert.deepEqual(a.body['developerRevenueInBuyerCurrency'], { currencyCode: 'USD', units: '16', nanos: 990_000_000 });
  assert.deepEqual(a.body['lineItems'].map((l: any) => [l.productId, l.oneTimePurchaseDetails.quantity]), [[SKU, 1]]);
  const b = await get(B.orderId);
  assert.equal(b.body['state'], 'REFUNDED');
  assert.deepEqual(b.body['total'], { currencyCode: 'JPY', units: '1200', nanos: 0 });
  assert.ok(b.body['orderHistory']['refundEvent']['eventTime']);
  assert.equal((await get(D.orderId)).body['state'], 'PENDING');
  assert.equal((await get(E.orderId)).body['state'], 'CANCELED');
  assert.equal((await get(C.orderId)).body['total']['units'], '0');
});

test('Cloud Storage object metadata describes the same bytes alt=media serves', async () => {
  const token = await accessToken(DEVSTORAGE_READ_ONLY_SCOPE);
  const object = earningsObjectName(day(0).slice(0, 7).replace('-', ''), DEVELOPER_ID);
  const url = `${base}/sandbox/google_play/storage/v1/b/${BUCKET}/o/${encodeURIComponent(object)}`;
  const meta = (await (await fetch(url, { headers: { authorization: `Bearer ${token}` } })).json()) as Record<string, string>;
  const media = await fetch(`${url}?alt=media`, { headers: { authorization: `Bearer ${token}` } });
  assert.equal(media.status, 200);
  assert.equal(media.headers.get('content-type'), 'application/zip');
  const bytes = Buffer.from(await media.arrayBuffer());
  assert.equal(meta['kind'], 'storage#object');
  assert.equal(meta['name'], object);
  assert.equal(meta['bucket'], BUCKET);
  assert.equal(meta['contentType'], 'application/zip');
  assert.equal(Number(meta['size']), bytes.length);
  assert.equal(bytes.readUInt32LE(0), 0x04034b50);
});

// ---- Negative cases ---------------------------------------------------------------------------------

test('a day that has not begun in Pacific time is refused before any request', async () => {
  audits = [];
  const dest = newFile();
  await rejectsWith(connector.downloadBill!({ billDate: day(2), destination: dest }), 'bill_not_available', false, /has not begun in Pacific time/);
  await rejectsWith(connector.downloadBill!({ billDate: '2999-01-01', destination: dest }), 'bill_not_available', false);
  assert.deepEqual(audits.filter((a) => a.operation === 'download_bill'), []);
  assert.equal(fs.existsSync(dest), false);
});

test('a report Google has not published (404) is a clear, non-retryable error; nothing is left at the destination', async () => {
  // The connector's clock two months ahead: the sandbox has no object for that month yet.
  const ahead = new Date(Date.now() + 62 * 86_400_000);
  const early = createGooglePlayConnector({ ...sandboxConfig(), now: () => ahead, audit: (e) => audits.push(e) });
  audits = [];
  const dest = newFile();
  fs.writeFileSync(dest, 'stale');
  await rejectsWith(early.downloadBill!({ billDate: day(0, ahead), destination: dest }), 'bill_not_available', false, /earnings report for \d{4}-\d{2} is not available \(gs:\/\/pubsite_prod_rev_\d+\/earnings\/earnings_\d{6}_\d+\.zip: No such object/);
  assert.equal(fs.existsSync(dest), false);
  const entry = audits.find((a) => a.operation === 'download_bill');
  assert.equal((entry?.response as Record<string, unknown>)['status'], 404);
  // Another developer account's bucket: 404 too.
  const other = createGooglePlayConnector({ ...sandboxConfig(), reportsBucket: 'pubsite_prod_rev_01234567890987654321' });
  await rejectsWith(other.downloadBill!({ billDate: day(0), destination: newFile() }), 'bill_not_available', false, /The specified bucket does not exist/);
});

test('bad bill dates and credentials Cloud Storage refuses are non-retryable errors', async () => {
  for (const bad of ['2026-02-30', '20261121', 'yesterday']) await rejectsWith(connector.downloadBill!({ billDate: bad, destination: newFile() }), 'bill_date_invalid', false);
  // A token without a storage scope: Cloud Storage answers 403.
  const narrow = createGooglePlayConnector({ ...sandboxConfig(), auth: tokenClient(ANDROIDPUBLISHER_SCOPE) });
  await rejectsWith(narrow.downloadBill!({ billDate: day(0), destination: newFile() }), 'permission_denied', false, /may not read gs:\/\//);
});

test('Cloud Storage answers Google\'s errors: 401 without a token, 403 without a storage scope, 404 for what does not exist', async () => {
  const object = earningsObjectName(day(0).slice(0, 7).replace('-', ''), DEVELOPER_ID);
  const url = (bucket: string, name: string) => `${base}/sandbox/google_play/storage/v1/b/${bucket}/o/${encodeURIComponent(name)}?alt=media`;
  const none = await fetch(url(BUCKET, object));
  assert.equal(none.status, 401);
  const forged = await fetch(url(BUCKET, object), { headers: { authorization: 'Bearer ya29.forged' } });
  assert.equal(forged.status, 401);
  const publisherOnly = await fetch(url(BUCKET, object), { headers: { authorization: `Bearer ${await accessToken(ANDROIDPUBLISHER_SCOPE)}` } });
  assert.equal(publisherOnly.status, 403);
  assert.equal(((await publisherOnly.json()) as any).error.errors[0].reason, 'insufficientPermissions');
  const token = await accessToken(DEVSTORAGE_READ_ONLY_SCOPE);
  const auth = { headers: { authorization: `Bearer ${token}` } };
  for (const [u, message] of [
    [url('pubsite_prod_rev_1', object), /bucket does not exist/],
    [url(BUCKET, earningsObjectName('299901', DEVELOPER_ID)), /No such object/],
    [url(BUCKET, earningsObjectName('202613', DEVELOPER_ID)), /No such object/],
    [url(BUCKET, earningsObjectName(day(0).slice(0, 7).replace('-', ''), '42')), /No such object/],
    [url(BUCKET, 'sales/salesreport_202611.zip'), /No such object/],
  ] as const) {
    const res = await fetch(u, auth);
    assert.equal(res.status, 404, u);
    const body = (await res.json()) as any;
    assert.equal(body.error.errors[0].reason, 'notFound');
    assert.match(body.error.message, message);
  }
  // An object name that is not one encoded segment is another path.
  assert.equal((await fetch(`${base}/sandbox/google_play/storage/v1/b/${BUCKET}/o/${object}?alt=media`, auth)).status, 404);
});

test('a storage outage and a download broken off are retryable; an object that is no earnings report is refused', async () => {
  let mode: 'outage' | 'cut' | 'alipay' = 'outage';
  const storage = http.createServer((req, res) => {
    req.resume();
    if (mode === 'outage') return res.writeHead(503, { 'content-type': 'application/json' }).end('{"error":{"code":503,"message":"Backend Error","errors":[{"reason":"backendError"}]}}');
    if (mode === 'cut') {
      res.writeHead(200, { 'content-type': 'application/zip', 'content-length': '100000' });
      res.write(Buffer.alloc(1000, 1));
      // Cut after the client has the headers; on a loaded machine the cut may still come first,
      // which is the same failure seen earlier (no answer at all): retryable either way.
      setTimeout(() => res.destroy(), 100);
      return;
    }
    res.writeHead(200, { 'content-type': 'application/zip' }).end(fs.readFileSync(alipayZip));
  });
  const alipayZip = path.join(dir, 'alipay.zip');
  await writeAlipayBillZip(alipayZip, '2088123412341234', day(0), []);
  await new Promise<void>((r) => storage.listen(0, '127.0.0.1', r));
  try {
    const elsewhere = createGooglePlayConnector({ ...sandboxConfig(), storageRootUrl: `http://127.0.0.1:${(storage.address() as net.AddressInfo).port}/` });
    await rejectsWith(elsewhere.downloadBill!({ billDate: day(0), destination: newFile() }), 'http_error', true, /HTTP 503 .*Backend Error/);
    mode = 'cut';
    await rejectsWith(elsewhere.downloadBill!({ billDate: day(0), destination: newFile() }), 'transport_error', true, /broke off|unreachable/);
    mode = 'alipay';
    const dest = newFile();
    await rejectsWith(elsewhere.downloadBill!({ billDate: day(0), destination: dest }), 'invalid_response', false, /is not a Google Play earnings report: the zip holds 2 CSV files/);
    assert.equal(fs.existsSync(dest), false);
    assert.deepEqual(fs.readdirSync(dir).filter((f) => f.endsWith('.download')), []);
  } finally {
    await new Promise<void>((r) => storage.close(() => r()));
  }
});

test('queryPayment refuses an order of another payment, an unknown order and a malformed id', async () => {
  audits = [];
  await rejectsWith(connector.queryPayment({ channelReference: C.ref, currency: 'USD', channelTransactionId: A.orderId }), 'reference_mismatch', false, /belongs to another payment/);
  await rejectsWith(connector.queryPayment({ channelReference: '', currency: 'USD', channelTransactionId: 'GPA.0000-0000-0000-00000' }), 'not_found', false);
  const calls = audits.length;
  await rejectsWith(connector.queryPayment({ channelReference: '', currency: 'USD', channelTransactionId: 'not-an-order' }), 'transaction_id_invalid', false);
  await rejectsWith(connector.queryPayment({ channelReference: 'bad ref!', currency: 'USD', channelTransactionId: A.orderId }), 'reference_invalid', false);
  await rejectsWith(connector.queryPayment({ channelReference: '', currency: 'XYZ', channelTransactionId: A.orderId }), 'currency_not_supported', false);
  assert.equal(audits.length, calls, 'refused before any call');
});

test('without a reports bucket there is no downloadBill; a bucket that is not Play\'s is refused', () => {
  const { reportsBucket: _b, ...noBucket } = sandboxConfig();
  assert.equal(createGooglePlayConnector(noBucket).downloadBill, undefined);
  assert.throws(() => createGooglePlayConnector({ ...sandboxConfig(), reportsBucket: 'my-bucket' }), /reportsBucket must be pubsite_prod_rev_<developer id>/);
});

function tokenClient(scope?: string) {
  return serviceAccountTokenClient({
    clientEmail: GOOGLE_PLAY_SANDBOX_SERVICE_ACCOUNT, privateKey: keys.serviceAccountPrivateKey, privateKeyId: keys.serviceAccountKeyId,
    tokenUrl: `${base}/sandbox/google_play/token`, ...(scope ? { scope } : {}),
  });
}

function sandboxConfig() {
  return {
    packageName: PKG,
    auth: tokenClient(),
    rootUrl: `${base}/sandbox/google_play/`,
    storageRootUrl: `${base}/sandbox/google_play/`,
    reportsBucket: BUCKET,
    bindingSecret: keys.bindingSecret,
    push: { audience: `${base}/v1/notify/google_play`, serviceAccountEmail: 'play-rtdn-push@knowpay-sandbox.iam.gserviceaccount.com', trustedKeys: { [keys.googleKeyId]: keys.googlePublicKey } },
    acceptTestPurchases: true,
    retries: 0,
  };
}

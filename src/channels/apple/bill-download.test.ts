/**
 * Apple's bill end to end over real HTTP (127.0.0.1), wired as the service wires it
 * (appleIapModule.create → connector + mountSandbox):
 * - the sandbox's Get Notification History: every notification it sent, delivered or not, with
 *   Apple's pagination, filters, validation errors and bearer-token check;
 * - downloadBill: a UTC day paged into JSON Lines that bill.ts reads, including a notification the
 *   faults dropped (never delivered); a forged item refuses the whole download;
 * - queryPayment by transaction id (the reconciliation's healing query), and its refusals.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import Fastify, { type FastifyInstance } from 'fastify';
import { APIException, type NotificationHistoryRequest, type NotificationHistoryResponse } from '@apple/app-store-server-library';
import { freshDatabase, type TestDatabase } from '../../../test/support/db.ts';
import { getSetting } from '../../store/settings.ts';
import type { BillLine } from '../../reconciliation/types.ts';
import { ChannelError, type ChannelConnector } from '../types.ts';
import type { ChannelAuditEntry } from '../module.ts';
import { clearFaults, setFaults } from '../sandbox/faults.ts';
import { waitForSandboxNotifications } from '../sandbox/dispatcher.ts';
import { readAppleBill } from './bill.ts';
import { downloadAppleBill } from './bill-download.ts';
import { createAppleIapConnector } from './connector.ts';
import { APPLE_SANDBOX_BUNDLE_ID, appleIapModule } from './index.ts';
import { decodeJwsUnverified, generateSandboxChain, signAppStoreJws } from './jws.ts';
import { sandboxChainDer, type AppleSandboxKeys } from './sandbox.ts';
import { HISTORY_ERRORS, notificationHistory, paginationTokenKey } from './sandbox-history.ts';
import { AppStoreServerApi } from './server-api.ts';
import { rejectsWith } from '../../../test/support/assertions.ts';
import { freePort } from '../../store/embedded.ts';

const TIME_SCALE = 0.001;
const DAY_MS = 86_400_000;

let db: TestDatabase;
let app: FastifyInstance;
let base = '';
let connector: ChannelConnector;
let keys: AppleSandboxKeys;
let audits: ChannelAuditEntry[] = [];
/** notificationUUIDs the notify endpoint received. */
const received: string[] = [];
/** Per app account token: the HTTP status the notify endpoint answers (default 200). */
const answers = new Map<string, number>();
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'apple-bill-dl-'));

/** Test plumbing: which notification a delivery is (read without verification). */
function describe(raw: Buffer): { uuid: string; token: string } {
  const outer = decodeJwsUnverified((JSON.parse(raw.toString('utf8')) as { signedPayload: string }).signedPayload);
  const data = outer?.payload['data'] as { signedTransactionInfo?: string } | undefined;
  return { uuid: String(outer?.payload['notificationUUID']), token: String(decodeJwsUnverified(data?.signedTransactionInfo)?.payload['appAccountToken'] ?? 'test') };
}

before(async () => {
  db = await freshDatabase();
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  app = Fastify();
  const instance = await appleIapModule.create({ pool: db.pool, publicBaseUrl: base, sandboxTimeScale: TIME_SCALE, audit: (e) => audits.push(e), env: {} });
  assert.ok(instance.mountSandbox);
  await instance.mountSandbox(app);
  connector = instance.connector;
  await app.register(async (r) => {
    r.removeAllContentTypeParsers();
    r.addContentTypeParser('*', { parseAs: 'buffer' }, (_q, body, done) => done(null, body));
    r.post('/v1/notify/apple_iap', async (req, reply) => {
      const { uuid, token } = describe(req.body as Buffer);
      const status = answers.get(token) ?? 200;
      if (status === 200) received.push(uuid);
      return reply.code(status).type('text/plain').send('');
    });
  });
  await app.listen({ host: '127.0.0.1', port });
  keys = (await getSetting<AppleSandboxKeys>(db.pool, 'sandbox.apple_iap.keys'))!;
});

after(async () => {
  await app.close();
  await db.drop();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** The official client (subclass) with the sandbox's API key; `auth` keeps the last bearer token. */
class Client extends AppStoreServerApi {
  auth = '';
  protected override async makeFetchRequest(...args: Parameters<AppStoreServerApi['makeFetchRequest']>): ReturnType<AppStoreServerApi['makeFetchRequest']> {
    this.auth = args[4]['Authorization'] ?? '';
    return super.makeFetchRequest(...args);
  }
}
function apiClient(over: Partial<ConstructorParameters<typeof AppStoreServerApi>[0]> = {}): Client {
  return new Client({
    privateKeyPem: keys.apiPrivateKey, keyId: keys.apiKeyId, issuerId: keys.apiIssuerId, bundleId: APPLE_SANDBOX_BUNDLE_ID,
    baseUrl: `${base}/sandbox/apple_iap`, environment: 'Sandbox', ...over,
  });
}

async function post(pathname: string, body: unknown) {
  const res = await fetch(`${base}/sandbox/apple_iap${pathname}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: res.status, body: (await res.json()) as Record<string, any> };
}

interface Bought { ref: string; transactionId: string; uuid: string; signedTransaction: string }
async function buy(amount = 600, currency = 'CNY', ref = randomUUID()): Promise<Bought> {
  const sim = await post('/simulate', { channel_reference: ref, outcome: 'succeeded', product_id: 'com.knowpay.coins_60', amount, currency });
  assert.equal(sim.status, 200, JSON.stringify(sim.body));
  return { ref, transactionId: sim.body['transaction_id'], uuid: sim.body['notification']['notification_uuid'], signedTransaction: sim.body['signed_transaction'] };
}
async function refund(ref: string): Promise<string> {
  const r = await post('/refunds/simulate', { channel_reference: ref, outcome: 'succeeded' });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body['notification']['notification_uuid'];
}
const settled = (ref: string) => waitForSandboxNotifications(db.pool, { channel: 'apple_iap', channelReference: ref, timeoutMs: 5000 });

const uuidOf = (signedPayload: string | undefined) => String(decodeJwsUnverified(signedPayload)?.payload['notificationUUID']);

async function apiRejects(p: Promise<unknown>, status: number, apiError?: number) {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof APIException, String(e));
    assert.equal(e.httpStatusCode, status);
    if (apiError !== undefined) assert.equal(e.apiError, apiError, String(e.errorMessage));
    return true;
  });
}

let fileNo = 0;
async function download(billDate: string, c: ChannelConnector = connector): Promise<{ lines: BillLine[]; items: Array<Record<string, any>> }> {
  const dest = path.join(dir, `bill-${++fileNo}.jsonl`);
  await c.downloadBill!({ billDate, destination: dest });
  const lines: BillLine[] = [];
  for await (const l of readAppleBill(dest)) lines.push(l);
  const items = fs.readFileSync(dest, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, any>);
  return { lines, items };
}

const utcDay = (ms: number) => new Date(ms).toISOString().slice(0, 10);

// ---- The sandbox's Get Notification History ------------------------------------------------------------------

test('history pages through what the sandbox sent, in order, 20 a page, with Apple\'s send attempts', async () => {
  const t0 = Date.now();
  const sent: string[] = [];
  const bought: Bought[] = [];
  for (let i = 0; i < 18; i++) {
    const b = await buy(600 + i * 100);
    bought.push(b);
    sent.push(b.uuid);
  }
  for (const b of bought.slice(0, 3)) {
    await settled(b.ref); // the refund comes after the purchase's notification
    sent.push(await refund(b.ref));
  }
  const test_ = await apiClient().requestTestNotification();
  sent.push(test_.testNotificationToken!.split('_')[0]!);
  const t1 = Date.now() + 1;
  for (const b of bought) await waitForSandboxNotifications(db.pool, { channel: 'apple_iap', channelReference: b.ref, timeoutMs: 5000, until: (rows) => rows.every((r) => r.status === 'delivered') && rows.length === (bought.indexOf(b) < 3 ? 2 : 1) });
  await waitForSandboxNotifications(db.pool, { channel: 'apple_iap', channelReference: `test:${sent.at(-1)}`, timeoutMs: 5000 });

  const request: NotificationHistoryRequest = { startDate: t0, endDate: t1 };
  const first = await apiClient().getNotificationHistory(null, request);
  assert.equal(first.notificationHistory?.length, 20);
  assert.equal(first.hasMore, true);
  assert.match(first.paginationToken ?? '', /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{22}$/);
  const second = await apiClient().getNotificationHistory(first.paginationToken!, request);
  assert.equal(second.hasMore, false);
  assert.equal(second.paginationToken, undefined);
  const all = [...first.notificationHistory!, ...second.notificationHistory!];
  assert.deepEqual(all.map((i) => uuidOf(i.signedPayload)), sent, 'every notification once, in the order sent');
  for (const i of all) {
    assert.equal(i.sendAttempts?.length, 1);
    assert.equal(i.sendAttempts![0]!.sendAttemptResult, 'SUCCESS');
    assert.ok(i.sendAttempts![0]!.attemptDate! >= t0 - 1000);
  }

  // Filters: a type, one customer's transaction, only failures (none here).
  const refunds = await apiClient().getNotificationHistory(null, { ...request, notificationType: 'REFUND' as never });
  assert.deepEqual(refunds.notificationHistory!.map((i) => uuidOf(i.signedPayload)), sent.slice(18, 21));
  const ofOne = await apiClient().getNotificationHistory(null, { ...request, transactionId: bought[1]!.transactionId });
  assert.deepEqual(ofOne.notificationHistory!.map((i) => uuidOf(i.signedPayload)), [bought[1]!.uuid, sent[19]]);
  assert.deepEqual((await apiClient().getNotificationHistory(null, { ...request, onlyFailures: true })).notificationHistory, []);
  // A window before everything, and a future endDate read as now.
  assert.deepEqual((await apiClient().getNotificationHistory(null, { startDate: t0 - 60_000, endDate: t0 - 1 })).notificationHistory, []);
  const future = await apiClient().getNotificationHistory(null, { startDate: t0, endDate: Date.now() + DAY_MS });
  assert.equal(future.notificationHistory?.length, 20);
});

test('history validation: Apple\'s 400 error codes in {errorCode, errorMessage}', async () => {
  const now = Date.now();
  const c = apiClient();
  await apiRejects(c.getNotificationHistory(null, { endDate: now }), 400, HISTORY_ERRORS.INVALID_START_DATE);
  await apiRejects(c.getNotificationHistory(null, { startDate: now - 1000 }), 400, HISTORY_ERRORS.INVALID_END_DATE);
  await apiRejects(c.getNotificationHistory(null, { startDate: -5, endDate: now }), 400, HISTORY_ERRORS.INVALID_START_DATE);
  await apiRejects(c.getNotificationHistory(null, { startDate: now - 181 * DAY_MS, endDate: now }), 400, HISTORY_ERRORS.START_DATE_TOO_FAR_IN_PAST);
  await apiRejects(c.getNotificationHistory(null, { startDate: now - 1000, endDate: now - 1000 }), 400, HISTORY_ERRORS.START_DATE_AFTER_END_DATE);
  await apiRejects(c.getNotificationHistory(null, { startDate: now - 1000, endDate: now - 2000 }), 400, HISTORY_ERRORS.START_DATE_AFTER_END_DATE);
  await apiRejects(c.getNotificationHistory(null, { startDate: now - 1000, endDate: now, notificationType: 'NOT_A_TYPE' as never }), 400, HISTORY_ERRORS.INVALID_NOTIFICATION_TYPE);
  await apiRejects(c.getNotificationHistory(null, { startDate: now - 1000, endDate: now, notificationSubtype: 'INITIAL_BUY' as never }), 400, HISTORY_ERRORS.INVALID_NOTIFICATION_TYPE);
  await apiRejects(c.getNotificationHistory(null, { startDate: now - 1000, endDate: now, notificationType: 'REFUND' as never, transactionId: '2000000000000001' }), 400, HISTORY_ERRORS.MULTIPLE_FILTERS_SUPPLIED);
  await apiRejects(c.getNotificationHistory(null, { startDate: now - 1000, endDate: now, transactionId: 'abc' }), 400, HISTORY_ERRORS.INVALID_TRANSACTION_ID);
  await apiRejects(c.getNotificationHistory(null, { startDate: now - 1000, endDate: now, onlyFailures: 'yes' as never }), 400, HISTORY_ERRORS.GENERAL_BAD_REQUEST);
  const tooOld = await apiClient().getNotificationHistory(null, { startDate: now - 179 * DAY_MS, endDate: now }).catch((e: unknown) => e);
  assert.ok(!(tooOld instanceof Error), '179 days back is still kept');

  // A body that is not JSON, answered in Apple's shape (with a valid bearer token).
  const body = await fetch(`${base}/sandbox/apple_iap/inApps/v1/notifications/history`, {
    method: 'POST', headers: { authorization: c.auth, 'content-type': 'application/json' }, body: '{not json',
  });
  assert.equal(body.status, 400);
  assert.deepEqual(await body.json(), { errorCode: 4000000, errorMessage: 'Invalid request.' });
});

test('history pagination tokens: tampered, from another request, or expired are refused', async () => {
  const t0 = Date.now() - 3600_000;
  const request = { startDate: t0, endDate: Date.now() + 1 };
  const first = await apiClient().getNotificationHistory(null, request);
  assert.equal(first.hasMore, true, 'the previous test left more than 20 notifications');
  const token = first.paginationToken!;
  const [data, mac] = token.split('.') as [string, string];
  const forgedState = Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(data, 'base64url').toString('utf8')), after: '0' })).toString('base64url');
  await apiRejects(apiClient().getNotificationHistory(`${forgedState}.${mac}`, request), 400, HISTORY_ERRORS.INVALID_PAGINATION_TOKEN);
  await apiRejects(apiClient().getNotificationHistory('57715481-805a-4283-8499-1c19b5d6b20a', request), 400, HISTORY_ERRORS.INVALID_PAGINATION_TOKEN);
  await apiRejects(apiClient().getNotificationHistory(token, { ...request, startDate: t0 + 1 }), 400, HISTORY_ERRORS.INVALID_PAGINATION_TOKEN);
  await apiRejects(apiClient().getNotificationHistory(token, { ...request, onlyFailures: true }), 400, HISTORY_ERRORS.INVALID_PAGINATION_TOKEN);
  // A day later the token has expired (the same request, answered by the same code a day on).
  const later = await notificationHistory(db.pool, { bundleId: APPLE_SANDBOX_BUNDLE_ID, channel: 'apple_iap', tokenKey: paginationTokenKey(keys.leafPrivateKey), now: new Date(Date.now() + 25 * 3600_000) }, request, token);
  assert.deepEqual(later, { status: 400, body: { errorCode: HISTORY_ERRORS.PAGINATION_TOKEN_EXPIRED, errorMessage: 'Pagination token expired.' } });
  // The genuine token still works.
  assert.equal((await apiClient().getNotificationHistory(token, request)).notificationHistory!.length > 0, true);
});

test('history is the Server API: 401 Unauthenticated without a valid bearer token', async () => {
  const noAuth = await fetch(`${base}/sandbox/apple_iap/inApps/v1/notifications/history`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
  assert.equal(noAuth.status, 401);
  assert.equal(await noAuth.text(), 'Unauthenticated');
  const other = generateSandboxChain();
  const request = { startDate: Date.now() - 1000, endDate: Date.now() };
  for (const over of [{ privateKeyPem: other.leafPrivateKeyPem }, { keyId: 'ABCDEFGHIJ' }, { issuerId: randomUUID() }, { bundleId: 'com.other.app' }]) {
    await apiRejects(apiClient(over).getNotificationHistory(null, request), 401);
  }
  const forged = await fetch(`${base}/sandbox/apple_iap/inApps/v1/notifications/history`, {
    method: 'POST', headers: { authorization: 'Bearer eyJhbGciOiJFUzI1NiJ9.eyJiaWQiOiJ4In0.c2ln', 'content-type': 'application/json' }, body: JSON.stringify(request),
  });
  assert.equal(forged.status, 401);
});

// ---- downloadBill ------------------------------------------------------------------------------------------------

test('downloadBill: the day\'s history as JSON Lines, including a notification that was never delivered, a refund and an undelivered retry', async () => {
  const paid = await buy(1990, 'USD');
  await setFaults(db.pool, { channel: 'apple_iap', dropRate: 1 });
  let lost: Bought;
  try {
    lost = await buy(120, 'JPY');
  } finally {
    await clearFaults(db.pool, 'apple_iap');
  }
  const [lostRow] = await settled(lost.ref);
  assert.equal(lostRow!.status, 'dropped');
  const failing = randomUUID();
  answers.set(failing, 500);
  const retried = await buy(600, 'CNY', failing);
  await waitForSandboxNotifications(db.pool, { channel: 'apple_iap', channelReference: failing, timeoutMs: 5000, until: (rows) => rows.length === 1 && rows[0]!.attempts >= 1 && rows[0]!.lastStatusCode === 500 });
  await settled(paid.ref);
  const refundUuid = await refund(paid.ref);
  await waitForSandboxNotifications(db.pool, { channel: 'apple_iap', channelReference: paid.ref, timeoutMs: 5000, until: (rows) => rows.length === 2 && rows.every((r) => r.status === 'delivered') });
  assert.equal(received.includes(lost.uuid), false, 'the dropped notification never reached us');
  assert.equal(received.includes(retried.uuid), false, 'nor the one our endpoint keeps refusing');

  // The days these were signed on (one, unless the test straddles midnight UTC).
  const purchases = await Promise.all([paid, lost, retried].map((b) => fetch(`${base}/sandbox/apple_iap/purchases/${b.ref}`).then((r) => r.json() as Promise<Record<string, any>>)));
  const days = new Set<string>([...purchases.map((p) => utcDay(Date.parse(p['purchase_date']))), utcDay(Date.parse(purchases[0]!['revocation_date']))]);
  audits = [];
  const got = await Promise.all([...days].map((d) => download(d)));
  const lines = got.flatMap((g) => g.lines);
  const items = got.flatMap((g) => g.items);
  const ours = new Set([paid.ref, lost.ref, failing]);
  assert.deepEqual(lines.filter((l) => ours.has(l.channelReference)).map(({ lineNo: _n, occurredAt, ...rest }) => { assert.ok(occurredAt instanceof Date); return rest; }), [
    { kind: 'payment', channelReference: paid.ref, channelTransactionId: paid.transactionId, amount: 1990n, currency: 'USD' },
    { kind: 'payment', channelReference: lost.ref, channelTransactionId: lost.transactionId, amount: 120n, currency: 'JPY' },
    { kind: 'payment', channelReference: failing, channelTransactionId: retried.transactionId, amount: 600n, currency: 'CNY' },
    { kind: 'refund', channelReference: paid.ref, channelTransactionId: `${paid.transactionId}:refund`, amount: 1990n, currency: 'USD' },
  ]);
  const attemptsOf = (uuid: string) => items.find((i) => uuidOf(i['signedPayload']) === uuid)?.['sendAttempts'].map((a: Record<string, unknown>) => a['sendAttemptResult']);
  assert.deepEqual(attemptsOf(lost.uuid), ['NO_RESPONSE']);
  const refusals = attemptsOf(retried.uuid) as string[];
  assert.ok(refusals.length >= 1 && refusals.every((r) => r === 'UNSUCCESSFUL_HTTP_RESPONSE_CODE'), JSON.stringify(refusals));
  assert.deepEqual(attemptsOf(paid.uuid), ['SUCCESS']);
  assert.deepEqual(attemptsOf(refundUuid), ['SUCCESS']);
  // Paged through the official client (the day has more than 20 notifications), counted in the audit, no payloads kept there.
  const calls = audits.filter((a) => a.operation === 'get_notification_history');
  assert.ok(calls.length >= 2, `${calls.length} pages`);
  assert.ok(calls.every((a) => a.error === undefined && typeof (a.response as { notifications: number }).notifications === 'number'));
  assert.doesNotMatch(JSON.stringify(calls), /signedPayload|eyJ/);
  assert.deepEqual(fs.readdirSync(dir).filter((f) => f.endsWith('.part')), [], 'no partial file left');

  // The lost payment heals: its line's transaction id, asked of Apple, is a verified paid trade.
  const healed = await connector.queryPayment({ channelReference: lost.ref, currency: 'JPY', channelTransactionId: lost.transactionId });
  assert.deepEqual(healed, { state: 'succeeded', channelReference: lost.ref, channelTransactionId: lost.transactionId, amountMinor: 120n, currency: 'JPY', rawStatus: 'PURCHASED' });
  answers.delete(failing);
});

test('downloadBill refuses days that cannot have a bill, and leaves no file', async () => {
  const dest = path.join(dir, 'never.jsonl');
  const tomorrow = utcDay(Date.now() + DAY_MS);
  await rejectsWith(connector.downloadBill!({ billDate: tomorrow, destination: dest }), 'bill_not_ready', false, new RegExp(`bill of ${tomorrow} does not exist yet: that UTC day has not begun`));
  await rejectsWith(connector.downloadBill!({ billDate: '2099-01-01', destination: dest }), 'bill_not_ready', false);
  await rejectsWith(connector.downloadBill!({ billDate: utcDay(Date.now() - 200 * DAY_MS), destination: dest }), 'bill_too_old', false, /180 days/);
  for (const bad of ['2026-02-30', '20260301', 'yesterday', '']) await rejectsWith(connector.downloadBill!({ billDate: bad, destination: dest }), 'bill_date_invalid', false);
  assert.equal(fs.existsSync(dest) || fs.existsSync(`${dest}.part`), false);
  // Without Server API credentials there is no download at all (the daily reconciliation skips Apple).
  const noApi = createAppleIapConnector({ bundleId: APPLE_SANDBOX_BUNDLE_ID, environment: 'Sandbox', rootCertificates: [Buffer.from(keys.rootCertificate, 'base64')], enableOnlineChecks: false });
  assert.equal(noApi.downloadBill, undefined);
});

/** A hostile or broken Apple answering Get Notification History with the pages given (by call number). */
async function hostileApple(pages: Array<{ status?: number; body: unknown }>): Promise<{ connector: ChannelConnector; close: () => Promise<void>; calls: () => number }> {
  const peer = Fastify();
  let n = 0;
  peer.post('/inApps/v1/notifications/history', async (_req, reply) => {
    const page = pages[Math.min(n++, pages.length - 1)]!;
    return reply.code(page.status ?? 200).type('application/json').send(page.body);
  });
  const port = await freePort();
  await peer.listen({ host: '127.0.0.1', port });
  const c = createAppleIapConnector({
    bundleId: APPLE_SANDBOX_BUNDLE_ID, environment: 'Sandbox', rootCertificates: [Buffer.from(keys.rootCertificate, 'base64')], enableOnlineChecks: false,
    serverApi: { privateKeyPem: keys.apiPrivateKey, keyId: keys.apiKeyId, issuerId: keys.apiIssuerId, baseUrl: `http://127.0.0.1:${port}` },
  });
  return { connector: c, close: () => peer.close(), calls: () => n };
}

test('a forged history item refuses the whole download, naming the item; nothing is written', async () => {
  const today = utcDay(Date.now());
  const genuine = (await apiClient().getNotificationHistory(null, { startDate: Date.now() - 3600_000, endDate: Date.now() })).notificationHistory!.slice(0, 3);
  assert.equal(genuine.length, 3);
  const payload = decodeJwsUnverified(genuine[0]!.signedPayload)!.payload;
  const foreign = generateSandboxChain(new Date(), 'Not Apple');
  const foreignX5c = [foreign.leafDer, foreign.intermediateDer, foreign.rootDer];
  const forgedUuid = randomUUID();
  // 1. Signed by someone else's chain.
  const foreignSigned = signAppStoreJws({ ...payload, notificationUUID: forgedUuid }, foreign.leafPrivateKeyPem, foreignX5c);
  // 2. Apple's signature kept, payload changed (a REFUND that Apple never sent).
  const [h, , s] = genuine[1]!.signedPayload!.split('.') as [string, string, string];
  const tamperedUuid = randomUUID();
  const tampered = `${h}.${Buffer.from(JSON.stringify({ ...decodeJwsUnverified(genuine[1]!.signedPayload)!.payload, notificationUUID: tamperedUuid, notificationType: 'REFUND' })).toString('base64url')}.${s}`;
  // 3. A genuine-looking notification around a transaction someone else signed.
  const innerUuid = randomUUID();
  const forgedTx = signAppStoreJws({ ...decodeJwsUnverified((payload['data'] as Record<string, string>)['signedTransactionInfo'])!.payload, price: 1 }, foreign.leafPrivateKeyPem, foreignX5c);
  const wrapped = signAppStoreJws({ ...payload, notificationUUID: innerUuid, data: { ...(payload['data'] as object), signedTransactionInfo: forgedTx } }, keys.leafPrivateKey, sandboxChainDer(keys));

  const cases: Array<[string, string, RegExp]> = [
    [foreignSigned, forgedUuid, /signedPayload: VERIFICATION_FAILURE/],
    [tampered, tamperedUuid, /signedPayload: VERIFICATION_FAILURE/],
    [wrapped, innerUuid, /signedTransactionInfo: VERIFICATION_FAILURE/],
  ];
  for (const [signedPayload, uuid, reason] of cases) {
    const peer = await hostileApple([
      { body: { notificationHistory: genuine, hasMore: true, paginationToken: 'p2' } },
      { body: { notificationHistory: [genuine[2], { signedPayload, sendAttempts: [] }], hasMore: false } },
    ]);
    const dest = path.join(dir, `forged-${++fileNo}.jsonl`);
    try {
      await rejectsWith(peer.connector.downloadBill!({ billDate: today, destination: dest }), 'forged_history_item', false,
        new RegExp(`refused: item 2 of page 2, notification ${uuid}`));
      await rejectsWith(peer.connector.downloadBill!({ billDate: today, destination: dest }), 'forged_history_item', false, reason);
      assert.equal(peer.calls(), 3, 'the second download got the forged page first (the peer repeats its last page)');
    } finally {
      await peer.close();
    }
    assert.equal(fs.existsSync(dest) || fs.existsSync(`${dest}.part`), false, 'no bill, not even the genuine first page');
  }
});

test('downloadBill: Apple\'s failures and malformed answers are ChannelErrors; the partial file is removed', async () => {
  const today = utcDay(Date.now());
  const cases: Array<[Array<{ status?: number; body: unknown }>, string, boolean]> = [
    [[{ status: 429, body: { errorCode: 4290000, errorMessage: 'Rate limit exceeded.' } }], 'rate_limited', true],
    [[{ status: 500, body: { errorCode: 5000000, errorMessage: 'An unknown error occurred.' } }], 'apple_unavailable', true],
    [[{ status: 401, body: {} }], 'unauthorized', false],
    [[{ status: 400, body: { errorCode: 4000012, errorMessage: 'too far' } }], 'request_rejected', false],
    [[{ body: { notificationHistory: [{ sendAttempts: [] }], hasMore: false } }], 'invalid_response', true],
    [[{ body: { notificationHistory: [], hasMore: true } }], 'invalid_response', true],
    [[{ body: { notificationHistory: [], hasMore: true, paginationToken: 'same' } }], 'invalid_response', true],
    [[{ body: { notificationHistory: 'nope', hasMore: false } }], 'invalid_response', true],
  ];
  for (const [pages, code, retryable] of cases) {
    const peer = await hostileApple(pages);
    const dest = path.join(dir, `fail-${++fileNo}.jsonl`);
    try {
      await rejectsWith(peer.connector.downloadBill!({ billDate: today, destination: dest }), code, retryable);
    } finally {
      await peer.close();
    }
    assert.equal(fs.existsSync(dest) || fs.existsSync(`${dest}.part`), false, code);
  }
  // An empty day is an empty bill.
  const empty = await hostileApple([{ body: { notificationHistory: [], hasMore: false } }]);
  try {
    assert.deepEqual(await download(today, empty.connector), { lines: [], items: [] });
  } finally {
    await empty.close();
  }
});

test('downloadAppleBill is bounded: pages and time', async () => {
  const endless = async (token: string | null): Promise<NotificationHistoryResponse> => ({ notificationHistory: [], hasMore: true, paginationToken: `t${Number((token ?? 't0').slice(1)) + 1}` });
  const dest = path.join(dir, 'bounded.jsonl');
  const today = utcDay(Date.now());
  await rejectsWith(downloadAppleBill({ page: endless, verify: async () => ({ ok: true }), maxPages: 5 }, { billDate: today, destination: dest }), 'bill_too_large', false, /more than 5 pages/);
  await rejectsWith(downloadAppleBill({ page: endless, verify: async () => ({ ok: true }), deadlineMs: -1 }, { billDate: today, destination: dest }), 'bill_timeout', true);
  const unavailable = downloadAppleBill({
    page: async () => ({ notificationHistory: [{ signedPayload: 'a.b.c' }], hasMore: false }),
    verify: async () => ({ ok: false, reason: 'signedPayload: RETRYABLE_VERIFICATION_FAILURE', retryable: true }),
  }, { billDate: today, destination: dest });
  await rejectsWith(unavailable, 'history_verification_unavailable', true, /an undecodable notification/);
  assert.equal(fs.existsSync(dest) || fs.existsSync(`${dest}.part`), false);
});

// ---- queryPayment by transaction id ------------------------------------------------------------------------------

test('queryPayment with a transaction id answers Apple\'s verified transaction, like confirmPayment', async () => {
  const b = await buy(990, 'USD');
  const expected = { state: 'succeeded', channelReference: b.ref, channelTransactionId: b.transactionId, amountMinor: 990n, currency: 'USD', rawStatus: 'PURCHASED' };
  audits = [];
  assert.deepEqual(await connector.queryPayment({ channelReference: b.ref, currency: 'USD', channelTransactionId: b.transactionId }), expected);
  assert.deepEqual(await connector.confirmPayment!({ channelReference: b.ref, currency: 'USD', amountMinor: 990n, payload: { transaction_id: b.transactionId } }), expected);
  const audit = audits.find((a) => a.operation === 'query_payment');
  assert.equal(audit?.channelReference, b.ref);
  assert.ok(audits.some((a) => a.operation === 'get_transaction_info'));
  // A bill line that names only the transaction learns whose it is; upper case is the same reference.
  assert.deepEqual(await connector.queryPayment({ channelReference: '', currency: 'USD', channelTransactionId: b.transactionId }), expected);
  assert.deepEqual(await connector.queryPayment({ channelReference: b.ref.toUpperCase(), currency: 'USD', channelTransactionId: b.transactionId }), expected);
  // Refunded: the transaction carries its revocation, so the trade is not a success.
  await settled(b.ref);
  await refund(b.ref);
  const revoked = await connector.queryPayment({ channelReference: b.ref, currency: 'USD', channelTransactionId: b.transactionId });
  assert.deepEqual([revoked.state, revoked.rawStatus], ['failed', 'REVOKED:0']);
  // Without a transaction id nothing can be asked of Apple.
  assert.deepEqual(await connector.queryPayment({ channelReference: b.ref, currency: 'USD' }), { state: 'pending', channelReference: b.ref, rawStatus: 'UNKNOWABLE_WITHOUT_TRANSACTION_ID' });
});

test('queryPayment refuses another reference\'s transaction, and what cannot be asked', async () => {
  const b = await buy(600, 'CNY');
  const other = randomUUID();
  await rejectsWith(connector.queryPayment({ channelReference: other, currency: 'CNY', channelTransactionId: b.transactionId }), 'reference_mismatch', false,
    new RegExp(`transaction ${b.transactionId} belongs to another reference \\(appAccountToken ${b.ref}\\), not ${other}`));
  await rejectsWith(connector.queryPayment({ channelReference: 'KP20260305A', currency: 'CNY', channelTransactionId: b.transactionId }), 'reference_invalid', false);
  await rejectsWith(connector.queryPayment({ channelReference: b.ref, currency: 'CNY', channelTransactionId: '2000000999999999' }), 'transaction_not_found', false);
  await rejectsWith(connector.queryPayment({ channelReference: b.ref, currency: 'CNY', channelTransactionId: 'abc' }), 'transaction_id_invalid', false);
  await rejectsWith(connector.queryPayment({ channelReference: b.ref, currency: 'CNY', channelTransactionId: '1; DROP TABLE' }), 'transaction_id_invalid', false);
  const noApi = createAppleIapConnector({ bundleId: APPLE_SANDBOX_BUNDLE_ID, environment: 'Sandbox', rootCertificates: [Buffer.from(keys.rootCertificate, 'base64')], enableOnlineChecks: false });
  await rejectsWith(noApi.queryPayment({ channelReference: b.ref, currency: 'CNY', channelTransactionId: b.transactionId }), 'server_api_not_configured', false);
  // Apple's answer signed by someone else is not believed.
  const foreignRoot = createAppleIapConnector({
    bundleId: APPLE_SANDBOX_BUNDLE_ID, environment: 'Sandbox', rootCertificates: [generateSandboxChain().rootDer], enableOnlineChecks: false,
    serverApi: { privateKeyPem: keys.apiPrivateKey, keyId: keys.apiKeyId, issuerId: keys.apiIssuerId, baseUrl: `${base}/sandbox/apple_iap` },
  });
  await rejectsWith(foreignRoot.queryPayment({ channelReference: b.ref, currency: 'CNY', channelTransactionId: b.transactionId }), 'invalid_signed_transaction', false);
  // A transaction bought outside Knowpay (no appAccountToken) answers no snapshot, even for an empty reference.
  const outside = await hostileTransactionServer({ appAccountToken: undefined });
  try {
    await rejectsWith(outside.connector.queryPayment({ channelReference: '', currency: 'CNY', channelTransactionId: '2000000000000077' }), 'reference_missing', false);
    await rejectsWith(outside.connector.queryPayment({ channelReference: b.ref, currency: 'CNY', channelTransactionId: '2000000000000077' }), 'reference_mismatch', false, /appAccountToken none/);
  } finally {
    await outside.close();
  }
});

/** A stand-in Apple answering Get Transaction Info with a transaction signed by the sandbox's chain. */
async function hostileTransactionServer(over: Record<string, unknown>): Promise<{ connector: ChannelConnector; close: () => Promise<void> }> {
  const peer = Fastify();
  peer.get('/inApps/v1/transactions/:id', async (req, reply) => {
    const id = (req.params as { id: string }).id;
    const tx = {
      transactionId: id, originalTransactionId: id, bundleId: APPLE_SANDBOX_BUNDLE_ID, productId: 'coins_60', purchaseDate: Date.now(), quantity: 1,
      type: 'Consumable', inAppOwnershipType: 'PURCHASED', signedDate: Date.now(), environment: 'Sandbox', price: 6000, currency: 'CNY', ...over,
    };
    return reply.type('application/json').send({ signedTransactionInfo: signAppStoreJws(tx, keys.leafPrivateKey, sandboxChainDer(keys)) });
  });
  const port = await freePort();
  await peer.listen({ host: '127.0.0.1', port });
  const c = createAppleIapConnector({
    bundleId: APPLE_SANDBOX_BUNDLE_ID, environment: 'Sandbox', rootCertificates: [Buffer.from(keys.rootCertificate, 'base64')], enableOnlineChecks: false,
    serverApi: { privateKeyPem: keys.apiPrivateKey, keyId: keys.apiKeyId, issuerId: keys.apiIssuerId, baseUrl: `http://127.0.0.1:${port}` },
  });
  return { connector: c, close: () => peer.close() };
}

/**
 * The daily bill end to end: trades paid, declined and refunded in the sandbox; the connector's
 * downloadBill lists the day's balance transactions over real HTTP through the official SDK; the
 * reader turns the file into the lines reconciliation loads.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import Fastify, { type FastifyInstance } from 'fastify';
import { freshDatabase, type TestDatabase } from '../../../test/support/db.ts';
import { DEFAULT_FEES, estimateFee } from '../../domain/ledger-rules.ts';
import type { BillLine } from '../../reconciliation/types.ts';
import { ChannelError, type ChannelConnector } from '../types.ts';
import { readStripeBill } from './bill.ts';
import { createStripeConnector, type StripeAuditEntry, type StripeConfig } from './connector.ts';
import { generateStripeSandboxKeys, stripeSandboxPlugin, type StripeSandboxKeys } from './sandbox.ts';
import { readAllLines } from '../../../test/support/assertions.ts';

let db: TestDatabase;
let keys: StripeSandboxKeys;
let app: FastifyInstance;
let base = '';
let counter = 0;
let audits: StripeAuditEntry[] = [];
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'stripe-bill-dl-'));

before(async () => {
  db = await freshDatabase();
  keys = generateStripeSandboxKeys();
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  base = `http://127.0.0.1:${port}`;
  app = Fastify();
  await app.register(stripeSandboxPlugin, {
    prefix: '/sandbox/stripe', pool: db.pool, accountId: keys.accountId, secretKey: keys.secretKey, timeScale: 0.001, webhookEndpoints: [], refundSettleMs: null,
  });
  await app.listen({ host: '127.0.0.1', port });
});

after(async () => {
  await app.close();
  await db.drop();
  fs.rmSync(dir, { recursive: true, force: true });
});

function connector(over: Partial<StripeConfig> = {}): ChannelConnector {
  return createStripeConnector({
    secretKey: keys.secretKey, webhookSecret: keys.webhookSecret, accountId: keys.accountId, apiBase: `${base}/sandbox/stripe`,
    timeoutMs: 5000, maxNetworkRetries: 0, audit: (e) => audits.push(e), ...over,
  });
}

async function post(p: string, body: unknown) {
  const res = await fetch(`${base}${p}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: res.status, body: (await res.json()) as Record<string, any> };
}

async function api(query: string, key = keys.secretKey) {
  const res = await fetch(`${base}/sandbox/stripe/v1/balance_transactions${query}`, { headers: { authorization: `Bearer ${key}` } });
  return { status: res.status, json: (await res.json()) as Record<string, any> };
}

interface Trade { ref: string; pi: string; amountMinor: bigint; currency: string }

async function trade(amountMinor: bigint, currency: string, outcome: 'succeeded' | 'failed', paymentMethod?: string): Promise<Trade> {
  const ref = `KPbill${process.pid}x${++counter}`;
  const created = await connector().createPayment({
    channelReference: ref, paymentId: `pay_${ref}`, orderId: `ord_${ref}`, customerId: 'cus_test', items: [], method: 'card', amountMinor, currency,
    subject: 'Course: reconciliation', notifyUrl: `${base}/v1/notify/stripe`, expiresAt: new Date(Date.now() + 60_000),
  });
  const sim = await post('/sandbox/stripe/simulate', { channel_reference: ref, outcome, ...(paymentMethod ? { payment_method: paymentMethod } : {}) });
  assert.equal(sim.status, 200, JSON.stringify(sim.body));
  return { ref, pi: created.channelTransactionId!, amountMinor, currency };
}

async function refund(t: Trade, refundReference: string, amountMinor: bigint) {
  return connector().refundPayment!({ channelReference: t.ref, channelTransactionId: t.pi, refundReference, amountMinor, paymentAmountMinor: t.amountMinor, currency: t.currency, notifyUrl: `${base}/v1/notify/stripe` });
}

const readAll = (p: string) => readAllLines(readStripeBill, p);

const fee = (minor: bigint) => estimateFee(minor, DEFAULT_FEES.stripe!);
const today = () => new Date().toISOString().slice(0, 10);
const byRef = (a: BillLine, b: BillLine) => (a.kind + a.channelReference + (a.refundReference ?? '')).localeCompare(b.kind + b.channelReference + (b.refundReference ?? ''));

let day = '';
type Expected = Omit<BillLine, 'lineNo' | 'occurredAt' | 'channelTransactionId'>;
let expected: Expected[] = [];

test('downloadBill: the day\'s paid charges (Stripe\'s fee), refunds (fee 0, failed ones too) — and nothing for declines', async () => {
  const a = await trade(10_000n, 'USD', 'succeeded');
  const b = await trade(500n, 'JPY', 'succeeded');
  await trade(3_000n, 'USD', 'failed');
  const d = await trade(5_000n, 'EUR', 'succeeded', 'pm_card_refundFail');
  const e = await trade(4_200n, 'USD', 'succeeded', 'pm_card_pendingRefund');
  assert.equal((await refund(a, `RF${a.ref}a`, 2_500n)).state, 'succeeded');
  assert.equal((await refund(a, `RF${a.ref}b`, 1_000n)).state, 'succeeded');
  assert.equal((await refund(b, `RF${b.ref}`, 500n)).state, 'succeeded');
  await refund(d, `RF${d.ref}`, 1_000n);
  assert.equal((await post('/sandbox/stripe/refunds/simulate', { refund_reference: `RF${d.ref}`, outcome: 'failed' })).status, 200);
  assert.equal((await refund(e, `RF${e.ref}`, 4_200n)).state, 'pending');

  day = today();
  audits = [];
  const file = path.join(dir, 'day.jsonl');
  await connector().downloadBill!({ billDate: day, destination: file });
  const lines = await readAll(file);
  expected = [
    { kind: 'payment', channelReference: a.ref, amount: 10_000n, fee: fee(10_000n), currency: 'USD' },
    { kind: 'payment', channelReference: b.ref, amount: 500n, fee: fee(500n), currency: 'JPY' },
    { kind: 'payment', channelReference: d.ref, amount: 5_000n, fee: fee(5_000n), currency: 'EUR' },
    { kind: 'payment', channelReference: e.ref, amount: 4_200n, fee: fee(4_200n), currency: 'USD' },
    { kind: 'refund', channelReference: a.ref, refundReference: `RF${a.ref}a`, amount: 2_500n, fee: 0n, currency: 'USD' },
    { kind: 'refund', channelReference: a.ref, refundReference: `RF${a.ref}b`, amount: 1_000n, fee: 0n, currency: 'USD' },
    { kind: 'refund', channelReference: b.ref, refundReference: `RF${b.ref}`, amount: 500n, fee: 0n, currency: 'JPY' },
    // Booked when made; its failure is a refund_failure transaction, which the reader skips.
    { kind: 'refund', channelReference: d.ref, refundReference: `RF${d.ref}`, amount: 1_000n, fee: 0n, currency: 'EUR' },
    { kind: 'refund', channelReference: e.ref, refundReference: `RF${e.ref}`, amount: 4_200n, fee: 0n, currency: 'USD' },
  ] satisfies Expected[];
  expected.sort((x, y) => byRef(x as BillLine, y as BillLine));
  assert.deepEqual(lines.map(({ lineNo: _l, occurredAt: _o, channelTransactionId: _c, ...rest }) => rest).sort((x, y) => byRef(x as BillLine, y as BillLine)), expected);
  assert.equal(fee(10_000n), 320n); // 2.9% + 30
  assert.equal(fee(500n), 45n);
  for (const l of lines) {
    assert.ok(l.occurredAt && l.occurredAt.toISOString().slice(0, 10) === day);
    assert.match(l.channelTransactionId!, l.kind === 'payment' ? /^pi_/ : /^re_/);
  }
  assert.equal(lines.find((l) => l.channelReference === a.ref && l.kind === 'payment')!.channelTransactionId, a.pi);
  // The file holds the transactions as Stripe listed them: 10 (9 + the refund_failure), sources expanded.
  const raw = fs.readFileSync(file, 'utf8').trim().split('\n').map((t) => JSON.parse(t) as Record<string, any>);
  assert.equal(raw.length, 10);
  assert.deepEqual(raw.map((t) => t['type']).filter((t) => t === 'refund_failure'), ['refund_failure']);
  const charge = raw.find((t) => t['type'] === 'charge' && t['source']['metadata']['knowpay_reference'] === a.ref)!;
  assert.equal(charge['source']['balance_transaction'], charge['id']);
  assert.equal(charge['net'], 10_000 - 320);
  assert.deepEqual(charge['fee_details'], [{ amount: 320, application: null, currency: 'usd', description: 'Stripe processing fees', type: 'stripe_fee' }]);
  assert.equal(charge['source']['payment_intent']['id'], a.pi);
  // One page, audited by its size.
  assert.equal(audits.length, 1);
  assert.equal(audits[0]!.operation, 'download_bill');
  assert.deepEqual((audits[0]!.response as Record<string, unknown>)['count'], 10);
});

test('downloadBill: small pages give the same bill; the page and size bounds stop it and leave no file', async () => {
  audits = [];
  const paged = path.join(dir, 'paged.jsonl');
  await connector({ bill: { pageSize: 3 } }).downloadBill!({ billDate: day, destination: paged });
  assert.equal(audits.length, 4); // 3 + 3 + 3 + 1
  assert.deepEqual(fs.readFileSync(paged, 'utf8'), fs.readFileSync(path.join(dir, 'day.jsonl'), 'utf8'));

  const cut = path.join(dir, 'cut.jsonl');
  await assert.rejects(connector({ bill: { pageSize: 3, maxPages: 2 } }).downloadBill!({ billDate: day, destination: cut }),
    (err: unknown) => err instanceof ChannelError && err.code === 'bill_too_large');
  assert.equal(fs.existsSync(cut), false);
  await assert.rejects(connector({ bill: { maxBytes: 1000 } }).downloadBill!({ billDate: day, destination: cut }),
    (err: unknown) => err instanceof ChannelError && err.code === 'bill_too_large');
  assert.equal(fs.existsSync(cut), false);
});

test('downloadBill: another day is empty; a malformed date and a wrong key are refused', async () => {
  const empty = path.join(dir, 'empty.jsonl');
  await connector().downloadBill!({ billDate: '2020-02-29', destination: empty });
  assert.equal(fs.readFileSync(empty, 'utf8'), '');
  assert.deepEqual(await readAll(empty), []);
  for (const billDate of ['2020-02-30', '20200101', '']) {
    await assert.rejects(connector().downloadBill!({ billDate, destination: empty }), (err: unknown) => err instanceof ChannelError && err.code === 'bill_date_invalid');
  }
  const wrong = connector({ secretKey: 'sk_test_51wrongwrongwrong' });
  await assert.rejects(wrong.downloadBill!({ billDate: day, destination: path.join(dir, 'denied.jsonl') }), (err: unknown) => err instanceof ChannelError && err.code === 'authentication_error');
  assert.equal(fs.existsSync(path.join(dir, 'denied.jsonl')), false);
});

test('GET /v1/balance_transactions: Stripe\'s list — unexpanded sources, created and type filters, cursor, refusals', async () => {
  const start = Date.parse(`${day}T00:00:00Z`) / 1000;
  const all = await api(`?created[gte]=${start}&created[lt]=${start + 86_400}&limit=100`);
  assert.equal(all.status, 200);
  assert.equal(all.json['object'], 'list');
  assert.equal(all.json['url'], '/v1/balance_transactions');
  const data = all.json['data'] as Array<Record<string, any>>;
  assert.equal(data.length, 10);
  for (const t of data) {
    assert.equal(typeof t['source'], 'string');
    assert.equal(t['status'], 'pending'); // available two days later
    assert.ok(t['available_on'] > t['created']);
  }
  for (let i = 1; i < data.length; i++) assert.ok(data[i - 1]!['created'] > data[i]!['created'] || (data[i - 1]!['created'] === data[i]!['created'] && data[i - 1]!['id'] > data[i]!['id']), 'newest first');
  const refunds = await api(`?type=refund&limit=100`);
  assert.equal((refunds.json['data'] as unknown[]).length, 5);
  const first = await api('?limit=4');
  assert.equal(first.json['has_more'], true);
  const next = await api(`?limit=100&starting_after=${(first.json['data'] as Array<{ id: string }>)[3]!.id}`);
  assert.deepEqual([...(first.json['data'] as Array<{ id: string }>), ...(next.json['data'] as Array<{ id: string }>)].map((t) => t.id), data.map((t) => t['id']));
  assert.equal(next.json['has_more'], false);
  assert.equal((await api(`?created[gte]=${start + 86_400}`)).json['data'].length, 0);
  assert.equal((await api(`?created=${data[0]!['created']}&limit=100`)).json['data'].length, data.filter((t) => t['created'] === data[0]!['created']).length);

  assert.equal((await api('?expand[]=data.source.customer')).status, 400);
  assert.equal((await api('?created[since]=1')).status, 400);
  assert.equal((await api('?limit=101')).status, 400);
  assert.equal((await api('?payout=po_1')).status, 400);
  const missing = await api('?starting_after=txn_nope');
  assert.equal(missing.status, 404);
  assert.equal(missing.json['error']['code'], 'resource_missing');
  assert.equal((await api('', 'sk_test_51other')).status, 401);
});

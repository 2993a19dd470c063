/**
 * downloadBill, connector ↔ sandbox over real HTTP: after paid, declined and refunded (full,
 * partial, pending) trades, the day's Transaction Search is paged into JSON Lines that the reader
 * turns into the expected payment and refund lines (amounts, Knowpay's fee estimate, refund
 * numbers); RESULTSET_TOO_LARGE narrows the window; stale data is "not ready"; the sandbox answers
 * PayPal's errors for bad searches.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ChannelError, type RefundRequest } from '../types.ts';
import type { BillLine } from '../../reconciliation/types.ts';
import { estimateFee, DEFAULT_FEES } from '../../domain/ledger-rules.ts';
import { startHarness, type Harness } from './harness.ts';
import { readPaypalBill } from './bill.ts';

let h: Harness;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'paypal-bill-dl-'));

before(async () => {
  h = await startHarness({ timeScale: 0.001 });
});

after(async () => {
  await h.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

let n = 0;
async function download(billDate: string, connector = h.connector): Promise<BillLine[]> {
  const dest = path.join(dir, `bill-${++n}.jsonl`);
  await connector.downloadBill!({ billDate, destination: dest });
  const out: BillLine[] = [];
  for await (const l of readPaypalBill(dest)) out.push(l);
  return out;
}

async function sandboxOrder(ref: string): Promise<Record<string, any>> {
  return (await fetch(`${h.base}/sandbox/paypal/orders/${ref}`)).json() as Promise<Record<string, any>>;
}

function refund(ref: string, refundReference: string, amountMinor: bigint, paymentAmountMinor: bigint): RefundRequest {
  return { channelReference: ref, refundReference, amountMinor, paymentAmountMinor, currency: 'USD', reason: 'test', notifyUrl: `${h.base}/v1/notify/paypal` };
}

const fee = (amount: bigint) => estimateFee(amount, DEFAULT_FEES.paypal!);
const day = (iso: string) => iso.slice(0, 10);

test('the day\'s bill: paid trades with their fees, completed refunds with our refund numbers; declined and pending left out', async () => {
  const [a, b, c, d] = ['a', 'b', 'c', 'd'].map((t) => h.newRef(`bill${t}`)) as [string, string, string, string];
  const capA = await h.pay(a!, { amountMinor: 1234n });
  const capB = await h.pay(b!, { amountMinor: 10_000n });
  const capC = await h.pay(c!, { amountMinor: 250n });
  // d: the buyer's funding source declines the capture.
  await h.connector.createPayment(h.input(d!, { amountMinor: 999n }));
  assert.equal((await h.simulate(d!, 'failed')).status, 200);
  assert.equal((await h.connector.queryPayment({ channelReference: d!, currency: 'USD' })).state, 'failed');

  const rA = `KR${a}x1`;
  const rB1 = `KR${b}x1`;
  const rB2 = `KR${b}x2`;
  const rC = `KR${c}x1`;
  assert.equal((await h.connector.refundPayment!({ ...refund(a!, rA, 1234n, 1234n), channelTransactionId: capA })).state, 'succeeded');
  assert.equal((await h.connector.refundPayment!({ ...refund(b!, rB1, 2_500n, 10_000n), channelTransactionId: capB })).state, 'succeeded');
  assert.equal((await h.connector.refundPayment!({ ...refund(b!, rB2, 500n, 10_000n), channelTransactionId: capB })).state, 'succeeded');
  assert.equal((await h.sandboxPost('/refunds/mode', { channel_reference: c, mode: 'pending' })).status, 200);
  assert.equal((await h.connector.refundPayment!({ ...refund(c!, rC, 100n, 250n), channelTransactionId: capC })).state, 'pending');

  // The days these happened on (one, unless the test straddles midnight UTC).
  const orders = await Promise.all([a, b, c, d].map((r) => sandboxOrder(r!)));
  const days = new Set<string>();
  for (const o of orders) {
    days.add(day(o['captured_at']));
    for (const r of o['refunds']) days.add(day(r['completed_at'] ?? r['created_at']));
  }
  const lines = (await Promise.all([...days].map((dd) => download(dd)))).flat();
  const ours = new Set([a, b, c, d]);
  const got = lines.filter((l) => ours.has(l.channelReference)).map(({ lineNo: _n, occurredAt, ...rest }) => {
    assert.ok(occurredAt instanceof Date && Math.abs(occurredAt.getTime() - Date.now()) < 10 * 60_000, String(occurredAt));
    return rest;
  });
  const refundId = (o: Record<string, any>, ref: string) => o['refunds'].find((r: any) => r['refund_reference'] === ref)['refund_id'];
  const [oA, oB] = orders as [Record<string, any>, Record<string, any>];
  const key = (l: { kind: string; channelReference: string; refundReference?: string }) => `${l.kind}|${l.channelReference}|${l.refundReference ?? ''}`;
  assert.deepEqual(got.sort((x, y) => key(x).localeCompare(key(y))), [
    { kind: 'payment', channelReference: a, channelTransactionId: capA, amount: 1234n, fee: fee(1234n), currency: 'USD' },
    { kind: 'payment', channelReference: b, channelTransactionId: capB, amount: 10_000n, fee: fee(10_000n), currency: 'USD' },
    { kind: 'payment', channelReference: c, channelTransactionId: capC, amount: 250n, fee: fee(250n), currency: 'USD' },
    { kind: 'refund', channelReference: a, channelTransactionId: refundId(oA, rA), refundReference: rA, amount: 1234n, fee: 0n, currency: 'USD' },
    { kind: 'refund', channelReference: b, channelTransactionId: refundId(oB, rB1), refundReference: rB1, amount: 2_500n, fee: 0n, currency: 'USD' },
    { kind: 'refund', channelReference: b, channelTransactionId: refundId(oB, rB2), refundReference: rB2, amount: 500n, fee: 0n, currency: 'USD' },
  ].sort((x, y) => key(x).localeCompare(key(y))));
  // The sandbox's fee is the estimate Knowpay records, so these reconcile as matched.
  assert.equal(fee(1234n), 92n);

  // A day without transactions: an empty bill. A day not yet begun: not ready (retryable).
  assert.deepEqual(await download('2001-01-01'), []);
  await assert.rejects(h.connector.downloadBill!({ billDate: '2999-01-01', destination: path.join(dir, 'future') }),
    (e: unknown) => e instanceof ChannelError && e.code === 'bill_not_ready' && e.retryable);
  await assert.rejects(h.connector.downloadBill!({ billDate: '2024-02-30', destination: path.join(dir, 'bad') }),
    (e: unknown) => e instanceof ChannelError && e.code === 'bill_date_invalid' && !e.retryable);

  // RESULTSET_TOO_LARGE on the whole day: the connector halves the window and finds the same lines.
  let searches = 0;
  h.mitm.set('toolarge', {
    intercept: (_n, p) => (p === '/v1/reporting/transactions' && ++searches <= 2
      ? { status: 400, body: JSON.stringify({ name: 'RESULTSET_TOO_LARGE', message: 'Result set size is greater than the maximum limit. Change the filter criteria and try again.', debug_id: 'x' }) }
      : undefined),
  });
  const narrowed = h.makeConnector({ baseUrl: `${h.base}/mitm/toolarge/sandbox/paypal` });
  const direct = (await download([...days][0]!)).map(({ lineNo: _n, ...rest }) => rest);
  const split = (await download([...days][0]!, narrowed)).map(({ lineNo: _n, ...rest }) => rest);
  assert.deepEqual(split, direct);
  assert.ok(searches >= 4, `searches: ${searches}`);
});

test('stale data (last_refreshed_datetime before the day\'s end) is not ready; nothing is left at the destination', async () => {
  h.mitm.set('stale', {
    intercept: (_n, p) => (p === '/v1/reporting/transactions'
      ? { status: 200, body: JSON.stringify({ transaction_details: [], page: 1, total_items: 0, total_pages: 0, last_refreshed_datetime: '2024-03-05T20:59:59+0000' }) }
      : undefined),
  });
  const dest = path.join(dir, 'stale.jsonl');
  await assert.rejects(h.makeConnector({ baseUrl: `${h.base}/mitm/stale/sandbox/paypal` }).downloadBill!({ billDate: '2024-03-05', destination: dest }),
    (e: unknown) => e instanceof ChannelError && e.code === 'bill_not_ready' && e.retryable);
  assert.equal(fs.existsSync(dest), false);
  assert.equal(fs.existsSync(`${dest}.part`), false);
});

test('the audit keeps a search page\'s count, not its transactions', async () => {
  const before = h.audits.length;
  await download('2001-01-02');
  const entries = h.audits.slice(before).filter((e) => e.operation === 'download_bill');
  assert.ok(entries.length >= 1);
  for (const e of entries) {
    const body = (e.response as Record<string, any>)['body'];
    assert.equal(body['transaction_details'], undefined);
    assert.equal(typeof body['transaction_details_count'], 'number');
  }
});

test('the sandbox answers PayPal\'s errors for bad searches', async () => {
  const tokenRes = await fetch(`${h.base}/sandbox/paypal/v1/oauth2/token`, {
    method: 'POST', body: 'grant_type=client_credentials',
    headers: { authorization: 'Basic ' + Buffer.from(`${h.keys.clientId}:${h.keys.clientSecret}`).toString('base64'), 'content-type': 'application/x-www-form-urlencoded' },
  });
  const token = ((await tokenRes.json()) as Record<string, string>)['access_token'];
  const search = async (q: string, auth = `Bearer ${token}`) => {
    const res = await fetch(`${h.base}/sandbox/paypal/v1/reporting/transactions?${q}`, { headers: { authorization: auth } });
    return { status: res.status, body: (await res.json()) as Record<string, any> };
  };
  assert.equal((await search('start_date=2024-01-01T00:00:00Z&end_date=2024-01-01T23:59:59Z', 'Bearer nope')).status, 401);
  const missing = await search('end_date=2024-01-01T23:59:59Z');
  assert.deepEqual([missing.status, missing.body['name'], missing.body['details'][0]['field']], [400, 'INVALID_REQUEST', 'start_date']);
  assert.equal((await search('start_date=2024-01-01&end_date=2024-01-02T00:00:00Z')).status, 400);
  const wide = await search('start_date=2024-01-01T00:00:00Z&end_date=2024-03-01T00:00:00Z');
  assert.deepEqual([wide.status, wide.body['details'][0]['field']], [400, 'end_date']);
  assert.equal((await search('start_date=2024-01-01T00:00:00Z&end_date=2024-01-01T23:59:59Z&page_size=501')).status, 400);
  assert.equal((await search('start_date=2024-01-01T00:00:00Z&end_date=2024-01-01T23:59:59Z&fields=secrets')).status, 400);
  const empty = await search('start_date=2024-01-01T00:00:00Z&end_date=2024-01-01T23:59:59Z&fields=all');
  assert.deepEqual([empty.status, empty.body['transaction_details'], empty.body['total_pages'], empty.body['page']], [200, [], 0, 1]);
  assert.match(empty.body['last_refreshed_datetime'], /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\+0000$/);
});

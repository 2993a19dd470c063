/**
 * Reconciliation of an Alipay bill (the real format: zip of GBK CSVs with # lines and trailing
 * tabs) with planted differences: exactly those are found, and the lost notification is healed.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { eventually, seedCourse, startTestService, type TestService } from '../support/service.ts';
import { writeAlipayBillZip, type AlipayBillRow } from '../../src/channels/alipay/bill.ts';
import { DRIVERS, simulate as simulateDriver } from '../support/drivers.ts';

let t: TestService;
let product: any;
const json = { 'content-type': 'application/json' };

before(async () => {
  t = await startTestService({ pollInitialDelayMs: 120_000, pollMaxDelayMs: 120_000 });
  ({ product } = await seedCourse(t));
});
after(async () => { await t.raw('DELETE', '/sandbox/faults', undefined); await t.stop(); });

async function paidOrder(customer: string, lose = false) {
  const o = (await t.api('POST', '/v1/orders', { customer_id: customer, currency: 'CNY', client_platform: 'web', items: [{ product_id: product.id }] })).body;
  const p = (await t.api('POST', `/v1/orders/${o.id}/payments`, { channel: 'alipay', method: 'qr' })).body;
  if (lose) await t.raw('POST', '/sandbox/faults', JSON.stringify({ channel: 'alipay', drop_rate: 1 }), json);
  const sim = await t.raw('POST', '/sandbox/alipay/simulate', JSON.stringify({ channel_reference: p.channel_reference, outcome: 'succeeded' }), json);
  if (lose) await t.raw('DELETE', '/sandbox/faults', undefined);
  if (!lose) await eventually(async () => (await t.api('GET', `/v1/orders/${o.id}`)).body.status === 'paid', { what: 'paid' });
  return { order: o, payment: (await t.api('GET', `/v1/payments/${p.id}`)).body, tradeNo: sim.body.trade_no as string };
}

const beijingDate = () => new Date(Date.now() + 8 * 3600_000).toISOString().slice(0, 10);

test('a day of Alipay with a lost notification, an amount that differs, a line only ours and one only theirs', async () => {
  const good = await Promise.all([paidOrder('a'), paidOrder('b'), paidOrder('c')]);
  const lost = await paidOrder('lost', true);
  assert.equal(lost.payment.status, 'requires_action', 'the notification was lost');
  const differs = await paidOrder('differs');
  const onlyOurs = await paidOrder('only_ours');
  const now = new Date();
  const row = (x: { payment: any; tradeNo: string }, amount?: bigint): AlipayBillRow => ({
    tradeNo: x.tradeNo, outTradeNo: x.payment.channel_reference, kind: 'payment', subject: 'Course 课程', createdAt: now, finishedAt: now,
    amount: amount ?? BigInt(x.payment.amount), fee: 60n,
  });
  const rows: AlipayBillRow[] = [
    ...good.map((g) => row(g)), row(lost), row(differs, 9999n),
    { tradeNo: '2026112222001499999999999999', outTradeNo: 'KPNOTOURS000000000000000000001', kind: 'payment', subject: 'x', createdAt: now, finishedAt: now, amount: 100n, fee: 1n },
  ];
  const file = path.join(os.tmpdir(), `alipay-bill-${Date.now()}.zip`);
  await writeAlipayBillZip(file, '2088000000000001', beijingDate(), rows);
  try {
    const up = await t.raw('POST', `/v1/reconciliations?channel=alipay&bill_date=${beijingDate()}`, fs.readFileSync(file),
      { authorization: `Bearer ${t.apiKey}`, 'content-type': 'application/zip' });
    assert.equal(up.status, 200, up.text);
    assert.match(up.body.id, /^recon_/);
    assert.equal(up.body.status, 'completed');
    const beijingMinutes = (Date.now() / 60_000 + 8 * 60) % 1440;
    const lateInDay = beijingMinutes > 1440 - 31;
    assert.deepEqual(up.body.summary, {
      lines: 6, matched: 3, amount_mismatch: 1, fee_mismatch: 0, status_mismatch: 1, missing_in_ledger: 1,
      missing_in_channel: lateInDay ? 0 : 1, expected: lateInDay ? 1 : 0, healed: 1,
    });
    const ex = (await t.api('GET', `/v1/reconciliations/${up.body.id}/exceptions?limit=100`)).body.data;
    const byKind = Object.fromEntries(ex.map((x: any) => [x.kind, x]));
    assert.equal(byKind.amount_mismatch.channel_reference, differs.payment.channel_reference);
    assert.deepEqual([byKind.amount_mismatch.expected_amount, byKind.amount_mismatch.actual_amount], [10000, 9999]);
    assert.equal(byKind.status_mismatch.channel_reference, lost.payment.channel_reference);
    assert.equal(byKind.status_mismatch.resolution, 'healed');
    assert.equal(byKind.missing_in_ledger.channel_reference, 'KPNOTOURS000000000000000000001');
    assert.equal((byKind.missing_in_channel ?? byKind.expected).channel_reference, onlyOurs.payment.channel_reference);
    // The lost notification was healed: the order is paid.
    assert.equal((await t.api('GET', `/v1/orders/${lost.order.id}`)).body.status, 'paid');

    // A person accepts the amount difference with a correcting entry, and ignores the foreign line.
    const acc = await t.api('POST', `/v1/reconciliations/${up.body.id}/exceptions/${byKind.amount_mismatch.id}/resolve`, { action: 'accept', reason: 'channel charged 9999' });
    assert.equal(acc.status, 200, acc.text);
    assert.equal(acc.body.resolution, 'accepted');
    const entries = (await t.api('GET', `/v1/ledger/entries?reference=${differs.payment.id}`)).body.data;
    assert.ok(entries.some((e: any) => e.kind === 'reconciliation_adjustment'));
    const ign = await t.api('POST', `/v1/reconciliations/${up.body.id}/exceptions/${byKind.missing_in_ledger.id}/resolve`, { action: 'ignore', reason: 'not ours' });
    assert.equal(ign.body.resolution, 'ignored');
    const twice = await t.api('POST', `/v1/reconciliations/${up.body.id}/exceptions/${byKind.missing_in_ledger.id}/resolve`, { action: 'ignore', reason: 'again' });
    assert.equal(twice.status, 400);
    const noReason = await t.api('POST', `/v1/reconciliations/${up.body.id}/exceptions/${byKind.missing_in_ledger.id}/resolve`, { action: 'ignore' });
    assert.equal(noReason.status, 400);
  } finally {
    fs.rmSync(file, { force: true });
  }
});

test('a file that is not an Alipay bill is a 400 that says why, and leaves nothing behind', async () => {
  const auth = { authorization: `Bearer ${t.apiKey}`, 'content-type': 'text/csv' };
  const wechatLike = '交易时间,公众账号ID,商户号\n`2026-11-22 10:00:00,`wx1,`1900000109\n';
  const r = await t.raw('POST', `/v1/reconciliations?channel=alipay&bill_date=${beijingDate()}`, wechatLike, auth);
  assert.equal(r.status, 400);
  assert.equal(r.body.error.code, 'bill_invalid');
  assert.match(r.body.error.message, /支付宝交易号/);
  const zipGarbage = await t.raw('POST', `/v1/reconciliations?channel=alipay&bill_date=${beijingDate()}`, Buffer.from('PK\x03\x04garbage'), { ...auth, 'content-type': 'application/zip' });
  assert.equal(zipGarbage.status, 400);
  const unknown = await t.raw('POST', `/v1/reconciliations?channel=nope&bill_date=${beijingDate()}`, 'x', auth);
  assert.equal(unknown.body.error.code, 'channel_not_reconcilable');
  const badDate = await t.raw('POST', `/v1/reconciliations?channel=alipay&bill_date=22-11-2026`, 'x', auth);
  assert.equal(badDate.body.error.code, 'bill_date_invalid');
  const { rows } = await t.svc.pool.query(`SELECT count(*) FROM recon_lines l JOIN reconciliations r ON r.id = l.recon_id WHERE r.status = 'failed'`);
  assert.equal(Number(rows[0].count), 0);
});

test('downloaded from the channel: a day of payments and a refund match line by line', async () => {
  const paidOrders = await Promise.all([paidOrder('dl_a'), paidOrder('dl_b')]);
  const refund = await t.api('POST', '/v1/refunds', { payment_id: paidOrders[0]!.payment.id, amount: 2500 });
  assert.equal(refund.status, 200, refund.text);
  assert.equal(refund.body.status, 'succeeded');
  const r = await t.api('POST', '/v1/reconciliations', { channel: 'alipay', bill_date: beijingDate() });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.body.source, 'download');
  const s = r.body.summary;
  const ours = paidOrders.map((o) => o.payment.channel_reference);
  const ex = (await t.api('GET', `/v1/reconciliations/${r.body.id}/exceptions?limit=100`)).body.data;
  assert.ok(ex.every((x: any) => !ours.includes(x.channel_reference)), `our payments matched: ${JSON.stringify(ex.filter((x: any) => ours.includes(x.channel_reference)))}`);
  assert.ok(!ex.some((x: any) => x.refund_id === refund.body.id), 'the refund line matched');
  assert.ok(s.lines >= 3 && s.matched >= 3, JSON.stringify(s));
  const future = await t.api('POST', '/v1/reconciliations', { channel: 'alipay', bill_date: '2999-01-01' });
  assert.equal(future.status, 400);
  assert.equal(future.body.error.code, 'bill_download_failed');
});

for (const [key, dayOf] of [['wechatpay:native', beijingDate], ['stripe:card', () => new Date().toISOString().slice(0, 10)]] as const) {
  test(`${key}: the channel's own bill, downloaded, matches our payments and refund line by line`, async () => {
    const d = DRIVERS.find((x) => `${x.channel}:${x.method}` === key)!;
    const creator = product.creator_id;
    const usd = (await t.api('POST', '/v1/products', { title: 'Any', type: 'course', creator_id: creator, prices: [{ currency: 'CNY', unit_amount: 10000 }, { currency: 'USD', unit_amount: 1500 }] })).body;
    const refs: string[] = [];
    let firstPayment: any = null;
    for (let i = 0; i < 2; i++) {
      const o = (await t.api('POST', '/v1/orders', { customer_id: `bill_${key}_${i}`, currency: d.currency, client_platform: d.platform, items: [{ product_id: usd.id }] })).body;
      const p = (await t.api('POST', `/v1/orders/${o.id}/payments`, { channel: d.channel, method: d.method, ...(d.payer ? { payer: d.payer } : {}) })).body;
      await d.open(t, p, {});
      assert.equal((await simulateDriver(t, d, p, {})).status, 200);
      await eventually(async () => (await t.api('GET', `/v1/orders/${o.id}`)).body.status === 'paid', { what: 'paid', timeoutMs: 15_000 });
      refs.push(p.channel_reference);
      firstPayment ??= p;
    }
    const refund = await t.api('POST', '/v1/refunds', { payment_id: firstPayment.id, amount: 500 });
    assert.equal(refund.status, 200, refund.text);
    await eventually(async () => (await t.api('GET', `/v1/refunds/${refund.body.id}`)).body.status === 'succeeded', { what: 'refund done', timeoutMs: 15_000 });
    const r = await t.api('POST', '/v1/reconciliations', { channel: d.channel, bill_date: dayOf() });
    assert.equal(r.status, 200, r.text);
    const ex = (await t.api('GET', `/v1/reconciliations/${r.body.id}/exceptions?limit=100`)).body.data;
    const ours = ex.filter((x: any) => refs.includes(x.channel_reference) || x.refund_id === refund.body.id);
    assert.deepEqual(ours, [], `our payments and refund matched: ${JSON.stringify(ours)}`);
    assert.ok(r.body.summary.lines >= 3 && r.body.summary.matched >= 3, JSON.stringify(r.body.summary));
  });
}

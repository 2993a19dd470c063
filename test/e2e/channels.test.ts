/**
 * Every channel and platform pair over HTTP: order → payment → the buyer pays in the sandbox →
 * paid and access granted; the channel's duplicate changes nothing; a tampered notification is
 * rejected, kept and changes nothing. Then a fault storm over all channels.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { eventually, startTestService, type TestService } from '../support/service.ts';
import { DRIVERS, simulate, type Driver } from '../support/drivers.ts';

let t: TestService;
let product: any;
const storeIds = { apple_iap: 'com.knowpay.sandbox.course1', google_play: 'course_1' };

before(async () => {
  t = await startTestService({ pollInitialDelayMs: 500, pollMaxDelayMs: 1000 });
  const creator = (await t.api('POST', '/v1/creators', { name: 'Ada', revenue_share_bps: 7000 })).body;
  product = (await t.api('POST', '/v1/products', {
    title: 'Course', type: 'course', creator_id: creator.id, store_product_ids: storeIds,
    prices: [{ currency: 'CNY', unit_amount: 10000 }, { currency: 'USD', unit_amount: 1500 }, { currency: 'EUR', unit_amount: 1400 }, { currency: 'JPY', unit_amount: 2000 }],
  })).body;
});
after(async () => { await t.raw('DELETE', '/sandbox/faults', undefined); await t.stop(); });

let n = 0;
async function payOnce(d: Driver, customer = `buyer_${d.channel}_${d.method}_${n++}`) {
  const order = (await t.api('POST', '/v1/orders', { customer_id: customer, currency: d.currency, client_platform: d.platform, items: [{ product_id: product.id }] })).body;
  const methods = (await t.api('GET', `/v1/orders/${order.id}/payment_methods`)).body.data;
  assert.ok(methods.some((m: any) => m.channel === d.channel && m.method === d.method), `${d.channel}:${d.method} offered on ${d.platform}: ${JSON.stringify(methods)}`);
  const pay = await t.api('POST', `/v1/orders/${order.id}/payments`, { channel: d.channel, method: d.method, ...(d.payer ? { payer: d.payer } : {}) });
  assert.equal(pay.status, 200, pay.text);
  await d.open(t, pay.body, storeIds);
  return { order, payment: pay.body, customer };
}

const orderStatus = async (id: string) => (await t.api('GET', `/v1/orders/${id}`)).body.status;

describe('every channel and platform', () => {
  for (const d of DRIVERS) {
    test(`${d.platform} → ${d.channel}:${d.method}: paid once, access granted, duplicates and forgeries change nothing`, async () => {
      await t.raw('POST', '/sandbox/faults', JSON.stringify({ channel: d.channel, duplicate_rate: 1 }), { 'content-type': 'application/json' });
      try {
        const { order, payment, customer } = await payOnce(d);
        const sim = await simulate(t, d, payment, storeIds);
        assert.equal(sim.status, 200, JSON.stringify(sim.body));
        await eventually(async () => (await orderStatus(order.id)) === 'paid', { what: `${d.channel} paid`, timeoutMs: 15_000 });
        assert.equal((await t.api('GET', `/v1/customers/${customer}/access/${product.id}`)).body.has_access, true);
        // The client's proof of purchase, where the channel has one, arrives too: nothing changes.
        const proof = d.confirmPayload?.(sim.body);
        if (d.confirmPayload) assert.ok(proof, 'the sandbox handed the app its proof of purchase');
        if (proof) {
          const c = await t.api('POST', `/v1/payments/${payment.id}/confirm`, proof);
          assert.equal(c.status, 200, c.text);
          assert.equal(c.body.status, 'succeeded');
        }
        // The sandbox delivered the notification twice (duplicate fault); wait for both.
        await eventually(async () => {
          const r = await t.svc.pool.query(`SELECT count(*) FROM channel_notifications WHERE channel_reference = $1 AND outcome IN ('applied', 'duplicate')`, [payment.channel_reference]);
          return Number(r.rows[0].count) >= 2;
        }, { what: 'duplicate delivered', timeoutMs: 10_000 });
        const tr = await t.svc.pool.query(`SELECT to_status FROM order_transitions WHERE order_id = $1 ORDER BY id`, [order.id]);
        assert.deepEqual(tr.rows.map((r) => r.to_status), ['pending', 'paid']);
        const grants = await t.svc.pool.query('SELECT count(*) FROM entitlement_grants WHERE order_id = $1', [order.id]);
        assert.equal(Number(grants.rows[0].count), 1);
        const entries = await t.svc.pool.query(`SELECT count(*) FROM journal_entries WHERE reference = $1`, [payment.id]);
        assert.equal(Number(entries.rows[0].count), 1, 'one capture entry');

        // A forgery: the genuine notification with one byte of its body changed.
        const genuine = await t.svc.pool.query(
          `SELECT headers, raw_body FROM channel_notifications WHERE channel_reference = $1 AND outcome = 'applied' LIMIT 1`, [payment.channel_reference]);
        const { headers, raw_body: body } = genuine.rows[0];
        const i = Math.floor(body.length / 2);
        const tampered = body.slice(0, i) + (body[i] === 'A' ? 'B' : 'A') + body.slice(i + 1);
        const fwd: Record<string, string> = {};
        for (const [k, v] of Object.entries(headers as Record<string, string>)) if (!['content-length', 'host', 'connection', 'transfer-encoding'].includes(k)) fwd[k] = String(v);
        const before = await t.svc.pool.query(`SELECT count(*) FROM channel_notifications WHERE outcome = 'rejected'`);
        const forged = await t.raw('POST', `/v1/notify/${d.channel}`, tampered, fwd);
        assert.ok(forged.status >= 400 || forged.text === 'fail', `forged answered ${forged.status} ${forged.text}`);
        const afterCount = await t.svc.pool.query(`SELECT count(*) FROM channel_notifications WHERE outcome = 'rejected'`);
        assert.equal(Number(afterCount.rows[0].count), Number(before.rows[0].count) + 1, 'kept for audit');
        assert.deepEqual((await t.svc.pool.query(`SELECT to_status FROM order_transitions WHERE order_id = $1 ORDER BY id`, [order.id])).rows.map((r) => r.to_status), ['pending', 'paid']);
      } finally {
        await t.raw('DELETE', '/sandbox/faults', undefined);
      }
    });
  }
});

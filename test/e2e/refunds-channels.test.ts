/**
 * Refunds through every channel over HTTP: partial then full, access kept then revoked, a refund
 * above the remainder refused; Apple and Google refunds arriving from the stores.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { eventually, startTestService, type TestService } from '../support/service.ts';
import { DRIVERS, simulate, type Driver } from '../support/drivers.ts';

let t: TestService;
let product: any;
const storeIds = { apple_iap: 'com.knowpay.sandbox.course1', google_play: 'course_1' };
const json = { 'content-type': 'application/json' };

before(async () => {
  t = await startTestService({ pollInitialDelayMs: 300, pollMaxDelayMs: 800 });
  const creator = (await t.api('POST', '/v1/creators', { name: 'Ada', revenue_share_bps: 7000 })).body;
  product = (await t.api('POST', '/v1/products', {
    title: 'Course', type: 'course', creator_id: creator.id, store_product_ids: storeIds,
    prices: [{ currency: 'CNY', unit_amount: 9000 }, { currency: 'USD', unit_amount: 1500 }, { currency: 'EUR', unit_amount: 1400 }, { currency: 'JPY', unit_amount: 2000 }],
  })).body;
});
after(async () => { await t.stop(); });

let n = 0;
async function paid(d: Driver) {
  const customer = `rc_${d.channel}_${n++}`;
  const order = (await t.api('POST', '/v1/orders', { customer_id: customer, currency: d.currency, client_platform: d.platform, items: [{ product_id: product.id }] })).body;
  const pay = (await t.api('POST', `/v1/orders/${order.id}/payments`, { channel: d.channel, method: d.method, ...(d.payer ? { payer: d.payer } : {}) })).body;
  await d.open(t, pay, storeIds);
  const sim = await simulate(t, d, pay, storeIds);
  assert.equal(sim.status, 200, JSON.stringify(sim.body));
  await eventually(async () => (await t.api('GET', `/v1/orders/${order.id}`)).body.status === 'paid', { what: 'paid', timeoutMs: 15_000 });
  return { order, payment: (await t.api('GET', `/v1/payments/${pay.id}`)).body, customer };
}

const refundable = ['alipay:qr', 'wechatpay:native', 'stripe:card:USD', 'paypal:paypal:USD'];
const pick = (key: string) => DRIVERS.find((d) => `${d.channel}:${d.method}` === key || `${d.channel}:${d.method}:${d.currency}` === key)!;

async function settled(refund: any) {
  if (refund.status !== 'pending') return refund;
  return eventually(async () => {
    const r = (await t.api('GET', `/v1/refunds/${refund.id}`)).body;
    return r.status === 'pending' ? null : r;
  }, { what: `refund ${refund.id} settled`, timeoutMs: 20_000 });
}

describe('merchant refunds through each channel', () => {
  for (const key of refundable) {
    test(`${key}: partial then full; access kept then revoked; above the remainder refused`, async () => {
      const d = pick(key);
      const { order, payment, customer } = await paid(d);
      const third = Math.floor(payment.amount / 3);
      const partial = await t.api('POST', '/v1/refunds', { payment_id: payment.id, amount: third, reason: 'goodwill' });
      assert.equal(partial.status, 200, partial.text);
      assert.equal((await settled(partial.body)).status, 'succeeded');
      assert.equal((await t.api('GET', `/v1/customers/${customer}/access/${product.id}`)).body.has_access, true);
      assert.equal((await t.api('GET', `/v1/orders/${order.id}`)).body.status, 'partially_refunded');
      const over = await t.api('POST', '/v1/refunds', { payment_id: payment.id, amount: payment.amount - third + 1 });
      assert.equal(over.status, 400);
      assert.equal(over.body.error.code, 'refund_exceeds_remaining');
      const rest = await t.api('POST', '/v1/refunds', { payment_id: payment.id });
      assert.equal(rest.status, 200, rest.text);
      assert.equal((await settled(rest.body)).status, 'succeeded');
      await eventually(async () => (await t.api('GET', `/v1/orders/${order.id}`)).body.status === 'refunded', { what: 'order refunded' });
      assert.equal((await t.api('GET', `/v1/customers/${customer}/access/${product.id}`)).body.has_access, false);
      const entries = await t.svc.pool.query(`SELECT count(*) FROM journal_entries e JOIN refunds r ON r.id = e.reference WHERE r.payment_id = $1`, [payment.id]);
      assert.equal(Number(entries.rows[0].count), 2, 'one reversal per refund');
    });
  }

  test('alipay: 12 concurrent refunds of 1,000 on a 9,000 payment → exactly 9', async () => {
    const { payment } = await paid(pick('alipay:qr'));
    assert.equal(payment.amount, 9000);
    const results = await Promise.all(Array.from({ length: 12 }, () => t.api('POST', '/v1/refunds', { payment_id: payment.id, amount: 1000 })));
    assert.equal(results.filter((r) => r.status === 200).length, 9, results.map((r) => `${r.status}:${r.body?.error?.code ?? ''}`).join(','));
    const { rows } = await t.svc.pool.query(`SELECT count(*) AS n, sum(amount) AS s FROM refunds WHERE payment_id = $1 AND status = 'succeeded'`, [payment.id]);
    assert.deepEqual([Number(rows[0].n), Number(rows[0].s)], [9, 9000]);
  });
});

describe('refunds started by the stores', () => {
  for (const key of ['apple_iap:in_app', 'google_play:in_app']) {
    test(`${key}: the store refunds, the notification records it and revokes access`, async () => {
      const d = pick(key);
      const { order, payment, customer } = await paid(d);
      const direct = await t.api('POST', '/v1/refunds', { payment_id: payment.id });
      assert.equal(direct.status, 400);
      assert.equal(direct.body.error.code, 'refund_not_supported');
      const body = d.channel === 'apple_iap'
        ? { channel_reference: payment.channel_reference, outcome: 'succeeded' }
        : { channel_reference: payment.channel_reference, outcome: 'succeeded' };
      const r = await t.raw('POST', `/sandbox/${d.channel}/refunds/simulate`, JSON.stringify(body), json);
      assert.equal(r.status, 200, r.text);
      await eventually(async () => (await t.api('GET', `/v1/orders/${order.id}`)).body.status === 'refunded', { what: 'refunded by the store', timeoutMs: 15_000 });
      assert.equal((await t.api('GET', `/v1/customers/${customer}/access/${product.id}`)).body.has_access, false);
      const refunds = (await t.api('GET', `/v1/refunds?payment_id=${payment.id}`)).body.data;
      assert.equal(refunds.length, 1);
      assert.equal(refunds[0].initiated_by, 'channel');
    });
  }
});

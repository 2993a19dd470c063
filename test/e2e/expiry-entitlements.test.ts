import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { eventually, seedCourse, startTestService, type TestService } from '../support/service.ts';

let t: TestService;
let course: any;
let membership: any;

before(async () => {
  t = await startTestService({ orderTtlMs: 1500, pollInitialDelayMs: 200, pollMaxDelayMs: 500 });
  ({ product: course } = await seedCourse(t));
  ({ product: membership } = await seedCourse(t, { type: 'membership', accessDays: 30, unitAmount: 3000 }));
});
after(async () => { await t.stop(); });

const simulate = (ref: string, outcome: string) =>
  t.raw('POST', '/sandbox/alipay/simulate', JSON.stringify({ channel_reference: ref, outcome }), { 'content-type': 'application/json' });

test('an unpaid order expires, its trade is closed at the channel, its coupon released', async () => {
  await t.api('POST', '/v1/coupons', { code: 'EXP1', percent_off_bps: 500, max_redemptions: 1 });
  const order = (await t.api('POST', '/v1/orders', { customer_id: 'late', currency: 'CNY', client_platform: 'web', items: [{ product_id: course.id }], coupon_code: 'EXP1' })).body;
  const payment = (await t.api('POST', `/v1/orders/${order.id}/payments`, { channel: 'alipay', method: 'qr' })).body;
  await eventually(async () => (await t.api('GET', `/v1/orders/${order.id}`)).body.status === 'expired', { what: 'expired', timeoutMs: 15_000 });
  assert.equal((await t.api('GET', `/v1/payments/${payment.id}`)).body.status, 'canceled');
  // The channel refuses the buyer now: the trade was closed.
  const late = await simulate(payment.channel_reference, 'succeeded');
  assert.notEqual(late.status, 200);
  const { rows } = await t.svc.pool.query(`SELECT times_reserved FROM coupons WHERE code = 'EXP1'`);
  assert.equal(rows[0].times_reserved, 0);
  const calls = await t.svc.pool.query(`SELECT operation FROM channel_calls WHERE channel_reference = $1 ORDER BY id`, [payment.channel_reference]);
  assert.ok(calls.rows.some((r) => /close/.test(r.operation)), JSON.stringify(calls.rows));
  // Expired is final: no new attempt.
  const again = await t.api('POST', `/v1/orders/${order.id}/payments`, { channel: 'alipay' });
  assert.equal(again.status, 400);
});

async function buy(customer: string, productId: string, quantity = 1) {
  const order = (await t.api('POST', '/v1/orders', { customer_id: customer, currency: 'CNY', client_platform: 'web', items: [{ product_id: productId, quantity }] })).body;
  const payment = (await t.api('POST', `/v1/orders/${order.id}/payments`, { channel: 'alipay', method: 'qr' })).body;
  assert.equal((await simulate(payment.channel_reference, 'succeeded')).status, 200);
  await eventually(async () => (await t.api('GET', `/v1/orders/${order.id}`)).body.status === 'paid', { what: 'paid' });
}

test('a membership grants 30 days; buying it again extends it; quantity multiplies', async () => {
  await buy('member', membership.id);
  const first = (await t.api('GET', `/v1/customers/member/access/${membership.id}`)).body;
  assert.equal(first.has_access, true);
  const days = (first.expires_at - Date.now() / 1000) / 86400;
  assert.ok(days > 29.9 && days <= 30, String(days));
  await buy('member', membership.id, 2);
  const second = (await t.api('GET', `/v1/customers/member/access/${membership.id}`)).body;
  assert.equal(second.expires_at - first.expires_at, 60 * 86400);
  const ents = (await t.api('GET', '/v1/customers/member/entitlements')).body.data;
  assert.equal(ents.length, 1);
});

test('access is false for another customer or product; lapsed access reads expired', async () => {
  assert.equal((await t.api('GET', `/v1/customers/nobody/access/${membership.id}`)).body.has_access, false);
  await buy('lapsed', membership.id);
  await t.svc.pool.query(`UPDATE entitlements SET expires_at = now() - interval '1 day' WHERE customer_id = 'lapsed'`);
  const a = (await t.api('GET', `/v1/customers/lapsed/access/${membership.id}`)).body;
  assert.equal(a.has_access, false);
  assert.equal(a.status, 'expired');
  // Buying again after it lapsed starts a fresh 30 days from now.
  await buy('lapsed', membership.id);
  const b = (await t.api('GET', `/v1/customers/lapsed/access/${membership.id}`)).body;
  assert.equal(b.has_access, true);
  const days = (b.expires_at - Date.now() / 1000) / 86400;
  assert.ok(days > 29.9 && days <= 30, String(days));
});

test('a purchase completed after its order expired is recorded and held for refund, not lost', async () => {
  const creator = (await t.api('POST', '/v1/creators', { name: 'Late', revenue_share_bps: 7000 })).body;
  const iap = (await t.api('POST', '/v1/products', {
    title: 'IAP course', type: 'course', creator_id: creator.id, store_product_ids: { apple_iap: 'com.knowpay.sandbox.late' },
    prices: [{ currency: 'CNY', unit_amount: 600 }],
  })).body;
  const order = (await t.api('POST', '/v1/orders', { customer_id: 'slow_buyer', currency: 'CNY', client_platform: 'ios', items: [{ product_id: iap.id }] })).body;
  const payment = (await t.api('POST', `/v1/orders/${order.id}/payments`, { channel: 'apple_iap' })).body;
  await eventually(async () => (await t.api('GET', `/v1/orders/${order.id}`)).body.status === 'expired', { what: 'expired', timeoutMs: 15_000 });
  assert.equal((await t.api('GET', `/v1/payments/${payment.id}`)).body.status, 'canceled');
  // The buyer completes the StoreKit purchase anyway; Apple notifies us.
  const sim = await t.raw('POST', '/sandbox/apple_iap/simulate', JSON.stringify({
    channel_reference: payment.channel_reference, outcome: 'succeeded', product_id: 'com.knowpay.sandbox.late', amount: 600, currency: 'CNY',
  }), { 'content-type': 'application/json' });
  assert.equal(sim.status, 200, sim.text);
  await eventually(async () => (await t.api('GET', `/v1/payments/${payment.id}`)).body.status === 'succeeded', { what: 'late success recorded' });
  const p = (await t.api('GET', `/v1/payments/${payment.id}`)).body;
  assert.equal(p.needs_refund, true);
  assert.equal(p.refund_reason, 'order_expired');
  assert.equal((await t.api('GET', `/v1/orders/${order.id}`)).body.status, 'expired');
  assert.equal((await t.api('GET', `/v1/customers/slow_buyer/access/${iap.id}`)).body.has_access, false);
  const entries = (await t.api('GET', `/v1/ledger/entries?reference=${payment.id}`)).body.data;
  assert.equal(entries[0].kind, 'overpayment');
  assert.ok(entries[0].postings.some((x: any) => x.account === 'customer_overpayments:CNY' && x.amount === 600));
});

/**
 * The end-to-end proofs over HTTP with the Alipay sandbox: pay, duplicate and forged
 * notifications, a lost notification healed by active query, a failed attempt then a paid one.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { eventually, seedCourse, startTestService, type TestService } from '../support/service.ts';
import { signAlipayNotification } from '../../src/channels/alipay/sign.ts';
import { getSetting } from '../../src/store/settings.ts';
import { SANDBOX_APP_ID } from '../../src/channels/setup.ts';

let t: TestService;
let product: any;
let keys: { alipayPrivateKey: string; appPublicKey: string };

before(async () => {
  t = await startTestService({ pollInitialDelayMs: 300, pollMaxDelayMs: 1000 });
  ({ product } = await seedCourse(t));
  await t.api('POST', '/v1/coupons', { code: 'TEN', percent_off_bps: 1000 });
  keys = (await getSetting(t.svc.pool, 'sandbox.alipay.keys'))!;
});
after(async () => { await t.raw('DELETE', '/sandbox/faults', undefined); await t.stop(); });

async function newOrder(customer: string, extra: Record<string, unknown> = {}) {
  const r = await t.api('POST', '/v1/orders', { customer_id: customer, currency: 'CNY', client_platform: 'web', items: [{ product_id: product.id }], ...extra });
  assert.equal(r.status, 200, r.text);
  return r.body;
}

async function pay(orderId: string, method = 'qr') {
  const r = await t.api('POST', `/v1/orders/${orderId}/payments`, { channel: 'alipay', method });
  assert.equal(r.status, 200, r.text);
  return r.body;
}

const simulate = (ref: string, outcome: string) =>
  t.raw('POST', '/sandbox/alipay/simulate', JSON.stringify({ channel_reference: ref, outcome }), { 'content-type': 'application/json' });

const setFaults = (f: Record<string, unknown>) =>
  t.raw('POST', '/sandbox/faults', JSON.stringify(f), { 'content-type': 'application/json' });

async function orderStatus(id: string) { return (await t.api('GET', `/v1/orders/${id}`)).body.status; }

async function transitions(orderId: string) {
  const o = await t.svc.pool.query('SELECT to_status FROM order_transitions WHERE order_id = $1 ORDER BY id', [orderId]);
  return o.rows.map((r) => r.to_status);
}

/** A notification exactly as Alipay would send it for this payment, signed with the sandbox's Alipay key. */
function notificationFor(payment: any, overrides: Record<string, string> = {}, privateKey = keys.alipayPrivateKey) {
  const params = signAlipayNotification({
    notify_time: '2026-11-22 10:00:00', notify_type: 'trade_status_sync', notify_id: 'n' + payment.channel_reference,
    app_id: SANDBOX_APP_ID, charset: 'utf-8', version: '1.0', trade_no: '2026112222001400000000000001',
    out_trade_no: payment.channel_reference, trade_status: 'TRADE_SUCCESS', total_amount: (payment.amount / 100).toFixed(2),
    receipt_amount: (payment.amount / 100).toFixed(2), gmt_payment: '2026-11-22 09:59:59', subject: 'Course 课程', ...overrides,
  }, privateKey);
  return new URLSearchParams(params).toString();
}

const postNotify = (body: string) =>
  t.raw('POST', '/v1/notify/alipay', body, { 'content-type': 'application/x-www-form-urlencoded; charset=utf-8' });

describe('Alipay end to end', () => {
  test('¥100 course, 10% coupon → 9000 fen → QR → sandbox pays → paid, access granted', async () => {
    const order = await newOrder('buyer_1', { coupon_code: 'TEN' });
    assert.equal(order.total_amount, 9000);
    const payment = await pay(order.id, 'qr');
    assert.equal(payment.status, 'requires_action');
    assert.equal(payment.amount, 9000);
    assert.equal(payment.action.type, 'qr_code');
    assert.match(payment.action.qr_code_url, /^https?:\/\//);
    assert.equal((await t.api('GET', `/v1/customers/buyer_1/access/${product.id}`)).body.has_access, false);

    const sim = await simulate(payment.channel_reference, 'succeeded');
    assert.equal(sim.status, 200, sim.text);
    await eventually(async () => (await orderStatus(order.id)) === 'paid', { what: 'order paid' });
    const paid = await t.api('GET', `/v1/payments/${payment.id}`);
    assert.equal(paid.body.status, 'succeeded');
    assert.match(paid.body.channel_transaction_id, /^\d{28}$/);
    const access = await t.api('GET', `/v1/customers/buyer_1/access/${product.id}`);
    assert.deepEqual([access.body.has_access, access.body.expires_at], [true, null]);
    const ents = await t.api('GET', '/v1/customers/buyer_1/entitlements');
    assert.deepEqual(ents.body.data.map((e: any) => [e.product_id, e.status]), [[product.id, 'active']]);
  });

  test('the same notification 5 times concurrently → one transition, one entitlement', async () => {
    await setFaults({ channel: 'alipay', drop_rate: 1 });
    try {
      const order = await newOrder('buyer_dup');
      const payment = await pay(order.id);
      const body = notificationFor(payment);
      const answers = await Promise.all(Array.from({ length: 5 }, () => postNotify(body)));
      assert.deepEqual(answers.map((a) => a.text), Array(5).fill('success'));
      assert.deepEqual(await transitions(order.id), ['pending', 'paid']);
      const p = await t.svc.pool.query(`SELECT count(*) FROM payment_transitions WHERE payment_id = $1 AND to_status = 'succeeded'`, [payment.id]);
      assert.equal(Number(p.rows[0].count), 1);
      const e = await t.svc.pool.query(`SELECT count(*) FROM entitlement_grants WHERE order_id = $1`, [order.id]);
      assert.equal(Number(e.rows[0].count), 1);
      const n = await t.svc.pool.query(`SELECT outcome, count(*) FROM channel_notifications WHERE channel_reference = $1 GROUP BY outcome ORDER BY outcome`, [payment.channel_reference]);
      assert.deepEqual(n.rows.map((r) => [r.outcome, Number(r.count)]), [['applied', 1], ['duplicate', 4]]);
    } finally {
      await t.raw('DELETE', '/sandbox/faults', undefined);
    }
  });

  test('forged notifications are rejected, kept, and change nothing', async () => {
    const order = await newOrder('buyer_forged');
    const payment = await pay(order.id);
    const { generateKeyPairSync } = await import('node:crypto');
    const foreign = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    const good = notificationFor(payment);
    const forgeries: [string, string][] = [
      ['bad signature (foreign key)', notificationFor(payment, {}, foreign)],
      ['valid signature, another amount', notificationFor(payment, { total_amount: '0.01' })],
      ['valid signature, another app id', notificationFor(payment, { app_id: '2021000000009999' })],
      ['tampered amount after signing', good.replace(/total_amount=90.00|total_amount=[0-9.]+/, 'total_amount=0.01')],
      ['signature removed', good.replace(/&?sign=[^&]*/, '')],
      ['unknown trade number', notificationFor({ ...payment, channel_reference: 'KPNOPE' })],
      ['not a form at all', '{"trade_status":"TRADE_SUCCESS"}'],
    ];
    for (const [name, body] of forgeries) {
      const r = await postNotify(body);
      assert.notEqual(r.text, 'success', name);
    }
    assert.equal(await orderStatus(order.id), 'pending');
    assert.equal((await t.api('GET', `/v1/payments/${payment.id}`)).body.status, 'requires_action');
    const kept = await t.svc.pool.query(`SELECT count(*) FROM channel_notifications WHERE outcome = 'rejected' AND received_at > now() - interval '1 minute'`);
    assert.ok(Number(kept.rows[0].count) >= forgeries.length);
    assert.equal((await t.api('GET', `/v1/customers/buyer_forged/access/${product.id}`)).body.has_access, false);
  });

  test('a dropped notification → paid through active query', async () => {
    await setFaults({ channel: 'alipay', drop_rate: 1 });
    try {
      const order = await newOrder('buyer_lost');
      const payment = await pay(order.id);
      assert.equal((await simulate(payment.channel_reference, 'succeeded')).status, 200);
      await eventually(async () => (await orderStatus(order.id)) === 'paid', { what: 'paid by query', timeoutMs: 15_000 });
      const reason = await t.svc.pool.query(`SELECT reason FROM payment_transitions WHERE payment_id = $1 AND to_status = 'succeeded'`, [payment.id]);
      assert.equal(reason.rows[0].reason, 'query');
      const n = await t.svc.pool.query('SELECT count(*) FROM channel_notifications WHERE channel_reference = $1', [payment.channel_reference]);
      assert.equal(Number(n.rows[0].count), 0);
    } finally {
      await t.raw('DELETE', '/sandbox/faults', undefined);
    }
  });

  test('a failed attempt, then a second attempt → paid', async () => {
    const order = await newOrder('buyer_retry');
    const first = await pay(order.id, 'qr');
    assert.equal((await simulate(first.channel_reference, 'failed')).status, 200);
    await eventually(async () => ['failed', 'canceled'].includes((await t.api('GET', `/v1/payments/${first.id}`)).body.status), { what: 'first attempt ended' });
    assert.equal(await orderStatus(order.id), 'pending');
    const advice = (await t.api('GET', `/v1/payments/${first.id}`)).body.next_method;
    assert.ok(advice && advice.channel !== 'alipay', `the failed attempt suggests another channel: ${JSON.stringify(advice)}`);
    const second = await pay(order.id, 'page');
    assert.equal(second.action.type, 'redirect');
    // The buyer's browser opens the cashier page, which opens the trade at the channel.
    const page = await fetch(second.action.url);
    assert.equal(page.status, 200);
    assert.equal((await simulate(second.channel_reference, 'succeeded')).status, 200);
    await eventually(async () => (await orderStatus(order.id)) === 'paid', { what: 'paid on second attempt' });
    assert.equal((await t.api('GET', `/v1/orders/${order.id}`)).body.paid_payment_id, second.id);
  });

  test('a buyer who paid twice: the order is paid once, the extra payment is flagged for refund', async () => {
    const order = await newOrder('buyer_twice');
    const a = await pay(order.id);
    const b = await pay(order.id);
    await simulate(a.channel_reference, 'succeeded');
    await simulate(b.channel_reference, 'succeeded');
    await eventually(async () => (await t.api('GET', `/v1/payments/${b.id}`)).body.status === 'succeeded'
      && (await t.api('GET', `/v1/payments/${a.id}`)).body.status === 'succeeded', { what: 'both succeeded' });
    const pa = (await t.api('GET', `/v1/payments/${a.id}`)).body;
    const pb = (await t.api('GET', `/v1/payments/${b.id}`)).body;
    const o = (await t.api('GET', `/v1/orders/${order.id}`)).body;
    assert.equal(o.status, 'paid');
    const extra = o.paid_payment_id === a.id ? pb : pa;
    assert.equal(extra.needs_refund, true);
    assert.equal(extra.refund_reason, 'duplicate_payment');
    assert.deepEqual(await transitions(order.id), ['pending', 'paid']);
  });

  test('a paid order takes no further payment attempts', async () => {
    const order = await newOrder('buyer_done', { coupon_code: 'TEN' });
    const p = await pay(order.id);
    await simulate(p.channel_reference, 'succeeded');
    await eventually(async () => (await orderStatus(order.id)) === 'paid', { what: 'paid' });
    const again = await t.api('POST', `/v1/orders/${order.id}/payments`, { channel: 'alipay' });
    assert.equal(again.status, 400);
    assert.equal(again.body.error.code, 'order_not_payable');
  });
});

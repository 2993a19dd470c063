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

describe('a Stripe refund that succeeded and then failed at the card (refund.failed)', () => {
  test('the refund ends failed, its entry is reversed exactly, the order is paid again, and the money can be refunded again', async () => {
    const d = pick('stripe:card:USD');
    const customer = `rc_refund_fail_${n++}`;
    const order = (await t.api('POST', '/v1/orders', { customer_id: customer, currency: 'USD', client_platform: 'web', items: [{ product_id: product.id }] })).body;
    const pay = (await t.api('POST', `/v1/orders/${order.id}/payments`, { channel: 'stripe', method: 'card' })).body;
    // Stripe's test card whose refunds succeed and later fail.
    const sim = await t.raw('POST', '/sandbox/stripe/simulate', JSON.stringify({ channel_reference: pay.channel_reference, outcome: 'succeeded', payment_method: 'pm_card_refundFail' }), json);
    assert.equal(sim.status, 200, sim.text);
    await eventually(async () => (await t.api('GET', `/v1/orders/${order.id}`)).body.status === 'paid', { what: 'paid', timeoutMs: 15_000 });
    const balance = async () => (await t.api('GET', `/v1/creators/${product.creator_id}/balance`)).body.pending.find((x: any) => x.currency === 'USD')?.amount ?? 0;
    const paidBalance = await balance();

    const refund = await t.api('POST', '/v1/refunds', { payment_id: pay.id });
    assert.equal(refund.status, 200, refund.text);
    await eventually(async () => (await t.api('GET', `/v1/refunds/${refund.body.id}`)).body.status === 'succeeded', { what: 'refund succeeded', timeoutMs: 15_000 });
    assert.equal((await t.api('GET', `/v1/orders/${order.id}`)).body.status, 'refunded');
    assert.equal((await t.api('GET', `/v1/customers/${customer}/access/${product.id}`)).body.has_access, false);
    const refundedBalance = await balance();
    assert.ok(refundedBalance < paidBalance, `the refund took the creator's share back (${paidBalance} → ${refundedBalance})`);

    // The card cannot take the money: Stripe fails the refund it had made (the sandbox does so on
    // its own shortly after; simulate makes it now if it has not yet).
    const succeededRefund = (await t.api('GET', `/v1/refunds/${refund.body.id}`)).body;
    const fail = await t.raw('POST', '/sandbox/stripe/refunds/simulate', JSON.stringify({ channel_refund_id: succeededRefund.channel_refund_id, outcome: 'failed' }), json);
    assert.ok(fail.status === 200 || (fail.status === 409 && /already failed/.test(fail.text)), fail.text);
    await eventually(async () => (await t.api('GET', `/v1/refunds/${refund.body.id}`)).body.status === 'failed', { what: 'refund failed', timeoutMs: 15_000 });
    const failed = (await t.api('GET', `/v1/refunds/${refund.body.id}`)).body;
    assert.ok(failed.failure_code, 'the failure says why');
    assert.equal((await t.api('GET', `/v1/orders/${order.id}`)).body.status, 'paid');
    assert.equal(await balance(), paidBalance, "the creator's share is back, to the cent");
    const entries = (await t.api('GET', `/v1/ledger/entries?reference=${refund.body.id}&limit=10`)).body.data;
    const refundEntry = entries.find((e: any) => e.kind === 'refund');
    const failure = entries.filter((e: any) => e.kind === 'refund_failure');
    assert.equal(failure.length, 1);
    assert.equal(failure[0].reverses, refundEntry.id);
    const trial = (await t.api('GET', '/v1/ledger/trial_balance')).body;
    assert.ok(trial.currencies.every((c: any) => c.balanced), JSON.stringify(trial));
    const tr = await t.svc.pool.query('SELECT from_status, to_status FROM refund_transitions WHERE refund_id = $1 ORDER BY id', [refund.body.id]);
    assert.deepEqual(tr.rows.map((r) => `${r.from_status}→${r.to_status}`), ['none→pending', 'pending→succeeded', 'succeeded→failed']);

    // Stripe sends its events again: nothing changes a second time.
    const genuine = await t.svc.pool.query(
      `SELECT headers, raw_body, outcome FROM channel_notifications
        WHERE channel = 'stripe' AND raw_body LIKE '%' || $1 || '%' AND raw_body LIKE '%"status": "failed"%' ORDER BY id`, [succeededRefund.channel_refund_id]);
    assert.ok(genuine.rows.length >= 1, 'the refund events arrived');
    assert.equal(genuine.rows.filter((r) => r.outcome === 'applied').length, 1, `one of them applied: ${genuine.rows.map((r) => r.outcome)}`);
    const fwd: Record<string, string> = {};
    for (const [k, v] of Object.entries(genuine.rows[0].headers as Record<string, string>)) if (!['content-length', 'host', 'connection', 'transfer-encoding'].includes(k)) fwd[k] = String(v);
    const replay = await t.raw('POST', '/v1/notify/stripe', genuine.rows[0].raw_body, fwd);
    assert.ok(replay.status < 300, `replay answered ${replay.status}`);
    const again = (await t.api('GET', `/v1/ledger/entries?reference=${refund.body.id}&limit=10`)).body.data;
    assert.equal(again.filter((e: any) => e.kind === 'refund_failure').length, 1);
    assert.equal(await balance(), paidBalance);

    // The failed refund no longer counts against the payment: the whole amount can be refunded again.
    const second = await t.api('POST', '/v1/refunds', { payment_id: pay.id, amount: 1500 });
    assert.equal(second.status, 200, second.text);
    const over = await t.api('POST', '/v1/refunds', { payment_id: pay.id, amount: 1 });
    assert.equal(over.status, 400, 'nothing left beyond the second refund');
  });
});

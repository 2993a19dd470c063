/**
 * Refunds over HTTP, channel-independent part (paid from the wallet, refunded into it): partial
 * then full, access kept then revoked, over-refunds refused, concurrency, the ledger reversal,
 * coin packs whose coins were spent.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { eventually, startTestService, type TestService } from '../support/service.ts';

let t: TestService;
let creator: any;
let coins: any;
let course: any;

before(async () => {
  t = await startTestService();
  creator = (await t.api('POST', '/v1/creators', { name: 'Author', revenue_share_bps: 7000, settlement_delay_days: 0 })).body;
  coins = (await t.api('POST', '/v1/products', { title: 'coins', type: 'coin_pack', creator_id: creator.id, prices: [{ currency: 'CNY', unit_amount: 100000 }], wallet_credit: { currency: 'CNY', amount: 100000 } })).body;
  course = (await t.api('POST', '/v1/products', { title: 'Course', type: 'course', creator_id: creator.id, prices: [{ currency: 'CNY', unit_amount: 9000 }] })).body;
});
after(async () => { await t.stop(); });

const json = { 'content-type': 'application/json' };

async function topUp(customer: string) {
  const o = (await t.api('POST', '/v1/orders', { customer_id: customer, currency: 'CNY', client_platform: 'web', items: [{ product_id: coins.id }] })).body;
  const p = (await t.api('POST', `/v1/orders/${o.id}/payments`, { channel: 'alipay', method: 'qr' })).body;
  await t.raw('POST', '/sandbox/alipay/simulate', JSON.stringify({ channel_reference: p.channel_reference, outcome: 'succeeded' }), json);
  await eventually(async () => (await t.api('GET', `/v1/orders/${o.id}`)).body.status === 'paid', { what: 'coins paid' });
  return p;
}

async function buyWithWallet(customer: string) {
  const o = (await t.api('POST', '/v1/orders', { customer_id: customer, currency: 'CNY', client_platform: 'ios', items: [{ product_id: course.id }] })).body;
  const p = await t.api('POST', `/v1/orders/${o.id}/payments`, { channel: 'wallet' });
  assert.equal(p.status, 200, p.text);
  return { order: o, payment: p.body };
}

const wallet = async (c: string) => (await t.api('GET', `/v1/customers/${c}/wallet`)).body.balances[0]?.amount ?? 0;
const access = async (c: string) => (await t.api('GET', `/v1/customers/${c}/access/${course.id}`)).body.has_access;

test('partial then full refund: access kept then revoked, order partially_refunded then refunded, books reversed', async () => {
  await topUp('r1');
  const { order, payment } = await buyWithWallet('r1');
  assert.equal(await wallet('r1'), 91000);
  const pending = (await t.api('GET', `/v1/creators/${creator.id}/balance`)).body;

  const partial = await t.api('POST', '/v1/refunds', { payment_id: payment.id, amount: 3000, reason: 'goodwill' });
  assert.equal(partial.status, 200, partial.text);
  assert.match(partial.body.id, /^re_/);
  assert.equal(partial.body.status, 'succeeded');
  assert.equal(await wallet('r1'), 94000);
  assert.equal(await access('r1'), true, 'a partial goodwill refund keeps access');
  assert.equal((await t.api('GET', `/v1/orders/${order.id}`)).body.status, 'partially_refunded');

  const over = await t.api('POST', '/v1/refunds', { payment_id: payment.id, amount: 6001 });
  assert.equal(over.status, 400);
  assert.equal(over.body.error.code, 'refund_exceeds_remaining');

  const rest = await t.api('POST', '/v1/refunds', { payment_id: payment.id });
  assert.equal(rest.status, 200, rest.text);
  assert.equal(rest.body.amount, 6000);
  assert.equal(await wallet('r1'), 100000);
  assert.equal(await access('r1'), false, 'a full refund revokes access');
  assert.equal((await t.api('GET', `/v1/customers/r1/entitlements`)).body.data[0].status, 'revoked');
  assert.equal((await t.api('GET', `/v1/orders/${order.id}`)).body.status, 'refunded');
  const again = await t.api('POST', '/v1/refunds', { payment_id: payment.id });
  assert.equal(again.body.error.code, 'payment_fully_refunded');

  // The creator's share of the sale is fully reversed.
  const after = (await t.api('GET', `/v1/creators/${creator.id}/balance`)).body;
  const amt = (b: any) => b.pending.find((x: any) => x.currency === 'CNY')?.amount ?? 0;
  assert.equal(amt(after), amt(pending) - 6300);
  const refunds = (await t.api('GET', `/v1/refunds?payment_id=${payment.id}`)).body.data;
  assert.equal(refunds.length, 2);
  for (const r of refunds) {
    const e = (await t.api('GET', `/v1/ledger/entries?reference=${r.id}`)).body.data;
    assert.equal(e.length, 1);
    assert.equal(e[0].kind, 'refund');
  }
  const tb = (await t.api('GET', '/v1/ledger/trial_balance')).body;
  for (const c of tb.currencies) assert.equal(c.debits, c.credits);
});

test('12 concurrent refunds of 1,000 on a 9,000 payment → exactly 9', async () => {
  await topUp('r2');
  const { payment } = await buyWithWallet('r2');
  const results = await Promise.all(Array.from({ length: 12 }, () => t.api('POST', '/v1/refunds', { payment_id: payment.id, amount: 1000 })));
  assert.equal(results.filter((r) => r.status === 200).length, 9, results.map((r) => r.status).join(','));
  assert.ok(results.filter((r) => r.status !== 200).every((r) => r.status === 400 && ['refund_exceeds_remaining', 'payment_fully_refunded'].includes(r.body.error.code)));
  const { rows } = await t.svc.pool.query(`SELECT sum(amount) AS s FROM refunds WHERE payment_id = $1 AND status = 'succeeded'`, [payment.id]);
  assert.equal(Number(rows[0].s), 9000);
  assert.equal(await access('r2'), false);
});

test('bad refund requests change nothing', async () => {
  const before = await t.svc.pool.query('SELECT count(*) FROM refunds');
  for (const [body, code] of [
    [{ payment_id: 'pay_missing' }, 'resource_missing'],
    [{ payment_id: 'pay_x', amount: 0 }, 'parameter_invalid'],
    [{ payment_id: 'pay_x', amount: 1.5 }, 'parameter_invalid'],
    [{ payment_id: 'pay_x', amount: -5 }, 'parameter_invalid'],
    [{}, 'parameter_missing'],
  ] as const) {
    const r = await t.api('POST', '/v1/refunds', body);
    assert.equal(r.status, 400, r.text);
    assert.equal(r.body.error.code, code);
  }
  const after = await t.svc.pool.query('SELECT count(*) FROM refunds');
  assert.equal(after.rows[0].count, before.rows[0].count);
});

test('a coin pack whose coins were spent is refused unless forced', async () => {
  const topup = await topUp('r3');
  await buyWithWallet('r3'); // spends 9000 of 100000
  const r = await t.api('POST', '/v1/refunds', { payment_id: topup.id });
  if (r.status === 200) assert.fail('refund should be refused or be a channel refund');
  assert.ok(r.body.error.code === 'coins_already_spent' || r.body.error.code === 'refund_not_supported', r.text);
});

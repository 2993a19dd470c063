/**
 * The stored-value wallet on ledger accounts: a coin pack paid through a channel credits coins;
 * paying with the wallet is atomic; concurrent spends never overdraw it.
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
  creator = (await t.api('POST', '/v1/creators', { name: 'Platform', revenue_share_bps: 0 })).body;
  coins = (await t.api('POST', '/v1/products', {
    title: '600 coins', type: 'coin_pack', creator_id: creator.id, prices: [{ currency: 'CNY', unit_amount: 6000 }],
    wallet_credit: { currency: 'CNY', amount: 6000 },
  })).body;
  const author = (await t.api('POST', '/v1/creators', { name: 'Author', revenue_share_bps: 7000, settlement_delay_days: 0 })).body;
  course = (await t.api('POST', '/v1/products', { title: 'Lesson', type: 'course', creator_id: author.id, prices: [{ currency: 'CNY', unit_amount: 500 }] })).body;
});
after(async () => { await t.stop(); });

const order = async (customer: string, productId: string, platform = 'ios') =>
  (await t.api('POST', '/v1/orders', { customer_id: customer, currency: 'CNY', client_platform: platform, items: [{ product_id: productId }] })).body;
const wallet = async (customer: string) => (await t.api('GET', `/v1/customers/${customer}/wallet`)).body;

test('a coin pack paid with Alipay credits the wallet; the wallet pays an iOS order at once', async () => {
  const o = await order('reader', coins.id, 'web');
  const p = (await t.api('POST', `/v1/orders/${o.id}/payments`, { channel: 'alipay', method: 'qr' })).body;
  await t.raw('POST', '/sandbox/alipay/simulate', JSON.stringify({ channel_reference: p.channel_reference, outcome: 'succeeded' }), { 'content-type': 'application/json' });
  await eventually(async () => (await wallet('reader')).balances.length > 0, { what: 'wallet credited' });
  assert.deepEqual((await wallet('reader')).balances, [{ currency: 'CNY', amount: 6000 }]);
  assert.equal((await t.api('GET', `/v1/customers/reader/access/${coins.id}`)).body.has_access, false, 'coins are not an entitlement');

  const buy = await order('reader', course.id, 'ios');
  const methods = (await t.api('GET', `/v1/orders/${buy.id}/payment_methods`)).body.data.map((m: any) => m.channel);
  assert.ok(methods.includes('wallet'));
  const paid = await t.api('POST', `/v1/orders/${buy.id}/payments`, { channel: 'wallet' });
  assert.equal(paid.status, 200, paid.text);
  assert.equal(paid.body.status, 'succeeded');
  assert.equal((await t.api('GET', `/v1/orders/${buy.id}`)).body.status, 'paid');
  assert.equal((await t.api('GET', `/v1/customers/reader/access/${course.id}`)).body.has_access, true);
  assert.deepEqual((await wallet('reader')).balances, [{ currency: 'CNY', amount: 5500 }]);
  const entries = (await t.api('GET', `/v1/ledger/entries?reference=${paid.body.id}`)).body.data;
  assert.ok(entries[0].postings.some((x: any) => x.account === 'customer_wallet:reader:CNY' && x.direction === 'debit' && x.amount === 500));
});

test('an empty wallet answers 402 and writes nothing', async () => {
  const o = await order('pauper', course.id);
  const r = await t.api('POST', `/v1/orders/${o.id}/payments`, { channel: 'wallet' });
  assert.equal(r.status, 402);
  assert.equal(r.body.error.type, 'payment_error');
  assert.equal(r.body.error.code, 'insufficient_funds');
  const { rows } = await t.svc.pool.query('SELECT count(*) FROM payments WHERE order_id = $1', [o.id]);
  assert.equal(Number(rows[0].count), 0);
  assert.equal((await t.api('GET', `/v1/orders/${o.id}`)).body.status, 'pending');
});

test('50 concurrent wallet spends against a balance covering 12 of them: exactly 12 succeed', async () => {
  // 6000 fen of coins; 500 per lesson → 12 lessons.
  const o = await order('rush', coins.id, 'web');
  const p = (await t.api('POST', `/v1/orders/${o.id}/payments`, { channel: 'alipay', method: 'qr' })).body;
  await t.raw('POST', '/sandbox/alipay/simulate', JSON.stringify({ channel_reference: p.channel_reference, outcome: 'succeeded' }), { 'content-type': 'application/json' });
  await eventually(async () => (await wallet('rush')).balances[0]?.amount === 6000, { what: 'coins' });
  const orders = await Promise.all(Array.from({ length: 50 }, () => order('rush', course.id)));
  const results = await Promise.all(orders.map((x) => t.api('POST', `/v1/orders/${x.id}/payments`, { channel: 'wallet' })));
  assert.equal(results.filter((r) => r.status === 200).length, 12, results.map((r) => r.status).join(','));
  assert.equal(results.filter((r) => r.status === 402).length, 38);
  assert.deepEqual((await wallet('rush')).balances, [{ currency: 'CNY', amount: 0 }]);
  const derived = await t.svc.pool.query(
    `SELECT sum(CASE WHEN p.direction = 'credit' THEN p.amount ELSE -p.amount END) AS b FROM postings p JOIN ledger_accounts a ON a.id = p.account_id WHERE a.code = 'customer_wallet:rush:CNY'`);
  assert.equal(Number(derived.rows[0].b), 0, 'the tracked balance equals the sum of its postings');
});

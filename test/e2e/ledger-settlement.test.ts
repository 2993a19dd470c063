/**
 * The ledger over HTTP: a paid order's split, settlement of matured shares, idempotent runs,
 * payouts, adjustments, trial balance.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { eventually, startTestService, type TestService } from '../support/service.ts';

let t: TestService;

before(async () => { t = await startTestService(); });
after(async () => { await t.stop(); });

async function creatorWithCourse(opts: { delay?: number; share?: number; minPayout?: number } = {}) {
  const creator = (await t.api('POST', '/v1/creators', {
    name: 'C', revenue_share_bps: opts.share ?? 7000,
    ...(opts.delay !== undefined ? { settlement_delay_days: opts.delay } : {}),
    ...(opts.minPayout !== undefined ? { min_payout_amount: opts.minPayout } : {}),
  })).body;
  const product = (await t.api('POST', '/v1/products', { title: 'Course', type: 'course', creator_id: creator.id, prices: [{ currency: 'CNY', unit_amount: 10000 }] })).body;
  return { creator, product };
}

async function buy(productId: string, coupon?: string) {
  const order = (await t.api('POST', '/v1/orders', { customer_id: 'buyer', currency: 'CNY', client_platform: 'web', items: [{ product_id: productId }], ...(coupon ? { coupon_code: coupon } : {}) })).body;
  const payment = (await t.api('POST', `/v1/orders/${order.id}/payments`, { channel: 'alipay', method: 'qr' })).body;
  const sim = await t.raw('POST', '/sandbox/alipay/simulate', JSON.stringify({ channel_reference: payment.channel_reference, outcome: 'succeeded' }), { 'content-type': 'application/json' });
  assert.equal(sim.status, 200, sim.text);
  await eventually(async () => (await t.api('GET', `/v1/orders/${order.id}`)).body.status === 'paid', { what: 'paid' });
  return { order, payment };
}

const balance = async (creatorId: string) => (await t.api('GET', `/v1/creators/${creatorId}/balance`)).body;
const amountOf = (list: { currency: string; amount: number }[], cur = 'CNY') => list.find((x) => x.currency === cur)?.amount ?? 0;

test('9,000 fen Alipay order for a 70% creator leaves 6,262 pending; the entry is in the ledger', async () => {
  await t.api('POST', '/v1/coupons', { code: 'L10', percent_off_bps: 1000 });
  const { creator, product } = await creatorWithCourse({ delay: 0 });
  const { payment } = await buy(product.id, 'L10');
  assert.equal(payment.amount, 9000);
  const b = await balance(creator.id);
  assert.equal(b.object, 'creator_balance');
  assert.equal(amountOf(b.pending), 6262);
  assert.equal(amountOf(b.available), 0);
  const entries = (await t.api('GET', `/v1/ledger/entries?reference=${payment.id}`)).body;
  assert.equal(entries.data.length, 1);
  const postings = Object.fromEntries(entries.data[0].postings.map((p: any) => [p.account, `${p.direction}:${p.amount}`]));
  assert.deepEqual(postings, {
    'channel_clearing:alipay:CNY': 'debit:8946', 'channel_fees:alipay:CNY': 'debit:54',
    [`creator_payable:${creator.id}:pending:CNY`]: 'credit:6262', 'platform_revenue:CNY': 'credit:2738',
  });

  // Settlement: the no-hold creator's share becomes available and is paid out; a second run for
  // the same cut-off changes nothing.
  const { creator: held, product: heldProduct } = await creatorWithCourse(); // default 7-day hold
  await buy(heldProduct.id);
  await new Promise((r) => setTimeout(r, 1100)); // as_of has whole-second precision
  const asOf = Math.floor(Date.now() / 1000);
  const run = await t.api('POST', '/v1/settlements', { as_of: asOf });
  assert.equal(run.status, 200, run.text);
  assert.match(run.body.id, /^stl_/);
  const st = run.body.statements.find((s: any) => s.creator_id === creator.id);
  assert.deepEqual(
    [st.opening_amount, st.sales_amount, st.refunds_amount, st.fees_amount, st.commission_amount, st.closing_amount, st.payout_amount],
    [0, 9000, 0, 54, 2684, 6262, 6262],
  );
  assert.equal(run.body.statements.find((s: any) => s.creator_id === held.id), undefined);
  const after1 = await balance(creator.id);
  assert.equal(amountOf(after1.pending), 0);
  assert.equal(amountOf(after1.available), 0, 'paid out: in transit');
  assert.equal(amountOf((await balance(held.id)).pending), 7000 - 42, 'on the default hold it stays pending');

  const again = await t.api('POST', '/v1/settlements', { as_of: asOf });
  assert.equal(again.body.id, run.body.id);
  const rerun = await t.api('POST', '/v1/settlements', {});
  assert.equal(rerun.status, 200);
  assert.ok(rerun.body.statements.every((s: any) => s.creator_id !== creator.id), 'nothing settles twice');
  const earlier = await t.api('POST', '/v1/settlements', { as_of: asOf - 3600 });
  assert.equal(earlier.status, 400);
  assert.equal(earlier.body.error.code, 'as_of_before_last_run');

  // The payout batch: CSV, then paid.
  const csv = await t.api('GET', `/v1/settlements/${run.body.id}/payouts.csv`);
  assert.equal(csv.status, 200);
  assert.match(csv.text, new RegExp(`^payout_id,creator_id,creator_name,currency,amount_minor,status\\n${st.payout_id},${creator.id},C,CNY,6262,in_transit\\n`));
  const paid = await t.api('POST', `/v1/payouts/${st.payout_id}/paid`);
  assert.equal(paid.body.status, 'paid');
  assert.equal((await t.api('POST', `/v1/payouts/${st.payout_id}/paid`)).body.status, 'paid', 'idempotent');
  assert.equal((await t.api('POST', `/v1/payouts/${st.payout_id}/failed`)).status, 400);

  const tb = (await t.api('GET', '/v1/ledger/trial_balance')).body;
  for (const c of tb.currencies) assert.equal(c.debits, c.credits);
});

test('a minimum payout keeps small balances available; an adjustment settles next run', async () => {
  const { creator, product } = await creatorWithCourse({ delay: 0, minPayout: 100000 });
  await buy(product.id);
  const adj = await t.api('POST', '/v1/ledger/adjustments', { creator_id: creator.id, currency: 'cny', amount: -500, reason: 'chargeback fee' });
  assert.equal(adj.status, 200, adj.text);
  const run = (await t.api('POST', '/v1/settlements', {})).body;
  const st = run.statements.find((s: any) => s.creator_id === creator.id);
  assert.equal(st.adjustments_amount, -500);
  assert.equal(st.closing_amount, 6958 - 500);
  assert.equal(st.payout_amount, 0);
  assert.equal(amountOf((await balance(creator.id)).available), 6458);
  const bad = await t.api('POST', '/v1/ledger/adjustments', { creator_id: creator.id, currency: 'CNY', amount: 0, reason: 'x' });
  assert.equal(bad.status, 400);
  const unknown = await t.api('POST', '/v1/ledger/adjustments', { creator_id: 'cr_nope', currency: 'CNY', amount: 5, reason: 'x' });
  assert.equal(unknown.status, 400);
});

test('ledger entries are immutable in the database', async () => {
  await assert.rejects(t.svc.pool.query(`UPDATE postings SET amount = amount + 1`), /immutable/);
  await assert.rejects(t.svc.pool.query(`DELETE FROM journal_entries`), /immutable/);
  const client = await t.svc.pool.connect();
  try {
    await client.query('BEGIN');
    const acct = await client.query(`SELECT id FROM ledger_accounts LIMIT 1`);
    await client.query(`INSERT INTO journal_entries (id, idempotency_key, content_hash, kind) VALUES ('je_bad', 'bad', 'x', 'test')`);
    await assert.rejects(client.query(`INSERT INTO postings (entry_id, line, account_id, direction, amount, currency) VALUES ('je_bad', 0, $1, 'debit', 5, 'CNY')`, [acct.rows[0].id]), /does not balance/);
  } finally {
    await client.query('ROLLBACK');
    client.release();
  }
});

/**
 * Property test over random sequences of business events on a real PostgreSQL: captures through
 * the real payment path, wallet top-ups and spends, adjustments, settlement runs and payouts.
 * After every sequence: every entry balances, tracked balances equal their postings, each
 * capture's shares + platform + fees = gross, and no split settles twice.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { freshDatabase, type TestDatabase } from '../support/db.ts';
import { inTransaction } from '../../src/store/db.ts';
import { createCreator, createProduct } from '../../src/catalog/catalog.ts';
import { createOrder } from '../../src/orders/orders.ts';
import { applyTradeSnapshot, createPayment, type PaymentContext } from '../../src/payments/payments.ts';
import { runSettlement } from '../../src/settlement/settlement.ts';
import { adjustCreator, settlePayout } from '../../src/settlement/payouts.ts';
import { ApiError } from '../../src/domain/errors.ts';
import { createRefund } from '../../src/refunds/refunds.ts';

let db: TestDatabase;
let ctx: PaymentContext;
const creators: string[] = [];
const products: { id: string; price: number }[] = [];
let coinPack: string;

before(async () => {
  db = await freshDatabase();
  ctx = { db: db.pool, channels: new Map(), publicBaseUrl: 'http://127.0.0.1:1', pollInitialDelayMs: 60_000 };
  for (const [bps, delay] of [[7000, 0], [5000, 0], [9000, 7]] as const) {
    creators.push((await createCreator(db.pool, { name: 'c', revenue_share_bps: bps, settlement_delay_days: delay, min_payout_amount: 500 })).id);
  }
  for (const [i, price] of [999, 10000, 1, 33333].entries()) {
    products.push({ id: (await createProduct(db.pool, { title: `p${i}`, type: 'course', creator_id: creators[i % 3]!, prices: [{ currency: 'CNY', unit_amount: price }] })).id, price });
  }
  coinPack = (await createProduct(db.pool, { title: 'coins', type: 'coin_pack', creator_id: creators[0]!, prices: [{ currency: 'CNY', unit_amount: 5000 }], wallet_credit: { currency: 'CNY', amount: 5000 } })).id;
});
after(async () => { await db.drop(); });

/** A channel payment that succeeded, through the same function notifications and queries use. */
async function paidThroughChannel(customer: string, items: { product_id: string; quantity: number }[], channel: string) {
  const order = await createOrder(db.pool, { customer_id: customer, currency: 'CNY', client_platform: 'web', items }, { orderTtlMs: 600_000 });
  if (order.status === 'paid') return;
  await inTransaction(db.pool, async (tx) => {
    const { rows } = await tx.query(
      `INSERT INTO payments (id, order_id, channel, method, status, amount, currency, channel_reference)
       VALUES ('pay_' || md5(random()::text), $1, $2, 'x', 'requires_action', $3, 'CNY', 'KP' || md5(random()::text)) RETURNING *`,
      [order.id, channel, order.total_amount],
    );
    const p = rows[0];
    const r = await applyTradeSnapshot(tx, p.id, { state: 'succeeded', channelReference: p.channel_reference, amountMinor: BigInt(p.amount), currency: 'CNY' }, 'test');
    assert.equal(r.outcome, 'applied');
  });
}

type Cmd =
  | { t: 'pay'; customer: number; lines: { p: number; q: number }[]; channel: string }
  | { t: 'topup'; customer: number }
  | { t: 'spend'; customer: number; p: number }
  | { t: 'adjust'; creator: number; amount: number }
  | { t: 'refund'; pick: number; fraction: number }
  | { t: 'settle' }
  | { t: 'payout'; paid: boolean };

const cmd: fc.Arbitrary<Cmd> = fc.oneof(
  { weight: 5, arbitrary: fc.record({ t: fc.constant('pay' as const), customer: fc.nat(3), channel: fc.constantFrom('alipay', 'wechatpay', 'stripe', 'apple_iap'),
    lines: fc.array(fc.record({ p: fc.nat(3), q: fc.integer({ min: 1, max: 3 }) }), { minLength: 1, maxLength: 3 }) }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('topup' as const), customer: fc.nat(3) }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('spend' as const), customer: fc.nat(3), p: fc.nat(3) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('adjust' as const), creator: fc.nat(2), amount: fc.integer({ min: -3000, max: 3000 }).filter((x) => x !== 0) }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('refund' as const), pick: fc.nat(1000), fraction: fc.integer({ min: 1, max: 100 }) }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('settle' as const) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('payout' as const), paid: fc.boolean() }) },
);

async function run(c: Cmd) {
  switch (c.t) {
    case 'pay': {
      const items = [...new Map(c.lines.map((l) => [l.p, { product_id: products[l.p]!.id, quantity: l.q }])).values()];
      return paidThroughChannel(`cus${c.customer}`, items, c.channel);
    }
    case 'topup': return paidThroughChannel(`cus${c.customer}`, [{ product_id: coinPack, quantity: 1 }], 'alipay');
    case 'spend': {
      const order = await createOrder(db.pool, { customer_id: `cus${c.customer}`, currency: 'CNY', client_platform: 'ios', items: [{ product_id: products[c.p]!.id }] }, { orderTtlMs: 600_000 });
      try { await createPayment(ctx, order.id, { channel: 'wallet' }); } catch (err) {
        if (!(err instanceof ApiError && err.code === 'insufficient_funds')) throw err;
      }
      return;
    }
    case 'refund': {
      // A wallet payment (refunded into the wallet: no channel needed), partly or fully.
      const { rows } = await db.pool.query(
        `SELECT p.id, p.amount - coalesce((SELECT sum(amount) FROM refunds r WHERE r.payment_id = p.id AND r.status <> 'failed'), 0) AS left
           FROM payments p WHERE p.channel = 'wallet' AND p.status = 'succeeded' ORDER BY p.id`);
      const open = rows.filter((r) => Number(r.left) > 0);
      if (open.length === 0) return;
      const target = open[c.pick % open.length];
      const amount = Math.max(1, Math.floor((Number(target.left) * c.fraction) / 100));
      await createRefund(ctx, { payment_id: target.id, amount });
      return;
    }
    case 'adjust': return void (await adjustCreator(db.pool, { creator_id: creators[c.creator]!, currency: 'CNY', amount: c.amount, reason: 'prop' }));
    case 'settle': await new Promise((r) => setTimeout(r, 5)); return void (await runSettlement(db.pool, { asOf: new Date() }));
    case 'payout': {
      const { rows } = await db.pool.query(`SELECT id FROM payouts WHERE status = 'in_transit' ORDER BY random() LIMIT 1`);
      if (rows[0]) await settlePayout(db.pool, rows[0].id, c.paid ? 'paid' : 'failed');
    }
  }
}

async function checkInvariants() {
  const q = async (sql: string) => (await db.pool.query(sql)).rows;
  assert.deepEqual(await q(`SELECT entry_id, currency FROM postings GROUP BY 1, 2
                             HAVING sum(CASE WHEN direction = 'debit' THEN amount ELSE -amount END) <> 0`), [], 'every entry balances');
  assert.deepEqual(await q(`SELECT b.account_id FROM ledger_balances b JOIN ledger_accounts a ON a.id = b.account_id
                             LEFT JOIN postings p ON p.account_id = a.id GROUP BY b.account_id, b.balance
                             HAVING b.balance <> coalesce(sum(CASE WHEN p.direction = 'credit' THEN p.amount ELSE -p.amount END), 0)`), [],
    'tracked balances equal the sum of their postings');
  assert.deepEqual(await q(`SELECT a.code FROM ledger_balances b JOIN ledger_accounts a ON a.id = b.account_id WHERE NOT a.may_go_negative AND b.balance < 0`), [], 'no wallet below zero');
  // Refunds never exceed their payment.
  assert.deepEqual(await q(`SELECT p.id FROM payments p JOIN refunds r ON r.payment_id = p.id AND r.status = 'succeeded'
                             GROUP BY p.id, p.amount HAVING sum(r.amount) > p.amount`), [], 'refunds within the payment');
  // A fully refunded payment's capture is fully reversed for its creators.
  assert.deepEqual(await q(`
    SELECT p.id FROM payments p JOIN journal_entries e ON e.idempotency_key = 'capture:' || p.id
     WHERE (SELECT coalesce(sum(amount), 0) FROM refunds r WHERE r.payment_id = p.id AND r.status = 'succeeded') = p.amount
       AND (SELECT coalesce(sum(share_amount), 0) FROM creator_splits s
             WHERE s.entry_id = e.id OR s.entry_id IN (SELECT j.id FROM journal_entries j JOIN refunds r ON r.id = j.reference WHERE r.payment_id = p.id)) <> 0`), [],
    'a full refund takes back every share');
  // Per capture: creator shares + platform + wallet credit + promo = gross, and gross = debits.
  assert.deepEqual(await q(`
    SELECT e.id FROM journal_entries e JOIN postings p ON p.entry_id = e.id JOIN ledger_accounts a ON a.id = p.account_id
     WHERE e.kind = 'capture' GROUP BY e.id, e.reference
    HAVING sum(p.amount) FILTER (WHERE p.direction = 'credit') <> (SELECT amount FROM payments WHERE id = e.reference)
        + coalesce(sum(p.amount) FILTER (WHERE a.code LIKE 'promotions:%'), 0)`), [], 'shares + platform + fees = gross');
  // No split settles twice: what settlement moved = the splits matured by the last cut-off; the
  // rest is still pending.
  assert.deepEqual(await q(`
    WITH last AS (SELECT max(as_of) AS as_of FROM settlements),
    moved AS (SELECT a.code, sum(CASE WHEN p.direction = 'credit' THEN p.amount ELSE -p.amount END) AS amt
                FROM postings p JOIN journal_entries e ON e.id = p.entry_id AND e.kind = 'settlement'
                JOIN ledger_accounts a ON a.id = p.account_id AND a.code LIKE '%:available:%' GROUP BY a.code),
    matured AS (SELECT 'creator_payable:' || creator_id || ':available:' || currency AS code, sum(share_amount) AS amt
                  FROM creator_splits, last WHERE matures_at <= last.as_of GROUP BY 1)
    SELECT coalesce(m.code, x.code) FROM moved m FULL JOIN matured x ON x.code = m.code
     WHERE coalesce(m.amt, 0) <> coalesce(x.amt, 0)`), [], 'settled exactly the matured splits, once');
  assert.deepEqual(await q(`
    WITH last AS (SELECT max(as_of) AS as_of FROM settlements),
    pend AS (SELECT a.code, sum(CASE WHEN p.direction = 'credit' THEN p.amount ELSE -p.amount END) AS amt
               FROM postings p JOIN ledger_accounts a ON a.id = p.account_id WHERE a.code LIKE '%:pending:%' GROUP BY a.code),
    open AS (SELECT 'creator_payable:' || creator_id || ':pending:' || currency AS code, sum(share_amount) AS amt
               FROM creator_splits, last WHERE last.as_of IS NULL OR matures_at > last.as_of GROUP BY 1)
    SELECT coalesce(p.code, o.code) FROM pend p FULL JOIN open o ON o.code = p.code WHERE coalesce(p.amt, 0) <> coalesce(o.amt, 0)`), [],
    'pending = splits not yet settled');
  const tb = await q(`SELECT currency, sum(amount) FILTER (WHERE direction = 'debit') AS d, sum(amount) FILTER (WHERE direction = 'credit') AS c FROM postings GROUP BY 1`);
  for (const r of tb) assert.equal(r.d, r.c, 'trial balance');
}

test('property: random sequences keep the books exact', async () => {
  await fc.assert(fc.asyncProperty(fc.array(cmd, { minLength: 1, maxLength: 12 }), async (cmds) => {
    for (const c of cmds) await run(c);
    await checkInvariants();
  }), { numRuns: 25 });
  const { rows } = await db.pool.query(`SELECT kind, count(*) FROM journal_entries GROUP BY kind ORDER BY kind`);
  const kinds = rows.map((r) => r.kind);
  for (const k of ['capture', 'refund', 'settlement', 'adjustment']) assert.ok(kinds.includes(k), `exercised ${k}: ${JSON.stringify(rows)}`);
});

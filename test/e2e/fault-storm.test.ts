/**
 * A fault storm: ≥ 200 orders spread over every channel and platform pair, with 30% of the
 * sandboxes' notifications lost, 30% duplicated, and the rest delayed and reordered. Every order
 * must end paid, with exactly one entitlement and one capture entry, and no payment succeeding
 * twice. Lost notifications are healed by active query (or, for Apple, the app's confirm).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { eventually, startTestService, type TestService } from '../support/service.ts';
import { DRIVERS, simulate } from '../support/drivers.ts';

const ORDERS = Number(process.env.STORM_ORDERS ?? 216);
let t: TestService;
let product: any;
const storeIds = { apple_iap: 'com.knowpay.sandbox.course1', google_play: 'course_1' };

before(async () => {
  t = await startTestService({ pollInitialDelayMs: 400, pollMaxDelayMs: 1500, workerConcurrency: 8 });
  const creator = (await t.api('POST', '/v1/creators', { name: 'Storm', revenue_share_bps: 7000 })).body;
  product = (await t.api('POST', '/v1/products', {
    title: 'Course', type: 'course', creator_id: creator.id, store_product_ids: storeIds,
    prices: [{ currency: 'CNY', unit_amount: 10000 }, { currency: 'USD', unit_amount: 1500 }, { currency: 'EUR', unit_amount: 1400 }, { currency: 'JPY', unit_amount: 2000 }],
  })).body;
});
after(async () => { await t.raw('DELETE', '/sandbox/faults', undefined); await t.stop(); });

test(`fault storm: ${ORDERS} orders over ${DRIVERS.length} channel/method pairs end paid exactly once`, async () => {
  const storm = await t.raw('POST', '/sandbox/faults', JSON.stringify({ drop_rate: 0.3, duplicate_rate: 0.3, delay_ms: 300, reorder: true }), { 'content-type': 'application/json' });
  assert.ok(storm.status < 300, storm.text);
  const started = Date.now();
  const jobs = Array.from({ length: ORDERS }, (_, i) => ({ i, d: DRIVERS[i % DRIVERS.length]! }));
  const orders: { id: string; channel: string }[] = [];
  const BATCH = 12;
  for (let k = 0; k < jobs.length; k += BATCH) {
    await Promise.all(jobs.slice(k, k + BATCH).map(async ({ i, d }) => {
      const order = (await t.api('POST', '/v1/orders', { customer_id: `storm_${i}`, currency: d.currency, client_platform: d.platform, items: [{ product_id: product.id }] })).body;
      const pay = await t.api('POST', `/v1/orders/${order.id}/payments`, { channel: d.channel, method: d.method, ...(d.payer ? { payer: d.payer } : {}) });
      assert.equal(pay.status, 200, pay.text);
      await d.open(t, pay.body, storeIds);
      const sim = await simulate(t, d, pay.body, storeIds);
      assert.equal(sim.status, 200, JSON.stringify(sim.body));
      const proof = d.confirmPayload?.(sim.body);
      // The app posts its proof of purchase (Apple): half of them at once, half later.
      if (proof && i % 2 === 0) assert.equal((await t.api('POST', `/v1/payments/${pay.body.id}/confirm`, proof)).status, 200);
      else if (proof) setTimeout(() => { t.api('POST', `/v1/payments/${pay.body.id}/confirm`, proof).catch(() => {}); }, 2000);
      orders.push({ id: order.id, channel: d.channel });
    }));
  }
  await eventually(async () => {
    const { rows } = await t.svc.pool.query(`SELECT count(*) FROM orders WHERE status = 'paid' AND id = ANY($1)`, [orders.map((o) => o.id)]);
    return Number(rows[0].count) === ORDERS;
  }, { what: 'every order paid', timeoutMs: 120_000, intervalMs: 250 });
  const seconds = (Date.now() - started) / 1000;

  const ids = orders.map((o) => o.id);
  const q = async (sql: string) => (await t.svc.pool.query(sql, [ids])).rows;
  assert.deepEqual(await q(`SELECT order_id FROM order_transitions WHERE order_id = ANY($1) AND to_status = 'paid' GROUP BY 1 HAVING count(*) <> 1`), []);
  assert.deepEqual(await q(`SELECT order_id FROM entitlement_grants WHERE order_id = ANY($1) GROUP BY 1 HAVING count(*) <> 1`), []);
  assert.equal((await q(`SELECT count(DISTINCT order_id) AS n FROM entitlement_grants WHERE order_id = ANY($1)`))[0].n, String(ORDERS));
  assert.deepEqual(await q(`SELECT payment_id FROM payment_transitions t JOIN payments p ON p.id = t.payment_id
                             WHERE p.order_id = ANY($1) AND t.to_status = 'succeeded' GROUP BY 1 HAVING count(*) <> 1`), [], 'no payment succeeded twice');
  assert.deepEqual(await q(`SELECT id FROM payments WHERE order_id = ANY($1) AND needs_refund`), [], 'no order was paid twice');
  assert.deepEqual(await q(`SELECT reference FROM journal_entries e JOIN payments p ON p.id = e.reference WHERE p.order_id = ANY($1)
                             GROUP BY 1 HAVING count(*) <> 1`), [], 'one capture entry per payment');
  const how = await q(`SELECT split_part(t.reason, ':', 1) AS source, count(*) AS n FROM payment_transitions t JOIN payments p ON p.id = t.payment_id
                        WHERE p.order_id = ANY($1) AND t.to_status = 'succeeded' GROUP BY 1 ORDER BY 1`);
  const notes = await q(`SELECT n.outcome, count(*) AS n FROM channel_notifications n JOIN payments p ON p.channel_reference = n.channel_reference
                          WHERE p.order_id = ANY($1) GROUP BY 1 ORDER BY 1`);
  const sent = await t.svc.pool.query(`SELECT status, count(*) AS n FROM sandbox_notifications GROUP BY 1 ORDER BY 1`);
  console.log(`# storm: ${ORDERS} orders paid in ${seconds.toFixed(1)} s; paid by ${JSON.stringify(how)}; notifications received ${JSON.stringify(notes)}; sandbox notifications ${JSON.stringify(sent.rows)}`);
  assert.ok(how.some((r: any) => r.source === 'query'), 'some were healed by active query');
  assert.ok(notes.some((r: any) => r.outcome === 'duplicate'), 'duplicates arrived');
});

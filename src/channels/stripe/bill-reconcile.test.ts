/**
 * The sandbox's Stripe bill reconciles as matched: orders paid and refunded through the service,
 * the day's balance transactions downloaded by the connector, read by readStripeBill and
 * classified by reconciliation — no exception (the sandbox's fee is the fee Knowpay estimates).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { eventually, seedCourse, startTestService, type TestService } from '../../../test/support/service.ts';
import { getSetting } from '../../store/settings.ts';
import { reconcileFromChannel } from '../../reconciliation/reconcile.ts';
import { createStripeConnector } from './connector.ts';
import { readStripeBill } from './bill.ts';
import type { StripeSandboxKeys } from './sandbox.ts';

let t: TestService;
let product: any;
const json = { 'content-type': 'application/json' };
before(async () => { t = await startTestService({}); ({ product } = await seedCourse(t)); });
after(async () => { await t.stop(); });

async function paid(customer: string) {
  const o = (await t.api('POST', '/v1/orders', { customer_id: customer, currency: 'USD', client_platform: 'web', items: [{ product_id: product.id }] })).body;
  const p = (await t.api('POST', `/v1/orders/${o.id}/payments`, { channel: 'stripe', method: 'card' })).body;
  const sim = await t.raw('POST', '/sandbox/stripe/simulate', JSON.stringify({ channel_reference: p.channel_reference, outcome: 'succeeded' }), json);
  assert.equal(sim.status, 200, sim.text);
  await eventually(async () => (await t.api('GET', `/v1/orders/${o.id}`)).body.status === 'paid', { what: 'paid' });
  return (await t.api('GET', `/v1/payments/${p.id}`)).body;
}

test('a day of Stripe in the sandbox: paid orders and a refund reconcile as matched', async () => {
  const pays = await Promise.all([paid('a'), paid('b'), paid('c')]);
  const r = await t.api('POST', '/v1/refunds', { payment_id: pays[0].id, amount: 500 });
  assert.equal(r.status, 200, r.text);
  await eventually(async () => (await t.api('GET', `/v1/refunds/${r.body.id}`)).body.status === 'succeeded', { what: 'refund', timeoutMs: 20_000 });
  const keys = (await getSetting<StripeSandboxKeys>(t.svc.pool, 'sandbox.stripe.keys'))!;
  const connector = createStripeConnector({ secretKey: keys.secretKey, webhookSecret: keys.webhookSecret, accountId: keys.accountId, apiBase: `${t.url}/sandbox/stripe` });
  const recon = await reconcileFromChannel({ db: t.svc.pool, channels: new Map([['stripe', connector]]) },
    { channel: 'stripe', billDate: new Date().toISOString().slice(0, 10), reader: readStripeBill });
  assert.equal(recon.status, 'completed');
  const s = recon.summary as Record<string, number>;
  assert.equal(s['lines'], 4, JSON.stringify(s));
  assert.equal(s['matched'], 4, JSON.stringify(s));
  for (const k of ['amount_mismatch', 'fee_mismatch', 'status_mismatch', 'missing_in_ledger', 'missing_in_channel']) assert.equal(s[k], 0, `${k}: ${JSON.stringify(s)}`);
});

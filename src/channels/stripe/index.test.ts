/**
 * The Stripe channel module: real credentials from the environment, else the sandbox with keys
 * generated once, mounted at /sandbox/stripe, delivering to /v1/notify/stripe.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import Fastify from 'fastify';
import formbody from '@fastify/formbody';
import { freshDatabase, type TestDatabase } from '../../../test/support/db.ts';
import type { ChannelAuditEntry, ChannelDeps } from '../module.ts';
import type { ChannelConnector, VerifyResult } from '../types.ts';
import { waitForSandboxNotifications } from '../sandbox/dispatcher.ts';
import { stripeModule } from './index.ts';
import { freePort } from '../../store/embedded.ts';

let db: TestDatabase;
before(async () => {
  db = await freshDatabase();
});
after(async () => {
  await db.drop();
});

function deps(publicBaseUrl: string, env: NodeJS.ProcessEnv, audits: ChannelAuditEntry[] = []): ChannelDeps {
  return { pool: db.pool, publicBaseUrl, sandboxTimeScale: 0.001, audit: (e) => audits.push(e), env };
}

test('real credentials build a connector for api.stripe.com and no sandbox', async () => {
  const instance = await stripeModule.create(deps('http://127.0.0.1:1', {
    STRIPE_SECRET_KEY: 'sk_live_51realkey', STRIPE_WEBHOOK_SECRET: 'whsec_real', STRIPE_ACCOUNT_ID: 'acct_1Real',
  }));
  assert.equal(instance.connector.channel, 'stripe');
  assert.equal(instance.connector.appId, 'acct_1Real');
  assert.equal(instance.mountSandbox, undefined);
  const { rowCount } = await db.pool.query(`SELECT 1 FROM settings WHERE key = 'sandbox.stripe.keys'`);
  assert.equal(rowCount, 0, 'no sandbox keys were generated');
  await assert.rejects(stripeModule.create(deps('http://127.0.0.1:1', { STRIPE_SECRET_KEY: 'not-a-key', STRIPE_WEBHOOK_SECRET: 'whsec_x' })), /sk_/);
});

test('STRIPE_SANDBOX_REFUND_SETTLE_MS: a number of milliseconds or off; anything else is refused at start', async () => {
  for (const value of ['soon', '-5', '1.5', '30s']) {
    await assert.rejects(stripeModule.create(deps('http://127.0.0.1:1', { STRIPE_SANDBOX_REFUND_SETTLE_MS: value })), /STRIPE_SANDBOX_REFUND_SETTLE_MS/, value);
  }
  for (const value of ['off', 'OFF', '0', '60000', '']) {
    const instance = await stripeModule.create(deps('http://127.0.0.1:1', { STRIPE_SANDBOX_REFUND_SETTLE_MS: value }));
    assert.ok(instance.mountSandbox, value);
  }
});

test('without both secrets: the sandbox, keys generated once, webhooks to /v1/notify/stripe verified by the module\'s connector', async () => {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const audits: ChannelAuditEntry[] = [];
  const half = { STRIPE_SECRET_KEY: 'sk_live_51onlyhalf' }; // a lone key is not a configuration
  const first = await stripeModule.create(deps(base, half, audits));
  const second = await stripeModule.create(deps(base, {}));
  assert.ok(first.mountSandbox && second.mountSandbox);
  const { rows } = await db.pool.query<{ value: { secretKey: string; webhookSecret: string; accountId: string } }>(`SELECT value FROM settings WHERE key = 'sandbox.stripe.keys'`);
  assert.equal(rows.length, 1);
  const keys = rows[0]!.value;
  assert.match(keys.secretKey, /^sk_test_51[A-Za-z0-9]{99}$/);
  assert.match(keys.webhookSecret, /^whsec_[A-Za-z0-9]{32}$/);
  assert.equal(first.connector.appId, keys.accountId);
  assert.equal(second.connector.appId, keys.accountId, 'the same stored keys');

  const outcomes: VerifyResult[] = [];
  const connector: ChannelConnector = first.connector;
  const app = Fastify();
  await app.register(formbody);
  await first.mountSandbox!(app);
  await app.register(async (r) => {
    r.removeAllContentTypeParsers();
    r.addContentTypeParser('*', { parseAs: 'buffer' }, (_q, body, done) => done(null, body));
    r.post('/v1/notify/stripe', async (req, reply) => {
      const verified = await connector.verifyNotification({ headers: req.headers, rawBody: req.body as Buffer, contentType: req.headers['content-type'] }, async () => 'EUR');
      outcomes.push(verified);
      const ack = verified.ok ? connector.ackSuccess() : connector.ackFailure(verified.reason);
      return reply.code(ack.statusCode).type(ack.contentType).send(ack.body);
    });
  });
  await app.listen({ host: '127.0.0.1', port });
  try {
    const ref = `KPmodule${process.pid}`;
    const created = await second.connector.createPayment({
      channelReference: ref, paymentId: 'pay_m', orderId: 'ord_m', customerId: 'cus_m', items: [], method: 'card', amountMinor: 2500n,
      currency: 'EUR', subject: 'Column', notifyUrl: `${base}/v1/notify/stripe`, expiresAt: new Date(Date.now() + 60_000),
    });
    assert.equal(created.action.type, 'client_secret');
    const sim = await fetch(`${base}/sandbox/stripe/simulate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ channel_reference: ref, outcome: 'succeeded' }) });
    assert.equal(sim.status, 200);
    const deadline = Date.now() + 5000;
    while (outcomes.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.equal(outcomes.length, 1, 'only the subscribed event type is delivered');
    const v = outcomes[0]!;
    assert.ok(v.ok && v.notification.kind === 'payment', !v.ok ? v.reason : v.notification.kind);
    assert.deepEqual(v.notification.trade, { state: 'succeeded', channelReference: ref, channelTransactionId: created.channelTransactionId, amountMinor: 2500n, currency: 'EUR', rawStatus: 'succeeded' });
    // The receiver answers before the sandbox records the attempt: wait for the record.
    const delivered = await waitForSandboxNotifications(db.pool, { channel: 'stripe', channelReference: ref, timeoutMs: 3000 });
    assert.deepEqual(delivered.map((d) => [d.status, d.lastStatusCode, d.attempts]), [['delivered', 200, 1]]);
    assert.equal((await first.connector.queryPayment({ channelReference: ref, currency: 'EUR' })).state, 'succeeded');
    assert.ok(audits.some((a) => a.operation === 'query_payment'), "the module's audit hook is used");

    // A refund through the module's wiring: pending (the buyer's card says so), finished by the
    // sandbox itself after 30 s × 0.001, both refund events delivered to /v1/notify/stripe.
    const rref = `KPmodrefund${process.pid}`;
    const paidRefund = await second.connector.createPayment({
      channelReference: rref, paymentId: 'pay_r', orderId: 'ord_r', customerId: 'cus_r', items: [], method: 'card', amountMinor: 4000n,
      currency: 'EUR', subject: 'Column', notifyUrl: `${base}/v1/notify/stripe`, expiresAt: new Date(Date.now() + 60_000),
    });
    const paidSim = await fetch(`${base}/sandbox/stripe/simulate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ channel_reference: rref, outcome: 'succeeded', payment_method: 'pm_card_pendingRefund' }) });
    assert.equal(paidSim.status, 200);
    const refund = await first.connector.refundPayment!({
      channelReference: rref, channelTransactionId: paidRefund.channelTransactionId!, refundReference: `RF${rref}`, amountMinor: 1500n,
      paymentAmountMinor: 4000n, currency: 'EUR', notifyUrl: `${base}/v1/notify/stripe`,
    });
    assert.equal(refund.state, 'pending');
    const refundDeadline = Date.now() + 5000;
    const refundOutcomes = () => outcomes.flatMap((o) => (o.ok && o.notification.kind === 'refund' ? [o.notification.refund] : []));
    while (!refundOutcomes().some((r) => r.state === 'succeeded') && Date.now() < refundDeadline) await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(refundOutcomes().map((r) => r.state).sort(), ['pending', 'succeeded']);
    for (const r of refundOutcomes()) assert.deepEqual([r.refundReference, r.channelReference, r.channelRefundId, r.amountMinor, r.currency], [`RF${rref}`, rref, refund.channelRefundId, 1500n, 'EUR']);
    assert.ok(outcomes.every((o) => o.ok), 'every delivery verified');
  } finally {
    await app.close();
  }
});

/**
 * The channel module: sandbox keys generated once and kept; the sandbox connector reaches the
 * mounted sandbox through publicBaseUrl; complete environment credentials build a real connector.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import Fastify from 'fastify';
import { freshDatabase, type TestDatabase } from '../../../test/support/db.ts';
import { getSetting } from '../../store/settings.ts';
import type { ChannelAuditEntry, ChannelDeps } from '../module.ts';
import { refundSettleMsFromEnv, wechatpayModule, WECHATPAY_SANDBOX_MCHID } from './index.ts';
import { generateWechatpaySandboxKeys, type WechatpaySandboxKeys } from './sandbox.ts';
import { freePort } from '../../store/embedded.ts';

let db: TestDatabase;
before(async () => {
  db = await freshDatabase();
});
after(async () => {
  await db.drop();
});

function deps(port: number, env: NodeJS.ProcessEnv = {}, audits: ChannelAuditEntry[] = []): ChannelDeps {
  return { pool: db.pool, publicBaseUrl: `http://127.0.0.1:${port}`, sandboxTimeScale: 0.001, audit: (e) => audits.push(e), env };
}

test('without credentials: sandbox keys are generated once and the connector pays through the mounted sandbox', async () => {
  const port = await freePort();
  const audits: ChannelAuditEntry[] = [];
  const first = await wechatpayModule.create(deps(port, {}, audits));
  const stored = await getSetting<WechatpaySandboxKeys>(db.pool, 'sandbox.wechatpay.keys');
  assert.ok(stored);
  assert.match(stored.platformPublicKeyId, /^PUB_KEY_ID_\d{34}$/);
  assert.match(stored.merchantSerial, /^[0-9A-F]{40}$/);
  assert.equal(Buffer.byteLength(stored.apiV3Key), 32);
  const second = await wechatpayModule.create(deps(port));
  assert.deepEqual(await getSetting(db.pool, 'sandbox.wechatpay.keys'), stored, 'the same keys on the next start');
  assert.equal(first.connector.appId, WECHATPAY_SANDBOX_MCHID);
  assert.ok(first.mountSandbox && second.mountSandbox);

  const app = Fastify();
  await first.mountSandbox!(app);
  await app.listen({ host: '127.0.0.1', port });
  try {
    const ref = `KPMOD${process.pid}`;
    const created = await second.connector.createPayment({
      channelReference: ref, paymentId: 'pay_1', orderId: 'ord_1', customerId: 'cr_1', items: [], method: 'native', amountMinor: 100n, currency: 'CNY',
      subject: '会员', notifyUrl: `http://127.0.0.1:${port}/v1/notify/wechatpay`, expiresAt: new Date(Date.now() + 600_000),
    });
    assert.equal(created.action.type, 'qr_code');
    const sim = await fetch(`http://127.0.0.1:${port}/sandbox/wechatpay/simulate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ channel_reference: ref, outcome: 'succeeded' }) });
    assert.equal(sim.status, 200);
    assert.equal((await first.connector.queryPayment({ channelReference: ref, currency: 'CNY' })).state, 'succeeded');
    assert.deepEqual(audits.map((a) => a.operation), ['query_payment']);
  } finally {
    await app.close();
  }
});

test('with complete credentials: a real connector, no sandbox; incomplete credentials fall back to the sandbox', async () => {
  const k = await generateWechatpaySandboxKeys();
  const env = {
    WECHATPAY_MCHID: '1230000109', WECHATPAY_APPID: 'wxd678efh567hg6787', WECHATPAY_MERCHANT_SERIAL: k.merchantSerial,
    WECHATPAY_PRIVATE_KEY: k.merchantPrivateKey, WECHATPAY_PLATFORM_KEY_ID: k.platformPublicKeyId, WECHATPAY_PLATFORM_KEY: k.platformPublicKey,
    WECHATPAY_APIV3_KEY: k.apiV3Key,
  };
  const real = await wechatpayModule.create(deps(9, env));
  assert.equal(real.mountSandbox, undefined);
  assert.equal(real.connector.appId, '1230000109');
  const viaJson = await wechatpayModule.create(deps(9, { ...env, WECHATPAY_PLATFORM_KEY_ID: undefined, WECHATPAY_PLATFORM_KEY: undefined, WECHATPAY_PLATFORM_KEYS: JSON.stringify({ [k.platformPublicKeyId]: k.platformPublicKey }) }));
  assert.equal(viaJson.mountSandbox, undefined);
  const { WECHATPAY_APIV3_KEY: _missing, ...incomplete } = env;
  const sandbox = await wechatpayModule.create(deps(9, incomplete));
  assert.ok(sandbox.mountSandbox);
  assert.equal(sandbox.connector.appId, WECHATPAY_SANDBOX_MCHID);
  await assert.rejects(wechatpayModule.create(deps(9, { ...env, WECHATPAY_APIV3_KEY: 'short' })), /apiV3Key/);
  await assert.rejects(wechatpayModule.create(deps(9, { ...env, WECHATPAY_PLATFORM_KEYS: '[1]' })), /JSON object/);
});

test('WECHATPAY_SANDBOX_REFUND_SETTLE_MS: a number of ms, "never" (refunds wait for /refunds/simulate), nothing else', async () => {
  assert.equal(refundSettleMsFromEnv({}), undefined);
  assert.equal(refundSettleMsFromEnv({ WECHATPAY_SANDBOX_REFUND_SETTLE_MS: ' ' }), undefined);
  assert.equal(refundSettleMsFromEnv({ WECHATPAY_SANDBOX_REFUND_SETTLE_MS: '5000' }), 5000);
  assert.equal(refundSettleMsFromEnv({ WECHATPAY_SANDBOX_REFUND_SETTLE_MS: 'Never' }), null);
  for (const bad of ['-1', '1.5', '1e3', 'soon']) assert.throws(() => refundSettleMsFromEnv({ WECHATPAY_SANDBOX_REFUND_SETTLE_MS: bad }), /WECHATPAY_SANDBOX_REFUND_SETTLE_MS/, bad);

  const port = await freePort();
  const instance = await wechatpayModule.create(deps(port, { WECHATPAY_SANDBOX_REFUND_SETTLE_MS: 'never' }));
  const app = Fastify();
  await instance.mountSandbox!(app);
  await app.listen({ host: '127.0.0.1', port });
  try {
    const ref = `KPMODRF${process.pid}`;
    const c = instance.connector;
    await c.createPayment({
      channelReference: ref, paymentId: 'pay_2', orderId: 'ord_2', customerId: 'cr_1', items: [], method: 'native', amountMinor: 300n, currency: 'CNY',
      subject: '会员', notifyUrl: `http://127.0.0.1:${port}/v1/notify/wechatpay`, expiresAt: new Date(Date.now() + 600_000),
    });
    const post = (path: string, body: unknown) => fetch(`http://127.0.0.1:${port}/sandbox/wechatpay${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    assert.equal((await post('/simulate', { channel_reference: ref, outcome: 'succeeded' })).status, 200);
    const rf = `RF${ref}`;
    const refund = await c.refundPayment!({ channelReference: ref, refundReference: rf, amountMinor: 300n, paymentAmountMinor: 300n, currency: 'CNY', notifyUrl: `http://127.0.0.1:${port}/v1/notify/wechatpay` });
    assert.equal(refund.state, 'pending');
    await new Promise((r) => setTimeout(r, 150)); // the default (60 s × 0.001) would have finished it
    assert.equal((await c.queryRefund!({ channelReference: ref, refundReference: rf, currency: 'CNY' })).state, 'pending');
    assert.equal((await post('/refunds/simulate', { refund_reference: rf, outcome: 'succeeded' })).status, 200);
    assert.equal((await c.queryRefund!({ channelReference: ref, refundReference: rf, currency: 'CNY' })).state, 'succeeded');
  } finally {
    await app.close();
  }
});

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { seedCourse, startTestService, type TestService } from '../support/service.ts';
import { resetChannelStatsCache } from '../../src/channels/health.ts';

let t: TestService;
let product: any;

before(async () => {
  t = await startTestService({ runWorker: false });
  ({ product } = await seedCourse(t));
});
after(async () => { await t.stop(); });

async function counts() {
  const { rows } = await t.svc.pool.query(
    `SELECT (SELECT count(*) FROM orders) AS orders, (SELECT count(*) FROM products) AS products,
            (SELECT count(*) FROM coupons) AS coupons, (SELECT count(*) FROM creators) AS creators,
            (SELECT count(*) FROM payments) AS payments`);
  return rows[0];
}

const order = (extra: Record<string, unknown> = {}) => ({
  customer_id: 'cus_1', currency: 'cny', client_platform: 'web', items: [{ product_id: product.id }], ...extra,
});

describe('auth and service endpoints', () => {
  test('healthz, openapi, docs answer without a key', async () => {
    assert.deepEqual((await t.raw('GET', '/healthz', undefined)).body, { status: 'ok' });
    const spec = await t.raw('GET', '/openapi.json', undefined);
    assert.equal(spec.status, 200);
    assert.ok(spec.body.paths['/v1/orders']);
    assert.equal((await t.raw('GET', '/docs/', undefined)).status, 200);
    const metrics = await t.raw('GET', '/metrics', undefined);
    assert.equal(metrics.status, 200);
    assert.match(metrics.text, /knowpay_http_request_duration_seconds_bucket/);
  });
  test('missing or wrong key → 401 in the error shape', async () => {
    const none = await t.raw('GET', `/v1/products/${product.id}`, undefined);
    assert.equal(none.status, 401);
    assert.equal(none.body.error.type, 'authentication_error');
    const wrong = await t.raw('GET', `/v1/products/${product.id}`, undefined, { authorization: 'Bearer sk_nope' });
    assert.equal(wrong.status, 401);
    assert.equal(wrong.body.error.code, 'api_key_invalid');
  });
  test('unknown route → 404 in the error shape', async () => {
    const r = await t.api('GET', '/v1/nothing');
    assert.equal(r.status, 404);
    assert.equal(r.body.error.type, 'invalid_request_error');
  });
});

describe('orders and pricing', () => {
  test('¥100 with a 10% coupon → 9000 fen, uppercase currency, prefixed ids', async () => {
    await t.api('POST', '/v1/coupons', { code: 'TENOFF', percent_off_bps: 1000 });
    const r = await t.api('POST', '/v1/orders', order({ coupon_code: 'TENOFF' }));
    assert.equal(r.status, 200, r.text);
    assert.match(r.body.id, /^ord_/);
    assert.equal(r.body.object, 'order');
    assert.equal(r.body.status, 'pending');
    assert.equal(r.body.currency, 'CNY');
    assert.equal(r.body.subtotal_amount, 10000);
    assert.equal(r.body.discount_amount, 1000);
    assert.equal(r.body.total_amount, 9000);
    assert.ok(r.body.expires_at > Date.now() / 1000);
    const got = await t.api('GET', `/v1/orders/${r.body.id}`);
    assert.deepEqual(got.body, r.body);
  });

  test('a zero-amount order completes without any channel and grants access', async () => {
    await t.api('POST', '/v1/coupons', { code: 'FREE', percent_off_bps: 10000 });
    const r = await t.api('POST', '/v1/orders', order({ customer_id: 'cus_free', coupon_code: 'FREE' }));
    assert.equal(r.body.status, 'paid');
    assert.equal(r.body.total_amount, 0);
    const access = await t.api('GET', `/v1/customers/cus_free/access/${product.id}`);
    assert.equal(access.body.has_access, true);
    assert.equal(access.body.expires_at, null);
  });

  test('fixed-amount coupon in another currency is refused', async () => {
    await t.api('POST', '/v1/coupons', { code: 'USD5', amount_off: { currency: 'usd', amount: 500 } });
    const r = await t.api('POST', '/v1/orders', order({ coupon_code: 'USD5' }));
    assert.equal(r.status, 400);
    assert.equal(r.body.error.code, 'coupon_currency_mismatch');
  });

  test('unknown, expired and not-yet-valid coupons each have their own code', async () => {
    const now = Math.floor(Date.now() / 1000);
    await t.api('POST', '/v1/coupons', { code: 'OLD', percent_off_bps: 500, valid_from: now - 100, expires_at: now - 10 });
    await t.api('POST', '/v1/coupons', { code: 'SOON', percent_off_bps: 500, valid_from: now + 3600 });
    const before = await counts();
    for (const [code, expected] of [['NOPE', 'coupon_not_found'], ['OLD', 'coupon_expired'], ['SOON', 'coupon_not_yet_valid']]) {
      const r = await t.api('POST', '/v1/orders', order({ coupon_code: code }));
      assert.equal(r.status, 400);
      assert.equal(r.body.error.code, expected);
      assert.equal(r.body.error.param, 'coupon_code');
    }
    assert.deepEqual(await counts(), before);
  });

  test('20 concurrent orders on a 5-use coupon → exactly 5', async () => {
    await t.api('POST', '/v1/coupons', { code: 'FIVE', percent_off_bps: 2000, max_redemptions: 5 });
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) =>
      t.api('POST', '/v1/orders', order({ customer_id: `cus_c${i}`, coupon_code: 'FIVE' }))));
    assert.equal(results.filter((r) => r.status === 200).length, 5);
    assert.equal(results.filter((r) => r.status === 400 && r.body.error.code === 'coupon_exhausted').length, 15);
    const { rows } = await t.svc.pool.query(`SELECT times_reserved FROM coupons WHERE code = 'FIVE'`);
    assert.equal(rows[0].times_reserved, 5);
  });

  test('canceling an order releases its coupon reservation', async () => {
    await t.api('POST', '/v1/coupons', { code: 'ONE', percent_off_bps: 2000, max_redemptions: 1 });
    const first = await t.api('POST', '/v1/orders', order({ coupon_code: 'ONE' }));
    assert.equal((await t.api('POST', '/v1/orders', order({ coupon_code: 'ONE' }))).body.error.code, 'coupon_exhausted');
    const canceled = await t.api('POST', `/v1/orders/${first.body.id}/cancel`);
    assert.equal(canceled.body.status, 'canceled');
    assert.equal((await t.api('POST', '/v1/orders', order({ coupon_code: 'ONE' }))).status, 200);
    const again = await t.api('POST', `/v1/orders/${first.body.id}/cancel`);
    assert.equal(again.status, 400);
    assert.equal(again.body.error.code, 'order_not_cancelable');
  });

  test('orders list by customer with cursor pagination', async () => {
    const ids = [];
    for (let i = 0; i < 3; i++) ids.push((await t.api('POST', '/v1/orders', order({ customer_id: 'cus_list' }))).body.id);
    const page1 = await t.api('GET', '/v1/orders?customer_id=cus_list&limit=2');
    assert.equal(page1.body.object, 'list');
    assert.equal(page1.body.data.length, 2);
    assert.equal(page1.body.has_more, true);
    assert.deepEqual(page1.body.data.map((o: any) => o.id), [ids[2], ids[1]]);
    const page2 = await t.api('GET', `/v1/orders?customer_id=cus_list&limit=2&starting_after=${ids[1]}`);
    assert.deepEqual(page2.body.data.map((o: any) => o.id), [ids[0]]);
    assert.equal(page2.body.has_more, false);
  });

  test('payment methods follow the platform and currency', async () => {
    const web = await t.api('POST', '/v1/orders', order());
    const m = await t.api('GET', `/v1/orders/${web.body.id}/payment_methods`);
    assert.deepEqual(m.body.data.map((x: any) => `${x.channel}:${x.method}`).filter((x: string) => x.startsWith('alipay') || x.startsWith('wallet')),
      ['alipay:page', 'alipay:qr', 'wallet:wallet']);
    const mini = await t.api('POST', '/v1/orders', order({ client_platform: 'wechat_mini' }));
    const miniMethods = (await t.api('GET', `/v1/orders/${mini.body.id}/payment_methods`)).body.data;
    assert.ok(miniMethods.every((x: any) => x.channel !== 'alipay'), 'never Alipay inside WeChat');
    const usd = await t.api('POST', '/v1/orders', order({ currency: 'USD' }));
    const pay = await t.api('POST', `/v1/orders/${usd.body.id}/payments`, { channel: 'alipay' });
    assert.equal(pay.status, 400);
    assert.equal(pay.body.error.code, 'channel_not_available');
  });
});

describe('routing health', () => {
  test('a channel whose recent calls fail is taken out, and offered again after the cool-down', async () => {
    const o = await t.api('POST', '/v1/orders', order({ customer_id: 'cus_health' }));
    const channels = async () => {
      resetChannelStatsCache();
      return (await t.api('GET', `/v1/orders/${o.body.id}/payment_methods`)).body.data.map((m: any) => m.channel);
    };
    assert.ok((await channels()).includes('alipay'));
    await t.svc.pool.query(`INSERT INTO channel_calls (channel, operation, error, created_at) SELECT 'alipay', 'query_payment', 'transport_error', now() FROM generate_series(1, 6)`);
    assert.ok(!(await channels()).includes('alipay'), 'taken out');
    await t.svc.pool.query(`UPDATE channel_calls SET created_at = now() - interval '40 seconds' WHERE channel = 'alipay' AND error IS NOT NULL`);
    assert.ok((await channels()).includes('alipay'), 'half-open after the cool-down');
    await t.svc.pool.query(`DELETE FROM channel_calls WHERE channel = 'alipay'`);
  });
});

describe('idempotency', () => {
  test('30 concurrent POSTs with one key → one order, same answer', async () => {
    const before = (await counts()).orders;
    const key = 'idem-' + Date.now();
    const results = await Promise.all(Array.from({ length: 30 }, () =>
      t.api('POST', '/v1/orders', order({ customer_id: 'cus_idem' }), { 'idempotency-key': key })));
    assert.ok(results.every((r) => r.status === 200), results.map((r) => r.status).join(','));
    assert.equal(new Set(results.map((r) => r.body.id)).size, 1);
    assert.equal(Number((await counts()).orders) - Number(before), 1);
    assert.ok(results.some((r) => r.headers.get('idempotent-replayed') === 'true'));
  });
  test('same key, different body → 409 idempotency_error, nothing written', async () => {
    const key = 'idem2-' + Date.now();
    const first = await t.api('POST', '/v1/orders', order({ customer_id: 'a' }), { 'idempotency-key': key });
    assert.equal(first.status, 200);
    const before = await counts();
    const second = await t.api('POST', '/v1/orders', order({ customer_id: 'b' }), { 'idempotency-key': key });
    assert.equal(second.status, 409);
    assert.equal(second.body.error.type, 'idempotency_error');
    assert.deepEqual(await counts(), before);
  });
  test('a stored 4xx is replayed too', async () => {
    const key = 'idem3-' + Date.now();
    const a = await t.api('POST', '/v1/orders', order({ currency: 'XXX' }), { 'idempotency-key': key });
    const b = await t.api('POST', '/v1/orders', order({ currency: 'XXX' }), { 'idempotency-key': key });
    assert.equal(a.status, 400);
    assert.deepEqual(b.body, a.body);
  });
});

describe('bad input → 4xx in the error shape, nothing written', () => {
  const cases: [string, string, unknown, string, string?][] = [
    ['fractional price', '/v1/products', { title: 'x', type: 'course', creator_id: 'cr_x', prices: [{ currency: 'CNY', unit_amount: 10.5 }] }, 'parameter_invalid', 'prices[0].unit_amount'],
    ['negative price', '/v1/products', { title: 'x', type: 'course', creator_id: 'cr_x', prices: [{ currency: 'CNY', unit_amount: -1 }] }, 'parameter_invalid', 'prices[0].unit_amount'],
    ['huge price', '/v1/products', { title: 'x', type: 'course', creator_id: 'cr_x', prices: [{ currency: 'CNY', unit_amount: 1e20 }] }, 'parameter_invalid', 'prices[0].unit_amount'],
    ['string price', '/v1/products', { title: 'x', type: 'course', creator_id: 'cr_x', prices: [{ currency: 'CNY', unit_amount: '100' }] }, 'parameter_invalid', 'prices[0].unit_amount'],
    ['unknown product type', '/v1/products', { title: 'x', type: 'book', creator_id: 'cr_x', prices: [{ currency: 'CNY', unit_amount: 1 }] }, 'parameter_invalid'],
    ['unknown creator', '/v1/products', { title: 'x', type: 'course', creator_id: 'cr_missing', prices: [{ currency: 'CNY', unit_amount: 1 }] }, 'resource_missing', 'creator_id'],
    ['unknown currency in price', '/v1/products', { title: 'x', type: 'course', creator_id: 'cr_x', prices: [{ currency: 'ABC', unit_amount: 1 }] }, 'currency_not_supported'],
    ['share over 100%', '/v1/creators', { name: 'x', revenue_share_bps: 10001 }, 'parameter_invalid', 'revenue_share_bps'],
    ['unknown field', '/v1/creators', { name: 'x', revenue_share_bps: 100, extra: 1 }, 'parameter_unknown', 'extra'],
    ['coupon with both discounts', '/v1/coupons', { code: 'BOTH', percent_off_bps: 1, amount_off: { currency: 'CNY', amount: 1 } }, 'parameter_invalid'],
    ['coupon with none', '/v1/coupons', { code: 'NONE' }, 'parameter_invalid'],
    ['empty items', '/v1/orders', { customer_id: 'c', currency: 'CNY', client_platform: 'web', items: [] }, 'parameter_invalid', 'items'],
    ['unknown currency', '/v1/orders', { customer_id: 'c', currency: 'XYZ', client_platform: 'web', items: [{ product_id: 'prod_x' }] }, 'currency_not_supported', 'currency'],
    ['unknown product', '/v1/orders', { customer_id: 'c', currency: 'CNY', client_platform: 'web', items: [{ product_id: 'prod_missing' }] }, 'resource_missing', 'items[0].product_id'],
    ['zero quantity', '/v1/orders', { customer_id: 'c', currency: 'CNY', client_platform: 'web', items: [{ product_id: 'p', quantity: 0 }] }, 'parameter_invalid', 'items[0].quantity'],
    ['unknown platform', '/v1/orders', { customer_id: 'c', currency: 'CNY', client_platform: 'tv', items: [{ product_id: 'p' }] }, 'parameter_invalid'],
    ['missing customer', '/v1/orders', { currency: 'CNY', client_platform: 'web', items: [{ product_id: 'p' }] }, 'parameter_missing', 'customer_id'],
  ];
  for (const [name, path, body, code, param] of cases) {
    test(name, async () => {
      const before = await counts();
      const r = await t.api('POST', path, body);
      assert.equal(r.status, 400, r.text);
      assert.equal(r.body.error.type, 'invalid_request_error');
      assert.equal(r.body.error.code, code, r.text);
      if (param) assert.equal(r.body.error.param, param);
      assert.equal(typeof r.body.error.message, 'string');
      assert.deepEqual(await counts(), before);
    });
  }

  test('malformed JSON → 400 invalid_json', async () => {
    const r = await t.raw('POST', '/v1/orders', '{"customer_id": ', { authorization: `Bearer ${t.apiKey}`, 'content-type': 'application/json' });
    assert.equal(r.status, 400);
    assert.equal(r.body.error.code, 'invalid_json');
  });
  test('oversized body → 413 body_too_large', async () => {
    const big = JSON.stringify({ customer_id: 'x'.repeat(2_000_000) });
    const r = await t.raw('POST', '/v1/orders', big, { authorization: `Bearer ${t.apiKey}`, 'content-type': 'application/json' });
    assert.equal(r.status, 413);
    assert.equal(r.body.error.code, 'body_too_large');
  });
  test('unknown order / payment ids → 404', async () => {
    assert.equal((await t.api('GET', '/v1/orders/ord_missing')).status, 404);
    assert.equal((await t.api('GET', '/v1/payments/pay_missing')).body.error.code, 'resource_missing');
  });

  test('fuzz: 1,000 random order bodies never cause a 5xx', async () => {
    const before = Number((await counts()).orders);
    let created = 0;
    const anyJson = fc.oneof(fc.integer(), fc.double(), fc.string(), fc.boolean(), fc.constant(null), fc.constant(1e300), fc.constant(-0));
    const item = fc.record({
      product_id: fc.oneof(fc.constant(product.id), fc.string(), fc.integer()),
      quantity: fc.oneof(fc.integer({ min: -5, max: 2000 }), fc.double(), fc.string()),
    }, { requiredKeys: [] });
    const body = fc.record({
      customer_id: fc.oneof(fc.string({ maxLength: 200 }), anyJson),
      currency: fc.oneof(fc.constantFrom('CNY', 'cny', 'USD', 'JPY', 'XXX', ''), anyJson),
      items: fc.oneof(fc.array(item, { maxLength: 60 }), anyJson),
      coupon_code: fc.oneof(fc.constantFrom('TENOFF', 'NOPE', 'FIVE'), anyJson),
      client_platform: fc.oneof(fc.constantFrom('web', 'ios', 'x'), anyJson),
    }, { requiredKeys: [] });
    await fc.assert(fc.asyncProperty(body, async (b) => {
      const r = await t.api('POST', '/v1/orders', b);
      assert.ok(r.status < 500, `5xx for ${JSON.stringify(b)}: ${r.text}`);
      if (r.status === 200) created++;
      else assert.equal(typeof r.body.error?.code, 'string');
    }), { numRuns: 1000 });
    assert.equal(Number((await counts()).orders) - before, created);
  });
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { paymentMethodsFor } from './routing.ts';

const all = new Set(['alipay', 'wechatpay', 'stripe', 'paypal', 'apple_iap', 'google_play', 'wallet'] as const);

test('web in CNY offers Alipay page first', () => {
  const m = paymentMethodsFor('web', 'CNY', all);
  assert.deepEqual(m[0], { channel: 'alipay', method: 'page' });
});

test('wechat_mini never offers Alipay', () => {
  assert.ok(paymentMethodsFor('wechat_mini', 'CNY', all).every((m) => m.channel !== 'alipay'));
});

test('ios offers Apple in-app purchase first', () => {
  assert.equal(paymentMethodsFor('ios', 'CNY', all)[0]!.channel, 'apple_iap');
});

test('currency limits: no Alipay for USD, no PayPal for CNY', () => {
  const m = paymentMethodsFor('web', 'USD', all);
  assert.ok(m.every((x) => x.channel !== 'alipay'));
  assert.ok(paymentMethodsFor('web', 'CNY', all).every((x) => x.channel !== 'paypal'));
});

test('unconfigured channels are not offered', () => {
  assert.deepEqual(paymentMethodsFor('h5', 'CNY', new Set(['alipay'])), [{ channel: 'alipay', method: 'wap' }]);
  assert.deepEqual(paymentMethodsFor('wechat_mini', 'CNY', new Set(['alipay'])), []);
});

import { rankMethods } from './routing.ts';
import { isHealthy } from './health.ts';

test('ranking: configured priority first, then success rate, then table order', () => {
  const opts = paymentMethodsFor('web', 'CNY', all);
  const ranked = rankMethods(opts, {
    priority: { wechatpay: 1, alipay: 1 },
    successRate: (c) => (c === 'wechatpay' ? 0.9 : c === 'alipay' ? 0.6 : null),
    unhealthy: new Set(),
  });
  assert.deepEqual(ranked.slice(0, 3).map((m) => `${m.channel}:${m.method}`), ['wechatpay:native', 'alipay:page', 'alipay:qr']);
  assert.equal(ranked.length, opts.length);
});

test('ranking: unhealthy channels are taken out unless all are unhealthy', () => {
  const opts = paymentMethodsFor('h5', 'CNY', new Set(['alipay', 'wechatpay']));
  const none = { successRate: () => null, unhealthy: new Set<any>(['alipay']) };
  assert.deepEqual(rankMethods(opts, none).map((m) => m.channel), ['wechatpay']);
  assert.deepEqual(rankMethods(opts, { successRate: () => null, unhealthy: new Set<any>(['alipay', 'wechatpay']) }).length, 2);
});

test('health: open after mostly-failing calls, half-open after the cool-down', () => {
  assert.equal(isHealthy(3, 3, 1), true, 'too few calls for a verdict');
  assert.equal(isHealthy(10, 4, 1), true, 'under half failing');
  assert.equal(isHealthy(10, 6, 1), false);
  assert.equal(isHealthy(10, 6, 31), true, 'cool-down over: try again');
  assert.equal(isHealthy(10, 0, null), true);
});

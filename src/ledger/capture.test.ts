import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadFeeSchedules } from './capture.ts';

test('fee schedules: defaults, overrides from KNOWPAY_FEES, bad input refused', () => {
  assert.deepEqual(loadFeeSchedules(undefined).alipay, { bps: 60, fixed: 0n });
  const s = loadFeeSchedules('{"alipay":{"bps":55},"stripe":{"bps":340,"fixed":30}}');
  assert.deepEqual(s.alipay, { bps: 55, fixed: 0n });
  assert.deepEqual(s.stripe, { bps: 340, fixed: 30n });
  assert.deepEqual(s.wechatpay, { bps: 60, fixed: 0n });
  assert.throws(() => loadFeeSchedules('{"alipay":{"bps":1.5}}'));
  assert.throws(() => loadFeeSchedules('{"alipay":{"bps":20000}}'));
  assert.throws(() => loadFeeSchedules('{"alipay":{"fixed":-1}}'));
  assert.throws(() => loadFeeSchedules('not json'));
});

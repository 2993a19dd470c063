import { test } from 'node:test';
import assert from 'node:assert/strict';
import { previousBillDate } from './reconcile.ts';

test("the day before, in each channel's bill time zone", () => {
  // 2026-11-22 17:30 UTC: Beijing is already on the 23rd, Los Angeles still on the 22nd (09:30 PST).
  const now = new Date('2026-11-22T17:30:00Z');
  assert.equal(previousBillDate('alipay', now), '2026-11-22');
  assert.equal(previousBillDate('wechatpay', now), '2026-11-22');
  assert.equal(previousBillDate('stripe', now), '2026-11-21');
  assert.equal(previousBillDate('apple_iap', now), '2026-11-21');
  assert.equal(previousBillDate('google_play', now), '2026-11-21');
  // 07:30 UTC: Los Angeles is still on the 21st (23:30 PST), so its yesterday is the 20th.
  assert.equal(previousBillDate('google_play', new Date('2026-11-22T07:30:00Z')), '2026-11-20');
  // Summer time: 2026-07-01 06:30 UTC is 23:30 PDT on June 30.
  assert.equal(previousBillDate('google_play', new Date('2026-07-01T06:30:00Z')), '2026-06-29');
  // Month and year ends.
  assert.equal(previousBillDate('stripe', new Date('2027-01-01T00:00:00Z')), '2026-12-31');
  assert.equal(previousBillDate('alipay', new Date('2026-02-28T16:00:00Z')), '2026-02-28');
});

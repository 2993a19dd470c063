/**
 * Pure refund rules: Stripe's refund statuses in our words, which refund decides, and the sandbox's
 * refund decisions (remainder, refusals, test-card behaviour) checked as properties.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { decisiveRefund, mapRefundStatus, readRefund, snapshotFromRefund, type RefundView } from './transformers.ts';
import { chargeWithRefunded, decideRefund, finishRefund, formatRefundAmount, parseRefundCreate, refundBehaviourOf, remainderOf } from './sandbox-refunds.ts';
import { confirmWith, TEST_PAYMENT_METHODS } from './sandbox-intents.ts';
import type { IntentJson } from './sandbox-store.ts';

test('refund statuses: only succeeded succeeds, only failed/canceled fail, everything else is pending', () => {
  fc.assert(fc.property(fc.string(), (status) => {
    const state = mapRefundStatus(status);
    if (status === 'succeeded') return state === 'succeeded';
    if (status === 'failed' || status === 'canceled') return state === 'failed';
    return state === 'pending';
  }));
  assert.equal(mapRefundStatus(undefined), 'pending');
  assert.equal(mapRefundStatus(null), 'pending');
});

test('the decisive refund among several with one number: succeeded, then in progress, then the newest', () => {
  const r = (id: string, status: string, created: number): RefundView => ({ id, status, created, amount: 1, currency: 'usd', paymentIntent: 'pi_1', metadata: {} });
  assert.equal(decisiveRefund([]), null);
  assert.equal(decisiveRefund([r('re_a', 'failed', 9), r('re_b', 'succeeded', 1), r('re_c', 'pending', 5)])!.id, 're_b');
  assert.equal(decisiveRefund([r('re_a', 'failed', 9), r('re_c', 'requires_action', 5)])!.id, 're_c');
  assert.equal(decisiveRefund([r('re_a', 'failed', 1), r('re_d', 'canceled', 9)])!.id, 're_d');
});

test('a refund without our trade number cannot be attributed; amounts convert to our minor units', () => {
  const view = readRefund({ id: 're_1', object: 'refund', amount: 500, currency: 'isk', status: 'succeeded', payment_intent: null, metadata: { knowpay_reference: 'KP1' } })!;
  assert.deepEqual(snapshotFromRefund(view), { ok: true, snapshot: { state: 'succeeded', channelRefundId: 're_1', channelReference: 'KP1', amountMinor: 5n, currency: 'ISK', rawStatus: 'succeeded' } });
  assert.equal(snapshotFromRefund({ ...view, metadata: {} }).ok, false);
  assert.equal(snapshotFromRefund({ ...view, metadata: {} }, 'KP2').ok, true, 'the caller may know it');
  assert.equal(readRefund({ ...view, object: 'refund', id: 're_1', payment_intent: { id: 'pi_1' } })?.paymentIntent, 'pi_1');
  assert.equal(readRefund(null), null);
  assert.equal(readRefund([]), null);
});

test('amounts in refund messages are written as Stripe writes them', () => {
  assert.equal(formatRefundAmount(4001, 'usd'), '$40.01');
  assert.equal(formatRefundAmount(5, 'usd'), '$0.05');
  assert.equal(formatRefundAmount(3501, 'jpy'), '¥3501');
  assert.equal(formatRefundAmount(12340, 'bhd'), '12.340 BHD');
});

function paidIntent(amount: number, card = 'pm_card_visa'): { pi: IntentJson; charge: Record<string, unknown> } {
  const pi = { id: 'pi_3Test', object: 'payment_intent', status: 'requires_payment_method', amount, currency: 'usd', created: 1, metadata: { knowpay_reference: 'KP1' } } as IntentJson;
  const t = confirmWith(pi, TEST_PAYMENT_METHODS[card]!, 1, { charge: 'ch_3Test', paymentMethod: 'pm_1Test' });
  return { pi: t.intent, charge: t.charge! };
}

const request = (amount: number | null) => ({ paymentIntent: 'pi_3Test', charge: null, amount, metadata: {}, reason: null });

test('property: any sequence of refund attempts never refunds more than was captured, and refuses exactly what does not fit', () => {
  fc.assert(fc.property(fc.integer({ min: 50, max: 100_000 }), fc.array(fc.option(fc.integer({ min: 1, max: 120_000 }), { nil: null }), { maxLength: 12 }), (total, attempts) => {
    const paid = paidIntent(total);
    const pi = paid.pi;
    let charge = paid.charge;
    for (const amount of attempts) {
      const before = remainderOf(charge);
      const d = decideRefund(pi, charge, request(amount), 2);
      if (d.ok) {
        const refunded = amount ?? before;
        assert.ok(refunded <= before && refunded > 0);
        assert.equal(d.creation.refund.amount, refunded);
        assert.equal(remainderOf(d.creation.charge), before - refunded);
        charge = d.creation.charge;
      } else {
        const code = (d.error.body['error'] as { code?: string }).code;
        assert.equal(code, before === 0 ? 'charge_already_refunded' : 'amount_too_large');
        assert.ok(before === 0 || (amount ?? 0) > before);
      }
      assert.ok(remainderOf(charge) >= 0);
    }
    assert.equal(charge['refunded'], remainderOf(charge) === 0);
  }), { numRuns: 200 });
});

test('refused outright: an unpaid PaymentIntent, a declined charge, a charge of another PaymentIntent', () => {
  const { pi, charge } = paidIntent(1000);
  const unpaid = decideRefund({ ...pi, status: 'requires_payment_method' }, null, request(null), 1);
  assert.ok(!unpaid.ok);
  assert.match(String((unpaid.error.body['error'] as { message: string }).message), /does not have a successful charge to refund/);
  const declined = paidIntent(1000, 'pm_card_chargeDeclined');
  assert.equal(decideRefund({ ...declined.pi, status: 'succeeded' }, declined.charge, request(null), 1).ok, false);
  assert.equal(decideRefund(pi, charge, { ...request(null), charge: 'ch_3Other' }, 1).ok, false);
  assert.equal(decideRefund(pi, charge, { ...request(null), charge: 'ch_3Test' }, 1).ok, true);
});

test('test cards decide what refunds do; a failed refund gives its amount back, once', () => {
  assert.deepEqual(refundBehaviourOf(paidIntent(1000).charge), { initial: 'succeeded', later: null });
  assert.deepEqual(refundBehaviourOf(paidIntent(1000, 'pm_card_pendingRefund').charge), { initial: 'pending', later: 'succeeded' });
  assert.deepEqual(refundBehaviourOf(paidIntent(1000, 'pm_card_refundFail').charge), { initial: 'succeeded', later: 'failed' });
  const { pi, charge } = paidIntent(1000, 'pm_card_pendingRefund');
  const d = decideRefund(pi, charge, request(600), 1);
  assert.ok(d.ok);
  assert.equal(d.creation.refund.status, 'pending');
  assert.equal(d.creation.refund['pending_reason'], 'processing');
  assert.deepEqual(d.creation.events.map((e) => e.type), ['charge.refunded', 'refund.created']);
  const failed = finishRefund(d.creation.refund, 'failed');
  assert.deepEqual(failed.events.map((e) => e.type), ['refund.updated', 'charge.refund.updated', 'refund.failed']);
  assert.equal(failed.refund['pending_reason'], undefined);
  assert.equal(remainderOf(chargeWithRefunded(d.creation.charge, -600)), 1000);
  assert.equal(remainderOf(chargeWithRefunded(chargeWithRefunded(d.creation.charge, -600), -600)), 1000, 'never more than captured');
  const ok = finishRefund(d.creation.refund, 'succeeded');
  assert.equal(ok.refund.status, 'succeeded');
  assert.match(String((ok.refund['destination_details'] as { card: { reference: string } }).card.reference), /^\d{23}$/);
  assert.deepEqual(ok.events.map((e) => e.type), ['refund.updated', 'charge.refund.updated']);
});

test('POST /v1/refunds parameters: Stripe\'s refusals', () => {
  const bad: Array<[Record<string, unknown>, string]> = [
    [{}, 'parameter_missing'],
    [{ payment_intent: 'pi_1', amount: '1.5' }, 'parameter_invalid_integer'],
    [{ payment_intent: 'pi_1', amount: ['1'] }, 'parameter_invalid_integer'],
    [{ payment_intent: 'pi_1', nope: 'x' }, 'parameter_unknown'],
    [{ payment_intent: 'xx_1' }, 'resource_missing'],
    [{ payment_intent: 'pi_1', reason: 'other' }, ''],
    [{ payment_intent: 'pi_1', metadata: { k: 'x'.repeat(501) } }, ''],
  ];
  for (const [params, code] of bad) {
    const r = parseRefundCreate(params as never);
    assert.ok(!r.ok, JSON.stringify(params));
    assert.equal((r.error.body['error'] as { code?: string }).code ?? '', code, JSON.stringify(params));
  }
  const good = parseRefundCreate({ payment_intent: 'pi_1', amount: '25', reason: 'duplicate', metadata: { a: 'b', empty: '' } });
  assert.deepEqual(good, { ok: true, request: { paymentIntent: 'pi_1', charge: null, amount: 25, metadata: { a: 'b' }, reason: 'duplicate' } });
});

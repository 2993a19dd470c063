/** Pure wire ↔ domain mapping: statuses, amounts, events, errors (no I/O). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  approvalLink, buildRefundBody, captureIdOfHref, fromPayPalValue, mapCaptureStatus, mapOrderStatus, mapRefundStatus, parseMoney, readError, readOrder,
  readRefund, snapshotOfOrder, toPayPalValue, translateEvent, type WebhookEvent,
} from './transformers.ts';

const KNOWN_CAPTURE = new Set(['COMPLETED', 'PARTIALLY_REFUNDED', 'REFUNDED', 'DECLINED', 'FAILED']);

test('capture statuses: only explicit success or failure end a payment; anything unknown is pending (fast-check)', () => {
  assert.deepEqual(['COMPLETED', 'PARTIALLY_REFUNDED', 'REFUNDED', 'DECLINED', 'FAILED', 'PENDING', undefined].map(mapCaptureStatus),
    ['succeeded', 'succeeded', 'succeeded', 'failed', 'failed', 'pending', 'pending']);
  fc.assert(fc.property(fc.string(), (s) => KNOWN_CAPTURE.has(s) || mapCaptureStatus(s) === 'pending'));
});

test('order statuses: VOIDED closed; COMPLETED as its capture says; everything else pending (APPROVED needs our capture)', () => {
  const cap = (status: string) => ({ id: 'C', status, customId: null, amount: null, payeeMerchantId: null });
  assert.equal(mapOrderStatus({ status: 'VOIDED', capture: null }), 'closed');
  assert.equal(mapOrderStatus({ status: 'COMPLETED', capture: cap('COMPLETED') }), 'succeeded');
  assert.equal(mapOrderStatus({ status: 'COMPLETED', capture: cap('DECLINED') }), 'failed');
  assert.equal(mapOrderStatus({ status: 'COMPLETED', capture: cap('PENDING') }), 'pending');
  assert.equal(mapOrderStatus({ status: 'COMPLETED', capture: null }), 'pending');
  for (const s of ['CREATED', 'SAVED', 'APPROVED', 'PAYER_ACTION_REQUIRED', 'SOMETHING_NEW']) assert.equal(mapOrderStatus({ status: s, capture: null }), 'pending', s);
});

test('amounts: PayPal decimal strings ↔ minor units, strictly', () => {
  assert.equal(toPayPalValue(1234n, 'USD'), '12.34');
  assert.equal(toPayPalValue(5n, 'USD'), '0.05');
  assert.equal(toPayPalValue(500n, 'JPY'), '500');
  assert.equal(toPayPalValue(12300n, 'HUF'), '123');
  assert.equal(toPayPalValue(12345n, 'HUF'), null);
  assert.equal(toPayPalValue(0n, 'USD'), null);
  assert.equal(toPayPalValue(-1n, 'USD'), null);
  assert.equal(fromPayPalValue('12.3', 'USD'), 1230n);
  assert.equal(fromPayPalValue('123', 'TWD'), 12300n);
  for (const bad of ['1.234', '-1.00', '1e3', ' 1.00', '', '0x10', '1,00', 12.34]) assert.equal(fromPayPalValue(bad, 'USD'), null, String(bad));
  assert.deepEqual(parseMoney({ currency_code: 'EUR', value: '9.99' }), { amountMinor: 999n, currency: 'EUR' });
  assert.equal(parseMoney({ currency_code: 'eur', value: '9.99' }), null);
  assert.equal(parseMoney({ currency_code: 'XXX', value: '9.99' }), null);
  assert.equal(parseMoney({ value: '9.99' }), null);
});

test('readOrder and approvalLink: what we rely on, and nothing unsafe', () => {
  assert.equal(readOrder({ status: 'CREATED' }), null);
  assert.equal(readOrder([]), null);
  const order = readOrder({
    id: 'O1', status: 'PAYER_ACTION_REQUIRED',
    links: [{ href: 'javascript:alert(1)', rel: 'payer-action' }, { href: 'https://www.paypal.com/checkoutnow?token=O1', rel: 'approve' }, 'junk'],
    purchase_units: [{ custom_id: 'KP1', amount: { currency_code: 'USD', value: '1.00' } }],
  })!;
  assert.equal(order.links.length, 2);
  assert.equal(approvalLink(order), null, 'a payer-action link that is not http(s) is refused, not skipped');
  const classic = readOrder({ id: 'O2', status: 'CREATED', links: [{ href: 'https://www.paypal.com/checkoutnow?token=O2', rel: 'approve' }] })!;
  assert.equal(approvalLink(classic), 'https://www.paypal.com/checkoutnow?token=O2');
  const completed = readOrder({
    id: 'O3', status: 'COMPLETED',
    purchase_units: [{ custom_id: 'KP3', amount: { currency_code: 'USD', value: '2.00' }, payments: { captures: [{ id: 'C3', status: 'COMPLETED', amount: { currency_code: 'USD', value: '2.00' } }] } }],
  })!;
  assert.deepEqual(snapshotOfOrder(completed, 'KP3'), { state: 'succeeded', channelReference: 'KP3', channelTransactionId: 'C3', amountMinor: 200n, currency: 'USD', rawStatus: 'COMPLETED/COMPLETED' });
});

test('translateEvent never throws on arbitrary resources, and names a payment only with custom_id and a parsable amount (fast-check)', () => {
  const types = ['CHECKOUT.ORDER.APPROVED', 'CHECKOUT.ORDER.VOIDED', 'PAYMENT.CAPTURE.COMPLETED', 'PAYMENT.CAPTURE.DENIED', 'PAYMENT.CAPTURE.REFUNDED', 'PAYMENT.CAPTURE.REVERSED', 'X'];
  fc.assert(fc.property(fc.constantFrom(...types), fc.dictionary(fc.string(), fc.jsonValue()), fc.option(fc.string()), (eventType, resource, merchant) => {
    const event: WebhookEvent = { id: 'WH-1', eventType, resource };
    const t = translateEvent(event, merchant);
    if (!t.ok) return typeof t.reason === 'string';
    if (t.notification.kind === 'refund') {
      // A refund always comes with its resource (for the connector's matching) and an amount.
      return t.refund !== undefined && t.notification.refund.amountMinor !== undefined && ['pending', 'succeeded', 'failed'].includes(t.notification.refund.state);
    }
    if (t.notification.kind !== 'payment') return true;
    return typeof t.notification.trade.channelReference === 'string' && t.notification.trade.amountMinor !== undefined;
  }), { numRuns: 500 });
});

test('translateEvent: capture events must agree with their resource status; approvals always ask for a requery', () => {
  const capture = (type: string, status: string) => translateEvent({ id: 'e', eventType: type, resource: { id: 'C', status, custom_id: 'KP', amount: { currency_code: 'USD', value: '1.00' } } }, null);
  assert.equal(capture('PAYMENT.CAPTURE.COMPLETED', 'COMPLETED').ok, true);
  assert.deepEqual(capture('PAYMENT.CAPTURE.COMPLETED', 'DECLINED'), { ok: false, reason: 'PAYMENT.CAPTURE.COMPLETED with capture status DECLINED' });
  assert.deepEqual(capture('PAYMENT.CAPTURE.DENIED', 'COMPLETED'), { ok: false, reason: 'PAYMENT.CAPTURE.DENIED with capture status COMPLETED' });
  const approved = translateEvent({ id: 'e', eventType: 'CHECKOUT.ORDER.APPROVED', resource: { id: 'O', status: 'APPROVED', purchase_units: [{ custom_id: 'KP', amount: { currency_code: 'JPY', value: '500' }, payee: { merchant_id: 'M1' } }] } }, 'M1');
  assert.deepEqual(approved, { ok: true, notification: { eventId: 'e', kind: 'payment', requery: true, appId: 'M1', trade: { state: 'pending', channelReference: 'KP', channelTransactionId: 'O', amountMinor: 500n, currency: 'JPY', rawStatus: 'APPROVED' } } });
  assert.deepEqual(translateEvent({ id: 'e', eventType: 'CHECKOUT.ORDER.APPROVED', resource: { id: 'O' } }, null), { ok: false, reason: 'CHECKOUT.ORDER.APPROVED: resource is not an order' });
});

test('readError understands both PayPal error shapes', () => {
  assert.deepEqual(readError({ error: 'invalid_client', error_description: 'Client Authentication failed' }), { name: 'invalid_client', issue: 'invalid_client', message: 'Client Authentication failed' });
  assert.deepEqual(readError({ name: 'UNPROCESSABLE_ENTITY', message: 'm', details: [{ issue: 'ORDER_NOT_APPROVED' }] }), { name: 'UNPROCESSABLE_ENTITY', issue: 'ORDER_NOT_APPROVED', message: 'm' });
  assert.deepEqual(readError('<html>'), { name: null, issue: null, message: null });
});

test('refund statuses: only COMPLETED succeeded, FAILED/CANCELLED failed; anything else pending (fast-check)', () => {
  assert.deepEqual(['COMPLETED', 'FAILED', 'CANCELLED', 'PENDING', undefined].map(mapRefundStatus), ['succeeded', 'failed', 'failed', 'pending', 'pending']);
  fc.assert(fc.property(fc.string(), (s) => ['COMPLETED', 'FAILED', 'CANCELLED'].includes(s) || mapRefundStatus(s) === 'pending'));
});

test('readRefund: id, status, amount, our ids, the capture from the up link; nothing else is trusted', () => {
  assert.equal(readRefund({ status: 'COMPLETED' }), null);
  assert.equal(readRefund({ id: 'R', status: '' }), null);
  assert.deepEqual(readRefund({
    id: 'R1', status: 'COMPLETED', amount: { currency_code: 'EUR', value: '3.10' }, invoice_id: 'KPR1', custom_id: 'KPT1', payer: { merchant_id: 'M1' },
    links: [{ rel: 'self', href: 'https://api-m.paypal.com/v2/payments/refunds/R1' }, { rel: 'up', href: 'https://api-m.paypal.com/v2/payments/captures/8MC585209K746392H' }],
  }), { id: 'R1', status: 'COMPLETED', amount: { amountMinor: 310n, currency: 'EUR' }, invoiceId: 'KPR1', customId: 'KPT1', captureId: '8MC585209K746392H', payerMerchantId: 'M1' });
  assert.equal(captureIdOfHref('https://api-m.paypal.com/v2/payments/authorizations/0VF52814937998046'), null);
  assert.equal(captureIdOfHref('https://api-m.paypal.com/v2/payments/captures/A%2F..%2FB'), null);
  assert.equal(captureIdOfHref('not a url'), null);
  const order = readOrder({
    id: 'O', status: 'COMPLETED',
    purchase_units: [{ custom_id: 'KP', amount: { currency_code: 'USD', value: '5.00' }, payments: { captures: [{ id: 'C', status: 'PARTIALLY_REFUNDED' }], refunds: [{ id: 'R1', status: 'COMPLETED', invoice_id: 'KPR1' }, 'junk', { id: 'R2' }] } }],
  })!;
  assert.deepEqual(order.refunds.map((r) => r.id), ['R1']);
  assert.equal(readOrder({ id: 'O', status: 'CREATED' })!.refunds.length, 0);
});

test('buildRefundBody: always an explicit amount, our refund reference as invoice_id, our trade as custom_id', () => {
  assert.deepEqual(buildRefundBody({ currency: 'JPY', value: '500', refundReference: 'KPR1', channelReference: 'KPT1', noteToPayer: null }), {
    amount: { currency_code: 'JPY', value: '500' }, invoice_id: 'KPR1', custom_id: 'KPT1',
  });
  assert.equal(buildRefundBody({ currency: 'USD', value: '1.00', refundReference: 'R', channelReference: 'T', noteToPayer: 'Sorry' })['note_to_payer'], 'Sorry');
});

test('translateEvent: refund events — our reference only on REFUNDED, never when it is the trade\'s own invoice_id, never on REVERSED', () => {
  const resource = (over: Record<string, unknown> = {}) => ({
    id: 'R1', status: 'COMPLETED', amount: { currency_code: 'USD', value: '1.00' }, invoice_id: 'KPR1', custom_id: 'KPT1', payer: { merchant_id: 'M1' }, ...over,
  });
  const refunded = translateEvent({ id: 'e', eventType: 'PAYMENT.CAPTURE.REFUNDED', resource: resource() }, 'M1');
  assert.ok(refunded.ok);
  assert.deepEqual(refunded.notification, {
    eventId: 'e', kind: 'refund', appId: 'M1',
    refund: { state: 'succeeded', refundReference: 'KPR1', channelRefundId: 'R1', channelReference: 'KPT1', amountMinor: 100n, currency: 'USD', rawStatus: 'COMPLETED' },
  });
  const reversed = translateEvent({ id: 'e', eventType: 'PAYMENT.CAPTURE.REVERSED', resource: resource() }, null);
  assert.ok(reversed.ok && reversed.notification.kind === 'refund' && !('refundReference' in reversed.notification.refund) && !('appId' in reversed.notification));
  const ownInvoice = translateEvent({ id: 'e', eventType: 'PAYMENT.CAPTURE.REFUNDED', resource: resource({ invoice_id: 'KPT1' }) }, null);
  assert.ok(ownInvoice.ok && ownInvoice.notification.kind === 'refund' && !('refundReference' in ownInvoice.notification.refund));
  const noCustom = translateEvent({ id: 'e', eventType: 'PAYMENT.CAPTURE.REFUNDED', resource: resource({ custom_id: undefined }) }, null);
  assert.ok(noCustom.ok && noCustom.notification.kind === 'refund' && noCustom.notification.refund.channelReference === '' && noCustom.refund?.customId === null);
  assert.deepEqual(translateEvent({ id: 'e', eventType: 'PAYMENT.CAPTURE.REFUNDED', resource: resource({ amount: undefined }) }, null), { ok: false, reason: 'PAYMENT.CAPTURE.REFUNDED: unparsable amount' });
  assert.deepEqual(translateEvent({ id: 'e', eventType: 'PAYMENT.CAPTURE.REVERSED', resource: { id: 'R1' } }, null), { ok: false, reason: 'PAYMENT.CAPTURE.REVERSED: resource is not a refund' });
  const pending = translateEvent({ id: 'e', eventType: 'PAYMENT.CAPTURE.REFUNDED', resource: resource({ status: 'PENDING' }) }, null);
  assert.ok(pending.ok && pending.notification.kind === 'refund' && pending.notification.refund.state === 'pending');
});

/**
 * Stripe events (webhooks) in our words: a pure translation, run only after the signature
 * verified (webhook.ts). The object inside an event is its state at event time.
 *
 * Refunds: `refund.created`, `refund.updated` and `refund.failed` (the current names, for this
 * SDK's API version 2026-10-28) carry the Refund; so does the older `charge.refund.updated`, which
 * Stripe still sends for some payment methods and is translated the same way. `charge.refunded`
 * carries the Charge, not the Refund, and is ignored. Our refund number and our trade number are
 * in the Refund's own metadata (the connector puts both there at create time), so no call is
 * needed here; a refund made elsewhere (the Dashboard) lacks them and is ignored with a reason.
 */
import type { VerifyResult } from '../types.ts';
import { REFERENCE_METADATA_KEY, readIntent, readRefund, snapshotFromIntent, snapshotFromRefund } from './transformers.ts';

/** The events that move a payment; every other type is genuine but ignored. */
export const PAYMENT_EVENT_TYPES: ReadonlySet<string> = new Set([
  'payment_intent.succeeded',
  'payment_intent.payment_failed',
  'payment_intent.canceled',
]);

/** The events that carry a Refund object. */
export const REFUND_EVENT_TYPES: ReadonlySet<string> = new Set([
  'refund.created',
  'refund.updated',
  'refund.failed',
  'charge.refund.updated',
]);

const EVENT_ID = /^evt_[A-Za-z0-9]{1,250}$/;

export function translateEvent(event: Record<string, unknown>, expect: { livemode: boolean }): VerifyResult {
  const id = event['id'];
  const type = event['type'];
  if (event['object'] !== 'event') return { ok: false, reason: 'not an event object' };
  if (typeof id !== 'string' || !EVENT_ID.test(id)) return { ok: false, reason: 'event without a valid id' };
  if (typeof type !== 'string' || type === '') return { ok: false, reason: `event ${id} without a type` };
  // Endpoints are per mode, each with its own secret: a test event on a live key is not ours.
  if (typeof event['livemode'] === 'boolean' && event['livemode'] !== expect.livemode) {
    return { ok: false, reason: `event ${id} has livemode=${String(event['livemode'])}, the key is ${expect.livemode ? 'live' : 'test'}` };
  }
  // Connect events name the connected account; an account's own events carry none.
  const account = event['account'];
  const appId = typeof account === 'string' && account !== '' ? account : undefined;
  const data = event['data'];
  const object = data && typeof data === 'object' && !Array.isArray(data) ? (data as Record<string, unknown>)['object'] : undefined;
  if (!object || typeof object !== 'object' || Array.isArray(object)) return { ok: false, reason: `event ${id} without data.object` };

  if (REFUND_EVENT_TYPES.has(type)) {
    const refund = readRefund(object);
    if (!refund) return { ok: false, reason: `event ${id} (${type}) carries a malformed refund` };
    if (!refund.metadata[REFERENCE_METADATA_KEY]) {
      return { ok: true, notification: { eventId: id, kind: 'ignored', reason: `refund ${refund.id} was not made by Knowpay (no metadata.${REFERENCE_METADATA_KEY})`, ...(appId ? { appId } : {}) } };
    }
    const snapshot = snapshotFromRefund(refund);
    if (!snapshot.ok) return { ok: false, reason: snapshot.reason };
    return { ok: true, notification: { eventId: id, kind: 'refund', refund: snapshot.snapshot, ...(appId ? { appId } : {}) } };
  }

  if (!PAYMENT_EVENT_TYPES.has(type)) {
    const metadata = (object as Record<string, unknown>)['metadata'];
    const ref = metadata && typeof metadata === 'object' ? (metadata as Record<string, unknown>)[REFERENCE_METADATA_KEY] : undefined;
    return {
      ok: true,
      notification: {
        eventId: id, kind: 'ignored', reason: `event type ${type} is not used`,
        ...(typeof ref === 'string' && ref !== '' ? { channelReference: ref } : {}),
        ...(appId ? { appId } : {}),
      },
    };
  }
  const pi = readIntent(object);
  if (!pi) return { ok: false, reason: `event ${id} (${type}) carries a malformed payment_intent` };
  if (!pi.metadata[REFERENCE_METADATA_KEY]) {
    // Made outside Knowpay (the Dashboard, another integration on the same account).
    return { ok: true, notification: { eventId: id, kind: 'ignored', reason: `payment_intent ${pi.id} was not created by Knowpay`, ...(appId ? { appId } : {}) } };
  }
  const snapshot = snapshotFromIntent(pi);
  if (!snapshot.ok) return { ok: false, reason: snapshot.reason };
  return { ok: true, notification: { eventId: id, kind: 'payment', trade: snapshot.snapshot, ...(appId ? { appId } : {}) } };
}

/**
 * Stripe's Refund rules, as pure functions for the sandbox: `POST /v1/refunds` validation with
 * Stripe's answers, the refundable remainder of the PaymentIntent's charge, the Refund object as
 * the API shows it, its later transitions, and the events each change emits.
 *
 * How refunds behave here (as on Stripe in test mode, docs.stripe.com/testing#refunds):
 * - a charge paid with an ordinary test card: the refund is `succeeded` in the create answer;
 * - paid with `pm_card_pendingRefund` (4000 0000 0000 7726): `pending`, then `succeeded` later;
 * - paid with `pm_card_refundFail` (4000 0000 0000 5126): `succeeded`, then `failed` later (the
 *   money goes back to the charge's refundable remainder).
 * "Later" is the sandbox's settle delay × timeScale (sandbox.ts), or `POST /refunds/simulate`.
 * Pending and succeeded refunds count against the remainder, as on Stripe; failed ones do not.
 */
import { randomInt } from 'node:crypto';
import type { FormObject } from './sandbox-form.ts';
import { apiError, newBalanceTransactionId, randomAlnum, type ApiResult, type Transition, unknownParam } from './sandbox-intents.ts';
import type { IntentJson, RefundJson } from './sandbox-store.ts';
import { STRIPE_MAX_AMOUNT, stripeExponent } from './transformers.ts';

export const newRefundId = () => `re_3${randomAlnum(23)}`;

const CREATE_PARAMS = new Set(['payment_intent', 'charge', 'amount', 'metadata', 'reason']);
export const REFUND_REASONS = ['duplicate', 'fraudulent', 'requested_by_customer'] as const;
const MAX_METADATA_KEYS = 50;
const MAX_METADATA_KEY_CHARS = 40;
const MAX_METADATA_VALUE_CHARS = 500;

export interface RefundCreateRequest {
  paymentIntent: string | null;
  charge: string | null;
  /** Stripe units; null = everything still refundable. */
  amount: number | null;
  metadata: Record<string, string>;
  reason: string | null;
}

type Parsed<T> = { ok: true; value: T } | { ok: false; error: ApiResult };

function idParam(params: FormObject, key: string, prefix: RegExp): Parsed<string | null> {
  const v = params[key];
  if (v === undefined || v === '') return { ok: true, value: null };
  if (typeof v !== 'string' || v.length > 255) return { ok: false, error: apiError(400, 'invalid_request_error', `Invalid string: ${key} must be a string`, { param: key }) };
  if (!prefix.test(v)) return { ok: false, error: apiError(404, 'invalid_request_error', `No such ${key}: '${v}'`, { code: 'resource_missing', param: key }) };
  return { ok: true, value: v };
}

function metadataParam(v: FormObject[string] | undefined): Parsed<Record<string, string>> {
  if (v === undefined || v === '') return { ok: true, value: {} };
  if (typeof v !== 'object' || Array.isArray(v)) return { ok: false, error: apiError(400, 'invalid_request_error', 'Invalid object: metadata must be a hash of keys and values', { param: 'metadata' }) };
  const entries = Object.entries(v);
  if (entries.length > MAX_METADATA_KEYS) return { ok: false, error: apiError(400, 'invalid_request_error', `You can specify up to ${MAX_METADATA_KEYS} metadata keys.`, { param: 'metadata' }) };
  const out: Record<string, string> = {};
  for (const [k, value] of entries) {
    if (typeof value !== 'string') return { ok: false, error: apiError(400, 'invalid_request_error', `Invalid value for metadata[${k}]: metadata values must be strings`, { param: `metadata[${k}]` }) };
    if (k.length > MAX_METADATA_KEY_CHARS) return { ok: false, error: apiError(400, 'invalid_request_error', `Metadata keys can have up to ${MAX_METADATA_KEY_CHARS} characters, but you passed in a key that is ${k.length} characters.`, { param: 'metadata' }) };
    if (value.length > MAX_METADATA_VALUE_CHARS) return { ok: false, error: apiError(400, 'invalid_request_error', `Metadata values can have up to ${MAX_METADATA_VALUE_CHARS} characters, but you passed in a value that is ${value.length} characters.`, { param: `metadata[${k}]` }) };
    if (value !== '') out[k] = value;
  }
  return { ok: true, value: out };
}

export function parseRefundCreate(params: FormObject): { ok: true; request: RefundCreateRequest } | { ok: false; error: ApiResult } {
  const unknown = unknownParam(params, CREATE_PARAMS);
  if (unknown) return { ok: false, error: unknown };
  const pi = idParam(params, 'payment_intent', /^pi_[A-Za-z0-9]+$/);
  if (!pi.ok) return pi;
  const charge = idParam(params, 'charge', /^(ch|py)_[A-Za-z0-9]+$/);
  if (!charge.ok) return charge;
  if (pi.value === null && charge.value === null) {
    return { ok: false, error: apiError(400, 'invalid_request_error', 'One of the following params should be provided for this request: payment_intent or charge.', { code: 'parameter_missing', param: 'payment_intent' }) };
  }
  let amount: number | null = null;
  const a = params['amount'];
  if (a !== undefined) {
    if (typeof a !== 'string' || !/^\d{1,16}$/.test(a) || Number(a) < 1) {
      return { ok: false, error: apiError(400, 'invalid_request_error', `Invalid positive integer: ${typeof a === 'string' ? a.slice(0, 20) : 'not a string'}`, { code: 'parameter_invalid_integer', param: 'amount' }) };
    }
    amount = Number(a);
  }
  const metadata = metadataParam(params['metadata']);
  if (!metadata.ok) return metadata;
  const reason = params['reason'];
  if (reason !== undefined && (typeof reason !== 'string' || !(REFUND_REASONS as readonly string[]).includes(reason))) {
    return { ok: false, error: apiError(400, 'invalid_request_error', `Invalid reason: must be one of ${REFUND_REASONS.join(', ')}`, { param: 'reason' }) };
  }
  return { ok: true, request: { paymentIntent: pi.value, charge: charge.value, amount, metadata: metadata.value, reason: reason ?? null } };
}

// ---- Money in Stripe's messages ---------------------------------------------------------------------

const SYMBOLS: Readonly<Record<string, string>> = { usd: '$', eur: '€', gbp: '£', jpy: '¥', cny: 'CN¥', hkd: 'HK$', cad: 'CA$', aud: 'A$' };

/** `$12.34`, `¥500`, `12.340 BHD`: as Stripe writes amounts in refund messages. */
export function formatRefundAmount(amount: number, currency: string): string {
  const exp = stripeExponent(currency.toUpperCase());
  const digits = String(amount).padStart(exp + 1, '0');
  const text = exp === 0 ? digits : `${digits.slice(0, -exp)}.${digits.slice(-exp)}`;
  const symbol = SYMBOLS[currency];
  return symbol ? `${symbol}${text}` : `${text} ${currency.toUpperCase()}`;
}

// ---- Decisions ----------------------------------------------------------------------------------------

export type RefundBehaviour = { initial: 'succeeded' | 'pending'; later: 'succeeded' | 'failed' | null };

/** What refunds of a charge do, by the test card that paid it. */
export function refundBehaviourOf(charge: Record<string, unknown>): RefundBehaviour {
  const details = charge['payment_method_details'] as { card?: { last4?: unknown } } | undefined;
  switch (details?.card?.last4) {
    case '7726':
      return { initial: 'pending', later: 'succeeded' };
    case '5126':
      return { initial: 'succeeded', later: 'failed' };
    default:
      return { initial: 'succeeded', later: null };
  }
}

export function remainderOf(charge: Record<string, unknown>): number {
  const captured = typeof charge['amount_captured'] === 'number' ? charge['amount_captured'] : 0;
  const refunded = typeof charge['amount_refunded'] === 'number' ? charge['amount_refunded'] : 0;
  return Math.max(0, captured - refunded);
}

/** The charge after `delta` more (or, negative, less) of it is refunded. */
export function chargeWithRefunded(charge: Record<string, unknown>, delta: number): Record<string, unknown> {
  const captured = typeof charge['amount_captured'] === 'number' ? charge['amount_captured'] : 0;
  const before = typeof charge['amount_refunded'] === 'number' ? charge['amount_refunded'] : 0;
  const after = Math.min(captured, Math.max(0, before + delta));
  return { ...charge, amount_refunded: after, refunded: captured > 0 && after === captured };
}

export interface RefundCreation {
  refund: RefundJson;
  charge: Record<string, unknown>;
  /** The outcome the sandbox applies by itself later, if any. */
  later: 'succeeded' | 'failed' | null;
  events: Transition['events'];
}

/**
 * A refund of the PaymentIntent's charge, or Stripe's refusal. `pi` and `charge` are the stored
 * state the caller will compare-and-set against.
 */
export function decideRefund(pi: IntentJson, charge: Record<string, unknown> | null, req: RefundCreateRequest, nowS: number): { ok: true; creation: RefundCreation } | { ok: false; error: ApiResult } {
  if (req.charge !== null && (charge === null || charge['id'] !== req.charge)) {
    return { ok: false, error: apiError(400, 'invalid_request_error', `Charge ${req.charge} does not belong to PaymentIntent ${pi.id}.`, { param: 'charge' }) };
  }
  if (pi.status !== 'succeeded' || charge === null || charge['status'] !== 'succeeded' || charge['captured'] !== true) {
    return { ok: false, error: apiError(400, 'invalid_request_error', `This PaymentIntent (${pi.id}) does not have a successful charge to refund.`, { param: 'payment_intent' }) };
  }
  const chargeId = String(charge['id']);
  const remainder = remainderOf(charge);
  if (remainder === 0) {
    return { ok: false, error: apiError(400, 'invalid_request_error', `Charge ${chargeId} has already been refunded.`, { code: 'charge_already_refunded', param: 'charge' }) };
  }
  const amount = req.amount ?? remainder;
  if (amount > STRIPE_MAX_AMOUNT || amount > remainder) {
    return {
      ok: false,
      error: apiError(400, 'invalid_request_error', `Refund amount (${formatRefundAmount(amount, pi.currency)}) is greater than unrefunded amount on charge (${formatRefundAmount(remainder, pi.currency)})`, { code: 'amount_too_large', param: 'amount' }),
    };
  }
  const behaviour = refundBehaviourOf(charge);
  const refund = refundObject({ id: newRefundId(), amount, chargeId, pi, req, status: behaviour.initial, nowS });
  const nextCharge = chargeWithRefunded(charge, amount);
  return {
    ok: true,
    creation: {
      refund,
      charge: nextCharge,
      later: behaviour.later,
      events: [{ type: 'charge.refunded', object: nextCharge }, { type: 'refund.created', object: refund }],
    },
  };
}

function refundObject(o: { id: string; amount: number; chargeId: string; pi: IntentJson; req: RefundCreateRequest; status: 'succeeded' | 'pending'; nowS: number }): RefundJson {
  return {
    id: o.id,
    object: 'refund',
    amount: o.amount,
    // Booked on the balance when it is made, pending or not (sandbox-balance.ts records it under this id).
    balance_transaction: newBalanceTransactionId(),
    charge: o.chargeId,
    created: o.nowS,
    currency: o.pi.currency,
    destination_details: { card: { reference_status: 'pending', reference_type: 'acquirer_reference_number', type: 'refund' }, type: 'card' },
    metadata: o.req.metadata,
    payment_intent: o.pi.id,
    ...(o.status === 'pending' ? { pending_reason: 'processing' } : {}),
    reason: o.req.reason,
    receipt_number: null,
    source_transfer_reversal: null,
    status: o.status,
    transfer_reversal: null,
  };
}

/** Refunds the sandbox may still finish: the only ones `/refunds/simulate` accepts. */
export const OPEN_REFUND_STATUSES: ReadonlySet<string> = new Set(['pending', 'requires_action']);
/** Statuses that hold part of the charge (a failed or canceled refund gives it back). */
export const HOLDING_REFUND_STATUSES: ReadonlySet<string> = new Set(['pending', 'requires_action', 'succeeded']);

/** The refund once it ends; the events Stripe sends for that change. */
export function finishRefund(refund: RefundJson, outcome: 'succeeded' | 'failed'): { refund: RefundJson; events: Transition['events'] } {
  const { pending_reason: _pending, ...rest } = refund as RefundJson & { pending_reason?: unknown };
  void _pending;
  const next: RefundJson =
    outcome === 'succeeded'
      ? {
          ...rest,
          status: 'succeeded',
          // The acquirer reference number (ARN) the card network gives a settled refund.
          destination_details: { card: { reference: digits(23), reference_status: 'available', reference_type: 'acquirer_reference_number', type: 'refund' }, type: 'card' },
        }
      : { ...rest, status: 'failed', failure_reason: 'expired_or_canceled_card', failure_balance_transaction: newBalanceTransactionId() };
  const events: Transition['events'] = [
    { type: 'refund.updated', object: next },
    { type: 'charge.refund.updated', object: next },
  ];
  if (outcome === 'failed') events.push({ type: 'refund.failed', object: next });
  return { refund: next, events };
}

function digits(n: number): string {
  let out = '';
  for (let i = 0; i < n; i++) out += String(randomInt(10));
  return out;
}

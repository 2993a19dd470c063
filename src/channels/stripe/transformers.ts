/**
 * Stripe wire details that are not signatures: amounts in Stripe's units, PaymentIntent and Refund
 * states in our words, search queries, and redaction for the audit log. Pure functions only.
 */
import type { ChannelTradeState, RefundSnapshot, RefundState, TradeSnapshot } from '../types.ts';
import { CURRENCY_EXPONENTS, MAX_AMOUNT_MINOR, normalizeCurrency } from '../../domain/money.ts';

/** Stripe's zero-decimal currencies (docs.stripe.com/currencies#zero-decimal). */
export const STRIPE_ZERO_DECIMAL: ReadonlySet<string> = new Set([
  'BIF', 'CLP', 'DJF', 'GNF', 'JPY', 'KMF', 'KRW', 'MGA', 'PYG', 'RWF', 'UGX', 'VND', 'VUV', 'XAF', 'XOF', 'XPF',
]);

/**
 * Three-decimal currencies: Stripe takes them in thousandths, but the last digit must be 0
 * ("your integration must round amounts to the nearest ten", docs.stripe.com/currencies).
 */
export const STRIPE_THREE_DECIMAL: ReadonlySet<string> = new Set(['BHD', 'JOD', 'KWD', 'OMR', 'TND']);

/**
 * Currencies Stripe presents in a different exponent than ISO 4217. ISK is zero-decimal in ISO
 * but "remains a two-decimal currency in the Stripe API" (amounts multiple of 100).
 */
const STRIPE_EXPONENT_OVERRIDES: Readonly<Record<string, number>> = Object.freeze({ ISK: 2 });

/** Currencies of money.ts that Stripe does not accept as a presentment currency. */
export const STRIPE_UNSUPPORTED: ReadonlySet<string> = new Set(['IQD', 'LYD']);

/** Stripe's `amount` holds at most eight digits (docs.stripe.com/currencies, "maximum charge amounts"). */
export const STRIPE_MAX_AMOUNT = 99_999_999;

export function stripeExponent(currency: string): number {
  const override = STRIPE_EXPONENT_OVERRIDES[currency];
  if (override !== undefined) return override;
  if (STRIPE_ZERO_DECIMAL.has(currency)) return 0;
  if (STRIPE_THREE_DECIMAL.has(currency)) return 3;
  return 2;
}

export type Converted<T> = { ok: true; value: T } | { ok: false; code: 'currency_not_supported' | 'amount_invalid'; message: string };

/** A currency Knowpay knows and Stripe presents, upper case; null otherwise. */
export function stripeCurrency(currency: string): string | null {
  const iso = normalizeCurrency(currency);
  if (!iso || STRIPE_UNSUPPORTED.has(iso)) return null;
  // Stripe never takes fewer decimals than ISO: that would need rounding, which money never gets.
  if (stripeExponent(iso) < CURRENCY_EXPONENTS[iso]!) return null;
  return iso;
}

/** Stripe units per minor unit of ours (1, or 100 for ISK); `currency` as stripeCurrency answers it. */
export function stripeUnitFactor(currency: string): bigint {
  return factorOf(currency);
}

function factorOf(currency: string): bigint {
  return 10n ** BigInt(stripeExponent(currency) - CURRENCY_EXPONENTS[currency]!);
}

/** Our minor units (ISO 4217 exponent) → Stripe's `amount` and lowercase `currency`. */
export function toStripeAmount(amountMinor: bigint, currency: string): Converted<{ amount: number; currency: string }> {
  const iso = stripeCurrency(currency);
  if (!iso) return { ok: false, code: 'currency_not_supported', message: `stripe does not accept currency ${currency}` };
  if (typeof amountMinor !== 'bigint' || amountMinor <= 0n || amountMinor > MAX_AMOUNT_MINOR) {
    return { ok: false, code: 'amount_invalid', message: `amount must be a positive number of minor units, got ${String(amountMinor)}` };
  }
  const amount = amountMinor * factorOf(iso);
  if (STRIPE_THREE_DECIMAL.has(iso) && amount % 10n !== 0n) {
    return { ok: false, code: 'amount_invalid', message: `stripe takes ${iso} only in multiples of 10 (0.010 ${iso}); ${amountMinor} would need rounding` };
  }
  if (amount > BigInt(STRIPE_MAX_AMOUNT)) {
    return { ok: false, code: 'amount_invalid', message: `stripe amounts have at most eight digits; ${amountMinor} ${iso} is ${amount} in Stripe units` };
  }
  return { ok: true, value: { amount: Number(amount), currency: iso.toLowerCase() } };
}

/** Stripe's `amount` + `currency` → our minor units; null when it is not a whole number of our units. */
export function fromStripeAmount(amount: unknown, currency: unknown): { amountMinor: bigint; currency: string } | null {
  if (typeof amount !== 'number' || !Number.isSafeInteger(amount) || amount < 0) return null;
  if (typeof currency !== 'string' || !/^[a-z]{3}$/.test(currency)) return null;
  const iso = stripeCurrency(currency);
  if (!iso) return null;
  const factor = factorOf(iso);
  const big = BigInt(amount);
  if (big % factor !== 0n) return null;
  return { amountMinor: big / factor, currency: iso };
}

// ---- PaymentIntent states --------------------------------------------------------------------

/** The PaymentIntent fields the connector reads; everything else is ignored. */
export interface IntentView {
  id: string;
  status: string;
  amount: number;
  amount_received: number;
  currency: string;
  metadata: Record<string, string>;
  last_payment_error: unknown;
  latest_charge: unknown;
  created: number;
}

export const REFERENCE_METADATA_KEY = 'knowpay_reference';
export const PAYMENT_ID_METADATA_KEY = 'knowpay_payment_id';

/**
 * PaymentIntent status → our words. succeeded ends paid; canceled ends closed; a failed attempt
 * (requires_payment_method with last_payment_error) is failed; the rest, and anything unknown, is
 * pending (channels.md general rules).
 */
export function mapIntentStatus(status: unknown, lastPaymentError: unknown): ChannelTradeState {
  switch (status) {
    case 'succeeded':
      return 'succeeded';
    case 'canceled':
      return 'closed';
    case 'requires_payment_method':
      return lastPaymentError !== null && lastPaymentError !== undefined ? 'failed' : 'pending';
    case 'requires_confirmation':
    case 'requires_action':
    case 'processing':
    case 'requires_capture':
    default:
      return 'pending';
  }
}

/** Read the fields we rely on from an untrusted PaymentIntent JSON; null when malformed. */
export function readIntent(value: unknown): IntentView | null {
  if (!value || typeof value !== 'object' || Array.isArray(value)) return null;
  const o = value as Record<string, unknown>;
  if (o['object'] !== 'payment_intent') return null;
  if (typeof o['id'] !== 'string' || !/^pi_[A-Za-z0-9]{1,250}$/.test(o['id'])) return null;
  if (typeof o['status'] !== 'string' || o['status'] === '') return null;
  if (typeof o['amount'] !== 'number' || !Number.isSafeInteger(o['amount'])) return null;
  const received = o['amount_received'] ?? 0;
  if (typeof received !== 'number' || !Number.isSafeInteger(received)) return null;
  if (typeof o['currency'] !== 'string') return null;
  const metadata = o['metadata'];
  if (!metadata || typeof metadata !== 'object' || Array.isArray(metadata)) return null;
  for (const v of Object.values(metadata)) if (typeof v !== 'string') return null;
  return {
    id: o['id'],
    status: o['status'],
    amount: o['amount'],
    amount_received: received,
    currency: o['currency'],
    metadata: { ...(metadata as Record<string, string>) },
    last_payment_error: o['last_payment_error'] ?? null,
    latest_charge: o['latest_charge'] ?? null,
    created: typeof o['created'] === 'number' ? o['created'] : 0,
  };
}

export type SnapshotResult = { ok: true; snapshot: TradeSnapshot } | { ok: false; reason: string };

/**
 * A PaymentIntent as a TradeSnapshot. The amount is what was received once succeeded (a partial
 * capture must not pass for the full amount), else what was asked.
 */
export function snapshotFromIntent(pi: IntentView): SnapshotResult {
  const reference = pi.metadata[REFERENCE_METADATA_KEY];
  if (!reference) return { ok: false, reason: `payment_intent ${pi.id} has no metadata.${REFERENCE_METADATA_KEY}` };
  const state = mapIntentStatus(pi.status, pi.last_payment_error);
  const money = fromStripeAmount(state === 'succeeded' ? pi.amount_received : pi.amount, pi.currency);
  if (!money) return { ok: false, reason: `payment_intent ${pi.id} has an unusable amount ${pi.amount} ${JSON.stringify(pi.currency)}` };
  return {
    ok: true,
    snapshot: {
      state,
      channelReference: reference,
      channelTransactionId: pi.id,
      amountMinor: money.amountMinor,
      currency: money.currency,
      rawStatus: pi.status,
    },
  };
}

/**
 * Among PaymentIntents carrying the same reference (only possible when an idempotency key expired
 * and the create was repeated), the one that decides: a paid one first, else the newest.
 */
export function decisiveIntent(intents: readonly IntentView[]): IntentView | null {
  if (intents.length === 0) return null;
  const paid = intents.find((pi) => pi.status === 'succeeded');
  if (paid) return paid;
  return [...intents].sort((a, b) => b.created - a.created || (a.id < b.id ? 1 : -1))[0]!;
}

// ---- Search ----------------------------------------------------------------------------------

/** Our references are letters, digits, `_` and `-`: nothing to escape in a search string. */
export const REFERENCE_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;

/** Stripe Search Query Language clause for our reference metadata. */
export function referenceSearchQuery(reference: string): string {
  if (!REFERENCE_PATTERN.test(reference)) throw new TypeError(`reference ${JSON.stringify(reference)} is not searchable`);
  return `metadata['${REFERENCE_METADATA_KEY}']:'${reference}'`;
}

// ---- Redaction -------------------------------------------------------------------------------

const SECRET_KEYS = /^(client_secret|secret|api_?key|authorization|stripe-signature|signature|password|token|webhook_?secret|secret_?key)$/i;
const SECRET_VALUES = /\b(sk|rk|pk)_(test|live)_[A-Za-z0-9]+|\bwhsec_[A-Za-z0-9]+|\b(pi|seti)_[A-Za-z0-9]+_secret_[A-Za-z0-9]+/g;
const REDACTED = '[REDACTED]';

/** Deep copy with secrets replaced: keys, webhook secrets, client secrets, signatures. */
export function redactSecrets(value: unknown, depth = 0): unknown {
  if (depth > 20) return REDACTED;
  if (typeof value === 'string') return value.replace(SECRET_VALUES, (m) => `${m.slice(0, m.indexOf('_') + 1)}${REDACTED}`);
  if (typeof value === 'bigint') return value.toString();
  if (Array.isArray(value)) return value.map((v) => redactSecrets(v, depth + 1));
  if (value && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
      out[k] = SECRET_KEYS.test(k) && v !== null && v !== undefined ? REDACTED : redactSecrets(v, depth + 1);
    }
    return out;
  }
  return value;
}

// ---- Refunds ---------------------------------------------------------------------------------

/** Our refund number in a Refund's metadata (also the create call's Idempotency-Key). */
export const REFUND_REFERENCE_METADATA_KEY = 'knowpay_refund_reference';
/** The free-text reason we were given, kept beside Stripe's enumerated `reason`. */
export const REFUND_REASON_METADATA_KEY = 'knowpay_refund_reason';
/** Stripe's own `reason` values a merchant may send (`fraudulent` also feeds Radar block lists). */
export const STRIPE_REFUND_REASONS: ReadonlySet<string> = new Set(['duplicate', 'fraudulent', 'requested_by_customer']);
/** Refund ids: `re_` for card refunds, `pyr_` for some other payment methods. */
export const REFUND_ID_PATTERN = /^(re|pyr)_[A-Za-z0-9]{1,250}$/;

/** The Refund fields the connector reads; everything else is ignored. */
export interface RefundView {
  id: string;
  status: string;
  amount: number;
  currency: string;
  /** The PaymentIntent refunded (an id; an expanded object is reduced to its id). */
  paymentIntent: string | null;
  metadata: Record<string, string>;
  created: number;
}

/**
 * Refund status → our words: succeeded ends refunded; failed and canceled end failed; pending,
 * requires_action and anything unknown stay pending (only an explicit outcome ends a refund).
 */
export function mapRefundStatus(status: unknown): RefundState {
  switch (status) {
    case 'succeeded':
      return 'succeeded';
    case 'failed':
    case 'canceled':
      return 'failed';
    case 'pending':
    case 'requires_action':
    default:
      return 'pending';
  }
}

/** Read the fields we rely on from an untrusted Refund JSON; null when malformed. */
export function readRefund(value: unknown): RefundView | null {
  if (!value || typeof value !== 'object' || Array.isArray(value)) return null;
  const o = value as Record<string, unknown>;
  if (o['object'] !== 'refund') return null;
  if (typeof o['id'] !== 'string' || !REFUND_ID_PATTERN.test(o['id'])) return null;
  if (typeof o['status'] !== 'string' || o['status'] === '') return null;
  if (typeof o['amount'] !== 'number' || !Number.isSafeInteger(o['amount'])) return null;
  if (typeof o['currency'] !== 'string') return null;
  const pi = o['payment_intent'];
  let paymentIntent: string | null = null;
  if (typeof pi === 'string') paymentIntent = pi;
  else if (pi && typeof pi === 'object' && typeof (pi as Record<string, unknown>)['id'] === 'string') paymentIntent = (pi as Record<string, string>)['id']!;
  else if (pi !== null && pi !== undefined) return null;
  // Stripe documents `metadata` as nullable on refunds.
  const metadata = o['metadata'] ?? {};
  if (typeof metadata !== 'object' || Array.isArray(metadata)) return null;
  for (const v of Object.values(metadata as object)) if (typeof v !== 'string') return null;
  return {
    id: o['id'],
    status: o['status'],
    amount: o['amount'],
    currency: o['currency'],
    paymentIntent,
    metadata: { ...(metadata as Record<string, string>) },
    created: typeof o['created'] === 'number' ? o['created'] : 0,
  };
}

export type RefundSnapshotResult = { ok: true; snapshot: RefundSnapshot } | { ok: false; reason: string };

/**
 * A Refund as a RefundSnapshot. `channelReference` comes from the refund's own metadata (we put
 * it there at create time) unless the caller already knows it; a refund without either is not
 * one we can attribute.
 */
export function snapshotFromRefund(refund: RefundView, knownReference?: string): RefundSnapshotResult {
  const channelReference = knownReference ?? refund.metadata[REFERENCE_METADATA_KEY];
  if (!channelReference) return { ok: false, reason: `refund ${refund.id} has no metadata.${REFERENCE_METADATA_KEY}` };
  const money = fromStripeAmount(refund.amount, refund.currency);
  if (!money || money.amountMinor === 0n) return { ok: false, reason: `refund ${refund.id} has an unusable amount ${refund.amount} ${JSON.stringify(refund.currency)}` };
  const refundReference = refund.metadata[REFUND_REFERENCE_METADATA_KEY];
  return {
    ok: true,
    snapshot: {
      state: mapRefundStatus(refund.status),
      ...(refundReference ? { refundReference } : {}),
      channelRefundId: refund.id,
      channelReference,
      amountMinor: money.amountMinor,
      currency: money.currency,
      rawStatus: refund.status,
    },
  };
}

/**
 * Among refunds carrying one refund number (only possible when an Idempotency-Key expired and a
 * create was repeated elsewhere), the one that decides: succeeded, then still in progress, then
 * the newest.
 */
export function decisiveRefund(refunds: readonly RefundView[]): RefundView | null {
  if (refunds.length === 0) return null;
  const rank = (r: RefundView) => (r.status === 'succeeded' ? 0 : mapRefundStatus(r.status) === 'pending' ? 1 : 2);
  return [...refunds].sort((a, b) => rank(a) - rank(b) || b.created - a.created || (a.id < b.id ? 1 : -1))[0]!;
}

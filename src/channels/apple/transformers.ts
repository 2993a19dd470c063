/**
 * Apple wire details that are not signatures: milliunit prices, identifiers, notification types,
 * the mapping of a verified transaction to our words, and redaction for the audit log. Pure.
 */
import { currencyExponent, MAX_AMOUNT_MINOR, normalizeCurrency } from '../../domain/money.ts';
import type { ChannelTradeState } from '../types.ts';

/** One currency unit is 1000 milliunits (JWSTransaction `price`). */
const MILLI_EXPONENT = 3;

/**
 * Apple `price` (milliunits of `currency`, the total for the quantity bought) → our minor units,
 * exactly. Null when the currency is unknown to us, the price is not a non-negative safe integer,
 * or it has a fraction of a minor unit (e.g. 1995 milli-USD = 1.995 USD).
 */
export function priceMilliToMinor(priceMilli: unknown, currencyInput: unknown): { amountMinor: bigint; currency: string } | null {
  if (typeof currencyInput !== 'string') return null;
  const currency = normalizeCurrency(currencyInput);
  if (!currency || currencyInput !== currency) return null; // Apple sends upper-case ISO 4217 codes
  if (typeof priceMilli !== 'number' || !Number.isSafeInteger(priceMilli) || priceMilli < 0) return null;
  const milli = BigInt(priceMilli);
  const exponent = currencyExponent(currency);
  let amountMinor: bigint;
  if (exponent <= MILLI_EXPONENT) {
    const factor = 10n ** BigInt(MILLI_EXPONENT - exponent);
    if (milli % factor !== 0n) return null;
    amountMinor = milli / factor;
  } else {
    amountMinor = milli * 10n ** BigInt(exponent - MILLI_EXPONENT);
  }
  if (amountMinor > MAX_AMOUNT_MINOR) return null;
  return { amountMinor, currency };
}

/** Our minor units → Apple milliunits (the sandbox writing `price`). */
export function minorToPriceMilli(amountMinor: bigint, currency: string): bigint {
  const exponent = currencyExponent(currency);
  return exponent <= MILLI_EXPONENT ? amountMinor * 10n ** BigInt(MILLI_EXPONENT - exponent) : amountMinor / 10n ** BigInt(exponent - MILLI_EXPONENT);
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** A UUID in Apple's canonical form (lower case), or null. */
export function canonicalUuid(value: unknown): string | null {
  return typeof value === 'string' && UUID.test(value) ? value.toLowerCase() : null;
}

/** App Store Connect product ids: alphanumerics, underscores and periods. */
export function isAppStoreProductId(value: unknown): value is string {
  return typeof value === 'string' && /^[A-Za-z0-9._]{1,255}$/.test(value);
}

/** Apple transaction ids are decimal digit strings. */
export function isTransactionId(value: unknown): value is string {
  return typeof value === 'string' && /^\d{1,32}$/.test(value);
}

/** StoreKit's limit on the quantity of one purchase. */
export const MAX_PURCHASE_QUANTITY = 10;

/** Notification types that carry a purchase we can settle a payment with. */
export const PAYMENT_NOTIFICATION_TYPES: ReadonlySet<string> = new Set(['ONE_TIME_CHARGE', 'SUBSCRIBED', 'DID_RENEW']);

/**
 * Notification types that report money the App Store gave back for a transaction. REVOKE is
 * normally Family Sharing taking away a shared entitlement (no money moves: see refundOfTransaction).
 */
export const REFUND_NOTIFICATION_TYPES: ReadonlySet<string> = new Set(['REFUND', 'REVOKE']);

/** The verified transaction fields we rely on. */
export interface VerifiedTransaction {
  transactionId?: string;
  productId?: string;
  appAccountToken?: string;
  quantity?: number;
  price?: number;
  currency?: string;
  revocationDate?: number;
  revocationReason?: number;
  /** REFUND_FULL, REFUND_PRORATED or FAMILY_REVOKE (newer notifications). */
  revocationType?: string;
  /** Share refunded, in milliunits of a percent: 100000 = 100 %. */
  revocationPercentage?: number;
  /** PURCHASED, or FAMILY_SHARED for a family member's copy of someone else's purchase. */
  inAppOwnershipType?: string;
  type?: string;
  environment?: string;
  purchaseDate?: number;
  signedDate?: number;
}

export type TransactionTrade =
  | { ok: true; state: ChannelTradeState; channelReference: string; channelTransactionId: string; amountMinor: bigint; currency: string; rawStatus: string }
  | { ok: false; code: 'reference_missing' | 'transaction_id_missing' | 'price_invalid'; reason: string };

/**
 * A verified transaction in our words. A revoked transaction (refunded, or taken back by Apple)
 * is not a success: it ends the attempt as failed. Anything else verified is paid.
 */
export function tradeOfTransaction(tx: VerifiedTransaction, rawStatus: string): TransactionTrade {
  const reference = canonicalUuid(tx.appAccountToken);
  if (!reference) return { ok: false, code: 'reference_missing', reason: 'transaction has no appAccountToken (not bought through Knowpay)' };
  if (!isTransactionId(tx.transactionId)) return { ok: false, code: 'transaction_id_missing', reason: 'transaction has no transactionId' };
  const money = priceMilliToMinor(tx.price, tx.currency);
  if (!money) return { ok: false, code: 'price_invalid', reason: `price ${JSON.stringify(tx.price)} ${JSON.stringify(tx.currency)} is not an exact amount in a known currency` };
  const revoked = tx.revocationDate !== undefined;
  return {
    ok: true,
    state: revoked ? 'failed' : 'succeeded',
    channelReference: reference,
    channelTransactionId: tx.transactionId,
    amountMinor: money.amountMinor,
    currency: money.currency,
    rawStatus: revoked ? `REVOKED${tx.revocationReason !== undefined ? `:${tx.revocationReason}` : ''}` : rawStatus,
  };
}

export type TransactionRefund =
  | { ok: true; channelReference: string; channelTransactionId: string; channelRefundId: string; amountMinor: bigint; currency: string; rawStatus: string }
  | { ok: false; code: 'reference_missing' | 'family_sharing' | 'nothing_refunded'; reason: string }
  | { ok: false; code: 'transaction_id_missing' | 'not_revoked' | 'price_invalid' | 'percentage_invalid'; reason: string };

/** 100 % in Apple's revocationPercentage (milliunits of a percent). */
const FULL_PERCENTAGE_MILLI = 100_000n;

/**
 * A verified, revoked transaction (REFUND, REVOKE) as a refund the store started. Apple refunds a
 * whole transaction (revocationType REFUND_FULL, or absent in older notifications); the amount is
 * its price, converted exactly. For REFUND_PRORATED the share is revocationPercentage of that
 * amount, rounded half up to a minor unit (the only rounding here; Apple states no refunded amount).
 * channelRefundId = `${transactionId}:refund`: the same for Apple's retries, for a REFUND and a
 * REVOKE of the same transaction, and for the Server API's copy, so a refund is recorded once.
 *
 * Not a refund of our money (ok: false, the caller acknowledges them as ignored):
 * - no appAccountToken: not bought through Knowpay;
 * - a family member's copy (inAppOwnershipType FAMILY_SHARED, revocationType FAMILY_REVOKE): the
 *   purchaser disabled Family Sharing, left the family, or was refunded — in the last case the
 *   purchaser's own transaction comes as REFUND; the member paid nothing;
 * - a share that rounds to nothing.
 */
export function refundOfTransaction(tx: VerifiedTransaction, type: string): TransactionRefund {
  const reference = canonicalUuid(tx.appAccountToken);
  if (!reference) return { ok: false, code: 'reference_missing', reason: 'transaction has no appAccountToken (not bought through Knowpay)' };
  if (tx.inAppOwnershipType === 'FAMILY_SHARED' || tx.revocationType === 'FAMILY_REVOKE') {
    return { ok: false, code: 'family_sharing', reason: `${type} of a Family Sharing copy (${String(tx.inAppOwnershipType ?? tx.revocationType)}): the member paid nothing; a refund of the purchase itself comes as REFUND` };
  }
  if (!isTransactionId(tx.transactionId)) return { ok: false, code: 'transaction_id_missing', reason: 'transaction has no transactionId' };
  if (typeof tx.revocationDate !== 'number' || !Number.isFinite(tx.revocationDate)) {
    return { ok: false, code: 'not_revoked', reason: `${type} for transaction ${tx.transactionId}, which has no revocationDate` };
  }
  const money = priceMilliToMinor(tx.price, tx.currency);
  if (!money) return { ok: false, code: 'price_invalid', reason: `price ${JSON.stringify(tx.price)} ${JSON.stringify(tx.currency)} is not an exact amount in a known currency` };
  let amountMinor = money.amountMinor;
  const prorated = tx.revocationType === 'REFUND_PRORATED' || (tx.revocationPercentage !== undefined && tx.revocationPercentage !== Number(FULL_PERCENTAGE_MILLI));
  if (prorated) {
    const pct = tx.revocationPercentage;
    if (typeof pct !== 'number' || !Number.isSafeInteger(pct) || pct < 0 || BigInt(pct) > FULL_PERCENTAGE_MILLI) {
      return { ok: false, code: 'percentage_invalid', reason: `revocationPercentage ${JSON.stringify(pct)} is not 0..100000 milli-percent` };
    }
    amountMinor = (money.amountMinor * BigInt(pct) * 2n + FULL_PERCENTAGE_MILLI) / (2n * FULL_PERCENTAGE_MILLI);
    if (amountMinor === 0n) return { ok: false, code: 'nothing_refunded', reason: `${type} of ${pct / 1000} % of ${money.amountMinor} ${money.currency} refunds nothing` };
  }
  const parts = [type, tx.revocationReason !== undefined ? String(tx.revocationReason) : null, prorated ? `REFUND_PRORATED:${String(tx.revocationPercentage)}` : null];
  return {
    ok: true,
    channelReference: reference,
    channelTransactionId: tx.transactionId,
    channelRefundId: `${tx.transactionId}:refund`,
    amountMinor,
    currency: money.currency,
    rawStatus: parts.filter((p) => p !== null).join(':'),
  };
}

// ---- Redaction -------------------------------------------------------------------------------------

const REDACTED = '[REDACTED]';
const SECRET_KEYS = /^(authorization|private_?key|privatekey|signing_?key|signingkey|api_?key|token|bearer)$/i;
const JWS_SHAPE = /^[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}$/;

/**
 * Deep copy for the audit log: keys and tokens removed; a JWS keeps its readable payload but loses
 * its signature and certificate chain (`<jws payload=…>`), so the log shows what was said, not a
 * replayable proof.
 */
export function redactSecrets(value: unknown, depth = 0): unknown {
  if (depth > 20) return REDACTED;
  if (typeof value === 'bigint') return value.toString();
  if (typeof value === 'string') return JWS_SHAPE.test(value) ? redactJws(value) : value.includes('PRIVATE KEY') ? REDACTED : value;
  if (Array.isArray(value)) return value.map((v) => redactSecrets(v, depth + 1));
  if (value && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value as Record<string, unknown>)) out[k] = SECRET_KEYS.test(k) ? REDACTED : redactSecrets(v, depth + 1);
    return out;
  }
  return value;
}

function redactJws(jws: string): string {
  const payload = jws.split('.')[1]!;
  try {
    const decoded = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as unknown;
    return `<jws payload=${JSON.stringify(redactSecrets(decoded, 1))} signature=${REDACTED}>`;
  } catch {
    return `<jws ${REDACTED}>`;
  }
}

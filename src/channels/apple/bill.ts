/**
 * Apple's bill for per-transaction reconciliation: the App Store Server API's Get Notification
 * History (`POST /inApps/v1/notifications/history`) for one day, saved as JSON Lines, one history
 * item per line as Apple answers it: `{"signedPayload": "<JWS>", "sendAttempts": [{attemptDate,
 * sendAttemptResult}, …]}`. A line may also be a whole history answer (`{"notificationHistory":
 * […], "hasMore", "paginationToken"}`), whose items are read in order.
 *
 * Why this and not Sales and Financial reports: those are aggregates without transaction ids. The
 * history lists every notification Apple sent in the window, delivered or not, so it is the record
 * that finds a notification we never received.
 *
 * Signatures are NOT verified here: the JWS payloads (the notification and its nested
 * signedTransactionInfo) are only decoded. The download (bill-download.ts) verifies every item with
 * the connector's SignedDataVerifier before it writes the file, and an uploaded file is the platform
 * operator's own evidence, like any other channel's bill: reconciliation compares it with our
 * ledger and never moves money on its word alone (a lost payment is healed only after Apple's
 * Server API confirms it, signed, through queryPayment).
 *
 * Normalised (ledger.md's one line shape), with the connector's own rules (transformers.ts):
 * - ONE_TIME_CHARGE, SUBSCRIBED, DID_RENEW (PAYMENT_NOTIFICATION_TYPES) → a payment line:
 *   channelReference = appAccountToken (lower case: our reference), channelTransactionId =
 *   transactionId, amount = price (milliunits) in minor units of the currency, exactly; no fee
 *   (the notification carries no commission, so reconciliation skips the fee check);
 *   occurredAt = purchaseDate.
 * - REFUND and REVOKE (REFUND_NOTIFICATION_TYPES) → a refund line, as refundOfTransaction makes
 *   it for the notification: channelTransactionId = `${transactionId}:refund` (our
 *   channel_refund_id), amount = the refunded price (a REFUND_PRORATED share rounded half up);
 *   occurredAt = revocationDate. Family Sharing copies and purchases without our token are skipped.
 * - Every other type (TEST, CONSUMPTION_REQUEST, REFUND_DECLINED, REFUND_REVERSED, …) is skipped,
 *   as are purchases without an appAccountToken (not bought through Knowpay) and free ones.
 * - The same notification twice (same notificationUUID) yields one line.
 * Reading streams with a bounded line length; memory grows only with the notification ids kept
 * for de-duplication (16 bytes each).
 */
import { readJsonLines, writeJsonLines } from '../../reconciliation/json-lines.ts';
import { currencyExponent, MAX_AMOUNT_MINOR, normalizeCurrency } from '../../domain/money.ts';
import { BillFormatError, MAX_BILL_LINES, type BillLine } from '../../reconciliation/types.ts';
import {
  canonicalUuid, isTransactionId, PAYMENT_NOTIFICATION_TYPES, refundOfTransaction, REFUND_NOTIFICATION_TYPES, type VerifiedTransaction,
} from './transformers.ts';

/** A history item is a notification (a few KiB with its certificate chains and nested JWS): far below this. */
export const MAX_APPLE_BILL_LINE_BYTES = 1024 * 1024;

/** One Get Notification History record (NotificationHistoryResponseItem). */
export interface AppleHistoryItem {
  signedPayload: string;
  sendAttempts?: AppleSendAttempt[];
  [key: string]: unknown;
}

export interface AppleSendAttempt {
  attemptDate: number;
  /** SUCCESS, TIMED_OUT, NO_RESPONSE, UNSUCCESSFUL_HTTP_RESPONSE_CODE, … (Apple's SendAttemptResult). */
  sendAttemptResult: string;
}

const NOT_HISTORY = 'not an App Store Get Notification History file (JSON Lines of {signedPayload, sendAttempts})';

// ---- Reading -----------------------------------------------------------------------------------------

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const JWS = /^([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)$/;

/** The payload of a compact JWS, decoded without any verification (see the file comment). */
function jwsPayload(value: unknown, what: string, where: string): Record<string, unknown> {
  const m = typeof value === 'string' ? JWS.exec(value) : null;
  if (!m) throw new BillFormatError(`${where}: ${what} is not a JWS (three base64url parts): ${NOT_HISTORY}`);
  let payload: unknown;
  try {
    payload = JSON.parse(Buffer.from(m[2]!, 'base64url').toString('utf8'));
  } catch {
    throw new BillFormatError(`${where}: the payload of ${what} is not JSON: ${NOT_HISTORY}`);
  }
  if (!isObject(payload)) throw new BillFormatError(`${where}: the payload of ${what} is not a JSON object: ${NOT_HISTORY}`);
  return payload;
}

/** Apple `price` (milliunits of `currency`) → minor units, exactly; BillFormatError saying why not. */
function priceToMinor(tx: VerifiedTransaction, where: string): { amount: bigint; currency: string } {
  const code = tx.currency;
  const currency = typeof code === 'string' ? normalizeCurrency(code) : null;
  // Apple sends upper-case ISO 4217 codes; the connector accepts nothing else either.
  if (!currency || code !== currency) throw new BillFormatError(`${where}: transaction ${String(tx.transactionId)} has unknown currency ${JSON.stringify(code)?.slice(0, 20)}`);
  const price = tx.price;
  if (typeof price !== 'number' || !Number.isSafeInteger(price) || price < 0) {
    throw new BillFormatError(`${where}: transaction ${String(tx.transactionId)} has price ${JSON.stringify(price)?.slice(0, 30)}, not a whole number of milliunits`);
  }
  const exponent = currencyExponent(currency);
  const milli = BigInt(price);
  let amount: bigint;
  if (exponent <= 3) {
    const factor = 10n ** BigInt(3 - exponent);
    if (milli % factor !== 0n) {
      throw new BillFormatError(`${where}: transaction ${String(tx.transactionId)} has price ${price} milliunits of ${currency}, not a whole number of minor units (${currency} has ${exponent} decimals)`);
    }
    amount = milli / factor;
  } else {
    amount = milli * 10n ** BigInt(exponent - 3);
  }
  if (amount > MAX_AMOUNT_MINOR) throw new BillFormatError(`${where}: transaction ${String(tx.transactionId)} has price ${price} milliunits of ${currency}, above the largest amount accepted`);
  return { amount, currency };
}

const dateOf = (ms: unknown): { occurredAt: Date } | Record<string, never> =>
  typeof ms === 'number' && Number.isFinite(ms) && Math.abs(ms) <= 8.64e15 ? { occurredAt: new Date(ms) } : {};

/** The notificationUUIDs already read: 128 bits each in an open-addressing table (no string per id). */
class UuidSet {
  #keys = new BigUint64Array(2 * 1024);
  #used = new Uint8Array(1024);
  #size = 0;

  /** True when the id was new. */
  add(uuid: string): boolean {
    const hex = uuid.replace(/-/g, '');
    const hi = BigInt(`0x${hex.slice(0, 16)}`);
    const lo = BigInt(`0x${hex.slice(16)}`);
    if (this.#size * 2 >= this.#used.length) this.#grow();
    return this.#insert(hi, lo);
  }

  #insert(hi: bigint, lo: bigint): boolean {
    const mask = this.#used.length - 1;
    for (let i = Number((hi ^ lo) & BigInt(mask)); ; i = (i + 1) & mask) {
      if (!this.#used[i]) {
        this.#used[i] = 1;
        this.#keys[2 * i] = hi;
        this.#keys[2 * i + 1] = lo;
        this.#size++;
        return true;
      }
      if (this.#keys[2 * i] === hi && this.#keys[2 * i + 1] === lo) return false;
    }
  }

  #grow(): void {
    const keys = this.#keys;
    const used = this.#used;
    this.#keys = new BigUint64Array(keys.length * 2);
    this.#used = new Uint8Array(used.length * 2);
    this.#size = 0;
    for (let i = 0; i < used.length; i++) if (used[i]) this.#insert(keys[2 * i]!, keys[2 * i + 1]!);
  }
}

/** One history item → a line, or null when it is nothing of ours. BillFormatError when it is no history item at all. */
function normalise(item: unknown, lineNo: number, where: string, seen: UuidSet): BillLine | null {
  if (!isObject(item) || typeof item['signedPayload'] !== 'string') throw new BillFormatError(`${where}: no signedPayload: ${NOT_HISTORY}`);
  if (item['sendAttempts'] !== undefined && !Array.isArray(item['sendAttempts'])) throw new BillFormatError(`${where}: sendAttempts is not an array: ${NOT_HISTORY}`);
  const notification = jwsPayload(item['signedPayload'], 'signedPayload', where);
  const type = notification['notificationType'];
  const uuid = canonicalUuid(notification['notificationUUID']);
  if (typeof type !== 'string' || type === '' || !uuid) {
    throw new BillFormatError(`${where}: signedPayload has no notificationType or notificationUUID: not an App Store Server Notification V2, ${NOT_HISTORY}`);
  }
  if (!seen.add(uuid)) return null; // the same notification again: one line
  const isPayment = PAYMENT_NOTIFICATION_TYPES.has(type);
  const isRefund = REFUND_NOTIFICATION_TYPES.has(type);
  if (!isPayment && !isRefund) return null;
  const data = notification['data'];
  const signedTransaction = isObject(data) ? data['signedTransactionInfo'] : undefined;
  if (signedTransaction === undefined) throw new BillFormatError(`${where}: ${type} notification ${uuid} has no data.signedTransactionInfo`);
  const tx = jwsPayload(signedTransaction, `the signedTransactionInfo of notification ${uuid}`, where) as VerifiedTransaction;
  const reference = canonicalUuid(tx.appAccountToken);
  if (!reference) return null; // not bought through Knowpay (no appAccountToken of ours)
  if (isPayment) {
    if (!isTransactionId(tx.transactionId)) throw new BillFormatError(`${where}: ${type} notification ${uuid} carries a transaction without a transactionId`);
    const { amount, currency } = priceToMinor(tx, where);
    if (amount === 0n) return null; // a free purchase (an offer code): no money to reconcile
    return { lineNo, kind: 'payment', channelReference: reference, channelTransactionId: tx.transactionId, amount, currency, ...dateOf(tx.purchaseDate) };
  }
  // Exactly the refund the connector records for this notification (same id, same amount).
  const refund = refundOfTransaction(tx, type);
  if (!refund.ok) {
    if (refund.code === 'reference_missing' || refund.code === 'family_sharing' || refund.code === 'nothing_refunded') return null;
    if (refund.code === 'price_invalid') priceToMinor(tx, where); // throws, saying what is wrong with the price
    throw new BillFormatError(`${where}: ${type} notification ${uuid}: ${refund.reason}`);
  }
  return {
    lineNo, kind: 'refund', channelReference: refund.channelReference, channelTransactionId: refund.channelRefundId,
    amount: refund.amountMinor, currency: refund.currency, ...dateOf(tx.revocationDate),
  };
}

/** Stream the normalised lines of an Apple bill (JSON Lines of Get Notification History items). */
export async function* readAppleBill(path: string): AsyncGenerator<BillLine> {
  const seen = new UuidSet();
  let items = 0;
  for await (const { lineNo, value } of readJsonLines(path, { maxLineChars: MAX_APPLE_BILL_LINE_BYTES, what: NOT_HISTORY })) {
    const page = isObject(value) && Array.isArray(value['notificationHistory']) ? (value['notificationHistory'] as unknown[]) : null;
    const list = page ?? [value];
    for (const [i, item] of list.entries()) {
      items++;
      if (items > MAX_BILL_LINES) throw new BillFormatError(`more than ${MAX_BILL_LINES} notifications`);
      const l = normalise(item, items, page ? `line ${lineNo}, item ${i + 1}` : `line ${lineNo}`, seen);
      if (l) yield l;
    }
  }
}

// ---- Writing (tests; the download writes Apple's items as they came) ----------------------------------

/** A history item as Apple answers it. */
export function appleHistoryItem(signedPayload: string, sendAttempts: AppleSendAttempt[] = [{ attemptDate: Date.now(), sendAttemptResult: 'SUCCESS' }]): AppleHistoryItem {
  return { signedPayload, sendAttempts };
}

/** Write items as JSON Lines to `path` (streamed, with backpressure). */
export function writeAppleBill(path: string, items: Iterable<AppleHistoryItem> | AsyncIterable<AppleHistoryItem>): Promise<number> {
  return writeJsonLines(path, items);
}

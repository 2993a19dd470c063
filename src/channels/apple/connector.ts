/**
 * Apple in-app purchase connector over the official `@apple/app-store-server-library`.
 *
 * How an IAP differs from the other channels: nothing is created at Apple before the buyer pays.
 * The app calls StoreKit with the product id and our reference as `appAccountToken` (a UUID);
 * Apple then proves the purchase with a signed transaction (JWS) that reaches us twice — from the
 * app (`confirmPayment`) and in an App Store Server Notification V2 (`verifyNotification`).
 * Both go through `SignedDataVerifier` (x5c chain to a trusted root, Apple's marker OIDs, ES256,
 * bundle id, environment), then our checks: appAccountToken = our reference, the product we sold,
 * and the price (milliunits → minor units, exact) which the service compares with the payment.
 *
 * Refunds: Apple offers merchants no refund call — the buyer asks Apple (reportaproblem.apple.com),
 * and Apple decides. So refundPayment/queryRefund are absent, and refunds arrive as notifications:
 * - `REFUND` (and `REVOKE` of a purchase that is not a Family Sharing copy): the revoked
 *   transaction → `kind: 'refund'`, state succeeded, no refundReference, channelRefundId
 *   `${transactionId}:refund`, channelReference = appAccountToken, amount = the transaction's price
 *   (exact; a REFUND_PRORATED share rounded half up), currency.
 * - `REFUND_DECLINED`: nothing changed → ignored.
 * - `REFUND_REVERSED`: Apple took an earlier refund back and charged the buyer again. Ignored with
 *   a reason saying so: a recorded refund is final in Knowpay, so a person re-grants the content
 *   (and books the money) by hand.
 *
 * With App Store Server API credentials (`serverApi`), two more things:
 * - `queryPayment` with a channelTransactionId (the worker's poll of a payment that has one, the
 *   reconciliation healing a line of Apple's bill) asks Get Transaction Info and answers the
 *   verified transaction as confirmPayment does; a transaction of another reference is refused.
 * - `downloadBill` saves the UTC day's Get Notification History, every item verified
 *   (bill-download.ts; bill.ts reads it).
 *
 * Holds no state; every call is reported to the `audit` hook with signatures and keys redacted.
 */
import {
  APIException, type JWSTransactionDecodedPayload, type NotificationHistoryRequest, type NotificationHistoryResponse, type ResponseBodyV2DecodedPayload,
  type SignedDataVerifier,
} from '@apple/app-store-server-library';
import {
  ChannelError,
  type Acknowledgement,
  type ChannelConnector,
  type CreatePaymentInput,
  type CreatePaymentResult,
  type NotificationInput,
  type TradeSnapshot,
  type VerifyResult,
} from '../types.ts';
import type { ChannelAuditEntry } from '../module.ts';
import { MAX_AMOUNT_MINOR, normalizeCurrency } from '../../domain/money.ts';
import { createVerifier, MAX_JWS_CHARS, verificationFailure, type AppleEnvironment } from './jws.ts';
import { AppStoreServerApi, type ServerApiConfig } from './server-api.ts';
import { downloadAppleBill, type ItemCheck } from './bill-download.ts';
import {
  canonicalUuid, isAppStoreProductId, isTransactionId, MAX_PURCHASE_QUANTITY, PAYMENT_NOTIFICATION_TYPES, redactSecrets, refundOfTransaction,
  REFUND_NOTIFICATION_TYPES, tradeOfTransaction, type VerifiedTransaction,
} from './transformers.ts';

export const APPLE_CHANNEL = 'apple_iap';
export const APPLE_IAP_METHODS = ['in_app'] as const;

/** What we sold for a reference (read from our own payments), to compare with Apple's transaction. */
export interface ExpectedPurchase {
  productId: string;
  quantity: number;
}

export interface AppleIapConfig {
  /** The app's bundle id; also the connector's appId (every notification carries it). */
  bundleId: string;
  environment: AppleEnvironment;
  /** Required in Production. */
  appAppleId?: number;
  /** DER roots: Apple's (apple-roots.ts) in real mode, the sandbox's own root in sandbox mode. */
  rootCertificates: readonly Buffer[];
  /** OCSP and current-date certificate checks (real mode); off in the sandbox, which has no OCSP responder. */
  enableOnlineChecks: boolean;
  /** App Store Server API access, for confirming by transaction id. Optional. */
  serverApi?: Omit<ServerApiConfig, 'bundleId' | 'environment'>;
  /** Looks up what a reference bought; null when the reference is not ours (the service decides then). */
  expectedPurchase?: (channelReference: string) => Promise<ExpectedPurchase | null>;
  /** Notifications signed longer ago than this are refused (Apple's retries span about 6.5 days). */
  maxNotificationAgeMs?: number;
  now?: () => Date;
  audit?: (entry: ChannelAuditEntry) => void;
}

/** Apple retries at 1, 12, 24, 48, 72 h after the first attempt (157 h); one day of margin. */
export const DEFAULT_MAX_NOTIFICATION_AGE_MS = 8 * 24 * 3600_000;
const MAX_FUTURE_SKEW_MS = 5 * 60_000;
const NOTIFY_MAX_BYTES = 256 * 1024;

export function createAppleIapConnector(config: AppleIapConfig): ChannelConnector & { readonly bundleId: string } {
  const verifier: SignedDataVerifier = createVerifier({
    rootCertificates: config.rootCertificates,
    enableOnlineChecks: config.enableOnlineChecks,
    environment: config.environment,
    bundleId: config.bundleId,
    ...(config.appAppleId !== undefined ? { appAppleId: config.appAppleId } : {}),
  });
  const serverApi = config.serverApi ? new AppStoreServerApi({ ...config.serverApi, bundleId: config.bundleId, environment: config.environment }) : null;
  const now = config.now ?? (() => new Date());
  const maxAgeMs = config.maxNotificationAgeMs ?? DEFAULT_MAX_NOTIFICATION_AGE_MS;
  if (!(maxAgeMs > 0)) throw new TypeError('maxNotificationAgeMs must be positive');

  function audit(entry: ChannelAuditEntry): void {
    if (!config.audit) return;
    try {
      config.audit({ ...entry, request: redactSecrets(entry.request), response: redactSecrets(entry.response) });
    } catch {
      // An audit sink failure must never change the outcome of a payment call.
    }
  }

  /** No call to Apple: the app starts the purchase in StoreKit with these parameters. */
  async function createPayment(input: CreatePaymentInput): Promise<CreatePaymentResult> {
    if (input.method !== 'in_app') throw refuse('method_not_supported', `apple_iap supports only method in_app, got ${input.method}`);
    const token = canonicalUuid(input.channelReference);
    if (!token || token !== input.channelReference) throw refuse('reference_invalid', 'the appAccountToken (channel reference) must be a lower-case UUID');
    if (!normalizeCurrency(input.currency)) throw refuse('currency_not_supported', `unknown currency ${input.currency}`);
    if (input.amountMinor <= 0n || input.amountMinor > MAX_AMOUNT_MINOR) throw refuse('amount_invalid', `amount ${input.amountMinor} out of range`);
    const { productId, quantity } = purchaseOf(input);
    const action = { type: 'app' as const, params: { product_id: productId, app_account_token: token, quantity } };
    audit({ operation: 'create_payment', channelReference: token, request: { method: input.method, items: input.items, amount_minor: input.amountMinor, currency: input.currency }, response: { action, note: 'no call to Apple: the app buys through StoreKit' }, durationMs: 0 });
    return { action };
  }

  /**
   * Apple's Server API finds a transaction by its transactionId (or an order id from the buyer's
   * receipt e-mail), never by appAccountToken, and we learn the transactionId only from the
   * signed transaction itself. So without a channelTransactionId an active query cannot know: it
   * answers pending, and the payment is settled by the app's confirmation or by the notification.
   *
   * With one (a payment that already has it, or a line of Apple's bill being healed), Get
   * Transaction Info answers the transaction signed by Apple, verified and checked as in
   * confirmPayment. An empty channelReference (a bill line that names only the transaction)
   * learns the reference from the transaction; a non-empty one must be the transaction's
   * appAccountToken, else it is another payment's transaction and no snapshot is answered.
   */
  async function queryPayment(input: { channelReference: string; currency: string; channelTransactionId?: string }): Promise<TradeSnapshot> {
    const transactionId = input.channelTransactionId;
    if (transactionId === undefined || transactionId === '') {
      return { state: 'pending', channelReference: input.channelReference, rawStatus: 'UNKNOWABLE_WITHOUT_TRANSACTION_ID' };
    }
    if (!isTransactionId(transactionId)) throw refuse('transaction_id_invalid', `channel transaction id ${JSON.stringify(String(transactionId).slice(0, 40))} is not an App Store transaction id (digits)`);
    const wanted = input.channelReference === '' ? null : canonicalUuid(input.channelReference);
    if (input.channelReference !== '' && !wanted) throw refuse('reference_invalid', 'the payment reference (appAccountToken) is not a UUID');
    const started = Date.now();
    const tx = await verifyTransaction(await fetchTransaction(transactionId, input.channelReference));
    if (tx.transactionId !== transactionId) throw refuse('transaction_mismatch', `Apple answered transaction ${String(tx.transactionId)} for ${transactionId}`);
    const token = canonicalUuid(tx.appAccountToken);
    if (wanted && token !== wanted) {
      throw refuse('reference_mismatch', `transaction ${transactionId} belongs to another reference (appAccountToken ${token ?? 'none'}), not ${wanted}`);
    }
    if (!token) throw refuse('reference_missing', `transaction ${transactionId} has no appAccountToken (not bought through Knowpay)`);
    const snapshot = await snapshotOfTransaction(token, tx);
    audit({ operation: 'query_payment', channelReference: token, request: { transaction_id: transactionId }, response: { transaction: tx, snapshot }, durationMs: Date.now() - started });
    return snapshot;
  }

  /** A verified transaction whose appAccountToken is `reference`, checked (product, price) and answered as a snapshot. */
  async function snapshotOfTransaction(reference: string, tx: VerifiedTransaction): Promise<TradeSnapshot> {
    const productProblem = await checkProduct(reference, tx);
    if (productProblem) throw refuse(productProblem.split(':')[0]!, productProblem);
    const trade = tradeOfTransaction(tx, 'PURCHASED');
    if (!trade.ok) throw refuse(trade.code, trade.reason);
    return {
      state: trade.state, channelReference: trade.channelReference, channelTransactionId: trade.channelTransactionId,
      amountMinor: trade.amountMinor, currency: trade.currency, rawStatus: trade.rawStatus,
    };
  }

  /** There is no open trade at Apple to close: a purchase exists only once the buyer has paid. */
  async function closePayment(input: { channelReference: string; currency: string }): Promise<TradeSnapshot> {
    return { state: 'closed', channelReference: input.channelReference, rawStatus: 'NOTHING_TO_CLOSE_AT_APPLE' };
  }

  async function verifyTransaction(jws: string): Promise<VerifiedTransaction> {
    try {
      return (await verifier.verifyAndDecodeTransaction(jws)) as JWSTransactionDecodedPayload as VerifiedTransaction;
    } catch (err) {
      const failure = verificationFailure(err);
      if (!failure) throw err;
      throw new ChannelError(`signed transaction rejected: ${failure.name}`, APPLE_CHANNEL, 'invalid_signed_transaction', failure.retryable);
    }
  }

  async function fetchTransaction(transactionId: string, channelReference: string): Promise<string> {
    if (!serverApi) throw refuse('server_api_not_configured', 'confirming by transaction_id needs App Store Server API credentials; send signed_transaction instead');
    const started = Date.now();
    const request = { method: 'GET', path: `/inApps/v1/transactions/${transactionId}` };
    try {
      const response = await serverApi.getTransactionInfo(transactionId);
      audit({ operation: 'get_transaction_info', channelReference, request, response, durationMs: Date.now() - started });
      if (typeof response.signedTransactionInfo !== 'string') throw new ChannelError('Get Transaction Info answered without signedTransactionInfo', APPLE_CHANNEL, 'invalid_response', true);
      return response.signedTransactionInfo;
    } catch (err) {
      const channelError = toChannelError(err);
      if (!(err instanceof ChannelError)) {
        // `error` marks a failure on Apple's side or ours (it counts against the channel's health);
        // a 4xx about the client's transaction id (404, 400) is an answer, kept in `response`.
        const channelSide = channelError.retryable || channelError.code === 'unauthorized' || channelError.code === 'unexpected_error';
        audit({
          operation: 'get_transaction_info', channelReference, request, response: responseOf(err), durationMs: Date.now() - started,
          ...(channelSide ? { error: `${channelError.code}: ${channelError.message}` } : {}),
        });
      }
      throw channelError;
    }
  }

  async function checkProduct(reference: string, tx: VerifiedTransaction): Promise<string | null> {
    const expected = config.expectedPurchase ? await config.expectedPurchase(reference) : null;
    if (!expected) return null;
    if (tx.productId !== expected.productId) return `product_mismatch: sold ${expected.productId}, Apple says ${String(tx.productId)}`;
    if ((tx.quantity ?? 1) !== expected.quantity) return `quantity_mismatch: sold ${expected.quantity}, Apple says ${String(tx.quantity)}`;
    return null;
  }

  /**
   * The app's proof of purchase: `signed_transaction` (StoreKit's jwsRepresentation) or
   * `transaction_id` (fetched from the App Store Server API, signed by Apple). Verified either way.
   */
  async function confirmPayment(input: { channelReference: string; currency: string; amountMinor: bigint; payload: Record<string, unknown> }): Promise<TradeSnapshot> {
    const reference = canonicalUuid(input.channelReference);
    if (!reference) throw refuse('reference_invalid', 'the payment reference is not a UUID');
    const signed = input.payload['signed_transaction'];
    const transactionId = input.payload['transaction_id'];
    if (signed !== undefined && (typeof signed !== 'string' || signed === '' || signed.length > MAX_JWS_CHARS)) throw refuse('confirmation_payload_invalid', 'signed_transaction must be a JWS string');
    if (transactionId !== undefined && !isTransactionId(transactionId)) throw refuse('confirmation_payload_invalid', 'transaction_id must be a string of digits');
    if (signed === undefined && transactionId === undefined) throw refuse('confirmation_payload_invalid', 'send signed_transaction (StoreKit jwsRepresentation) or transaction_id');
    const started = Date.now();
    const jws = typeof signed === 'string' ? signed : await fetchTransaction(transactionId as string, reference);
    const tx = await verifyTransaction(jws);
    if (transactionId !== undefined && tx.transactionId !== transactionId) throw refuse('transaction_mismatch', `the signed transaction is ${String(tx.transactionId)}, not ${String(transactionId)}`);
    const token = canonicalUuid(tx.appAccountToken);
    if (token !== reference) throw refuse('reference_mismatch', `the transaction's appAccountToken ${String(tx.appAccountToken)} is not this payment's reference`);
    const snapshot = await snapshotOfTransaction(reference, tx);
    audit({ operation: 'confirm_payment', channelReference: reference, request: { signed_transaction: signed, transaction_id: transactionId }, response: { transaction: tx, snapshot }, durationMs: Date.now() - started });
    return snapshot;
  }

  // ---- The bill: Get Notification History of a UTC day ----------------------------------------------

  async function historyPage(api: AppStoreServerApi, billDate: string, paginationToken: string | null, request: NotificationHistoryRequest): Promise<NotificationHistoryResponse> {
    const started = Date.now();
    const auditRequest = { method: 'POST', path: '/inApps/v1/notifications/history', bill_date: billDate, start_date: request.startDate, end_date: request.endDate, next_page: paginationToken !== null };
    try {
      const response = await api.getNotificationHistory(paginationToken, request);
      // The audit keeps the count, not the signed payloads (the bill file has them).
      audit({ operation: 'get_notification_history', request: auditRequest, response: { notifications: response.notificationHistory?.length ?? 0, hasMore: response.hasMore ?? false }, durationMs: Date.now() - started });
      return response;
    } catch (err) {
      const channelError = toChannelError(err);
      audit({ operation: 'get_notification_history', request: auditRequest, response: responseOf(err), durationMs: Date.now() - started, error: `${channelError.code}: ${channelError.message}` });
      throw channelError;
    }
  }

  /** A history item: the notification and the transaction inside it, both verified like a notification we receive. */
  async function verifyHistoryItem(signedPayload: string): Promise<ItemCheck> {
    let decoded: ResponseBodyV2DecodedPayload;
    try {
      decoded = await verifier.verifyAndDecodeNotification(signedPayload);
    } catch (err) {
      const failure = verificationFailure(err);
      if (!failure) throw err;
      return { ok: false, reason: `signedPayload: ${failure.name}`, retryable: failure.retryable };
    }
    const signedTransaction = decoded.data?.signedTransactionInfo;
    if (signedTransaction !== undefined) {
      try {
        await verifier.verifyAndDecodeTransaction(signedTransaction);
      } catch (err) {
        const failure = verificationFailure(err);
        if (!failure) throw err;
        return { ok: false, reason: `signedTransactionInfo: ${failure.name}`, retryable: failure.retryable };
      }
    }
    return { ok: true };
  }

  async function downloadBill(input: { billDate: string; destination: string }): Promise<void> {
    const api = serverApi;
    if (!api) throw refuse('server_api_not_configured', 'downloading the Apple bill needs App Store Server API credentials');
    await downloadAppleBill({
      page: (token, request) => historyPage(api, input.billDate, token, request),
      verify: verifyHistoryItem,
      now,
    }, input);
  }

  async function verifyNotification(input: NotificationInput, currencyOf: (channelReference: string) => Promise<string | null>): Promise<VerifyResult> {
    try {
      return await verifyAndTranslate(input, currencyOf);
    } catch (err) {
      // Never throw for bad input; an unexpected failure (e.g. the product lookup) asks Apple to retry.
      return { ok: false, reason: `notification not processed: ${err instanceof Error ? err.message : String(err)}` };
    }
  }

  async function verifyAndTranslate(input: NotificationInput, currencyOf: (channelReference: string) => Promise<string | null>): Promise<VerifyResult> {
    const body = parseBody(input);
    if (!body.ok) return body;
    let decoded: ResponseBodyV2DecodedPayload;
    try {
      decoded = await verifier.verifyAndDecodeNotification(body.signedPayload);
    } catch (err) {
      const failure = verificationFailure(err);
      if (!failure) throw err;
      return { ok: false, reason: `signedPayload rejected: ${failure.name}` };
    }
    const eventId = canonicalUuid(decoded.notificationUUID);
    if (!eventId) return { ok: false, reason: 'notificationUUID missing' };
    const stale = checkSignedDate(decoded.signedDate, now(), maxAgeMs);
    if (stale) return { ok: false, reason: stale };
    const appId = decoded.data?.bundleId ?? decoded.summary?.bundleId ?? decoded.appData?.bundleId ?? config.bundleId;
    const type = String(decoded.notificationType ?? '');
    const rawStatus = decoded.subtype ? `${type}/${decoded.subtype}` : type;
    if (type === 'TEST') return { ok: true, notification: { eventId, kind: 'ignored', reason: 'TEST notification', appId } };

    const signedTransaction = decoded.data?.signedTransactionInfo;
    let tx: VerifiedTransaction | null = null;
    if (signedTransaction !== undefined) {
      try {
        tx = await verifyTransaction(signedTransaction);
      } catch (err) {
        if (err instanceof ChannelError) return { ok: false, reason: `signedTransactionInfo: ${err.message}` };
        throw err;
      }
    }
    const reference = canonicalUuid(tx?.appAccountToken);
    const ignored = (reason: string): VerifyResult => ({ ok: true, notification: { eventId, kind: 'ignored', reason, appId, ...(reference ? { channelReference: reference } : {}) } });
    if (type === 'REFUND_DECLINED') return ignored('REFUND_DECLINED: Apple declined the buyer\'s refund request; the payment stands');
    if (type === 'REFUND_REVERSED') {
      return ignored('REFUND_REVERSED: Apple reversed an earlier refund and charged the buyer again; a recorded refund stays final in Knowpay, so a person must re-grant the content and book the payment by hand');
    }
    if (REFUND_NOTIFICATION_TYPES.has(type)) {
      if (!tx) return { ok: false, reason: `${type} without signedTransactionInfo` };
      return translateRefund(eventId, appId, type, tx, currencyOf);
    }
    if (!PAYMENT_NOTIFICATION_TYPES.has(type)) return ignored(`${rawStatus || 'untyped'} notifications are not handled`);
    if (!tx) return { ok: false, reason: `${type} without signedTransactionInfo` };
    const trade = tradeOfTransaction(tx, rawStatus);
    if (!trade.ok) {
      if (trade.code === 'reference_missing') return { ok: true, notification: { eventId, kind: 'ignored', reason: trade.reason, appId } };
      return { ok: false, reason: trade.reason };
    }
    const productProblem = await checkProduct(trade.channelReference, tx);
    if (productProblem) return { ok: false, reason: productProblem };
    return {
      ok: true,
      notification: {
        eventId,
        kind: 'payment',
        appId,
        trade: {
          state: trade.state, channelReference: trade.channelReference, channelTransactionId: trade.channelTransactionId,
          amountMinor: trade.amountMinor, currency: trade.currency, rawStatus: trade.rawStatus,
        },
      },
    };
  }

  /** REFUND / REVOKE → a refund the store started (see the file comment). */
  async function translateRefund(
    eventId: string, appId: string, type: string, tx: VerifiedTransaction, currencyOf: (channelReference: string) => Promise<string | null>,
  ): Promise<VerifyResult> {
    const refund = refundOfTransaction(tx, type);
    if (!refund.ok) {
      if (refund.code === 'reference_missing' || refund.code === 'family_sharing' || refund.code === 'nothing_refunded') {
        const reference = canonicalUuid(tx.appAccountToken);
        return { ok: true, notification: { eventId, kind: 'ignored', reason: refund.reason, appId, ...(reference ? { channelReference: reference } : {}) } };
      }
      return { ok: false, reason: refund.reason };
    }
    const productProblem = await checkProduct(refund.channelReference, tx);
    if (productProblem) return { ok: false, reason: productProblem };
    // The service books the refund in the payment's currency: a transaction in another one is not this payment's.
    const currency = await currencyOf(refund.channelReference);
    if (currency !== null && currency !== refund.currency) return { ok: false, reason: `currency_mismatch: the payment is in ${currency}, Apple refunded ${refund.currency}` };
    return {
      ok: true,
      notification: {
        eventId,
        kind: 'refund',
        appId,
        refund: {
          state: 'succeeded', channelRefundId: refund.channelRefundId, channelReference: refund.channelReference,
          amountMinor: refund.amountMinor, currency: refund.currency, rawStatus: refund.rawStatus,
        },
      },
    };
  }

  return {
    channel: 'apple_iap',
    appId: config.bundleId,
    bundleId: config.bundleId,
    methods: APPLE_IAP_METHODS,
    referenceFormat: 'uuid',
    createPayment,
    queryPayment,
    closePayment,
    confirmPayment,
    // Only with Server API credentials: without them the daily reconciliation skips Apple.
    ...(serverApi ? { downloadBill } : {}),
    verifyNotification,
    // Apple treats 200–206 as received; anything else is retried (1, 12, 24, 48, 72 h).
    ackSuccess: (): Acknowledgement => ({ statusCode: 200, contentType: 'text/plain; charset=utf-8', body: 'OK' }),
    ackFailure: (reason: string): Acknowledgement => ({ statusCode: 400, contentType: 'text/plain; charset=utf-8', body: `rejected: ${reason}`.slice(0, 200) }),
  };
}

/** `{"signedPayload": "<JWS>"}` as JSON, bounded, UTF-8. */
function parseBody(input: NotificationInput): { ok: true; signedPayload: string } | { ok: false; reason: string } {
  const contentType = (input.contentType ?? headerValue(input.headers, 'content-type') ?? '').toLowerCase();
  if (contentType && !contentType.startsWith('application/json')) return { ok: false, reason: `unexpected content type ${contentType}` };
  if (input.rawBody.length === 0) return { ok: false, reason: 'empty body' };
  if (input.rawBody.length > NOTIFY_MAX_BYTES) return { ok: false, reason: `body larger than ${NOTIFY_MAX_BYTES} bytes` };
  let body: unknown;
  try {
    body = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(input.rawBody));
  } catch {
    return { ok: false, reason: 'body is not UTF-8 JSON' };
  }
  const signedPayload = body !== null && typeof body === 'object' && !Array.isArray(body) ? (body as Record<string, unknown>)['signedPayload'] : undefined;
  if (typeof signedPayload !== 'string' || signedPayload === '') return { ok: false, reason: 'signedPayload missing' };
  if (signedPayload.length > MAX_JWS_CHARS * 4) return { ok: false, reason: 'signedPayload too large' };
  return { ok: true, signedPayload };
}

function checkSignedDate(signedDate: unknown, now: Date, maxAgeMs: number): string | null {
  if (typeof signedDate !== 'number' || !Number.isFinite(signedDate)) return 'signedDate missing';
  const ageMs = now.getTime() - signedDate;
  if (ageMs > maxAgeMs) return `stale notification: signed ${new Date(signedDate).toISOString()}, more than ${Math.round(maxAgeMs / 3600_000)} h ago`;
  if (-ageMs > MAX_FUTURE_SKEW_MS) return `signedDate ${new Date(signedDate).toISOString()} is in the future`;
  return null;
}

function headerValue(headers: NotificationInput['headers'], name: string): string | undefined {
  const v = headers[name] ?? headers[name.toLowerCase()];
  return Array.isArray(v) ? v[0] : v;
}

/** The one item an in-app purchase can buy, with its App Store product id and quantity. */
function purchaseOf(input: CreatePaymentInput): ExpectedPurchase {
  const products = new Set(input.items.map((i) => i.productId));
  if (products.size === 0) throw refuse('items_missing', 'the order has no items');
  if (products.size > 1) throw refuse('multiple_products', `an App Store in-app purchase buys one product; this order has ${products.size} different products`);
  const productId = input.items[0]!.storeProductIds.apple_iap;
  if (productId === undefined || productId === '') throw refuse('store_product_missing', `product ${input.items[0]!.productId} has no App Store product id (store_product_ids.apple_iap)`);
  if (!isAppStoreProductId(productId)) throw refuse('store_product_invalid', `App Store product id ${JSON.stringify(productId)} is not valid`);
  const quantity = input.items.reduce((n, i) => n + i.quantity, 0);
  if (!Number.isInteger(quantity) || quantity < 1 || quantity > MAX_PURCHASE_QUANTITY) throw refuse('quantity_invalid', `StoreKit buys 1 to ${MAX_PURCHASE_QUANTITY} of a product, not ${quantity}`);
  return { productId, quantity };
}

function refuse(code: string, message: string): ChannelError {
  return new ChannelError(message, APPLE_CHANNEL, code, false);
}

/** Library and transport failures → ChannelError, retryable where trying again may help. */
export function toChannelError(err: unknown): ChannelError {
  if (err instanceof ChannelError) return err;
  if (err instanceof APIException) {
    const status = err.httpStatusCode;
    const apiCode = err.apiError === null || err.apiError === undefined ? '' : ` (${String(err.apiError)}${err.errorMessage ? `: ${err.errorMessage}` : ''})`;
    const message = `App Store Server API answered HTTP ${status}${apiCode}`;
    if (status === 401) return new ChannelError(message, APPLE_CHANNEL, 'unauthorized', false);
    if (status === 404) return new ChannelError(message, APPLE_CHANNEL, 'transaction_not_found', false);
    if (status === 429) return new ChannelError(message, APPLE_CHANNEL, 'rate_limited', true);
    if (status >= 500) return new ChannelError(message, APPLE_CHANNEL, 'apple_unavailable', true);
    return new ChannelError(message, APPLE_CHANNEL, 'request_rejected', false);
  }
  const e = err as Error & { name?: string; cause?: { code?: string; message?: string } };
  if (e?.name === 'TimeoutError' || e?.name === 'AbortError') return new ChannelError(`App Store Server API timed out`, APPLE_CHANNEL, 'transport_error', true);
  if (e instanceof TypeError && e.message === 'fetch failed') return new ChannelError(`App Store Server API unreachable: ${e.cause?.code ?? e.cause?.message ?? 'network error'}`, APPLE_CHANNEL, 'transport_error', true);
  if (e instanceof Error && /^Unexpected response body format$|larger than|JSON/.test(e.message)) return new ChannelError(`App Store Server API: ${e.message}`, APPLE_CHANNEL, 'invalid_response', true);
  return new ChannelError(e instanceof Error ? e.message : String(err), APPLE_CHANNEL, 'unexpected_error', false);
}

function responseOf(err: unknown): unknown {
  return err instanceof APIException ? { httpStatusCode: err.httpStatusCode, apiError: err.apiError, errorMessage: err.errorMessage } : null;
}

/**
 * Google Play connector (one-time in-app products) over the official `@googleapis/androidpublisher`
 * SDK. Holds no state; every API call is reported to the `audit` hook, redacted.
 *
 * The flow differs from a web channel: nothing is created at Google before the buyer acts.
 * - createPayment makes no call. Its action tells the app what to put in BillingFlowParams:
 *   the Play product id, `obfuscated_account_id` = our reference (setObfuscatedAccountId) and
 *   `obfuscated_profile_id` = the purchase binding tag (setObfuscatedProfileId, see sign.ts).
 * - The app hands us the purchase token: confirmPayment reads the purchase
 *   (purchases.products.get), checks it is bound to this payment, and acknowledges it.
 * - Real-time developer notifications (Pub/Sub push) carry only a purchase token: verify
 *   authenticates the push, then reads the purchase from the API to learn whose it is and its
 *   state (see verifyNotification).
 *
 * Refunds are the store's: Google offers refunds to buyers (Play's refund policy, chargebacks,
 * purchases never acknowledged within three days) and reports them; this connector has no
 * refundPayment/queryRefund. A `voidedPurchaseNotification` is translated to `kind: 'refund'`
 * (see translateVoided): push authenticated as for any RTDN, the purchase read by its token
 * through purchases.productsv2.getproductpurchasev2 — the notification names no product, and
 * purchases.products.get cannot be called without one — and checked like a payment (our
 * reference, the binding tag). channelRefundId = `${orderId}:voided`, no amount (below).
 *
 * Reconciliation:
 * - downloadBill (present when `reportsBucket` is configured): the month's earnings report
 *   `earnings/earnings_YYYYMM_<developer id>.zip` from the developer's Cloud Storage bucket
 *   `pubsite_prod_rev_<developer id>` (Cloud Storage JSON API, `?alt=media`, the same service
 *   account token, scope devstorage.read_only), of which only the bill day's rows (Transaction
 *   Date, Pacific time) of this app (Product id) are written to the destination, as a bare CSV with
 *   the report's header (bill.ts reads it). Only the day: the report is monthly, and reconciling
 *   the whole month every day would raise the same exceptions up to 31 times. A day that has not
 *   begun in Pacific time, or a report Google has not published yet (404: Google writes a month's
 *   earnings early the next month), is a non-retryable ChannelError `bill_not_available`.
 * - queryPayment with a `channelTransactionId` (a Play order id, GPA.…; what an earnings report
 *   line names): orders.get → the purchase token and product → purchases.products.get → checked
 *   like any purchase; the snapshot's channelReference is the reference read from the purchase, so
 *   the caller may pass channelReference '' (a report line names none). Without an order id the
 *   trade cannot be found (PURCHASE_TOKEN_REQUIRED, pending).
 *
 * Trust model for the amount: the Play API reports no price for a purchase (and Google charges the
 * buyer its own local price for the product). The payment service compares amounts only when a
 * snapshot carries one, so snapshots here carry none. What binds the money to our payment is the
 * product: Google says which product and quantity were bought, and the binding tag proves we issued
 * that product for that reference.
 */
import fs from 'node:fs';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { androidpublisher, type androidpublisher_v3 } from '@googleapis/androidpublisher';
import {
  ChannelError,
  type Acknowledgement,
  type ChannelConnector,
  type ChannelTradeState,
  type CreatePaymentInput,
  type CreatePaymentResult,
  type NotificationInput,
  type TradeSnapshot,
  type VerifyResult,
} from '../types.ts';
import type { ChannelAuditEntry } from '../module.ts';
import { normalizeCurrency } from '../../domain/money.ts';
import { BillFormatError } from '../../reconciliation/types.ts';
import { developerIdOfBucket, earningsObjectName, extractGooglePlayEarningsDay, pacificDay } from './bill.ts';
import { createPushVerifier, type PushAuthConfig, type SdkAuth } from './auth.ts';
import { bindingMatches, purchaseBindingTag, MAX_OBFUSCATED_ID_CHARS } from './sign.ts';
import {
  ACKNOWLEDGED, PACKAGE_NAME, PURCHASE_TYPE, REFUND_TYPE, VOIDED_PRODUCT_TYPE, bearerToken, isProductId, isPurchaseToken, mapPurchaseState,
  parseDeveloperNotification, parsePushEnvelope, productPurchaseOfV2, purchaseQuantity, purchaseStateName, redactSecrets, toChannelError,
  type DeveloperNotification, type ProductPurchase, type ProductPurchaseV2,
} from './transformers.ts';

export const GOOGLE_PLAY_METHODS = ['in_app'] as const;
export const GOOGLE_API_ROOT = 'https://androidpublisher.googleapis.com/';
export const GOOGLE_STORAGE_ROOT = 'https://storage.googleapis.com/';
/** Bounds of one earnings report download. */
const BILL_MAX_BYTES = 4 * 1024 ** 3;
const BILL_DOWNLOAD_TIMEOUT_MS = 30 * 60_000;

export interface GooglePlayConfig {
  /** The app's package name: the appId checked against notifications. */
  packageName: string;
  /** Credentials for the Developer API (auth.ts). */
  auth: SdkAuth;
  /** API root, default https://androidpublisher.googleapis.com/; the sandbox's /sandbox/google_play/. */
  rootUrl?: string;
  /** Verifies the purchase binding tag (sign.ts). At least 16 characters. */
  bindingSecret: string;
  /** How Pub/Sub authenticates its pushes. */
  push: PushAuthConfig & {
    /** When set, a push from another subscription is refused. */
    subscription?: string;
  };
  /** Accept purchases made by license testers (purchaseType 0, no money). Sandbox: true. */
  acceptTestPurchases?: boolean;
  /**
   * The developer account's reporting bucket, `pubsite_prod_rev_<developer id>` (Play Console →
   * Download reports → Copy Cloud Storage URI). Enables downloadBill; the service account needs
   * access to financial data in Play Console.
   */
  reportsBucket?: string;
  /** Cloud Storage root, default https://storage.googleapis.com/; the sandbox's /sandbox/google_play/. */
  storageRootUrl?: string;
  /** Clock (tests): which Pacific day is today for downloadBill. */
  now?: () => Date;
  timeoutMs?: number;
  /** Automatic retries of idempotent calls (get, acknowledge) on 408/429/5xx/network. */
  retries?: number;
  audit?: (entry: ChannelAuditEntry) => void;
}

const MAX_REFERENCE_CHARS = MAX_OBFUSCATED_ID_CHARS;
const MAX_QUANTITY = 100;

type Purchase = ProductPurchase;

/** A purchase read from the API and checked to be ours, or the reason it is not usable. */
type Checked =
  | { ok: true; purchase: Purchase; reference: string; snapshot: TradeSnapshot }
  | { ok: false; kind: 'not_ours' | 'refused'; code: string; message: string };

/** One entry of purchases.voidedpurchases.list, in our words. */
export interface VoidedPurchase {
  orderId: string;
  /** The same id a voided-purchase notification for this order translates to. */
  channelRefundId: string;
  purchaseToken: string;
  purchaseTime: Date | null;
  voidedAt: Date;
  /** 0 user, 1 developer, 2 Google. */
  voidedSource: number | null;
  /** 0 other, 1 remorse, 2 not received, 3 defective, 4 accidental, 5 fraud, 6 friendly fraud, 7 chargeback, 8 unacknowledged. */
  voidedReason: number | null;
  /** Set for a quantity-based partial refund only. */
  voidedQuantity: number | null;
}

export interface GooglePlayConnector extends ChannelConnector {
  /**
   * The Voided Purchases API (purchases.voidedpurchases.list, one-time products): what Google
   * refunded or charged back in a window of at most 30 days, oldest first, at most `maxPages` pages
   * of 1000 (`truncated` when more remain). For reconciliation, e.g. to find a refund whose
   * notification never arrived; each entry carries the channelRefundId the notification would have
   * given. Entries carry no amount (Google reports none) and no reference of ours: resolve them
   * through a voided-purchase notification's path if needed.
   */
  listVoidedPurchases(input: { startTime?: Date; endTime?: Date; maxPages?: number }): Promise<{ voidedPurchases: VoidedPurchase[]; truncated: boolean }>;
}

const MAX_VOIDED_PAGES = 50;

export function createGooglePlayConnector(config: GooglePlayConfig): GooglePlayConnector {
  assertConfig(config);
  const rootUrl = (config.rootUrl ?? GOOGLE_API_ROOT).replace(/\/*$/, '/');
  const api = androidpublisher({ version: 'v3', auth: config.auth, rootUrl });
  const retries = config.retries ?? 3;
  // googleapis-common keeps only the origin of the API-level rootUrl (it resolves the method's
  // absolute path against it), so a root with a path (the sandbox's /sandbox/google_play/) must
  // also be given per call, where the SDK prefixes it to the method path.
  const callOptions = {
    rootUrl,
    timeout: config.timeoutMs ?? 10_000,
    retry: retries > 0,
    retryConfig: { retry: retries, httpMethodsToRetry: ['GET', 'POST'], statusCodesToRetry: [[408, 408], [429, 429], [500, 599]] },
  };
  const verifyPushToken = createPushVerifier(config.push);

  function audit(entry: ChannelAuditEntry): void {
    if (!config.audit) return;
    try {
      config.audit({ ...entry, request: redactSecrets(entry.request), response: redactSecrets(entry.response) });
    } catch {
      // An audit sink failure must never change the outcome of a payment call.
    }
  }

  /** One API call, audited; failures become ChannelError. */
  async function call<T>(operation: string, channelReference: string | undefined, request: Record<string, unknown>, run: () => Promise<{ data: T; status: number }>): Promise<T> {
    const started = Date.now();
    try {
      const res = await run();
      audit({ operation, ...(channelReference ? { channelReference } : {}), request, response: { status: res.status, data: res.data ?? null }, durationMs: Date.now() - started });
      return res.data;
    } catch (err) {
      const e = toChannelError(err);
      const response = (err as { response?: { status?: number; data?: unknown } })?.response;
      audit({
        operation, ...(channelReference ? { channelReference } : {}), request,
        response: response ? { status: response.status ?? null, data: response.data ?? null } : null,
        error: `${e.code}: ${e.message}`, durationMs: Date.now() - started,
      });
      throw e;
    }
  }

  async function getPurchase(productId: string, token: string, channelReference?: string): Promise<Purchase> {
    const params = { packageName: config.packageName, productId, token };
    const data = await call<androidpublisher_v3.Schema$ProductPurchase>('get_purchase', channelReference, params, () => api.purchases.products.get(params, callOptions));
    if (!data || typeof data !== 'object') throw new ChannelError('purchases.products.get answered without a purchase', 'google_play', 'invalid_response', true);
    return data as Purchase;
  }

  /** purchases.productsv2.getproductpurchasev2: a purchase by its token alone. */
  async function getPurchaseV2(token: string): Promise<ProductPurchaseV2> {
    const params = { packageName: config.packageName, token };
    const data = await call<androidpublisher_v3.Schema$ProductPurchaseV2>('get_purchase_v2', undefined, params, () => api.purchases.productsv2.getproductpurchasev2(params, callOptions));
    if (!data || typeof data !== 'object') throw new ChannelError('purchases.productsv2.getproductpurchasev2 answered without a purchase', 'google_play', 'invalid_response', true);
    return data as ProductPurchaseV2;
  }

  /** purchases.products.acknowledge; Google answers 204 with no body. Idempotent at our side: skipped when already acknowledged. */
  async function acknowledge(productId: string, token: string, channelReference: string): Promise<void> {
    const params = { packageName: config.packageName, productId, token, requestBody: {} };
    await call<void>('acknowledge_purchase', channelReference, params, () => api.purchases.products.acknowledge(params, callOptions));
  }

  /** The checks every purchase goes through before we believe anything about it. */
  function check(purchase: Purchase, productId: string): Checked {
    const reference = purchase.obfuscatedExternalAccountId;
    if (typeof reference !== 'string' || reference === '') {
      return { ok: false, kind: 'not_ours', code: 'purchase_not_ours', message: 'the purchase carries no obfuscatedExternalAccountId: it was not started from a Knowpay payment' };
    }
    if (purchase.productId !== undefined && purchase.productId !== null && purchase.productId !== productId) {
      return { ok: false, kind: 'refused', code: 'product_mismatch', message: `Google reports product ${purchase.productId}, asked for ${productId}` };
    }
    const quantity = purchaseQuantity(purchase);
    if (quantity === null) return { ok: false, kind: 'refused', code: 'invalid_response', message: `unusable quantity ${String(purchase.quantity)}` };
    if (!bindingMatches(config.bindingSecret, { packageName: config.packageName, reference, productId, quantity }, purchase.obfuscatedExternalProfileId)) {
      return { ok: false, kind: 'refused', code: 'purchase_not_bound', message: `the purchase of ${productId} x${quantity} does not carry the binding tag Knowpay issued for ${reference}` };
    }
    if (purchase.purchaseType === PURCHASE_TYPE.TEST && !config.acceptTestPurchases) {
      return { ok: false, kind: 'refused', code: 'test_purchase_refused', message: 'a license-tester purchase (purchaseType 0) moves no money and is not accepted here' };
    }
    if (purchase.purchaseType === PURCHASE_TYPE.PROMO || purchase.purchaseType === PURCHASE_TYPE.REWARDED) {
      return { ok: false, kind: 'refused', code: 'unpaid_purchase_refused', message: `a ${purchase.purchaseType === PURCHASE_TYPE.PROMO ? 'promo code' : 'rewarded'} purchase moves no money and cannot pay an order` };
    }
    return { ok: true, purchase, reference, snapshot: snapshotOf(purchase, reference) };
  }

  async function createPayment(input: CreatePaymentInput): Promise<CreatePaymentResult> {
    if (input.method !== 'in_app') throw new ChannelError(`google_play does not support method ${input.method}`, 'google_play', 'method_not_supported', false);
    checkCurrency(input.currency);
    const reference = checkReference(input.channelReference);
    if (input.items.length !== 1) {
      throw new ChannelError(`a Google Play purchase is one product; this order has ${input.items.length} items`, 'google_play', 'multiple_items_not_supported', false);
    }
    const item = input.items[0]!;
    const productId = item.storeProductIds.google_play;
    if (!productId) throw new ChannelError(`product ${item.productId} has no Google Play product id`, 'google_play', 'store_product_missing', false);
    if (!isProductId(productId)) throw new ChannelError(`product ${item.productId} has a malformed Google Play product id ${JSON.stringify(productId)}`, 'google_play', 'store_product_invalid', false);
    if (!Number.isInteger(item.quantity) || item.quantity < 1 || item.quantity > MAX_QUANTITY) {
      throw new ChannelError(`quantity must be 1 to ${MAX_QUANTITY}, got ${item.quantity}`, 'google_play', 'quantity_invalid', false);
    }
    const started = Date.now();
    const params = {
      package_name: config.packageName,
      product_id: productId,
      quantity: item.quantity,
      obfuscated_account_id: reference,
      obfuscated_profile_id: purchaseBindingTag(config.bindingSecret, { packageName: config.packageName, reference, productId, quantity: item.quantity }),
    };
    audit({ operation: 'create_payment', channelReference: reference, request: { method: 'in_app', product_id: productId, quantity: item.quantity }, response: { action: { type: 'app', params } }, durationMs: Date.now() - started });
    return { action: { type: 'app', params } };
  }

  /**
   * The Play Developer API finds a purchase by its token, which only the app or a notification
   * gives us, or by its order id (orders.get), which an earnings report names: without either
   * there is nothing to ask, so the trade stays pending.
   *
   * With an order id: orders.get → purchase token and product → purchases.products.get → the
   * checks every purchase goes through (ours, bound, paid for) → the snapshot, whose
   * channelReference is the one read from the purchase. `channelReference` may be '' (a report
   * line names no reference of ours); when given it must be the purchase's. A PURCHASED purchase
   * not yet acknowledged is acknowledged when the caller names its reference (it holds that payment
   * and is about to record it paid; Google refunds what stays unacknowledged for three days); with
   * '' it is not (the caller may find no payment to grant, and then Google's refund is right).
   */
  async function queryPayment(input: { channelReference: string; currency: string; channelTransactionId?: string }): Promise<TradeSnapshot> {
    checkCurrency(input.currency);
    const orderId = input.channelTransactionId;
    if (orderId === undefined || orderId === '') return { state: 'pending', channelReference: input.channelReference, rawStatus: 'PURCHASE_TOKEN_REQUIRED' };
    if (!isOrderId(orderId)) throw new ChannelError(`channelTransactionId ${JSON.stringify(orderId.slice(0, 64))} is not a Google Play order id (GPA.…)`, 'google_play', 'transaction_id_invalid', false);
    const expected = input.channelReference === '' ? null : checkReference(input.channelReference);
    const params = { packageName: config.packageName, orderId };
    const order = await call<androidpublisher_v3.Schema$Order>('get_order', expected ?? undefined, params, () => api.orders.get(params, callOptions));
    const token = order?.purchaseToken;
    const items = order?.lineItems ?? [];
    const productId = items[0]?.productId;
    if (!order || typeof order !== 'object' || (order.orderId && order.orderId !== orderId)) {
      throw new ChannelError(`orders.get answered for order ${String(order?.orderId)}, asked for ${orderId}`, 'google_play', 'invalid_response', false);
    }
    if (!isPurchaseToken(token)) throw new ChannelError(`orders.get answered order ${orderId} without a purchase token`, 'google_play', 'invalid_response', false);
    if (items.length !== 1 || !isProductId(productId)) {
      throw new ChannelError(`order ${orderId} is not one one-time product (${items.length} line items)`, 'google_play', 'order_not_supported', false);
    }
    const purchase = await getPurchase(productId, token, expected ?? undefined);
    const checked = check(purchase, productId);
    if (!checked.ok) throw new ChannelError(checked.message, 'google_play', checked.code, false);
    if (purchase.orderId && purchase.orderId !== orderId) {
      throw new ChannelError(`the purchase of order ${orderId} reports order ${purchase.orderId}`, 'google_play', 'order_mismatch', false);
    }
    if (expected !== null && checked.reference !== expected) {
      throw new ChannelError(`order ${orderId} belongs to another payment (${checked.reference}), asked for ${expected}`, 'google_play', 'reference_mismatch', false);
    }
    if (expected !== null && checked.snapshot.state === 'succeeded' && purchase.acknowledgementState !== ACKNOWLEDGED) {
      await acknowledge(productId, token, expected);
    }
    return { ...checked.snapshot, channelTransactionId: orderId };
  }

  /**
   * Google has no call to cancel a purchase that has not happened yet: closing is ours alone, and
   * `not_found` lets the service end the payment. Should the buyer still complete the purchase
   * (a slow payment method), confirm or a notification reports it succeeded, and the service keeps
   * it for a person as a payment that ended before the money moved.
   */
  async function closePayment(input: { channelReference: string; currency: string }): Promise<TradeSnapshot> {
    checkCurrency(input.currency);
    return { state: 'not_found', channelReference: input.channelReference, rawStatus: 'NOT_CANCELABLE_AT_GOOGLE_PLAY' };
  }

  async function confirmPayment(input: { channelReference: string; currency: string; amountMinor: bigint; payload: Record<string, unknown> }): Promise<TradeSnapshot> {
    checkCurrency(input.currency);
    const reference = checkReference(input.channelReference);
    const payload = input.payload ?? {};
    const token = payload['purchase_token'];
    const productId = payload['product_id'];
    if (!isPurchaseToken(token)) throw new ChannelError('purchase_token is missing or malformed', 'google_play', 'payload_invalid', false);
    if (!isProductId(productId)) throw new ChannelError('product_id is missing or malformed', 'google_play', 'payload_invalid', false);

    const purchase = await getPurchase(productId, token, reference);
    const checked = check(purchase, productId);
    if (!checked.ok) throw new ChannelError(checked.message, 'google_play', checked.code, false);
    if (checked.reference !== reference) {
      throw new ChannelError(`the purchase belongs to another payment (${checked.reference})`, 'google_play', 'reference_mismatch', false);
    }
    if (checked.snapshot.state === 'succeeded' && purchase.acknowledgementState !== ACKNOWLEDGED) {
      await acknowledge(productId, token, reference);
    }
    return checked.snapshot;
  }

  /**
   * Verify THEN translate. 1. Pub/Sub's OIDC token (signature, audience, issuer, service account).
   * 2. The envelope and the DeveloperNotification. 3. The notification body is not signed — only
   * its sender is authenticated — and it does not name our payment: for a one-time product event
   * the purchase is read from the Play Developer API (a deliberate side effect of verification),
   * and only what the API says is used: whose purchase it is, and its state. A tampered token or
   * sku finds no purchase; a tampered notificationType changes nothing.
   *
   * A purchase found PURCHASED, bound to a reference the service holds (`currencyOf`), is also
   * acknowledged here. The service grants the order on this notification alone when the app never
   * calls confirm (crash, lost network), and Google refunds a purchase that is still not
   * acknowledged after three days: acknowledging later than the grant would lose the money.
   */
  async function verifyNotification(input: NotificationInput, currencyOf: (ref: string) => Promise<string | null>): Promise<VerifyResult> {
    try {
      return await verifyAndTranslate(input, currencyOf);
    } catch (err) {
      // Never throw for bad input: anything unexpected is a rejection, and Pub/Sub will redeliver.
      const e = toChannelError(err);
      return { ok: false, reason: `${e.retryable ? 'unavailable: ' : ''}${e.code}: ${e.message}` };
    }
  }

  async function verifyAndTranslate(input: NotificationInput, currencyOf: (ref: string) => Promise<string | null>): Promise<VerifyResult> {
    const auth = await verifyPushToken(bearerToken(input.headers));
    if (!auth.ok) return { ok: false, reason: `${auth.retryable ? 'unavailable' : 'unauthenticated'}: ${auth.reason}` };

    const contentType = (input.contentType ?? headerValue(input.headers, 'content-type') ?? '').toLowerCase();
    if (contentType && !contentType.startsWith('application/json')) return { ok: false, reason: `unexpected content type ${contentType.slice(0, 64)}` };
    const envelope = parsePushEnvelope(input.rawBody);
    if (!envelope.ok) return envelope;
    const { messageId, subscription } = envelope.value;
    if (config.push.subscription && subscription !== config.push.subscription) return { ok: false, reason: `push from another subscription ${String(subscription).slice(0, 200)}` };
    const parsed = parseDeveloperNotification(envelope.value.data);
    if (!parsed.ok) return parsed;
    const n = parsed.value;
    const appId = n.packageName;

    if (n.packageName !== config.packageName) return { ok: true, notification: { eventId: messageId, kind: 'ignored', reason: `notification for package ${n.packageName}`, appId } };
    if (n.kind === 'test') return { ok: true, notification: { eventId: messageId, kind: 'ignored', reason: 'Play Console test notification', appId } };
    if (n.kind === 'voided') return translateVoided(n, messageId, appId);
    if (n.kind === 'other') {
      return { ok: true, notification: { eventId: messageId, kind: 'ignored', reason: `${n.type} is not handled (one-time products only)`, appId } };
    }

    const purchase = await getPurchase(n.sku, n.purchaseToken);
    const checked = check(purchase, n.sku);
    if (!checked.ok) {
      if (checked.kind === 'not_ours') return { ok: true, notification: { eventId: messageId, kind: 'ignored', reason: checked.message, appId } };
      return { ok: false, reason: `${checked.code}: ${checked.message}` };
    }
    const { reference, snapshot } = checked;
    if (snapshot.state === 'succeeded' && purchase.acknowledgementState !== ACKNOWLEDGED && (await currencyOf(reference)) !== null) {
      await acknowledge(n.sku, n.purchaseToken, reference);
    }
    return { ok: true, notification: { eventId: messageId, kind: 'payment', appId, trade: snapshot } };
  }

  /**
   * A voided purchase (refund, chargeback, revoked unacknowledged purchase) → a refund the store
   * started: state succeeded, no refundReference, channelRefundId `${orderId}:voided` (the same for
   * every redelivery, and unique: one order is voided once), channelReference = our reference read
   * from Google's purchase, after the binding tag proves we issued that product for it.
   *
   * No amount and no currency: no Play API reports a price (not products.get, productsv2 nor the
   * Voided Purchases API), and Google charged the buyer its own local price. The service then
   * books the payment's whole remaining amount, in the payment's currency — right for what is
   * translated here: refundType 1, a full refund of the order. A quantity-based partial refund
   * (refundType 2; or no refundType on a multi-unit purchase) cannot be priced from what Google
   * says, so it is acknowledged as ignored with a reason, for a person to record. Voided
   * subscriptions are not Knowpay's (one-time products only).
   */
  async function translateVoided(n: Extract<DeveloperNotification, { kind: 'voided' }>, eventId: string, appId: string): Promise<VerifyResult> {
    const ignored = (reason: string, channelReference?: string): VerifyResult => ({ ok: true, notification: { eventId, kind: 'ignored', reason, appId, ...(channelReference ? { channelReference } : {}) } });
    if (n.productType === VOIDED_PRODUCT_TYPE.SUBSCRIPTION) return ignored(`voidedPurchaseNotification for a subscription (order ${n.orderId}): one-time products only`);
    if (n.productType !== null && n.productType !== VOIDED_PRODUCT_TYPE.ONE_TIME) return { ok: false, reason: `voidedPurchaseNotification with unknown productType ${n.productType}` };
    const v2 = await getPurchaseV2(n.purchaseToken);
    const purchase = productPurchaseOfV2(v2);
    if (!purchase) return { ok: false, reason: 'invalid_response: the voided purchase is not one product (productLineItem)' };
    const checked = check(purchase, purchase.productId);
    if (!checked.ok) {
      if (checked.kind === 'not_ours') return ignored(`voided purchase: ${checked.message}`);
      return { ok: false, reason: `${checked.code}: ${checked.message}` };
    }
    const { reference } = checked;
    if (purchase.orderId && purchase.orderId !== n.orderId) {
      return { ok: false, reason: `order_mismatch: the notification voids order ${n.orderId}, the purchase is order ${purchase.orderId}` };
    }
    const quantity = purchaseQuantity(purchase)!;
    const full = n.refundType === REFUND_TYPE.FULL || (n.refundType === null && quantity === 1);
    if (!full) {
      const what = n.refundType === REFUND_TYPE.QUANTITY_BASED_PARTIAL ? 'a quantity-based partial refund' : n.refundType === null ? 'a refund without refundType' : `refundType ${n.refundType}`;
      const left = purchase.refundableQuantity ?? null;
      return ignored(
        `voidedPurchaseNotification: ${what} of order ${n.orderId} (${quantity} units${left !== null ? `, ${left} still refundable` : ''}); Play reports no price, so a person must record this refund`,
        reference,
      );
    }
    return {
      ok: true,
      notification: {
        eventId,
        kind: 'refund',
        appId,
        refund: { state: 'succeeded', channelRefundId: `${n.orderId}:voided`, channelReference: reference, rawStatus: 'VOIDED:FULL_REFUND' },
      },
    };
  }

  async function listVoidedPurchases(input: { startTime?: Date; endTime?: Date; maxPages?: number }): Promise<{ voidedPurchases: VoidedPurchase[]; truncated: boolean }> {
    const maxPages = input.maxPages ?? 10;
    if (!Number.isInteger(maxPages) || maxPages < 1 || maxPages > MAX_VOIDED_PAGES) throw new ChannelError(`maxPages must be 1 to ${MAX_VOIDED_PAGES}`, 'google_play', 'parameter_invalid', false);
    const out: VoidedPurchase[] = [];
    let token: string | undefined;
    for (let page = 0; page < maxPages; page++) {
      const params = {
        packageName: config.packageName, maxResults: 1000, type: 0,
        ...(token ? { token } : {
          ...(input.startTime ? { startTime: String(input.startTime.getTime()) } : {}),
          ...(input.endTime ? { endTime: String(input.endTime.getTime()) } : {}),
        }),
      };
      const data = await call<androidpublisher_v3.Schema$VoidedPurchasesListResponse>('list_voided_purchases', undefined, params, () => api.purchases.voidedpurchases.list(params, callOptions));
      for (const v of data?.voidedPurchases ?? []) {
        const voidedAt = millis(v.voidedTimeMillis);
        if (typeof v.orderId !== 'string' || v.orderId === '' || typeof v.purchaseToken !== 'string' || !voidedAt) {
          throw new ChannelError('purchases.voidedpurchases.list answered an entry without orderId, purchaseToken or voidedTimeMillis', 'google_play', 'invalid_response', true);
        }
        out.push({
          orderId: v.orderId, channelRefundId: `${v.orderId}:voided`, purchaseToken: v.purchaseToken, purchaseTime: millis(v.purchaseTimeMillis), voidedAt,
          voidedSource: v.voidedSource ?? null, voidedReason: v.voidedReason ?? null, voidedQuantity: v.voidedQuantity ?? null,
        });
      }
      token = data?.tokenPagination?.nextPageToken ?? undefined;
      if (!token) return { voidedPurchases: out, truncated: false };
    }
    return { voidedPurchases: out, truncated: true };
  }

  const reports = config.reportsBucket
    ? { bucket: config.reportsBucket, developerId: developerIdOfBucket(config.reportsBucket)!, root: (config.storageRootUrl ?? GOOGLE_STORAGE_ROOT).replace(/\/*$/, '/') }
    : null;

  /** The `Authorization` header the SDK's credentials give for a URL. */
  async function authorizationFor(url: string): Promise<string> {
    const auth = config.auth as unknown as { getRequestHeaders?: (url?: string) => Promise<Headers | Record<string, string>> };
    if (typeof auth?.getRequestHeaders !== 'function') throw new ChannelError('the configured credentials cannot authorise a Cloud Storage download', 'google_play', 'auth_failed', false);
    let headers: Headers | Record<string, string>;
    try {
      headers = await auth.getRequestHeaders(url);
    } catch (err) {
      throw toChannelError(err);
    }
    const value = typeof (headers as Headers).get === 'function' ? (headers as Headers).get('authorization') : (headers as Record<string, string>)['Authorization'] ?? (headers as Record<string, string>)['authorization'];
    if (!value) throw new ChannelError('the credentials gave no access token', 'google_play', 'auth_failed', true);
    return value;
  }

  /**
   * The bill day's rows of this app from the month's earnings report (see the file comment).
   * The object is downloaded next to `destination` (a zip is read by random access), then the day
   * is written to `destination` and the download removed.
   */
  async function downloadBill(input: { billDate: string; destination: string }): Promise<void> {
    const r = reports!;
    const billDate = input.billDate;
    if (!/^\d{4}-\d{2}-\d{2}$/.test(billDate) || Number.isNaN(Date.parse(billDate)) || new Date(billDate).toISOString().slice(0, 10) !== billDate) {
      throw new ChannelError(`bill_date must be YYYY-MM-DD, got ${billDate}`, 'google_play', 'bill_date_invalid', false);
    }
    const today = pacificDay((config.now ?? (() => new Date()))());
    if (billDate > today) {
      throw new ChannelError(`Google Play has no earnings report for ${billDate} yet: that day has not begun in Pacific time (it is ${today} there)`, 'google_play', 'bill_not_available', false);
    }
    const month = billDate.slice(0, 7).replace('-', '');
    const object = earningsObjectName(month, r.developerId);
    const url = `${r.root}storage/v1/b/${encodeURIComponent(r.bucket)}/o/${encodeURIComponent(object)}?alt=media`;
    const ref = `bill:${billDate}`;
    const request = { bucket: r.bucket, object, bill_date: billDate };
    const started = Date.now();
    const download = `${input.destination}.download`;
    let status: number | null = null;
    let bytes = 0;
    try {
      const answer = await fetch(url, {
        headers: { authorization: await authorizationFor(url), accept: 'application/zip, application/octet-stream, */*', 'user-agent': 'knowpay' },
        redirect: 'error',
        signal: AbortSignal.timeout(BILL_DOWNLOAD_TIMEOUT_MS),
      });
      status = answer.status;
      if (!answer.ok || !answer.body) {
        const text = (await answer.text().catch(() => '')).slice(0, 2000);
        let message = text.slice(0, 200);
        try { message = (JSON.parse(text) as { error?: { message?: string } }).error?.message ?? message; } catch { /* not JSON */ }
        const where = `gs://${r.bucket}/${object}`;
        if (answer.status === 404) {
          throw new ChannelError(`Google Play's earnings report for ${billDate.slice(0, 7)} is not available (${where}: ${message}); Google publishes a month's earnings report early the next month`, 'google_play', 'bill_not_available', false);
        }
        if (answer.status === 401) throw new ChannelError(`Cloud Storage refused the credentials for ${where}: ${message}`, 'google_play', 'unauthenticated', false);
        if (answer.status === 403) throw new ChannelError(`the service account may not read ${where} (grant it access to financial data in Play Console): ${message}`, 'google_play', 'permission_denied', false);
        const retryable = answer.status === 408 || answer.status === 429 || answer.status >= 500;
        throw new ChannelError(`Cloud Storage answered HTTP ${answer.status} for ${where}: ${message}`, 'google_play', retryable ? 'http_error' : 'invalid_request', retryable);
      }
      const meter = new Transform({
        transform(chunk: Buffer, _e, cb) {
          bytes += chunk.length;
          if (bytes > BILL_MAX_BYTES) return cb(new ChannelError(`the earnings report is larger than ${BILL_MAX_BYTES} bytes`, 'google_play', 'bill_too_large', false));
          cb(null, chunk);
        },
      });
      try {
        await pipeline(Readable.fromWeb(answer.body as import('node:stream/web').ReadableStream), meter, fs.createWriteStream(download));
      } catch (err) {
        if (err instanceof ChannelError) throw err;
        throw new ChannelError(`the earnings report download broke off after ${bytes} bytes: ${(err as Error).message}`, 'google_play', 'transport_error', true);
      }
      let counts: { rows: number; kept: number };
      try {
        counts = await extractGooglePlayEarningsDay(download, input.destination, { date: billDate, packageName: config.packageName });
      } catch (err) {
        if (err instanceof BillFormatError) throw new ChannelError(`${object} is not a Google Play earnings report: ${err.message}`, 'google_play', 'invalid_response', false);
        throw err;
      }
      audit({ operation: 'download_bill', channelReference: ref, request, response: { status, bytes, rows: counts.rows, day_rows: counts.kept }, durationMs: Date.now() - started });
    } catch (err) {
      await fs.promises.rm(input.destination, { force: true }).catch(() => {});
      const e = err instanceof ChannelError ? err : toChannelError(err);
      audit({ operation: 'download_bill', channelReference: ref, request, response: status === null ? null : { status, bytes }, error: `${e.code}: ${e.message}`, durationMs: Date.now() - started });
      throw e;
    } finally {
      await fs.promises.rm(download, { force: true }).catch(() => {});
    }
  }

  return {
    ...(reports ? { downloadBill } : {}),
    listVoidedPurchases,
    channel: 'google_play',
    appId: config.packageName,
    methods: GOOGLE_PLAY_METHODS,
    referenceFormat: 'trade_number',
    createPayment,
    queryPayment,
    closePayment,
    confirmPayment,
    verifyNotification,
    // Pub/Sub push: any of 102, 200, 201, 202, 204 acknowledges; anything else is redelivered with backoff.
    ackSuccess: (): Acknowledgement => ({ statusCode: 200, contentType: 'text/plain; charset=utf-8', body: 'ok' }),
    ackFailure: (reason: string): Acknowledgement => {
      if (reason.startsWith('unauthenticated:')) return { statusCode: 401, contentType: 'text/plain; charset=utf-8', body: 'unauthenticated' };
      if (reason.startsWith('unavailable')) return { statusCode: 503, contentType: 'text/plain; charset=utf-8', body: 'retry later' };
      return { statusCode: 400, contentType: 'text/plain; charset=utf-8', body: 'rejected' };
    },
  };
}

/** A checked purchase in our words. No amount: the API does not report one (see the file comment). */
export function snapshotOf(p: Purchase, reference: string): TradeSnapshot {
  const state: ChannelTradeState = mapPurchaseState(p.purchaseState);
  const orderId = typeof p.orderId === 'string' && p.orderId !== '' ? p.orderId : undefined;
  return {
    state,
    channelReference: reference,
    ...(orderId ? { channelTransactionId: orderId } : {}),
    rawStatus: purchaseStateName(p.purchaseState),
  };
}

/** A Play order id: GPA.1234-5678-9012-34567 (and the `..0`, `..1` suffixes of renewals). */
function isOrderId(v: string): boolean {
  return /^GPA\.\d{4}-\d{4}-\d{4}-\d{5}(\.\.\d{1,5})?$/.test(v);
}

function millis(v: string | null | undefined): Date | null {
  return typeof v === 'string' && /^\d{1,16}$/.test(v) ? new Date(Number(v)) : null;
}

function headerValue(headers: NotificationInput['headers'], name: string): string | undefined {
  const v = headers[name] ?? headers[name.toLowerCase()];
  return Array.isArray(v) ? v[0] : v;
}

function assertConfig(config: GooglePlayConfig): void {
  if (!PACKAGE_NAME.test(config.packageName ?? '')) throw new TypeError(`GooglePlayConfig.packageName is not a package name: ${config.packageName}`);
  if (!config.auth) throw new TypeError('GooglePlayConfig.auth is required');
  if (typeof config.bindingSecret !== 'string' || config.bindingSecret.length < 16) throw new TypeError('GooglePlayConfig.bindingSecret must be at least 16 characters');
  if (config.rootUrl !== undefined) new URL(config.rootUrl);
  if (config.retries !== undefined && (!Number.isInteger(config.retries) || config.retries < 0 || config.retries > 5)) throw new TypeError('GooglePlayConfig.retries must be 0 to 5');
  if (config.reportsBucket !== undefined && !developerIdOfBucket(config.reportsBucket)) throw new TypeError(`GooglePlayConfig.reportsBucket must be pubsite_prod_rev_<developer id>, got ${config.reportsBucket}`);
  if (config.storageRootUrl !== undefined) new URL(config.storageRootUrl);
}

function checkCurrency(currency: string): string {
  const c = normalizeCurrency(currency);
  if (!c) throw new ChannelError(`unknown currency ${currency}`, 'google_play', 'currency_not_supported', false);
  return c;
}

function checkReference(reference: string): string {
  if (typeof reference !== 'string' || !/^[A-Za-z0-9_-]+$/.test(reference) || reference.length > MAX_REFERENCE_CHARS) {
    throw new ChannelError(`the reference must be 1-${MAX_REFERENCE_CHARS} letters, digits, _ or - (Google's obfuscatedAccountId limit)`, 'google_play', 'reference_invalid', false);
  }
  return reference;
}

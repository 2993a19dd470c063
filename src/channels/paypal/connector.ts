/**
 * PayPal connector (REST Orders v2 over fetch). Method `paypal`: the buyer is redirected to
 * PayPal, approves, and the money moves when WE capture the order.
 *
 * - createPayment: `POST /v2/checkout/orders` with PayPal-Request-Id = our reference (idempotent),
 *   our reference as custom_id and invoice_id; the approval link becomes a redirect action; the
 *   order id is written to paypal_order_refs (order-refs.ts explains why) and reported as the
 *   channel transaction id until a capture exists.
 * - queryPayment: `GET /v2/checkout/orders/{id}`; an APPROVED order is captured here
 *   (`POST …/capture`, PayPal-Request-Id = reference + ':capture'), so the service's requery on
 *   CHECKOUT.ORDER.APPROVED, or its active poll, completes the payment. The snapshot of a captured
 *   order carries the capture id (what refunds, capture webhooks and PayPal's reports name).
 * - closePayment: Orders v2 has no cancel. We record 'close' (never capture it) unless a capture
 *   was already decided, in which case the capture is finished and reported. VOIDED is closed too.
 * - refundPayment: `POST /v2/payments/captures/{capture}/refund`, PayPal-Request-Id = our refund
 *   reference (idempotent), body { amount, invoice_id: refund reference, custom_id: trade number,
 *   note_to_payer }. The capture is the payment's channelTransactionId, or read from the order.
 *   The request is recorded first (refund-refs.ts). PayPal answers synchronously: COMPLETED →
 *   succeeded, PENDING → pending, FAILED/CANCELLED → failed. More than the capture's remainder is
 *   PayPal's 422 REFUND_AMOUNT_EXCEEDED / CAPTURE_FULLY_REFUNDED → a ChannelError with that code,
 *   not retryable.
 * - queryRefund: `GET /v2/payments/refunds/{id}` when PayPal's refund id is known (given, or
 *   recorded); otherwise the order's `payments.refunds[]` matched on our invoice_id; otherwise the
 *   recorded request re-sent with its PayPal-Request-Id (refund-refs.ts explains why that is safe).
 * - downloadBill: the UTC day's Transaction Search (`GET /v1/reporting/transactions`), paged into JSON
 *   Lines (bill-download.ts; bill.ts reads it), through a second client with a longer timeout and a
 *   larger answer limit whose audit keeps a page's count, not its transactions.
 * - verifyNotification: offline signature check (webhook.ts), then translation (transformers.ts);
 *   PAYMENT.CAPTURE.REFUNDED / REVERSED become `kind: 'refund'`, matched to our refund references.
 */
import type { X509Certificate } from 'node:crypto';
import { normalizeCurrency } from '../../domain/money.ts';
import type { ChannelAuditEntry } from '../module.ts';
import {
  ChannelError,
  type Acknowledgement,
  type ChannelConnector,
  type CreatePaymentInput,
  type CreatePaymentResult,
  type NotificationInput,
  type RefundRequest,
  type RefundSnapshot,
  type TradeSnapshot,
  type VerifiedNotification,
  type VerifyResult,
} from '../types.ts';
import { createPayPalClient, errorFromResponse, type ApiResponse } from './client.ts';
import { downloadPaypalBill, summarizeSearchAnswer } from './bill-download.ts';
import type { OrderRef, OrderRefStore } from './order-refs.ts';
import type { RefundRef, RefundRefStore } from './refund-refs.ts';
import {
  PAYPAL_CURRENCIES, PAYPAL_NOTE_MAX, approvalLink, buildCreateOrderBody, buildRefundBody, mapCaptureStatus, readCapture, readError, readEvent, readOrder, readRefund,
  snapshotOfOrder, snapshotOfRefund, toPayPalValue, translateEvent, truncateText, type OrderView, type RefundView,
} from './transformers.ts';
import {
  PAYPAL_CERT_HOSTS, PAYPAL_CERT_SUBJECTS, createCertificateSource, systemTrustAnchors, verifyWebhookSignature,
  type CertificateSource, type WebhookVerifierConfig,
} from './webhook.ts';

export interface PayPalConfig {
  /** REST base, e.g. https://api-m.paypal.com or `${publicBaseUrl}/sandbox/paypal`. */
  baseUrl: string;
  clientId: string;
  clientSecret: string;
  /** The id PayPal gave our webhook registration; part of every signed string. */
  webhookId: string;
  /** Our PayPal merchant (payer) id; when set, resources naming another payee are refused. */
  merchantId?: string;
  /** Where PayPal sends the buyer when the payment has no return_url. */
  defaultReturnUrl: string;
  brandName?: string;
  store: OrderRefStore;
  /** The refunds we ask for (refund-refs.ts). */
  refunds: RefundRefStore;
  /** Trust anchors for the webhook certificate chain (default: Node's Mozilla root store). */
  trustAnchors?: readonly X509Certificate[];
  /** Names the leaf certificate must carry (default: PayPal's message-verification hosts). */
  certSubjects?: readonly string[];
  /** Sandbox mode only: the sandbox's own certificate URL prefix, accepted besides PayPal's hosts. */
  sandboxCertPrefix?: string;
  /** Certificate download and cache (default: https fetch, 5 s, 64 KiB, 16 entries, 24 h). */
  certificates?: CertificateSource;
  /** Webhook transmission-time window; see webhook.ts for the defaults. */
  webhookMaxAgeMs?: number;
  webhookMaxFutureMs?: number;
  timeoutMs?: number;
  maxAttempts?: number;
  retryBaseMs?: number;
  now?: () => Date;
  audit?: (entry: ChannelAuditEntry) => void;
}

export const PAYPAL_METHODS = ['paypal'] as const;

const MAX_REFERENCE_CHARS = 64;
const REPORT_TIMEOUT_MS = 60_000;
const REPORT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024;
const MAX_DECISION_ROUNDS = 3;

/** PayPal's refusals of a refund that no retry can change (422 issues). */
export const REFUND_REFUSALS: ReadonlySet<string> = new Set([
  'REFUND_AMOUNT_EXCEEDED', 'CAPTURE_FULLY_REFUNDED', 'REFUND_CAPTURE_CURRENCY_MISMATCH', 'REFUND_NOT_ALLOWED', 'REFUND_TIME_LIMIT_EXCEEDED',
  'MAX_NUMBER_OF_REFUNDS_EXCEEDED', 'PARTIAL_REFUND_NOT_ALLOWED', 'TRANSACTION_REFUSED', 'PENDING_CAPTURE', 'REFUND_FAILED_INSUFFICIENT_FUNDS',
  'CANNOT_BE_ZERO_OR_NEGATIVE', 'DECIMAL_PRECISION', 'DECIMALS_NOT_SUPPORTED',
]);

export function createPayPalConnector(config: PayPalConfig): ChannelConnector {
  assertConfig(config);
  const client = createPayPalClient({
    baseUrl: config.baseUrl, clientId: config.clientId, clientSecret: config.clientSecret,
    ...(config.timeoutMs !== undefined ? { timeoutMs: config.timeoutMs } : {}),
    ...(config.maxAttempts !== undefined ? { maxAttempts: config.maxAttempts } : {}),
    ...(config.retryBaseMs !== undefined ? { retryBaseMs: config.retryBaseMs } : {}),
    ...(config.audit ? { audit: config.audit } : {}),
  });
  // Transaction Search pages are larger and slower than payment calls: their own limits, and an audit without the transactions.
  const reporting = createPayPalClient({
    baseUrl: config.baseUrl, clientId: config.clientId, clientSecret: config.clientSecret,
    timeoutMs: Math.max(config.timeoutMs ?? 0, REPORT_TIMEOUT_MS), maxResponseBytes: REPORT_MAX_RESPONSE_BYTES,
    ...(config.maxAttempts !== undefined ? { maxAttempts: config.maxAttempts } : {}),
    ...(config.retryBaseMs !== undefined ? { retryBaseMs: config.retryBaseMs } : {}),
    ...(config.audit ? { audit: (e: ChannelAuditEntry) => config.audit!({ ...e, response: summarizeSearchAnswer(e.response) }) } : {}),
  });
  const store = config.store;
  const refunds = config.refunds;
  const now = config.now ?? (() => new Date());
  const merchantId = config.merchantId ?? null;
  const verifier: WebhookVerifierConfig = {
    webhookId: config.webhookId,
    urlPolicy: { hosts: PAYPAL_CERT_HOSTS, ...(config.sandboxCertPrefix ? { sandboxPrefix: config.sandboxCertPrefix } : {}) },
    chainPolicy: { anchors: config.trustAnchors ?? systemTrustAnchors(), subjectNames: config.certSubjects ?? PAYPAL_CERT_SUBJECTS },
    certificates: config.certificates ?? createCertificateSource(),
    now,
    ...(config.webhookMaxAgeMs !== undefined ? { maxAgeMs: config.webhookMaxAgeMs } : {}),
    ...(config.webhookMaxFutureMs !== undefined ? { maxFutureMs: config.webhookMaxFutureMs } : {}),
  };

  async function createPayment(input: CreatePaymentInput): Promise<CreatePaymentResult> {
    checkMethod(input.method);
    const reference = checkReference(input.channelReference);
    const currency = checkCurrency(input.currency);
    const value = toPayPalValue(input.amountMinor, currency);
    if (value === null) {
      throw new ChannelError(`PayPal cannot charge ${input.amountMinor} minor units of ${currency} (positive, whole units for JPY/HUF/TWD)`, 'paypal', 'amount_invalid', false);
    }
    const description = truncateText(input.subject);
    if (description === '') throw new ChannelError('PayPal requires a non-empty description', 'paypal', 'subject_invalid', false);
    const returnUrl = input.returnUrl ?? config.defaultReturnUrl;
    const body = buildCreateOrderBody({ reference, currency, value, description, returnUrl, cancelUrl: returnUrl, ...(config.brandName ? { brandName: config.brandName } : {}) });
    const res = await client.call({ operation: 'create_payment', method: 'POST', path: '/v2/checkout/orders', body, requestId: reference, prefer: 'return=representation', channelReference: reference });
    if (res.status !== 200 && res.status !== 201) throw errorFromResponse('create order', res.status, res.body);
    const order = readOrder(res.body);
    if (!order) throw new ChannelError('create order answered without id/status', 'paypal', 'invalid_response', true);
    if (order.customId !== null && order.customId !== reference) {
      throw new ChannelError(`create order answered for custom_id ${order.customId}, sent ${reference}`, 'paypal', 'invalid_response', false);
    }
    if (order.amount && (order.amount.amountMinor !== input.amountMinor || order.amount.currency !== currency)) {
      throw new ChannelError(`PayPal order ${order.id} is for ${order.amount.amountMinor} ${order.amount.currency}, not ${input.amountMinor} ${currency}`, 'paypal', 'reference_reused', false);
    }
    const url = approvalLink(order);
    if (!url) throw new ChannelError(`order ${order.id} (${order.status}) has no approval link`, 'paypal', 'invalid_response', false);
    let saved: OrderRef;
    try {
      saved = await store.save({ clientId: config.clientId, channelReference: reference, orderId: order.id, currency, amountMinor: input.amountMinor });
    } catch (err) {
      throw new ChannelError(`could not record PayPal order ${order.id}: ${err instanceof Error ? err.message : String(err)}`, 'paypal', 'order_ref_store_failed', true);
    }
    if (saved.orderId !== order.id) {
      throw new ChannelError(`reference ${reference} already names PayPal order ${saved.orderId}, PayPal answered ${order.id}`, 'paypal', 'reference_reused', false);
    }
    return { action: { type: 'redirect', url }, channelTransactionId: order.id };
  }

  async function getOrder(ref: OrderRef, operation: string): Promise<OrderView | null> {
    const res = await client.call({ operation, method: 'GET', path: `/v2/checkout/orders/${encodeURIComponent(ref.orderId)}`, channelReference: ref.channelReference });
    if (res.status === 404) return null;
    if (res.status !== 200) throw errorFromResponse('get order', res.status, res.body);
    return checkedOrder(res, ref);
  }

  function checkedOrder(res: ApiResponse, ref: OrderRef): OrderView {
    const order = readOrder(res.body);
    if (!order) throw new ChannelError('PayPal answered an order without id/status', 'paypal', 'invalid_response', true);
    if (order.id !== ref.orderId) throw new ChannelError(`asked for order ${ref.orderId}, PayPal answered ${order.id}`, 'paypal', 'invalid_response', false);
    if (order.customId !== null && order.customId !== ref.channelReference) {
      throw new ChannelError(`order ${order.id} has custom_id ${order.customId}, expected ${ref.channelReference}`, 'paypal', 'invalid_response', false);
    }
    return order;
  }

  /** POST …/capture, idempotent per reference. Answers the order after the attempt. */
  async function capture(ref: OrderRef): Promise<TradeSnapshot> {
    const res = await client.call({
      operation: 'capture_payment', method: 'POST', path: `/v2/checkout/orders/${encodeURIComponent(ref.orderId)}/capture`, body: {},
      requestId: `${ref.channelReference}:capture`, prefer: 'return=representation', channelReference: ref.channelReference,
    });
    if (res.status === 200 || res.status === 201) {
      const order = checkedOrder(res, ref);
      return snapshotOfOrder(order, ref.channelReference);
    }
    const issue = readError(res.body).issue;
    if (res.status === 422 && issue === 'ORDER_ALREADY_CAPTURED') {
      const order = await getOrder(ref, 'query_payment');
      if (!order) throw new ChannelError(`order ${ref.orderId} vanished after capture`, 'paypal', 'invalid_response', true);
      return snapshotOfOrder(order, ref.channelReference);
    }
    if (res.status === 422 && issue === 'INSTRUMENT_DECLINED') {
      // The buyer's funding source was refused: this attempt failed; the order may be paid anew.
      return { state: 'failed', channelReference: ref.channelReference, channelTransactionId: ref.orderId, amountMinor: ref.amountMinor, currency: ref.currency, rawStatus: 'INSTRUMENT_DECLINED' };
    }
    throw errorFromResponse('capture order', res.status, res.body);
  }

  async function refFor(input: { channelReference: string; currency: string }): Promise<OrderRef | null> {
    const reference = checkReference(input.channelReference);
    const currency = checkCurrency(input.currency);
    const ref = await store.get(config.clientId, reference);
    if (ref && ref.currency !== currency) throw new ChannelError(`PayPal order for ${reference} is in ${ref.currency}, asked in ${currency}`, 'paypal', 'currency_mismatch', false);
    return ref;
  }

  async function queryPayment(input: { channelReference: string; currency: string }): Promise<TradeSnapshot> {
    const ref = await refFor(input);
    if (!ref) return { state: 'not_found', channelReference: input.channelReference };
    const order = await getOrder(ref, 'query_payment');
    if (!order) return { state: 'not_found', channelReference: ref.channelReference };
    if (order.status === 'APPROVED') return captureOrKeepClosed(ref, order);
    const snapshot = snapshotOfOrder(order, ref.channelReference);
    // An order we closed is closed for us whatever PayPal still offers the buyer.
    if (snapshot.state === 'pending' && ref.decision === 'close') return { ...snapshot, state: 'closed' };
    return snapshot;
  }

  /** An approved order: capture it, unless we already promised not to. */
  async function captureOrKeepClosed(ref: OrderRef, order: OrderView): Promise<TradeSnapshot> {
    const decision = await store.decide(ref.clientId, ref.channelReference, 'capture');
    if (decision === 'close') return snapshotOfOrder(order, ref.channelReference, 'closed');
    return capture(ref);
  }

  async function closePayment(input: { channelReference: string; currency: string }): Promise<TradeSnapshot> {
    const ref = await refFor(input);
    if (!ref) return { state: 'not_found', channelReference: input.channelReference };
    for (let round = 0; round < MAX_DECISION_ROUNDS; round++) {
      const decision = await store.decide(ref.clientId, ref.channelReference, 'close');
      const order = await getOrder(ref, 'close_payment');
      if (!order) return { state: decision === 'close' ? 'closed' : 'not_found', channelReference: ref.channelReference };
      const snapshot = snapshotOfOrder(order, ref.channelReference);
      if (order.status === 'COMPLETED' || order.status === 'VOIDED') return snapshot;
      if (decision === 'close') return { ...snapshot, state: 'closed' };
      // A capture was decided first (a notification or poll in flight): finish it and report it.
      if (order.status === 'APPROVED') return capture(ref);
      // Capture decided but PayPal no longer holds an approval: nothing was captured; close.
      await store.abandonCapture(ref.clientId, ref.channelReference);
    }
    throw new ChannelError(`close of ${ref.channelReference} kept racing with a capture`, 'paypal', 'close_conflict', true);
  }

  // ---- Refunds ---------------------------------------------------------------------------------------

  /**
   * The capture to refund: the payment's channelTransactionId once it names a capture (the
   * service stores the capture id our snapshots report), else the order's capture, read from PayPal.
   */
  async function captureIdFor(reference: string, currency: string, channelTransactionId: string | undefined): Promise<string> {
    const ref = await refFor({ channelReference: reference, currency });
    if (channelTransactionId !== undefined && channelTransactionId !== ref?.orderId) return checkPayPalId(channelTransactionId, 'channelTransactionId');
    if (!ref) throw new ChannelError(`no PayPal order is recorded for ${reference}`, 'paypal', 'payment_not_found', false);
    const order = await getOrder(ref, 'refund_payment');
    if (!order) throw new ChannelError(`PayPal does not know order ${ref.orderId} of ${reference}`, 'paypal', 'payment_not_found', false);
    if (order.status !== 'COMPLETED' || !order.capture || mapCaptureStatus(order.capture.status) !== 'succeeded') {
      throw new ChannelError(`order ${order.id} of ${reference} is ${order.status}${order.capture ? `/${order.capture.status}` : ''}: nothing was captured`, 'paypal', 'payment_not_captured', false);
    }
    return order.capture.id;
  }

  /** A refund PayPal answered for our recorded request: it must be that refund. */
  function checkedRefund(refund: RefundView | null, saved: RefundRef): RefundView {
    if (!refund) throw new ChannelError('PayPal answered a refund without id/status', 'paypal', 'invalid_response', true);
    if (refund.invoiceId !== null && refund.invoiceId !== saved.refundReference) {
      throw new ChannelError(`PayPal answered refund ${refund.id} with invoice_id ${refund.invoiceId} for our ${saved.refundReference}`, 'paypal', 'reference_reused', false);
    }
    if (refund.customId !== null && refund.customId !== saved.channelReference) {
      throw new ChannelError(`PayPal refund ${refund.id} names trade ${refund.customId}, not ${saved.channelReference}`, 'paypal', 'reference_reused', false);
    }
    if (refund.captureId !== null && refund.captureId !== saved.captureId) {
      throw new ChannelError(`PayPal refund ${refund.id} is of capture ${refund.captureId}, not ${saved.captureId}`, 'paypal', 'reference_reused', false);
    }
    if (refund.amount && (refund.amount.amountMinor !== saved.amountMinor || refund.amount.currency !== saved.currency)) {
      throw new ChannelError(`PayPal refund ${refund.id} is for ${refund.amount.amountMinor} ${refund.amount.currency}, not ${saved.amountMinor} ${saved.currency}`, 'paypal', 'reference_reused', false);
    }
    return refund;
  }

  /** Write PayPal's refund id down (best effort for the status; a second id for one reference is refused). */
  async function remember(saved: RefundRef, refund: RefundView): Promise<void> {
    let ok: boolean;
    try {
      ok = await refunds.record(saved.clientId, saved.refundReference, refund.id, refund.status);
    } catch (err) {
      throw new ChannelError(`could not record PayPal refund ${refund.id}: ${err instanceof Error ? err.message : String(err)}`, 'paypal', 'refund_ref_store_failed', true);
    }
    if (!ok) throw new ChannelError(`refund reference ${saved.refundReference} already names another PayPal refund than ${refund.id}`, 'paypal', 'reference_reused', false);
  }

  /** The recorded request, sent (or sent again: same PayPal-Request-Id, same body). */
  async function sendRefund(saved: RefundRef, operation: string): Promise<RefundSnapshot> {
    const value = toPayPalValue(saved.amountMinor, saved.currency);
    if (value === null) throw new ChannelError(`PayPal cannot refund ${saved.amountMinor} minor units of ${saved.currency}`, 'paypal', 'amount_invalid', false);
    const res = await client.call({
      operation, method: 'POST', path: `/v2/payments/captures/${encodeURIComponent(saved.captureId)}/refund`,
      body: buildRefundBody({ currency: saved.currency, value, refundReference: saved.refundReference, channelReference: saved.channelReference, noteToPayer: saved.noteToPayer }),
      requestId: saved.refundReference, prefer: 'return=representation', channelReference: saved.channelReference,
    });
    if (res.status === 200 || res.status === 201) {
      const refund = checkedRefund(readRefund(res.body), saved);
      await remember(saved, refund);
      return snapshotOfRefund(refund, saved.channelReference, saved.refundReference);
    }
    const issue = readError(res.body).issue;
    if (res.status === 422 && issue !== null && REFUND_REFUSALS.has(issue)) {
      throw new ChannelError(`PayPal refused refund ${saved.refundReference} of ${saved.amountMinor} ${saved.currency} on capture ${saved.captureId}: ${issue}`, 'paypal', issue, false);
    }
    throw errorFromResponse('refund capture', res.status, res.body);
  }

  async function refundPayment(input: RefundRequest): Promise<RefundSnapshot> {
    const reference = checkReference(input.channelReference);
    const refundReference = checkReference(input.refundReference);
    const currency = checkCurrency(input.currency);
    if (toPayPalValue(input.amountMinor, currency) === null) {
      throw new ChannelError(`PayPal cannot refund ${input.amountMinor} minor units of ${currency} (positive, whole units for JPY/HUF/TWD)`, 'paypal', 'amount_invalid', false);
    }
    const note = input.reason ? truncateText(input.reason, PAYPAL_NOTE_MAX) : '';
    const captureId = await captureIdFor(reference, currency, input.channelTransactionId);
    let saved: RefundRef;
    try {
      saved = await refunds.save({ clientId: config.clientId, refundReference, channelReference: reference, captureId, currency, amountMinor: input.amountMinor, noteToPayer: note || null });
    } catch (err) {
      throw new ChannelError(`could not record PayPal refund ${refundReference}: ${err instanceof Error ? err.message : String(err)}`, 'paypal', 'refund_ref_store_failed', true);
    }
    if (saved.channelReference !== reference || saved.captureId !== captureId || saved.amountMinor !== input.amountMinor || saved.currency !== currency) {
      throw new ChannelError(`refund reference ${refundReference} was used for ${saved.amountMinor} ${saved.currency} of ${saved.channelReference} (capture ${saved.captureId})`, 'paypal', 'reference_reused', false);
    }
    return sendRefund(saved, 'refund_payment');
  }

  async function queryRefund(input: { channelReference: string; channelTransactionId?: string; refundReference: string; channelRefundId?: string; currency: string }): Promise<RefundSnapshot> {
    const reference = checkReference(input.channelReference);
    const refundReference = checkReference(input.refundReference);
    const currency = checkCurrency(input.currency);
    const saved = await refunds.get(config.clientId, refundReference);
    if (saved && (saved.channelReference !== reference || saved.currency !== currency)) {
      throw new ChannelError(`refund reference ${refundReference} is of ${saved.channelReference} in ${saved.currency}`, 'paypal', 'reference_reused', false);
    }
    const refundId = input.channelRefundId ?? saved?.refundId ?? null;
    if (refundId !== null) {
      const res = await client.call({ operation: 'query_refund', method: 'GET', path: `/v2/payments/refunds/${encodeURIComponent(checkPayPalId(refundId, 'channelRefundId'))}`, channelReference: reference });
      if (res.status === 404) {
        // A refund id PayPal gave us and no longer knows is not an outcome: ask again later.
        throw new ChannelError(`PayPal does not know refund ${refundId} of ${refundReference}`, 'paypal', 'refund_not_found', true);
      }
      if (res.status !== 200) throw errorFromResponse('get refund', res.status, res.body);
      const refund = saved ? checkedRefund(readRefund(res.body), saved) : readRefund(res.body);
      if (!refund) throw new ChannelError('PayPal answered a refund without id/status', 'paypal', 'invalid_response', true);
      if (refund.id !== refundId) throw new ChannelError(`asked for refund ${refundId}, PayPal answered ${refund.id}`, 'paypal', 'invalid_response', false);
      if (!saved && refund.invoiceId !== null && refund.invoiceId !== refundReference) {
        throw new ChannelError(`PayPal refund ${refund.id} has invoice_id ${refund.invoiceId}, not ${refundReference}`, 'paypal', 'reference_reused', false);
      }
      if (saved) await remember(saved, refund);
      return snapshotOfRefund(refund, reference, refundReference);
    }
    // PayPal's refund id is unknown (the refund call's answer was lost): the order lists its refunds.
    const ref = await refFor({ channelReference: reference, currency });
    const order = ref ? await getOrder(ref, 'query_refund') : null;
    const listed = order?.refunds.find((r) => r.invoiceId === refundReference);
    if (listed) {
      if (saved) await remember(saved, checkedRefund(listed, saved));
      return snapshotOfRefund(listed, reference, refundReference);
    }
    if (saved) {
      // Recorded before the call, and PayPal shows no such refund: finish the call we started.
      try {
        return await sendRefund(saved, 'query_refund');
      } catch (err) {
        if (err instanceof ChannelError && !err.retryable && REFUND_REFUSALS.has(err.code)) {
          return { state: 'failed', refundReference, channelReference: reference, amountMinor: saved.amountMinor, currency: saved.currency, rawStatus: err.code };
        }
        throw err;
      }
    }
    // Never recorded, so never sent by this connector (or not yet: the call may be starting).
    return { state: 'pending', refundReference, channelReference: reference, rawStatus: 'NOT_FOUND' };
  }

  /**
   * A refund event's trade number and refund reference, settled against our records: invoice_id is
   * our refund reference only when we recorded it; without custom_id the trade number comes from
   * our records of the capture, or from the capture itself (`GET /v2/payments/captures/{id}`).
   */
  async function resolveRefundEvent(n: Extract<VerifiedNotification, { kind: 'refund' }>, refund: RefundView): Promise<VerifyResult | Extract<VerifiedNotification, { kind: 'refund' }>> {
    let channelReference = refund.customId;
    let refundReference = n.refund.refundReference;
    if (refundReference !== undefined) {
      const saved = await refunds.get(config.clientId, refundReference);
      if (saved) {
        if (channelReference !== null && channelReference !== saved.channelReference) {
          return { ok: false, reason: `refund ${refund.id} names trade ${channelReference}, our refund ${refundReference} is of ${saved.channelReference}` };
        }
        if (saved.refundId !== null && saved.refundId !== refund.id) {
          return { ok: false, reason: `refund ${refund.id} carries our reference ${refundReference}, which is PayPal refund ${saved.refundId}` };
        }
        if (refund.captureId !== null && refund.captureId !== saved.captureId) {
          return { ok: false, reason: `refund ${refund.id} is of capture ${refund.captureId}, our refund ${refundReference} of ${saved.captureId}` };
        }
        channelReference = saved.channelReference;
      } else {
        // Not a refund we asked for (made on PayPal's site): the service records it as the channel's.
        refundReference = undefined;
      }
    }
    if (channelReference === null && refund.captureId !== null) {
      channelReference = (await refunds.findByCapture(config.clientId, refund.captureId))?.channelReference ?? null;
      if (channelReference === null) {
        const res = await client.call({ operation: 'query_capture', method: 'GET', path: `/v2/payments/captures/${encodeURIComponent(refund.captureId)}` });
        if (res.status === 200) channelReference = readCapture(res.body)?.customId ?? null;
        else if (res.status !== 404) throw errorFromResponse('get capture', res.status, res.body);
      }
    }
    if (channelReference === null) {
      return { ok: true, notification: { eventId: n.eventId, kind: 'ignored', reason: 'refund of a capture not created by Knowpay' } };
    }
    const { refundReference: _dropped, ...rest } = n.refund;
    return { ...n, refund: { ...rest, ...(refundReference !== undefined ? { refundReference } : {}), channelReference } };
  }

  async function verifyNotification(input: NotificationInput, currencyOf: (ref: string) => Promise<string | null>): Promise<VerifyResult> {
    try {
      const signature = await verifyWebhookSignature(input, verifier);
      if (!signature.ok) return signature;
      let body: unknown;
      try {
        body = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(input.rawBody));
      } catch {
        return { ok: false, reason: 'body is not UTF-8 JSON' };
      }
      const event = readEvent(body);
      if (!event) return { ok: false, reason: 'body is not a webhook event' };
      const translated = translateEvent(event, merchantId);
      if (!translated.ok) return translated;
      let n = translated.notification;
      if (n.kind === 'refund' && translated.refund) {
        const resolved = await resolveRefundEvent(n, translated.refund);
        if ('ok' in resolved) return resolved;
        n = resolved;
      }
      const trade = n.kind === 'payment' ? n.trade : n.kind === 'refund' ? n.refund : null;
      if (trade) {
        const ours = await currencyOf(trade.channelReference);
        if (ours !== null && normalizeCurrency(ours) !== trade.currency) {
          return { ok: false, reason: `currency mismatch: event ${trade.currency}, payment ${ours}` };
        }
      }
      return { ok: true, notification: n };
    } catch (err) {
      return { ok: false, reason: `verification error: ${err instanceof Error ? err.message : String(err)}` };
    }
  }

  return {
    channel: 'paypal',
    appId: merchantId ?? config.webhookId,
    methods: PAYPAL_METHODS,
    createPayment,
    queryPayment,
    closePayment,
    refundPayment,
    queryRefund,
    downloadBill: (input: { billDate: string; destination: string }) => downloadPaypalBill(reporting, input, { now }),
    verifyNotification,
    // PayPal treats any 2xx as delivered and retries anything else (up to 25 times over 3 days).
    ackSuccess: (): Acknowledgement => ({ statusCode: 200, contentType: 'application/json', body: '{}' }),
    ackFailure: (): Acknowledgement => ({ statusCode: 400, contentType: 'application/json', body: '{"error":"notification_rejected"}' }),
  };
}

function assertConfig(config: PayPalConfig): void {
  for (const key of ['baseUrl', 'clientId', 'clientSecret', 'webhookId', 'defaultReturnUrl'] as const) {
    if (typeof config[key] !== 'string' || config[key].trim() === '') throw new TypeError(`PayPalConfig.${key} is required`);
  }
  new URL(config.baseUrl);
  new URL(config.defaultReturnUrl);
  if (config.sandboxCertPrefix !== undefined) new URL(config.sandboxCertPrefix);
  if (!config.store) throw new TypeError('PayPalConfig.store is required');
  if (!config.refunds) throw new TypeError('PayPalConfig.refunds is required');
}

function checkMethod(method: string): void {
  if (!(PAYPAL_METHODS as readonly string[]).includes(method)) throw new ChannelError(`paypal does not support method ${method}`, 'paypal', 'method_not_supported', false);
}

function checkCurrency(currency: string): string {
  const c = normalizeCurrency(currency);
  if (c && PAYPAL_CURRENCIES.has(c)) return c;
  throw new ChannelError(`PayPal does not take ${currency}`, 'paypal', 'currency_not_supported', false);
}

/** PayPal's ids (orders, captures, refunds): letters and digits; refused before they reach a URL path. */
function checkPayPalId(id: string, what: string): string {
  if (typeof id !== 'string' || !/^[A-Za-z0-9-]{1,64}$/.test(id)) throw new ChannelError(`${what} is not a PayPal id: ${String(id).slice(0, 80)}`, 'paypal', 'reference_invalid', false);
  return id;
}

/** PayPal-Request-Id ≤ 108 chars, custom_id/invoice_id ≤ 127; ours are `KP…` (30 chars). */
function checkReference(reference: string): string {
  if (typeof reference !== 'string' || !/^[A-Za-z0-9_-]+$/.test(reference) || reference.length > MAX_REFERENCE_CHARS) {
    throw new ChannelError(`reference must be 1-${MAX_REFERENCE_CHARS} letters, digits, _ or -`, 'paypal', 'reference_invalid', false);
  }
  return reference;
}

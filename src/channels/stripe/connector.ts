/**
 * Stripe connector (PaymentIntents, API v1) over the official `stripe` SDK. Holds no state; every
 * call is reported to the `audit` hook, redacted.
 *
 * Reaching a sandbox: the SDK's own base-URL options are `host`, `port` and `protocol`; it sends
 * fixed paths (`/v1/payment_intents`, no `basePath` option in stripe@23). A base URL with a path
 * (`http://127.0.0.1:4000/sandbox/stripe`) is honoured through the SDK's public `httpClient`
 * option: its own Node client, with the path prefixed. Everything else (encoding, headers,
 * Idempotency-Key, retries, error classes) is the SDK's.
 *
 * Refunds (`POST /v1/refunds` on the PaymentIntent): card refunds are usually `succeeded` in the
 * answer itself, but may be `pending` (then `refund.updated` tells the outcome) and, rarely, a
 * `succeeded` refund later turns `failed` (Stripe's `pm_card_refundFail` shows it). Partial
 * refunds may repeat until the charge is used up; Stripe refuses more than the remainder
 * (`amount_too_large`, or `charge_already_refunded` once nothing is left). Our refund number is
 * the Idempotency-Key and is kept in the Refund's metadata with our trade number, so webhooks can
 * be translated without a call and a retry after the key's 24 h lifetime still finds the refund.
 */
import fs from 'node:fs';
import Stripe from 'stripe';
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
  type VerifyResult,
} from '../types.ts';
import {
  PAYMENT_ID_METADATA_KEY, REFERENCE_METADATA_KEY, REFERENCE_PATTERN, REFUND_ID_PATTERN, REFUND_REASON_METADATA_KEY, REFUND_REFERENCE_METADATA_KEY,
  STRIPE_REFUND_REASONS, decisiveIntent, decisiveRefund, readIntent, readRefund, redactSecrets, referenceSearchQuery, snapshotFromIntent,
  snapshotFromRefund, stripeCurrency, toStripeAmount, type IntentView, type RefundView,
} from './transformers.ts';
import { translateEvent } from './events.ts';
import { StripeBillWriter } from './bill.ts';
import { MAX_BILL_LINES } from '../../reconciliation/types.ts';
import { STRIPE_TOLERANCE_S, verifyStripeWebhook } from './webhook.ts';

export interface StripeAuditEntry {
  operation: string;
  channelReference?: string;
  request: unknown;
  response: unknown;
  error?: string;
  durationMs: number;
}

export interface StripeConfig {
  /** Secret (`sk_…`) or restricted (`rk_…`) API key. */
  secretKey: string;
  /** The webhook endpoint's signing secret (`whsec_…`). */
  webhookSecret: string;
  /** Our account (`acct_…`): `connector.appId`, compared with the `account` that Connect events carry. */
  accountId: string;
  /** Default https://api.stripe.com; a sandbox: http://127.0.0.1:4000/sandbox/stripe. */
  apiBase?: string;
  timeoutMs?: number;
  /** The SDK's own retries (network errors, 409, 5xx), reusing the Idempotency-Key. Default 2. */
  maxNetworkRetries?: number;
  /** Webhook timestamp tolerance, seconds (default 300, Stripe's). */
  toleranceS?: number;
  /** Bounds of downloadBill (defaults: 100 a page, enough pages for MAX_BILL_LINES, 1 GiB, 30 minutes). */
  bill?: { pageSize?: number; maxPages?: number; maxBytes?: number; deadlineMs?: number };
  /** Clock for webhook tolerance (tests pin it). */
  now?: () => number;
  audit?: (entry: StripeAuditEntry) => void;
}

export const STRIPE_METHODS = ['card'] as const;
export const STRIPE_DEFAULT_API_BASE = 'https://api.stripe.com';

const MAX_DESCRIPTION_CHARS = 1000;
const MAX_METADATA_VALUE_CHARS = 500;
const SEARCH_LIMIT = 10;
/** Refunds listed per page, and pages read at most, when looking for one refund number on a PaymentIntent. */
const REFUND_PAGE_SIZE = 100;
const MAX_REFUND_PAGES = 5;
/** downloadBill: the list's largest page, and what bounds one download. */
const BILL_PAGE_SIZE = 100;
const BILL_MAX_PAGES = Math.ceil(MAX_BILL_LINES / BILL_PAGE_SIZE);
const BILL_MAX_BYTES = 1024 * 1024 * 1024;
const BILL_DEADLINE_MS = 30 * 60_000;
/** The source (charge or refund) carries our references; its PaymentIntent too, when the charge lacks them. */
const BILL_EXPAND = ['data.source', 'data.source.payment_intent'];
const CANCELABLE = new Set(['requires_payment_method', 'requires_capture', 'requires_confirmation', 'requires_action', 'processing']);

interface WireRequest {
  method: 'GET' | 'POST';
  path: string;
  params?: unknown;
  idempotencyKey?: string;
}

export function createStripeConnector(config: StripeConfig): ChannelConnector {
  assertConfig(config);
  const stripe = buildClient(config);
  const now = config.now ?? Date.now;
  const livemode = /^(sk|rk)_live_/.test(config.secretKey);

  function audit(entry: StripeAuditEntry): void {
    if (!config.audit) return;
    try {
      config.audit({ ...entry, request: redactSecrets(entry.request), response: redactSecrets(entry.response) });
    } catch {
      // An audit sink failure must never change the outcome of a payment call.
    }
  }

  /** One API call through the SDK, audited; failures become ChannelErrors. */
  async function call<T>(operation: string, channelReference: string, request: WireRequest, run: () => Promise<T>): Promise<T> {
    const started = Date.now();
    try {
      const response = await run();
      audit({ operation, channelReference, request, response: withoutLastResponse(response), durationMs: Date.now() - started });
      return response;
    } catch (err) {
      const channelError = toChannelError(err);
      audit({ operation, channelReference, request, response: errorBody(err), error: `${channelError.code}: ${channelError.message}`, durationMs: Date.now() - started });
      throw channelError;
    }
  }

  async function createPayment(input: CreatePaymentInput): Promise<CreatePaymentResult> {
    checkMethod(input.method);
    const reference = checkReference(input.channelReference);
    const money = toStripeAmount(input.amountMinor, input.currency);
    if (!money.ok) throw new ChannelError(money.message, 'stripe', money.code, false);
    const params = {
      amount: money.value.amount,
      currency: money.value.currency,
      // API 2026-10-28.endive (this SDK's) renamed the request field payment_method_types.
      allowed_payment_method_types: ['card'],
      description: checkSubject(input.subject),
      metadata: metadataFor(input),
    } satisfies Stripe.PaymentIntentCreateParams;
    // Our reference is the Idempotency-Key: a repeated create (ours or the SDK's retry) answers
    // the same PaymentIntent; the same reference with other parameters is Stripe's 400.
    const request: WireRequest = { method: 'POST', path: '/v1/payment_intents', params, idempotencyKey: reference };
    const created = await call('create_payment', reference, request, () => stripe.paymentIntents.create(params, { idempotencyKey: reference }));
    const pi = checkedIntent(created, reference, 'create');
    if (pi.amount !== params.amount || pi.currency !== params.currency) {
      throw new ChannelError(`stripe created ${pi.id} for ${pi.amount} ${pi.currency}, asked ${params.amount} ${params.currency}`, 'stripe', 'invalid_response', false);
    }
    const clientSecret = (created as { client_secret?: unknown }).client_secret;
    if (typeof clientSecret !== 'string' || !clientSecret.startsWith(`${pi.id}_secret_`)) {
      throw new ChannelError(`stripe answered ${pi.id} without a usable client_secret`, 'stripe', 'invalid_response', false);
    }
    return { action: { type: 'client_secret', client_secret: clientSecret }, channelTransactionId: pi.id };
  }

  /** The PaymentIntents carrying our reference, via the Search API (we only know the reference). */
  async function findIntent(operation: string, reference: string): Promise<IntentView | null> {
    const params = { query: referenceSearchQuery(reference), limit: SEARCH_LIMIT };
    const request: WireRequest = { method: 'GET', path: '/v1/payment_intents/search', params };
    const result = await call(operation, reference, request, () => stripe.paymentIntents.search(params));
    const data: unknown = (result as { data?: unknown }).data;
    if (!Array.isArray(data)) throw new ChannelError('stripe search answered without data', 'stripe', 'invalid_response', true);
    const intents = data.map((item) => {
      const pi = readIntent(item);
      if (!pi) throw new ChannelError('stripe search answered a malformed payment_intent', 'stripe', 'invalid_response', false);
      return pi;
    });
    return decisiveIntent(intents.filter((pi) => pi.metadata[REFERENCE_METADATA_KEY] === reference));
  }

  function snapshotOf(pi: IntentView, reference: string): TradeSnapshot {
    const result = snapshotFromIntent(pi);
    if (!result.ok) throw new ChannelError(result.reason, 'stripe', 'invalid_response', false);
    if (result.snapshot.channelReference !== reference) {
      throw new ChannelError(`stripe answered ${pi.id} for ${result.snapshot.channelReference}, asked for ${reference}`, 'stripe', 'invalid_response', false);
    }
    return result.snapshot;
  }

  /** By id when we hold it (no lag), else through the Search API (eventually consistent). */
  async function locate(operation: string, reference: string, id?: string): Promise<IntentView | null> {
    if (id && id.startsWith('pi_')) return retrieve(operation, reference, id);
    return findIntent(operation, reference);
  }

  async function queryPayment(input: { channelReference: string; currency: string; channelTransactionId?: string }): Promise<TradeSnapshot> {
    checkCurrency(input.currency);
    const reference = checkReference(input.channelReference);
    const pi = await locate('query_payment', reference, input.channelTransactionId);
    // Stripe's search is eventually consistent (usually under a minute): a PaymentIntent created
    // moments ago may not be found yet. not_found changes nothing; the next poll finds it.
    if (!pi) return { state: 'not_found', channelReference: reference };
    return snapshotOf(pi, reference);
  }

  async function retrieve(operation: string, reference: string, id: string): Promise<IntentView> {
    const request: WireRequest = { method: 'GET', path: `/v1/payment_intents/${id}` };
    const found = await call(operation, reference, request, () => stripe.paymentIntents.retrieve(id));
    return checkedIntent(found, reference, 'retrieve');
  }

  async function closePayment(input: { channelReference: string; currency: string; channelTransactionId?: string }): Promise<TradeSnapshot> {
    checkCurrency(input.currency);
    const reference = checkReference(input.channelReference);
    const pi = await locate('close_payment', reference, input.channelTransactionId);
    if (!pi) return { state: 'not_found', channelReference: reference };
    // A failed attempt leaves the PaymentIntent payable (requires_payment_method): cancel it too.
    if (!CANCELABLE.has(pi.status)) return snapshotOf(pi, reference);
    const params = { cancellation_reason: 'abandoned' } satisfies Stripe.PaymentIntentCancelParams;
    const request: WireRequest = { method: 'POST', path: `/v1/payment_intents/${pi.id}/cancel`, params };
    try {
      const canceled = await call('close_payment', reference, request, () => stripe.paymentIntents.cancel(pi.id, params));
      return snapshotOf(checkedIntent(canceled, reference, 'cancel'), reference);
    } catch (err) {
      if (!(err instanceof ChannelError) || err.code !== 'payment_intent_unexpected_state') throw err;
      // Paid or canceled meanwhile: the PaymentIntent itself says which.
      const snapshot = snapshotOf(await retrieve('close_payment', reference, pi.id), reference);
      if (snapshot.state === 'pending' || snapshot.state === 'failed') {
        throw new ChannelError(`stripe refused to cancel ${pi.id} (${snapshot.rawStatus}) while it is still open`, 'stripe', 'payment_intent_unexpected_state', true);
      }
      return snapshot;
    }
  }

  // ---- Refunds ----------------------------------------------------------------------------------

  /** Every refund of a PaymentIntent (the list endpoint is consistent, unlike search), bounded. */
  async function refundsOf(operation: string, reference: string, paymentIntent: string): Promise<RefundView[]> {
    const out: RefundView[] = [];
    let startingAfter: string | undefined;
    for (let page = 0; page < MAX_REFUND_PAGES; page++) {
      const params = { payment_intent: paymentIntent, limit: REFUND_PAGE_SIZE, ...(startingAfter ? { starting_after: startingAfter } : {}) } satisfies Stripe.RefundListParams;
      const request: WireRequest = { method: 'GET', path: '/v1/refunds', params };
      const result = await call(operation, reference, request, () => stripe.refunds.list(params));
      const data: unknown = (result as { data?: unknown }).data;
      if (!Array.isArray(data)) throw new ChannelError('stripe listed refunds without data', 'stripe', 'invalid_response', true);
      for (const item of data) {
        const refund = readRefund(item);
        if (!refund) throw new ChannelError('stripe listed a malformed refund', 'stripe', 'invalid_response', false);
        if (refund.paymentIntent !== paymentIntent) {
          throw new ChannelError(`stripe listed refund ${refund.id} of ${String(refund.paymentIntent)} for ${paymentIntent}`, 'stripe', 'invalid_response', false);
        }
        out.push(refund);
      }
      if ((result as { has_more?: unknown }).has_more !== true || data.length === 0) return out;
      startingAfter = out[out.length - 1]!.id;
    }
    throw new ChannelError(`stripe lists more than ${MAX_REFUND_PAGES * REFUND_PAGE_SIZE} refunds for ${paymentIntent}`, 'stripe', 'too_many_refunds', false);
  }

  /** The refund as a snapshot, after checking that it is the one we asked about. */
  function refundSnapshotOf(refund: RefundView, expect: { reference: string; refundReference: string; paymentIntent?: string; currency: string }): RefundSnapshot {
    if (expect.paymentIntent && refund.paymentIntent !== expect.paymentIntent) {
      throw new ChannelError(`stripe answered refund ${refund.id} of ${String(refund.paymentIntent)}, asked about ${expect.paymentIntent}`, 'stripe', 'invalid_response', false);
    }
    const theirReference = refund.metadata[REFUND_REFERENCE_METADATA_KEY];
    if (theirReference !== undefined && theirReference !== expect.refundReference) {
      throw new ChannelError(`stripe refund ${refund.id} is refund ${theirReference}, asked about ${expect.refundReference}`, 'stripe', 'invalid_response', false);
    }
    const theirTrade = refund.metadata[REFERENCE_METADATA_KEY];
    if (theirTrade !== undefined && theirTrade !== expect.reference) {
      throw new ChannelError(`stripe refund ${refund.id} belongs to ${theirTrade}, asked about ${expect.reference}`, 'stripe', 'invalid_response', false);
    }
    const result = snapshotFromRefund(refund, expect.reference);
    if (!result.ok) throw new ChannelError(result.reason, 'stripe', 'invalid_response', false);
    if (result.snapshot.currency !== expect.currency) {
      throw new ChannelError(`stripe refund ${refund.id} is in ${result.snapshot.currency}, the payment in ${expect.currency}`, 'stripe', 'invalid_response', false);
    }
    return result.snapshot;
  }

  async function refundPayment(input: RefundRequest): Promise<RefundSnapshot> {
    const reference = checkReference(input.channelReference);
    const refundReference = checkRefundReference(input.refundReference);
    const money = toStripeAmount(input.amountMinor, input.currency);
    if (!money.ok) throw new ChannelError(money.message, 'stripe', money.code, false);
    const currency = checkCurrency(input.currency);
    const pi = await locate('refund_payment', reference, input.channelTransactionId);
    // Only reachable without the pi_ id: search may lag a fresh PaymentIntent by a minute.
    if (!pi) throw new ChannelError(`stripe has no PaymentIntent for ${reference} (search is eventually consistent)`, 'stripe', 'payment_not_found', true);
    if (pi.currency !== money.value.currency) {
      throw new ChannelError(`stripe PaymentIntent ${pi.id} is in ${pi.currency.toUpperCase()}, the refund in ${currency}`, 'stripe', 'currency_mismatch', false);
    }
    if (pi.status !== 'succeeded') {
      throw new ChannelError(`stripe PaymentIntent ${pi.id} is ${pi.status}: there is no successful charge to refund`, 'stripe', 'payment_not_refundable', false);
    }
    const expect = { reference, refundReference, paymentIntent: pi.id, currency };

    // Stripe forgets an Idempotency-Key after 24 hours: a refund number seen before is answered
    // from the refund that carries it, never sent again (the same number must never refund twice).
    const earlier = decisiveRefund((await refundsOf('refund_payment', reference, pi.id)).filter((r) => r.metadata[REFUND_REFERENCE_METADATA_KEY] === refundReference));
    if (earlier) {
      const snapshot = refundSnapshotOf(earlier, expect);
      if (earlier.amount !== money.value.amount) {
        throw new ChannelError(`refund ${refundReference} was already made at stripe for ${snapshot.amountMinor} ${currency} (${earlier.id}), asked ${input.amountMinor}`, 'stripe', 'idempotency_error', false);
      }
      return snapshot;
    }

    const reason = typeof input.reason === 'string' ? input.reason.trim() : '';
    const params = {
      payment_intent: pi.id,
      amount: money.value.amount,
      ...(STRIPE_REFUND_REASONS.has(reason) ? { reason: reason as Stripe.RefundCreateParams.Reason } : {}),
      metadata: {
        [REFUND_REFERENCE_METADATA_KEY]: refundReference,
        [REFERENCE_METADATA_KEY]: reference,
        ...(reason !== '' && !STRIPE_REFUND_REASONS.has(reason) ? { [REFUND_REASON_METADATA_KEY]: Array.from(reason).slice(0, MAX_METADATA_VALUE_CHARS).join('') } : {}),
      },
    } satisfies Stripe.RefundCreateParams;
    // The refund number is the Idempotency-Key: a repeat (ours or the SDK's retry) within 24 h
    // answers the same Refund; the same number with another amount is Stripe's 400 idempotency_error.
    const request: WireRequest = { method: 'POST', path: '/v1/refunds', params, idempotencyKey: refundReference };
    const created = await call('refund_payment', reference, request, () => stripe.refunds.create(params, { idempotencyKey: refundReference }));
    const refund = readRefund(created);
    if (!refund) throw new ChannelError('stripe answered the refund with something that is not a refund', 'stripe', 'invalid_response', false);
    if (refund.metadata[REFUND_REFERENCE_METADATA_KEY] !== refundReference) {
      throw new ChannelError(`stripe answered refund ${refund.id}, which is not refund ${refundReference}`, 'stripe', 'invalid_response', false);
    }
    const snapshot = refundSnapshotOf(refund, expect);
    if (refund.amount !== money.value.amount) {
      throw new ChannelError(`stripe refunded ${refund.amount} ${refund.currency} in ${refund.id}, asked ${money.value.amount}`, 'stripe', 'invalid_response', false);
    }
    return snapshot;
  }

  async function queryRefund(input: { channelReference: string; channelTransactionId?: string; refundReference: string; channelRefundId?: string; currency: string }): Promise<RefundSnapshot> {
    const currency = checkCurrency(input.currency);
    const reference = checkReference(input.channelReference);
    const refundReference = checkRefundReference(input.refundReference);
    const paymentIntent = input.channelTransactionId?.startsWith('pi_') ? input.channelTransactionId : undefined;
    if (input.channelRefundId) {
      const id = input.channelRefundId;
      if (!REFUND_ID_PATTERN.test(id)) throw new ChannelError(`${id} is not a Stripe refund id`, 'stripe', 'refund_id_invalid', false);
      const request: WireRequest = { method: 'GET', path: `/v1/refunds/${id}` };
      let found: unknown;
      try {
        found = await call('query_refund', reference, request, () => stripe.refunds.retrieve(id));
      } catch (err) {
        if (err instanceof ChannelError && err.code === 'resource_missing') throw new ChannelError(err.message, 'stripe', 'refund_not_found', false);
        throw err;
      }
      const refund = readRefund(found);
      if (!refund) throw new ChannelError(`stripe answered ${id} with something that is not a refund`, 'stripe', 'invalid_response', false);
      return refundSnapshotOf(refund, { reference, refundReference, currency, ...(paymentIntent ? { paymentIntent } : {}) });
    }
    const pi = await locate('query_refund', reference, paymentIntent);
    if (!pi) throw new ChannelError(`stripe has no PaymentIntent for ${reference}, so no refund ${refundReference}`, 'stripe', 'refund_not_found', false);
    const refund = decisiveRefund((await refundsOf('query_refund', reference, pi.id)).filter((r) => r.metadata[REFUND_REFERENCE_METADATA_KEY] === refundReference));
    // Never made (the create did not reach Stripe): refunding again with the same number is safe.
    if (!refund) throw new ChannelError(`stripe has no refund ${refundReference} on ${pi.id}`, 'stripe', 'refund_not_found', false);
    return refundSnapshotOf(refund, { reference, refundReference, paymentIntent: pi.id, currency });
  }

  // ---- The daily bill ------------------------------------------------------------------------------

  /**
   * The balance transactions created in the UTC day `billDate`, newest first as Stripe lists them
   * (`GET /v1/balance_transactions`, `created[gte]`/`created[lt]`, 100 a page, `starting_after`,
   * sources expanded so our references travel with them), written to `destination` as JSON Lines
   * (bill.ts). Bounded in pages, bytes and time; a failed download leaves no file behind. Each page
   * is audited by its size and ends, not its content.
   */
  async function downloadBill(input: { billDate: string; destination: string }): Promise<void> {
    const day = /^\d{4}-\d{2}-\d{2}$/.test(input.billDate) ? Date.parse(`${input.billDate}T00:00:00Z`) : NaN;
    if (Number.isNaN(day) || new Date(day).toISOString().slice(0, 10) !== input.billDate) {
      throw new ChannelError(`bill_date must be YYYY-MM-DD, got ${input.billDate}`, 'stripe', 'bill_date_invalid', false);
    }
    const bounds = config.bill ?? {};
    const pageSize = bounds.pageSize ?? BILL_PAGE_SIZE;
    const maxPages = bounds.maxPages ?? BILL_MAX_PAGES;
    const deadline = Date.now() + (bounds.deadlineMs ?? BILL_DEADLINE_MS);
    const created = { gte: day / 1000, lt: day / 1000 + 86_400 };
    const reference = `bill:${input.billDate}`;
    const writer = new StripeBillWriter(input.destination, bounds.maxBytes ?? BILL_MAX_BYTES);
    try {
      let startingAfter: string | undefined;
      for (let page = 0; ; page++) {
        if (page >= maxPages) throw new ChannelError(`stripe lists more than ${maxPages} pages of balance transactions for ${input.billDate}`, 'stripe', 'bill_too_large', false);
        if (Date.now() > deadline) throw new ChannelError(`the bill of ${input.billDate} took longer than allowed`, 'stripe', 'bill_timeout', true);
        const params = { created, limit: pageSize, expand: BILL_EXPAND, ...(startingAfter ? { starting_after: startingAfter } : {}) } satisfies Stripe.BalanceTransactionListParams;
        const request: WireRequest = { method: 'GET', path: '/v1/balance_transactions', params };
        const started = Date.now();
        let result: Stripe.ApiList<Stripe.BalanceTransaction>;
        try {
          result = await stripe.balanceTransactions.list(params);
        } catch (err) {
          const channelError = toChannelError(err);
          audit({ operation: 'download_bill', channelReference: reference, request, response: errorBody(err), error: `${channelError.code}: ${channelError.message}`, durationMs: Date.now() - started });
          throw channelError;
        }
        const data: unknown = (result as { data?: unknown }).data;
        const hasMore = (result as { has_more?: unknown }).has_more === true;
        const items = Array.isArray(data) ? data : [];
        const requestId = (result as { lastResponse?: { requestId?: string } }).lastResponse?.requestId;
        audit({
          operation: 'download_bill', channelReference: reference, request, durationMs: Date.now() - started,
          response: { object: 'list', count: items.length, has_more: hasMore, first: idOf(items[0]), last: idOf(items[items.length - 1]), ...(requestId ? { request_id: requestId } : {}) },
        });
        if (!Array.isArray(data)) throw new ChannelError('stripe listed balance transactions without data', 'stripe', 'invalid_response', true);
        for (const item of items) {
          if (!item || typeof item !== 'object' || (item as { object?: unknown }).object !== 'balance_transaction' || typeof (item as { id?: unknown }).id !== 'string') {
            throw new ChannelError('stripe listed something that is not a balance transaction', 'stripe', 'invalid_response', false);
          }
          try {
            await writer.write(item as unknown as Record<string, unknown>);
          } catch (err) {
            if (err instanceof RangeError) throw new ChannelError(`the bill of ${input.billDate} is larger than allowed`, 'stripe', 'bill_too_large', false);
            throw err;
          }
        }
        if (!hasMore || items.length === 0) break;
        const last = idOf(items[items.length - 1])!;
        if (last === startingAfter) throw new ChannelError('stripe answered the same page twice', 'stripe', 'invalid_response', true);
        startingAfter = last;
      }
      await writer.close();
    } catch (err) {
      await writer.abort();
      await fs.promises.rm(input.destination, { force: true });
      throw err;
    }
  }

  async function verifyNotification(input: NotificationInput): Promise<VerifyResult> {
    try {
      const contentType = (input.contentType ?? headerValue(input.headers, 'content-type') ?? '').toLowerCase();
      if (contentType && !contentType.startsWith('application/json')) return { ok: false, reason: `unexpected content type ${contentType}` };
      const checked = verifyStripeWebhook(input.rawBody, rawHeader(input.headers, 'stripe-signature'), config.webhookSecret, {
        nowMs: now(),
        toleranceS: config.toleranceS ?? STRIPE_TOLERANCE_S,
      });
      if (!checked.ok) return checked;
      return translateEvent(checked.event, { livemode });
    } catch (err) {
      // Never throw for bad input; an exception here is a bug, reported as a rejection.
      return { ok: false, reason: `unverifiable: ${err instanceof Error ? err.message : String(err)}` };
    }
  }

  return {
    channel: 'stripe',
    appId: config.accountId,
    methods: STRIPE_METHODS,
    createPayment,
    queryPayment,
    closePayment,
    refundPayment,
    queryRefund,
    downloadBill,
    verifyNotification,
    ackSuccess: (): Acknowledgement => ({ statusCode: 200, contentType: 'application/json', body: '{"received":true}' }),
    ackFailure: (reason: string): Acknowledgement => ({
      statusCode: 400,
      contentType: 'application/json',
      body: JSON.stringify({ received: false, error: String(reason).slice(0, 200) }),
    }),
  };
}

// ---- The SDK client ------------------------------------------------------------------------------

type NodeHttpClient = ReturnType<typeof Stripe.createNodeHttpClient>;

/** The SDK's Node client with every path prefixed (the sandbox is mounted under a path). */
export function prefixedHttpClient(inner: NodeHttpClient, basePath: string): NodeHttpClient {
  if (!/^(\/[A-Za-z0-9._~-]+)+$/.test(basePath)) throw new TypeError(`invalid base path ${basePath}`);
  const client = Object.create(inner) as NodeHttpClient;
  client.makeRequest = (host, port, path, method, headers, requestData, protocol, timeout) =>
    inner.makeRequest(host, port, `${basePath}${path}`, method, headers, requestData, protocol, timeout);
  return client;
}

function buildClient(config: StripeConfig): Stripe {
  const base = new URL(config.apiBase ?? STRIPE_DEFAULT_API_BASE);
  const protocol = base.protocol === 'http:' ? 'http' : 'https';
  const basePath = base.pathname.replace(/\/+$/, '');
  const inner = Stripe.createNodeHttpClient();
  return new Stripe(config.secretKey, {
    host: base.hostname.replace(/^\[(.*)\]$/, '$1'),
    port: base.port || (protocol === 'http' ? 80 : 443),
    protocol,
    httpClient: basePath ? prefixedHttpClient(inner, basePath) : inner,
    timeout: config.timeoutMs ?? 10_000,
    maxNetworkRetries: config.maxNetworkRetries ?? 2,
    appInfo: { name: 'knowpay', version: '0.1.0' },
  });
}

// ---- Checks ------------------------------------------------------------------------------------

function assertConfig(config: StripeConfig): void {
  for (const key of ['secretKey', 'webhookSecret', 'accountId'] as const) {
    if (typeof config[key] !== 'string' || config[key].trim() === '') throw new TypeError(`StripeConfig.${key} is required`);
  }
  if (!/^(sk|rk)_(test|live)_[A-Za-z0-9]+$/.test(config.secretKey)) throw new TypeError('StripeConfig.secretKey must be an sk_… or rk_… key');
  if (config.toleranceS !== undefined && !(config.toleranceS > 0)) throw new TypeError('StripeConfig.toleranceS must be > 0');
  if (config.maxNetworkRetries !== undefined && !(Number.isInteger(config.maxNetworkRetries) && config.maxNetworkRetries >= 0 && config.maxNetworkRetries <= 5)) {
    throw new TypeError('StripeConfig.maxNetworkRetries must be an integer from 0 to 5');
  }
  if (config.apiBase !== undefined) {
    const url = new URL(config.apiBase); // throws on a malformed base
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new TypeError('StripeConfig.apiBase must be http(s)');
    if (url.search || url.hash || url.username || url.password) throw new TypeError('StripeConfig.apiBase must be a plain origin with an optional path');
  }
}

function checkMethod(method: string): void {
  if (!(STRIPE_METHODS as readonly string[]).includes(method)) {
    throw new ChannelError(`stripe does not support method ${method}`, 'stripe', 'method_not_supported', false);
  }
}

function checkCurrency(currency: string): string {
  const iso = stripeCurrency(currency);
  if (!iso) throw new ChannelError(`stripe does not accept currency ${currency}`, 'stripe', 'currency_not_supported', false);
  return iso;
}

function checkReference(reference: string): string {
  if (typeof reference !== 'string' || !REFERENCE_PATTERN.test(reference)) {
    throw new ChannelError('the reference must be 1-64 letters, digits, _ or -', 'stripe', 'reference_invalid', false);
  }
  return reference;
}

function checkRefundReference(reference: string): string {
  if (typeof reference !== 'string' || !REFERENCE_PATTERN.test(reference)) {
    throw new ChannelError('the refund reference must be 1-64 letters, digits, _ or -', 'stripe', 'refund_reference_invalid', false);
  }
  return reference;
}

function checkSubject(subject: string): string {
  const chars = Array.from((subject ?? '').trim());
  if (chars.length === 0) throw new ChannelError('stripe requires a non-empty description', 'stripe', 'subject_invalid', false);
  return chars.slice(0, MAX_DESCRIPTION_CHARS).join('');
}

function metadataFor(input: CreatePaymentInput): Record<string, string> {
  const metadata: Record<string, string> = { [REFERENCE_METADATA_KEY]: input.channelReference };
  const extra: Array<[string, unknown]> = [
    [PAYMENT_ID_METADATA_KEY, input.paymentId],
    ['knowpay_order_id', input.orderId],
    ['knowpay_customer_id', input.customerId],
  ];
  for (const [k, v] of extra) if (typeof v === 'string' && v !== '' && v.length <= MAX_METADATA_VALUE_CHARS) metadata[k] = v;
  return metadata;
}

function checkedIntent(value: unknown, reference: string, what: string): IntentView {
  const pi = readIntent(value);
  if (!pi) throw new ChannelError(`stripe ${what} answered something that is not a payment_intent`, 'stripe', 'invalid_response', false);
  if (pi.metadata[REFERENCE_METADATA_KEY] !== reference) {
    throw new ChannelError(`stripe ${what} answered ${pi.id}, which is not for ${reference}`, 'stripe', 'invalid_response', false);
  }
  return pi;
}

/** A header by case-insensitive name, as given (a repeated header stays an array). */
function rawHeader(headers: NotificationInput['headers'], name: string): string | string[] | undefined {
  if (headers[name] !== undefined) return headers[name];
  const key = Object.keys(headers).find((k) => k.toLowerCase() === name);
  return key === undefined ? undefined : headers[key];
}

function headerValue(headers: NotificationInput['headers'], name: string): string | undefined {
  const v = rawHeader(headers, name);
  return Array.isArray(v) ? v[0] : v;
}

// ---- Errors ------------------------------------------------------------------------------------

/** SDK failures as ChannelErrors: the Stripe error code when there is one, else the class. */
export function toChannelError(err: unknown): ChannelError {
  if (err instanceof ChannelError) return err;
  if (err instanceof Stripe.errors.StripeError) {
    const message = err.message || err.type;
    const status = err.statusCode ?? 0;
    // The SDK classes a 409 as StripeAPIError whatever its type: read the type Stripe sent.
    if (err.rawType === 'idempotency_error') {
      // 400: the key was used with other parameters; 409: the same key is still in flight.
      return new ChannelError(message, 'stripe', 'idempotency_error', status === 409);
    }
    switch (err.type) {
      case 'StripeConnectionError':
        return new ChannelError(message, 'stripe', 'transport_error', true);
      case 'StripeAuthenticationError':
        return new ChannelError(message, 'stripe', 'authentication_error', false);
      case 'StripePermissionError':
        return new ChannelError(message, 'stripe', 'permission_error', false);
      case 'StripeRateLimitError':
        return new ChannelError(message, 'stripe', 'rate_limited', true);
      case 'StripeIdempotencyError':
        return new ChannelError(message, 'stripe', 'idempotency_error', status === 409);
      case 'StripeCardError':
        return new ChannelError(message, 'stripe', err.code ?? 'card_error', false);
      case 'StripeInvalidRequestError':
        return new ChannelError(message, 'stripe', err.code ?? refundRefusalCode(message) ?? 'invalid_request_error', err.code === 'lock_timeout');
      case 'StripeAPIError':
        return new ChannelError(message, 'stripe', err.code ?? 'api_error', true);
      default:
        return new ChannelError(message, 'stripe', err.code ?? 'channel_error', status >= 500 || status === 409);
    }
  }
  const message = err instanceof Error ? err.message : String(err);
  return new ChannelError(message, 'stripe', 'unexpected_error', false);
}

/**
 * Stripe's refund refusals, for answers that carry no `code` (Stripe has sent some of these with
 * the message only): more than the remainder, nothing left, nothing paid.
 */
function refundRefusalCode(message: string): string | null {
  if (/is greater than unrefunded amount on charge/i.test(message)) return 'amount_too_large';
  if (/has already been refunded/i.test(message)) return 'charge_already_refunded';
  if (/does not have a successful charge to refund/i.test(message)) return 'payment_not_refundable';
  return null;
}

function idOf(item: unknown): string | undefined {
  const id = item && typeof item === 'object' ? (item as { id?: unknown }).id : undefined;
  return typeof id === 'string' ? id : undefined;
}

function errorBody(err: unknown): unknown {
  if (!(err instanceof Stripe.errors.StripeError)) return null;
  return { status: err.statusCode ?? null, type: err.rawType ?? null, code: err.code ?? null, message: err.message, param: err.param ?? null, request_id: err.requestId ?? null };
}

/** The SDK adds `lastResponse` (headers, request id) to results; keep only the request id. */
function withoutLastResponse(value: unknown): unknown {
  if (!value || typeof value !== 'object') return value;
  const { lastResponse, ...rest } = value as Record<string, unknown> & { lastResponse?: { requestId?: string } };
  return { ...rest, ...(lastResponse?.requestId ? { request_id: lastResponse.requestId } : {}) };
}

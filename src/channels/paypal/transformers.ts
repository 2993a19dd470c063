/**
 * PayPal Orders v2 wire details that are not transport or signatures: amounts, the create-order
 * body, status mapping, order/capture → TradeSnapshot, webhook event → VerifiedNotification, and
 * redaction for the audit log. Pure functions only.
 */
import { formatDecimal, normalizeCurrency, parseDecimal } from '../../domain/money.ts';
import { CHANNEL_CURRENCIES } from '../routing.ts';
import type { ChannelTradeState, RefundSnapshot, RefundState, TradeSnapshot, VerifiedNotification } from '../types.ts';

// ---- Amounts ------------------------------------------------------------------------------------

/** Currencies PayPal accepts (routing.ts is the one list). */
export const PAYPAL_CURRENCIES: ReadonlySet<string> = new Set(CHANNEL_CURRENCIES.paypal ?? []);

/**
 * PayPal refuses decimals for these (DECIMALS_NOT_SUPPORTED) although ISO 4217 gives HUF and TWD
 * two minor digits: an amount there must be whole units.
 */
export const PAYPAL_NO_DECIMALS: ReadonlySet<string> = new Set(['JPY', 'HUF', 'TWD']);

/** PayPal's `value`: 1234n USD → "12.34"; 500n JPY → "500"; 12300n TWD → "123"; 12345n TWD → null. */
export function toPayPalValue(amountMinor: bigint, currency: string): string | null {
  if (amountMinor <= 0n) return null;
  const text = formatDecimal(amountMinor, currency);
  if (!PAYPAL_NO_DECIMALS.has(currency)) return text;
  const [whole, fraction = ''] = text.split('.');
  return /^0*$/.test(fraction) ? whole! : null;
}

/** A PayPal `value` back to minor units; null for anything but a plain unsigned decimal. */
export function fromPayPalValue(value: unknown, currency: string): bigint | null {
  if (typeof value !== 'string' || !/^\d{1,18}(\.\d{1,8})?$/.test(value)) return null;
  return parseDecimal(value, currency);
}

export interface PayPalMoney {
  currency_code: string;
  value: string;
}

/** `{currency_code, value}` → minor units in a currency money.ts knows; null when malformed. */
export function parseMoney(money: unknown): { amountMinor: bigint; currency: string } | null {
  if (!isObject(money)) return null;
  const currency = typeof money['currency_code'] === 'string' ? normalizeCurrency(money['currency_code']) : null;
  if (!currency || currency !== money['currency_code']) return null;
  const amountMinor = fromPayPalValue(money['value'], currency);
  return amountMinor === null ? null : { amountMinor, currency };
}

// ---- Create order -------------------------------------------------------------------------------

export interface CreateOrderFields {
  reference: string;
  currency: string;
  value: string;
  description: string;
  returnUrl: string;
  cancelUrl: string;
  brandName?: string;
}

/**
 * `POST /v2/checkout/orders`: intent CAPTURE, one purchase unit carrying our reference as both
 * `custom_id` (echoed on captures and webhooks) and `invoice_id` (PayPal refuses a second capture
 * with the same invoice id), and the redirect flow's experience context.
 */
export function buildCreateOrderBody(f: CreateOrderFields): Record<string, unknown> {
  return {
    intent: 'CAPTURE',
    purchase_units: [
      {
        custom_id: f.reference,
        invoice_id: f.reference,
        description: f.description,
        amount: { currency_code: f.currency, value: f.value },
      },
    ],
    payment_source: {
      paypal: {
        experience_context: {
          return_url: f.returnUrl,
          cancel_url: f.cancelUrl,
          user_action: 'PAY_NOW',
          shipping_preference: 'NO_SHIPPING',
          ...(f.brandName ? { brand_name: f.brandName } : {}),
        },
      },
    },
  };
}

/** PayPal's limit for description, custom_id and invoice_id: 127 characters. */
export const PAYPAL_TEXT_MAX = 127;

export function truncateText(text: string, max = PAYPAL_TEXT_MAX): string {
  return Array.from(text.trim()).slice(0, max).join('');
}

// ---- Orders and captures --------------------------------------------------------------------------

export type OrderStatus = 'CREATED' | 'SAVED' | 'APPROVED' | 'VOIDED' | 'COMPLETED' | 'PAYER_ACTION_REQUIRED';
export type CaptureStatus = 'COMPLETED' | 'DECLINED' | 'PARTIALLY_REFUNDED' | 'PENDING' | 'REFUNDED' | 'FAILED';

export interface PayPalLink {
  href: string;
  rel: string;
  method?: string;
}

/** The parts of an order we read; everything else is kept only in the audit log. */
export interface OrderView {
  id: string;
  status: string;
  links: PayPalLink[];
  customId: string | null;
  amount: { amountMinor: bigint; currency: string } | null;
  payeeMerchantId: string | null;
  capture: CaptureView | null;
  /** `purchase_units[0].payments.refunds[]` (at most MAX_ORDER_REFUNDS are read). */
  refunds: RefundView[];
}

export interface CaptureView {
  id: string;
  status: string;
  customId: string | null;
  amount: { amountMinor: bigint; currency: string } | null;
  payeeMerchantId: string | null;
}

/** Read an order resource; null when it lacks an id or status (not an order). */
export function readOrder(body: unknown): OrderView | null {
  if (!isObject(body) || !isNonEmptyString(body['id']) || !isNonEmptyString(body['status'])) return null;
  const links = Array.isArray(body['links']) ? body['links'].filter(isLink) : [];
  const unit = Array.isArray(body['purchase_units']) && isObject(body['purchase_units'][0]) ? body['purchase_units'][0] : null;
  const captures = unit && isObject(unit['payments']) && Array.isArray(unit['payments']['captures']) ? unit['payments']['captures'] : [];
  const capture = captures.length > 0 ? readCapture(captures[captures.length - 1]) : null;
  const refundList = unit && isObject(unit['payments']) && Array.isArray(unit['payments']['refunds']) ? unit['payments']['refunds'] : [];
  const refunds = refundList.slice(0, MAX_ORDER_REFUNDS).map(readRefund).filter((r): r is RefundView => r !== null);
  return {
    id: body['id'],
    status: body['status'],
    links,
    customId: unit && isNonEmptyString(unit['custom_id']) ? unit['custom_id'] : null,
    amount: unit ? parseMoney(unit['amount']) : null,
    payeeMerchantId: unit ? merchantIdOf(unit['payee']) : null,
    capture,
    refunds,
  };
}

export function readCapture(body: unknown): CaptureView | null {
  if (!isObject(body) || !isNonEmptyString(body['id']) || !isNonEmptyString(body['status'])) return null;
  return {
    id: body['id'],
    status: body['status'],
    customId: isNonEmptyString(body['custom_id']) ? body['custom_id'] : isNonEmptyString(body['invoice_id']) ? body['invoice_id'] : null,
    amount: parseMoney(body['amount']),
    payeeMerchantId: merchantIdOf(body['payee']),
  };
}

function merchantIdOf(payee: unknown): string | null {
  return isObject(payee) && isNonEmptyString(payee['merchant_id']) ? payee['merchant_id'] : null;
}

/** Where the buyer approves: `payer-action` (payment_source flow) or `approve` (classic flow). */
export function approvalLink(order: OrderView): string | null {
  const link = order.links.find((l) => l.rel === 'payer-action') ?? order.links.find((l) => l.rel === 'approve');
  if (!link) return null;
  try {
    const url = new URL(link.href);
    return url.protocol === 'https:' || url.protocol === 'http:' ? url.toString() : null;
  } catch {
    return null;
  }
}

/** Capture status → our words. Refunded captures were paid (refunds are tracked on their own). */
export function mapCaptureStatus(status: string | undefined): ChannelTradeState {
  switch (status) {
    case 'COMPLETED':
    case 'PARTIALLY_REFUNDED':
    case 'REFUNDED':
      return 'succeeded';
    case 'DECLINED':
    case 'FAILED':
      return 'failed';
    case 'PENDING':
    default:
      return 'pending';
  }
}

/**
 * Order status → our words, before any capture decision: VOIDED is closed; a COMPLETED order is
 * as its capture says; every other status (APPROVED too: it needs our capture) is pending.
 */
export function mapOrderStatus(order: Pick<OrderView, 'status' | 'capture'>): ChannelTradeState {
  if (order.status === 'VOIDED') return 'closed';
  if (order.status === 'COMPLETED') return order.capture ? mapCaptureStatus(order.capture.status) : 'pending';
  return 'pending';
}

/**
 * The snapshot of an order: a capture (when there is one) gives the transaction id, amount and
 * status; otherwise the order id and the purchase unit's amount. `state` may be overridden by the
 * caller's capture/close decision.
 */
export function snapshotOfOrder(order: OrderView, reference: string, state = mapOrderStatus(order)): TradeSnapshot {
  const capture = order.status === 'COMPLETED' ? order.capture : null;
  const amount = capture?.amount ?? order.amount;
  return {
    state,
    channelReference: reference,
    channelTransactionId: capture?.id ?? order.id,
    ...(amount ? { amountMinor: amount.amountMinor, currency: amount.currency } : {}),
    rawStatus: capture ? `${order.status}/${capture.status}` : order.status,
  };
}

// ---- Refunds -------------------------------------------------------------------------------------------

export type RefundStatus = 'CANCELLED' | 'FAILED' | 'PENDING' | 'COMPLETED';

/** PayPal's limit for a refund's note_to_payer. */
export const PAYPAL_NOTE_MAX = 255;
/** Refunds read from one order representation (PayPal allows at most 10 partial refunds a capture, more with a reversal). */
export const MAX_ORDER_REFUNDS = 50;

/** The parts of a refund resource we read (`/v2/payments/refunds/{id}`, a refund webhook's resource). */
export interface RefundView {
  id: string;
  status: string;
  amount: { amountMinor: bigint; currency: string } | null;
  invoiceId: string | null;
  customId: string | null;
  /** From the `up` link (`…/v2/payments/captures/{id}`). */
  captureId: string | null;
  /** `payer.merchant_id`: the merchant the refund is paid from (us). */
  payerMerchantId: string | null;
}

export function readRefund(body: unknown): RefundView | null {
  if (!isObject(body) || !isNonEmptyString(body['id']) || !isNonEmptyString(body['status'])) return null;
  const links = Array.isArray(body['links']) ? body['links'].filter(isLink) : [];
  const up = links.find((l) => l.rel === 'up');
  return {
    id: body['id'],
    status: body['status'],
    amount: parseMoney(body['amount']),
    invoiceId: isNonEmptyString(body['invoice_id']) ? body['invoice_id'] : null,
    customId: isNonEmptyString(body['custom_id']) ? body['custom_id'] : null,
    captureId: up ? captureIdOfHref(up.href) : null,
    payerMerchantId: merchantIdOf(body['payer']),
  };
}

/** `https://api-m.paypal.com/v2/payments/captures/8MC585209K746392H` → `8MC585209K746392H`. */
export function captureIdOfHref(href: string): string | null {
  try {
    const m = /\/v2\/payments\/captures\/([A-Za-z0-9-]{1,64})$/.exec(new URL(href).pathname);
    return m ? m[1]! : null;
  } catch {
    return null;
  }
}

/** Refund status → our words: only COMPLETED succeeded, FAILED/CANCELLED failed; anything else is pending. */
export function mapRefundStatus(status: string | undefined): RefundState {
  switch (status) {
    case 'COMPLETED':
      return 'succeeded';
    case 'FAILED':
    case 'CANCELLED':
      return 'failed';
    case 'PENDING':
    default:
      return 'pending';
  }
}

/** A refund resource in our words; `refundReference` only when it is ours (the caller knows). */
export function snapshotOfRefund(refund: RefundView, channelReference: string, refundReference?: string): RefundSnapshot {
  return {
    state: mapRefundStatus(refund.status),
    ...(refundReference !== undefined ? { refundReference } : {}),
    channelRefundId: refund.id,
    channelReference,
    ...(refund.amount ? { amountMinor: refund.amount.amountMinor, currency: refund.amount.currency } : {}),
    rawStatus: refund.status,
  };
}

export interface RefundFields {
  currency: string;
  value: string;
  /** Our refund reference: PayPal-Request-Id and invoice_id. */
  refundReference: string;
  /** Our trade number: custom_id, so the refund resource (and its webhook) names our trade. */
  channelReference: string;
  noteToPayer: string | null;
}

/** `POST /v2/payments/captures/{id}/refund`: always an explicit amount (a partial refund never becomes a full one). */
export function buildRefundBody(f: RefundFields): Record<string, unknown> {
  return {
    amount: { currency_code: f.currency, value: f.value },
    invoice_id: f.refundReference,
    custom_id: f.channelReference,
    ...(f.noteToPayer ? { note_to_payer: f.noteToPayer } : {}),
  };
}

// ---- Webhook events -------------------------------------------------------------------------------

/** Events that say something about a payment; anything else is acknowledged and ignored. */
export const PAYMENT_EVENTS = {
  /** The buyer approved: the money moves only with our capture, which queryPayment performs. */
  orderApproved: 'CHECKOUT.ORDER.APPROVED',
  /** The order can no longer be paid; queryPayment confirms it reads VOIDED. */
  orderVoided: 'CHECKOUT.ORDER.VOIDED',
  captureCompleted: 'PAYMENT.CAPTURE.COMPLETED',
  captureDenied: 'PAYMENT.CAPTURE.DENIED',
} as const;

/** Events whose resource is a refund: ours (REFUNDED; also refunds made on PayPal's site) and PayPal's own (REVERSED). */
export const REFUND_EVENTS = {
  refunded: 'PAYMENT.CAPTURE.REFUNDED',
  reversed: 'PAYMENT.CAPTURE.REVERSED',
} as const;

export interface WebhookEvent {
  id: string;
  eventType: string;
  resource: Record<string, unknown>;
}

export function readEvent(body: unknown): WebhookEvent | null {
  if (!isObject(body) || !isNonEmptyString(body['id']) || !isNonEmptyString(body['event_type']) || !isObject(body['resource'])) return null;
  return { id: body['id'], eventType: body['event_type'], resource: body['resource'] };
}

export type Translation =
  | {
      ok: true;
      notification: VerifiedNotification;
      /**
       * For refund events: the resource as read. The connector must then settle what a pure
       * mapping cannot — whether invoice_id is one of our refund references, and the trade number
       * when custom_id is absent (`refund.channelReference` is '' then).
       */
      refund?: RefundView;
    }
  | { ok: false; reason: string };

/**
 * A verified event in our words (pure). `merchantId`, when configured, is the payee the resources
 * must name; the caller compares `appId` with it.
 */
export function translateEvent(event: WebhookEvent, merchantId: string | null): Translation {
  const type = event.eventType;
  if (type === PAYMENT_EVENTS.orderApproved || type === PAYMENT_EVENTS.orderVoided) {
    const order = readOrder(event.resource);
    if (!order) return { ok: false, reason: `${type}: resource is not an order` };
    if (!order.customId) return ignored(event, 'order without custom_id (not created by Knowpay)');
    if (!order.amount) return { ok: false, reason: `${type}: unparsable purchase_units[0].amount` };
    return {
      ok: true,
      notification: {
        eventId: event.id,
        kind: 'payment',
        requery: true,
        ...appIdOf(order.payeeMerchantId, merchantId),
        trade: {
          state: 'pending',
          channelReference: order.customId,
          channelTransactionId: order.id,
          amountMinor: order.amount.amountMinor,
          currency: order.amount.currency,
          rawStatus: order.status,
        },
      },
    };
  }
  if (type === PAYMENT_EVENTS.captureCompleted || type === PAYMENT_EVENTS.captureDenied) {
    const capture = readCapture(event.resource);
    if (!capture) return { ok: false, reason: `${type}: resource is not a capture` };
    if (!capture.customId) return ignored(event, 'capture without custom_id (not created by Knowpay)');
    if (!capture.amount) return { ok: false, reason: `${type}: unparsable amount` };
    const state = mapCaptureStatus(capture.status);
    const expected: ChannelTradeState = type === PAYMENT_EVENTS.captureCompleted ? 'succeeded' : 'failed';
    if (state !== expected) return { ok: false, reason: `${type} with capture status ${capture.status}` };
    return {
      ok: true,
      notification: {
        eventId: event.id,
        kind: 'payment',
        ...appIdOf(capture.payeeMerchantId, merchantId),
        trade: {
          state,
          channelReference: capture.customId,
          channelTransactionId: capture.id,
          amountMinor: capture.amount.amountMinor,
          currency: capture.amount.currency,
          rawStatus: capture.status,
        },
      },
    };
  }
  if (type === REFUND_EVENTS.refunded || type === REFUND_EVENTS.reversed) {
    const refund = readRefund(event.resource);
    if (!refund) return { ok: false, reason: `${type}: resource is not a refund` };
    if (!refund.amount) return { ok: false, reason: `${type}: unparsable amount` };
    // Our refunds carry our refund reference as invoice_id. A reversal is PayPal's, never ours; an
    // invoice_id equal to the trade number is the order's, copied onto a refund made on PayPal's site.
    const ours = type === REFUND_EVENTS.refunded && refund.invoiceId !== null && refund.invoiceId !== refund.customId;
    return {
      ok: true,
      refund,
      notification: {
        eventId: event.id,
        kind: 'refund',
        ...appIdOf(refund.payerMerchantId, merchantId),
        refund: snapshotOfRefund(refund, refund.customId ?? '', ours ? refund.invoiceId! : undefined),
      },
    };
  }
  return ignored(event, `event type ${type} is not used`);
}

function appIdOf(payee: string | null, merchantId: string | null): { appId?: string } {
  return merchantId !== null && payee !== null ? { appId: payee } : {};
}

function ignored(event: WebhookEvent, reason: string): Translation {
  const customId = isNonEmptyString(event.resource['custom_id']) ? event.resource['custom_id'] : undefined;
  return { ok: true, notification: { eventId: event.id, kind: 'ignored', reason, ...(customId ? { channelReference: customId } : {}) } };
}

// ---- PayPal error bodies ------------------------------------------------------------------------

export interface PayPalErrorInfo {
  name: string | null;
  issue: string | null;
  message: string | null;
}

/** `{name, message, details:[{issue}]}` (REST) or `{error, error_description}` (OAuth). */
export function readError(body: unknown): PayPalErrorInfo {
  if (!isObject(body)) return { name: null, issue: null, message: null };
  if (isNonEmptyString(body['error'])) {
    return { name: body['error'], issue: body['error'], message: isNonEmptyString(body['error_description']) ? body['error_description'] : null };
  }
  const details = Array.isArray(body['details']) ? body['details'] : [];
  const first = isObject(details[0]) ? details[0] : null;
  return {
    name: isNonEmptyString(body['name']) ? body['name'] : null,
    issue: first && isNonEmptyString(first['issue']) ? first['issue'] : null,
    message: isNonEmptyString(body['message']) ? body['message'] : null,
  };
}

// ---- Audit redaction ------------------------------------------------------------------------------

const SECRET_KEYS = /^(authorization|access_token|refresh_token|id_token|client_secret|secret|password|paypal-transmission-sig|transmission_sig|private_?key)$/i;
const REDACTED = '[REDACTED]';

/** Deep copy with secrets replaced: tokens, credentials, signatures; also `Basic …`/`Bearer …` strings. */
export function redactSecrets(value: unknown, depth = 0): unknown {
  if (depth > 20) return REDACTED;
  if (typeof value === 'string') return /^(Basic|Bearer)\s+/i.test(value) ? value.replace(/^(Basic|Bearer)\s+.*/i, `$1 ${REDACTED}`) : value;
  if (typeof value === 'bigint') return value.toString();
  if (Array.isArray(value)) return value.map((v) => redactSecrets(v, depth + 1));
  if (value && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
      // An Authorization header keeps its scheme (`Bearer [REDACTED]`): useful, and not a secret.
      out[k] = !SECRET_KEYS.test(k) ? redactSecrets(v, depth + 1) : typeof v === 'string' && /^(Basic|Bearer)\s/i.test(v) ? redactSecrets(v, depth + 1) : REDACTED;
    }
    return out;
  }
  return value;
}

// ---- Small guards -----------------------------------------------------------------------------------

export function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function isNonEmptyString(v: unknown): v is string {
  return typeof v === 'string' && v !== '';
}

function isLink(v: unknown): v is PayPalLink {
  return isObject(v) && typeof v['href'] === 'string' && typeof v['rel'] === 'string';
}

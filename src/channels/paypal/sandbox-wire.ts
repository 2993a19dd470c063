/**
 * What the PayPal sandbox says on the wire: order and capture representations, webhook events,
 * PayPal's error bodies, and validation of a create-order request the way PayPal answers it.
 * Pure functions over SandboxOrder.
 */
import { randomBytes } from 'node:crypto';
import { currencyExponent } from '../../domain/money.ts';
import type { SandboxOrder } from './sandbox-orders.ts';
import type { SandboxRefund } from './sandbox-refunds.ts';
import { PAYPAL_CURRENCIES, PAYPAL_NO_DECIMALS, PAYPAL_TEXT_MAX, fromPayPalValue, isObject, toPayPalValue, type PayPalLink } from './transformers.ts';

export interface WireContext {
  /** Absolute base of the sandbox's REST API: `${publicBaseUrl}/sandbox/paypal`. */
  apiBase: string;
  merchantId: string;
  merchantEmail: string;
}

/** PayPal's timestamps: seconds precision, Z. */
export function paypalTime(d: Date): string {
  return d.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

function value(amountMinor: bigint, currency: string): string {
  const v = toPayPalValue(amountMinor, currency);
  if (v === null) throw new Error(`sandbox holds an amount PayPal cannot show: ${amountMinor} ${currency}`);
  return v;
}

export function money(amountMinor: bigint, currency: string) {
  return { currency_code: currency, value: value(amountMinor, currency) };
}

/** The sandbox's fee: 3.49% + a fixed 0.49 (in PayPal's smallest unit for the currency), at most the amount. */
export function paypalFee(amountMinor: bigint, currency: string): bigint {
  const unit = PAYPAL_NO_DECIMALS.has(currency) ? 10n ** BigInt(currencyExponent(currency)) : 1n;
  const percent = (amountMinor * 349n + 5000n) / 10000n;
  const rounded = ((percent + unit - 1n) / unit) * unit;
  const fee = rounded + 49n * unit;
  return fee > amountMinor ? amountMinor : fee;
}

function payer(o: SandboxOrder) {
  return {
    name: { given_name: 'Sandbox', surname: 'Buyer' },
    email_address: o.payerEmail,
    payer_id: o.payerId,
    address: { country_code: 'US' },
  };
}

/** Capture statuses that were paid (a breakdown is shown), and those that can still be refunded. */
const PAID_CAPTURE = new Set(['COMPLETED', 'PARTIALLY_REFUNDED', 'REFUNDED']);
const REFUNDABLE_CAPTURE = new Set(['COMPLETED', 'PARTIALLY_REFUNDED']);

export function captureJson(o: SandboxOrder, ctx: WireContext, forWebhook = false): Record<string, unknown> {
  const captureUrl = `${ctx.apiBase}/v2/payments/captures/${o.captureId}`;
  const completed = PAID_CAPTURE.has(o.captureStatus ?? '');
  const fee = o.feeMinor ?? 0n;
  return {
    id: o.captureId,
    status: o.captureStatus,
    amount: money(o.amountMinor, o.currency),
    final_capture: true,
    seller_protection: { status: 'ELIGIBLE', dispute_categories: ['ITEM_NOT_RECEIVED', 'UNAUTHORIZED_TRANSACTION'] },
    ...(completed
      ? { seller_receivable_breakdown: { gross_amount: money(o.amountMinor, o.currency), paypal_fee: money(fee, o.currency), net_amount: money(o.amountMinor - fee, o.currency) } }
      : {}),
    ...(o.customId ? { custom_id: o.customId } : {}),
    ...(o.invoiceId ? { invoice_id: o.invoiceId } : {}),
    ...(forWebhook ? { supplementary_data: { related_ids: { order_id: o.id } }, payee: { email_address: ctx.merchantEmail, merchant_id: ctx.merchantId } } : {}),
    links: [
      { href: captureUrl, rel: 'self', method: 'GET' },
      ...(REFUNDABLE_CAPTURE.has(o.captureStatus ?? '') ? [{ href: `${captureUrl}/refund`, rel: 'refund', method: 'POST' }] : []),
      { href: `${ctx.apiBase}/v2/checkout/orders/${o.id}`, rel: 'up', method: 'GET' },
    ],
    create_time: paypalTime(o.capturedAt ?? o.updatedAt),
    update_time: paypalTime(o.captureStatus === 'COMPLETED' || o.captureStatus === 'DECLINED' ? (o.capturedAt ?? o.updatedAt) : o.updatedAt),
  };
}

/** A refund resource (`/v2/payments/refunds/{id}`, the refund call's answer, refund webhooks). */
export function refundJson(r: SandboxRefund, ctx: WireContext): Record<string, unknown> {
  return {
    id: r.id,
    amount: money(r.amountMinor, r.currency),
    ...(r.invoiceId ? { invoice_id: r.invoiceId } : {}),
    ...(r.customId ? { custom_id: r.customId } : {}),
    ...(r.noteToPayer ? { note_to_payer: r.noteToPayer } : {}),
    // PayPal no longer returns its fee on refunds (US, since 2020): the whole amount comes from the merchant.
    ...(r.status === 'COMPLETED'
      ? {
          seller_payable_breakdown: {
            gross_amount: money(r.amountMinor, r.currency),
            paypal_fee: zeroMoney(r.currency),
            net_amount: money(r.amountMinor, r.currency),
            total_refunded_amount: money(r.totalRefundedMinor ?? r.amountMinor, r.currency),
          },
        }
      : {}),
    status: r.status,
    ...(r.status === 'PENDING' ? { status_details: { reason: 'ECHECK' } } : {}),
    payer: { email_address: ctx.merchantEmail, merchant_id: ctx.merchantId },
    create_time: paypalTime(r.createdAt),
    update_time: paypalTime(r.updatedAt),
    links: [
      { href: `${ctx.apiBase}/v2/payments/refunds/${r.id}`, rel: 'self', method: 'GET' },
      { href: `${ctx.apiBase}/v2/payments/captures/${r.captureId}`, rel: 'up', method: 'GET' },
    ],
  };
}

/** `{currency_code, value: "0.00"}` ("0" where PayPal takes no decimals). */
function zeroMoney(currency: string) {
  const digits = PAYPAL_NO_DECIMALS.has(currency) ? 0 : currencyExponent(currency);
  return { currency_code: currency, value: digits === 0 ? '0' : `0.${'0'.repeat(digits)}` };
}

export function approveUrl(o: SandboxOrder, ctx: WireContext): string {
  return `${ctx.apiBase}/checkoutnow?token=${o.id}`;
}

function links(o: SandboxOrder, ctx: WireContext): PayPalLink[] {
  const self = `${ctx.apiBase}/v2/checkout/orders/${o.id}`;
  const out: PayPalLink[] = [{ href: self, rel: 'self', method: 'GET' }];
  if (o.status === 'PAYER_ACTION_REQUIRED') out.push({ href: approveUrl(o, ctx), rel: 'payer-action', method: 'GET' });
  if (o.status === 'CREATED') out.push({ href: approveUrl(o, ctx), rel: 'approve', method: 'GET' });
  if (o.status === 'CREATED' || o.status === 'APPROVED') {
    out.push({ href: self, rel: 'update', method: 'PATCH' }, { href: `${self}/capture`, rel: 'capture', method: 'POST' });
  }
  return out;
}

/** The full order representation (`Prefer: return=representation`, GET). */
export function orderJson(o: SandboxOrder, ctx: WireContext, refunds: readonly SandboxRefund[] = []): Record<string, unknown> {
  const approved = o.payerId !== null;
  const unit: Record<string, unknown> = {
    reference_id: o.referenceId,
    amount: money(o.amountMinor, o.currency),
    payee: { email_address: ctx.merchantEmail, merchant_id: ctx.merchantId },
    ...(o.description ? { description: o.description } : {}),
    ...(o.customId ? { custom_id: o.customId } : {}),
    ...(o.invoiceId ? { invoice_id: o.invoiceId } : {}),
    ...(o.captureId ? { payments: { captures: [captureJson(o, ctx)], ...(refunds.length > 0 ? { refunds: refunds.map((r) => refundJson(r, ctx)) } : {}) } } : {}),
  };
  return {
    id: o.id,
    intent: 'CAPTURE',
    status: o.status,
    ...(o.usesPaymentSource
      ? { payment_source: { paypal: approved ? { email_address: o.payerEmail, account_id: o.payerId, account_status: 'VERIFIED', name: { given_name: 'Sandbox', surname: 'Buyer' }, address: { country_code: 'US' } } : {} } }
      : {}),
    purchase_units: [unit],
    ...(approved ? { payer: payer(o) } : {}),
    create_time: paypalTime(o.createdAt),
    ...(o.version > 0 ? { update_time: paypalTime(o.updatedAt) } : {}),
    links: links(o, ctx),
  };
}

/** `Prefer: return=minimal` (PayPal's default). */
export function minimalOrderJson(o: SandboxOrder, ctx: WireContext): Record<string, unknown> {
  return { id: o.id, status: o.status, links: links(o, ctx) };
}

// ---- Webhook events ----------------------------------------------------------------------------------

export type EventType = 'CHECKOUT.ORDER.APPROVED' | 'CHECKOUT.ORDER.VOIDED' | 'PAYMENT.CAPTURE.COMPLETED' | 'PAYMENT.CAPTURE.DENIED';

export function newEventId(): string {
  const part = () => Array.from(randomBytes(17), (b) => '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ'[b % 36]).join('');
  return `WH-${part()}-${part()}`;
}

const SUMMARY: Record<EventType, (o: SandboxOrder) => string> = {
  'CHECKOUT.ORDER.APPROVED': () => 'An order has been approved by buyer',
  'CHECKOUT.ORDER.VOIDED': () => 'An order has been voided',
  'PAYMENT.CAPTURE.COMPLETED': (o) => `Payment completed for ${value(o.amountMinor, o.currency)} ${o.currency}`,
  'PAYMENT.CAPTURE.DENIED': (o) => `A ${o.currency} ${value(o.amountMinor, o.currency)} ${o.currency} capture payment was denied`,
};

export type RefundEventType = 'PAYMENT.CAPTURE.REFUNDED' | 'PAYMENT.CAPTURE.REVERSED';

/** PAYMENT.CAPTURE.REFUNDED / REVERSED: the resource is the refund (its `up` link names the capture). */
export function refundEventJson(type: RefundEventType, r: SandboxRefund, eventId: string, ctx: WireContext, at: Date): Record<string, unknown> {
  const eventUrl = `${ctx.apiBase}/v1/notifications/webhooks-events/${eventId}`;
  const what = type === 'PAYMENT.CAPTURE.REFUNDED' ? 'refunded' : 'reversed';
  return {
    id: eventId,
    event_version: '1.0',
    create_time: at.toISOString(),
    resource_type: 'refund',
    resource_version: '2.0',
    event_type: type,
    summary: `A ${value(r.amountMinor, r.currency)} ${r.currency} capture payment was ${what}`,
    resource: refundJson(r, ctx),
    links: [
      { href: eventUrl, rel: 'self', method: 'GET' },
      { href: `${eventUrl}/resend`, rel: 'resend', method: 'POST' },
    ],
  };
}

/** A webhook event as PayPal posts it (v1 envelope, v2 resource). */
export function eventJson(type: EventType, o: SandboxOrder, eventId: string, ctx: WireContext, at: Date): Record<string, unknown> {
  const isCapture = type.startsWith('PAYMENT.CAPTURE.');
  const eventUrl = `${ctx.apiBase}/v1/notifications/webhooks-events/${eventId}`;
  return {
    id: eventId,
    event_version: '1.0',
    create_time: at.toISOString(),
    resource_type: isCapture ? 'capture' : 'checkout-order',
    resource_version: '2.0',
    event_type: type,
    summary: SUMMARY[type](o),
    resource: isCapture ? captureJson(o, ctx, true) : orderJson(o, ctx),
    links: [
      { href: eventUrl, rel: 'self', method: 'GET' },
      { href: `${eventUrl}/resend`, rel: 'resend', method: 'POST' },
    ],
  };
}

// ---- Errors --------------------------------------------------------------------------------------------

export interface ErrorDetail {
  field?: string;
  value?: string;
  location?: 'body' | 'path' | 'header' | 'query';
  issue: string;
  description: string;
}

const ERROR_NAMES: Record<number, [string, string]> = {
  400: ['INVALID_REQUEST', 'Request is not well-formed, syntactically incorrect, or violates schema.'],
  401: ['AUTHENTICATION_FAILURE', 'Authentication failed due to invalid authentication credentials or a missing Authorization header.'],
  403: ['NOT_AUTHORIZED', 'Authorization failed due to insufficient permissions.'],
  404: ['RESOURCE_NOT_FOUND', 'The specified resource does not exist.'],
  415: ['UNSUPPORTED_MEDIA_TYPE', 'The server does not support the request payload’s media type.'],
  422: ['UNPROCESSABLE_ENTITY', 'The requested action could not be performed, semantically incorrect, or failed business validation.'],
  500: ['INTERNAL_SERVER_ERROR', 'An internal server error has occurred.'],
};

export function newDebugId(): string {
  return randomBytes(7).toString('hex').slice(0, 13);
}

/** PayPal's REST error body. */
export function errorBody(status: number, details: ErrorDetail[] = [], debugId = newDebugId()): Record<string, unknown> {
  const [name, message] = ERROR_NAMES[status] ?? ERROR_NAMES[500]!;
  return {
    name,
    ...(details.length > 0 ? { details } : {}),
    message,
    debug_id: debugId,
    links: details.length > 0
      ? details.map((d) => ({ href: `https://developer.paypal.com/docs/api/orders/v2/#error-${d.issue}`, rel: 'information_link', method: 'GET' }))
      : [{ href: `https://developer.paypal.com/docs/api/orders/v2/#error-${name}`, rel: 'information_link', method: 'GET' }],
  };
}

export const NOT_APPROVED: ErrorDetail = {
  issue: 'ORDER_NOT_APPROVED',
  description: "Payer has not yet approved the Order for payment. Please redirect the payer to the 'rel':'approve' url returned as part of the HATEOAS links within the Create Order call or provide a valid payment_source in the request.",
};
export const ALREADY_CAPTURED: ErrorDetail = { issue: 'ORDER_ALREADY_CAPTURED', description: "Order already captured.If 'intent=CAPTURE' only one capture per order is allowed." };
export const COMPLETED_OR_VOIDED: ErrorDetail = { issue: 'ORDER_COMPLETED_OR_VOIDED', description: 'Order is voided or completed and hence cannot be processed.' };

export const REFUND_AMOUNT_EXCEEDED: ErrorDetail = { field: 'amount/value', location: 'body', issue: 'REFUND_AMOUNT_EXCEEDED', description: 'The refund amount must be less than or equal to the capture amount that has not yet been refunded.' };
export const CAPTURE_FULLY_REFUNDED: ErrorDetail = { issue: 'CAPTURE_FULLY_REFUNDED', description: 'The refund cannot be issued because the captured payment has already been fully refunded.' };
export const REFUND_CURRENCY_MISMATCH: ErrorDetail = { field: 'amount/currency_code', location: 'body', issue: 'REFUND_CAPTURE_CURRENCY_MISMATCH', description: 'Refund must be in the same currency as the capture.' };
export const TRANSACTION_REFUSED: ErrorDetail = { issue: 'TRANSACTION_REFUSED', description: 'The request was refused (the capture was not completed).' };

export function invalidId(field: 'capture_id' | 'refund_id', id: string): ErrorDetail {
  return { field, value: id, location: 'path', issue: 'INVALID_RESOURCE_ID', description: 'Specified resource ID does not exist. Please check the resource ID and try again.' };
}

export function invalidResourceId(id: string): ErrorDetail {
  return { field: 'order_id', value: id, location: 'path', issue: 'INVALID_RESOURCE_ID', description: 'Specified resource ID does not exist. Please check the resource ID and try again.' };
}

// ---- Create-order validation ------------------------------------------------------------------------

export interface ParsedCreate {
  currency: string;
  amountMinor: bigint;
  referenceId: string;
  customId: string | null;
  invoiceId: string | null;
  description: string | null;
  returnUrl: string | null;
  cancelUrl: string | null;
  usesPaymentSource: boolean;
}

export type CreateCheck = { ok: true; order: ParsedCreate } | { ok: false; status: 400 | 422; details: ErrorDetail[] };

const bad = (status: 400 | 422, issue: string, field: string, description: string, v?: unknown): CreateCheck => ({
  ok: false, status, details: [{ field, ...(typeof v === 'string' ? { value: v } : {}), location: 'body', issue, description }],
});

function optionalText(unit: Record<string, unknown>, key: string, max: number): string | null | CreateCheck {
  const v = unit[key];
  if (v === undefined) return null;
  if (typeof v !== 'string') return bad(400, 'INVALID_PARAMETER_SYNTAX', `/purchase_units/@reference_id=='default'/${key}`, 'The value of a field does not conform to the expected format.');
  if (v.length < 1 || Array.from(v).length > max) return bad(400, 'INVALID_STRING_LENGTH', `/purchase_units/@reference_id=='default'/${key}`, `The value of a field is either too short or too long (1-${max}).`, v);
  return v;
}

function optionalUrl(v: unknown, field: string): string | null | CreateCheck {
  if (v === undefined) return null;
  if (typeof v !== 'string') return bad(400, 'INVALID_PARAMETER_SYNTAX', field, 'The value of a field does not conform to the expected format.');
  try {
    const u = new URL(v);
    if (u.protocol !== 'https:' && u.protocol !== 'http:') throw new Error('scheme');
    return v;
  } catch {
    return bad(400, 'INVALID_PARAMETER_SYNTAX', field, 'The value of a field does not conform to the expected format.', v);
  }
}

const isCheck = (v: unknown): v is CreateCheck => isObject(v) && 'ok' in v;

/** PayPal's validation of `POST /v2/checkout/orders`, for the subset the sandbox supports. */
export function parseCreateOrder(body: unknown): CreateCheck {
  if (!isObject(body)) return bad(400, 'MALFORMED_REQUEST_JSON', '/', 'The request JSON is not well formed.');
  if (body['intent'] === undefined) return bad(400, 'MISSING_REQUIRED_PARAMETER', '/intent', 'A required field / parameter is missing.');
  if (body['intent'] !== 'CAPTURE') {
    return bad(400, 'INVALID_PARAMETER_VALUE', '/intent', 'The value of a field is invalid (the Knowpay sandbox supports intent CAPTURE only).', String(body['intent']));
  }
  const units = body['purchase_units'];
  if (!Array.isArray(units) || units.length === 0) return bad(400, 'MISSING_REQUIRED_PARAMETER', '/purchase_units', 'A required field / parameter is missing.');
  if (units.length > 1) return bad(400, 'INVALID_ARRAY_MAX_ITEMS', '/purchase_units', 'The number of items in an array parameter is too large (the Knowpay sandbox takes one purchase unit).');
  const unit = units[0];
  if (!isObject(unit)) return bad(400, 'INVALID_PARAMETER_SYNTAX', '/purchase_units/0', 'The value of a field does not conform to the expected format.');
  const amount = unit['amount'];
  if (!isObject(amount)) return bad(400, 'MISSING_REQUIRED_PARAMETER', "/purchase_units/@reference_id=='default'/amount", 'A required field / parameter is missing.');
  const currency = amount['currency_code'];
  if (typeof currency !== 'string') return bad(400, 'MISSING_REQUIRED_PARAMETER', "/purchase_units/@reference_id=='default'/amount/currency_code", 'A required field / parameter is missing.');
  if (!PAYPAL_CURRENCIES.has(currency)) return bad(422, 'CURRENCY_NOT_SUPPORTED', "/purchase_units/@reference_id=='default'/amount/currency_code", 'Currency code is not currently supported.', currency);
  const raw = amount['value'];
  const valueField = "/purchase_units/@reference_id=='default'/amount/value";
  if (typeof raw !== 'string') return bad(400, 'MISSING_REQUIRED_PARAMETER', valueField, 'A required field / parameter is missing.');
  if (!/^\d{1,15}(\.\d+)?$/.test(raw)) return bad(400, 'INVALID_PARAMETER_SYNTAX', valueField, 'The value of a field does not conform to the expected format.', raw);
  if (PAYPAL_NO_DECIMALS.has(currency) && raw.includes('.')) return bad(400, 'DECIMALS_NOT_SUPPORTED', valueField, 'Currency code does not support decimals.', raw);
  if (/\.\d{3,}$/.test(raw)) return bad(400, 'DECIMAL_PRECISION', valueField, 'If the currency supports decimals, only two decimal place precision is supported.', raw);
  const amountMinor = fromPayPalValue(raw, currency);
  if (amountMinor === null) return bad(400, 'INVALID_PARAMETER_SYNTAX', valueField, 'The value of a field does not conform to the expected format.', raw);
  if (amountMinor <= 0n) return bad(422, 'CANNOT_BE_ZERO_OR_NEGATIVE', valueField, 'Must be greater than zero.', raw);
  const referenceId = unit['reference_id'] === undefined ? 'default' : optionalText(unit, 'reference_id', 256);
  if (isCheck(referenceId)) return referenceId;
  const customId = optionalText(unit, 'custom_id', PAYPAL_TEXT_MAX);
  if (isCheck(customId)) return customId;
  const invoiceId = optionalText(unit, 'invoice_id', PAYPAL_TEXT_MAX);
  if (isCheck(invoiceId)) return invoiceId;
  const description = optionalText(unit, 'description', PAYPAL_TEXT_MAX);
  if (isCheck(description)) return description;

  const source = body['payment_source'];
  const usesPaymentSource = isObject(source) && isObject(source['paypal']);
  if (source !== undefined && !usesPaymentSource) return bad(400, 'INVALID_PARAMETER_VALUE', '/payment_source', 'The Knowpay sandbox supports payment_source.paypal only.');
  const paypal = usesPaymentSource ? ((source as Record<string, unknown>)['paypal'] as Record<string, unknown>) : null;
  const contextRaw = paypal ? paypal['experience_context'] : body['application_context'];
  const context: Record<string, unknown> = isObject(contextRaw) ? contextRaw : {};
  const where = usesPaymentSource ? '/payment_source/paypal/experience_context' : '/application_context';
  const returnUrl = optionalUrl(context['return_url'], `${where}/return_url`);
  if (isCheck(returnUrl)) return returnUrl;
  const cancelUrl = optionalUrl(context['cancel_url'], `${where}/cancel_url`);
  if (isCheck(cancelUrl)) return cancelUrl;
  return { ok: true, order: { currency, amountMinor, referenceId: referenceId as string, customId, invoiceId, description, returnUrl, cancelUrl, usesPaymentSource } };
}

// ---- Refund-request validation ---------------------------------------------------------------------

export interface ParsedRefund {
  /** Absent: refund what is left of the capture. */
  amount: { amountMinor: bigint; currency: string } | null;
  invoiceId: string | null;
  customId: string | null;
  noteToPayer: string | null;
}

export type RefundCheck = { ok: true; refund: ParsedRefund } | { ok: false; status: 400 | 422; details: ErrorDetail[] };

const badRefund = (status: 400 | 422, issue: string, field: string, description: string, v?: unknown): RefundCheck => ({
  ok: false, status, details: [{ field, ...(typeof v === 'string' ? { value: v } : {}), location: 'body', issue, description }],
});

/** PayPal's validation of `POST /v2/payments/captures/{id}/refund` (an empty body refunds the rest). */
export function parseRefundRequest(body: unknown): RefundCheck {
  if (body === undefined) return { ok: true, refund: { amount: null, invoiceId: null, customId: null, noteToPayer: null } };
  if (!isObject(body)) return badRefund(400, 'MALFORMED_REQUEST_JSON', '/', 'The request JSON is not well formed.');
  const texts: Record<'invoice_id' | 'custom_id' | 'note_to_payer', string | null> = { invoice_id: null, custom_id: null, note_to_payer: null };
  for (const [key, max] of [['invoice_id', PAYPAL_TEXT_MAX], ['custom_id', PAYPAL_TEXT_MAX], ['note_to_payer', 255]] as const) {
    const v = body[key];
    if (v === undefined) continue;
    if (typeof v !== 'string') return badRefund(400, 'INVALID_PARAMETER_SYNTAX', `/${key}`, 'The value of a field does not conform to the expected format.');
    if (v.length < 1 || Array.from(v).length > max) return badRefund(400, 'INVALID_STRING_LENGTH', `/${key}`, `The value of a field is either too short or too long (1-${max}).`, v);
    texts[key] = v;
  }
  const rest = { invoiceId: texts.invoice_id, customId: texts.custom_id, noteToPayer: texts.note_to_payer };
  const amount = body['amount'];
  if (amount === undefined) return { ok: true, refund: { amount: null, ...rest } };
  if (!isObject(amount)) return badRefund(400, 'INVALID_PARAMETER_SYNTAX', '/amount', 'The value of a field does not conform to the expected format.');
  const currency = amount['currency_code'];
  if (typeof currency !== 'string') return badRefund(400, 'MISSING_REQUIRED_PARAMETER', '/amount/currency_code', 'A required field / parameter is missing.');
  if (!PAYPAL_CURRENCIES.has(currency)) return badRefund(422, 'CURRENCY_NOT_SUPPORTED', '/amount/currency_code', 'Currency code is not currently supported.', currency);
  const raw = amount['value'];
  if (typeof raw !== 'string') return badRefund(400, 'MISSING_REQUIRED_PARAMETER', '/amount/value', 'A required field / parameter is missing.');
  if (!/^\d{1,15}(\.\d+)?$/.test(raw)) return badRefund(400, 'INVALID_PARAMETER_SYNTAX', '/amount/value', 'The value of a field does not conform to the expected format.', raw);
  if (PAYPAL_NO_DECIMALS.has(currency) && raw.includes('.')) return badRefund(422, 'DECIMALS_NOT_SUPPORTED', '/amount/value', 'Currency code does not support decimals.', raw);
  if (/\.\d{3,}$/.test(raw)) return badRefund(422, 'DECIMAL_PRECISION', '/amount/value', 'If the currency supports decimals, only two decimal place precision is supported.', raw);
  const amountMinor = fromPayPalValue(raw, currency);
  if (amountMinor === null) return badRefund(400, 'INVALID_PARAMETER_SYNTAX', '/amount/value', 'The value of a field does not conform to the expected format.', raw);
  if (amountMinor <= 0n) return badRefund(422, 'CANNOT_BE_ZERO_OR_NEGATIVE', '/amount/value', 'Must be greater than zero.', raw);
  return { ok: true, refund: { amount: { amountMinor, currency }, ...rest } };
}

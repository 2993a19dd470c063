/**
 * Stripe's PaymentIntent rules, as pure functions for the sandbox: request validation with
 * Stripe's error answers, the object as the API shows it, its transitions (confirm with a test
 * card, decline, cancel), the Charge a confirmation makes, and the events each change emits.
 */
import { randomInt } from 'node:crypto';
import type { FormObject, FormValue } from './sandbox-form.ts';
import type { IntentJson } from './sandbox-store.ts';
import { STRIPE_MAX_AMOUNT, STRIPE_THREE_DECIMAL, stripeExponent } from './transformers.ts';

// ---- Answers ---------------------------------------------------------------------------------------

export interface ApiResult {
  status: number;
  body: Record<string, unknown>;
  /** Stripe keeps the answer for the Idempotency-Key once the endpoint began executing, not for validation errors. */
  save: boolean;
}

export type ErrorType = 'invalid_request_error' | 'card_error' | 'idempotency_error' | 'api_error';

export function apiError(
  status: number,
  type: ErrorType,
  message: string,
  opts: { code?: string; param?: string; extra?: Record<string, unknown>; save?: boolean } = {},
): ApiResult {
  const error: Record<string, unknown> = {
    ...(opts.code ? { code: opts.code, doc_url: `https://stripe.com/docs/error-codes/${opts.code.replaceAll('_', '-')}` } : {}),
    message,
    ...(opts.param ? { param: opts.param } : {}),
    ...(opts.extra ?? {}),
    type,
  };
  return { status, body: { error }, save: opts.save ?? false };
}

export const ok = (body: Record<string, unknown>): ApiResult => ({ status: 200, body, save: true });

// ---- Identifiers shaped like Stripe's --------------------------------------------------------------

const ALNUM = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';

export function randomAlnum(n: number): string {
  let out = '';
  for (let i = 0; i < n; i++) out += ALNUM[randomInt(ALNUM.length)];
  return out;
}

export const newIntentId = () => `pi_3${randomAlnum(23)}`;
export const newChargeId = () => `ch_3${randomAlnum(23)}`;
export const newPaymentMethodId = () => `pm_1${randomAlnum(23)}`;
export const newEventId = () => `evt_3${randomAlnum(23)}`;
export const newBalanceTransactionId = () => `txn_3${randomAlnum(23)}`;
export const newRequestId = () => `req_${randomAlnum(14)}`;

// ---- Currencies and amounts ------------------------------------------------------------------------

/** Stripe's presentment currencies (docs.stripe.com/currencies), lower case. */
export const STRIPE_CURRENCIES: ReadonlySet<string> = new Set(
  ('usd aed afn all amd ang aoa ars aud awg azn bam bbd bdt bgn bhd bif bmd bnd bob brl bsd bwp byn bzd cad cdf chf clp cny ' +
    'cop crc cve czk djf dkk dop dzd egp etb eur fjd fkp gbp gel gip gmd gnf gtq gyd hkd hnl htg huf idr ils inr isk jmd jod ' +
    'jpy kes kgs khr kmf krw kwd kyd kzt lak lbp lkr lrd lsl mad mdl mga mkd mmk mnt mop mur mvr mwk mxn myr mzn nad ngn nio ' +
    'nok npr nzd omr pab pen pgk php pkr pln pyg qar ron rsd rub rwf sar sbd scr sek sgd shp sle sos srd std szl thb tjs tnd ' +
    'top try ttd twd tzs uah ugx uyu uzs vnd vuv wst xaf xcd xof xpf yer zar zmw').split(' '),
);

/** Minimum charge amounts in Stripe units, per presentment currency (docs.stripe.com/currencies#minimum-and-maximum-charge-amounts). */
export const STRIPE_MINIMUMS: Readonly<Record<string, number>> = Object.freeze({
  usd: 50, aed: 200, aud: 50, bgn: 100, brl: 50, cad: 50, chf: 50, czk: 1500, dkk: 250, eur: 50, gbp: 30, hkd: 400,
  huf: 17500, inr: 50, jpy: 50, mxn: 1000, myr: 200, nok: 300, nzd: 50, pln: 200, ron: 200, sek: 300, sgd: 50, thb: 1000,
});

function formatStripeAmount(amount: number, currency: string): string {
  const exp = stripeExponent(currency.toUpperCase());
  if (exp === 0) return `${amount} ${currency}`;
  const digits = String(amount).padStart(exp + 1, '0');
  return `${digits.slice(0, -exp)}.${digits.slice(-exp)} ${currency}`;
}

// ---- Request parameters ------------------------------------------------------------------------------

const CREATE_PARAMS = new Set([
  'amount', 'currency', 'metadata', 'description', 'allowed_payment_method_types', 'payment_method_types',
  'automatic_payment_methods', 'capture_method', 'confirm', 'payment_method', 'receipt_email', 'statement_descriptor_suffix',
]);
const CONFIRM_PARAMS = new Set(['payment_method', 'return_url', 'receipt_email']);
const CANCEL_PARAMS = new Set(['cancellation_reason']);
export const CANCELLATION_REASONS = ['duplicate', 'fraudulent', 'requested_by_customer', 'abandoned'] as const;
const MAX_METADATA_KEYS = 50;
const MAX_METADATA_KEY_CHARS = 40;
const MAX_METADATA_VALUE_CHARS = 500;
const MAX_DESCRIPTION_CHARS = 1000;

export function unknownParam(params: FormObject, allowed: ReadonlySet<string>): ApiResult | null {
  for (const key of Object.keys(params)) {
    if (!allowed.has(key)) return apiError(400, 'invalid_request_error', `Received unknown parameter: ${key}`, { code: 'parameter_unknown', param: key });
  }
  return null;
}

function stringParam(params: FormObject, key: string, maxChars: number): { ok: true; value: string | null } | { ok: false; error: ApiResult } {
  const v = params[key];
  if (v === undefined) return { ok: true, value: null };
  if (typeof v !== 'string') return { ok: false, error: apiError(400, 'invalid_request_error', `Invalid string: ${key} must be a string`, { param: key }) };
  if (v.length > maxChars) return { ok: false, error: apiError(400, 'invalid_request_error', `Invalid string: ${key} is longer than ${maxChars} characters`, { param: key }) };
  return { ok: true, value: v };
}

function booleanParam(v: FormValue | undefined, key: string): { ok: true; value: boolean | null } | { ok: false; error: ApiResult } {
  if (v === undefined) return { ok: true, value: null };
  if (v === 'true' || v === 'false') return { ok: true, value: v === 'true' };
  return { ok: false, error: apiError(400, 'invalid_request_error', `Invalid boolean: ${typeof v === 'string' ? v : JSON.stringify(v)}`, { param: key }) };
}

function parseAmount(v: FormValue | undefined, currency: string): { ok: true; value: number } | { ok: false; error: ApiResult } {
  if (v === undefined || v === '') return { ok: false, error: apiError(400, 'invalid_request_error', 'Missing required param: amount.', { code: 'parameter_missing', param: 'amount' }) };
  if (typeof v !== 'string' || !/^-?\d{1,16}$/.test(v)) {
    return { ok: false, error: apiError(400, 'invalid_request_error', `Invalid integer: ${typeof v === 'string' ? v : JSON.stringify(v)}`, { code: 'parameter_invalid_integer', param: 'amount' }) };
  }
  const amount = Number(v);
  if (amount < 1) return { ok: false, error: apiError(400, 'invalid_request_error', 'This value must be greater than or equal to 1.', { code: 'parameter_invalid_integer', param: 'amount' }) };
  if (amount > STRIPE_MAX_AMOUNT) {
    return { ok: false, error: apiError(400, 'invalid_request_error', `Amount must be no more than ${formatStripeAmount(STRIPE_MAX_AMOUNT, currency)}`, { code: 'amount_too_large', param: 'amount' }) };
  }
  const upper = currency.toUpperCase();
  if (upper === 'ISK' && amount % 100 !== 0) {
    return {
      ok: false,
      error: apiError(400, 'invalid_request_error', 'Invalid amount. Currency ISK has become effectively zero-decimal and charged amounts must be evenly divisible by 100. See https://stripe.com/docs/currencies#special-cases for more information.', { code: 'invalid_charge_amount_no_decimal_compatible', param: 'amount' }),
    };
  }
  if (STRIPE_THREE_DECIMAL.has(upper) && amount % 10 !== 0) {
    return { ok: false, error: apiError(400, 'invalid_request_error', `Invalid amount. Amounts in ${upper} must have 0 as their last digit (round to the nearest ten). See https://stripe.com/docs/currencies#three-decimal for more information.`, { code: 'invalid_charge_amount', param: 'amount' }) };
  }
  const minimum = STRIPE_MINIMUMS[currency];
  if (minimum !== undefined && amount < minimum) {
    return { ok: false, error: apiError(400, 'invalid_request_error', `Amount must be at least ${formatStripeAmount(minimum, currency)}`, { code: 'amount_too_small', param: 'amount' }) };
  }
  return { ok: true, value: amount };
}

function parseCurrency(v: FormValue | undefined): { ok: true; value: string } | { ok: false; error: ApiResult } {
  if (v === undefined || v === '') return { ok: false, error: apiError(400, 'invalid_request_error', 'Missing required param: currency.', { code: 'parameter_missing', param: 'currency' }) };
  const lower = typeof v === 'string' ? v.toLowerCase() : '';
  if (!STRIPE_CURRENCIES.has(lower)) {
    return { ok: false, error: apiError(400, 'invalid_request_error', `Invalid currency: ${typeof v === 'string' ? v.slice(0, 20) : 'not a string'}. Stripe currently supports these currencies: ${[...STRIPE_CURRENCIES].join(', ')}`, { param: 'currency' }) };
  }
  return { ok: true, value: lower };
}

function parseMetadata(v: FormValue | undefined): { ok: true; value: Record<string, string> } | { ok: false; error: ApiResult } {
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

function parseMethodTypes(params: FormObject): { ok: true; value: { types: string[]; field: string | null; automatic: boolean } } | { ok: false; error: ApiResult } {
  const given = (['allowed_payment_method_types', 'payment_method_types'] as const).filter((k) => params[k] !== undefined);
  const automatic = params['automatic_payment_methods'];
  let automaticEnabled = false;
  if (automatic !== undefined) {
    if (typeof automatic !== 'object' || Array.isArray(automatic)) return { ok: false, error: apiError(400, 'invalid_request_error', 'Invalid object: automatic_payment_methods', { param: 'automatic_payment_methods' }) };
    const enabled = booleanParam(automatic['enabled'], 'automatic_payment_methods[enabled]');
    if (!enabled.ok) return enabled;
    if (enabled.value === null) return { ok: false, error: apiError(400, 'invalid_request_error', 'Missing required param: automatic_payment_methods[enabled].', { code: 'parameter_missing', param: 'automatic_payment_methods[enabled]' }) };
    automaticEnabled = enabled.value;
  }
  if (given.length + (automaticEnabled ? 1 : 0) > 1) {
    const names = [...(automaticEnabled ? ['automatic_payment_methods'] : []), ...given];
    return { ok: false, error: apiError(400, 'invalid_request_error', `You may only specify one of these parameters: ${names.join(', ')}.`, { code: 'parameters_exclusive', param: names[1] ?? names[0] }) };
  }
  const field = given[0] ?? null;
  if (!field) return { ok: true, value: { types: ['card'], field: null, automatic: true } };
  const list = params[field];
  if (!Array.isArray(list) || list.length === 0 || list.some((t) => typeof t !== 'string')) {
    return { ok: false, error: apiError(400, 'invalid_request_error', `Invalid array: ${field} must be a list of payment method types`, { param: field }) };
  }
  for (const t of list as string[]) {
    if (t !== 'card') {
      return { ok: false, error: apiError(400, 'invalid_request_error', `The payment method type "${t}" is invalid. Please ensure the provided type is activated in your dashboard (https://dashboard.stripe.com/account/payments/settings) and your account is enabled for any preview features that you are trying to use.`, { code: 'payment_method_unactivated', param: field }) };
    }
  }
  return { ok: true, value: { types: [...new Set(list as string[])], field, automatic: false } };
}

export interface CreateRequest {
  amount: number;
  currency: string;
  metadata: Record<string, string>;
  description: string | null;
  types: string[];
  automatic: boolean;
  confirm: boolean;
  paymentMethod: string | null;
  receiptEmail: string | null;
  statementDescriptorSuffix: string | null;
}

export function parseCreate(params: FormObject): { ok: true; request: CreateRequest } | { ok: false; error: ApiResult } {
  const unknown = unknownParam(params, CREATE_PARAMS);
  if (unknown) return { ok: false, error: unknown };
  const currency = parseCurrency(params['currency']);
  if (!currency.ok) {
    // Stripe names the missing amount first.
    if (params['amount'] === undefined) return parseAmount(undefined, 'usd') as { ok: false; error: ApiResult };
    return currency;
  }
  const amount = parseAmount(params['amount'], currency.value);
  if (!amount.ok) return amount;
  const metadata = parseMetadata(params['metadata']);
  if (!metadata.ok) return metadata;
  const description = stringParam(params, 'description', MAX_DESCRIPTION_CHARS);
  if (!description.ok) return description;
  const types = parseMethodTypes(params);
  if (!types.ok) return types;
  const capture = stringParam(params, 'capture_method', 20);
  if (!capture.ok) return capture;
  if (capture.value !== null && capture.value !== 'automatic' && capture.value !== 'automatic_async') {
    return { ok: false, error: apiError(400, 'invalid_request_error', `Invalid capture_method: ${capture.value} (this sandbox captures automatically: automatic or automatic_async)`, { param: 'capture_method' }) };
  }
  const confirm = booleanParam(params['confirm'], 'confirm');
  if (!confirm.ok) return confirm;
  const paymentMethod = stringParam(params, 'payment_method', 100);
  if (!paymentMethod.ok) return paymentMethod;
  const receiptEmail = stringParam(params, 'receipt_email', 800);
  if (!receiptEmail.ok) return receiptEmail;
  const suffix = stringParam(params, 'statement_descriptor_suffix', 22);
  if (!suffix.ok) return suffix;
  return {
    ok: true,
    request: {
      amount: amount.value, currency: currency.value, metadata: metadata.value, description: description.value,
      types: types.value.types, automatic: types.value.automatic, confirm: confirm.value ?? false, paymentMethod: paymentMethod.value,
      receiptEmail: receiptEmail.value, statementDescriptorSuffix: suffix.value,
    },
  };
}

export function parseConfirm(params: FormObject): { ok: true; paymentMethod: string | null } | { ok: false; error: ApiResult } {
  const unknown = unknownParam(params, CONFIRM_PARAMS);
  if (unknown) return { ok: false, error: unknown };
  for (const key of ['return_url', 'receipt_email']) {
    const s = stringParam(params, key, 2048);
    if (!s.ok) return s;
  }
  const pm = stringParam(params, 'payment_method', 100);
  if (!pm.ok) return pm;
  return { ok: true, paymentMethod: pm.value };
}

export function parseCancel(params: FormObject): { ok: true; reason: string | null } | { ok: false; error: ApiResult } {
  const unknown = unknownParam(params, CANCEL_PARAMS);
  if (unknown) return { ok: false, error: unknown };
  const reason = params['cancellation_reason'];
  if (reason === undefined) return { ok: true, reason: null };
  if (typeof reason !== 'string' || !(CANCELLATION_REASONS as readonly string[]).includes(reason)) {
    return { ok: false, error: apiError(400, 'invalid_request_error', `Invalid cancellation_reason: must be one of ${CANCELLATION_REASONS.join(', ')}`, { param: 'cancellation_reason' }) };
  }
  return { ok: true, reason };
}

// ---- The PaymentIntent object ----------------------------------------------------------------------

export function newIntent(req: CreateRequest, nowS: number, id = newIntentId()): IntentJson {
  return {
    id,
    object: 'payment_intent',
    allowed_payment_method_types: req.automatic ? null : req.types,
    amount: req.amount,
    amount_capturable: 0,
    amount_details: { tip: {} },
    amount_received: 0,
    application: null,
    application_fee_amount: null,
    automatic_payment_methods: req.automatic ? { allow_redirects: 'always', enabled: true } : null,
    canceled_at: null,
    cancellation_reason: null,
    capture_method: 'automatic_async',
    client_secret: `${id}_secret_${randomAlnum(25)}`,
    confirmation_method: 'automatic',
    created: nowS,
    currency: req.currency,
    customer: null,
    customer_account: null,
    description: req.description,
    excluded_payment_method_types: null,
    last_payment_error: null,
    latest_charge: null,
    livemode: false,
    managed_payments: null,
    metadata: req.metadata,
    next_action: null,
    on_behalf_of: null,
    payment_method: null,
    payment_method_configuration_details: null,
    payment_method_options: { card: { installments: null, mandate_options: null, network: null, request_three_d_secure: 'automatic' } },
    payment_method_types: req.types,
    payment_record: null,
    processing: null,
    receipt_email: req.receiptEmail,
    review: null,
    setup_future_usage: null,
    shipping: null,
    source: null,
    statement_descriptor: null,
    statement_descriptor_suffix: req.statementDescriptorSuffix,
    status: 'requires_payment_method',
    transfer_data: null,
    transfer_group: null,
  };
}

export const FINAL_STATUSES: ReadonlySet<string> = new Set(['succeeded', 'canceled']);
const CONFIRMABLE = ['requires_confirmation', 'requires_action', 'requires_payment_method'];
const CANCELABLE = ['requires_payment_method', 'requires_capture', 'requires_confirmation', 'requires_action', 'processing'];

/** Stripe's test PaymentMethods (docs.stripe.com/testing) and what confirming with them does. */
export interface TestCard { brand: string; last4: string; decline?: { code: string; decline_code: string; message: string } }
export const TEST_PAYMENT_METHODS: Readonly<Record<string, TestCard>> = Object.freeze({
  pm_card_visa: { brand: 'visa', last4: '4242' },
  // Paid normally; what their refunds do is in sandbox-refunds.ts (refundBehaviourOf).
  pm_card_pendingRefund: { brand: 'visa', last4: '7726' },
  pm_card_refundFail: { brand: 'visa', last4: '5126' },
  pm_card_mastercard: { brand: 'mastercard', last4: '4444' },
  pm_card_amex: { brand: 'amex', last4: '8431' },
  pm_card_unionpay: { brand: 'unionpay', last4: '0005' },
  pm_card_visa_chargeDeclined: { brand: 'visa', last4: '0002', decline: { code: 'card_declined', decline_code: 'generic_decline', message: 'Your card was declined.' } },
  pm_card_chargeDeclined: { brand: 'visa', last4: '0002', decline: { code: 'card_declined', decline_code: 'generic_decline', message: 'Your card was declined.' } },
  pm_card_visa_chargeDeclinedInsufficientFunds: { brand: 'visa', last4: '9995', decline: { code: 'card_declined', decline_code: 'insufficient_funds', message: 'Your card has insufficient funds.' } },
  pm_card_chargeDeclinedInsufficientFunds: { brand: 'visa', last4: '9995', decline: { code: 'card_declined', decline_code: 'insufficient_funds', message: 'Your card has insufficient funds.' } },
  pm_card_chargeDeclinedExpiredCard: { brand: 'visa', last4: '0069', decline: { code: 'expired_card', decline_code: 'expired_card', message: 'Your card has expired.' } },
});

export function unexpectedState(action: 'confirm' | 'cancel', pi: IntentJson): ApiResult {
  const allowed = action === 'confirm' ? CONFIRMABLE : CANCELABLE;
  return apiError(400, 'invalid_request_error', `You cannot ${action} this PaymentIntent because it has a status of ${pi.status}. Only a PaymentIntent with one of the following statuses may be ${action === 'confirm' ? 'confirmed' : 'canceled'}: ${allowed.join(', ')}.`, {
    code: 'payment_intent_unexpected_state', extra: { payment_intent: pi }, save: true,
  });
}

export function canConfirm(pi: IntentJson): boolean {
  return CONFIRMABLE.includes(pi.status);
}

export function canCancel(pi: IntentJson): boolean {
  return CANCELABLE.includes(pi.status);
}

export interface Transition {
  intent: IntentJson;
  charge: Record<string, unknown> | null;
  /** Events in the order Stripe emits them. */
  events: Array<{ type: string; object: Record<string, unknown> }>;
  /** Set when the card was declined: the API answers 402 with this card_error. */
  declined: ApiResult | null;
}

function paymentMethodObject(id: string, card: TestCard, nowS: number): Record<string, unknown> {
  return {
    id, object: 'payment_method', billing_details: { address: null, email: null, name: null, phone: null },
    card: { brand: card.brand, checks: { cvc_check: 'pass' }, country: 'US', exp_month: 12, exp_year: new Date(nowS * 1000).getUTCFullYear() + 3, funding: 'credit', last4: card.last4 },
    created: nowS, customer: null, livemode: false, metadata: {}, type: 'card',
  };
}

function chargeObject(pi: IntentJson, ids: { charge: string; paymentMethod: string }, card: TestCard, nowS: number): Record<string, unknown> {
  const paid = !card.decline;
  return {
    id: ids.charge,
    object: 'charge',
    amount: pi.amount,
    amount_captured: paid ? pi.amount : 0,
    amount_refunded: 0,
    // A paid charge is booked on the balance at once (sandbox-balance.ts records it under this id).
    balance_transaction: paid ? newBalanceTransactionId() : null,
    captured: paid,
    created: nowS,
    currency: pi.currency,
    description: pi['description'] ?? null,
    failure_code: card.decline?.code ?? null,
    failure_message: card.decline?.message ?? null,
    livemode: false,
    metadata: pi.metadata,
    outcome: paid
      ? { network_status: 'approved_by_network', reason: null, risk_level: 'normal', seller_message: 'Payment complete.', type: 'authorized' }
      : { network_status: 'declined_by_network', reason: card.decline!.decline_code, risk_level: 'normal', seller_message: 'The bank did not return any further details with this decline.', type: 'issuer_declined' },
    paid,
    payment_intent: pi.id,
    payment_method: ids.paymentMethod,
    payment_method_details: { card: { brand: card.brand, country: 'US', funding: 'credit', last4: card.last4 }, type: 'card' },
    refunded: false,
    status: paid ? 'succeeded' : 'failed',
  };
}

/** Confirm with a test card: paid, or declined back to requires_payment_method. */
export function confirmWith(pi: IntentJson, card: TestCard, nowS: number, ids = { charge: newChargeId(), paymentMethod: newPaymentMethodId() }): Transition {
  const charge = chargeObject(pi, ids, card, nowS);
  if (!card.decline) {
    const intent: IntentJson = {
      ...pi, status: 'succeeded', amount_received: pi.amount, latest_charge: ids.charge, payment_method: ids.paymentMethod,
      last_payment_error: null, next_action: null,
    };
    return { intent, charge, events: [{ type: 'charge.succeeded', object: charge }, { type: 'payment_intent.succeeded', object: intent }], declined: null };
  }
  const d = card.decline;
  const lastPaymentError = {
    charge: ids.charge, code: d.code, decline_code: d.decline_code, doc_url: `https://stripe.com/docs/error-codes/${d.code.replaceAll('_', '-')}`,
    message: d.message, payment_method: paymentMethodObject(ids.paymentMethod, card, nowS), type: 'card_error',
  };
  const intent: IntentJson = { ...pi, status: 'requires_payment_method', latest_charge: ids.charge, payment_method: null, last_payment_error: lastPaymentError, next_action: null };
  const declined = apiError(402, 'card_error', d.message, {
    code: d.code, save: true,
    extra: { charge: ids.charge, decline_code: d.decline_code, payment_intent: intent, payment_method: lastPaymentError.payment_method },
  });
  return { intent, charge, events: [{ type: 'charge.failed', object: charge }, { type: 'payment_intent.payment_failed', object: intent }], declined };
}

export function cancelWith(pi: IntentJson, reason: string | null, nowS: number): Transition {
  const intent: IntentJson = { ...pi, status: 'canceled', canceled_at: nowS, cancellation_reason: reason, next_action: null };
  return { intent, charge: null, events: [{ type: 'payment_intent.canceled', object: intent }], declined: null };
}

// ---- Events ----------------------------------------------------------------------------------------

export interface StripeEvent {
  id: string;
  object: 'event';
  api_version: string;
  created: number;
  data: { object: Record<string, unknown> & { id: string } };
  livemode: false;
  pending_webhooks: number;
  request: { id: string | null; idempotency_key: string | null };
  type: string;
}

export function buildEvent(spec: {
  type: string;
  object: Record<string, unknown>;
  createdS: number;
  apiVersion: string;
  request: { id: string | null; idempotencyKey: string | null };
  pendingWebhooks: number;
  id?: string;
}): StripeEvent {
  const object = spec.object as Record<string, unknown> & { id: string };
  if (typeof object.id !== 'string') throw new TypeError('an event object needs an id');
  return {
    id: spec.id ?? newEventId(),
    object: 'event',
    api_version: spec.apiVersion,
    created: spec.createdS,
    data: { object },
    livemode: false,
    pending_webhooks: spec.pendingWebhooks,
    request: { id: spec.request.id, idempotency_key: spec.request.idempotencyKey },
    type: spec.type,
  };
}

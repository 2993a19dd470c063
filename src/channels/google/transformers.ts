/**
 * Google Play wire details that are not cryptography: the Pub/Sub push envelope, the Real-time
 * developer notification inside it, ProductPurchase states in our words, identifiers' shapes,
 * error mapping and redaction for the audit log. Pure functions only.
 */
import { createHash } from 'node:crypto';
import { ChannelError, type ChannelTradeState } from '../types.ts';

// ---- ProductPurchase --------------------------------------------------------------------------

/** ProductPurchase.purchaseState. */
export const PURCHASE_STATE = { PURCHASED: 0, CANCELED: 1, PENDING: 2 } as const;
/** ProductPurchase.acknowledgementState. */
export const ACKNOWLEDGED = 1;
/** ProductPurchase.purchaseType: absent for a real purchase. */
export const PURCHASE_TYPE = { TEST: 0, PROMO: 1, REWARDED: 2 } as const;

/** The fields of androidpublisher#productPurchase this connector reads. */
export interface ProductPurchase {
  kind?: string | null;
  purchaseTimeMillis?: string | null;
  purchaseState?: number | null;
  consumptionState?: number | null;
  developerPayload?: string | null;
  orderId?: string | null;
  purchaseType?: number | null;
  acknowledgementState?: number | null;
  purchaseToken?: string | null;
  productId?: string | null;
  quantity?: number | null;
  obfuscatedExternalAccountId?: string | null;
  obfuscatedExternalProfileId?: string | null;
  regionCode?: string | null;
  refundableQuantity?: number | null;
}

/** purchaseState → our words. Only 0 (purchased) and 1 (canceled) are final; anything else is pending. */
export function mapPurchaseState(state: number | null | undefined): ChannelTradeState {
  switch (state) {
    case PURCHASE_STATE.PURCHASED:
      return 'succeeded';
    case PURCHASE_STATE.CANCELED:
      return 'closed';
    case PURCHASE_STATE.PENDING:
    default:
      return 'pending';
  }
}

/** A short status word for audit and the payment's failure_code. */
export function purchaseStateName(state: number | null | undefined): string {
  switch (state) {
    case PURCHASE_STATE.PURCHASED:
      return 'PURCHASED';
    case PURCHASE_STATE.CANCELED:
      return 'CANCELED';
    case PURCHASE_STATE.PENDING:
      return 'PENDING';
    default:
      return `UNKNOWN_PURCHASE_STATE_${state === null || state === undefined ? 'ABSENT' : String(state).slice(0, 16)}`;
  }
}

/**
 * androidpublisher#productPurchaseV2 (purchases.productsv2.getproductpurchasev2): the one read that
 * finds a purchase by its token alone. A voided-purchase notification names no product, and
 * purchases.products.get needs one, so refunds are resolved through this.
 */
export interface ProductPurchaseV2 {
  kind?: string | null;
  orderId?: string | null;
  obfuscatedExternalAccountId?: string | null;
  obfuscatedExternalProfileId?: string | null;
  regionCode?: string | null;
  purchaseCompletionTime?: string | null;
  acknowledgementState?: string | null;
  purchaseStateContext?: { purchaseState?: string | null } | null;
  testPurchaseContext?: { fopType?: string | null } | null;
  productLineItem?: Array<{
    productId?: string | null;
    productOfferDetails?: { quantity?: number | null; refundableQuantity?: number | null; consumptionState?: string | null; purchaseOptionId?: string | null; offerId?: string | null } | null;
  }> | null;
}

/** productsv2 purchase states (PurchaseStateContext.purchaseState) → ProductPurchase.purchaseState. */
const V2_PURCHASE_STATE: Readonly<Record<string, number>> = { PURCHASED: 0, CANCELLED: 1, PENDING: 2 };

/**
 * A productsv2 purchase in the v1 shape the binding checks read. Only single-product purchases
 * are Knowpay's (createPayment sells one product): several line items → null. A test purchase
 * (testPurchaseContext) reads as purchaseType 0, as v1 reports it.
 */
export function productPurchaseOfV2(v2: ProductPurchaseV2): (ProductPurchase & { productId: string }) | null {
  const items = v2.productLineItem;
  if (!Array.isArray(items) || items.length !== 1) return null;
  const item = items[0]!;
  if (typeof item.productId !== 'string' || item.productId === '') return null;
  const offer = item.productOfferDetails ?? {};
  const state = v2.purchaseStateContext?.purchaseState;
  return {
    productId: item.productId,
    quantity: offer.quantity ?? null,
    refundableQuantity: offer.refundableQuantity ?? null,
    orderId: v2.orderId ?? null,
    obfuscatedExternalAccountId: v2.obfuscatedExternalAccountId ?? null,
    obfuscatedExternalProfileId: v2.obfuscatedExternalProfileId ?? null,
    purchaseState: typeof state === 'string' && state in V2_PURCHASE_STATE ? V2_PURCHASE_STATE[state]! : null,
    acknowledgementState: v2.acknowledgementState === 'ACKNOWLEDGEMENT_STATE_ACKNOWLEDGED' ? ACKNOWLEDGED : 0,
    purchaseType: v2.testPurchaseContext ? PURCHASE_TYPE.TEST : null,
  };
}

/** A purchase's quantity: "if not present, the quantity is 1" (API reference). */
export function purchaseQuantity(p: ProductPurchase): number | null {
  if (p.quantity === null || p.quantity === undefined) return 1;
  return Number.isInteger(p.quantity) && p.quantity >= 1 ? p.quantity : null;
}

// ---- Identifiers --------------------------------------------------------------------------------

/** Play Console: product ids start with a lowercase letter or digit; then [a-z0-9._]. */
export const PRODUCT_ID = /^[a-z0-9][a-z0-9._]{0,138}$/;
/** Java package names, as Play requires them. */
export const PACKAGE_NAME = /^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)+$/;
/** Purchase tokens are opaque: letters, digits, '.', '-', '_' (about 150 characters in practice). */
export const PURCHASE_TOKEN = /^[A-Za-z0-9._-]{1,1024}$/;

export function isProductId(v: unknown): v is string {
  return typeof v === 'string' && PRODUCT_ID.test(v);
}

export function isPurchaseToken(v: unknown): v is string {
  return typeof v === 'string' && PURCHASE_TOKEN.test(v);
}

// ---- Pub/Sub push envelope and the developer notification inside ------------------------------

export const MAX_PUSH_BODY_BYTES = 64 * 1024;

export interface PushEnvelope {
  messageId: string;
  publishTime: string | null;
  subscription: string | null;
  /** The decoded `message.data` bytes. */
  data: Buffer;
}

export type Parsed<T> = { ok: true; value: T } | { ok: false; reason: string };

/**
 * `{"message":{"data":"<base64>","messageId":"…","publishTime":"…"},"subscription":"…"}`.
 * Pub/Sub also sends snake_case duplicates (message_id, publish_time); either is accepted, and
 * when both are present they must agree.
 */
export function parsePushEnvelope(rawBody: Buffer, maxBytes = MAX_PUSH_BODY_BYTES): Parsed<PushEnvelope> {
  if (rawBody.length === 0) return { ok: false, reason: 'empty body' };
  if (rawBody.length > maxBytes) return { ok: false, reason: `body larger than ${maxBytes} bytes` };
  const body = parseJson(rawBody);
  if (!isObject(body)) return { ok: false, reason: 'body is not a JSON object' };
  const message = body['message'];
  if (!isObject(message)) return { ok: false, reason: 'missing message' };
  const messageId = agreeing(message, 'messageId', 'message_id');
  if (messageId === false) return { ok: false, reason: 'messageId and message_id differ' };
  if (!messageId || !/^[0-9A-Za-z_-]{1,128}$/.test(messageId)) return { ok: false, reason: 'missing or malformed messageId' };
  const publishTime = agreeing(message, 'publishTime', 'publish_time');
  if (publishTime === false) return { ok: false, reason: 'publishTime and publish_time differ' };
  const data = message['data'];
  if (typeof data !== 'string' || data === '') return { ok: false, reason: 'missing message.data' };
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(data) || data.length % 4 !== 0) return { ok: false, reason: 'message.data is not base64' };
  const subscription = body['subscription'];
  if (subscription !== undefined && typeof subscription !== 'string') return { ok: false, reason: 'malformed subscription' };
  return { ok: true, value: { messageId, publishTime: publishTime ?? null, subscription: subscription ?? null, data: Buffer.from(data, 'base64') } };
}

function agreeing(obj: Record<string, unknown>, camel: string, snake: string): string | null | false {
  const a = obj[camel];
  const b = obj[snake];
  const av = typeof a === 'string' && a !== '' ? a : null;
  const bv = typeof b === 'string' && b !== '' ? b : null;
  if (av !== null && bv !== null && av !== bv) return false;
  return av ?? bv;
}

/** Real-time developer notification types for one-time products. */
export const ONE_TIME_PRODUCT_PURCHASED = 1;
export const ONE_TIME_PRODUCT_CANCELED = 2;

/** VoidedPurchaseNotification.productType and .refundType. */
export const VOIDED_PRODUCT_TYPE = { SUBSCRIPTION: 1, ONE_TIME: 2 } as const;
export const REFUND_TYPE = { FULL: 1, QUANTITY_BASED_PARTIAL: 2 } as const;

/** Google order ids: GPA.1234-5678-9012-34567 (and `..0` suffixes for subscription renewals). */
export const ORDER_ID = /^[A-Za-z0-9._:-]{1,128}$/;

export type DeveloperNotification =
  | { kind: 'one_time_product'; packageName: string; eventTimeMillis: string | null; notificationType: number; purchaseToken: string; sku: string }
  | { kind: 'voided'; packageName: string; eventTimeMillis: string | null; purchaseToken: string; orderId: string; productType: number | null; refundType: number | null }
  | { kind: 'test'; packageName: string; eventTimeMillis: string | null }
  | { kind: 'other'; packageName: string; eventTimeMillis: string | null; type: string; purchaseToken?: string };

/** The DeveloperNotification JSON carried, base64-encoded, in `message.data`. */
export function parseDeveloperNotification(data: Buffer): Parsed<DeveloperNotification> {
  const n = parseJson(data);
  if (!isObject(n)) return { ok: false, reason: 'message.data is not a JSON object' };
  const packageName = n['packageName'];
  if (typeof packageName !== 'string' || !PACKAGE_NAME.test(packageName)) return { ok: false, reason: 'missing or malformed packageName' };
  const eventTimeMillis = typeof n['eventTimeMillis'] === 'string' && /^\d{1,16}$/.test(n['eventTimeMillis']) ? n['eventTimeMillis'] : null;
  const kinds = ['oneTimeProductNotification', 'testNotification', 'subscriptionNotification', 'voidedPurchaseNotification'].filter((k) => n[k] !== undefined);
  if (kinds.length !== 1) return { ok: false, reason: kinds.length === 0 ? 'no notification in the DeveloperNotification' : `several notifications: ${kinds.join(', ')}` };
  const kind = kinds[0]!;
  const inner = n[kind];
  if (!isObject(inner)) return { ok: false, reason: `${kind} is not an object` };
  if (kind === 'testNotification') return { ok: true, value: { kind: 'test', packageName, eventTimeMillis } };
  if (kind === 'oneTimeProductNotification') {
    const type = inner['notificationType'];
    const purchaseToken = inner['purchaseToken'];
    const sku = inner['sku'];
    if (typeof type !== 'number' || !Number.isInteger(type)) return { ok: false, reason: 'malformed notificationType' };
    if (!isPurchaseToken(purchaseToken)) return { ok: false, reason: 'missing or malformed purchaseToken' };
    if (!isProductId(sku)) return { ok: false, reason: 'missing or malformed sku' };
    return { ok: true, value: { kind: 'one_time_product', packageName, eventTimeMillis, notificationType: type, purchaseToken, sku } };
  }
  if (kind === 'voidedPurchaseNotification') {
    const purchaseToken = inner['purchaseToken'];
    const orderId = inner['orderId'];
    const productType = inner['productType'];
    const refundType = inner['refundType'];
    if (!isPurchaseToken(purchaseToken)) return { ok: false, reason: 'missing or malformed purchaseToken' };
    if (typeof orderId !== 'string' || !ORDER_ID.test(orderId)) return { ok: false, reason: 'missing or malformed orderId' };
    if (productType !== undefined && (typeof productType !== 'number' || !Number.isInteger(productType))) return { ok: false, reason: 'malformed productType' };
    if (refundType !== undefined && (typeof refundType !== 'number' || !Number.isInteger(refundType))) return { ok: false, reason: 'malformed refundType' };
    return {
      ok: true,
      value: { kind: 'voided', packageName, eventTimeMillis, purchaseToken, orderId, productType: productType ?? null, refundType: refundType ?? null },
    };
  }
  const token = inner['purchaseToken'];
  return { ok: true, value: { kind: 'other', packageName, eventTimeMillis, type: kind, ...(typeof token === 'string' ? { purchaseToken: token } : {}) } };
}

/** What the sandbox publishes for a one-time product event (the same JSON Google sends). */
export function oneTimeProductNotificationJson(x: { packageName: string; eventTimeMillis: number; notificationType: number; purchaseToken: string; sku: string }): string {
  return JSON.stringify({
    version: '1.0',
    packageName: x.packageName,
    eventTimeMillis: String(x.eventTimeMillis),
    oneTimeProductNotification: { version: '1.0', notificationType: x.notificationType, purchaseToken: x.purchaseToken, sku: x.sku },
  });
}

/** What the sandbox publishes when a purchase is voided (refunded, charged back). */
export function voidedPurchaseNotificationJson(x: { packageName: string; eventTimeMillis: number; purchaseToken: string; orderId: string; productType: number; refundType: number }): string {
  return JSON.stringify({
    version: '1.0',
    packageName: x.packageName,
    eventTimeMillis: String(x.eventTimeMillis),
    voidedPurchaseNotification: { purchaseToken: x.purchaseToken, orderId: x.orderId, productType: x.productType, refundType: x.refundType },
  });
}

export function testNotificationJson(packageName: string, eventTimeMillis: number): string {
  return JSON.stringify({ version: '1.0', packageName, eventTimeMillis: String(eventTimeMillis), testNotification: { version: '1.0' } });
}

function parseJson(bytes: Buffer): unknown {
  try {
    return JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch {
    return undefined;
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** `Authorization: Bearer <token>` → the token; null when absent, repeated or another scheme. */
export function bearerToken(headers: Record<string, string | string[] | undefined>): string | null {
  const raw = headers['authorization'] ?? headers['Authorization'];
  if (typeof raw !== 'string') return null;
  const m = /^Bearer ([A-Za-z0-9._~+/=-]+)$/.exec(raw.trim());
  return m ? m[1]! : null;
}

// ---- Errors from the API --------------------------------------------------------------------

/** Google's JSON error body: `{"error":{"code","message","errors":[{reason,…}],"status"}}`. */
export interface GoogleApiError {
  code: number;
  message: string;
  status?: string;
  errors?: Array<{ message?: string; domain?: string; reason?: string; location?: string; locationType?: string }>;
}

function googleErrorOf(data: unknown): GoogleApiError | null {
  if (!isObject(data) || !isObject(data['error'])) return null;
  const e = data['error'];
  return typeof e['code'] === 'number' && typeof e['message'] === 'string' ? (e as unknown as GoogleApiError) : null;
}

const TRANSPORT_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'ENOTFOUND', 'EAI_AGAIN', 'EPIPE', 'UND_ERR_SOCKET', 'UND_ERR_CONNECT_TIMEOUT', 'ABORT_ERR']);

/**
 * Map a failure of the SDK (a GaxiosError: `response.status`, `response.data`) to ChannelError.
 * 401/403 and the API's 4xx answers are not worth retrying as such; 408, 429, 5xx and transport
 * failures are.
 */
export function toChannelError(err: unknown): ChannelError {
  if (err instanceof ChannelError) return err;
  const e = err as { message?: string; code?: string | number; name?: string; response?: { status?: number; data?: unknown }; cause?: { code?: string } };
  const message = typeof e?.message === 'string' ? e.message : String(err);
  const status = e?.response?.status;
  if (typeof status === 'number') {
    const g = googleErrorOf(e.response!.data);
    const reason = g?.errors?.[0]?.reason;
    const detail = g ? `${status} ${g.status ?? ''} ${g.message}${reason ? ` (${reason})` : ''}`.replace(/\s+/g, ' ') : `HTTP ${status}`;
    if (status === 401) return new ChannelError(`Google Play API refused the credentials: ${detail}`, 'google_play', 'unauthenticated', false);
    if (status === 403) return new ChannelError(`Google Play API denied access: ${detail}`, 'google_play', 'permission_denied', false);
    if (status === 404) return new ChannelError(`Google Play API: ${detail}`, 'google_play', reason === 'purchaseTokenNotFound' ? 'purchase_token_not_found' : 'not_found', false);
    if (status === 410) return new ChannelError(`Google Play API: ${detail}`, 'google_play', 'purchase_token_no_longer_valid', false);
    if (status === 408 || status === 429 || status >= 500) return new ChannelError(`Google Play API unavailable: ${detail}`, 'google_play', 'http_error', true);
    return new ChannelError(`Google Play API rejected the request: ${detail}`, 'google_play', reason ? snake(reason) : 'invalid_request', false);
  }
  const code = typeof e?.code === 'string' ? e.code : e?.cause?.code;
  if (e?.name === 'AbortError' || e?.name === 'TimeoutError' || (code && TRANSPORT_CODES.has(code)) || /timeout|socket hang up|fetch failed/i.test(message)) {
    return new ChannelError(`Google Play API unreachable: ${message}`, 'google_play', 'transport_error', true);
  }
  return new ChannelError(message, 'google_play', 'unexpected_error', false);
}

function snake(reason: string): string {
  return reason.replace(/([a-z0-9])([A-Z])/g, '$1_$2').replace(/[^A-Za-z0-9_]/g, '_').toLowerCase().slice(0, 64);
}

// ---- Redaction ----------------------------------------------------------------------------------

const SECRET_KEYS = /^(token|purchase_?token|access_?token|id_?token|refresh_?token|assertion|authorization|private_?key|client_?secret|binding_?secret|obfuscated_?(external_?)?profile_?id)$/i;

/** A stable, non-reversible label for a secret, so audit rows can still be correlated. */
export function fingerprint(secret: string): string {
  return `[REDACTED sha256:${createHash('sha256').update(secret, 'utf8').digest('hex').slice(0, 12)}]`;
}

/** Deep copy with tokens, keys and binding tags replaced by fingerprints. */
export function redactSecrets(value: unknown, depth = 0): unknown {
  if (depth > 20) return '[REDACTED]';
  if (typeof value === 'bigint') return value.toString();
  if (Array.isArray(value)) return value.map((v) => redactSecrets(v, depth + 1));
  if (value && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
      out[k] = SECRET_KEYS.test(k) ? (typeof v === 'string' ? fingerprint(v) : '[REDACTED]') : redactSecrets(v, depth + 1);
    }
    return out;
  }
  if (typeof value === 'string' && /^Bearer /i.test(value)) return 'Bearer [REDACTED]';
  return value;
}

/**
 * Google's side of the calls the connector makes, as plain functions over the database:
 * - the OAuth 2.0 token endpoint (JWT-bearer grant for a service account), with Google's
 *   `{error, error_description}` answers;
 * - the Developer API's bearer-token check, with Google's JSON error body and WWW-Authenticate;
 * - purchases.products.get and purchases.products.acknowledge;
 * - purchases.productsv2.getproductpurchasev2 (a purchase by its token alone);
 * - purchases.voidedpurchases.list (voided purchases by time, paged);
 * - orders.get (an order by its id: its purchase token, state and price).
 * sandbox.ts wires them to routes.
 */
import type { KeyObject } from 'node:crypto';
import type { Queryable } from '../../store/db.ts';
import { ANDROIDPUBLISHER_SCOPE, JWT_BEARER_GRANT, MAX_ASSERTION_LIFETIME_S } from './auth.ts';
import { decodeJwt, verifyJwtRs256 } from './sign.ts';
import { DEFAULT_FEES, estimateFee } from '../../domain/ledger-rules.ts';
import { currencyExponent } from '../../domain/money.ts';
import {
  acknowledgePurchase, findAccessToken, getPurchaseByOrderId, getPurchaseByToken, insertAccessToken, listVoidedPurchases, newAccessToken, priceOfPurchase,
  type SandboxPurchase,
} from './sandbox-purchases.ts';

export interface ApiAnswer {
  status: number;
  body: unknown;
  headers?: Record<string, string>;
}

// ---- Token endpoint ----------------------------------------------------------------------------

export interface TokenEndpointContext {
  db: Queryable;
  /** The URL the assertion's `aud` must name (this endpoint). */
  tokenUrl: string;
  serviceAccount: { clientEmail: string; publicKey: KeyObject; privateKeyId: string };
}

/** Access tokens live an hour, as Google's do (expires_in 3599). */
export const ACCESS_TOKEN_TTL_S = 3599;
/** Clock skew Google tolerates on iat/exp. */
const SKEW_S = 300;

const tokenError = (error: string, description: string, status = 400): ApiAnswer => ({ status, body: { error, error_description: description } });

export async function exchangeToken(ctx: TokenEndpointContext, form: Record<string, string>): Promise<ApiAnswer> {
  const grantType = form['grant_type'];
  if (!grantType) return tokenError('invalid_request', 'Missing required parameter: grant_type');
  if (grantType !== JWT_BEARER_GRANT) return tokenError('unsupported_grant_type', `Invalid grant_type: ${grantType.slice(0, 100)}`);
  const assertion = form['assertion'];
  if (!assertion) return tokenError('invalid_request', 'Missing required parameter: assertion');
  const jwt = decodeJwt(assertion);
  if (!jwt) return tokenError('invalid_grant', 'Invalid JWT: malformed assertion.');
  const c = jwt.payload;
  if (c['iss'] !== ctx.serviceAccount.clientEmail) return tokenError('invalid_grant', 'Invalid grant: account not found');
  const kid = jwt.header['kid'];
  if ((kid !== undefined && kid !== ctx.serviceAccount.privateKeyId) || !verifyJwtRs256(jwt, ctx.serviceAccount.publicKey)) {
    return tokenError('invalid_grant', 'Invalid JWT Signature.');
  }
  if (c['aud'] !== ctx.tokenUrl) return tokenError('invalid_grant', `Invalid JWT: Failed audience check. The right audience is ${ctx.tokenUrl}`);
  const iat = c['iat'];
  const exp = c['exp'];
  const now = Math.floor(Date.now() / 1000);
  if (typeof iat !== 'number' || typeof exp !== 'number' || exp <= iat || exp - iat > MAX_ASSERTION_LIFETIME_S || iat > now + SKEW_S || exp < now - SKEW_S) {
    return tokenError('invalid_grant', 'Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.');
  }
  const scope = c['scope'];
  if (typeof scope !== 'string' || scope.trim() === '') return tokenError('invalid_scope', 'Invalid OAuth scope or ID token audience provided.');
  const token = newAccessToken();
  await insertAccessToken(ctx.db, { token, clientEmail: ctx.serviceAccount.clientEmail, scope: scope.trim(), ttlSeconds: ACCESS_TOKEN_TTL_S });
  return { status: 200, body: { access_token: token, expires_in: ACCESS_TOKEN_TTL_S, token_type: 'Bearer' } };
}

// ---- Developer API errors and authentication -----------------------------------------------------

const STATUS_WORD: Record<number, string> = { 400: 'INVALID_ARGUMENT', 401: 'UNAUTHENTICATED', 403: 'PERMISSION_DENIED', 404: 'NOT_FOUND', 410: 'NOT_FOUND' };

/** Google's JSON error body (the shape the SDK's GaxiosError carries in response.data). */
export function googleError(code: number, message: string, reason: string, extra: { domain?: string; location?: string; locationType?: string; errorMessage?: string } = {}): ApiAnswer {
  return {
    status: code,
    body: {
      error: {
        code,
        message,
        errors: [{ message: extra.errorMessage ?? message, domain: extra.domain ?? 'global', reason, ...(extra.location ? { location: extra.location, locationType: extra.locationType ?? 'parameter' } : {}) }],
        ...(STATUS_WORD[code] ? { status: STATUS_WORD[code] } : {}),
      },
    },
  };
}

const CREDENTIALS_HELP = 'Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.';

export function missingCredentials(): ApiAnswer {
  return {
    ...googleError(401, `Request is missing required authentication credential. ${CREDENTIALS_HELP}`, 'required', { errorMessage: 'Login Required.', location: 'Authorization', locationType: 'header' }),
    headers: { 'www-authenticate': 'Bearer realm="https://accounts.google.com/"' },
  };
}

export function invalidCredentials(): ApiAnswer {
  return {
    ...googleError(401, `Request had invalid authentication credentials. ${CREDENTIALS_HELP}`, 'authError', { errorMessage: 'Invalid Credentials', location: 'Authorization', locationType: 'header' }),
    headers: { 'www-authenticate': 'Bearer realm="https://accounts.google.com/", error="invalid_token"' },
  };
}

/**
 * null when the request may go on; else Google's answer. The token must carry one of `scopes`
 * (default: the Developer API's; Cloud Storage accepts its devstorage scopes, sandbox-reports.ts).
 */
export async function authenticate(db: Queryable, authorization: string | string[] | undefined, scopes: readonly string[] = [ANDROIDPUBLISHER_SCOPE]): Promise<ApiAnswer | null> {
  if (authorization === undefined || authorization === '') return missingCredentials();
  if (typeof authorization !== 'string') return invalidCredentials();
  const m = /^Bearer (\S{1,2048})$/i.exec(authorization.trim());
  if (!m) return invalidCredentials();
  const record = await findAccessToken(db, m[1]!);
  if (!record || record.expired) return invalidCredentials();
  const granted = record.scope.split(/\s+/);
  if (!scopes.some((s) => granted.includes(s))) {
    return {
      ...googleError(403, 'Request had insufficient authentication scopes.', 'insufficientPermissions', { errorMessage: 'Insufficient Permission' }),
      headers: { 'www-authenticate': `Bearer realm="https://accounts.google.com/", error="insufficient_scope", scope="${scopes[0]}"` },
    };
  }
  return null;
}

/** The service account has access to one app only: any other package is refused like Play does. */
export function permissionDenied(): ApiAnswer {
  return googleError(401, 'The current user has insufficient permissions to perform the requested operation.', 'permissionDenied', { domain: 'androidpublisher' });
}

const tokenNotFound = () => googleError(404, 'The purchase token was not found.', 'purchaseTokenNotFound', { location: 'token' });
const invalidValue = () => googleError(400, 'Invalid Value', 'invalid');

// ---- purchases.products -----------------------------------------------------------------------

/** androidpublisher#productPurchase as Google serialises it (int64 as strings, absent = default). */
export function productPurchaseJson(p: SandboxPurchase): Record<string, unknown> {
  return {
    purchaseTimeMillis: String(p.purchaseTime.getTime()),
    purchaseState: p.purchaseState,
    consumptionState: p.consumptionState,
    ...(p.developerPayload !== null ? { developerPayload: p.developerPayload } : {}),
    orderId: p.orderId,
    ...(p.purchaseType !== null ? { purchaseType: p.purchaseType } : {}),
    acknowledgementState: p.acknowledgementState,
    kind: 'androidpublisher#productPurchase',
    productId: p.productId,
    ...(p.quantity !== 1 ? { quantity: p.quantity } : {}),
    obfuscatedExternalAccountId: p.obfuscatedAccountId,
    ...(p.obfuscatedProfileId !== null ? { obfuscatedExternalProfileId: p.obfuscatedProfileId } : {}),
    regionCode: p.regionCode,
    refundableQuantity: refundableQuantity(p),
  };
}

/** "The quantity eligible for refund, i.e. quantity that hasn't been refunded": all of a paid purchase, none once voided. */
function refundableQuantity(p: SandboxPurchase): number {
  return p.purchaseState === 0 && p.voidedAt === null ? p.quantity : 0;
}

const V2_STATE = ['PURCHASED', 'CANCELLED', 'PENDING'] as const;

/** androidpublisher#productPurchaseV2 as Google serialises it (enums as words, one line item per product). */
export function productPurchaseV2Json(p: SandboxPurchase): Record<string, unknown> {
  return {
    kind: 'androidpublisher#productPurchaseV2',
    productLineItem: [{
      productId: p.productId,
      productOfferDetails: {
        quantity: p.quantity,
        refundableQuantity: refundableQuantity(p),
        consumptionState: p.consumptionState === 1 ? 'CONSUMPTION_STATE_CONSUMED' : 'CONSUMPTION_STATE_YET_TO_BE_CONSUMED',
      },
    }],
    purchaseStateContext: { purchaseState: V2_STATE[p.purchaseState] ?? 'PURCHASE_STATE_UNSPECIFIED' },
    ...(p.purchaseType === 0 ? { testPurchaseContext: { fopType: 'TEST' } } : {}),
    orderId: p.orderId,
    obfuscatedExternalAccountId: p.obfuscatedAccountId,
    ...(p.obfuscatedProfileId !== null ? { obfuscatedExternalProfileId: p.obfuscatedProfileId } : {}),
    regionCode: p.regionCode,
    // Present once the payment completed (a voided purchase had completed before its refund).
    ...(p.purchaseState === 0 || p.voidedAt !== null ? { purchaseCompletionTime: p.purchaseTime.toISOString() } : {}),
    acknowledgementState: p.acknowledgementState === 1 ? 'ACKNOWLEDGEMENT_STATE_ACKNOWLEDGED' : 'ACKNOWLEDGEMENT_STATE_PENDING',
  };
}

export async function getProductPurchaseV2(db: Queryable, packageName: string, token: string): Promise<ApiAnswer> {
  const purchase = await getPurchaseByToken(db, packageName, token);
  if (!purchase) return tokenNotFound();
  return { status: 200, body: productPurchaseV2Json(purchase) };
}

// ---- purchases.voidedpurchases ---------------------------------------------------------------

const DAY_MS = 86_400_000;
/** "The value of this parameter cannot be older than 30 days." */
export const VOIDED_WINDOW_MS = 30 * DAY_MS;
const MAX_VOIDED_RESULTS = 1000;

function voidedPurchaseJson(p: SandboxPurchase): Record<string, unknown> {
  return {
    kind: 'androidpublisher#voidedPurchase',
    purchaseToken: p.purchaseToken,
    purchaseTimeMillis: String(p.purchaseTime.getTime()),
    voidedTimeMillis: String(p.voidedAt!.getTime()),
    orderId: p.orderId,
    voidedSource: p.voidedSource,
    voidedReason: p.voidedReason,
  };
}

interface PageCursor { v: number; o: string; e: number }

function encodeCursor(c: PageCursor): string {
  return Buffer.from(JSON.stringify(c), 'utf8').toString('base64url');
}

function decodeCursor(token: string): PageCursor | null {
  try {
    const c = JSON.parse(Buffer.from(token, 'base64url').toString('utf8')) as Partial<PageCursor>;
    return Number.isSafeInteger(c.v) && Number.isSafeInteger(c.e) && typeof c.o === 'string' ? (c as PageCursor) : null;
  } catch {
    return null;
  }
}

function int64Param(query: Record<string, string>, name: string): number | null | 'invalid' {
  const v = query[name];
  if (v === undefined || v === '') return null;
  return /^\d{1,16}$/.test(v) ? Number(v) : 'invalid';
}

/**
 * purchases.voidedpurchases.list: startTime (default 30 days ago, not older), endTime (default
 * now), maxResults (1..1000, default 1000), token (a page cursor; start/end then ignored), type
 * (0 one-time products, 1 also subscriptions: the sandbox has none), includeQuantityBasedPartialRefund
 * (the sandbox voids whole purchases only). Oldest first.
 */
export async function listVoidedPurchasesAnswer(db: Queryable, packageName: string, query: Record<string, string>, now = new Date()): Promise<ApiAnswer> {
  const bad = (param: string, why: string) => googleError(400, `Invalid value for ${param}: ${why}`, 'invalid', { location: param });
  const start = int64Param(query, 'startTime');
  const end = int64Param(query, 'endTime');
  const max = int64Param(query, 'maxResults');
  if (start === 'invalid') return bad('startTime', 'must be milliseconds since the epoch');
  if (end === 'invalid') return bad('endTime', 'must be milliseconds since the epoch');
  if (max === 'invalid' || (max !== null && (max < 1 || max > MAX_VOIDED_RESULTS))) return bad('maxResults', `must be 1 to ${MAX_VOIDED_RESULTS}`);
  if (query['type'] !== undefined && query['type'] !== '0' && query['type'] !== '1') return bad('type', 'must be 0 or 1');
  const partial = query['includeQuantityBasedPartialRefund'];
  if (partial !== undefined && partial !== 'true' && partial !== 'false') return bad('includeQuantityBasedPartialRefund', 'must be true or false');
  let from: number;
  let to: number;
  let after: { voidedAt: Date; orderId: string } | null = null;
  if (query['token'] !== undefined) {
    const cursor = decodeCursor(query['token']);
    if (!cursor) return bad('token', 'not a page token of this list');
    from = 0;
    to = cursor.e;
    after = { voidedAt: new Date(cursor.v), orderId: cursor.o };
  } else {
    from = start ?? now.getTime() - VOIDED_WINDOW_MS;
    to = end ?? now.getTime();
    if (from < now.getTime() - VOIDED_WINDOW_MS - DAY_MS) return bad('startTime', 'older than 30 days');
    if (to < from) return bad('endTime', 'before startTime');
  }
  const limit = max ?? MAX_VOIDED_RESULTS;
  // One extra row tells whether another page follows.
  const rows = await listVoidedPurchases(db, { packageName, from: new Date(from), to: new Date(to + 1), after, limit: limit + 1 });
  const page = rows.slice(0, limit);
  const last = page[page.length - 1];
  const more = rows.length > limit && last !== undefined;
  return {
    status: 200,
    body: {
      pageInfo: { resultPerPage: page.length, startIndex: 0 },
      ...(more ? { tokenPagination: { nextPageToken: encodeCursor({ v: last.voidedAt!.getTime(), o: last.orderId, e: to }) } } : {}),
      voidedPurchases: page.map(voidedPurchaseJson),
    },
  };
}

async function findPurchase(db: Queryable, packageName: string, productId: string, token: string): Promise<{ ok: true; purchase: SandboxPurchase } | { ok: false; answer: ApiAnswer }> {
  const purchase = await getPurchaseByToken(db, packageName, token);
  if (!purchase) return { ok: false, answer: tokenNotFound() };
  // A token of another product: Play answers "Invalid Value".
  if (purchase.productId !== productId) return { ok: false, answer: invalidValue() };
  return { ok: true, purchase };
}

export async function getProductPurchase(db: Queryable, packageName: string, productId: string, token: string): Promise<ApiAnswer> {
  const found = await findPurchase(db, packageName, productId, token);
  if (!found.ok) return found.answer;
  return { status: 200, body: productPurchaseJson(found.purchase) };
}

/** Empty answer on success, also when already acknowledged; only a PURCHASED purchase can be. */
export async function acknowledgeProductPurchase(db: Queryable, packageName: string, productId: string, token: string, body: unknown): Promise<ApiAnswer> {
  const found = await findPurchase(db, packageName, productId, token);
  if (!found.ok) return found.answer;
  let developerPayload: string | null = null;
  if (body !== undefined && body !== null && body !== '') {
    if (typeof body !== 'object' || Array.isArray(body)) return invalidValue();
    const dp = (body as Record<string, unknown>)['developerPayload'];
    if (dp !== undefined && (typeof dp !== 'string' || dp.length > 1024)) return invalidValue();
    developerPayload = typeof dp === 'string' ? dp : null;
  }
  const result = await acknowledgePurchase(db, packageName, token, developerPayload);
  if (result === 'not_found') return tokenNotFound();
  if (result === 'not_purchased') {
    return googleError(400, 'The purchase is not in a valid state to perform the desired operation.', 'invalidPurchaseState', { domain: 'androidpublisher', location: 'token' });
  }
  return { status: 204, body: null };
}

// ---- orders.get -------------------------------------------------------------------------------------

/** google.type.Money: whole units as a string, the fraction in nanos. */
export function moneyJson(minor: bigint, currency: string): { currencyCode: string; units: string; nanos: number } {
  const scale = 10n ** BigInt(currencyExponent(currency));
  return { currencyCode: currency, units: (minor / scale).toString(), nanos: Number((minor % scale) * (1_000_000_000n / scale)) };
}

/** Order.state of a sandbox purchase. */
function orderState(p: SandboxPurchase): string {
  if (p.voidedAt) return 'REFUNDED';
  if (p.purchaseState === 0) return 'PROCESSED';
  if (p.purchaseState === 2) return 'PENDING';
  return 'CANCELED';
}

/**
 * androidpublisher#order as orders.get answers it for a one-time product: the purchase token, the
 * state, one line item, the price (sandbox-purchases.ts, priceOfPurchase: no tax in the sandbox)
 * and the history. Unknown order: 404.
 */
export async function getOrder(db: Queryable, packageName: string, orderId: string): Promise<ApiAnswer> {
  const p = await getPurchaseByOrderId(db, packageName, orderId);
  if (!p) return googleError(404, 'The order was not found.', 'notFound', { location: 'orderId' });
  const price = await priceOfPurchase(db, p);
  const zero = moneyJson(0n, price.currency);
  const total = moneyJson(price.amountMinor, price.currency);
  const paid = p.purchaseState === 0 || p.voidedAt !== null;
  const fee = estimateFee(price.amountMinor, DEFAULT_FEES.google_play!);
  const lastEvent = p.voidedAt ?? p.settledAt ?? p.purchaseTime;
  return {
    status: 200,
    body: {
      orderId: p.orderId,
      purchaseToken: p.purchaseToken,
      state: orderState(p),
      createTime: p.purchaseTime.toISOString(),
      lastEventTime: lastEvent.toISOString(),
      buyerAddress: { buyerCountry: p.regionCode },
      total,
      tax: zero,
      orderDetails: { taxInclusive: true },
      ...(paid ? { developerRevenueInBuyerCurrency: moneyJson(p.voidedAt ? 0n : price.amountMinor - fee, price.currency) } : {}),
      orderHistory: {
        ...(paid ? { processedEvent: { eventTime: p.purchaseTime.toISOString() } } : {}),
        ...(p.voidedAt ? { refundEvent: { eventTime: p.voidedAt.toISOString(), refundDetails: { total, tax: zero } } } : {}),
        ...(p.purchaseState === 1 && !p.voidedAt && p.settledAt ? { cancellationEvent: { eventTime: p.settledAt.toISOString() } } : {}),
      },
      lineItems: [{
        productId: p.productId,
        productTitle: p.productId,
        listingPrice: moneyJson(price.amountMinor / BigInt(p.quantity), price.currency),
        total,
        tax: zero,
        oneTimePurchaseDetails: { quantity: p.quantity },
      }],
    },
  };
}

/**
 * Google Play sandbox: Google's side of the same protocol the connector speaks, as a Fastify
 * plugin. Register with `app.register(googlePlaySandboxPlugin, { prefix: '/sandbox/google_play', ...options })`.
 *
 * Routes (under the prefix):
 * - `POST /token`  Google's OAuth 2.0 token endpoint: JWT-bearer grant for the service account.
 * - `GET  /androidpublisher/v3/applications/:pkg/purchases/products/:productId/tokens/:token`
 * - `POST /androidpublisher/v3/applications/:pkg/purchases/products/:productId/tokens/:token:acknowledge`
 * - `GET  /androidpublisher/v3/applications/:pkg/purchases/productsv2/tokens/:token`
 * - `GET  /androidpublisher/v3/applications/:pkg/purchases/voidedpurchases`
 * - `GET  /androidpublisher/v3/applications/:pkg/orders/:orderId`  orders.get
 *                   the Developer API, bearer token checked (Google's 401 JSON when bad).
 * - `GET  /storage/v1/b/:bucket/o/:object[?alt=media]`  the Cloud Storage JSON API over the app's
 *                   reporting bucket: the monthly earnings report (sandbox-reports.ts).
 * - `GET  /oauth2/v3/certs`  the key that signs push OIDC tokens, as Google's JWKS.
 * - `POST /purchase` what the Play Billing library does on the device after launchBillingFlow:
 *                   `{ product_id, obfuscated_account_id, obfuscated_profile_id?, quantity?, package_name? }`
 *                   (the payment's `action.params` as they are) → a PENDING purchase and its token.
 * - `POST /simulate` `{ channel_reference, outcome }` plays the buyer: succeeded → PURCHASED,
 *                   failed/canceled → CANCELED; publishes the real-time developer notification;
 *                   answers the purchase token (what the device receives).
 * - `POST /refunds/simulate` `{ purchase_token | channel_reference, outcome: 'succeeded', voided_reason?,
 *                   voided_source? }` plays Google refunding a paid purchase (the buyer's request
 *                   granted, a chargeback, a refund from Play Console): the purchase is voided
 *                   and a voidedPurchaseNotification (productType 2, refundType 1 = full refund)
 *                   is published. Merchants' apps have no refund call here; refunds are final at
 *                   once. Voided reads back as purchaseState 1 (CANCELED) with refundableQuantity
 *                   0: Google documents ONE_TIME_PRODUCT_CANCELED for "a purchase revoked by the
 *                   developer or by customer request", and refundableQuantity as the quantity not
 *                   yet refunded. (Google may also send ONE_TIME_PRODUCT_CANCELED then; the sandbox
 *                   sends the voided notification only.) Unknown 404 `purchase_not_found`; not paid
 *                   409 `purchase_not_refundable`; twice 409 `purchase_already_refunded`.
 * - `POST /test_notification` what Play Console's "Send test notification" does.
 * - `GET  /purchases/:channelReference` the sandbox's view of a purchase (debugging).
 * Notifications are Pub/Sub pushes to the configured endpoint with an OIDC token signed by the
 * sandbox's own "Google" key, through the shared dispatcher (retry schedule × timeScale, faults).
 */
import { randomInt, type KeyObject } from 'node:crypto';
import type { FastifyInstance, FastifyPluginAsync, FastifyReply } from 'fastify';
import type { Pool } from '../../store/db.ts';
import { inTransaction } from '../../store/db.ts';
import { createNotificationDispatcher, type NotificationChannelSpec, type NotificationDispatcher } from '../sandbox/dispatcher.ts';
import { objectBody, sendSandboxError } from '../sandbox/errors.ts';
import { generateRsaPemPair, keyIdOf, loadPrivateKey, loadPublicKey, MAX_OBFUSCATED_ID_CHARS, publicJwk, randomSecret, signJwtRs256 } from './sign.ts';
import {
  ONE_TIME_PRODUCT_CANCELED, ONE_TIME_PRODUCT_PURCHASED, PACKAGE_NAME, PURCHASE_STATE, PURCHASE_TYPE, REFUND_TYPE, VOIDED_PRODUCT_TYPE, isProductId,
  isPurchaseToken, oneTimeProductNotificationJson, purchaseStateName, testNotificationJson, voidedPurchaseNotificationJson,
} from './transformers.ts';
import {
  acknowledgeProductPurchase, authenticate, exchangeToken, getOrder, getProductPurchase, getProductPurchaseV2, listVoidedPurchasesAnswer, permissionDenied, type ApiAnswer,
} from './sandbox-api.ts';
import { STORAGE_READ_SCOPES, earningsZipStream, sandboxReportsBucket, storageObject } from './sandbox-reports.ts';
import { developerIdOfBucket } from './bill.ts';
import { getPurchaseByReference, getPurchaseByToken, insertPurchase, newMessageId, settlePurchase, voidPurchase, type SandboxPurchase } from './sandbox-purchases.ts';

export const GOOGLE_PLAY_CHANNEL = 'google_play';
const SECOND = 1000;

/**
 * Pub/Sub push retry policy with exponential backoff: 10 s doubling to 600 s. Pub/Sub keeps an
 * unacknowledged message up to 7 days; the dispatcher allows at most 100 attempts, which at the
 * 600 s ceiling covers about 15.7 hours.
 */
export const PUBSUB_PUSH_SCHEDULE_MS: readonly number[] = Object.freeze(
  Array.from({ length: 100 }, (_, i) => (i === 0 ? 0 : Math.min(10 * 2 ** (i - 1), 600) * SECOND)),
);

/** Pub/Sub push: these status codes acknowledge; anything else is redelivered. */
export const PUBSUB_ACK_STATUSES: ReadonlySet<number> = new Set([102, 200, 201, 202, 204]);

export interface GooglePlaySandboxKeys {
  /** The service account's JSON key `private_key` (give to the connector). */
  serviceAccountPrivateKey: string;
  /** Its public half (give to the sandbox). */
  serviceAccountPublicKey: string;
  /** The JSON key's `private_key_id`. */
  serviceAccountKeyId: string;
  /** "Google's" key that signs push OIDC tokens (sandbox). */
  googlePrivateKey: string;
  /** Its public half (the connector trusts it in sandbox mode only). */
  googlePublicKey: string;
  googleKeyId: string;
  /** Purchase binding secret (connector). */
  bindingSecret: string;
  /** The push service account's numeric unique id (`sub`/`azp` of push tokens). */
  pushServiceAccountId: string;
}

export async function generateGooglePlaySandboxKeys(): Promise<GooglePlaySandboxKeys> {
  const [sa, google] = await Promise.all([generateRsaPemPair(), generateRsaPemPair()]);
  const digits = Array.from({ length: 20 }, (_, i) => (i === 0 ? 1 + randomInt(9) : randomInt(10))).join('');
  return {
    serviceAccountPrivateKey: sa.privateKey,
    serviceAccountPublicKey: sa.publicKey,
    serviceAccountKeyId: keyIdOf(loadPublicKey(sa.publicKey)),
    googlePrivateKey: google.privateKey,
    googlePublicKey: google.publicKey,
    googleKeyId: keyIdOf(loadPublicKey(google.publicKey)),
    bindingSecret: randomSecret(32),
    pushServiceAccountId: `1${digits}`, // 21 digits, like Google's unique ids
  };
}

export interface GooglePlaySandboxOptions {
  pool: Pool;
  packageName: string;
  /** The service account allowed to call the API (its email, public key and key id). */
  serviceAccount: { clientEmail: string; publicKey: string; privateKeyId: string };
  /** Signs push OIDC tokens. */
  googleSigningKey: { privateKey: string; kid: string };
  /** The Pub/Sub push subscription: where RTDNs go and how their tokens look. */
  push: { endpoint: string; audience: string; serviceAccountEmail: string; serviceAccountId: string; subscription: string };
  /** e.g. http://127.0.0.1:4000: the token endpoint's own URL (the assertion's audience). */
  publicBaseUrl: string;
  /** Multiplies Pub/Sub's redelivery backoff: 1 = real time, 0.001 in tests. */
  timeScale: number;
  /** The developer account's reporting bucket `pubsite_prod_rev_<id>`; default sandboxReportsBucket(packageName). */
  reportsBucket?: string;
  /** Run the notification delivery loop in this process (default true). */
  deliverNotifications?: boolean;
  pollIntervalMs?: number;
  notifyTimeoutMs?: number;
}

/** What one Pub/Sub message is; the push body and its OIDC token are made at each attempt. */
export interface PushPayload extends Record<string, unknown> {
  message_id: string;
  publish_time: string;
  /** base64 of the DeveloperNotification JSON. */
  data: string;
  subscription: string;
}

export interface PushSigner {
  privateKey: KeyObject;
  kid: string;
  audience: string;
  serviceAccountEmail: string;
  serviceAccountId: string;
}

/** The OIDC ID token Pub/Sub attaches to a push (claims as Google documents them). */
export function signPushToken(s: PushSigner, now: Date, overrides: Record<string, unknown> = {}): string {
  const iat = Math.floor(now.getTime() / 1000);
  return signJwtRs256(
    {
      aud: s.audience, azp: s.serviceAccountId, email: s.serviceAccountEmail, email_verified: true,
      exp: iat + 3600, iat, iss: 'https://accounts.google.com', sub: s.serviceAccountId, ...overrides,
    },
    s.privateKey,
    s.kid,
  );
}

/** `{"message":{data, messageId, message_id, publishTime, publish_time},"subscription"}` */
export function pushBody(p: PushPayload): string {
  return JSON.stringify({
    message: { data: p.data, messageId: p.message_id, message_id: p.message_id, publishTime: p.publish_time, publish_time: p.publish_time },
    subscription: p.subscription,
  });
}

export function googlePlayPushSpec(signer: PushSigner): NotificationChannelSpec<PushPayload> {
  return {
    channel: GOOGLE_PLAY_CHANNEL,
    scheduleMs: PUBSUB_PUSH_SCHEDULE_MS,
    buildRequest(payload, ctx) {
      return {
        url: ctx.url,
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          authorization: `Bearer ${signPushToken(signer, ctx.now)}`,
          'user-agent': 'APIs-Google; (+https://developers.google.com/webmasters/APIs-Google.html)',
        },
        body: pushBody(payload),
      };
    },
    isAcknowledged: ({ status }) => PUBSUB_ACK_STATUSES.has(status),
  };
}

export function pushPayload(dataJson: string, subscription: string, now = new Date()): PushPayload {
  return { message_id: newMessageId(), publish_time: now.toISOString(), data: Buffer.from(dataJson, 'utf8').toString('base64'), subscription };
}

export type SimulateOutcome = 'succeeded' | 'failed' | 'canceled';
const OUTCOMES: readonly SimulateOutcome[] = ['succeeded', 'failed', 'canceled'];
const MAX_CAS_ROUNDS = 5;

type SimulateResult =
  | { ok: true; purchase: SandboxPurchase; messageId: string }
  | { ok: false; status: 404 | 409; code: string; message: string };

/** Settle the reference's pending purchase as the buyer would, and publish its RTDN, in one transaction. */
export async function simulateBuyer(
  pool: Pool,
  dispatcher: NotificationDispatcher<PushPayload>,
  push: { endpoint: string; subscription: string },
  packageName: string,
  reference: string,
  outcome: SimulateOutcome,
): Promise<SimulateResult> {
  return inTransaction(pool, async (db) => {
    for (let round = 0; round < MAX_CAS_ROUNDS; round++) {
      const purchase = await getPurchaseByReference(db, packageName, reference);
      if (!purchase) {
        return { ok: false, status: 404, code: 'purchase_not_found', message: `no Google Play sandbox purchase for obfuscated account id ${reference}: the device starts one with POST /purchase` };
      }
      if (purchase.purchaseState !== PURCHASE_STATE.PENDING) {
        return { ok: false, status: 409, code: 'purchase_already_final', message: `purchase for ${reference} is already ${purchaseStateName(purchase.purchaseState)}` };
      }
      const to = outcome === 'succeeded' ? PURCHASE_STATE.PURCHASED : PURCHASE_STATE.CANCELED;
      const settled = await settlePurchase(db, purchase, to);
      if (!settled) continue;
      const payload = pushPayload(
        oneTimeProductNotificationJson({
          packageName, eventTimeMillis: Date.now(), purchaseToken: settled.purchaseToken, sku: settled.productId,
          notificationType: to === PURCHASE_STATE.PURCHASED ? ONE_TIME_PRODUCT_PURCHASED : ONE_TIME_PRODUCT_CANCELED,
        }),
        push.subscription,
      );
      await dispatcher.enqueue(db, { channelReference: reference, eventId: payload.message_id, url: push.endpoint, payload });
      return { ok: true, purchase: settled, messageId: payload.message_id };
    }
    throw new Error(`purchase for ${reference} kept changing while being settled`);
  });
}

/** VoidedPurchase.voidedReason 1 (Remorse) and voidedSource 0 (User): a buyer's refund request granted. */
const DEFAULT_VOIDED = { reason: 1, source: 0 } as const;

type RefundResult =
  | { ok: true; purchase: SandboxPurchase; messageId: string }
  | { ok: false; status: 404 | 409; code: string; message: string };

/** Google voids a paid purchase (a full refund) and publishes the voided-purchase RTDN, in one transaction. */
export async function simulateRefund(
  pool: Pool,
  dispatcher: NotificationDispatcher<PushPayload>,
  push: { endpoint: string; subscription: string },
  packageName: string,
  lookup: { purchaseToken: string } | { reference: string },
  voided: { reason: number; source: number } = DEFAULT_VOIDED,
): Promise<RefundResult> {
  const label = 'reference' in lookup ? `obfuscated account id ${lookup.reference}` : 'this purchase token';
  return inTransaction(pool, async (db) => {
    for (let round = 0; round < MAX_CAS_ROUNDS; round++) {
      const purchase = 'reference' in lookup ? await getPurchaseByReference(db, packageName, lookup.reference) : await getPurchaseByToken(db, packageName, lookup.purchaseToken);
      if (!purchase) return { ok: false, status: 404, code: 'purchase_not_found', message: `no Google Play sandbox purchase for ${label}` };
      if (purchase.voidedAt) return { ok: false, status: 409, code: 'purchase_already_refunded', message: `order ${purchase.orderId} was refunded at ${purchase.voidedAt.toISOString()}` };
      if (purchase.purchaseState !== PURCHASE_STATE.PURCHASED) {
        return { ok: false, status: 409, code: 'purchase_not_refundable', message: `purchase ${purchase.orderId} is ${purchaseStateName(purchase.purchaseState)}: only a PURCHASED purchase can be refunded` };
      }
      const done = await voidPurchase(db, purchase, voided);
      if (!done) continue;
      const payload = pushPayload(
        voidedPurchaseNotificationJson({
          packageName, eventTimeMillis: done.voidedAt!.getTime(), purchaseToken: done.purchaseToken, orderId: done.orderId,
          productType: VOIDED_PRODUCT_TYPE.ONE_TIME, refundType: REFUND_TYPE.FULL,
        }),
        push.subscription,
      );
      await dispatcher.enqueue(db, { channelReference: done.obfuscatedAccountId, eventId: payload.message_id, url: push.endpoint, payload });
      return { ok: true, purchase: done, messageId: payload.message_id };
    }
    throw new Error(`purchase for ${label} kept changing while being refunded`);
  });
}

export function purchaseJson(p: SandboxPurchase, extra: Record<string, unknown> = {}) {
  return {
    object: 'sandbox_purchase',
    channel: GOOGLE_PLAY_CHANNEL,
    package_name: p.packageName,
    channel_reference: p.obfuscatedAccountId,
    purchase_token: p.purchaseToken,
    order_id: p.orderId,
    product_id: p.productId,
    quantity: p.quantity,
    purchase_state: p.purchaseState,
    purchase_state_name: purchaseStateName(p.purchaseState),
    acknowledgement_state: p.acknowledgementState,
    consumption_state: p.consumptionState,
    purchase_type: p.purchaseType,
    obfuscated_account_id: p.obfuscatedAccountId,
    obfuscated_profile_id: p.obfuscatedProfileId,
    purchase_time: p.purchaseTime.toISOString(),
    settled_at: p.settledAt ? p.settledAt.toISOString() : null,
    voided_at: p.voidedAt ? p.voidedAt.toISOString() : null,
    voided_source: p.voidedSource,
    voided_reason: p.voidedReason,
    ...extra,
  };
}

// ---- The device's purchase ----------------------------------------------------------------------

type DeviceRequest = { ok: true; productId: string; accountId: string; profileId: string | null; quantity: number } | { ok: false; param: string; message: string };

const DEVICE_FIELDS = new Set(['product_id', 'obfuscated_account_id', 'obfuscated_profile_id', 'quantity', 'package_name']);

function parseDeviceRequest(body: unknown, packageName: string): DeviceRequest {
  const b = objectBody(body);
  if (!b) return { ok: false, param: '', message: 'body must be a JSON object' };
  for (const key of Object.keys(b)) if (!DEVICE_FIELDS.has(key)) return { ok: false, param: key, message: `unknown parameter ${key}` };
  if (b['package_name'] !== undefined && b['package_name'] !== packageName) return { ok: false, param: 'package_name', message: `this sandbox sells for ${packageName} only` };
  if (!isProductId(b['product_id'])) return { ok: false, param: 'product_id', message: 'product_id must be a Play product id ([a-z0-9][a-z0-9._]*)' };
  const accountId = b['obfuscated_account_id'];
  if (typeof accountId !== 'string' || accountId === '' || accountId.length > MAX_OBFUSCATED_ID_CHARS) {
    return { ok: false, param: 'obfuscated_account_id', message: `obfuscated_account_id must be 1-${MAX_OBFUSCATED_ID_CHARS} characters` };
  }
  const profileId = b['obfuscated_profile_id'];
  if (profileId !== undefined && profileId !== null && (typeof profileId !== 'string' || profileId === '' || profileId.length > MAX_OBFUSCATED_ID_CHARS)) {
    return { ok: false, param: 'obfuscated_profile_id', message: `obfuscated_profile_id must be 1-${MAX_OBFUSCATED_ID_CHARS} characters` };
  }
  const quantity = b['quantity'] ?? 1;
  if (typeof quantity !== 'number' || !Number.isInteger(quantity) || quantity < 1 || quantity > 100) return { ok: false, param: 'quantity', message: 'quantity must be an integer from 1 to 100' };
  return { ok: true, productId: b['product_id'] as string, accountId, profileId: typeof profileId === 'string' ? profileId : null, quantity };
}

// ---- The plugin ---------------------------------------------------------------------------------

const FORM_TYPE = 'application/x-www-form-urlencoded';
const MAX_BODY_BYTES = 64 * 1024;
const API_ROOT = '/androidpublisher/v3/applications';

interface ApiPath { packageName: string; productId: string; token: string; verb: string | null }

/**
 * `…/androidpublisher/v3/applications/{pkg}/purchases/products/{productId}/tokens/{token}[:verb]`
 * from the raw URL, each segment decoded on its own (an encoded '/' stays inside its segment).
 */
export function parseApiPath(rawUrl: string): ApiPath | null {
  const path = rawUrl.split('?')[0]!;
  const at = path.indexOf(`${API_ROOT}/`);
  if (at < 0 || path.length > 4096) return null;
  const segments = path.slice(at + API_ROOT.length + 1).split('/');
  if (segments.length !== 6 || segments[1] !== 'purchases' || segments[2] !== 'products' || segments[4] !== 'tokens') return null;
  const last = segments[5]!;
  const colon = last.lastIndexOf(':');
  const decode = (s: string) => {
    try {
      return decodeURIComponent(s);
    } catch {
      return null;
    }
  };
  const packageName = decode(segments[0]!);
  const productId = decode(segments[3]!);
  const token = decode(colon < 0 ? last : last.slice(0, colon));
  if (!packageName || !productId || !token) return null;
  return { packageName, productId, token, verb: colon < 0 ? null : last.slice(colon + 1) };
}

/** `…/applications/{pkg}/purchases/productsv2/tokens/{token}`, `…/applications/{pkg}/purchases/voidedpurchases` and `…/applications/{pkg}/orders/{orderId}`. */
export function parseApiPathV2(rawUrl: string):
  | { kind: 'product_v2'; packageName: string; token: string }
  | { kind: 'voided'; packageName: string }
  | { kind: 'order'; packageName: string; orderId: string }
  | null {
  const path = rawUrl.split('?')[0]!;
  const at = path.indexOf(`${API_ROOT}/`);
  if (at < 0 || path.length > 4096) return null;
  const segments = path.slice(at + API_ROOT.length + 1).split('/');
  let packageName: string;
  try {
    packageName = decodeURIComponent(segments[0]!);
  } catch {
    return null;
  }
  if (!packageName) return null;
  if (segments.length === 3 && segments[1] === 'purchases' && segments[2] === 'voidedpurchases') return { kind: 'voided', packageName };
  if (segments.length === 3 && segments[1] === 'orders' && segments[2]) {
    try {
      const orderId = decodeURIComponent(segments[2]);
      return orderId ? { kind: 'order', packageName, orderId } : null;
    } catch {
      return null;
    }
  }
  if (segments.length !== 5 || segments[1] !== 'purchases' || segments[2] !== 'productsv2' || segments[3] !== 'tokens') return null;
  try {
    const token = decodeURIComponent(segments[4]!);
    return token ? { kind: 'product_v2', packageName, token } : null;
  } catch {
    return null;
  }
}

function queryOf(rawUrl: string): Record<string, string> {
  const q = rawUrl.includes('?') ? rawUrl.slice(rawUrl.indexOf('?') + 1) : '';
  const out: Record<string, string> = {};
  for (const [k, v] of new URLSearchParams(q)) out[k] = v;
  return out;
}

function notFound(): ApiAnswer {
  return { status: 404, body: { error: { code: 404, message: 'Requested entity was not found.', status: 'NOT_FOUND' } } };
}

function checkOptions(o: GooglePlaySandboxOptions) {
  if (!o.pool) throw new TypeError('googlePlaySandboxPlugin: pool is required');
  if (!PACKAGE_NAME.test(o.packageName ?? '')) throw new TypeError('googlePlaySandboxPlugin: packageName is not a package name');
  if (!Number.isFinite(o.timeScale) || o.timeScale < 0) throw new TypeError('googlePlaySandboxPlugin: timeScale must be >= 0');
  for (const k of ['endpoint', 'audience', 'serviceAccountEmail', 'serviceAccountId', 'subscription'] as const) {
    if (!o.push?.[k]) throw new TypeError(`googlePlaySandboxPlugin: push.${k} is required`);
  }
  new URL(o.push.endpoint);
  if (o.reportsBucket !== undefined && !developerIdOfBucket(o.reportsBucket)) throw new TypeError('googlePlaySandboxPlugin: reportsBucket must be pubsite_prod_rev_<developer id>');
  const baseUrl = new URL(o.publicBaseUrl).toString().replace(/\/+$/, '');
  return {
    baseUrl,
    serviceAccountKey: loadPublicKey(o.serviceAccount.publicKey),
    googleKey: loadPrivateKey(o.googleSigningKey.privateKey),
  };
}

function send(reply: FastifyReply, a: ApiAnswer): FastifyReply {
  for (const [k, v] of Object.entries(a.headers ?? {})) reply.header(k, v);
  if (a.status === 204) return reply.code(204).send();
  return reply.code(a.status).type('application/json; charset=UTF-8').send(JSON.stringify(a.body));
}

export const googlePlaySandboxPlugin: FastifyPluginAsync<GooglePlaySandboxOptions> = async (app: FastifyInstance, opts) => {
  const { baseUrl, serviceAccountKey, googleKey } = checkOptions(opts);
  const { pool, packageName, push } = opts;
  const tokenUrl = `${baseUrl}${app.prefix}/token`;
  const googlePublicKey = loadPublicKey(googleKey);
  const dispatcher = createNotificationDispatcher({
    pool,
    spec: googlePlayPushSpec({ privateKey: googleKey, kid: opts.googleSigningKey.kid, audience: push.audience, serviceAccountEmail: push.serviceAccountEmail, serviceAccountId: push.serviceAccountId }),
    timeScale: opts.timeScale,
    ...(opts.pollIntervalMs !== undefined ? { pollIntervalMs: opts.pollIntervalMs } : {}),
    ...(opts.notifyTimeoutMs !== undefined ? { requestTimeoutMs: opts.notifyTimeoutMs } : {}),
    onError: (err) => app.log.error({ err }, 'google_play sandbox notification delivery failed'),
  });
  const tokenContext = { db: pool, tokenUrl, serviceAccount: { clientEmail: opts.serviceAccount.clientEmail, publicKey: serviceAccountKey, privateKeyId: opts.serviceAccount.privateKeyId } };

  // The token endpoint takes a form; parse it here only, as text.
  if (app.hasContentTypeParser(FORM_TYPE)) app.removeContentTypeParser(FORM_TYPE);
  app.addContentTypeParser(FORM_TYPE, { parseAs: 'string', bodyLimit: MAX_BODY_BYTES }, (_req, body, done) => done(null, body));

  if (opts.deliverNotifications !== false) app.addHook('onReady', async () => dispatcher.start());
  app.addHook('onClose', async () => dispatcher.stop());

  app.post('/token', { bodyLimit: MAX_BODY_BYTES }, async (req, reply) => {
    if (typeof req.body !== 'string') return send(reply, { status: 400, body: { error: 'invalid_request', error_description: 'Send the grant as application/x-www-form-urlencoded' } });
    const form: Record<string, string> = {};
    for (const [k, v] of new URLSearchParams(req.body)) {
      if (k in form) return send(reply, { status: 400, body: { error: 'invalid_request', error_description: `Parameter ${k} repeated` } });
      form[k] = v;
    }
    return send(reply, await exchangeToken(tokenContext, form));
  });

  // Wildcard routes: purchase tokens (~150 characters) are longer than the router's default
  // maxParamLength (100), which would answer 414 for a `:token` parameter. The path is split here.
  app.get(`${API_ROOT}/*`, async (req, reply) => {
    const denied = await authenticate(pool, req.headers.authorization);
    if (denied) return send(reply, denied);
    const rawUrl = req.raw.url ?? '';
    const v2 = parseApiPathV2(rawUrl);
    if (v2) {
      if (v2.packageName !== packageName) return send(reply, permissionDenied());
      if (v2.kind === 'voided') return send(reply, await listVoidedPurchasesAnswer(pool, packageName, queryOf(rawUrl)));
      if (v2.kind === 'order') return send(reply, await getOrder(pool, packageName, v2.orderId));
      return send(reply, await getProductPurchaseV2(pool, packageName, v2.token));
    }
    const path = parseApiPath(rawUrl);
    if (!path || path.verb !== null) return send(reply, notFound());
    if (path.packageName !== packageName) return send(reply, permissionDenied());
    return send(reply, await getProductPurchase(pool, packageName, path.productId, path.token));
  });

  app.post(`${API_ROOT}/*`, { bodyLimit: MAX_BODY_BYTES }, async (req, reply) => {
    const denied = await authenticate(pool, req.headers.authorization);
    if (denied) return send(reply, denied);
    const path = parseApiPath(req.raw.url ?? '');
    if (!path || path.verb !== 'acknowledge') return send(reply, notFound());
    if (path.packageName !== packageName) return send(reply, permissionDenied());
    return send(reply, await acknowledgeProductPurchase(pool, packageName, path.productId, path.token, req.body));
  });

  // Cloud Storage JSON API over the reporting bucket (object names are one encoded path segment).
  const reportsBucket = opts.reportsBucket ?? sandboxReportsBucket(packageName);
  app.get('/storage/v1/b/*', async (req, reply) => {
    const denied = await authenticate(pool, req.headers.authorization, STORAGE_READ_SCOPES);
    if (denied) return send(reply, denied);
    const result = await storageObject({ db: pool, packageName, bucket: reportsBucket, now: new Date() }, req.raw.url ?? '');
    if (!result.ok) return send(reply, result.answer);
    if (!result.media) return send(reply, result.answer);
    return reply.code(200).header('content-type', 'application/zip').header('x-goog-stored-content-encoding', 'identity').send(earningsZipStream(result.rows, result.month));
  });

  app.get('/oauth2/v3/certs', async (_req, reply) => reply.header('cache-control', 'public, max-age=3600').send({ keys: [publicJwk(googlePublicKey, opts.googleSigningKey.kid)] }));

  app.post('/purchase', { bodyLimit: MAX_BODY_BYTES }, async (req, reply) => {
    const parsed = parseDeviceRequest(req.body, packageName);
    if (!parsed.ok) return sendSandboxError(reply, 400, 'parameter_invalid', parsed.message, parsed.param || undefined);
    const inserted = await insertPurchase(pool, {
      packageName, productId: parsed.productId, quantity: parsed.quantity, obfuscatedAccountId: parsed.accountId,
      obfuscatedProfileId: parsed.profileId, purchaseType: PURCHASE_TYPE.TEST,
    });
    if (inserted) return reply.code(200).send(purchaseJson(inserted));
    const existing = await getPurchaseByReference(pool, packageName, parsed.accountId);
    if (!existing) return sendSandboxError(reply, 409, 'purchase_conflict', 'the purchase changed meanwhile; try again');
    if (existing.purchaseState !== PURCHASE_STATE.PENDING) {
      return sendSandboxError(reply, 409, 'purchase_already_final', `purchase for ${parsed.accountId} is already ${purchaseStateName(existing.purchaseState)}`, 'obfuscated_account_id');
    }
    const same = existing.productId === parsed.productId && existing.quantity === parsed.quantity && existing.obfuscatedProfileId === parsed.profileId;
    if (!same) return sendSandboxError(reply, 409, 'purchase_in_progress', `another purchase for ${parsed.accountId} is in progress`, 'obfuscated_account_id');
    return reply.code(200).send(purchaseJson(existing));
  });

  app.post('/simulate', async (req, reply) => {
    const body = objectBody(req.body);
    if (!body) return sendSandboxError(reply, 400, 'parameter_invalid', 'body must be a JSON object');
    const ref = body['channel_reference'];
    const outcome = body['outcome'];
    if (typeof ref !== 'string' || ref === '') return sendSandboxError(reply, 400, 'parameter_missing', 'channel_reference is required', 'channel_reference');
    if (typeof outcome !== 'string' || !(OUTCOMES as readonly string[]).includes(outcome)) {
      return sendSandboxError(reply, 400, 'parameter_invalid', `outcome must be one of ${OUTCOMES.join(', ')}`, 'outcome');
    }
    const result = await simulateBuyer(pool, dispatcher, push, packageName, ref, outcome as SimulateOutcome);
    if (!result.ok) return sendSandboxError(reply, result.status, result.code, result.message, 'channel_reference');
    dispatcher.kick();
    return reply.code(200).send(purchaseJson(result.purchase, { notification: { message_id: result.messageId } }));
  });

  app.post('/refunds/simulate', { bodyLimit: MAX_BODY_BYTES }, async (req, reply) => {
    const body = objectBody(req.body);
    if (!body) return sendSandboxError(reply, 400, 'parameter_invalid', 'body must be a JSON object');
    const token = body['purchase_token'];
    const ref = body['channel_reference'];
    if ((token === undefined) === (ref === undefined)) {
      return sendSandboxError(reply, 400, 'parameter_missing', 'give exactly one of purchase_token and channel_reference', 'purchase_token');
    }
    const param = token !== undefined ? 'purchase_token' : 'channel_reference';
    if (token !== undefined && (typeof token !== 'string' || token === '')) return sendSandboxError(reply, 400, 'parameter_invalid', 'purchase_token must be a string', param);
    if (ref !== undefined && (typeof ref !== 'string' || ref === '')) return sendSandboxError(reply, 400, 'parameter_invalid', 'channel_reference must be a string', param);
    if (body['outcome'] !== 'succeeded') return sendSandboxError(reply, 400, 'parameter_invalid', 'outcome must be succeeded (Google reports granted refunds only)', 'outcome');
    const reason = body['voided_reason'] ?? DEFAULT_VOIDED.reason;
    const source = body['voided_source'] ?? DEFAULT_VOIDED.source;
    if (typeof reason !== 'number' || !Number.isInteger(reason) || reason < 0 || reason > 8) return sendSandboxError(reply, 400, 'parameter_invalid', 'voided_reason must be 0..8 (Voided Purchases API)', 'voided_reason');
    if (typeof source !== 'number' || !Number.isInteger(source) || source < 0 || source > 2) return sendSandboxError(reply, 400, 'parameter_invalid', 'voided_source must be 0 (user), 1 (developer) or 2 (Google)', 'voided_source');
    // A string no purchase token can be: unknown, like any other.
    if (typeof token === 'string' && !isPurchaseToken(token)) return sendSandboxError(reply, 404, 'purchase_not_found', 'no Google Play sandbox purchase for this purchase token', param);
    const lookup = typeof token === 'string' ? { purchaseToken: token } : { reference: ref as string };
    const result = await simulateRefund(pool, dispatcher, push, packageName, lookup, { reason, source });
    if (!result.ok) return sendSandboxError(reply, result.status, result.code, result.message, param);
    dispatcher.kick();
    return reply.code(200).send(purchaseJson(result.purchase, { notification: { message_id: result.messageId } }));
  });

  app.post('/test_notification', async (_req, reply) => {
    const payload = pushPayload(testNotificationJson(packageName, Date.now()), push.subscription);
    await dispatcher.enqueue(pool, { channelReference: 'test_notification', eventId: payload.message_id, url: push.endpoint, payload });
    dispatcher.kick();
    return reply.code(200).send({ object: 'sandbox_notification', channel: GOOGLE_PLAY_CHANNEL, message_id: payload.message_id });
  });

  app.get<{ Params: { channelReference: string } }>('/purchases/:channelReference', async (req, reply) => {
    const p = await getPurchaseByReference(pool, packageName, req.params.channelReference);
    if (!p) return sendSandboxError(reply, 404, 'purchase_not_found', `no Google Play sandbox purchase for ${req.params.channelReference}`);
    return reply.send(purchaseJson(p));
  });
};

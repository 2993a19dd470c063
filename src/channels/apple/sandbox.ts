/**
 * App Store sandbox: Apple's side of an in-app purchase, as a Fastify plugin.
 * Register with `app.register(appleSandboxPlugin, { prefix: '/sandbox/apple_iap', ...options })`.
 *
 * It signs with its own certificate chain (root → intermediate → leaf with Apple's marker OIDs,
 * generated once); the connector in sandbox mode trusts that root and nothing else, and the
 * real-mode connector (Apple's roots) rejects everything signed here.
 *
 * Routes (under the prefix):
 * - `POST /purchase`   the device starting a StoreKit purchase: `{ product_id, app_account_token,
 *                      quantity?, amount, currency, product_type? }`. In reality the App Store
 *                      knows the storefront price from App Store Connect; this sandbox has no
 *                      catalogue, so the "device" states the price it was shown (minor units of
 *                      `currency`, total for the quantity). Idempotent for the same purchase.
 * - `POST /simulate`   `{ channel_reference, outcome, product_id?, amount?, currency?, quantity? }`
 *                      plays the buyer at the payment sheet. `channel_reference` is our reference =
 *                      the app account token. Without a prior /purchase, product_id + amount +
 *                      currency start it in the same call. `succeeded` makes a transaction, answers
 *                      its signed JWS (what StoreKit hands the app) and sends a signed ONE_TIME_CHARGE
 *                      notification (Apple's retries: 1, 12, 24, 48, 72 h × timeScale). `failed` and
 *                      `canceled` answer 200 with no transaction and no notification: StoreKit reports
 *                      a cancelled or failed purchase to the app only, and Apple tells the server
 *                      nothing (there is no transaction). The purchase is then final here (409).
 * - `POST /refunds/simulate` `{ channel_reference | transaction_id, outcome, reason? }` plays Apple
 *                      deciding a buyer's refund request (merchants cannot refund IAPs; the buyer
 *                      asks Apple). `succeeded` revokes the paid transaction (revocationDate now,
 *                      revocationReason `reason`: 0 other (default), 1 an issue in the app) and
 *                      sends a signed REFUND carrying it; a second call answers 409
 *                      `already_refunded`. `declined` sends REFUND_DECLINED and changes nothing.
 *                      `reversed` undoes a refund (revocation cleared) and sends REFUND_REVERSED;
 *                      the transaction is then not refunded again (409 `refund_reversed`). Unknown
 *                      purchase 404 `trade_not_found`; not paid 409 `trade_not_paid`. Refunds are
 *                      final at once: Apple's notification reports a decision already made.
 * - `GET /purchases/:app_account_token`  the sandbox's view (debugging).
 * - `GET /inApps/v1/transactions/:transactionId`  App Store Server API "Get Transaction Info",
 *   bearer-token checked like Apple (401 `Unauthenticated`), 400/404 with Apple's error codes; a
 *   refunded transaction carries revocationDate, revocationReason and revocationType REFUND_FULL.
 * - `POST /inApps/v1/notifications/test`  "Request a Test Notification": sends a signed TEST.
 * - `POST /inApps/v1/notifications/history`  "Get Notification History" (sandbox-history.ts): every
 *   notification the sandbox sent, delivered or not, with its signed payload and send attempts;
 *   Apple's pagination and validation errors. Malformed Server API requests answer Apple's
 *   `{errorCode, errorMessage}`.
 * State is in PostgreSQL (0013_apple_sandbox.sql); notifications go through the shared dispatcher.
 */
import { randomUUID } from 'node:crypto';
import type { FastifyInstance, FastifyPluginAsync, FastifyReply } from 'fastify';
import type { Pool } from '../../store/db.ts';
import { inTransaction } from '../../store/db.ts';
import { assert } from '../../domain/assert.ts';
import { MAX_AMOUNT_MINOR, normalizeCurrency, toJsonAmount } from '../../domain/money.ts';
import { createNotificationDispatcher, type NotificationChannelSpec, type NotificationDispatcher } from '../sandbox/dispatcher.ts';
import { objectBody, sendSandboxError } from '../sandbox/errors.ts';
import { generateApiKey, generateSandboxChain, signAppStoreJws, verifyApiToken } from './jws.ts';
import { canonicalUuid, isAppStoreProductId, isTransactionId, MAX_PURCHASE_QUANTITY, minorToPriceMilli } from './transformers.ts';
import { notificationHistory, paginationTokenKey } from './sandbox-history.ts';
import {
  getPurchase, getPurchaseByTransactionId, insertPurchase, mutatePurchase, PRODUCT_TYPES, sameSpec, updateRevocation,
  type ProductType, type PurchaseKey, type PurchaseSpec, type SandboxPurchase,
} from './sandbox-purchases.ts';

export const APPLE_SANDBOX_CHANNEL = 'apple_iap';
const HOUR_MS = 3600_000;
/** The first attempt, then retries 1, 12, 24, 48 and 72 hours after the previous one. */
export const APPLE_NOTIFY_SCHEDULE_MS: readonly number[] = [0, 1 * HOUR_MS, 12 * HOUR_MS, 24 * HOUR_MS, 48 * HOUR_MS, 72 * HOUR_MS];
/** The bundle version the sandbox "app" reports in notifications. */
const BUNDLE_VERSION = '1';

/** Everything the sandbox generates once (stored with getOrCreateSetting; JSON-safe). */
export interface AppleSandboxKeys {
  /** base64 DER: the only root the sandbox-mode connector trusts. */
  rootCertificate: string;
  intermediateCertificate: string;
  leafCertificate: string;
  /** PKCS#8 PEM of the leaf key that signs every JWS. */
  leafPrivateKey: string;
  /** App Store Server API key (the .p8 the connector signs bearer tokens with) and its ids. */
  apiPrivateKey: string;
  apiPublicKey: string;
  apiKeyId: string;
  apiIssuerId: string;
}

export function generateAppleSandboxKeys(now = new Date()): AppleSandboxKeys {
  const chain = generateSandboxChain(now);
  const api = generateApiKey();
  return {
    rootCertificate: chain.rootDer.toString('base64'),
    intermediateCertificate: chain.intermediateDer.toString('base64'),
    leafCertificate: chain.leafDer.toString('base64'),
    leafPrivateKey: chain.leafPrivateKeyPem,
    apiPrivateKey: api.privateKeyPem,
    apiPublicKey: api.publicKeyPem,
    apiKeyId: api.keyId,
    apiIssuerId: api.issuerId,
  };
}

/** x5c order: leaf, intermediate, root. */
export function sandboxChainDer(keys: AppleSandboxKeys): Buffer[] {
  return [keys.leafCertificate, keys.intermediateCertificate, keys.rootCertificate].map((b) => Buffer.from(b, 'base64'));
}

/** The signed payload is made once at enqueue time; every retry posts the same bytes, as Apple does. */
export interface AppleNotificationPayload extends Record<string, unknown> {
  signedPayload: string;
}

export function appleNotificationSpec(): NotificationChannelSpec<AppleNotificationPayload> {
  return {
    channel: APPLE_SANDBOX_CHANNEL,
    scheduleMs: APPLE_NOTIFY_SCHEDULE_MS,
    buildRequest(payload, ctx) {
      return {
        url: ctx.url,
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ signedPayload: payload.signedPayload }),
      };
    },
    // Apple: "HTTP 200–206 indicates success"; anything else is retried.
    isAcknowledged: ({ status }) => status >= 200 && status <= 206,
  };
}

/** JWSTransactionDecodedPayload as Apple signs it for a one-time purchase. */
export function transactionPayload(p: SandboxPurchase, signedDateMs: number): Record<string, unknown> {
  assert(p.status === 'purchased' && p.transactionId && p.purchaseDate, 'only a purchased purchase has a transaction');
  const price = minorToPriceMilli(p.amountMinor, p.currency);
  assert(price <= BigInt(Number.MAX_SAFE_INTEGER), 'price fits a JSON number');
  const purchaseDate = p.purchaseDate.getTime();
  return {
    transactionId: p.transactionId,
    originalTransactionId: p.transactionId,
    bundleId: p.bundleId,
    productId: p.productId,
    purchaseDate,
    originalPurchaseDate: purchaseDate,
    quantity: p.quantity,
    type: p.productType,
    appAccountToken: p.appAccountToken,
    inAppOwnershipType: 'PURCHASED',
    signedDate: signedDateMs,
    environment: 'Sandbox',
    transactionReason: 'PURCHASE',
    storefront: p.storefront,
    storefrontId: p.storefrontId,
    price: Number(price),
    currency: p.currency,
    ...(p.revocationDate
      ? { revocationDate: p.revocationDate.getTime(), revocationReason: p.revocationReason ?? 0, revocationType: 'REFUND_FULL' }
      : {}),
  };
}

/** ResponseBodyV2DecodedPayload. appAppleId is absent in the sandbox environment, as at Apple. */
export type SandboxNotificationType = 'ONE_TIME_CHARGE' | 'TEST' | 'REFUND' | 'REFUND_DECLINED' | 'REFUND_REVERSED';

export function notificationPayload(
  type: SandboxNotificationType,
  notificationUUID: string,
  bundleId: string,
  signedDateMs: number,
  signedTransactionInfo?: string,
): Record<string, unknown> {
  return {
    notificationType: type,
    notificationUUID,
    data: {
      bundleId,
      bundleVersion: BUNDLE_VERSION,
      environment: 'Sandbox',
      ...(signedTransactionInfo ? { signedTransactionInfo } : {}),
    },
    version: '2.0',
    signedDate: signedDateMs,
  };
}

export function purchaseJson(p: SandboxPurchase, extra: Record<string, unknown> = {}) {
  return {
    object: 'sandbox_purchase',
    channel: APPLE_SANDBOX_CHANNEL,
    bundle_id: p.bundleId,
    channel_reference: p.appAccountToken,
    app_account_token: p.appAccountToken,
    product_id: p.productId,
    product_type: p.productType,
    quantity: p.quantity,
    amount: toJsonAmount(p.amountMinor),
    currency: p.currency,
    price: Number(minorToPriceMilli(p.amountMinor, p.currency)),
    storefront: p.storefront,
    status: p.status,
    transaction_id: p.transactionId,
    purchase_date: p.purchaseDate ? p.purchaseDate.toISOString() : null,
    revocation_date: p.revocationDate ? p.revocationDate.toISOString() : null,
    revocation_reason: p.revocationReason,
    refund_reversed_at: p.refundReversedAt ? p.refundReversedAt.toISOString() : null,
    ...extra,
  };
}

// ---- Request parsing ----------------------------------------------------------------------------------

type SpecParse = { ok: true; spec: PurchaseSpec | null } | { ok: false; param: string; message: string };

/** product_id, amount, currency (all or none when optional), quantity, product_type. */
export function parsePurchaseSpec(body: Record<string, unknown>, required: boolean): SpecParse {
  const given = ['product_id', 'amount', 'currency'].filter((k) => body[k] !== undefined);
  if (!required && given.length === 0) return { ok: true, spec: null };
  for (const k of ['product_id', 'amount', 'currency']) if (body[k] === undefined) return { ok: false, param: k, message: `${k} is required${required ? '' : ' when starting the purchase here'}` };
  const productId = body['product_id'];
  if (!isAppStoreProductId(productId)) return { ok: false, param: 'product_id', message: 'product_id must be an App Store product id (letters, digits, _ and .)' };
  const amount = body['amount'];
  if (typeof amount !== 'number' || !Number.isSafeInteger(amount) || amount <= 0 || BigInt(amount) > MAX_AMOUNT_MINOR) {
    return { ok: false, param: 'amount', message: 'amount must be a positive integer in minor units' };
  }
  const currency = typeof body['currency'] === 'string' ? normalizeCurrency(body['currency']) : null;
  if (!currency) return { ok: false, param: 'currency', message: 'currency must be a known ISO 4217 code' };
  const quantity = body['quantity'] ?? 1;
  if (typeof quantity !== 'number' || !Number.isInteger(quantity) || quantity < 1 || quantity > MAX_PURCHASE_QUANTITY) {
    return { ok: false, param: 'quantity', message: `quantity must be an integer from 1 to ${MAX_PURCHASE_QUANTITY}` };
  }
  const productType = body['product_type'] ?? 'Consumable';
  if (typeof productType !== 'string' || !(PRODUCT_TYPES as readonly string[]).includes(productType)) {
    return { ok: false, param: 'product_type', message: `product_type must be one of ${PRODUCT_TYPES.join(', ')}` };
  }
  return { ok: true, spec: { productId, amountMinor: BigInt(amount), currency, quantity, productType: productType as ProductType } };
}

// ---- Buyer actions -------------------------------------------------------------------------------------

type Failure = { ok: false; status: 404 | 409; code: string; message: string };

/** The device starts (or restarts after a cancel) a purchase. */
export async function startPurchase(pool: Pool, key: PurchaseKey, spec: PurchaseSpec): Promise<{ ok: true; purchase: SandboxPurchase; created: boolean } | Failure> {
  const inserted = await insertPurchase(pool, key, spec);
  if (inserted) return { ok: true, purchase: inserted, created: true };
  type R = { ok: true; purchase: SandboxPurchase; created: boolean } | Failure;
  return mutatePurchase<R>(pool, key, (p) => {
    if (!p) return { answer: { ok: false, status: 409, code: 'purchase_changed', message: 'the purchase vanished; try again' } };
    if (p.status === 'purchased') return { answer: { ok: false, status: 409, code: 'trade_already_final', message: `app account token ${p.appAccountToken} already paid (transaction ${p.transactionId})` } };
    if (!sameSpec(p, spec)) return { answer: { ok: false, status: 409, code: 'purchase_mismatch', message: `app account token ${p.appAccountToken} is already used for ${p.quantity} × ${p.productId} at ${p.amountMinor} ${p.currency}` } };
    if (p.status === 'pending') return { answer: { ok: true, purchase: p, created: false } };
    // After a cancel or a failure the app may offer the sheet again: StoreKit lets the buyer retry.
    return { patch: { status: 'pending' }, then: (u) => ({ ok: true, purchase: u, created: false }) };
  });
}

export type SimulateOutcome = 'succeeded' | 'failed' | 'canceled';
const OUTCOMES: readonly SimulateOutcome[] = ['succeeded', 'failed', 'canceled'];

interface Signer {
  bundleId: string;
  keys: AppleSandboxKeys;
  chain: Buffer[];
}

type SimulateResult = { ok: true; purchase: SandboxPurchase; signedTransaction: string | null; notificationUUID: string | null } | Failure;

/** The buyer at the payment sheet: confirm (a signed transaction, and its notification) or not. */
export async function simulateBuyer(
  pool: Pool,
  dispatcher: NotificationDispatcher<AppleNotificationPayload>,
  signer: Signer,
  notifyUrl: string,
  key: PurchaseKey,
  outcome: SimulateOutcome,
  spec: PurchaseSpec | null,
): Promise<SimulateResult> {
  return inTransaction(pool, async (db) => {
    let existing = await getPurchase(db, key);
    if (!existing && spec) existing = (await insertPurchase(db, key, spec)) ?? (await getPurchase(db, key));
    if (!existing) {
      return { ok: false, status: 404, code: 'trade_not_found', message: `no purchase started with app account token ${key.appAccountToken}: POST /purchase first, or pass product_id, amount and currency` };
    }
    if (spec && !sameSpec(existing, spec)) {
      return { ok: false, status: 409, code: 'purchase_mismatch', message: `app account token ${key.appAccountToken} is for ${existing.quantity} × ${existing.productId} at ${existing.amountMinor} ${existing.currency}` };
    }
    const result = await mutatePurchase<{ ok: true; purchase: SandboxPurchase } | Failure>(db, key, (p) => {
      if (!p) return { answer: { ok: false, status: 404, code: 'trade_not_found', message: `no purchase with app account token ${key.appAccountToken}` } };
      if (p.status !== 'pending') return { answer: { ok: false, status: 409, code: 'trade_already_final', message: `purchase ${p.appAccountToken} is already ${p.status}` } };
      const status = outcome === 'succeeded' ? 'purchased' : outcome;
      return { patch: { status, purchase: outcome === 'succeeded' }, then: (u) => ({ ok: true, purchase: u }) };
    });
    if (!result.ok || result.purchase.status !== 'purchased') return result.ok ? { ...result, signedTransaction: null, notificationUUID: null } : result;
    const signedDate = Date.now();
    const leafKey = signer.keys.leafPrivateKey;
    const signedTransaction = signAppStoreJws(transactionPayload(result.purchase, signedDate), leafKey, signer.chain);
    const notificationUUID = randomUUID();
    const signedPayload = signAppStoreJws(notificationPayload('ONE_TIME_CHARGE', notificationUUID, signer.bundleId, signedDate, signedTransaction), leafKey, signer.chain);
    await dispatcher.enqueue(db, { channelReference: key.appAccountToken, eventId: notificationUUID, url: notifyUrl, payload: { signedPayload } });
    return { ok: true, purchase: result.purchase, signedTransaction, notificationUUID };
  });
}

// ---- Apple's refund decisions ------------------------------------------------------------------------

export type RefundOutcome = 'succeeded' | 'declined' | 'reversed';
const REFUND_OUTCOMES: readonly RefundOutcome[] = ['succeeded', 'declined', 'reversed'];
const REFUND_NOTIFICATION: Record<RefundOutcome, SandboxNotificationType> = { succeeded: 'REFUND', declined: 'REFUND_DECLINED', reversed: 'REFUND_REVERSED' };

export type PurchaseLookup = { appAccountToken: string } | { transactionId: string };

type RefundResult = { ok: true; purchase: SandboxPurchase; notificationUUID: string; notificationType: SandboxNotificationType } | Failure;

/**
 * Apple decides a buyer's refund request: the transaction changes (compare-and-set) and the
 * signed notification carrying the transaction as it now is is queued, in one database transaction.
 */
export async function simulateRefund(
  pool: Pool,
  dispatcher: NotificationDispatcher<AppleNotificationPayload>,
  signer: Signer,
  notifyUrl: string,
  lookup: PurchaseLookup,
  outcome: RefundOutcome,
  reason: 0 | 1,
): Promise<RefundResult> {
  const label = 'appAccountToken' in lookup ? `app account token ${lookup.appAccountToken}` : `transaction ${lookup.transactionId}`;
  return inTransaction(pool, async (db) => {
    for (let round = 0; round < MAX_REFUND_ROUNDS; round++) {
      const p = 'appAccountToken' in lookup
        ? await getPurchase(db, { bundleId: signer.bundleId, appAccountToken: lookup.appAccountToken })
        : await getPurchaseByTransactionId(db, signer.bundleId, lookup.transactionId);
      if (!p) return { ok: false, status: 404, code: 'trade_not_found', message: `no purchase with ${label}` };
      if (p.status !== 'purchased') return { ok: false, status: 409, code: 'trade_not_paid', message: `purchase ${p.appAccountToken} is ${p.status}: there is no transaction to refund` };
      if (outcome !== 'reversed' && p.revocationDate) {
        return { ok: false, status: 409, code: 'already_refunded', message: `transaction ${p.transactionId} was refunded at ${p.revocationDate.toISOString()}` };
      }
      if (outcome === 'succeeded' && p.refundReversedAt) {
        return { ok: false, status: 409, code: 'refund_reversed', message: `the refund of transaction ${p.transactionId} was reversed; the sandbox refunds a transaction once` };
      }
      if (outcome === 'reversed' && !p.revocationDate) {
        return { ok: false, status: 409, code: 'not_refunded', message: `transaction ${p.transactionId} is not refunded: nothing to reverse` };
      }
      const updated = outcome === 'declined' ? p : await updateRevocation(db, p, outcome === 'succeeded' ? { revoke: reason } : { reverse: true });
      if (!updated) continue;
      const signedDate = Date.now();
      const type = REFUND_NOTIFICATION[outcome];
      const signedTransaction = signAppStoreJws(transactionPayload(updated, signedDate), signer.keys.leafPrivateKey, signer.chain);
      const notificationUUID = randomUUID();
      const signedPayload = signAppStoreJws(notificationPayload(type, notificationUUID, signer.bundleId, signedDate, signedTransaction), signer.keys.leafPrivateKey, signer.chain);
      await dispatcher.enqueue(db, { channelReference: updated.appAccountToken, eventId: notificationUUID, url: notifyUrl, payload: { signedPayload } });
      return { ok: true, purchase: updated, notificationUUID, notificationType: type };
    }
    throw new Error(`purchase with ${label} kept changing while being refunded`);
  });
}

const MAX_REFUND_ROUNDS = 5;

// ---- The plugin ----------------------------------------------------------------------------------------

export interface AppleSandboxOptions {
  pool: Pool;
  bundleId: string;
  keys: AppleSandboxKeys;
  /** Where the "App Store" posts Server Notifications V2 (App Store Connect's production server URL). */
  notifyUrl: string;
  /** Multiplies Apple's notification retry delays: 1 = real time, 0.001 in tests. */
  timeScale: number;
  /** Run the notification delivery loop in this process (default true). */
  deliverNotifications?: boolean;
  pollIntervalMs?: number;
  notifyTimeoutMs?: number;
}

const MAX_JSON_BYTES = 16 * 1024;

/** Apple's Server API error body. */
function apiError(reply: FastifyReply, status: number, errorCode: number, errorMessage: string): FastifyReply {
  return reply.code(status).type('application/json').send({ errorCode, errorMessage });
}

function checkOptions(o: AppleSandboxOptions): { chain: Buffer[]; notifyUrl: string } {
  if (!o.pool) throw new TypeError('appleSandboxPlugin: pool is required');
  if (!o.bundleId) throw new TypeError('appleSandboxPlugin: bundleId is required');
  if (!Number.isFinite(o.timeScale) || o.timeScale < 0) throw new TypeError('appleSandboxPlugin: timeScale must be >= 0');
  const notifyUrl = new URL(o.notifyUrl).toString();
  const chain = sandboxChainDer(o.keys);
  return { chain, notifyUrl };
}

export const appleSandboxPlugin: FastifyPluginAsync<AppleSandboxOptions> = async (app: FastifyInstance, opts) => {
  const { chain, notifyUrl } = checkOptions(opts);
  const { pool, bundleId, keys } = opts;
  const signer: Signer = { bundleId, keys, chain };
  const historyTokenKey = paginationTokenKey(keys.leafPrivateKey);
  const dispatcher = createNotificationDispatcher<AppleNotificationPayload>({
    pool,
    spec: appleNotificationSpec(),
    timeScale: opts.timeScale,
    ...(opts.pollIntervalMs !== undefined ? { pollIntervalMs: opts.pollIntervalMs } : {}),
    ...(opts.notifyTimeoutMs !== undefined ? { requestTimeoutMs: opts.notifyTimeoutMs } : {}),
    onError: (err) => app.log.error({ err }, 'apple sandbox notification delivery failed'),
  });
  if (opts.deliverNotifications !== false) app.addHook('onReady', async () => dispatcher.start());
  app.addHook('onClose', async () => dispatcher.stop());

  app.post('/purchase', { bodyLimit: MAX_JSON_BYTES }, async (req, reply) => {
    const body = objectBody(req.body);
    if (!body) return sendSandboxError(reply, 400, 'parameter_invalid', 'body must be a JSON object');
    const token = canonicalUuid(body['app_account_token']);
    if (!token) return sendSandboxError(reply, 400, 'parameter_invalid', 'app_account_token must be a UUID', 'app_account_token');
    const parsed = parsePurchaseSpec(body, true);
    if (!parsed.ok) return sendSandboxError(reply, 400, 'parameter_invalid', parsed.message, parsed.param);
    const result = await startPurchase(pool, { bundleId, appAccountToken: token }, parsed.spec!);
    if (!result.ok) return sendSandboxError(reply, result.status, result.code, result.message, 'app_account_token');
    return reply.code(result.created ? 201 : 200).send(purchaseJson(result.purchase));
  });

  app.post('/simulate', { bodyLimit: MAX_JSON_BYTES }, async (req, reply) => {
    const body = objectBody(req.body);
    if (!body) return sendSandboxError(reply, 400, 'parameter_invalid', 'body must be a JSON object');
    const ref = body['channel_reference'];
    if (typeof ref !== 'string' || ref === '') return sendSandboxError(reply, 400, 'parameter_missing', 'channel_reference is required', 'channel_reference');
    const token = canonicalUuid(ref);
    // Not a UUID: no app account token can match it, so it is an unknown trade like any other.
    if (!token) return sendSandboxError(reply, 404, 'trade_not_found', `no purchase with app account token ${ref.slice(0, 64)} (app account tokens are UUIDs)`, 'channel_reference');
    const outcome = body['outcome'];
    if (typeof outcome !== 'string' || !(OUTCOMES as readonly string[]).includes(outcome)) {
      return sendSandboxError(reply, 400, 'parameter_invalid', `outcome must be one of ${OUTCOMES.join(', ')}`, 'outcome');
    }
    const parsed = parsePurchaseSpec(body, false);
    if (!parsed.ok) return sendSandboxError(reply, 400, 'parameter_invalid', parsed.message, parsed.param);
    const result = await simulateBuyer(pool, dispatcher, signer, notifyUrl, { bundleId, appAccountToken: token }, outcome as SimulateOutcome, parsed.spec);
    if (!result.ok) return sendSandboxError(reply, result.status, result.code, result.message, 'channel_reference');
    dispatcher.kick();
    return reply.code(200).send(purchaseJson(result.purchase, {
      signed_transaction: result.signedTransaction,
      notification: result.notificationUUID ? { notification_uuid: result.notificationUUID, notification_type: 'ONE_TIME_CHARGE' } : null,
    }));
  });

  app.post('/refunds/simulate', { bodyLimit: MAX_JSON_BYTES }, async (req, reply) => {
    const body = objectBody(req.body);
    if (!body) return sendSandboxError(reply, 400, 'parameter_invalid', 'body must be a JSON object');
    const ref = body['channel_reference'];
    const txId = body['transaction_id'];
    if ((ref === undefined) === (txId === undefined)) {
      return sendSandboxError(reply, 400, 'parameter_missing', 'give exactly one of channel_reference (the app account token) and transaction_id', 'channel_reference');
    }
    if (ref !== undefined && (typeof ref !== 'string' || ref === '')) return sendSandboxError(reply, 400, 'parameter_invalid', 'channel_reference must be a string', 'channel_reference');
    if (txId !== undefined && (typeof txId !== 'string' || txId === '')) return sendSandboxError(reply, 400, 'parameter_invalid', 'transaction_id must be a string', 'transaction_id');
    const outcome = body['outcome'];
    if (typeof outcome !== 'string' || !(REFUND_OUTCOMES as readonly string[]).includes(outcome)) {
      return sendSandboxError(reply, 400, 'parameter_invalid', `outcome must be one of ${REFUND_OUTCOMES.join(', ')}`, 'outcome');
    }
    const reason = body['reason'] ?? 0;
    if (reason !== 0 && reason !== 1) return sendSandboxError(reply, 400, 'parameter_invalid', 'reason must be 0 (other) or 1 (an issue in the app)', 'reason');
    const param = ref !== undefined ? 'channel_reference' : 'transaction_id';
    // Not a UUID / not digits: nothing can match it, so it is an unknown purchase like any other.
    const token = typeof ref === 'string' ? canonicalUuid(ref) : null;
    if (typeof ref === 'string' && !token) return sendSandboxError(reply, 404, 'trade_not_found', `no purchase with app account token ${ref.slice(0, 64)} (app account tokens are UUIDs)`, param);
    if (typeof txId === 'string' && !isTransactionId(txId)) return sendSandboxError(reply, 404, 'trade_not_found', `no transaction ${String(txId).slice(0, 64)} (transaction ids are digits)`, param);
    const lookup: PurchaseLookup = token ? { appAccountToken: token } : { transactionId: txId as string };
    const result = await simulateRefund(pool, dispatcher, signer, notifyUrl, lookup, outcome as RefundOutcome, reason);
    if (!result.ok) return sendSandboxError(reply, result.status, result.code, result.message, param);
    dispatcher.kick();
    return reply.code(200).send(purchaseJson(result.purchase, {
      notification: { notification_uuid: result.notificationUUID, notification_type: result.notificationType },
    }));
  });

  app.get<{ Params: { token: string } }>('/purchases/:token', async (req, reply) => {
    const token = canonicalUuid(req.params.token);
    const purchase = token ? await getPurchase(pool, { bundleId, appAccountToken: token }) : null;
    if (!purchase) return sendSandboxError(reply, 404, 'trade_not_found', `no purchase with app account token ${req.params.token}`);
    return reply.send(purchaseJson(purchase));
  });

  // The App Store Server API: every request carries the bearer JWT the library signs.
  await app.register(async (api) => {
    api.addHook('onRequest', async (req, reply) => {
      const check = verifyApiToken(req.headers.authorization, { keyId: keys.apiKeyId, issuerId: keys.apiIssuerId, bundleId, publicKeyPem: keys.apiPublicKey });
      if (!check.ok) {
        req.log.info({ reason: check.reason }, 'apple sandbox: unauthenticated Server API request');
        return reply.code(401).type('text/plain').send('Unauthenticated');
      }
    });
    // A body Apple cannot read (not JSON, too large, wrong type) is answered in Apple's error shape.
    api.setErrorHandler(async (err: { statusCode?: number }, req, reply) => {
      const status = err.statusCode ?? 500;
      if (status >= 500) {
        req.log.error({ err }, 'apple sandbox: Server API request failed');
        return apiError(reply, 500, 5000000, 'An unknown error occurred.');
      }
      return apiError(reply, 400, 4000000, 'Invalid request.');
    });

    api.get<{ Params: { transactionId: string } }>('/inApps/v1/transactions/:transactionId', async (req, reply) => {
      const id = req.params.transactionId;
      if (!isTransactionId(id)) return apiError(reply, 400, 4000006, 'Invalid transaction id.');
      const purchase = await getPurchaseByTransactionId(pool, bundleId, id);
      if (!purchase || purchase.status !== 'purchased') return apiError(reply, 404, 4040010, 'Transaction id not found.');
      const signedTransactionInfo = signAppStoreJws(transactionPayload(purchase, Date.now()), keys.leafPrivateKey, chain);
      return reply.type('application/json').send({ signedTransactionInfo });
    });

    api.post('/inApps/v1/notifications/test', { bodyLimit: MAX_JSON_BYTES }, async (_req, reply) => {
      const notificationUUID = randomUUID();
      const signedDate = Date.now();
      const signedPayload = signAppStoreJws(notificationPayload('TEST', notificationUUID, bundleId, signedDate), keys.leafPrivateKey, chain);
      await dispatcher.enqueue(pool, { channelReference: `test:${notificationUUID}`, eventId: notificationUUID, url: notifyUrl, payload: { signedPayload } });
      dispatcher.kick();
      return reply.type('application/json').send({ testNotificationToken: `${notificationUUID}_${signedDate}` });
    });

    api.post<{ Querystring: { paginationToken?: string | string[] } }>('/inApps/v1/notifications/history', { bodyLimit: MAX_JSON_BYTES }, async (req, reply) => {
      const answer = await notificationHistory(pool, { bundleId, channel: APPLE_SANDBOX_CHANNEL, tokenKey: historyTokenKey }, req.body, req.query.paginationToken);
      return reply.code(answer.status).type('application/json').send(answer.body);
    });
  });
};

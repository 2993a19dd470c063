/**
 * Stripe sandbox: Stripe's side of the API the connector speaks, as a Fastify plugin.
 * Register with `app.register(stripeSandboxPlugin, { prefix: '/sandbox/stripe', ...options })`.
 *
 * Routes (under the prefix), answered like api.stripe.com (form-encoded requests, Bearer or Basic
 * secret key, Stripe's error JSON, `Request-Id`, Idempotency-Key with Stripe's rules):
 * - `POST /v1/payment_intents`                create (optionally `confirm=true` with a test card)
 * - `GET  /v1/payment_intents/search`         Search Query Language subset (sandbox-search.ts)
 * - `GET  /v1/payment_intents/:id`            retrieve
 * - `POST /v1/payment_intents/:id/confirm`    confirm with a test PaymentMethod (pm_card_visa, …)
 * - `POST /v1/payment_intents/:id/cancel`     cancel
 * - `POST /v1/refunds`                        refund a paid PaymentIntent (or its charge), partially or not
 * - `GET  /v1/refunds`                        list (`payment_intent`, `charge`, `limit`, `starting_after`)
 * - `GET  /v1/refunds/:id`                    retrieve
 * - `GET  /v1/events/:id`                     an emitted event
 * - `GET  /v1/balance_transactions`          the balance: a transaction per paid charge (Stripe's fee),
 *   refund and failed refund (sandbox-balance.ts); `created[gte|gt|lte|lt]`, `type`, `limit`,
 *   `starting_after`, `expand[]=data.source` (and `data.source.payment_intent`)
 * The Knowpay sandbox endpoints (JSON, Knowpay error shape):
 * - `POST /simulate`  `{ channel_reference, outcome, payment_method? }` plays the buyer; the
 *   optional test PaymentMethod picks what later refunds do (`pm_card_pendingRefund`: pending,
 *   then succeeded; `pm_card_refundFail`: succeeded, then failed; see sandbox-refunds.ts)
 * - `POST /refunds/simulate`  `{ refund_reference? | channel_refund_id?, outcome: succeeded|failed }`
 *   finishes a pending refund now, or fails a `pm_card_refundFail` one that is still succeeded
 *   (404 unknown, 409 already finished)
 * - `GET  /refunds/:key`  a refund by `re_` id or by our refund number
 * - `GET  /trades/:channel_reference`  the sandbox's view of the newest PaymentIntent for a reference
 * Refunds are synchronous by default (succeeded in the create answer). A pending one is finished
 * by the sandbox itself `refundSettleMs` × timeScale after its creation (default 30 s × timeScale)
 * unless `/refunds/simulate` finishes it first; `refundSettleMs: null` leaves that to simulate.
 * Events go to the configured webhook endpoints through the shared dispatcher, signed like Stripe.
 */
import { timingSafeEqual } from 'node:crypto';
import Stripe from 'stripe';
import type { FastifyInstance, FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import type { Pool, Queryable } from '../../store/db.ts';
import { inTransaction } from '../../store/db.ts';
import { toJsonAmount } from '../../domain/money.ts';
import { createNotificationDispatcher, type NotificationChannelSpec, type NotificationDispatcher } from '../sandbox/dispatcher.ts';
import { objectBody, sendSandboxError } from '../sandbox/errors.ts';
import { canonicalJson, parseStripeForm, paramsSha256, type FormObject } from './sandbox-form.ts';
import { parseSearchQuery } from './sandbox-search.ts';
import {
  FINAL_STATUSES, TEST_PAYMENT_METHODS, apiError, buildEvent, canCancel, canConfirm, cancelWith, confirmWith, newIntent, newRequestId,
  ok, parseCancel, parseConfirm, parseCreate, randomAlnum, unexpectedState, unknownParam, type ApiResult, type Transition,
} from './sandbox-intents.ts';
import {
  findIntentByCharge, findIntentByMetadata, findRefundByMetadata, getDueRefund, getEvent, getIntent, getRefund, getSavedResponse, insertEvent,
  insertIntent, insertRefund, listDueRefunds, listEventsFor, listRefunds, lockIdempotencyKey, saveResponse, searchIntents, updateIntent,
  updateRefund, type IntentJson, type RefundJson, type StoredIntent, type StoredRefund,
} from './sandbox-store.ts';
import { HOLDING_REFUND_STATUSES, OPEN_REFUND_STATUSES, chargeWithRefunded, decideRefund, finishRefund, parseRefundCreate, refundBehaviourOf, remainderOf } from './sandbox-refunds.ts';
import { REFERENCE_METADATA_KEY, REFUND_REFERENCE_METADATA_KEY, fromStripeAmount } from './transformers.ts';
import { signStripeWebhook } from './webhook.ts';
import { listBalanceTransactions, parseBalanceList, recordBalanceTransactions } from './sandbox-balance.ts';

export const STRIPE_CHANNEL = 'stripe';

/**
 * Stripe retries a webhook "for up to three days with an exponential back off": at once, then
 * 1 m, 5 m, 30 m, 2 h, 5 h and every 10 h — 12 attempts over 67.6 h.
 */
export const STRIPE_NOTIFY_SCHEDULE_MS: readonly number[] = Object.freeze([0, 1, 5, 30, 120, 300, 600, 600, 600, 600, 600, 600].map((m) => m * 60_000));

/**
 * The webhook events an integration like ours subscribes to: the PaymentIntent outcomes, and the
 * Refund's own events (the current names; `charge.refund.updated` is the older one for a subset of
 * payment methods and would only duplicate `refund.updated`).
 */
export const KNOWPAY_ENABLED_EVENTS: readonly string[] = Object.freeze([
  'payment_intent.succeeded', 'payment_intent.payment_failed', 'payment_intent.canceled',
  'refund.created', 'refund.updated', 'refund.failed',
]);

/** How long, in real Stripe time, a test-mode pending refund stays pending before it finishes (× timeScale). */
export const STRIPE_REFUND_SETTLE_MS = 30_000;

export interface StripeWebhookEndpoint {
  id: string;
  url: string;
  /** Its signing secret (whsec_…). */
  secret: string;
  /** Event types delivered to it; '*' for all. */
  enabledEvents: readonly string[];
}

export interface StripeSandboxOptions {
  pool: Pool;
  accountId: string;
  /** The secret key requests must carry. */
  secretKey: string;
  webhookEndpoints: readonly StripeWebhookEndpoint[];
  /** Multiplies Stripe's webhook retry delays: 1 = real time, 0.001 in tests. */
  timeScale: number;
  /** `api_version` of the events (default: the SDK's). */
  apiVersion?: string;
  /** Run the webhook delivery loop in this process (default true). */
  deliverNotifications?: boolean;
  pollIntervalMs?: number;
  notifyTimeoutMs?: number;
  /**
   * Real-time delay (× timeScale) before the sandbox finishes a pending refund by itself (and
   * fails a `pm_card_refundFail` one). Default STRIPE_REFUND_SETTLE_MS; null = never by itself,
   * only through `POST /refunds/simulate`.
   */
  refundSettleMs?: number | null;
}

export interface StripeSandboxKeys {
  /** Give to the connector and the sandbox. */
  secretKey: string;
  publishableKey: string;
  /** The sandbox's webhook endpoint secret: give to the connector and the sandbox. */
  webhookSecret: string;
  webhookEndpointId: string;
  accountId: string;
}

export function generateStripeSandboxKeys(): StripeSandboxKeys {
  const tail = randomAlnum(14);
  return {
    secretKey: `sk_test_51${tail}${randomAlnum(85)}`,
    publishableKey: `pk_test_51${tail}${randomAlnum(85)}`,
    webhookSecret: `whsec_${randomAlnum(32)}`,
    webhookEndpointId: `we_1${randomAlnum(23)}`,
    accountId: `acct_1${tail.slice(0, 15)}`,
  };
}

// ---- Webhook delivery ----------------------------------------------------------------------------

export interface WebhookPayload extends Record<string, unknown> {
  endpoint_id: string;
  /** The event exactly as sent: the same bytes on every attempt, signed afresh each time. */
  body: string;
}

export function stripeNotificationSpec(endpoints: ReadonlyMap<string, StripeWebhookEndpoint>): NotificationChannelSpec<WebhookPayload> {
  return {
    channel: STRIPE_CHANNEL,
    scheduleMs: STRIPE_NOTIFY_SCHEDULE_MS,
    buildRequest(payload, ctx) {
      const endpoint = endpoints.get(payload.endpoint_id);
      const timestamp = Math.floor(ctx.now.getTime() / 1000);
      // An endpoint removed from the configuration: deliver unsigned, so the receiver refuses it
      // (building a request must not throw: the queue would retry the row forever).
      const signature = endpoint ? signStripeWebhook(payload.body, endpoint.secret, timestamp) : `t=${timestamp}`;
      return {
        url: ctx.url,
        method: 'POST',
        headers: {
          'content-type': 'application/json; charset=utf-8',
          'user-agent': 'Stripe/1.0 (+https://stripe.com/docs/webhooks)',
          accept: '*/*; q=0.5, application/xml',
          'cache-control': 'no-cache',
          'stripe-signature': signature,
        },
        body: payload.body,
      };
    },
    isAcknowledged: ({ status }) => status >= 200 && status < 300,
  };
}

// ---- Authentication ------------------------------------------------------------------------------

const NO_KEY_MESSAGE =
  "You did not provide an API key. You need to provide your API key in the Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details, or we can help at https://support.stripe.com/.";

/** How Stripe shows a wrong key: its prefix, stars, its last four characters. */
export function redactKey(key: string): string {
  const prefix = /^(sk|pk|rk)_(test|live)_/.exec(key)?.[0] ?? '';
  if (key.length <= prefix.length + 4) return '*'.repeat(key.length);
  return `${prefix}${'*'.repeat(key.length - prefix.length - 4)}${key.slice(-4)}`;
}

/** The key of `Authorization: Bearer <key>` or `Basic base64(<key>:)`; null when absent. */
export function presentedKey(header: string | undefined): string | null {
  if (!header) return null;
  const bearer = /^Bearer\s+(\S+)\s*$/i.exec(header);
  if (bearer) return bearer[1]!;
  const basic = /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(header);
  if (basic) {
    const decoded = Buffer.from(basic[1]!, 'base64').toString('utf8');
    const user = decoded.split(':')[0] ?? '';
    return user === '' ? null : user;
  }
  return null;
}

function sameKey(a: string, b: string): boolean {
  const x = Buffer.from(a, 'utf8');
  const y = Buffer.from(b, 'utf8');
  return x.length === y.length && timingSafeEqual(x, y);
}

// ---- The plugin ----------------------------------------------------------------------------------

const FORM_TYPE = 'application/x-www-form-urlencoded';
const MAX_FORM_BYTES = 256 * 1024;
const MAX_IDEMPOTENCY_KEY_CHARS = 255;
const MAX_CAS_ROUNDS = 5;
const SEARCH_DEFAULT_LIMIT = 10;
const OUTCOMES = ['succeeded', 'failed', 'canceled'] as const;
type Outcome = (typeof OUTCOMES)[number];
const REFUND_OUTCOMES = ['succeeded', 'failed'] as const;
const REFUND_LIST_DEFAULT_LIMIT = 10;
/** Pending-refund timers one process keeps; beyond it the sweep finishes them. */
const MAX_SETTLE_TIMERS = 1000;
const SETTLE_SWEEP_BATCH = 20;

interface ApiContext {
  db: Queryable;
  params: FormObject;
  requestId: string;
  idempotencyKey: string | null;
  id: string | null;
  /** Run `fn` once the request's transaction committed (never when it rolled back). */
  afterCommit: (fn: () => void) => void;
}

function checkOptions(o: StripeSandboxOptions): void {
  if (!o.pool) throw new TypeError('stripeSandboxPlugin: pool is required');
  if (!/^acct_[A-Za-z0-9]+$/.test(o.accountId ?? '')) throw new TypeError('stripeSandboxPlugin: accountId must be acct_…');
  if (!/^sk_test_[A-Za-z0-9]+$/.test(o.secretKey ?? '')) throw new TypeError('stripeSandboxPlugin: secretKey must be sk_test_…');
  if (!Number.isFinite(o.timeScale) || o.timeScale < 0) throw new TypeError('stripeSandboxPlugin: timeScale must be >= 0');
  if (!Array.isArray(o.webhookEndpoints) || o.webhookEndpoints.length > 16) throw new TypeError('stripeSandboxPlugin: 0 to 16 webhook endpoints');
  if (o.refundSettleMs !== undefined && o.refundSettleMs !== null && !(Number.isFinite(o.refundSettleMs) && o.refundSettleMs >= 0 && o.refundSettleMs <= 30 * 86_400_000)) {
    throw new TypeError('stripeSandboxPlugin: refundSettleMs must be null or 0 to 30 days');
  }
  for (const e of o.webhookEndpoints) {
    new URL(e.url);
    if (!e.secret || !e.id || e.enabledEvents.length === 0) throw new TypeError(`stripeSandboxPlugin: endpoint ${e.id} needs an id, a secret and enabled events`);
  }
}

export const stripeSandboxPlugin: FastifyPluginAsync<StripeSandboxOptions> = async (app: FastifyInstance, opts) => {
  checkOptions(opts);
  const { pool, accountId, secretKey } = opts;
  const apiVersion = opts.apiVersion ?? Stripe.API_VERSION;
  const prefix = app.prefix;
  const apiPrefix = `${prefix}/v1/`;
  const endpoints = new Map(opts.webhookEndpoints.map((e) => [e.id, e]));
  const dispatcher: NotificationDispatcher<WebhookPayload> = createNotificationDispatcher({
    pool,
    spec: stripeNotificationSpec(endpoints),
    timeScale: opts.timeScale,
    ...(opts.pollIntervalMs !== undefined ? { pollIntervalMs: opts.pollIntervalMs } : {}),
    ...(opts.notifyTimeoutMs !== undefined ? { requestTimeoutMs: opts.notifyTimeoutMs } : {}),
    onError: (err) => app.log.error({ err }, 'stripe sandbox webhook delivery failed'),
  });

  if (opts.deliverNotifications !== false) app.addHook('onReady', async () => dispatcher.start());
  app.addHook('onClose', async () => dispatcher.stop());

  // Pending refunds finish by themselves: a timer per refund in the process that made it, and a
  // slow sweep for those whose process went away. Finishing is a compare-and-set, so two processes
  // racing for one refund finish it once.
  const settleDelayMs = opts.refundSettleMs === null ? null : (opts.refundSettleMs ?? STRIPE_REFUND_SETTLE_MS) * opts.timeScale;
  const settleTimers = new Set<NodeJS.Timeout>();
  const settlesInFlight = new Set<Promise<void>>();
  let settling = false;
  let sweepTimer: NodeJS.Timeout | null = null;
  const sweepEveryMs = settleDelayMs === null ? 0 : Math.max(250, Math.min(5_000, settleDelayMs / 2));
  function scheduleSettle(id: string): void {
    if (!settling || settleDelayMs === null || settleTimers.size >= MAX_SETTLE_TIMERS) return;
    const t = setTimeout(() => {
      settleTimers.delete(t);
      const p: Promise<void> = settleDue(id)
        .catch((err) => app.log.error({ err }, 'stripe sandbox refund settle failed'))
        .finally(() => settlesInFlight.delete(p));
      settlesInFlight.add(p);
    }, settleDelayMs + 5);
    t.unref();
    settleTimers.add(t);
  }
  async function settleDue(id: string): Promise<void> {
    if (!settling) return;
    await inTransaction(pool, (tx) => finishStoredRefund(tx, () => getDueRefund(tx, accountId, id), (stored) => stored.settleStatus));
    dispatcher.kick();
  }
  function sweep(): void {
    sweepTimer = null;
    if (!settling) return;
    const p: Promise<void> = listDueRefunds(pool, accountId, SETTLE_SWEEP_BATCH)
      .then(async (ids) => {
        for (const id of ids) await settleDue(id);
      })
      .catch((err) => app.log.error({ err }, 'stripe sandbox refund sweep failed'))
      .finally(() => {
        settlesInFlight.delete(p);
        if (settling) {
          sweepTimer = setTimeout(sweep, sweepEveryMs);
          sweepTimer.unref();
        }
      });
    settlesInFlight.add(p);
  }
  app.addHook('onReady', async () => {
    settling = true;
    if (settleDelayMs !== null) sweep();
  });
  app.addHook('onClose', async () => {
    settling = false;
    if (sweepTimer) clearTimeout(sweepTimer);
    for (const t of settleTimers) clearTimeout(t);
    settleTimers.clear();
    await Promise.allSettled([...settlesInFlight]);
  });

  // Stripe's Idempotency-Key is the sandbox's to honour. The service's own idempotency layer (a
  // root preHandler for every POST) would otherwise answer for it with Knowpay's rules, so the
  // header is taken off the request before that hook runs and kept here.
  const idempotencyHeaders = new WeakMap<FastifyRequest, string | string[] | undefined>();
  app.addHook('onRequest', async (req) => {
    if (!req.url.startsWith(apiPrefix)) return;
    idempotencyHeaders.set(req, req.raw.headers['idempotency-key']);
    delete req.raw.headers['idempotency-key'];
  });

  // Stripe bodies are parsed by Stripe's rules (sandbox-form.ts), in this plugin only.
  if (app.hasContentTypeParser(FORM_TYPE)) app.removeContentTypeParser(FORM_TYPE);
  app.addContentTypeParser(FORM_TYPE, { parseAs: 'string', bodyLimit: MAX_FORM_BYTES }, (_req, body, done) => done(null, body));

  app.setNotFoundHandler((req, reply) => {
    const path = (req.url.split('?')[0] ?? '').slice(prefix.length);
    if (req.url.startsWith(apiPrefix)) {
      // Stripe authenticates before it routes.
      const denied = authenticate(req);
      if (denied) return sendApi(reply.header('www-authenticate', 'Basic realm="Stripe"'), newRequestId(), denied);
      const r = apiError(404, 'invalid_request_error', `Unrecognized request URL (${req.method}: ${path}). Please see https://stripe.com/docs or we can help at https://support.stripe.com/.`);
      return sendApi(reply, newRequestId(), r);
    }
    return sendSandboxError(reply, 404, 'resource_missing', `Unrecognized request URL (${req.method}: ${req.url.split('?')[0]})`);
  });

  app.setErrorHandler((err: Error & { statusCode?: number; code?: string }, req, reply) => {
    const status = err.statusCode ?? 500;
    if (status >= 500) req.log.error({ err }, 'stripe sandbox error');
    if (req.url.startsWith(apiPrefix)) {
      const r = status >= 500
        ? apiError(500, 'api_error', 'An unknown error occurred')
        : apiError(status === 413 ? 413 : 400, 'invalid_request_error', err.code === 'FST_ERR_CTP_BODY_TOO_LARGE' ? 'Request body too large.' : `Invalid request: ${err.message}`);
      return sendApi(reply, newRequestId(), r);
    }
    return status >= 500
      ? reply.code(500).type('application/json; charset=utf-8').send({ error: { type: 'api_error', code: 'internal_error', message: 'An internal error occurred' } })
      : sendSandboxError(reply, status, 'invalid_request', err.message);
  });

  // ---- The API plumbing: auth, parameters, idempotency, one transaction per request ---------------

  function authenticate(req: FastifyRequest): ApiResult | null {
    const key = presentedKey(req.headers.authorization);
    if (key === null) return apiError(401, 'invalid_request_error', NO_KEY_MESSAGE);
    if (!sameKey(key, secretKey)) return apiError(401, 'invalid_request_error', `Invalid API Key provided: ${redactKey(key)}`);
    return null;
  }

  function requestParams(req: FastifyRequest): { ok: true; params: FormObject } | { ok: false; error: ApiResult } {
    let text = '';
    if (req.method === 'GET') {
      const url = req.raw.url ?? '';
      text = url.includes('?') ? url.slice(url.indexOf('?') + 1) : '';
    } else if (typeof req.body === 'string') {
      text = req.body;
    } else if (req.body !== undefined && req.body !== null) {
      return { ok: false, error: apiError(400, 'invalid_request_error', `Invalid request: send parameters as ${FORM_TYPE}, not ${req.headers['content-type'] ?? 'an unknown type'}.`) };
    }
    const parsed = parseStripeForm(text);
    if (!parsed.ok) return { ok: false, error: apiError(400, 'invalid_request_error', parsed.message, parsed.param ? { param: parsed.param } : {}) };
    return { ok: true, params: parsed.params };
  }

  function idempotencyKeyOf(req: FastifyRequest): { ok: true; key: string | null } | { ok: false; error: ApiResult } {
    const header = idempotencyHeaders.get(req);
    if (header === undefined) return { ok: true, key: null };
    if (Array.isArray(header) || header === '') return { ok: false, error: apiError(400, 'invalid_request_error', 'Invalid Idempotency-Key: give exactly one non-empty key.') };
    if (header.length > MAX_IDEMPOTENCY_KEY_CHARS) {
      return { ok: false, error: apiError(400, 'invalid_request_error', `Idempotency keys can be no longer than ${MAX_IDEMPOTENCY_KEY_CHARS} characters. You provided a key that is ${header.length} characters long.`) };
    }
    return { ok: true, key: header };
  }

  function api(method: 'GET' | 'POST', url: string, handler: (ctx: ApiContext) => Promise<ApiResult>) {
    app.route<{ Params: { id?: string } }>({
      method,
      url,
      handler: async (req, reply) => {
        const requestId = newRequestId();
        const version = req.headers['stripe-version'];
        reply.header('stripe-version', typeof version === 'string' && version !== '' ? version : apiVersion);
        const denied = authenticate(req);
        if (denied) return sendApi(reply.header('www-authenticate', 'Basic realm="Stripe"'), requestId, denied);
        const parsed = requestParams(req);
        if (!parsed.ok) return sendApi(reply, requestId, parsed.error);
        const id = req.params.id ?? null;
        const committed: Array<() => void> = [];
        const afterCommit = (fn: () => void) => void committed.push(fn);
        if (method === 'GET') return sendApi(reply, requestId, await handler({ db: pool, params: parsed.params, requestId, idempotencyKey: null, id, afterCommit: () => {} }));
        const key = idempotencyKeyOf(req);
        if (!key.ok) return sendApi(reply, requestId, key.error);
        const path = (req.url.split('?')[0] ?? '').slice(prefix.length);
        const outcome = await inTransaction(pool, (tx) => {
          committed.length = 0; // a retried transaction starts over
          return runIdempotent(tx, key.key, { method, path, params: parsed.params, requestId }, (db) => handler({ db, params: parsed.params, requestId, idempotencyKey: key.key, id, afterCommit }));
        });
        for (const fn of committed) fn();
        dispatcher.kick();
        if (outcome.replayedFrom) reply.header('idempotent-replayed', 'true').header('original-request', outcome.replayedFrom);
        return sendApi(reply, requestId, outcome.result, outcome.rawBody);
      },
    });
  }

  /**
   * Stripe's idempotency: the key's first saved answer is replayed for the same method, path and
   * parameters; other parameters are a 400; a request still running with the key is a 409.
   */
  async function runIdempotent(
    tx: Parameters<typeof lockIdempotencyKey>[0],
    key: string | null,
    request: { method: string; path: string; params: FormObject; requestId: string },
    execute: (db: Queryable) => Promise<ApiResult>,
  ): Promise<{ result: ApiResult; rawBody?: string; replayedFrom?: string }> {
    if (key === null) return { result: await execute(tx) };
    if (!(await lockIdempotencyKey(tx, accountId, key))) {
      return {
        result: apiError(409, 'idempotency_error', "There is currently another in-progress request using this Stripe-Idempotency key (that probably means you submitted twice, and that's fine). Please try again later.", { code: 'idempotency_key_in_use' }),
      };
    }
    const fingerprint = paramsSha256(request.method, request.path, request.params);
    const saved = await getSavedResponse(tx, accountId, key);
    if (saved) {
      if (saved.paramsSha256 !== fingerprint) {
        return { result: apiError(400, 'idempotency_error', `Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '${key}' if you meant to execute a different request.`) };
      }
      return { result: { status: saved.status, body: {}, save: false }, rawBody: saved.body, replayedFrom: saved.requestId };
    }
    const result = await execute(tx);
    if (result.save) {
      await saveResponse(tx, accountId, key, { method: request.method, path: request.path, paramsSha256: fingerprint, status: result.status, body: render(result.body), requestId: request.requestId });
    }
    return { result };
  }

  // ---- Events --------------------------------------------------------------------------------------

  async function emit(db: Queryable, events: Transition['events'], request: { id: string | null; idempotencyKey: string | null }, reference: string | null): Promise<string[]> {
    const ids: string[] = [];
    const createdS = nowS();
    // What the change moved on the balance is booked with it (a paid charge, a refund made or failed).
    await recordBalanceTransactions(db, accountId, events, createdS);
    for (const e of events) {
      const targets = [...endpoints.values()].filter((t) => t.enabledEvents.includes('*') || t.enabledEvents.includes(e.type));
      const event = buildEvent({ type: e.type, object: e.object, createdS, apiVersion, request, pendingWebhooks: targets.length });
      await insertEvent(db, accountId, event);
      const body = JSON.stringify(event, null, 2);
      for (const target of targets) {
        await dispatcher.enqueue(db, { channelReference: reference ?? event.data.object.id, eventId: event.id, url: target.url, payload: { endpoint_id: target.id, body } });
      }
      ids.push(event.id);
    }
    return ids;
  }

  /** Read, decide, compare-and-set (bounded); emit the transition's events in the same transaction. */
  async function mutate(
    db: Queryable,
    load: () => Promise<StoredIntent | null>,
    decide: (stored: StoredIntent) => { transition: Transition } | { answer: ApiResult },
    request: { id: string | null; idempotencyKey: string | null },
  ): Promise<{ result: ApiResult; intent: IntentJson | null; eventIds: string[] } | null> {
    for (let round = 0; round < MAX_CAS_ROUNDS; round++) {
      const stored = await load();
      if (!stored) return null;
      const decision = decide(stored);
      if ('answer' in decision) return { result: decision.answer, intent: stored.object, eventIds: [] };
      const t = decision.transition;
      const updated = await updateIntent(db, stored, t.intent, t.charge ?? stored.latestCharge);
      if (!updated) continue;
      const eventIds = await emit(db, t.events, request, t.intent.metadata[REFERENCE_METADATA_KEY] ?? null);
      return { result: t.declined ?? ok(updated.object), intent: updated.object, eventIds };
    }
    throw new Error('payment_intent kept changing while being updated');
  }

  const noSuchIntent = (id: string) => apiError(404, 'invalid_request_error', `No such payment_intent: '${id}'`, { code: 'resource_missing', param: 'intent' });

  // ---- Routes: PaymentIntents ----------------------------------------------------------------------

  api('POST', '/v1/payment_intents', async ({ db, params, requestId, idempotencyKey }) => {
    const parsed = parseCreate(params);
    if (!parsed.ok) return parsed.error;
    const req = parsed.request;
    let intent = newIntent(req, nowS());
    let charge: Record<string, unknown> | null = null;
    const events: Transition['events'] = [{ type: 'payment_intent.created', object: intent }];
    let result = ok(intent);
    if (req.confirm) {
      if (!req.paymentMethod) {
        return apiError(400, 'invalid_request_error', "You cannot confirm this PaymentIntent because it's missing a payment method. You can either update the PaymentIntent with a payment method and then confirm it again, or confirm it again directly with a payment method.", { code: 'payment_intent_unexpected_state' });
      }
      const card = TEST_PAYMENT_METHODS[req.paymentMethod];
      if (!card) return apiError(400, 'invalid_request_error', `No such PaymentMethod: '${req.paymentMethod}'`, { code: 'resource_missing', param: 'payment_method' });
      const t = confirmWith(intent, card, nowS());
      intent = t.intent;
      charge = t.charge;
      events.push(...t.events);
      result = t.declined ?? ok(intent);
    }
    await insertIntent(db, accountId, intent, charge);
    await emit(db, events, { id: requestId, idempotencyKey }, intent.metadata[REFERENCE_METADATA_KEY] ?? null);
    return result;
  });

  api('GET', '/v1/payment_intents/search', async ({ db, params }) => {
    const unknown = unknownParam(params, new Set(['query', 'limit', 'page']));
    if (unknown) return unknown;
    const text = params['query'];
    if (typeof text !== 'string' || text === '') return apiError(400, 'invalid_request_error', 'Missing required param: query.', { code: 'parameter_missing', param: 'query' });
    const query = parseSearchQuery(text);
    if (!query.ok) return apiError(400, 'invalid_request_error', query.message, { param: 'query' });
    const limitText = params['limit'] ?? String(SEARCH_DEFAULT_LIMIT);
    const limit = typeof limitText === 'string' && /^\d{1,3}$/.test(limitText) ? Number(limitText) : NaN;
    if (!(limit >= 1 && limit <= 100)) return apiError(400, 'invalid_request_error', 'Invalid limit: must be between 1 and 100', { param: 'limit' });
    const page = params['page'];
    const after = page === undefined ? null : decodePage(page);
    if (after === undefined) return apiError(400, 'invalid_request_error', 'Invalid page: use the next_page of a previous search', { param: 'page' });
    const result = await searchIntents(db, accountId, query.query, limit, after);
    return ok({
      object: 'search_result',
      data: result.data,
      has_more: result.hasMore,
      next_page: result.next ? encodePage(result.next) : null,
      url: '/v1/payment_intents/search',
    });
  });

  api('GET', '/v1/payment_intents/:id', async ({ db, params, id }) => {
    const unknown = unknownParam(params, new Set(['client_secret']));
    if (unknown) return unknown;
    const stored = await getIntent(db, accountId, id!);
    if (!stored) return noSuchIntent(id!);
    const secret = params['client_secret'];
    if (secret !== undefined && secret !== stored.object['client_secret']) {
      return apiError(400, 'invalid_request_error', 'The client_secret provided does not match the client_secret associated with the PaymentIntent.', { code: 'payment_intent_invalid_parameter', param: 'client_secret' });
    }
    return ok(stored.object);
  });

  api('POST', '/v1/payment_intents/:id/confirm', async ({ db, params, requestId, idempotencyKey, id }) => {
    const parsed = parseConfirm(params);
    if (!parsed.ok) return parsed.error;
    const done = await mutate(db, () => getIntent(db, accountId, id!), (stored) => {
      const pi = stored.object;
      if (!canConfirm(pi)) return { answer: unexpectedState('confirm', pi) };
      const pm = parsed.paymentMethod;
      if (!pm) return { answer: apiError(400, 'invalid_request_error', "You cannot confirm this PaymentIntent because it's missing a payment method. Confirm it again directly with a payment method.", { code: 'payment_intent_unexpected_state', extra: { payment_intent: pi } }) };
      const card = TEST_PAYMENT_METHODS[pm];
      if (!card) return { answer: apiError(400, 'invalid_request_error', `No such PaymentMethod: '${pm}'`, { code: 'resource_missing', param: 'payment_method' }) };
      return { transition: confirmWith(pi, card, nowS()) };
    }, { id: requestId, idempotencyKey });
    return done ? done.result : noSuchIntent(id!);
  });

  api('POST', '/v1/payment_intents/:id/cancel', async ({ db, params, requestId, idempotencyKey, id }) => {
    const parsed = parseCancel(params);
    if (!parsed.ok) return parsed.error;
    const done = await mutate(db, () => getIntent(db, accountId, id!), (stored) =>
      canCancel(stored.object) ? { transition: cancelWith(stored.object, parsed.reason, nowS()) } : { answer: unexpectedState('cancel', stored.object) },
    { id: requestId, idempotencyKey });
    return done ? done.result : noSuchIntent(id!);
  });

  // ---- Routes: Refunds -----------------------------------------------------------------------------

  const noSuchRefund = (id: string) => apiError(404, 'invalid_request_error', `No such refund: '${id}'`, { code: 'resource_missing', param: 'id' });

  api('POST', '/v1/refunds', async ({ db, params, requestId, idempotencyKey, afterCommit }) => {
    const parsed = parseRefundCreate(params);
    if (!parsed.ok) return parsed.error;
    const req = parsed.request;
    const load = () => (req.paymentIntent !== null ? getIntent(db, accountId, req.paymentIntent) : findIntentByCharge(db, accountId, req.charge!));
    for (let round = 0; round < MAX_CAS_ROUNDS; round++) {
      const stored = await load();
      if (!stored) {
        return req.paymentIntent !== null
          ? apiError(404, 'invalid_request_error', `No such payment_intent: '${req.paymentIntent}'`, { code: 'resource_missing', param: 'payment_intent' })
          : apiError(404, 'invalid_request_error', `No such charge: '${req.charge}'`, { code: 'resource_missing', param: 'charge' });
      }
      const decision = decideRefund(stored.object, stored.latestCharge, req, nowS());
      if (!decision.ok) return decision.error;
      const c = decision.creation;
      // The remainder is the charge's: claiming part of it is a compare-and-set on the PaymentIntent row.
      const claimed = await updateIntent(db, stored, stored.object, c.charge);
      if (!claimed) continue;
      const settle = c.later !== null && settleDelayMs !== null ? { afterMs: settleDelayMs, status: c.later } : null;
      await insertRefund(db, accountId, c.refund, settle);
      const reference = c.refund.metadata[REFERENCE_METADATA_KEY] ?? stored.object.metadata[REFERENCE_METADATA_KEY] ?? null;
      await emit(db, c.events, { id: requestId, idempotencyKey }, reference);
      if (settle) afterCommit(() => scheduleSettle(c.refund.id));
      return ok(c.refund);
    }
    throw new Error('payment_intent kept changing while being refunded');
  });

  api('GET', '/v1/refunds', async ({ db, params }) => {
    const unknown = unknownParam(params, new Set(['payment_intent', 'charge', 'limit', 'starting_after']));
    if (unknown) return unknown;
    const filter = { paymentIntent: null as string | null, charge: null as string | null };
    for (const key of ['payment_intent', 'charge'] as const) {
      const v = params[key];
      if (v === undefined) continue;
      if (typeof v !== 'string' || v === '' || v.length > 255) return apiError(400, 'invalid_request_error', `Invalid string: ${key}`, { param: key });
      if (key === 'payment_intent') filter.paymentIntent = v;
      else filter.charge = v;
    }
    const limitText = params['limit'] ?? String(REFUND_LIST_DEFAULT_LIMIT);
    const limit = typeof limitText === 'string' && /^\d{1,3}$/.test(limitText) ? Number(limitText) : NaN;
    if (!(limit >= 1 && limit <= 100)) return apiError(400, 'invalid_request_error', 'This value must be less than or equal to 100.', { code: 'parameter_invalid_integer', param: 'limit' });
    let after: { created: number; id: string } | null = null;
    const startingAfter = params['starting_after'];
    if (startingAfter !== undefined) {
      if (typeof startingAfter !== 'string' || startingAfter.length > 255) return apiError(400, 'invalid_request_error', 'Invalid string: starting_after', { param: 'starting_after' });
      const cursor = await getRefund(db, accountId, startingAfter);
      if (!cursor) return apiError(404, 'invalid_request_error', `No such refund: '${startingAfter}'`, { code: 'resource_missing', param: 'starting_after' });
      after = { created: cursor.object.created, id: cursor.object.id };
    }
    const page = await listRefunds(db, accountId, filter, limit, after);
    return ok({ object: 'list', data: page.data, has_more: page.hasMore, url: '/v1/refunds' });
  });

  api('GET', '/v1/refunds/:id', async ({ db, params, id }) => {
    const unknown = unknownParam(params, new Set());
    if (unknown) return unknown;
    const stored = await getRefund(db, accountId, id!);
    return stored ? ok(stored.object) : noSuchRefund(id!);
  });

  /**
   * Finish a refund (read, decide, compare-and-set, bounded). A failed refund gives its amount
   * back to the charge (another compare-and-set, on the PaymentIntent). The events go out in the
   * same transaction. `decide` answers the outcome, or null to leave the refund as it is.
   */
  async function finishStoredRefund(
    db: Queryable,
    load: () => Promise<StoredRefund | null>,
    decide: (stored: StoredRefund) => 'succeeded' | 'failed' | null,
  ): Promise<{ refund: RefundJson; changed: boolean; eventIds: string[] } | null> {
    for (let round = 0; round < MAX_CAS_ROUNDS; round++) {
      const stored = await load();
      if (!stored) return null;
      const outcome = decide(stored);
      if (outcome === null || outcome === stored.object.status) return { refund: stored.object, changed: false, eventIds: [] };
      const t = finishRefund(stored.object, outcome);
      const updated = await updateRefund(db, stored, t.refund, null);
      if (!updated) continue;
      if (outcome === 'failed' && HOLDING_REFUND_STATUSES.has(stored.object.status)) await giveBack(db, stored.object);
      const reference = stored.object.metadata[REFERENCE_METADATA_KEY] ?? null;
      const eventIds = await emit(db, t.events, { id: null, idempotencyKey: null }, reference);
      return { refund: updated.object, changed: true, eventIds };
    }
    throw new Error('refund kept changing while being finished');
  }

  async function giveBack(db: Queryable, refund: RefundJson): Promise<void> {
    for (let round = 0; round < MAX_CAS_ROUNDS; round++) {
      const stored = await getIntent(db, accountId, refund.payment_intent);
      if (!stored?.latestCharge) throw new Error(`refund ${refund.id}: its PaymentIntent or charge is gone`);
      if (await updateIntent(db, stored, stored.object, chargeWithRefunded(stored.latestCharge, -refund.amount))) return;
    }
    throw new Error('payment_intent kept changing while a refund was given back');
  }

  api('GET', '/v1/balance_transactions', async ({ db, params }) => {
    const parsed = parseBalanceList(params);
    if (!parsed.ok) return parsed.error;
    const page = await listBalanceTransactions(db, accountId, parsed.request, nowS());
    if (!page) return apiError(404, 'invalid_request_error', `No such balance transaction: '${parsed.request.startingAfter}'`, { code: 'resource_missing', param: 'starting_after' });
    return ok({ object: 'list', data: page.data, has_more: page.hasMore, url: '/v1/balance_transactions' });
  });

  api('GET', '/v1/events/:id', async ({ db, params, id }) => {
    const unknown = unknownParam(params, new Set());
    if (unknown) return unknown;
    const event = await getEvent(db, accountId, id!);
    return event ? ok(event) : apiError(404, 'invalid_request_error', `No such event: '${id}'`, { code: 'resource_missing', param: 'id' });
  });

  // ---- Knowpay sandbox endpoints -------------------------------------------------------------------

  app.post('/simulate', async (req, reply) => {
    const body = objectBody(req.body);
    if (!body) return sendSandboxError(reply, 400, 'parameter_invalid', 'body must be a JSON object');
    const ref = body['channel_reference'];
    const outcome = body['outcome'];
    const pm = body['payment_method'];
    if (typeof ref !== 'string' || ref === '' || ref.length > 500) return sendSandboxError(reply, 400, 'parameter_missing', 'channel_reference is required', 'channel_reference');
    if (typeof outcome !== 'string' || !(OUTCOMES as readonly string[]).includes(outcome)) {
      return sendSandboxError(reply, 400, 'parameter_invalid', `outcome must be one of ${OUTCOMES.join(', ')}`, 'outcome');
    }
    if (pm !== undefined) {
      const card = typeof pm === 'string' ? TEST_PAYMENT_METHODS[pm] : undefined;
      if (!card || outcome === 'canceled' || (outcome === 'failed') !== Boolean(card.decline)) {
        return sendSandboxError(reply, 400, 'parameter_invalid', `payment_method must be one of Stripe's test PaymentMethods that ${outcome === 'failed' ? 'declines' : 'pays'} (${Object.keys(TEST_PAYMENT_METHODS).filter((k) => (outcome === 'failed') === Boolean(TEST_PAYMENT_METHODS[k]!.decline)).join(', ')}), and only with outcome succeeded or failed`, 'payment_method');
      }
    }
    const done = await inTransaction(pool, (tx) =>
      mutate(tx, () => findIntentByMetadata(tx, accountId, REFERENCE_METADATA_KEY, ref), (stored) => {
        const pi = stored.object;
        if (FINAL_STATUSES.has(pi.status)) {
          return { answer: apiError(409, 'invalid_request_error', `payment_intent ${pi.id} for ${ref} is already ${pi.status}`, { code: 'trade_already_final' }) };
        }
        return { transition: buyer(pi, outcome as Outcome, typeof pm === 'string' ? pm : undefined) };
      }, { id: null, idempotencyKey: null }),
    );
    dispatcher.kick();
    if (!done) return sendSandboxError(reply, 404, 'trade_not_found', `no Stripe sandbox PaymentIntent with metadata.${REFERENCE_METADATA_KEY} = ${ref}`, 'channel_reference');
    if (done.result.status === 409) return sendSandboxError(reply, 409, 'trade_already_final', String((done.result.body['error'] as { message: string }).message), 'channel_reference');
    return reply.code(200).send(tradeJson(done.intent!, ref, { events: done.eventIds }));
  });

  app.get<{ Params: { reference: string } }>('/trades/:reference', async (req, reply) => {
    const stored = await findIntentByMetadata(pool, accountId, REFERENCE_METADATA_KEY, req.params.reference);
    if (!stored) return sendSandboxError(reply, 404, 'trade_not_found', `no Stripe sandbox PaymentIntent for ${req.params.reference}`, 'channel_reference');
    const events = await listEventsFor(pool, accountId, stored.object.id);
    const refunds = await listRefunds(pool, accountId, { paymentIntent: stored.object.id, charge: null }, 100, null);
    const charge = stored.latestCharge;
    const refunded = charge ? fromStripeAmount(charge['amount_refunded'] ?? 0, stored.object.currency) : null;
    const remainder = charge && charge['status'] === 'succeeded' ? fromStripeAmount(remainderOf(charge), stored.object.currency) : null;
    return reply.send(tradeJson(stored.object, req.params.reference, {
      amount_refunded: refunded ? toJsonAmount(refunded.amountMinor) : 0,
      amount_refundable: remainder ? toJsonAmount(remainder.amountMinor) : 0,
      refunds: refunds.data.map((r) => refundJson(r)),
      events: events.map((e) => e['id']),
    }));
  });

  // ---- Refunds: the Knowpay sandbox endpoints ------------------------------------------------------

  /** A refund by `re_` id or by our refund number (metadata), optionally both (they must agree). */
  async function locateRefund(db: Queryable, by: { id?: string; reference?: string }): Promise<StoredRefund | null> {
    const stored = by.id !== undefined ? await getRefund(db, accountId, by.id) : await findRefundByMetadata(db, accountId, REFUND_REFERENCE_METADATA_KEY, by.reference!);
    if (stored && by.reference !== undefined && stored.object.metadata[REFUND_REFERENCE_METADATA_KEY] !== by.reference) return null;
    return stored;
  }

  app.post('/refunds/simulate', async (req, reply) => {
    const body = objectBody(req.body);
    if (!body) return sendSandboxError(reply, 400, 'parameter_invalid', 'body must be a JSON object');
    const reference = body['refund_reference'];
    const id = body['channel_refund_id'];
    const outcome = body['outcome'];
    if (reference !== undefined && (typeof reference !== 'string' || reference === '' || reference.length > 255)) {
      return sendSandboxError(reply, 400, 'parameter_invalid', 'refund_reference must be a non-empty string', 'refund_reference');
    }
    if (id !== undefined && (typeof id !== 'string' || !/^re_[A-Za-z0-9]{1,250}$/.test(id))) {
      return sendSandboxError(reply, 400, 'parameter_invalid', 'channel_refund_id must be a re_ id', 'channel_refund_id');
    }
    if (reference === undefined && id === undefined) return sendSandboxError(reply, 400, 'parameter_missing', 'refund_reference or channel_refund_id is required', 'refund_reference');
    if (typeof outcome !== 'string' || !(REFUND_OUTCOMES as readonly string[]).includes(outcome)) {
      return sendSandboxError(reply, 400, 'parameter_invalid', `outcome must be one of ${REFUND_OUTCOMES.join(', ')}`, 'outcome');
    }
    const by = { ...(id !== undefined ? { id: id as string } : {}), ...(reference !== undefined ? { reference: reference as string } : {}) };
    const done = await inTransaction(pool, async (tx) => {
      // A pm_card_refundFail refund is `succeeded` until it fails: simulate may fail it early.
      const found = await locateRefund(tx, by);
      const charge = found ? (await getIntent(tx, accountId, found.object.payment_intent))?.latestCharge ?? null : null;
      const failsLater = charge !== null && refundBehaviourOf(charge).later === 'failed';
      return finishStoredRefund(tx, () => locateRefund(tx, by), (stored) => {
        if (OPEN_REFUND_STATUSES.has(stored.object.status)) return outcome as 'succeeded' | 'failed';
        return outcome === 'failed' && failsLater && stored.object.status === 'succeeded' ? 'failed' : null;
      });
    });
    dispatcher.kick();
    const named = id ?? reference;
    if (!done) return sendSandboxError(reply, 404, 'refund_not_found', `no Stripe sandbox refund ${String(named)}`, id !== undefined ? 'channel_refund_id' : 'refund_reference');
    if (!done.changed) return sendSandboxError(reply, 409, 'refund_already_final', `refund ${done.refund.id} is already ${done.refund.status}`, id !== undefined ? 'channel_refund_id' : 'refund_reference');
    return reply.code(200).send(refundJson(done.refund, { events: done.eventIds }));
  });

  app.get<{ Params: { key: string } }>('/refunds/:key', async (req, reply) => {
    const key = req.params.key;
    const stored = await locateRefund(pool, /^re_[A-Za-z0-9]+$/.test(key) ? { id: key } : { reference: key });
    if (!stored) return sendSandboxError(reply, 404, 'refund_not_found', `no Stripe sandbox refund ${key}`, 'refund');
    const events = await listEventsFor(pool, accountId, stored.object.id);
    return reply.send(refundJson(stored.object, { settle_at: stored.settleAt?.toISOString() ?? null, events: events.map((e) => e['id']) }));
  });
};

/** What the buyer's card does: Stripe's test cards 4242… (paid) and …0002 (declined). */
function buyer(pi: IntentJson, outcome: Outcome, paymentMethod?: string): Transition {
  switch (outcome) {
    case 'succeeded':
      return confirmWith(pi, TEST_PAYMENT_METHODS[paymentMethod ?? 'pm_card_visa']!, nowS());
    case 'failed':
      return confirmWith(pi, TEST_PAYMENT_METHODS[paymentMethod ?? 'pm_card_chargeDeclined']!, nowS());
    case 'canceled':
      return cancelWith(pi, 'abandoned', nowS());
  }
}

function tradeJson(pi: IntentJson, reference: string, extra: Record<string, unknown>) {
  const money = fromStripeAmount(pi.amount, pi.currency);
  return {
    object: 'sandbox_trade',
    channel: STRIPE_CHANNEL,
    channel_reference: reference,
    id: pi.id,
    status: pi.status,
    amount: money ? toJsonAmount(money.amountMinor) : null,
    currency: money?.currency ?? pi.currency.toUpperCase(),
    stripe_amount: pi.amount,
    payment_intent: pi,
    ...extra,
  };
}

function refundJson(refund: RefundJson, extra: Record<string, unknown> = {}) {
  const money = fromStripeAmount(refund.amount, refund.currency);
  return {
    object: 'sandbox_refund',
    channel: STRIPE_CHANNEL,
    id: refund.id,
    refund_reference: refund.metadata[REFUND_REFERENCE_METADATA_KEY] ?? null,
    channel_reference: refund.metadata[REFERENCE_METADATA_KEY] ?? null,
    status: refund.status,
    amount: money ? toJsonAmount(money.amountMinor) : null,
    currency: money?.currency ?? refund.currency.toUpperCase(),
    stripe_amount: refund.amount,
    refund,
    ...extra,
  };
}

function nowS(): number {
  return Math.floor(Date.now() / 1000);
}

/** Stripe's API answers pretty-printed JSON. */
function render(body: Record<string, unknown>): string {
  return JSON.stringify(body, null, 2);
}

function sendApi(reply: FastifyReply, requestId: string, result: ApiResult, rawBody?: string): FastifyReply {
  return reply.code(result.status).header('request-id', requestId).type('application/json').send(rawBody ?? render(result.body));
}

function encodePage(after: { created: number; id: string }): string {
  return Buffer.from(canonicalJson({ c: after.created, i: after.id }), 'utf8').toString('base64url');
}

/** undefined when the token is not one of ours. */
function decodePage(page: unknown): { created: number; id: string } | undefined {
  if (typeof page !== 'string' || page.length > 200) return undefined;
  try {
    const v = JSON.parse(Buffer.from(page, 'base64url').toString('utf8')) as { c?: unknown; i?: unknown };
    if (typeof v.c === 'number' && Number.isSafeInteger(v.c) && typeof v.i === 'string' && /^pi_[A-Za-z0-9]+$/.test(v.i)) return { created: v.c, id: v.i };
  } catch {
    // fall through
  }
  return undefined;
}

/**
 * PayPal sandbox: PayPal's side of REST Orders v2 and its webhooks, as a Fastify plugin.
 * Register with `app.register(paypalSandboxPlugin, { prefix: '/sandbox/paypal', ...options })`.
 *
 * Routes (under the prefix):
 * - `POST /v1/oauth2/token`            client credentials (HTTP Basic) → bearer token; bad → 401 invalid_client.
 * - `POST /v2/checkout/orders`         create (PayPal-Request-Id idempotent, Prefer honoured).
 * - `GET  /v2/checkout/orders/:id`     the order.
 * - `POST /v2/checkout/orders/:id/capture`  capture an APPROVED order (PayPal-Request-Id idempotent).
 * - `GET  /checkoutnow?token=`         the buyer's approval page; `POST /checkoutnow/approve|cancel`.
 * - `POST /v2/payments/captures/:id/refund`  refund a capture (PayPal-Request-Id idempotent, partial
 *                                      refunds up to the remainder, PayPal's 422s beyond it).
 * - `GET  /v2/payments/captures/:id`   the capture; `GET /v2/payments/refunds/:id` a refund.
 * - `GET  /v1/reporting/transactions`  Transaction Search over the sandbox's captures and refunds
 *                                      (sandbox-bill.ts): what the connector's downloadBill reads.
 * - `GET  /v1/notifications/certs/:name`  the message-verification certificate (PEM).
 * - `POST /simulate`                   `{ channel_reference, outcome }` plays the buyer.
 * - `POST /refunds/mode`               `{ channel_reference, mode: "completed"|"pending" }`: how that
 *                                      order's refunds start (default completed, i.e. synchronous).
 * - `POST /refunds/simulate`           `{ refund_reference?, channel_refund_id?, outcome:
 *                                      "succeeded"|"failed"|"canceled" }` finishes a PENDING refund.
 * - `POST /reversals/simulate`         `{ channel_reference, amount? }`: PayPal reverses the capture.
 * - `GET  /orders/:channel_reference`  the sandbox's view of the latest order for our reference.
 *
 * Webhooks go to the configured URL (PayPal's per-app webhook registration) through the shared
 * dispatcher, signed per delivery attempt with the sandbox's certificate key, on PayPal's retry
 * schedule × timeScale, so /sandbox/faults applies. Refund webhooks: PAYMENT.CAPTURE.REFUNDED when a
 * refund completes (at once, or when /refunds/simulate completes it), PAYMENT.CAPTURE.REVERSED for
 * a reversal; none for pending or failed refunds (sandbox-refunds.ts).
 */
import { createPrivateKey, createSign, randomUUID, type KeyObject } from 'node:crypto';
import type { FastifyInstance, FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import type { Pool, Queryable } from '../../store/db.ts';
import { inTransaction } from '../../store/db.ts';
import { toJsonAmount } from '../../domain/money.ts';
import { createNotificationDispatcher, type NotificationChannelSpec, type NotificationDispatcher } from '../sandbox/dispatcher.ts';
import { objectBody, sendSandboxError } from '../sandbox/errors.ts';
import { checkAccessToken, mintAccessToken, sameSecret } from './sandbox-keys.ts';
import {
  findOrderByCapture, findOrderByCustomId, getOrder, insertOrder, mutateOrder, newCaptureId, newPayerId, type SandboxOrder,
} from './sandbox-orders.ts';
import {
  REFUND_OUTCOMES, finishRefund, getRefund, listRefunds, refundCapture, reverseCapture, setRefundMode,
  type RefundSandboxContext, type SandboxRefund, type SimulateRefundOutcome,
} from './sandbox-refunds.ts';
import {
  ALREADY_CAPTURED, COMPLETED_OR_VOIDED, NOT_APPROVED, approveUrl, captureJson, errorBody, eventJson, invalidId, invalidResourceId, minimalOrderJson,
  newDebugId, newEventId, orderJson, parseCreateOrder, parseRefundRequest, paypalFee, paypalTime, refundEventJson, refundJson,
  type ErrorDetail, type EventType, type RefundEventType, type WireContext,
} from './sandbox-wire.ts';
import { PAYPAL_AUTH_ALGO, crc32 } from './webhook.ts';
import { transactionSearch } from './sandbox-bill.ts';
import { toPayPalValue } from './transformers.ts';

export const PAYPAL_CHANNEL = 'paypal';

/**
 * PayPal retries a webhook up to 25 times over about 3 days (channels.md; the exact timing is not
 * published): here at once, 1m, 5m, 15m, 30m, 1h, 2h, then every 4h — 25 attempts, ~3.2 days.
 */
export const PAYPAL_NOTIFY_SCHEDULE_MS: readonly number[] = Object.freeze(
  [0, 1, 5, 15, 30, 60, 120, ...Array.from({ length: 18 }, () => 240)].map((m) => m * 60_000),
);

/** PayPal's access tokens live 9 hours. */
export const TOKEN_TTL_SECONDS = 32_400;

export interface PayPalSandboxOptions {
  pool: Pool;
  clientId: string;
  clientSecret: string;
  webhookId: string;
  merchantId: string;
  merchantEmail: string;
  tokenSecret: string;
  certId: string;
  /** PEM served at the certificate URL (the leaf; the connector holds the root). */
  signingCertPem: string;
  signingKeyPem: string;
  /** e.g. http://127.0.0.1:4000 (links, certificate URL). */
  publicBaseUrl: string;
  /** Where webhooks are posted (PayPal's webhook registration), e.g. `${publicBaseUrl}/v1/notify/paypal`. */
  webhookUrl: string;
  /** Multiplies PayPal's retry delays: 1 = real time, 0.001 in tests. */
  timeScale: number;
  tokenTtlSeconds?: number;
  /** Run the notification delivery loop in this process (default true). */
  deliverNotifications?: boolean;
  pollIntervalMs?: number;
  notifyTimeoutMs?: number;
}

// ---- Webhook delivery ------------------------------------------------------------------------------

export interface SigningIdentity {
  webhookId: string;
  certUrl: string;
  key: KeyObject;
}

/** Headers for one delivery attempt: a fresh transmission id and time, signed over the exact body. */
export function signTransmission(body: string, id: SigningIdentity, at: Date, transmissionId = randomUUID()): Record<string, string> {
  const time = paypalTime(at);
  const signed = `${transmissionId}|${time}|${id.webhookId}|${crc32(Buffer.from(body, 'utf8'))}`;
  return {
    'paypal-transmission-id': transmissionId,
    'paypal-transmission-time': time,
    'paypal-transmission-sig': createSign('RSA-SHA256').update(signed, 'utf8').sign(id.key, 'base64'),
    'paypal-cert-url': id.certUrl,
    'paypal-auth-algo': PAYPAL_AUTH_ALGO,
  };
}

/** The notification channel spec: JSON event, PayPal's headers signed per attempt, any 2xx acknowledges. */
export function paypalNotificationSpec(id: SigningIdentity): NotificationChannelSpec<Record<string, unknown>> {
  return {
    channel: PAYPAL_CHANNEL,
    scheduleMs: PAYPAL_NOTIFY_SCHEDULE_MS,
    buildRequest(payload, ctx) {
      const body = JSON.stringify(payload);
      return {
        url: ctx.url,
        method: 'POST',
        headers: { 'content-type': 'application/json', 'user-agent': 'PayPal/AUHD-214.0-58843313', ...signTransmission(body, id, ctx.now) },
        body,
      };
    },
    isAcknowledged: ({ status }) => status >= 200 && status < 300,
  };
}

async function enqueueEvent(db: Queryable, dispatcher: NotificationDispatcher<Record<string, unknown>>, ctx: WireContext, webhookUrl: string, type: EventType, order: SandboxOrder): Promise<string> {
  const eventId = newEventId();
  await dispatcher.enqueue(db, {
    channelReference: order.customId ?? order.id,
    eventId,
    url: webhookUrl,
    payload: eventJson(type, order, eventId, ctx, new Date()),
  });
  return eventId;
}

async function enqueueRefundEvent(db: Queryable, dispatcher: NotificationDispatcher<Record<string, unknown>>, ctx: WireContext, webhookUrl: string, type: RefundEventType, refund: SandboxRefund): Promise<string> {
  const eventId = newEventId();
  await dispatcher.enqueue(db, {
    channelReference: refund.customId ?? refund.captureId,
    eventId,
    url: webhookUrl,
    payload: refundEventJson(type, refund, eventId, ctx, new Date()),
  });
  return eventId;
}

// ---- The buyer ---------------------------------------------------------------------------------------

export type SimulateOutcome = 'succeeded' | 'failed' | 'canceled';
const OUTCOMES: readonly SimulateOutcome[] = ['succeeded', 'failed', 'canceled'];

type BuyerResult =
  | { ok: true; order: SandboxOrder; eventId: string }
  | { ok: false; status: 404 | 409; code: string; message: string };

interface SandboxContext {
  pool: Pool;
  clientId: string;
  wire: WireContext;
  webhookUrl: string;
  dispatcher: NotificationDispatcher<Record<string, unknown>>;
}

/**
 * The buyer acts on an open order, and PayPal posts the event, in one transaction:
 * succeeded → APPROVED (capture will complete), failed → APPROVED (capture will be DECLINED) —
 * both send CHECKOUT.ORDER.APPROVED and wait for the merchant's capture; canceled → VOIDED.
 */
export async function buyerActs(s: SandboxContext, load: (db: Queryable) => Promise<SandboxOrder | null>, outcome: SimulateOutcome, what: string): Promise<BuyerResult> {
  return inTransaction(s.pool, async (db) => {
    const result = await mutateOrder<BuyerResult>(db, () => load(db), (order) => {
      if (!order) return { answer: { ok: false, status: 404, code: 'order_not_found', message: `no PayPal sandbox order ${what}` } };
      if (order.status === 'COMPLETED' || order.status === 'VOIDED') {
        return { answer: { ok: false, status: 409, code: 'order_already_final', message: `order ${order.id} is already ${order.status}` } };
      }
      if (order.status === 'APPROVED') {
        return { answer: { ok: false, status: 409, code: 'order_already_approved', message: `order ${order.id} was already approved and awaits the merchant's capture` } };
      }
      if (outcome === 'canceled') return { patch: { status: 'VOIDED', voidedAt: 'now' }, then: (o) => ({ ok: true, order: o, eventId: '' }) };
      const payerId = newPayerId();
      return {
        patch: { status: 'APPROVED', approvedAt: 'now', payerId, payerEmail: `sb-${payerId.toLowerCase()}@personal.example.com`, captureOutcome: outcome === 'succeeded' ? 'COMPLETED' : 'DECLINED' },
        then: (o) => ({ ok: true, order: o, eventId: '' }),
      };
    });
    if (!result.ok) return result;
    const type: EventType = result.order.status === 'VOIDED' ? 'CHECKOUT.ORDER.VOIDED' : 'CHECKOUT.ORDER.APPROVED';
    return { ...result, eventId: await enqueueEvent(db, s.dispatcher, s.wire, s.webhookUrl, type, result.order) };
  });
}

type CaptureResult =
  | { ok: true; order: SandboxOrder; replay: boolean }
  | { ok: false; status: 404 | 422; details: ErrorDetail[] };

/** The merchant captures: APPROVED → COMPLETED with a capture as the buyer's funding source decides. */
export async function captureOrder(s: SandboxContext, orderId: string, requestId: string | null): Promise<CaptureResult> {
  return inTransaction(s.pool, async (db) => {
    const result = await mutateOrder<CaptureResult>(db, () => getOrder(db, s.clientId, orderId), (order) => {
      if (!order) return { answer: { ok: false, status: 404, details: [invalidResourceId(orderId)] } };
      if (order.status === 'COMPLETED') {
        return requestId !== null && requestId === order.captureRequestId
          ? { answer: { ok: true, order, replay: true } }
          : { answer: { ok: false, status: 422, details: [ALREADY_CAPTURED] } };
      }
      if (order.status === 'VOIDED') return { answer: { ok: false, status: 422, details: [COMPLETED_OR_VOIDED] } };
      if (order.status !== 'APPROVED') return { answer: { ok: false, status: 422, details: [NOT_APPROVED] } };
      const status = order.captureOutcome ?? 'COMPLETED';
      return {
        patch: {
          status: 'COMPLETED', captureId: newCaptureId(), captureStatus: status, captureRequestId: requestId, capturedAt: 'now',
          feeMinor: status === 'COMPLETED' ? paypalFee(order.amountMinor, order.currency) : 0n,
        },
        then: (o) => ({ ok: true, order: o, replay: false }),
      };
    });
    if (result.ok && !result.replay) {
      const type: EventType = result.order.captureStatus === 'COMPLETED' ? 'PAYMENT.CAPTURE.COMPLETED' : 'PAYMENT.CAPTURE.DENIED';
      await enqueueEvent(db, s.dispatcher, s.wire, s.webhookUrl, type, result.order);
    }
    return result;
  });
}

export function sandboxOrderJson(o: SandboxOrder, extra: Record<string, unknown> = {}, refunds: readonly SandboxRefund[] = []) {
  const time = (d: Date | null) => (d ? d.toISOString() : null);
  return {
    object: 'sandbox_order',
    channel: PAYPAL_CHANNEL,
    channel_reference: o.customId,
    order_id: o.id,
    status: o.status,
    amount: toJsonAmount(o.amountMinor),
    currency: o.currency,
    value: toPayPalValue(o.amountMinor, o.currency),
    capture_outcome: o.captureOutcome,
    capture_id: o.captureId,
    capture_status: o.captureStatus,
    refund_mode: o.refundMode.toLowerCase(),
    refunds: refunds.map(sandboxRefundJson),
    payer_id: o.payerId,
    created_at: time(o.createdAt),
    approved_at: time(o.approvedAt),
    captured_at: time(o.capturedAt),
    voided_at: time(o.voidedAt),
    ...extra,
  };
}

export function sandboxRefundJson(r: SandboxRefund) {
  return {
    object: 'sandbox_refund',
    refund_id: r.id,
    kind: r.kind.toLowerCase(),
    status: r.status,
    refund_reference: r.invoiceId,
    channel_reference: r.customId,
    capture_id: r.captureId,
    amount: toJsonAmount(r.amountMinor),
    currency: r.currency,
    value: toPayPalValue(r.amountMinor, r.currency),
    created_at: r.createdAt.toISOString(),
    completed_at: r.completedAt ? r.completedAt.toISOString() : null,
  };
}

// ---- HTML (the buyer's approval page) -----------------------------------------------------------------

function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

function page(title: string, body: string): string {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>${escapeHtml(title)}</title></head><body>${body}</body></html>`;
}

function checkoutHtml(o: SandboxOrder, prefix: string): string {
  const open = o.status === 'CREATED' || o.status === 'PAYER_ACTION_REQUIRED';
  const form = (action: string, label: string) =>
    `<form method="post" action="${escapeHtml(prefix)}/checkoutnow/${action}"><input type="hidden" name="token" value="${escapeHtml(o.id)}"><button type="submit">${label}</button></form>`;
  return page('PayPal Checkout (Knowpay sandbox)', [
    '<h1>PayPal Checkout (Knowpay sandbox)</h1>',
    `<p>${escapeHtml(o.description ?? '')}</p>`,
    `<p class="amount"><strong id="amount">${escapeHtml(toPayPalValue(o.amountMinor, o.currency) ?? '')}</strong> ${escapeHtml(o.currency)}</p>`,
    `<p>Order <code id="order_id">${escapeHtml(o.id)}</code>, status <code id="status">${escapeHtml(o.status)}</code></p>`,
    open ? form('approve', 'Pay Now') + form('cancel', 'Cancel and return') : '',
  ].join(''));
}

function errorHtml(message: string): string {
  return page('PayPal - error', `<h1>Things don't appear to be working at the moment.</h1><p>${escapeHtml(message)}</p>`);
}

function withQuery(url: string, params: Record<string, string>): string {
  const u = new URL(url);
  for (const [k, v] of Object.entries(params)) u.searchParams.set(k, v);
  return u.toString();
}

// ---- The plugin -----------------------------------------------------------------------------------------

const MAX_BODY_BYTES = 64 * 1024;
const FORM_TYPE = 'application/x-www-form-urlencoded';

function checkOptions(o: PayPalSandboxOptions): { key: KeyObject; baseUrl: string; webhookUrl: string } {
  if (!o.pool) throw new TypeError('paypalSandboxPlugin: pool is required');
  for (const k of ['clientId', 'clientSecret', 'webhookId', 'merchantId', 'merchantEmail', 'tokenSecret', 'certId', 'signingCertPem'] as const) {
    if (typeof o[k] !== 'string' || o[k] === '') throw new TypeError(`paypalSandboxPlugin: ${k} is required`);
  }
  if (!Number.isFinite(o.timeScale) || o.timeScale < 0) throw new TypeError('paypalSandboxPlugin: timeScale must be >= 0');
  return {
    key: createPrivateKey(o.signingKeyPem),
    baseUrl: new URL(o.publicBaseUrl).toString().replace(/\/+$/, ''),
    webhookUrl: new URL(o.webhookUrl).toString(),
  };
}

function parseJson(text: unknown): { ok: true; value: unknown } | { ok: false } {
  if (text === undefined || text === null || text === '') return { ok: true, value: undefined };
  if (typeof text !== 'string') return { ok: true, value: text };
  try {
    return { ok: true, value: JSON.parse(text) };
  } catch {
    return { ok: false };
  }
}

function headerOf(req: FastifyRequest, name: string): string | null {
  const v = req.headers[name];
  return typeof v === 'string' && v !== '' ? v : null;
}

export const paypalSandboxPlugin: FastifyPluginAsync<PayPalSandboxOptions> = async (app: FastifyInstance, opts) => {
  const { key, baseUrl, webhookUrl } = checkOptions(opts);
  const { pool, clientId } = opts;
  const prefix = app.prefix;
  const apiBase = `${baseUrl}${prefix}`;
  const tokenTtl = opts.tokenTtlSeconds ?? TOKEN_TTL_SECONDS;
  const certName = `CERT-${opts.certId}`;
  const wire: WireContext = { apiBase, merchantId: opts.merchantId, merchantEmail: opts.merchantEmail };
  const dispatcher = createNotificationDispatcher({
    pool,
    spec: paypalNotificationSpec({ webhookId: opts.webhookId, certUrl: `${apiBase}/v1/notifications/certs/${certName}`, key }),
    timeScale: opts.timeScale,
    ...(opts.pollIntervalMs !== undefined ? { pollIntervalMs: opts.pollIntervalMs } : {}),
    ...(opts.notifyTimeoutMs !== undefined ? { requestTimeoutMs: opts.notifyTimeoutMs } : {}),
    onError: (err) => app.log.error({ err }, 'paypal sandbox notification delivery failed'),
  });
  const sandbox: SandboxContext = { pool, clientId, wire, webhookUrl, dispatcher };
  const refunds: RefundSandboxContext = {
    pool, clientId,
    emit: (db, type, refund) => enqueueRefundEvent(db, dispatcher, wire, webhookUrl, type, refund),
  };
  /** The full order, with its capture's refunds. */
  const fullOrder = async (order: SandboxOrder) => orderJson(order, wire, order.captureId ? await listRefunds(pool, order.captureId) : []);

  // Bodies are parsed here, so malformed ones get PayPal's own error answers.
  // Only JSON (the API) and forms (OAuth, the approval page); anything else is a 415.
  app.removeAllContentTypeParsers();
  for (const type of ['application/json', FORM_TYPE]) {
    app.addContentTypeParser(type, { parseAs: 'string', bodyLimit: MAX_BODY_BYTES }, (_req, body, done) => done(null, body));
  }
  app.setErrorHandler((err: Error & { statusCode?: number }, req, reply) => {
    const given = err.statusCode ?? 500;
    // Framework-level refusals (too large, unreadable body) in PayPal's shape; 5xx as PayPal's 500.
    const status = given === 415 ? 415 : given >= 400 && given < 500 ? 400 : 500;
    if (status === 500) req.log.error({ err }, 'paypal sandbox error');
    const debugId = newDebugId();
    return reply.code(status).header('paypal-debug-id', debugId).type('application/json').send(errorBody(status, [], debugId));
  });

  if (opts.deliverNotifications !== false) app.addHook('onReady', async () => dispatcher.start());
  app.addHook('onClose', async () => dispatcher.stop());

  const paypalError = (reply: FastifyReply, status: number, details: ErrorDetail[] = []) => {
    const debugId = newDebugId();
    return reply.code(status).header('paypal-debug-id', debugId).type('application/json').send(errorBody(status, details, debugId));
  };

  /** PayPal's REST bearer check; OAuth-style bodies for bad tokens, as PayPal answers them. */
  async function authenticate(req: FastifyRequest, reply: FastifyReply): Promise<boolean> {
    const auth = headerOf(req, 'authorization');
    const m = auth ? /^Bearer\s+(\S+)$/i.exec(auth) : null;
    if (!m) {
      await paypalError(reply, 401);
      return false;
    }
    const check = checkAccessToken(opts.tokenSecret, clientId, m[1]!);
    if (check.ok) return true;
    await reply.code(401).type('application/json').send({
      error: 'invalid_token',
      error_description: check.expired ? 'Access Token not found in cache' : 'Token signature verification failed',
    });
    return false;
  }

  app.post('/v1/oauth2/token', async (req, reply) => {
    const auth = headerOf(req, 'authorization');
    const m = auth ? /^Basic\s+([A-Za-z0-9+/=]+)$/i.exec(auth) : null;
    const decoded = m ? Buffer.from(m[1]!, 'base64').toString('utf8') : '';
    const sep = decoded.indexOf(':');
    const givenId = sep > 0 ? decoded.slice(0, sep) : '';
    const givenSecret = sep > 0 ? decoded.slice(sep + 1) : '';
    if (!m || !sameSecret(givenId, clientId) || !sameSecret(givenSecret, opts.clientSecret)) {
      return reply.code(401).type('application/json').send({ error: 'invalid_client', error_description: 'Client Authentication failed' });
    }
    const form = typeof req.body === 'string' ? new URLSearchParams(req.body) : new URLSearchParams();
    const grant = form.get('grant_type');
    if (!grant) return reply.code(400).type('application/json').send({ error: 'unsupported_grant_type', error_description: 'Grant Type is NULL' });
    if (grant !== 'client_credentials') return reply.code(400).type('application/json').send({ error: 'unsupported_grant_type', error_description: 'unsupported grant_type' });
    return reply.code(200).type('application/json').send({
      scope: 'https://uri.paypal.com/services/payments/payment https://uri.paypal.com/services/payments/refund https://uri.paypal.com/services/payments/orders',
      access_token: mintAccessToken(opts.tokenSecret, clientId, tokenTtl),
      token_type: 'Bearer',
      app_id: `APP-${opts.merchantId.slice(0, 12)}K`,
      expires_in: tokenTtl,
      nonce: `${new Date().toISOString().replace(/\.\d{3}Z$/, 'Z')}${newDebugId()}`,
    });
  });

  app.post('/v2/checkout/orders', async (req, reply) => {
    if (!(await authenticate(req, reply))) return reply;
    const parsed = parseJson(req.body);
    const check = parseCreateOrder(parsed.ok ? parsed.value : null);
    if (!check.ok) return paypalError(reply, check.status, check.details);
    const requestId = headerOf(req, 'paypal-request-id');
    if (requestId !== null && requestId.length > 108) {
      return paypalError(reply, 400, [{ field: 'PayPal-Request-Id', location: 'header', issue: 'INVALID_STRING_LENGTH', description: 'The value of a field is either too short or too long.' }]);
    }
    const { order, created } = await insertOrder(pool, { clientId, requestId, ...check.order });
    const full = headerOf(req, 'prefer')?.includes('return=representation') ?? false;
    return reply.code(created ? 201 : 200).header('paypal-debug-id', newDebugId()).type('application/json')
      .send(full ? orderJson(order, wire) : minimalOrderJson(order, wire));
  });

  app.get<{ Params: { id: string } }>('/v2/checkout/orders/:id', async (req, reply) => {
    if (!(await authenticate(req, reply))) return reply;
    const order = await getOrder(pool, clientId, req.params.id);
    if (!order) return paypalError(reply, 404, [invalidResourceId(req.params.id)]);
    return reply.code(200).header('paypal-debug-id', newDebugId()).type('application/json').send(await fullOrder(order));
  });

  app.post<{ Params: { id: string } }>('/v2/checkout/orders/:id/capture', async (req, reply) => {
    if (!(await authenticate(req, reply))) return reply;
    const parsed = parseJson(req.body);
    if (!parsed.ok || (parsed.value !== undefined && (parsed.value === null || typeof parsed.value !== 'object' || Array.isArray(parsed.value)))) {
      return paypalError(reply, 400, [{ field: '/', location: 'body', issue: 'MALFORMED_REQUEST_JSON', description: 'The request JSON is not well formed.' }]);
    }
    const result = await captureOrder(sandbox, req.params.id, headerOf(req, 'paypal-request-id'));
    if (!result.ok) return paypalError(reply, result.status, result.details);
    dispatcher.kick();
    const full = headerOf(req, 'prefer')?.includes('return=representation') ?? false;
    return reply.code(result.replay ? 200 : 201).header('paypal-debug-id', newDebugId()).type('application/json')
      .send(full ? await fullOrder(result.order) : minimalOrderJson(result.order, wire));
  });

  app.post<{ Params: { id: string } }>('/v2/payments/captures/:id/refund', async (req, reply) => {
    if (!(await authenticate(req, reply))) return reply;
    const parsed = parseJson(req.body);
    const check = parseRefundRequest(parsed.ok ? parsed.value : null);
    if (!check.ok) return paypalError(reply, check.status, check.details);
    const requestId = headerOf(req, 'paypal-request-id');
    if (requestId !== null && requestId.length > 108) {
      return paypalError(reply, 400, [{ field: 'PayPal-Request-Id', location: 'header', issue: 'INVALID_STRING_LENGTH', description: 'The value of a field is either too short or too long.' }]);
    }
    const result = await refundCapture(refunds, req.params.id, requestId, check.refund);
    if (!result.ok) return paypalError(reply, result.status, result.details);
    dispatcher.kick();
    const full = headerOf(req, 'prefer')?.includes('return=representation') ?? false;
    const r = result.refund;
    return reply.code(result.replay ? 200 : 201).header('paypal-debug-id', newDebugId()).type('application/json')
      .send(full ? refundJson(r, wire) : { id: r.id, status: r.status, links: (refundJson(r, wire)['links'] as unknown[]) });
  });

  app.get<{ Params: { id: string } }>('/v2/payments/refunds/:id', async (req, reply) => {
    if (!(await authenticate(req, reply))) return reply;
    const refund = await getRefund(pool, clientId, req.params.id);
    if (!refund) return paypalError(reply, 404, [invalidId('refund_id', req.params.id)]);
    return reply.code(200).header('paypal-debug-id', newDebugId()).type('application/json').send(refundJson(refund, wire));
  });

  app.get<{ Params: { id: string } }>('/v2/payments/captures/:id', async (req, reply) => {
    if (!(await authenticate(req, reply))) return reply;
    const order = await findOrderByCapture(pool, clientId, req.params.id);
    if (!order) return paypalError(reply, 404, [invalidId('capture_id', req.params.id)]);
    return reply.code(200).header('paypal-debug-id', newDebugId()).type('application/json').send(captureJson(order, wire, true));
  });

  app.get<{ Querystring: Record<string, string | undefined> }>('/v1/reporting/transactions', async (req, reply) => {
    if (!(await authenticate(req, reply))) return reply;
    const q: Record<string, string | undefined> = {};
    for (const [k, v] of Object.entries(req.query ?? {})) if (typeof v === 'string') q[k] = v;
    const answer = await transactionSearch(pool, clientId, opts.merchantId, q);
    return reply.code(answer.status).header('paypal-debug-id', newDebugId()).type('application/json').send(answer.body);
  });

  app.get<{ Params: { name: string } }>('/v1/notifications/certs/:name', async (req, reply) => {
    if (req.params.name !== certName) return paypalError(reply, 404, [{ field: 'cert_id', value: req.params.name, location: 'path', issue: 'INVALID_RESOURCE_ID', description: 'Specified resource ID does not exist.' }]);
    return reply.code(200).type('application/x-pem-file').send(opts.signingCertPem);
  });

  app.get<{ Querystring: { token?: string } }>('/checkoutnow', async (req, reply) => {
    const token = typeof req.query.token === 'string' ? req.query.token : '';
    const order = token ? await getOrder(pool, clientId, token) : null;
    if (!order) return reply.code(404).type('text/html; charset=utf-8').send(errorHtml('This checkout session is not valid.'));
    return reply.code(200).type('text/html; charset=utf-8').send(checkoutHtml(order, prefix));
  });

  app.post<{ Params: { action: string } }>('/checkoutnow/:action', async (req, reply) => {
    const token = typeof req.body === 'string' ? new URLSearchParams(req.body).get('token') : null;
    const order = token ? await getOrder(pool, clientId, token) : null;
    if (!order || (req.params.action !== 'approve' && req.params.action !== 'cancel')) {
      return reply.code(404).type('text/html; charset=utf-8').send(errorHtml('This checkout session is not valid.'));
    }
    if (req.params.action === 'cancel') {
      // The buyer walks away: the order stays as it is (it is not voided) and they go back to the merchant.
      return order.cancelUrl ? reply.redirect(withQuery(order.cancelUrl, { token: order.id }), 302) : reply.type('text/html; charset=utf-8').send(checkoutHtml(order, prefix));
    }
    const result = await buyerActs(sandbox, (db) => getOrder(db, clientId, order.id), 'succeeded', `with id ${order.id}`);
    dispatcher.kick();
    if (!result.ok) return reply.code(result.status).type('text/html; charset=utf-8').send(errorHtml(result.message));
    const back = result.order.returnUrl;
    if (back) return reply.redirect(withQuery(back, { token: result.order.id, PayerID: result.order.payerId ?? '' }), 302);
    return reply.code(200).type('text/html; charset=utf-8').send(checkoutHtml(result.order, prefix));
  });

  app.post('/simulate', async (req, reply) => {
    const parsed = parseJson(req.body);
    const body = parsed.ok ? objectBody(parsed.value) : null;
    if (!body) return sendSandboxError(reply, 400, 'parameter_invalid', 'body must be a JSON object');
    const ref = body['channel_reference'];
    const outcome = body['outcome'];
    if (typeof ref !== 'string' || ref === '') return sendSandboxError(reply, 400, 'parameter_missing', 'channel_reference is required', 'channel_reference');
    if (typeof outcome !== 'string' || !(OUTCOMES as readonly string[]).includes(outcome)) {
      return sendSandboxError(reply, 400, 'parameter_invalid', `outcome must be one of ${OUTCOMES.join(', ')}`, 'outcome');
    }
    const result = await buyerActs(sandbox, (db) => findOrderByCustomId(db, clientId, ref), outcome as SimulateOutcome, `with custom_id ${ref}`);
    if (!result.ok) return sendSandboxError(reply, result.status, result.code, result.message, 'channel_reference');
    dispatcher.kick();
    return reply.code(200).send(sandboxOrderJson(result.order, { notification: { event_id: result.eventId }, approve_url: approveUrl(result.order, wire) }));
  });

  app.post('/refunds/mode', async (req, reply) => {
    const parsed = parseJson(req.body);
    const body = parsed.ok ? objectBody(parsed.value) : null;
    if (!body) return sendSandboxError(reply, 400, 'parameter_invalid', 'body must be a JSON object');
    const ref = body['channel_reference'];
    const mode = body['mode'];
    if (typeof ref !== 'string' || ref === '') return sendSandboxError(reply, 400, 'parameter_missing', 'channel_reference is required', 'channel_reference');
    if (mode !== 'completed' && mode !== 'pending') return sendSandboxError(reply, 400, 'parameter_invalid', 'mode must be one of completed, pending', 'mode');
    const result = await setRefundMode(refunds, ref, mode === 'pending' ? 'PENDING' : 'COMPLETED');
    if (!result.ok) return sendSandboxError(reply, result.status, result.code, result.message, 'channel_reference');
    return reply.code(200).send(sandboxOrderJson(result.order));
  });

  app.post('/refunds/simulate', async (req, reply) => {
    const parsed = parseJson(req.body);
    const body = parsed.ok ? objectBody(parsed.value) : null;
    if (!body) return sendSandboxError(reply, 400, 'parameter_invalid', 'body must be a JSON object');
    const refundReference = body['refund_reference'];
    const refundId = body['channel_refund_id'];
    const outcome = body['outcome'];
    for (const [key, v] of [['refund_reference', refundReference], ['channel_refund_id', refundId]] as const) {
      if (v !== undefined && (typeof v !== 'string' || v === '')) return sendSandboxError(reply, 400, 'parameter_invalid', `${key} must be a non-empty string`, key);
    }
    if (refundReference === undefined && refundId === undefined) {
      return sendSandboxError(reply, 400, 'parameter_missing', 'refund_reference or channel_refund_id is required', 'refund_reference');
    }
    if (typeof outcome !== 'string' || !(REFUND_OUTCOMES as readonly string[]).includes(outcome)) {
      return sendSandboxError(reply, 400, 'parameter_invalid', `outcome must be one of ${REFUND_OUTCOMES.join(', ')}`, 'outcome');
    }
    const result = await finishRefund(refunds, {
      ...(typeof refundReference === 'string' ? { refundReference } : {}), ...(typeof refundId === 'string' ? { refundId } : {}),
    }, outcome as SimulateRefundOutcome);
    if (!result.ok) return sendSandboxError(reply, result.status, result.code, result.message, refundId !== undefined ? 'channel_refund_id' : 'refund_reference');
    dispatcher.kick();
    return reply.code(200).send({ ...sandboxRefundJson(result.refund), notification: result.eventId ? { event_id: result.eventId } : null });
  });

  app.post('/reversals/simulate', async (req, reply) => {
    const parsed = parseJson(req.body);
    const body = parsed.ok ? objectBody(parsed.value) : null;
    if (!body) return sendSandboxError(reply, 400, 'parameter_invalid', 'body must be a JSON object');
    const ref = body['channel_reference'];
    const amount = body['amount'];
    if (typeof ref !== 'string' || ref === '') return sendSandboxError(reply, 400, 'parameter_missing', 'channel_reference is required', 'channel_reference');
    if (amount !== undefined && !(typeof amount === 'number' && Number.isSafeInteger(amount) && amount > 0)) {
      return sendSandboxError(reply, 400, 'parameter_invalid', 'amount must be a positive integer of minor units', 'amount');
    }
    const result = await reverseCapture(refunds, ref, amount === undefined ? null : BigInt(amount));
    if (!result.ok) return sendSandboxError(reply, result.status, result.code, result.message, result.param);
    dispatcher.kick();
    return reply.code(200).send({ ...sandboxRefundJson(result.refund), notification: result.eventId ? { event_id: result.eventId } : null });
  });

  app.get<{ Params: { reference: string } }>('/orders/:reference', async (req, reply) => {
    const order = await findOrderByCustomId(pool, clientId, req.params.reference);
    if (!order) return sendSandboxError(reply, 404, 'order_not_found', `no PayPal sandbox order with custom_id ${req.params.reference}`);
    return reply.send(sandboxOrderJson(order, {}, order.captureId ? await listRefunds(pool, order.captureId) : []));
  });
};

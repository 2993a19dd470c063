/**
 * WeChat Pay sandbox: WeChat Pay's side of API v3 as a Fastify plugin. Register with
 * `app.register(wechatpaySandboxPlugin, { prefix: '/sandbox/wechatpay', ...options })`.
 *
 * Routes (under the prefix):
 * - `POST /v3/pay/transactions/{native|jsapi|app|h5}`  order (prepay); answers code_url / prepay_id / h5_url.
 * - `GET  /v3/pay/transactions/out-trade-no/:no?mchid=` and `GET /v3/pay/transactions/id/:id?mchid=`  query.
 * - `POST /v3/pay/transactions/out-trade-no/:no/close`  close → 204.
 * - `POST /v3/refund/domestic/refunds`  refund (partial allowed, several per trade, idempotent per
 *   out_refund_no); answers PROCESSING. `GET /v3/refund/domestic/refunds/:out_refund_no`  query.
 *   Every /v3 request must carry the merchant's Authorization signature (else 401 SIGN_ERROR);
 *   every answer is signed with the platform key (Wechatpay-* headers, PUB_KEY_ID_ mode).
 * - `GET  /v3/bill/tradebill?bill_date=&bill_type=ALL`  the day's trade bill → {hash_type, hash_value, download_url};
 *   `GET /v3/billdownload/file?token=` serves it (signed request, unsigned answer). See sandbox-bill.ts.
 * - `GET  /cgi-bin/mmpayweb-bin/checkmweb?prepay_id=`  the H5 cashier that h5_url opens.
 * - `GET  /scan?code_url=weixin://…`              what scanning a Native code shows.
 * - `POST /cashier/pay`                            the cashier's pay button (form prepay_id, redirect_url).
 * - `POST /client/request-payment`                 what the WeChat client checks when the JSAPI / APP
 *                                                  parameters are handed to it (paySign / sign verified).
 * - `POST /simulate` `{ channel_reference, outcome }` plays the buyer.
 * - `POST /refunds/simulate` `{ refund_reference? | channel_refund_id?, outcome: "succeeded"|"failed",
 *   failure_status?: "ABNORMAL"|"CLOSED" }` finishes a PROCESSING refund now (failed → ABNORMAL by default).
 * - `GET  /trades/:out_trade_no`                   the sandbox's view of a trade and its refunds (debugging).
 * State is in PostgreSQL (0010_wechatpay_sandbox.sql, 0021_wechatpay_refunds.sql). WeChat Pay calls
 * back for successful payments (TRANSACTION.SUCCESS) and for finished refunds (REFUND.SUCCESS,
 * REFUND.ABNORMAL, REFUND.CLOSED, to the refund's notify_url; none without one); callbacks go
 * through the shared dispatcher with WeChat Pay's retry schedule, so /sandbox/faults applies. A
 * failed or closed trade is found by query. Refunds are asynchronous, as at WeChat Pay: each
 * finishes by itself (SUCCESS) `refundSettleMs` × timeScale after it was accepted, unless
 * /refunds/simulate ends it first; `refundSettleMs: null` leaves them PROCESSING until simulated.
 */
import { Readable } from 'node:stream';
import { createPublicKey, generateKeyPair, randomInt, randomUUID, type KeyObject } from 'node:crypto';
import { promisify } from 'node:util';
import type { FastifyInstance, FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import type { Pool } from '../../store/db.ts';
import { inTransaction } from '../../store/db.ts';
import { formatDecimal, toJsonAmount } from '../../domain/money.ts';
import { createNotificationDispatcher, type NotificationChannelSpec, type NotificationDispatcher } from '../sandbox/dispatcher.ts';
import { sendSandboxError } from '../sandbox/errors.ts';
import {
  encryptResource, loadPrivateKey, newHex, newNonce, signatureHeaders, verifyAppPayParams, verifyJsapiPayParams,
} from './sign.ts';
import { formatRfc3339 } from './transformers.ts';
import {
  checkAuthorization, closeOrder, createOrder, isOrderMethod, parseJsonBody, queryByOutTradeNo, queryByTransactionId,
  transactionJson, type ApiAnswer, type ApiContext,
} from './sandbox-api.ts';
import {
  getTrade, getTradeByCodeUrl, isExpired, isOpen, mutateTrade, newOpenid, newTransactionId, type SandboxTrade, type TradeKey,
} from './sandbox-trades.ts';
import {
  createRefund, finishRefund, listRefundsOfTrade, queryRefund, refundView, settleDueRefunds, type FinalRefundStatus, type RefundKey,
} from './sandbox-refunds.ts';
import { billDownload, tradeBill, type BillDeps } from './sandbox-bill.ts';

export const WECHATPAY_CHANNEL = 'wechatpay';

/**
 * WeChat Pay's callback retry schedule: at once, then 15s, 15s, 30s, 3m, 10m, 20m, 30m, 30m, 30m,
 * 60m, 3h, 3h, 3h, 6h, 6h (16 attempts, about 24 h).
 */
export const WECHATPAY_NOTIFY_SCHEDULE_MS: readonly number[] = Object.freeze(
  [0, 15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800, 10800, 21600, 21600].map((s) => s * 1000),
);

export interface WechatpaySandboxKeys {
  /** Give to the connector (`privateKey`). */
  merchantPrivateKey: string;
  /** Give to the sandbox (`merchantPublicKey`): it verifies the merchant's Authorization. */
  merchantPublicKey: string;
  /** The merchant API certificate serial (serial_no). */
  merchantSerial: string;
  /** Give to the sandbox: it signs answers and callbacks. */
  platformPrivateKey: string;
  /** Give to the connector (`platformKeys[platformPublicKeyId]`). */
  platformPublicKey: string;
  /** `PUB_KEY_ID_…`: the Wechatpay-Serial of the sandbox's signatures. */
  platformPublicKeyId: string;
  /** 32 ASCII characters, shared by both sides (callback encryption). */
  apiV3Key: string;
}

const generateRsa = promisify(generateKeyPair);

/** Two RSA-2048 pairs (the merchant's API key and "WeChat Pay's" key), their ids, and an APIv3 key. */
export async function generateWechatpaySandboxKeys(): Promise<WechatpaySandboxKeys> {
  const pair = () =>
    generateRsa('rsa', { modulusLength: 2048, publicKeyEncoding: { type: 'spki', format: 'pem' }, privateKeyEncoding: { type: 'pkcs8', format: 'pem' } });
  const [merchant, platform] = await Promise.all([pair(), pair()]);
  const digits = (n: number) => Array.from({ length: n }, () => String(randomInt(10))).join('');
  return {
    merchantPrivateKey: merchant.privateKey,
    merchantPublicKey: merchant.publicKey,
    merchantSerial: newHex(20),
    platformPrivateKey: platform.privateKey,
    platformPublicKey: platform.publicKey,
    platformPublicKeyId: `PUB_KEY_ID_${digits(34)}`,
    apiV3Key: newNonce(32),
  };
}

export interface WechatpaySandboxOptions {
  pool: Pool;
  mchid: string;
  /** The AppIDs bound to the merchant (orders with another appid get APPID_MCHID_NOT_MATCH). */
  appids: readonly string[];
  merchantSerial: string;
  merchantPublicKey: string;
  platformPrivateKey: string;
  platformPublicKeyId: string;
  apiV3Key: string;
  /** e.g. http://127.0.0.1:4000, for h5_url. */
  publicBaseUrl: string;
  /** Multiplies WeChat Pay's callback retry delays: 1 = real time, 0.001 in tests. */
  timeScale: number;
  /** Run the callback delivery loop in this process (default true). */
  deliverNotifications?: boolean;
  /**
   * How long WeChat Pay takes to finish a refund, in real milliseconds (× timeScale): a refund is
   * PROCESSING until then, then SUCCESS with its REFUND.SUCCESS callback. Default 60 000 (a refund
   * to the buyer's 零钱 takes about a minute). null: refunds stay PROCESSING until /refunds/simulate.
   */
  refundSettleMs?: number | null;
  /** Run the loop that finishes due refunds in this process (default true). */
  settleRefunds?: boolean;
  pollIntervalMs?: number;
  notifyTimeoutMs?: number;
  /** The sandbox's clock for the Authorization timestamp window (tests move it). */
  now?: () => Date;
}

/** A queued callback: the exact JSON body (its bytes never change across retries). */
export interface CallbackPayload extends Record<string, unknown> {
  body: string;
}

/** Callbacks: JSON POST signed per attempt (fresh timestamp and nonce); any 2xx acknowledges. */
export function wechatpayNotificationSpec(platformPrivateKey: KeyObject, platformPublicKeyId: string): NotificationChannelSpec<CallbackPayload> {
  return {
    channel: WECHATPAY_CHANNEL,
    scheduleMs: WECHATPAY_NOTIFY_SCHEDULE_MS,
    buildRequest(payload, ctx) {
      const headers = signatureHeaders(payload.body, platformPublicKeyId, platformPrivateKey, Math.floor(ctx.now.getTime() / 1000));
      return {
        url: ctx.url,
        method: 'POST',
        headers: { 'content-type': 'application/json', 'user-agent': 'Mozilla/4.0', ...headers },
        body: payload.body,
      };
    },
    isAcknowledged: ({ status }) => status >= 200 && status < 300,
  };
}

/** The TRANSACTION.SUCCESS callback body for a paid trade, resource encrypted with the APIv3 key. */
export function transactionSuccessBody(t: SandboxTrade, eventId: string, apiV3Key: Buffer, now = new Date()): string {
  const plaintext = JSON.stringify({
    mchid: t.mchid,
    appid: t.appid,
    out_trade_no: t.outTradeNo,
    transaction_id: t.transactionId,
    trade_type: t.tradeType,
    trade_state: t.tradeState,
    trade_state_desc: '支付成功',
    bank_type: 'OTHERS',
    attach: t.attach ?? '',
    success_time: formatRfc3339(t.successTime ?? now),
    payer: { openid: t.payerOpenid },
    amount: { total: Number(t.amountFen), payer_total: Number(t.amountFen), currency: t.currency, payer_currency: t.currency },
  });
  return JSON.stringify({
    id: eventId,
    create_time: formatRfc3339(now),
    resource_type: 'encrypt-resource',
    event_type: 'TRANSACTION.SUCCESS',
    summary: '支付成功',
    resource: encryptResource(plaintext, apiV3Key, 'transaction', 'transaction'),
  });
}

export type SimulateOutcome = 'succeeded' | 'failed' | 'canceled';
const OUTCOMES: readonly SimulateOutcome[] = ['succeeded', 'failed', 'canceled'];

type SimulateResult =
  | { ok: true; trade: SandboxTrade; eventId: string | null }
  | { ok: false; status: 404 | 409; code: string; message: string };

/**
 * Change the trade as the buyer would and, for a payment, enqueue WeChat Pay's callback, in one
 * transaction. failed → PAYERROR, canceled → CLOSED; WeChat Pay sends no callback for those.
 */
export async function simulateBuyer(
  pool: Pool,
  dispatcher: NotificationDispatcher<CallbackPayload>,
  key: TradeKey,
  outcome: SimulateOutcome,
  apiV3Key: Buffer,
): Promise<SimulateResult> {
  return inTransaction(pool, async (db) => {
    const result = await mutateTrade<SimulateResult>(db, key, (t) => {
      if (!t) return { answer: { ok: false, status: 404, code: 'trade_not_found', message: `no WeChat Pay sandbox trade ${describeKey(key)}` } };
      if (!isOpen(t)) return { answer: { ok: false, status: 409, code: 'trade_already_final', message: `trade ${t.outTradeNo} is already ${t.tradeState}` } };
      if (isExpired(t)) return { answer: { ok: false, status: 409, code: 'trade_expired', message: `trade ${t.outTradeNo} expired at ${t.timeExpire!.toISOString()}` } };
      const then = (trade: SandboxTrade) => ({ ok: true as const, trade, eventId: null });
      if (outcome === 'succeeded') {
        return { patch: { tradeState: 'SUCCESS', transactionId: newTransactionId(), payerOpenid: newOpenid(), successTime: 'now' }, requireUnexpired: true, then };
      }
      return outcome === 'failed'
        ? { patch: { tradeState: 'PAYERROR' }, requireUnexpired: true, then }
        : { patch: { tradeState: 'CLOSED', closedAt: 'now' }, then };
    });
    if (!result.ok || result.trade.tradeState !== 'SUCCESS') return result;
    const eventId = randomUUID();
    await dispatcher.enqueue(db, {
      channelReference: result.trade.outTradeNo,
      eventId,
      url: result.trade.notifyUrl,
      payload: { body: transactionSuccessBody(result.trade, eventId, apiV3Key) },
    });
    return { ...result, eventId };
  });
}

function describeKey(key: TradeKey): string {
  if ('outTradeNo' in key) return `with out_trade_no ${key.outTradeNo}`;
  return 'transactionId' in key ? `with transaction_id ${key.transactionId}` : `with prepay_id ${key.prepayId}`;
}

/** The sandbox's own view of a trade (Knowpay style, for /simulate and /trades). */
export function tradeView(t: SandboxTrade, extra: Record<string, unknown> = {}) {
  const time = (d: Date | null) => (d ? d.toISOString() : null);
  return {
    object: 'sandbox_trade',
    channel: WECHATPAY_CHANNEL,
    mchid: t.mchid,
    appid: t.appid,
    channel_reference: t.outTradeNo,
    out_trade_no: t.outTradeNo,
    transaction_id: t.transactionId,
    prepay_id: t.prepayId,
    trade_type: t.tradeType,
    trade_state: t.tradeState,
    amount: toJsonAmount(t.amountFen),
    currency: t.currency,
    description: t.description,
    notify_url: t.notifyUrl,
    code_url: t.codeUrl,
    payer_openid: t.payerOpenid,
    time_expire: time(t.timeExpire),
    success_time: time(t.successTime),
    closed_at: time(t.closedAt),
    ...extra,
  };
}

// ---- HTML (cashier) ---------------------------------------------------------------------------------

function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

function page(title: string, body: string): string {
  return `<!doctype html><html lang="zh-CN"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>${escapeHtml(title)}</title></head><body>${body}</body></html>`;
}

export function cashierHtml(t: SandboxTrade, prefix: string, redirectUrl: string | null): string {
  const rows = [['商品 Description', t.description], ['商户订单号 out_trade_no', t.outTradeNo], ['交易类型 trade_type', t.tradeType], ['状态 trade_state', t.tradeState]];
  const table = rows.map(([k, v]) => `<tr><th>${escapeHtml(k!)}</th><td>${escapeHtml(v!)}</td></tr>`).join('');
  const payForm = isOpen(t) && !isExpired(t)
    ? `<form method="post" action="${escapeHtml(prefix)}/cashier/pay"><input type="hidden" name="prepay_id" value="${escapeHtml(t.prepayId)}">${redirectUrl ? `<input type="hidden" name="redirect_url" value="${escapeHtml(redirectUrl)}">` : ''}<button type="submit">确认支付 Pay</button></form>`
    : '';
  return page('微信支付沙箱', `<h1>微信支付沙箱收银台 (Knowpay sandbox)</h1><p class="amount">¥ <strong id="amount_total">${formatDecimal(t.amountFen, 'CNY')}</strong> CNY</p><table>${table}</table>${payForm}`);
}

function errorHtml(message: string): string {
  return page('微信支付 - 错误', `<h1>微信支付沙箱：请求错误</h1><p id="error">${escapeHtml(message)}</p>`);
}

// ---- The plugin ---------------------------------------------------------------------------------------

const JSON_TYPE = 'application/json';
const FORM_TYPE = 'application/x-www-form-urlencoded';
const MAX_BODY_BYTES = 64 * 1024;

interface Checked {
  merchantPublicKey: KeyObject;
  platformPrivateKey: KeyObject;
  apiV3Key: Buffer;
  baseUrl: string;
  /** Real milliseconds until a refund finishes by itself; null: never. */
  refundSettleMs: number | null;
}

export const DEFAULT_REFUND_SETTLE_MS = 60_000;
const MAX_REFUND_SETTLE_MS = 7 * 24 * 3600_000;

function checkOptions(o: WechatpaySandboxOptions): Checked {
  if (!o.pool) throw new TypeError('wechatpaySandboxPlugin: pool is required');
  if (!/^\d{1,32}$/.test(o.mchid ?? '')) throw new TypeError('wechatpaySandboxPlugin: mchid must be digits');
  if (!Array.isArray(o.appids) || o.appids.length === 0) throw new TypeError('wechatpaySandboxPlugin: appids are required');
  if (!o.merchantSerial || !o.platformPublicKeyId) throw new TypeError('wechatpaySandboxPlugin: merchantSerial and platformPublicKeyId are required');
  if (!Number.isFinite(o.timeScale) || o.timeScale < 0) throw new TypeError('wechatpaySandboxPlugin: timeScale must be >= 0');
  const apiV3Key = Buffer.from(o.apiV3Key ?? '', 'utf8');
  if (apiV3Key.length !== 32) throw new TypeError('wechatpaySandboxPlugin: apiV3Key must be 32 bytes');
  const baseUrl = new URL(o.publicBaseUrl).toString().replace(/\/+$/, '');
  const settle = o.refundSettleMs === undefined ? DEFAULT_REFUND_SETTLE_MS : o.refundSettleMs;
  if (settle !== null && (!Number.isFinite(settle) || settle < 0 || settle > MAX_REFUND_SETTLE_MS)) {
    throw new TypeError(`wechatpaySandboxPlugin: refundSettleMs must be null or 0 to ${MAX_REFUND_SETTLE_MS}`);
  }
  return {
    merchantPublicKey: createPublicKey(o.merchantPublicKey),
    platformPrivateKey: loadPrivateKey(o.platformPrivateKey),
    apiV3Key,
    baseUrl,
    refundSettleMs: settle,
  };
}

function bodyBytes(req: FastifyRequest): Buffer {
  return Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
}

function queryOf(req: FastifyRequest): Record<string, string | undefined> {
  const url = req.raw.url ?? '';
  const q = url.includes('?') ? new URLSearchParams(url.slice(url.indexOf('?') + 1)) : new URLSearchParams();
  const out: Record<string, string | undefined> = {};
  for (const [k, v] of q) out[k] = k in out ? undefined : v; // repeated → ambiguous → absent
  return out;
}

function jsonOf(req: FastifyRequest): Record<string, unknown> | null {
  const parsed = parseJsonBody(bodyBytes(req));
  return parsed.ok ? parsed.value : null;
}

export const wechatpaySandboxPlugin: FastifyPluginAsync<WechatpaySandboxOptions> = async (app: FastifyInstance, opts) => {
  const checked = checkOptions(opts);
  const { pool, mchid } = opts;
  const prefix = app.prefix;
  const now = opts.now ?? (() => new Date());
  const appids = new Set(opts.appids);
  const dispatcher = createNotificationDispatcher<CallbackPayload>({
    pool,
    spec: wechatpayNotificationSpec(checked.platformPrivateKey, opts.platformPublicKeyId),
    timeScale: opts.timeScale,
    ...(opts.pollIntervalMs !== undefined ? { pollIntervalMs: opts.pollIntervalMs } : {}),
    ...(opts.notifyTimeoutMs !== undefined ? { requestTimeoutMs: opts.notifyTimeoutMs } : {}),
    onError: (err) => app.log.error({ err }, 'wechatpay sandbox callback delivery failed'),
  });
  const apiContext = (): ApiContext => ({ db: pool, mchid, appids, h5CashierUrl: `${checked.baseUrl}${prefix}/cgi-bin/mmpayweb-bin/checkmweb` });

  // Signatures cover the exact body bytes: keep them, in this plugin only.
  for (const type of [JSON_TYPE, FORM_TYPE]) if (app.hasContentTypeParser(type)) app.removeContentTypeParser(type);
  app.addContentTypeParser(JSON_TYPE, { parseAs: 'buffer', bodyLimit: MAX_BODY_BYTES }, (_req, body, done) => done(null, body));
  app.addContentTypeParser(FORM_TYPE, { parseAs: 'buffer', bodyLimit: MAX_BODY_BYTES }, (_req, body, done) => done(null, body));

  if (opts.deliverNotifications !== false) app.addHook('onReady', async () => dispatcher.start());
  app.addHook('onClose', async () => dispatcher.stop());

  // Refunds finish by themselves: a bounded pass over due refunds every so often (a quarter of the
  // scaled settle delay, 20 ms to 1 s), in every process that runs it (compare-and-set decides).
  const settleInMs = checked.refundSettleMs === null ? null : checked.refundSettleMs * opts.timeScale;
  const settler = { timer: null as NodeJS.Timeout | null, running: false, pass: null as Promise<void> | null };
  if (settleInMs !== null && opts.settleRefunds !== false) {
    const intervalMs = Math.max(20, Math.min(1000, Math.floor(settleInMs / 4)));
    const tick = () => {
      settler.timer = null;
      if (!settler.running) return;
      settler.pass = settleDueRefunds(pool, dispatcher, mchid, checked.apiV3Key)
        .then((n) => { if (n > 0) dispatcher.kick(); })
        .catch((err: unknown) => app.log.error({ err }, 'wechatpay sandbox refund settling failed'))
        .finally(() => {
          settler.pass = null;
          if (settler.running) settler.timer = setTimeout(tick, intervalMs);
        });
    };
    app.addHook('onReady', async () => {
      settler.running = true;
      settler.timer = setTimeout(tick, intervalMs);
    });
    app.addHook('onClose', async () => {
      settler.running = false;
      if (settler.timer) clearTimeout(settler.timer);
      await settler.pass;
    });
  }

  /** Send an API answer the way WeChat Pay does: JSON, signed with the platform key (401s are not). */
  function send(reply: FastifyReply, answer: ApiAnswer): FastifyReply {
    const body = answer.body === null ? '' : JSON.stringify(answer.body);
    reply.header('Request-ID', newHex(20));
    if (answer.status !== 401) {
      const headers = signatureHeaders(body, opts.platformPublicKeyId, checked.platformPrivateKey, Math.floor(now().getTime() / 1000));
      for (const [k, v] of Object.entries(headers)) reply.header(k, v);
    }
    if (answer.body === null) return reply.code(answer.status).send();
    return reply.code(answer.status).type('application/json; charset=utf-8').send(body);
  }

  /** Every /v3 route: the merchant's Authorization signature first. */
  const authenticated = (handler: (req: FastifyRequest) => Promise<ApiAnswer>) => async (req: FastifyRequest, reply: FastifyReply) => {
    const denied = checkAuthorization(
      { method: req.method, url: req.raw.url ?? '', authorization: req.headers.authorization, body: bodyBytes(req) },
      { mchid, merchantSerial: opts.merchantSerial, merchantPublicKey: checked.merchantPublicKey, nowSeconds: Math.floor(now().getTime() / 1000) },
    );
    return send(reply, denied ?? (await handler(req)));
  };

  const notFound: ApiAnswer = { status: 404, body: { code: 'NOT_FOUND', message: '请求的资源不存在' } };

  app.post<{ Params: { method: string } }>('/v3/pay/transactions/:method', authenticated(async (req) => {
    const method = (req.params as { method: string }).method;
    if (!isOrderMethod(method)) return notFound;
    const body = parseJsonBody(bodyBytes(req));
    return body.ok ? createOrder(apiContext(), method, body.value) : body.answer;
  }));

  app.get('/v3/pay/transactions/out-trade-no/:no', authenticated(async (req) =>
    queryByOutTradeNo(apiContext(), (req.params as { no: string }).no, queryOf(req))));

  app.get('/v3/pay/transactions/id/:id', authenticated(async (req) =>
    queryByTransactionId(apiContext(), (req.params as { id: string }).id, queryOf(req))));

  app.post('/v3/pay/transactions/out-trade-no/:no/close', authenticated(async (req) => {
    const body = parseJsonBody(bodyBytes(req));
    return body.ok ? closeOrder(apiContext(), (req.params as { no: string }).no, body.value) : body.answer;
  }));

  app.post('/v3/refund/domestic/refunds', authenticated(async (req) => {
    const body = parseJsonBody(bodyBytes(req));
    return body.ok ? createRefund({ pool, mchid, settleInMs }, body.value) : body.answer;
  }));

  app.get('/v3/refund/domestic/refunds/:no', authenticated(async (req) =>
    queryRefund(pool, mchid, (req.params as { no: string }).no)));

  const billDeps = (): BillDeps => ({
    db: pool, mchid, secret: checked.apiV3Key, downloadUrl: `${checked.baseUrl}${prefix}/v3/billdownload/file`, now,
  });

  app.get('/v3/bill/tradebill', authenticated(async (req) => tradeBill(billDeps(), queryOf(req))));

  // The download: signed request, but WeChat Pay does not sign the file it answers.
  app.get('/v3/billdownload/file', async (req, reply) => {
    const denied = checkAuthorization(
      { method: req.method, url: req.raw.url ?? '', authorization: req.headers.authorization, body: Buffer.alloc(0) },
      { mchid, merchantSerial: opts.merchantSerial, merchantPublicKey: checked.merchantPublicKey, nowSeconds: Math.floor(now().getTime() / 1000) },
    );
    if (denied) return send(reply, denied);
    const bill = await billDownload(billDeps(), queryOf(req)['token']);
    if (!bill.ok) return send(reply, bill.answer);
    reply.header('Request-ID', newHex(20));
    return reply.code(200).type('application/octet-stream').send(Readable.from(bill.chunks, { objectMode: false }));
  });

  // ---- The buyer's side ----

  const html = (reply: FastifyReply, status: number, content: string) => reply.code(status).type('text/html; charset=utf-8').send(content);

  app.get('/cgi-bin/mmpayweb-bin/checkmweb', async (req, reply) => {
    const q = queryOf(req);
    const prepayId = q['prepay_id'];
    const trade = prepayId ? await getTrade(pool, { mchid, prepayId }) : null;
    if (!trade || trade.tradeType !== 'MWEB') return html(reply, 404, errorHtml('商家参数格式有误，请联系商家解决（prepay_id 无效）'));
    return html(reply, 200, cashierHtml(trade, prefix, q['redirect_url'] ?? null));
  });

  app.get('/scan', async (req, reply) => {
    const codeUrl = queryOf(req)['code_url'];
    const trade = codeUrl ? await getTradeByCodeUrl(pool, codeUrl) : null;
    if (!trade) return html(reply, 404, errorHtml('二维码已失效'));
    return html(reply, 200, cashierHtml(trade, prefix, null));
  });

  app.post('/cashier/pay', async (req, reply) => {
    const form = new URLSearchParams(bodyBytes(req).toString('utf8'));
    const prepayId = form.get('prepay_id');
    if (!prepayId) return html(reply, 400, errorHtml('缺少 prepay_id'));
    const result = await simulateBuyer(pool, dispatcher, { mchid, prepayId }, 'succeeded', checked.apiV3Key);
    dispatcher.kick();
    if (!result.ok) return html(reply, result.status, errorHtml(`${result.code}: ${result.message}`));
    const redirectUrl = form.get('redirect_url');
    if (redirectUrl && /^https?:\/\//.test(redirectUrl)) return reply.redirect(redirectUrl, 302);
    return html(reply, 200, cashierHtml(result.trade, prefix, null));
  });

  app.post('/client/request-payment', async (req, reply) => {
    const p = jsonOf(req);
    if (!p) return sendSandboxError(reply, 400, 'parameter_invalid', 'body must be the JSAPI or APP payment parameters as a JSON object');
    const isJsapi = typeof p['package'] === 'string' && p['package'].startsWith('prepay_id=');
    const prepayId = isJsapi ? (p['package'] as string).slice('prepay_id='.length) : p['prepayid'];
    const appid = isJsapi ? p['appId'] : p['appid'];
    const valid = isJsapi ? verifyJsapiPayParams(p, checked.merchantPublicKey) : verifyAppPayParams(p, checked.merchantPublicKey) && p['partnerid'] === mchid;
    if (!valid) return sendSandboxError(reply, 400, 'invalid_signature', '支付验证签名失败 (paySign/sign does not verify with the merchant key)', isJsapi ? 'paySign' : 'sign');
    const trade = typeof prepayId === 'string' && prepayId !== '' ? await getTrade(pool, { mchid, prepayId }) : null;
    if (!trade) return sendSandboxError(reply, 404, 'trade_not_found', `no trade with prepay_id ${String(prepayId)}`, 'package');
    const expectedType = isJsapi ? 'JSAPI' : 'APP';
    if (trade.tradeType !== expectedType || trade.appid !== appid) return sendSandboxError(reply, 400, 'parameter_invalid', `prepay_id belongs to a ${trade.tradeType} order of ${trade.appid}`);
    return reply.code(200).send(tradeView(trade));
  });

  app.post('/simulate', async (req, reply) => {
    const body = jsonOf(req);
    if (!body) return sendSandboxError(reply, 400, 'parameter_invalid', 'body must be a JSON object');
    const ref = body['channel_reference'];
    const outcome = body['outcome'];
    if (typeof ref !== 'string' || ref === '') return sendSandboxError(reply, 400, 'parameter_missing', 'channel_reference is required', 'channel_reference');
    if (typeof outcome !== 'string' || !(OUTCOMES as readonly string[]).includes(outcome)) {
      return sendSandboxError(reply, 400, 'parameter_invalid', `outcome must be one of ${OUTCOMES.join(', ')}`, 'outcome');
    }
    const result = await simulateBuyer(pool, dispatcher, { mchid, outTradeNo: ref }, outcome as SimulateOutcome, checked.apiV3Key);
    if (!result.ok) return sendSandboxError(reply, result.status, result.code, result.message, 'channel_reference');
    dispatcher.kick();
    return reply.code(200).send(tradeView(result.trade, { notification: result.eventId ? { id: result.eventId, event_type: 'TRANSACTION.SUCCESS' } : null }));
  });

  app.post('/refunds/simulate', async (req, reply) => {
    const body = jsonOf(req);
    if (!body) return sendSandboxError(reply, 400, 'parameter_invalid', 'body must be a JSON object');
    const ref = body['refund_reference'];
    const id = body['channel_refund_id'];
    const outcome = body['outcome'];
    const failureStatus = body['failure_status'] ?? 'ABNORMAL';
    for (const [name, v] of [['refund_reference', ref], ['channel_refund_id', id]] as const) {
      if (v !== undefined && (typeof v !== 'string' || v === '' || v.length > 64)) return sendSandboxError(reply, 400, 'parameter_invalid', `${name} must be a non-empty string`, name);
    }
    if (ref === undefined && id === undefined) return sendSandboxError(reply, 400, 'parameter_missing', 'refund_reference or channel_refund_id is required', 'refund_reference');
    if (outcome !== 'succeeded' && outcome !== 'failed') return sendSandboxError(reply, 400, 'parameter_invalid', 'outcome must be one of succeeded, failed', 'outcome');
    if (failureStatus !== 'ABNORMAL' && failureStatus !== 'CLOSED') return sendSandboxError(reply, 400, 'parameter_invalid', 'failure_status must be ABNORMAL or CLOSED', 'failure_status');
    const key: RefundKey = { mchid, ...(ref !== undefined ? { outRefundNo: ref as string } : {}), ...(id !== undefined ? { refundId: id as string } : {}) };
    const status: FinalRefundStatus = outcome === 'succeeded' ? 'SUCCESS' : failureStatus;
    const result = await finishRefund(pool, dispatcher, key, status, checked.apiV3Key);
    if (!result.ok) return sendSandboxError(reply, result.status, result.code, result.message, ref !== undefined ? 'refund_reference' : 'channel_refund_id');
    dispatcher.kick();
    const notification = result.eventId ? { id: result.eventId, event_type: `REFUND.${result.refund.status}` } : null;
    return reply.code(200).send(refundView(result.refund, { notification }));
  });

  app.get<{ Params: { outTradeNo: string } }>('/trades/:outTradeNo', async (req, reply) => {
    const trade = await getTrade(pool, { mchid, outTradeNo: req.params.outTradeNo });
    if (!trade) return sendSandboxError(reply, 404, 'trade_not_found', `no WeChat Pay sandbox trade with out_trade_no ${req.params.outTradeNo}`);
    const refunds = await listRefundsOfTrade(pool, mchid, trade.outTradeNo);
    return reply.send(tradeView(trade, { transaction: transactionJson(trade), refunds: refunds.map((r) => refundView(r)) }));
  });
};

/**
 * Alipay sandbox: Alipay's side of the same protocol the connector speaks, as a Fastify plugin.
 * Register with `app.register(alipaySandboxPlugin, { prefix: '/sandbox/alipay', ...options })`.
 *
 * Routes (under the prefix):
 * - `GET|POST /gateway.do`  the OpenAPI gateway: precreate, query, close, refund, refund query as
 *                           signed JSON; page/wap/app pay opened by a browser render a minimal
 *                           cashier page.
 * - `GET /qr/:token`        what scanning a precreate QR code does: the trade now exists.
 * - `POST /cashier/pay`     the cashier's pay button (form `trade_no`); redirects to return_url.
 * - `POST /app`             the Alipay app submitting an app-pay order string.
 * - `POST /simulate`        `{ channel_reference, outcome }` plays the buyer.
 * - `POST /refunds/simulate` `{ refund_reference, channel_reference?, outcome }` finishes a refund
 *                           held in REFUND_PROCESSING (succeeded | failed).
 * - `POST /refunds/mode`    `{ channel_reference, mode: "sync" | "pending" }`: how the trade's next
 *                           refunds are processed ('sync', Alipay's behaviour, by default).
 * - `GET /trades/:out_trade_no` the sandbox's view of a trade and its refunds (debugging).
 * State is in PostgreSQL (0002_sandbox.sql, 0020_alipay_refunds.sql); notifications go through the
 * shared dispatcher. Refunds: sandbox-refunds.ts.
 */
import { generateKeyPair, type KeyObject } from 'node:crypto';
import { promisify } from 'node:util';
import type { FastifyInstance, FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import type { Pool, Queryable } from '../../store/db.ts';
import { inTransaction } from '../../store/db.ts';
import { formatDecimal, toJsonAmount } from '../../domain/money.ts';
import { createNotificationDispatcher, type NotificationChannelSpec, type NotificationDispatcher } from '../sandbox/dispatcher.ts';
import { objectBody, sendSandboxError } from '../sandbox/errors.ts';
import fs from 'node:fs';
import { billDownloadUrl, removeLater, serveBill, type BillDeps } from './sandbox-bill.ts';
import { loadPrivateKey, loadPublicKey, responseKeyOf, signAlipayNotification, signAlipayResponse } from './sign.ts';
import { formatAlipayTime, formatAlipayTimeMillis, parseFormText } from './transformers.ts';
import {
  CASHIER_APIS, checkGatewayRequest, gatewayError, mergeParams, openTrade, runJsonApi, scanOrOpenExisting,
  type AlipayGatewayError, type ApiContext,
} from './sandbox-gateway.ts';
import {
  getTradeByQrCode, isOpen, isPaid, loadTrade, mutateTrade, newBuyerId, newBuyerLogonId, newNotifyId, newTradeNo, sellerIdFor,
  type SandboxTrade, type TradeKey,
} from './sandbox-trades.ts';
import {
  REFUND_OUTCOMES, finishRefund, listRefunds, queryRefund, refundJson, refundTrade, setRefundMode,
  type RefundDeps, type RefundOutcome, type SandboxRefund,
} from './sandbox-refunds.ts';

export interface AlipaySandboxOptions {
  pool: Pool;
  appId: string;
  /** Verifies the merchant's requests (the app public key uploaded to Alipay). */
  appPublicKey: string;
  /** Signs responses and notifications (the key behind the connector's alipayPublicKey). */
  alipayPrivateKey: string;
  /** e.g. http://127.0.0.1:4000, for QR and cashier links. */
  publicBaseUrl: string;
  /** Multiplies Alipay's notification retry delays: 1 = real time, 0.001 in tests. */
  timeScale: number;
  /** Run the notification delivery loop in this process (default true). */
  deliverNotifications?: boolean;
  /** Dispatcher tuning; defaults derive from timeScale. */
  pollIntervalMs?: number;
  notifyTimeoutMs?: number;
}

export const ALIPAY_CHANNEL = 'alipay';

/** Alipay's retry schedule: at once, then 4m, 10m, 10m, 1h, 2h, 6h, 15h (8 attempts, ~25 h). */
export const ALIPAY_NOTIFY_SCHEDULE_MS: readonly number[] = Object.freeze([0, 4, 10, 10, 60, 120, 360, 900].map((m) => m * 60_000));

export interface AlipaySandboxKeys {
  /** Give to the connector (`privateKey`). */
  appPrivateKey: string;
  /** Give to the sandbox (`appPublicKey`). */
  appPublicKey: string;
  /** Give to the sandbox (`alipayPrivateKey`). */
  alipayPrivateKey: string;
  /** Give to the connector (`alipayPublicKey`). */
  alipayPublicKey: string;
}

const generateRsa = promisify(generateKeyPair);

/** Two RSA-2048 pairs (PEM: PKCS#8 private, SPKI public): the merchant app's and "Alipay's". */
export async function generateAlipaySandboxKeys(): Promise<AlipaySandboxKeys> {
  const pair = () =>
    generateRsa('rsa', {
      modulusLength: 2048,
      publicKeyEncoding: { type: 'spki', format: 'pem' },
      privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
    });
  const [app, alipay] = await Promise.all([pair(), pair()]);
  return { appPrivateKey: app.privateKey, appPublicKey: app.publicKey, alipayPrivateKey: alipay.privateKey, alipayPublicKey: alipay.publicKey };
}

/** The notification channel spec: form POST signed by the V1 rule, `success` acknowledges. */
export function alipayNotificationSpec(alipayPrivateKey: KeyObject): NotificationChannelSpec<Record<string, string>> {
  return {
    channel: ALIPAY_CHANNEL,
    scheduleMs: ALIPAY_NOTIFY_SCHEDULE_MS,
    buildRequest(payload, ctx) {
      const signed = signAlipayNotification({ ...payload, notify_time: formatAlipayTime(ctx.now) }, alipayPrivateKey);
      return {
        url: ctx.url,
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded; charset=utf-8', 'user-agent': 'Mozilla/4.0' },
        body: new URLSearchParams(signed).toString(),
      };
    },
    isAcknowledged: ({ status, body }) => status >= 200 && status < 300 && body === 'success',
  };
}

/** The fields real Alipay posts for trade_status_sync (all but notify_time, sign_type, sign). */
export function notificationPayload(trade: SandboxTrade, notifyId: string): Record<string, string> {
  const total = formatDecimal(trade.amountFen, 'CNY');
  // Paid, or paid and then fully refunded (TRADE_CLOSED with a payment time).
  const paid = isPaid(trade) || trade.gmtPayment !== null;
  const fields: Record<string, string | null> = {
    notify_type: 'trade_status_sync',
    notify_id: notifyId,
    app_id: trade.appId,
    auth_app_id: trade.appId,
    charset: 'utf-8',
    version: '1.0',
    trade_no: trade.tradeNo,
    out_trade_no: trade.outTradeNo,
    trade_status: trade.status,
    total_amount: total,
    receipt_amount: paid ? total : null,
    invoice_amount: paid ? total : null,
    buyer_pay_amount: paid ? total : null,
    point_amount: paid ? '0.00' : null,
    fund_bill_list: paid ? JSON.stringify([{ amount: total, fundChannel: 'ALIPAYACCOUNT' }]) : null,
    buyer_id: trade.buyerId,
    buyer_logon_id: trade.buyerLogonId,
    seller_id: sellerIdFor(trade.appId),
    subject: trade.subject,
    body: trade.body,
    passback_params: trade.passbackParams,
    gmt_create: trade.gmtCreate ? formatAlipayTime(trade.gmtCreate) : null,
    gmt_payment: trade.gmtPayment ? formatAlipayTime(trade.gmtPayment) : null,
    gmt_close: trade.gmtClose ? formatAlipayTime(trade.gmtClose) : null,
  };
  return Object.fromEntries(Object.entries(fields).filter((e): e is [string, string] => e[1] !== null && e[1] !== ''));
}

/**
 * The notification Alipay sends after a refund: the trade's trade_status_sync (TRADE_SUCCESS after
 * a partial refund, TRADE_CLOSED after a full one) plus `refund_fee` (the trade's refunded total,
 * all refunds so far), `gmt_refund` and `out_biz_no` (the refund's out_request_no).
 */
export function refundNotificationPayload(trade: SandboxTrade, refund: SandboxRefund, refundedFen: bigint, notifyId: string): Record<string, string> {
  return {
    ...notificationPayload(trade, notifyId),
    refund_fee: formatDecimal(refundedFen, 'CNY'),
    gmt_refund: formatAlipayTimeMillis(refund.gmtRefund ?? new Date()),
    out_biz_no: refund.outRequestNo,
  };
}

export type SimulateOutcome = 'succeeded' | 'failed' | 'canceled';
const OUTCOMES: readonly SimulateOutcome[] = ['succeeded', 'failed', 'canceled'];

type SimulateResult =
  | { ok: true; trade: SandboxTrade; notifyId: string | null }
  | { ok: false; status: 404 | 409; code: string; message: string };

/** Change the trade as the buyer would and enqueue its notification, in one transaction. */
export async function simulateBuyer(
  pool: Pool,
  dispatcher: NotificationDispatcher<Record<string, string>>,
  key: TradeKey,
  outcome: SimulateOutcome,
): Promise<SimulateResult> {
  return inTransaction(pool, async (db) => {
    const result = await mutateTrade<SimulateResult>(db, key, (trade) => {
      if (!trade) return { answer: { ok: false, status: 404, code: 'trade_not_found', message: `no Alipay sandbox trade ${describeKey(key)}` } };
      if (!isOpen(trade)) {
        const expired = trade.status === 'TRADE_CLOSED' && trade.timeExpire !== null && trade.gmtClose?.getTime() === trade.timeExpire.getTime();
        return {
          answer: expired
            ? { ok: false, status: 409, code: 'trade_expired', message: `trade ${trade.outTradeNo} expired at ${trade.timeExpire!.toISOString()} and was closed` }
            : { ok: false, status: 409, code: 'trade_already_final', message: `trade ${trade.outTradeNo} is already ${trade.status}` },
        };
      }
      const opened = { tradeNo: newTradeNo(), gmtCreate: 'now' as const, buyerId: newBuyerId(), buyerLogonId: newBuyerLogonId() };
      return outcome === 'succeeded'
        ? { patch: { ...opened, status: 'TRADE_SUCCESS', gmtPayment: 'now' }, requireUnexpired: true, then: (t) => ({ ok: true, trade: t, notifyId: null }) }
        : { patch: { ...opened, status: 'TRADE_CLOSED', gmtClose: 'now' }, requireUnexpired: true, then: (t) => ({ ok: true, trade: t, notifyId: null }) };
    });
    if (!result.ok || !result.trade.notifyUrl) return result;
    const notifyId = newNotifyId();
    await dispatcher.enqueue(db, {
      channelReference: result.trade.outTradeNo,
      eventId: notifyId,
      url: result.trade.notifyUrl,
      payload: notificationPayload(result.trade, notifyId),
    });
    return { ...result, notifyId };
  });
}

function describeKey(key: TradeKey): string {
  return 'outTradeNo' in key ? `with out_trade_no ${key.outTradeNo}` : `with trade_no ${key.tradeNo}`;
}

export function tradeJson(t: SandboxTrade, extra: Record<string, unknown> = {}) {
  const time = (d: Date | null) => (d ? d.toISOString() : null);
  return {
    object: 'sandbox_trade',
    channel: ALIPAY_CHANNEL,
    app_id: t.appId,
    channel_reference: t.outTradeNo,
    out_trade_no: t.outTradeNo,
    trade_no: t.tradeNo,
    trade_status: t.status,
    amount: toJsonAmount(t.amountFen),
    currency: 'CNY',
    total_amount: formatDecimal(t.amountFen, 'CNY'),
    subject: t.subject,
    method: t.method,
    qr_code: t.qrCode,
    notify_url: t.notifyUrl,
    return_url: t.returnUrl,
    time_expire: time(t.timeExpire),
    gmt_create: time(t.gmtCreate),
    gmt_payment: time(t.gmtPayment),
    gmt_close: time(t.gmtClose),
    buyer_id: t.buyerId,
    ...extra,
  };
}

// ---- HTML (cashier and gateway error pages) ----------------------------------------------------

function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

function page(title: string, body: string): string {
  return `<!doctype html><html lang="zh-CN"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>${escapeHtml(title)}</title></head><body>${body}</body></html>`;
}

export function cashierHtml(t: SandboxTrade, prefix: string): string {
  const rows = [
    ['商品 Subject', t.subject],
    ['商户订单号 out_trade_no', t.outTradeNo],
    ['支付宝交易号 trade_no', t.tradeNo ?? ''],
    ['状态 Status', t.status],
  ];
  const table = rows.map(([k, v]) => `<tr><th>${escapeHtml(k!)}</th><td>${escapeHtml(v!)}</td></tr>`).join('');
  const payForm = isOpen(t) && t.tradeNo
    ? `<form method="post" action="${escapeHtml(prefix)}/cashier/pay"><input type="hidden" name="trade_no" value="${escapeHtml(t.tradeNo)}"><button type="submit">确认付款 Pay</button></form>`
    : '';
  return page('支付宝沙箱收银台', `<h1>支付宝沙箱收银台 (Knowpay sandbox)</h1><p class="amount">¥ <strong id="total_amount">${formatDecimal(t.amountFen, 'CNY')}</strong> CNY</p><table>${table}</table>${payForm}`);
}

function errorHtml(e: AlipayGatewayError): string {
  return page('支付宝 - 错误', `<h1>支付宝沙箱：请求错误</h1><p>错误代码 <code id="sub_code">${escapeHtml(e.sub_code)}</code> (${escapeHtml(e.code)} ${escapeHtml(e.msg)})</p><p>${escapeHtml(e.sub_msg)}</p>`);
}

// ---- The plugin ----------------------------------------------------------------------------------

const FORM_TYPE = 'application/x-www-form-urlencoded';
const MAX_FORM_BYTES = 64 * 1024;

function checkOptions(o: AlipaySandboxOptions): { appPublicKey: KeyObject; alipayPrivateKey: KeyObject; baseUrl: string } {
  if (!o.pool) throw new TypeError('alipaySandboxPlugin: pool is required');
  if (!o.appId) throw new TypeError('alipaySandboxPlugin: appId is required');
  if (!Number.isFinite(o.timeScale) || o.timeScale < 0) throw new TypeError('alipaySandboxPlugin: timeScale must be >= 0');
  const baseUrl = new URL(o.publicBaseUrl).toString().replace(/\/+$/, '');
  return { appPublicKey: loadPublicKey(o.appPublicKey), alipayPrivateKey: loadPrivateKey(o.alipayPrivateKey), baseUrl };
}

/** Query string and form body as single-valued params; null when ambiguous or malformed. */
function requestParams(req: FastifyRequest): Record<string, string> | null {
  const url = req.raw.url ?? '';
  const q = url.includes('?') ? parseFormText(url.slice(url.indexOf('?') + 1)) : { ok: true as const, params: {} };
  if (!q.ok) return null;
  let body: Record<string, string> = {};
  if (typeof req.body === 'string' && req.body !== '') {
    const b = parseFormText(req.body);
    if (!b.ok) return null;
    body = b.params;
  }
  return mergeParams(q.params, body);
}

export const alipaySandboxPlugin: FastifyPluginAsync<AlipaySandboxOptions> = async (app: FastifyInstance, opts) => {
  const { appPublicKey, alipayPrivateKey, baseUrl } = checkOptions(opts);
  const { pool, appId } = opts;
  const prefix = app.prefix;
  const dispatcher = createNotificationDispatcher({
    pool,
    spec: alipayNotificationSpec(alipayPrivateKey),
    timeScale: opts.timeScale,
    ...(opts.pollIntervalMs !== undefined ? { pollIntervalMs: opts.pollIntervalMs } : {}),
    ...(opts.notifyTimeoutMs !== undefined ? { requestTimeoutMs: opts.notifyTimeoutMs } : {}),
    onError: (err) => app.log.error({ err }, 'alipay sandbox notification delivery failed'),
  });
  const refundDeps: RefundDeps = {
    pool,
    appId,
    async notifyRefund(db, trade, refund, refundedFen) {
      if (!trade.notifyUrl) return null;
      const notifyId = newNotifyId();
      await dispatcher.enqueue(db, { channelReference: trade.outTradeNo, eventId: notifyId, url: trade.notifyUrl, payload: refundNotificationPayload(trade, refund, refundedFen, notifyId) });
      return notifyId;
    },
  };
  const apiContext = (db: Queryable): ApiContext => ({
    db, appId, qrBaseUrl: `${baseUrl}${prefix}/qr/`,
    refunds: {
      async refund(req) {
        const { response, notifyId } = await refundTrade(refundDeps, req);
        if (notifyId) dispatcher.kick(); // committed: deliver now rather than at the next poll
        return response;
      },
      query: (req) => queryRefund(db, appId, req),
    },
    bills: { downloadUrl: (req) => billDownloadUrl(billDeps(db), req) },
  });
  const billDeps = (db: Queryable): BillDeps => ({ db, appId, billBaseUrl: `${baseUrl}${prefix}/bills`, secret: opts.alipayPrivateKey });
  app.get<{ Params: { appId: string; date: string }; Querystring: { token?: string } }>('/bills/:appId/:date', async (req, reply) => {
    const served = await serveBill(billDeps(pool), req.params.appId, req.params.date, req.query.token ?? '');
    if (!served.file) return sendSandboxError(reply, served.status, 'bill_forbidden', served.message ?? 'forbidden');
    removeLater(served.file);
    reply.header('content-type', 'application/zip').header('content-disposition', `attachment; filename="${req.params.date}.zip"`);
    return reply.send(fs.createReadStream(served.file));
  });

  // Signatures cover decoded values of the raw form: parse it ourselves, in this plugin only.
  if (app.hasContentTypeParser(FORM_TYPE)) app.removeContentTypeParser(FORM_TYPE);
  app.addContentTypeParser(FORM_TYPE, { parseAs: 'string', bodyLimit: MAX_FORM_BYTES }, (_req, body, done) => done(null, body));

  if (opts.deliverNotifications !== false) {
    app.addHook('onReady', async () => dispatcher.start());
  }
  app.addHook('onClose', async () => dispatcher.stop());

  const signed = (reply: FastifyReply, responseKey: string, content: Record<string, unknown>) =>
    reply.code(200).type('application/json; charset=utf-8').send(signAlipayResponse(responseKey, content, alipayPrivateKey));

  async function gateway(req: FastifyRequest, reply: FastifyReply) {
    const params = requestParams(req);
    if (!params) return signed(reply, 'error_response', { ...gatewayError('40002', 'isv.invalid-parameter', '参数无效: 参数重复或编码错误') });
    const checked = checkGatewayRequest(params, appId, appPublicKey);
    const isCashier = params['method'] !== undefined && params['method'] in CASHIER_APIS;
    if (!checked.ok) {
      return isCashier ? reply.code(200).type('text/html; charset=utf-8').send(errorHtml(checked.error)) : signed(reply, checked.responseKey, { ...checked.error });
    }
    if (isCashier) {
      const opened = await openTrade(apiContext(pool), checked.request);
      const html = opened.ok ? cashierHtml(opened.trade, prefix) : errorHtml(opened.error);
      return reply.code(200).type('text/html; charset=utf-8').send(html);
    }
    const content = await runJsonApi(apiContext(pool), checked.request);
    return signed(reply, responseKeyOf(checked.request.method), content);
  }
  app.get('/gateway.do', gateway);
  app.post('/gateway.do', gateway);

  app.get<{ Params: { token: string } }>('/qr/:token', async (req, reply) => {
    const trade = await getTradeByQrCode(pool, `${baseUrl}${prefix}/qr/${req.params.token}`);
    const opened = trade ? await scanOrOpenExisting(pool, { appId: trade.appId, outTradeNo: trade.outTradeNo }, null) : null;
    const html = !opened ? errorHtml(gatewayError('40004', 'ACQ.TRADE_NOT_EXIST', '二维码无效')) : opened.ok ? cashierHtml(opened.trade, prefix) : errorHtml(opened.error);
    return reply.code(trade ? 200 : 404).type('text/html; charset=utf-8').send(html);
  });

  app.post('/cashier/pay', async (req, reply) => {
    const form = typeof req.body === 'string' ? parseFormText(req.body) : null;
    const tradeNo = form?.ok ? form.params['trade_no'] : undefined;
    if (!tradeNo) return reply.code(400).type('text/html; charset=utf-8').send(errorHtml(gatewayError('40004', 'ACQ.INVALID_PARAMETER', '缺少 trade_no')));
    const result = await simulateBuyer(pool, dispatcher, { appId, tradeNo }, 'succeeded');
    dispatcher.kick();
    if (!result.ok) return reply.code(result.status).type('text/html; charset=utf-8').send(errorHtml(gatewayError('40004', result.code, result.message)));
    const returnUrl = result.trade.returnUrl;
    if (returnUrl) return reply.redirect(syncReturnUrl(result.trade, returnUrl, alipayPrivateKey), 302);
    return reply.code(200).type('text/html; charset=utf-8').send(cashierHtml(result.trade, prefix));
  });

  app.post('/app', async (req, reply) => {
    const orderString = typeof req.body === 'string' ? req.body : objectBody(req.body)?.['order_string'];
    if (typeof orderString !== 'string' || orderString === '') return sendSandboxError(reply, 400, 'parameter_missing', 'send the order string as the body (text/plain or form) or as {"order_string": "..."}', 'order_string');
    const parsed = parseFormText(orderString);
    if (!parsed.ok) return sendSandboxError(reply, 400, 'parameter_invalid', `order string: ${parsed.reason}`, 'order_string');
    if (parsed.params['method'] !== 'alipay.trade.app.pay') return sendSandboxError(reply, 400, 'parameter_invalid', 'the order string is not for alipay.trade.app.pay', 'order_string');
    const checked = checkGatewayRequest(parsed.params, appId, appPublicKey);
    if (!checked.ok) return sendSandboxError(reply, 400, snakeCode(checked.error.sub_code), `${checked.error.sub_code}: ${checked.error.sub_msg}`, 'order_string');
    const opened = await openTrade(apiContext(pool), checked.request);
    if (!opened.ok) return sendSandboxError(reply, opened.error.sub_code === 'ACQ.INVALID_PARAMETER' ? 400 : 409, snakeCode(opened.error.sub_code), `${opened.error.sub_code}: ${opened.error.sub_msg}`);
    return reply.code(200).send(tradeJson(opened.trade));
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
    const result = await simulateBuyer(pool, dispatcher, { appId, outTradeNo: ref }, outcome as SimulateOutcome);
    if (!result.ok) return sendSandboxError(reply, result.status, result.code, result.message, 'channel_reference');
    dispatcher.kick();
    return reply.code(200).send(tradeJson(result.trade, { notification: result.notifyId ? { notify_id: result.notifyId } : null }));
  });

  app.post('/refunds/simulate', async (req, reply) => {
    const body = objectBody(req.body);
    if (!body) return sendSandboxError(reply, 400, 'parameter_invalid', 'body must be a JSON object');
    const outcome = body['outcome'];
    if (typeof outcome !== 'string' || !(REFUND_OUTCOMES as readonly string[]).includes(outcome)) {
      return sendSandboxError(reply, 400, 'parameter_invalid', `outcome must be one of ${REFUND_OUTCOMES.join(', ')}`, 'outcome');
    }
    if (body['channel_refund_id'] !== undefined && body['refund_reference'] === undefined) {
      return sendSandboxError(reply, 400, 'parameter_invalid', 'Alipay refunds have no channel refund id: give refund_reference (the out_request_no)', 'channel_refund_id');
    }
    const ref = body['refund_reference'];
    if (typeof ref !== 'string' || ref === '') return sendSandboxError(reply, 400, 'parameter_missing', 'refund_reference (the out_request_no) is required', 'refund_reference');
    const tradeRef = body['channel_reference'];
    if (tradeRef !== undefined && (typeof tradeRef !== 'string' || tradeRef === '')) return sendSandboxError(reply, 400, 'parameter_invalid', 'channel_reference must be a non-empty string', 'channel_reference');
    const result = await finishRefund(refundDeps, { outRequestNo: ref, outTradeNo: tradeRef ?? null }, outcome as RefundOutcome);
    if (!result.ok) return sendSandboxError(reply, result.status, result.code, result.message, 'refund_reference');
    if (result.value.notifyId) dispatcher.kick();
    const { trade, refund, notifyId } = result.value;
    return reply.code(200).send({ ...refundJson(refund), trade_status: trade.status, notification: notifyId ? { notify_id: notifyId } : null });
  });

  app.post('/refunds/mode', async (req, reply) => {
    const body = objectBody(req.body);
    if (!body) return sendSandboxError(reply, 400, 'parameter_invalid', 'body must be a JSON object');
    const ref = body['channel_reference'];
    const mode = body['mode'];
    if (typeof ref !== 'string' || ref === '') return sendSandboxError(reply, 400, 'parameter_missing', 'channel_reference is required', 'channel_reference');
    if (mode !== 'sync' && mode !== 'pending') return sendSandboxError(reply, 400, 'parameter_invalid', 'mode must be one of sync, pending', 'mode');
    const result = await setRefundMode(pool, { appId, outTradeNo: ref }, mode);
    if (!result.ok) return sendSandboxError(reply, result.status, result.code, `no Alipay sandbox trade with out_trade_no ${ref}`, 'channel_reference');
    return reply.code(200).send(tradeJson(result.value, { refund_mode: result.value.refundMode }));
  });

  app.get<{ Params: { outTradeNo: string } }>('/trades/:outTradeNo', async (req, reply) => {
    const trade = await loadTrade(pool, { appId, outTradeNo: req.params.outTradeNo });
    if (!trade) return sendSandboxError(reply, 404, 'trade_not_found', `no Alipay sandbox trade with out_trade_no ${req.params.outTradeNo}`);
    const refunds = await listRefunds(pool, appId, trade.outTradeNo);
    return reply.send(tradeJson(trade, { refund_mode: trade.refundMode, refunds: refunds.map(refundJson) }));
  });
};

function snakeCode(subCode: string): string {
  return subCode.replace(/^(isv|ACQ|aop)\./i, '').replace(/[.-]/g, '_').toLowerCase();
}

/** The browser's synchronous return after paying: signed like a notification (V1 rule). */
function syncReturnUrl(t: SandboxTrade, returnUrl: string, alipayPrivateKey: KeyObject): string {
  const params = signAlipayNotification(
    {
      charset: 'utf-8',
      out_trade_no: t.outTradeNo,
      method: `${t.method}.return`,
      total_amount: formatDecimal(t.amountFen, 'CNY'),
      trade_no: t.tradeNo ?? '',
      auth_app_id: t.appId,
      version: '1.0',
      app_id: t.appId,
      seller_id: sellerIdFor(t.appId),
      timestamp: formatAlipayTime(new Date()),
    },
    alipayPrivateKey,
  );
  const url = new URL(returnUrl);
  for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
  return url.toString();
}



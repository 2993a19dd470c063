/**
 * Alipay's side of `gateway.do`: the common-parameter checks the real gateway makes (app id,
 * signature, timestamp...) with its real error codes, and the trade APIs the connector calls.
 */
import type { KeyObject } from 'node:crypto';
import type { Queryable } from '../../store/db.ts';
import { formatDecimal, parseDecimal } from '../../domain/money.ts';
import { requestSigningString, responseKeyOf, verifyAlipayRequestSignature } from './sign.ts';
import { formatAlipayTime, parseAlipayTime } from './transformers.ts';
import {
  insertTrade, isOpen, isPaid, loadTrade, mutateTrade, newBuyerId, newBuyerLogonId, newQrToken, newTradeNo,
  type SandboxTrade, type TradeKey,
} from './sandbox-trades.ts';

export interface AlipayGatewayError {
  code: string;
  msg: string;
  sub_code: string;
  sub_msg: string;
}

export type ApiResponse = Record<string, unknown> & { code: string; msg: string };

const MSG: Record<string, string> = {
  '40001': 'Missing Required Arguments',
  '40002': 'Invalid Arguments',
  '40004': 'Business Failed',
};

export function gatewayError(code: '40001' | '40002' | '40004', subCode: string, subMsg: string): AlipayGatewayError {
  return { code, msg: MSG[code]!, sub_code: subCode, sub_msg: subMsg };
}

/** A business error (40004 Business Failed) with an `ACQ.*` sub-code. */
export const acq = (subCode: string, subMsg: string) => gatewayError('40004', subCode, subMsg);

export const JSON_APIS = [
  'alipay.trade.precreate', 'alipay.trade.query', 'alipay.trade.close', 'alipay.trade.refund', 'alipay.trade.fastpay.refund.query',
  'alipay.data.dataservice.bill.downloadurl.query',
] as const;
/** APIs opened by the buyer's browser or app: they create the trade and show the cashier. */
export const CASHIER_APIS: Record<string, string> = {
  'alipay.trade.page.pay': 'FAST_INSTANT_TRADE_PAY',
  'alipay.trade.wap.pay': 'QUICK_WAP_WAY',
  'alipay.trade.app.pay': 'QUICK_MSECURITY_PAY',
};
const PRECREATE_PRODUCT = 'FACE_TO_FACE_PAYMENT';

export interface GatewayRequest {
  method: string;
  params: Record<string, string>;
  biz: Record<string, unknown>;
}

export type CheckedRequest = { ok: true; request: GatewayRequest } | { ok: false; responseKey: string; error: AlipayGatewayError };

/** Merge query-string and body params; a key given twice with different values is refused. */
export function mergeParams(query: Record<string, string>, body: Record<string, string>): Record<string, string> | null {
  const merged: Record<string, string> = { ...query };
  for (const [k, v] of Object.entries(body)) {
    if (k in merged && merged[k] !== v) return null;
    merged[k] = v;
  }
  return merged;
}

/** The real gateway's common-parameter checks, in its order: method, app, signature, the rest. */
export function checkGatewayRequest(params: Record<string, string>, appId: string, appPublicKey: KeyObject): CheckedRequest {
  const method = params['method'];
  const fail = (error: AlipayGatewayError, responseKey = method ? responseKeyOf(method) : 'error_response'): CheckedRequest => ({ ok: false, responseKey, error });
  if (!method) return fail(gatewayError('40001', 'isv.missing-method', '缺少方法名参数'));
  if (!(JSON_APIS as readonly string[]).includes(method) && !(method in CASHIER_APIS)) return fail(gatewayError('40002', 'isv.invalid-method', '不存在的方法名'), 'error_response');
  if (!params['app_id']) return fail(gatewayError('40001', 'isv.missing-app-id', '缺少AppID参数'));
  if (params['app_id'] !== appId) return fail(gatewayError('40002', 'isv.invalid-app-id', '无效的AppID参数'));
  if (!params['sign']) return fail(gatewayError('40001', 'isv.missing-signature', '缺少签名参数'));
  if (!params['sign_type']) return fail(gatewayError('40001', 'isv.missing-signature-type', '缺少签名类型参数'));
  if (params['sign_type'] !== 'RSA2') return fail(gatewayError('40002', 'isv.invalid-signature-type', '无效的签名类型参数'));
  if (!verifyAlipayRequestSignature(params, appPublicKey)) {
    const shown = requestSigningString(params).replaceAll('&', '&amp;');
    return fail(gatewayError('40002', 'isv.invalid-signature', `验签出错，建议检查签名字符串或签名私钥与应用公钥是否匹配，网关生成的验签字符串为：${shown}`));
  }
  if (!params['timestamp']) return fail(gatewayError('40001', 'isv.missing-timestamp', '缺少时间戳参数'));
  if (!parseAlipayTime(params['timestamp'])) return fail(gatewayError('40002', 'isv.invalid-timestamp', '非法的时间戳参数'));
  if (!params['version']) return fail(gatewayError('40001', 'isv.missing-version', '缺少版本参数'));
  if (params['version'] !== '1.0') return fail(gatewayError('40002', 'isv.invalid-version', '无效的版本参数'));
  if (params['charset'] && params['charset'].toLowerCase() !== 'utf-8') return fail(gatewayError('40002', 'isv.invalid-charset', '字符集错误'));
  if (params['format'] && params['format'].toUpperCase() !== 'JSON') return fail(gatewayError('40002', 'isv.invalid-format', '无效的数据格式参数'));
  const biz = parseBizContent(params['biz_content']);
  if (!biz) return fail(acq('ACQ.INVALID_PARAMETER', '参数无效: biz_content 不是 JSON 对象'));
  return { ok: true, request: { method, params, biz } };
}

function parseBizContent(text: string | undefined): Record<string, unknown> | null {
  if (text === undefined) return null;
  try {
    const v: unknown = JSON.parse(text);
    return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

/** What a create-type request asks for, validated the way Alipay validates biz_content. */
export interface TradeOrder {
  outTradeNo: string;
  amountFen: bigint;
  subject: string;
  productCode: string;
  timeExpire: Date | null;
  body: string | null;
  passbackParams: string | null;
  notifyUrl: string | null;
  returnUrl: string | null;
}

const MAX_AMOUNT_FEN = 10_000_000_000n;

export function parseTradeOrder(req: GatewayRequest): { ok: true; order: TradeOrder } | { ok: false; error: AlipayGatewayError } {
  const b = req.biz;
  const invalid = (what: string) => ({ ok: false as const, error: acq('ACQ.INVALID_PARAMETER', `参数无效: ${what}`) });
  const outTradeNo = b['out_trade_no'];
  if (typeof outTradeNo !== 'string' || !/^[A-Za-z0-9_-]{1,64}$/.test(outTradeNo)) return invalid('out_trade_no');
  const rawAmount = typeof b['total_amount'] === 'number' ? String(b['total_amount']) : b['total_amount'];
  const amountFen = typeof rawAmount === 'string' && /^\d+(\.\d{1,2})?$/.test(rawAmount) ? parseDecimal(rawAmount, 'CNY') : null;
  if (amountFen === null || amountFen < 1n) return invalid('total_amount');
  if (amountFen > MAX_AMOUNT_FEN) return { ok: false, error: acq('ACQ.TOTAL_FEE_EXCEED', '订单金额超过限额') };
  const subject = b['subject'];
  if (typeof subject !== 'string' || subject.trim() === '' || Array.from(subject).length > 256) return invalid('subject');
  const expected = CASHIER_APIS[req.method] ?? PRECREATE_PRODUCT;
  const productCode = b['product_code'] ?? (req.method === 'alipay.trade.precreate' ? PRECREATE_PRODUCT : undefined);
  if (productCode !== expected) return invalid('product_code');
  let timeExpire: Date | null = null;
  if (b['time_expire'] !== undefined) {
    timeExpire = typeof b['time_expire'] === 'string' ? parseAlipayTime(b['time_expire']) : null;
    if (!timeExpire) return invalid('time_expire');
  }
  const optional = (v: unknown) => (typeof v === 'string' && v !== '' ? v : null);
  return {
    ok: true,
    order: {
      outTradeNo, amountFen, subject, productCode: expected, timeExpire,
      body: optional(b['body']), passbackParams: optional(b['passback_params']),
      notifyUrl: optional(req.params['notify_url']), returnUrl: optional(req.params['return_url']),
    },
  };
}

/** Errors shared by every "create this trade again" path, for an existing trade. */
function conflictWithExisting(existing: SandboxTrade, order: TradeOrder): AlipayGatewayError | null {
  if (isPaid(existing)) return acq('ACQ.TRADE_HAS_SUCCESS', '交易已被支付');
  if (existing.status === 'TRADE_CLOSED') return acq('ACQ.TRADE_HAS_CLOSE', '交易已经关闭');
  if (existing.amountFen !== order.amountFen) return acq('ACQ.CONTEXT_INCONSISTENT', '交易信息被篡改');
  return null;
}

export const ok = (fields: Record<string, unknown>): ApiResponse => ({ code: '10000', msg: 'Success', ...fields });
export const fromError = (e: AlipayGatewayError): ApiResponse => ({ ...e });

export interface ApiContext {
  db: Queryable;
  appId: string;
  /** Absolute URL prefix of the QR landing page: `${publicBaseUrl}${prefix}/qr/`. */
  qrBaseUrl: string;
  /** The refund APIs (sandbox-refunds.ts), wired by the plugin: a refund also enqueues a notification. */
  refunds?: {
    refund(req: GatewayRequest): Promise<ApiResponse>;
    query(req: GatewayRequest): Promise<ApiResponse>;
  };
  /** The bill download API (sandbox-bill.ts). */
  bills?: { downloadUrl(req: GatewayRequest): Promise<ApiResponse> };
}

/** alipay.trade.precreate: idempotent per out_trade_no; the trade stays invisible until scanned. */
export async function precreate(ctx: ApiContext, req: GatewayRequest): Promise<ApiResponse> {
  const parsed = parseTradeOrder(req);
  if (!parsed.ok) return fromError(parsed.error);
  const { order } = parsed;
  const qrCode = ctx.qrBaseUrl + newQrToken();
  const inserted = await insertTrade(ctx.db, {
    appId: ctx.appId, outTradeNo: order.outTradeNo, method: req.method, productCode: order.productCode, status: 'PRECREATED',
    amountFen: order.amountFen, subject: order.subject, body: order.body, passbackParams: order.passbackParams,
    notifyUrl: order.notifyUrl, returnUrl: order.returnUrl, timeExpire: order.timeExpire, qrCode,
  });
  if (inserted) return ok({ out_trade_no: order.outTradeNo, qr_code: inserted.qrCode });
  return mutateTrade<ApiResponse>(ctx.db, { appId: ctx.appId, outTradeNo: order.outTradeNo }, (existing) => {
    if (!existing) return { answer: fromError(acq('ACQ.SYSTEM_ERROR', '系统错误')) };
    const conflict = conflictWithExisting(existing, order);
    if (conflict) return { answer: fromError(conflict) };
    if (existing.qrCode) return { answer: ok({ out_trade_no: order.outTradeNo, qr_code: existing.qrCode }) };
    return { patch: { qrCode }, then: (t) => ok({ out_trade_no: order.outTradeNo, qr_code: t.qrCode }) };
  });
}

/**
 * The buyer opens the trade (page/wap pay in a browser, app pay in the app, or a QR scan): the
 * trade now exists at Alipay in WAIT_BUYER_PAY with a trade_no.
 */
export async function openTrade(ctx: ApiContext, req: GatewayRequest): Promise<{ ok: true; trade: SandboxTrade } | { ok: false; error: AlipayGatewayError }> {
  const parsed = parseTradeOrder(req);
  if (!parsed.ok) return parsed;
  const { order } = parsed;
  if (order.timeExpire && order.timeExpire.getTime() <= Date.now()) return { ok: false, error: acq('ACQ.TRADE_HAS_CLOSE', '交易已经关闭') };
  const inserted = await insertTrade(ctx.db, {
    appId: ctx.appId, outTradeNo: order.outTradeNo, method: req.method, productCode: order.productCode, status: 'WAIT_BUYER_PAY',
    amountFen: order.amountFen, subject: order.subject, body: order.body, passbackParams: order.passbackParams,
    notifyUrl: order.notifyUrl, returnUrl: order.returnUrl, timeExpire: order.timeExpire, qrCode: null,
  });
  if (inserted) return { ok: true, trade: inserted };
  return scanOrOpenExisting(ctx.db, { appId: ctx.appId, outTradeNo: order.outTradeNo }, order);
}

/** Open an existing trade (QR scan, or a second visit to the cashier). */
export async function scanOrOpenExisting(db: Queryable, key: TradeKey, order: TradeOrder | null): Promise<{ ok: true; trade: SandboxTrade } | { ok: false; error: AlipayGatewayError }> {
  type Result = { ok: true; trade: SandboxTrade } | { ok: false; error: AlipayGatewayError };
  return mutateTrade<Result>(db, key, (existing) => {
    if (!existing) return { answer: { ok: false, error: acq('ACQ.TRADE_NOT_EXIST', '交易不存在') } };
    const conflict = order ? conflictWithExisting(existing, order) : isOpen(existing) ? null : existing.status === 'TRADE_CLOSED' ? acq('ACQ.TRADE_HAS_CLOSE', '交易已经关闭') : acq('ACQ.TRADE_HAS_SUCCESS', '交易已被支付');
    if (conflict) return { answer: { ok: false, error: conflict } };
    if (existing.status === 'WAIT_BUYER_PAY') return { answer: { ok: true, trade: existing } };
    return {
      patch: { status: 'WAIT_BUYER_PAY', tradeNo: newTradeNo(), gmtCreate: 'now', buyerId: newBuyerId(), buyerLogonId: newBuyerLogonId() },
      requireUnexpired: true,
      then: (trade) => ({ ok: true, trade }),
    };
  });
}

export function tradeKeyOf(ctx: Pick<ApiContext, 'appId'>, req: GatewayRequest): TradeKey | null {
  const outTradeNo = req.biz['out_trade_no'];
  const tradeNo = req.biz['trade_no'];
  if (typeof outTradeNo === 'string' && outTradeNo !== '') return { appId: ctx.appId, outTradeNo };
  if (typeof tradeNo === 'string' && tradeNo !== '') return { appId: ctx.appId, tradeNo };
  return null;
}

/** alipay.trade.query. A precreated trade nobody scanned does not exist yet. */
export async function query(ctx: ApiContext, req: GatewayRequest): Promise<ApiResponse> {
  const key = tradeKeyOf(ctx, req);
  if (!key) return fromError(acq('ACQ.INVALID_PARAMETER', '参数无效: out_trade_no 和 trade_no 不能同时为空'));
  const trade = await loadTrade(ctx.db, key);
  if (!trade || trade.tradeNo === null) return fromError(acq('ACQ.TRADE_NOT_EXIST', '交易不存在'));
  return ok(queryFields(trade));
}

export function queryFields(t: SandboxTrade): Record<string, string> {
  const paid = isPaid(t);
  const total = formatDecimal(t.amountFen, 'CNY');
  const paidAmount = paid ? total : '0.00';
  const fields: Record<string, string | null> = {
    trade_no: t.tradeNo,
    out_trade_no: t.outTradeNo,
    buyer_logon_id: t.buyerLogonId,
    trade_status: t.status,
    total_amount: total,
    buyer_pay_amount: paidAmount,
    point_amount: '0.00',
    invoice_amount: paidAmount,
    receipt_amount: paidAmount,
    send_pay_date: t.gmtPayment ? formatAlipayTime(t.gmtPayment) : null,
    buyer_user_id: t.buyerId,
    buyer_open_id: null,
  };
  return Object.fromEntries(Object.entries(fields).filter((e): e is [string, string] => e[1] !== null));
}

/** alipay.trade.close: only an unpaid open trade can be closed. */
export async function close(ctx: ApiContext, req: GatewayRequest): Promise<ApiResponse> {
  const key = tradeKeyOf(ctx, req);
  if (!key) return fromError(acq('ACQ.INVALID_PARAMETER', '参数无效: out_trade_no 和 trade_no 不能同时为空'));
  return mutateTrade<ApiResponse>(ctx.db, key, (trade) => {
    if (!trade) return { answer: fromError(acq('ACQ.TRADE_NOT_EXIST', '交易不存在')) };
    if (!isOpen(trade)) return { answer: fromError(acq('ACQ.TRADE_STATUS_ERROR', '交易状态不合法')) };
    return {
      patch: { status: 'TRADE_CLOSED', gmtClose: 'now' },
      then: (t) => ok({ ...(t.tradeNo ? { trade_no: t.tradeNo } : {}), out_trade_no: t.outTradeNo }),
    };
  });
}

export async function runJsonApi(ctx: ApiContext, req: GatewayRequest): Promise<ApiResponse> {
  switch (req.method) {
    case 'alipay.trade.precreate':
      return precreate(ctx, req);
    case 'alipay.trade.query':
      return query(ctx, req);
    case 'alipay.trade.close':
      return close(ctx, req);
    case 'alipay.trade.refund':
      return ctx.refunds ? ctx.refunds.refund(req) : fromError(gatewayError('40002', 'isv.invalid-method', '不存在的方法名'));
    case 'alipay.trade.fastpay.refund.query':
      return ctx.refunds ? ctx.refunds.query(req) : fromError(gatewayError('40002', 'isv.invalid-method', '不存在的方法名'));
    case 'alipay.data.dataservice.bill.downloadurl.query':
      return ctx.bills ? ctx.bills.downloadUrl(req) : fromError(gatewayError('40002', 'isv.invalid-method', '不存在的方法名'));
    default:
      return fromError(gatewayError('40002', 'isv.invalid-method', '不存在的方法名'));
  }
}



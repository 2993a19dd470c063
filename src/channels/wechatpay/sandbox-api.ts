/**
 * WeChat Pay's side of the v3 API, for the sandbox: the Authorization check the real API makes
 * (with its SIGN_ERROR answer), and the order, query and close endpoints with their error codes.
 * Handlers answer `{ status, body }`; the plugin signs and sends them.
 */
import { createHash, type KeyObject } from 'node:crypto';
import { isIP } from 'node:net';
import type { Queryable } from '../../store/db.ts';
import { MAX_CLOCK_SKEW_SECONDS, parseAuthorization, requestMessage, rsaVerify } from './sign.ts';
import { MAX_TOTAL_FEN, TRADE_STATE_DESC, TRADE_TYPE, WECHATPAY_METHODS, formatRfc3339, parseRfc3339, type WechatpayMethod } from './transformers.ts';
import {
  getTrade, insertTrade, isPaid, mutateTrade, newCodeUrl, newPrepayId, type NewTrade, type SandboxTrade,
} from './sandbox-trades.ts';

export interface ApiAnswer {
  status: number;
  /** null: no body (204). */
  body: Record<string, unknown> | null;
}

/** WeChat Pay's error answer: `{ code, message, detail? }`. */
export const apiError = (status: number, code: string, message: string, detail?: unknown): ApiAnswer => ({
  status, body: { code, message, ...(detail !== undefined ? { detail } : {}) },
});
const error = apiError;

// ---- Authorization ---------------------------------------------------------------------------------

export interface AuthContext {
  mchid: string;
  merchantSerial: string;
  merchantPublicKey: KeyObject;
  nowSeconds: number;
}

export interface IncomingRequest {
  method: string;
  /** Path and query exactly as received (what the merchant signed). */
  url: string;
  authorization: string | undefined;
  body: Buffer;
}

const MAX_SIGN_MESSAGE_SHOWN = 256;

/** Null when the request is signed by the merchant; otherwise WeChat Pay's 401/400 answer. */
export function checkAuthorization(req: IncomingRequest, ctx: AuthContext): ApiAnswer | null {
  const auth = parseAuthorization(req.authorization);
  if (!auth) return error(401, 'SIGN_ERROR', 'Http头Authorization值格式错误，请参考《微信支付商户REST API签名规则》', { location: 'authorization', field: 'authorization' });
  if (auth.mchid !== ctx.mchid) return error(400, 'MCH_NOT_EXISTS', '商户号不存在', { location: 'authorization', field: 'mchid', value: auth.mchid });
  if (auth.serial_no.toUpperCase() !== ctx.merchantSerial.toUpperCase()) {
    return error(401, 'SIGN_ERROR', '商户证书序列号有误。请使用签名私钥匹配的证书序列号', { location: 'authorization', field: 'serial_no', value: auth.serial_no });
  }
  const ts = /^\d{1,12}$/.test(auth.timestamp) ? Number(auth.timestamp) : NaN;
  if (!(Math.abs(ctx.nowSeconds - ts) <= MAX_CLOCK_SKEW_SECONDS)) {
    return error(401, 'SIGN_ERROR', '错误的签名，验签失败', { detail: { issue: 'timestamp expired' }, field: 'timestamp', location: 'authorization' });
  }
  const message = requestMessage(req.method, req.url, auth.timestamp, auth.nonce_str, req.body);
  if (!rsaVerify(message, auth.signature, ctx.merchantPublicKey)) {
    const shown = message.subarray(0, MAX_SIGN_MESSAGE_SHOWN).toString('utf8');
    return error(401, 'SIGN_ERROR', '错误的签名，验签失败', {
      detail: { issue: 'sign not match' },
      field: 'signature',
      location: 'authorization',
      sign_information: { method: req.method, sign_message_length: message.length, truncated_sign_message: shown, url: req.url.split('?')[0] },
    });
  }
  return null;
}

// ---- Parameter checks (PARAM_ERROR answers in WeChat Pay's wording) ---------------------------------

const LABELS: Record<string, string> = {
  appid: '应用ID', mchid: '直连商户号', description: '商品描述', out_trade_no: '商户订单号', notify_url: '通知地址',
  'amount.total': '总金额', 'amount.currency': '货币类型', time_expire: '交易结束时间', attach: '附加数据',
  'payer.openid': '用户标识', 'scene_info.payer_client_ip': '用户终端IP', 'scene_info.h5_info.type': '场景类型',
  transaction_id: '微信支付订单号', out_refund_no: '商户退款单号', reason: '退款原因', funds_account: '退款资金来源',
  'amount.refund': '退款金额', amount: '金额信息',
};

export function required(field: string): ApiAnswer {
  return error(400, 'PARAM_ERROR', `输入源“/body/${field.replaceAll('.', '/')}”映射到字段“${LABELS[field] ?? field}”必填性规则校验失败，此字段为必填项`, { field, location: 'body' });
}

export function invalid(field: string, value: unknown, why: string): ApiAnswer {
  return error(400, 'PARAM_ERROR', `输入源“/body/${field.replaceAll('.', '/')}”映射到值字段“${LABELS[field] ?? field}”规则校验失败，${why}`, { field, location: 'body', value });
}

/** Parse the request body as a JSON object; null body allowed when `optional`. */
export function parseJsonBody(body: Buffer, optional = false): { ok: true; value: Record<string, unknown> } | { ok: false; answer: ApiAnswer } {
  if (body.length === 0 && optional) return { ok: true, value: {} };
  try {
    const v: unknown = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(body));
    if (v !== null && typeof v === 'object' && !Array.isArray(v)) return { ok: true, value: v as Record<string, unknown> };
  } catch {
    // fall through
  }
  return { ok: false, answer: error(400, 'PARAM_ERROR', '请求体不是合法的JSON对象', { location: 'body' }) };
}

const obj = (v: unknown): Record<string, unknown> | null => (v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : null);
const byteLength = (s: string) => Buffer.byteLength(s, 'utf8');

export interface OrderRequest {
  method: WechatpayMethod;
  appid: string;
  mchid: string;
  description: string;
  outTradeNo: string;
  notifyUrl: string;
  amountFen: bigint;
  currency: string;
  timeExpire: Date | null;
  timeExpireText: string | null;
  attach: string | null;
  payerOpenid: string | null;
  payerClientIp: string | null;
}

export function isOrderMethod(m: string): m is WechatpayMethod {
  return (WECHATPAY_METHODS as readonly string[]).includes(m);
}

/** Validate an order body the way WeChat Pay does (required fields, lengths, formats). */
export function parseOrder(method: WechatpayMethod, b: Record<string, unknown>): { ok: true; order: OrderRequest } | { ok: false; answer: ApiAnswer } {
  const fail = (answer: ApiAnswer) => ({ ok: false as const, answer });
  const str = (field: string, v: unknown, maxBytes: number): string | ApiAnswer => {
    if (v === undefined || v === null || v === '') return required(field);
    if (typeof v !== 'string') return invalid(field, v, '类型错误，应为字符串');
    if (byteLength(v) > maxBytes) return invalid(field, v, `长度超过${maxBytes}字节`);
    return v;
  };
  const appid = str('appid', b['appid'], 32);
  if (typeof appid !== 'string') return fail(appid);
  const mchid = str('mchid', b['mchid'], 32);
  if (typeof mchid !== 'string') return fail(mchid);
  const description = str('description', b['description'], 127);
  if (typeof description !== 'string') return fail(description);
  const outTradeNo = str('out_trade_no', b['out_trade_no'], 32);
  if (typeof outTradeNo !== 'string') return fail(outTradeNo);
  if (!/^[A-Za-z0-9_\-|*]{6,32}$/.test(outTradeNo)) return fail(invalid('out_trade_no', outTradeNo, '只能是6-32位数字、大小写字母_-|*'));
  const notifyUrl = str('notify_url', b['notify_url'], 255);
  if (typeof notifyUrl !== 'string') return fail(notifyUrl);
  if (!/^https?:\/\/[^\s?#]+$/.test(notifyUrl)) return fail(invalid('notify_url', notifyUrl, '须为不携带参数的http(s)地址'));
  const amount = obj(b['amount']);
  if (!amount || amount['total'] === undefined) return fail(required('amount.total'));
  const total = amount['total'];
  if (typeof total !== 'number' || !Number.isSafeInteger(total) || total < 1 || BigInt(total) > MAX_TOTAL_FEN) return fail(invalid('amount.total', total, '须为大于0的整数（单位：分）'));
  const currency = amount['currency'] ?? 'CNY';
  if (currency !== 'CNY') return fail(invalid('amount.currency', currency, '境内商户号仅支持人民币CNY'));
  let timeExpire: Date | null = null;
  let timeExpireText: string | null = null;
  if (b['time_expire'] !== undefined) {
    timeExpire = parseRfc3339(b['time_expire']);
    if (!timeExpire) return fail(invalid('time_expire', b['time_expire'], '须为rfc3339格式，如2018-06-08T10:34:56+08:00'));
    timeExpireText = b['time_expire'] as string;
  }
  let attach: string | null = null;
  if (b['attach'] !== undefined) {
    const a = str('attach', b['attach'], 128);
    if (typeof a !== 'string') return fail(a);
    attach = a;
  }
  let payerOpenid: string | null = null;
  if (method === 'jsapi') {
    const payer = obj(b['payer']);
    const openid = str('payer.openid', payer?.['openid'], 128);
    if (typeof openid !== 'string') return fail(openid);
    payerOpenid = openid;
  }
  let payerClientIp: string | null = null;
  const scene = obj(b['scene_info']);
  if (method === 'h5' || scene?.['payer_client_ip'] !== undefined) {
    const ip = str('scene_info.payer_client_ip', scene?.['payer_client_ip'], 45);
    if (typeof ip !== 'string') return fail(ip);
    if (isIP(ip) === 0) return fail(invalid('scene_info.payer_client_ip', ip, '须为IPv4或IPv6地址'));
    payerClientIp = ip;
  }
  if (method === 'h5') {
    const type = obj(scene?.['h5_info'])?.['type'];
    if (typeof type !== 'string' || type === '') return fail(required('scene_info.h5_info.type'));
    if (!['Wap', 'iOS', 'Android'].includes(type)) return fail(invalid('scene_info.h5_info.type', type, '须为iOS、Android或Wap'));
  }
  return {
    ok: true,
    order: { method, appid, mchid, description, outTradeNo, notifyUrl, amountFen: BigInt(total), currency, timeExpire, timeExpireText, attach, payerOpenid, payerClientIp },
  };
}

/** The fields that must match when the same out_trade_no is ordered again (the client IP may change). */
export function orderDigest(o: OrderRequest): string {
  const fields = [o.appid, TRADE_TYPE[o.method], o.description, o.notifyUrl, o.amountFen.toString(), o.currency, o.timeExpireText ?? '', o.attach ?? '', o.payerOpenid ?? ''];
  return createHash('sha256').update(JSON.stringify(fields)).digest('hex');
}

// ---- Endpoints ----------------------------------------------------------------------------------------

export interface ApiContext {
  db: Queryable;
  mchid: string;
  appids: ReadonlySet<string>;
  /** Absolute URL of the sandbox's H5 cashier (what h5_url points to). */
  h5CashierUrl: string;
}

function h5UrlOf(ctx: ApiContext, prepayId: string): string {
  const pkg = BigInt('0x' + createHash('sha256').update(prepayId).digest('hex').slice(0, 12)) % 10_000_000_000n;
  return `${ctx.h5CashierUrl}?prepay_id=${prepayId}&package=${pkg.toString().padStart(10, '0')}`;
}

function orderAnswer(ctx: ApiContext, method: WechatpayMethod, t: SandboxTrade): ApiAnswer {
  switch (method) {
    case 'native':
      return { status: 200, body: { code_url: t.codeUrl } };
    case 'h5':
      return { status: 200, body: { h5_url: h5UrlOf(ctx, t.prepayId) } };
    default:
      return { status: 200, body: { prepay_id: t.prepayId } };
  }
}

/** POST /v3/pay/transactions/{native|jsapi|app|h5}: idempotent per out_trade_no and identical fields. */
export async function createOrder(ctx: ApiContext, method: WechatpayMethod, body: Record<string, unknown>): Promise<ApiAnswer> {
  const parsed = parseOrder(method, body);
  if (!parsed.ok) return parsed.answer;
  const o = parsed.order;
  if (o.mchid !== ctx.mchid) return invalid('mchid', o.mchid, '与请求头Authorization中的商户号不一致');
  if (!ctx.appids.has(o.appid)) return error(400, 'APPID_MCHID_NOT_MATCH', 'AppID和mch_id不匹配', { field: 'appid', location: 'body', value: o.appid });
  const digest = orderDigest(o);
  const row: NewTrade = {
    mchid: o.mchid, outTradeNo: o.outTradeNo, appid: o.appid, tradeType: TRADE_TYPE[method], prepayId: newPrepayId(),
    codeUrl: method === 'native' ? newCodeUrl() : null, description: o.description, attach: o.attach, notifyUrl: o.notifyUrl,
    amountFen: o.amountFen, currency: o.currency, payerOpenid: o.payerOpenid, payerClientIp: o.payerClientIp, timeExpire: o.timeExpire,
    requestDigest: digest,
  };
  const inserted = await insertTrade(ctx.db, row);
  if (inserted) return orderAnswer(ctx, method, inserted);
  const existing = await getTrade(ctx.db, { mchid: o.mchid, outTradeNo: o.outTradeNo });
  if (!existing) return error(500, 'SYSTEM_ERROR', '系统异常，请用相同参数重新调用');
  if (isPaid(existing)) return error(400, 'ORDERPAID', '该订单已支付');
  if (existing.tradeState !== 'NOTPAY' && existing.tradeState !== 'USERPAYING') return error(400, 'ORDER_CLOSED', '该订单已关闭');
  if (existing.requestDigest !== digest) return error(403, 'OUT_TRADE_NO_USED', '商户订单号重复');
  return orderAnswer(ctx, method, existing);
}

/** The transaction as the query answers it (fields absent until they exist, as WeChat Pay does). */
export function transactionJson(t: SandboxTrade): Record<string, unknown> {
  const paid = isPaid(t);
  return {
    amount: paid
      ? { currency: t.currency, payer_currency: t.currency, payer_total: Number(t.amountFen), total: Number(t.amountFen) }
      : { payer_currency: t.currency, total: Number(t.amountFen) },
    appid: t.appid,
    attach: t.attach ?? '',
    ...(paid ? { bank_type: 'OTHERS' } : {}),
    mchid: t.mchid,
    out_trade_no: t.outTradeNo,
    ...(t.payerOpenid && paid ? { payer: { openid: t.payerOpenid } } : {}),
    promotion_detail: [],
    ...(t.successTime ? { success_time: formatRfc3339(t.successTime) } : {}),
    trade_state: t.tradeState,
    trade_state_desc: TRADE_STATE_DESC[t.tradeState],
    ...(paid ? { trade_type: t.tradeType } : {}),
    ...(t.transactionId ? { transaction_id: t.transactionId } : {}),
  };
}

function queryMchid(query: Record<string, string | undefined>, authMchid: string): ApiAnswer | null {
  const mchid = query['mchid'];
  if (!mchid) return error(400, 'PARAM_ERROR', '输入源“/query_string/mchid”映射到字段“直连商户号”必填性规则校验失败，此字段为必填项', { location: 'query_string', field: 'mchid' });
  if (mchid !== authMchid) return error(400, 'PARAM_ERROR', '商户号与请求头Authorization中的商户号不一致', { location: 'query_string', field: 'mchid', value: mchid });
  return null;
}

/** GET /v3/pay/transactions/out-trade-no/{out_trade_no}?mchid= */
export async function queryByOutTradeNo(ctx: ApiContext, outTradeNo: string, query: Record<string, string | undefined>): Promise<ApiAnswer> {
  const bad = queryMchid(query, ctx.mchid);
  if (bad) return bad;
  const t = await getTrade(ctx.db, { mchid: ctx.mchid, outTradeNo });
  return t ? { status: 200, body: transactionJson(t) } : error(404, 'ORDER_NOT_EXIST', '订单不存在');
}

/** GET /v3/pay/transactions/id/{transaction_id}?mchid= */
export async function queryByTransactionId(ctx: ApiContext, transactionId: string, query: Record<string, string | undefined>): Promise<ApiAnswer> {
  const bad = queryMchid(query, ctx.mchid);
  if (bad) return bad;
  const t = /^\d{1,32}$/.test(transactionId) ? await getTrade(ctx.db, { mchid: ctx.mchid, transactionId }) : null;
  return t ? { status: 200, body: transactionJson(t) } : error(404, 'ORDER_NOT_EXIST', '订单不存在');
}

/** POST /v3/pay/transactions/out-trade-no/{out_trade_no}/close {mchid} → 204. Closing a closed trade is a no-op. */
export async function closeOrder(ctx: ApiContext, outTradeNo: string, body: Record<string, unknown>): Promise<ApiAnswer> {
  if (body['mchid'] === undefined || body['mchid'] === '') return required('mchid');
  if (body['mchid'] !== ctx.mchid) return invalid('mchid', body['mchid'], '与请求头Authorization中的商户号不一致');
  return mutateTrade<ApiAnswer>(ctx.db, { mchid: ctx.mchid, outTradeNo }, (t) => {
    if (!t) return { answer: error(404, 'ORDER_NOT_EXIST', '订单不存在') };
    if (isPaid(t)) return { answer: error(400, 'ORDERPAID', '该订单已支付') };
    if (t.tradeState === 'CLOSED' || t.tradeState === 'REVOKED') return { answer: { status: 204, body: null } };
    return { patch: { tradeState: 'CLOSED', closedAt: 'now' }, then: () => ({ status: 204, body: null }) };
  });
}

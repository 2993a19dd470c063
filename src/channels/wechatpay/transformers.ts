/**
 * WeChat Pay wire details that are not signatures: wire types, RFC 3339 times in +08:00, trade
 * states, amounts (integer fen), callback bodies, and redaction for the audit log. Pure functions.
 */
import type { ChannelTradeState, RefundState } from '../types.ts';

/** The four v3 "basic payment" products, named as in routing.ts. */
export const WECHATPAY_METHODS = ['native', 'jsapi', 'h5', 'app'] as const;
export type WechatpayMethod = (typeof WECHATPAY_METHODS)[number];

/** `trade_type` WeChat Pay reports for each product. */
export const TRADE_TYPE: Readonly<Record<WechatpayMethod, string>> = { native: 'NATIVE', jsapi: 'JSAPI', h5: 'MWEB', app: 'APP' };

export const TRADE_STATES = ['SUCCESS', 'REFUND', 'NOTPAY', 'CLOSED', 'REVOKED', 'USERPAYING', 'PAYERROR'] as const;
export type TradeState = (typeof TRADE_STATES)[number];

/** WeChat Pay `trade_state` → our words. Unknown states stay pending (channels.md general rules). */
export function mapTradeState(state: string | undefined): ChannelTradeState {
  switch (state) {
    case 'SUCCESS':
    case 'REFUND': // it was paid; refunds are tracked separately
      return 'succeeded';
    case 'CLOSED':
    case 'REVOKED':
      return 'closed';
    case 'PAYERROR':
      return 'failed';
    case 'NOTPAY':
    case 'USERPAYING':
    default:
      return 'pending';
  }
}

export const TRADE_STATE_DESC: Readonly<Record<TradeState, string>> = {
  SUCCESS: '支付成功',
  REFUND: '转入退款',
  NOTPAY: '订单未支付',
  CLOSED: '订单已关闭',
  REVOKED: '已撤销（付款码支付）',
  USERPAYING: '用户支付中（付款码支付）',
  PAYERROR: '支付失败，请重新下单支付',
};

/** `refund_status` (refund answers, queries and REFUND.* callbacks). */
export const REFUND_STATUSES = ['SUCCESS', 'CLOSED', 'PROCESSING', 'ABNORMAL'] as const;
export type RefundStatus = (typeof REFUND_STATUSES)[number];

/**
 * WeChat Pay `refund_status` → our words: SUCCESS ends it well; CLOSED (退款关闭) and ABNORMAL
 * (退款异常: the money did not reach the buyer) end it as failed; PROCESSING and anything unknown
 * stay pending.
 */
export function mapRefundStatus(status: string | undefined): RefundState {
  switch (status) {
    case 'SUCCESS':
      return 'succeeded';
    case 'CLOSED':
    case 'ABNORMAL':
      return 'failed';
    case 'PROCESSING':
    default:
      return 'pending';
  }
}

/** The refund callback event for each final refund_status (WeChat Pay sends none for PROCESSING). */
export const REFUND_EVENT_OF: Readonly<Record<Exclude<RefundStatus, 'PROCESSING'>, { eventType: string; summary: string }>> = {
  SUCCESS: { eventType: 'REFUND.SUCCESS', summary: '退款成功' },
  ABNORMAL: { eventType: 'REFUND.ABNORMAL', summary: '退款异常' },
  CLOSED: { eventType: 'REFUND.CLOSED', summary: '退款关闭' },
};

/** out_refund_no: 1-64 of digits, letters and `_-|*@` (WeChat Pay's rule). */
export const OUT_REFUND_NO = /^[A-Za-z0-9_\-|*@]{1,64}$/;

/** The refund `reason` WeChat Pay accepts: at most 80 bytes. */
export const MAX_REFUND_REASON_BYTES = 80;

const GMT8_OFFSET_MS = 8 * 3600_000;

/** RFC 3339 with WeChat Pay's +08:00 offset, whole seconds: `2018-06-08T10:34:56+08:00`. */
export function formatRfc3339(date: Date): string {
  const shifted = new Date(date.getTime() + GMT8_OFFSET_MS);
  const p = (n: number) => String(n).padStart(2, '0');
  return (
    `${shifted.getUTCFullYear()}-${p(shifted.getUTCMonth() + 1)}-${p(shifted.getUTCDate())}T` +
    `${p(shifted.getUTCHours())}:${p(shifted.getUTCMinutes())}:${p(shifted.getUTCSeconds())}+08:00`
  );
}

/** Parse an RFC 3339 date-time with an explicit offset (Z or ±hh:mm); null when malformed. */
export function parseRfc3339(text: unknown): Date | null {
  if (typeof text !== 'string') return null;
  const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$/.exec(text);
  if (!m) return null;
  const [y, mo, d, h, mi, s] = m.slice(1, 7).map(Number) as [number, number, number, number, number, number];
  if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || s > 59) return null;
  const utc = Date.UTC(y, mo - 1, d, h, mi, s);
  const check = new Date(utc);
  if (check.getUTCDate() !== d || check.getUTCMonth() !== mo - 1) return null;
  const offset = m[8] === 'Z' ? 0 : (m[8]![0] === '-' ? -1 : 1) * (Number(m[8]!.slice(1, 3)) * 60 + Number(m[8]!.slice(4, 6)));
  return new Date(utc - offset * 60_000);
}

/** `yyyyMMddHHmmss` in GMT+8 (inside WeChat Pay identifiers). */
export function gmt8Compact(date: Date): string {
  return formatRfc3339(date).slice(0, 19).replace(/[-T:]/g, '');
}

/**
 * A JSON amount in fen: a safe positive integer number. WeChat Pay's `amount.total` is an int,
 * so bigger values are refused. Null for anything else (floats, strings, negatives).
 */
export const MAX_TOTAL_FEN = 2_147_483_647n;

export function fenFromJson(value: unknown): bigint | null {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) return null;
  const fen = BigInt(value);
  return fen > MAX_TOTAL_FEN ? null : fen;
}

/** UTF-8 prefix of at most `maxBytes` bytes, cut on a character boundary. */
export function truncateUtf8(text: string, maxBytes: number): string {
  let bytes = 0;
  let out = '';
  for (const ch of text) {
    const n = Buffer.byteLength(ch, 'utf8');
    if (bytes + n > maxBytes) break;
    bytes += n;
    out += ch;
  }
  return out;
}

// ---- Wire types ----------------------------------------------------------------------------------

export interface WireAmount {
  total?: number;
  payer_total?: number;
  currency?: string;
  payer_currency?: string;
}

/** A transaction as query answers it and as a TRANSACTION.SUCCESS resource decrypts. */
export interface WireTransaction {
  appid?: string;
  mchid?: string;
  out_trade_no?: string;
  transaction_id?: string;
  trade_type?: string;
  trade_state?: string;
  trade_state_desc?: string;
  bank_type?: string;
  attach?: string;
  success_time?: string;
  payer?: { openid?: string };
  amount?: WireAmount;
}

/** A refund as the refund call and the refund query answer it. */
export interface WireRefund {
  refund_id?: string;
  out_refund_no?: string;
  transaction_id?: string;
  out_trade_no?: string;
  channel?: string;
  user_received_account?: string;
  success_time?: string;
  create_time?: string;
  status?: string;
  funds_account?: string;
  amount?: {
    total?: number;
    refund?: number;
    payer_total?: number;
    payer_refund?: number;
    settlement_refund?: number;
    settlement_total?: number;
    discount_refund?: number;
    currency?: string;
    refund_fee?: number;
    from?: unknown[];
  };
}

/** A REFUND.* callback resource, decrypted (original_type "refund"; its amount carries no currency). */
export interface WireRefundNotice {
  mchid?: string;
  transaction_id?: string;
  out_trade_no?: string;
  refund_id?: string;
  out_refund_no?: string;
  refund_status?: string;
  success_time?: string;
  user_received_account?: string;
  amount?: { total?: number; refund?: number; payer_total?: number; payer_refund?: number };
}

export interface WireError {
  code: string;
  message: string;
  detail?: unknown;
}

/** A callback body, before decryption. */
export interface CallbackEnvelope {
  id: string;
  create_time: string;
  event_type: string;
  resource_type: string;
  summary?: string;
  resource: { original_type: string; algorithm: string; ciphertext: string; associated_data?: string; nonce: string };
}

const isString = (v: unknown): v is string => typeof v === 'string';

/** Shape check of a parsed callback body. */
export function asCallbackEnvelope(v: unknown): { ok: true; envelope: CallbackEnvelope } | { ok: false; reason: string } {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return { ok: false, reason: 'body is not a JSON object' };
  const o = v as Record<string, unknown>;
  if (!isString(o['id']) || o['id'] === '' || o['id'].length > 64) return { ok: false, reason: 'missing or malformed id' };
  if (!isString(o['event_type']) || o['event_type'] === '' || o['event_type'].length > 64) return { ok: false, reason: 'missing event_type' };
  if (o['resource_type'] !== 'encrypt-resource') return { ok: false, reason: `unsupported resource_type ${JSON.stringify(o['resource_type'])}` };
  const r = o['resource'];
  if (r === null || typeof r !== 'object' || Array.isArray(r)) return { ok: false, reason: 'missing resource' };
  const res = r as Record<string, unknown>;
  if (res['algorithm'] !== 'AEAD_AES_256_GCM') return { ok: false, reason: `unsupported resource algorithm ${JSON.stringify(res['algorithm'])}` };
  if (!isString(res['ciphertext']) || !isString(res['nonce']) || (res['associated_data'] !== undefined && !isString(res['associated_data']))) {
    return { ok: false, reason: 'malformed resource' };
  }
  return { ok: true, envelope: o as unknown as CallbackEnvelope };
}

// ---- Audit redaction -----------------------------------------------------------------------------

const SECRET_KEYS = /^(authorization|signature|pay_?sign|paysign|sign|private_?key|privatekey|api_?v3_?key|apiv3key|ciphertext|wechatpay-signature)$/i;
const REDACTED = '[REDACTED]';

/** Deep copy with secrets replaced: signatures, keys, encrypted resources. */
export function redactSecrets(value: unknown, depth = 0): unknown {
  if (depth > 20) return REDACTED;
  if (typeof value === 'bigint') return value.toString();
  if (Array.isArray(value)) return value.map((v) => redactSecrets(v, depth + 1));
  if (value && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
      out[k] = SECRET_KEYS.test(k) ? REDACTED : redactSecrets(v, depth + 1);
    }
    return out;
  }
  return value;
}

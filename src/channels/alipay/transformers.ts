/**
 * Alipay wire details that are not signatures: its clock (GMT+8), form bodies, trade states, and
 * redaction of secrets for the audit log. Pure functions only.
 */
import type { ChannelTradeState, RefundState } from '../types.ts';

const GMT8_OFFSET_MS = 8 * 3600_000;

/** `yyyy-MM-dd HH:mm:ss` in GMT+8 (Alipay's `timestamp`, `time_expire`, `gmt_*`, `notify_time`). */
export function formatAlipayTime(date: Date): string {
  const shifted = new Date(date.getTime() + GMT8_OFFSET_MS);
  const p = (n: number) => String(n).padStart(2, '0');
  return (
    `${shifted.getUTCFullYear()}-${p(shifted.getUTCMonth() + 1)}-${p(shifted.getUTCDate())} ` +
    `${p(shifted.getUTCHours())}:${p(shifted.getUTCMinutes())}:${p(shifted.getUTCSeconds())}`
  );
}

/** `yyyy-MM-dd HH:mm:ss.SSS` in GMT+8: `gmt_refund` in a refund notification ("2015-04-28 15:45:57.320"). */
export function formatAlipayTimeMillis(date: Date): string {
  return `${formatAlipayTime(date)}.${String(date.getTime() % 1000).padStart(3, '0')}`;
}

/** `yyyyMMdd` in GMT+8 (the date prefix of Alipay trade numbers). */
export function alipayDatePrefix(date: Date): string {
  return formatAlipayTime(date).slice(0, 10).replaceAll('-', '');
}

/** Parse `yyyy-MM-dd HH:mm:ss` (GMT+8); null when malformed or not a real calendar instant. */
export function parseAlipayTime(text: string): Date | null {
  const m = /^(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})$/.exec(text);
  if (!m) return null;
  const [y, mo, d, h, mi, s] = m.slice(1).map(Number) as [number, number, number, number, number, number];
  const utc = Date.UTC(y, mo - 1, d, h, mi, s);
  const check = new Date(utc);
  if (check.getUTCFullYear() !== y || check.getUTCMonth() !== mo - 1 || check.getUTCDate() !== d || h > 23 || mi > 59 || s > 59) return null;
  return new Date(utc - GMT8_OFFSET_MS);
}

export type ParsedForm = { ok: true; params: Record<string, string> } | { ok: false; reason: string };

/**
 * Parse an `application/x-www-form-urlencoded` body (UTF-8) into single-valued params. A repeated
 * key or bytes that are not UTF-8 make the whole body invalid: a signed message is never ambiguous.
 */
export function parseFormBody(raw: Buffer | string, maxBytes = 64 * 1024): ParsedForm {
  const bytes = typeof raw === 'string' ? Buffer.from(raw, 'utf8') : raw;
  if (bytes.length === 0) return { ok: false, reason: 'empty body' };
  if (bytes.length > maxBytes) return { ok: false, reason: `body larger than ${maxBytes} bytes` };
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    return { ok: false, reason: 'body is not valid UTF-8' };
  }
  return parseFormText(text);
}

export function parseFormText(text: string): ParsedForm {
  if (/%(?![0-9A-Fa-f]{2})/.test(text)) return { ok: false, reason: 'malformed percent-encoding' };
  const params: Record<string, string> = Object.create(null);
  for (const [key, value] of new URLSearchParams(text)) {
    if (Object.prototype.hasOwnProperty.call(params, key)) return { ok: false, reason: `parameter ${key} repeated` };
    if (value.includes('\uFFFD')) return { ok: false, reason: `parameter ${key} is not valid UTF-8` };
    params[key] = value;
  }
  return { ok: true, params: { ...params } };
}

/** Alipay trade_status → our words. Anything unknown stays pending (channels.md general rules). */
export function mapTradeStatus(status: string | undefined): ChannelTradeState {
  switch (status) {
    case 'TRADE_SUCCESS':
    case 'TRADE_FINISHED':
      return 'succeeded';
    case 'TRADE_CLOSED':
      return 'closed';
    case 'WAIT_BUYER_PAY':
    default:
      return 'pending';
  }
}

/**
 * `refund_status` of alipay.trade.fastpay.refund.query → our words. Alipay documents one value,
 * REFUND_SUCCESS; an absent status means "not received, or failed", which a query cannot tell
 * apart from "still processing": everything but REFUND_SUCCESS stays pending.
 */
export function mapRefundStatus(status: string | undefined): RefundState {
  return status === 'REFUND_SUCCESS' ? 'succeeded' : 'pending';
}

const SECRET_KEYS = /^(sign|private_?key|privatekey|app_private_key|alipay_?public_?key|alipaypublickey|encrypt_?key|app_auth_token|auth_token)$/i;
const REDACTED = '[REDACTED]';

/** Deep copy with secrets replaced: `sign`, keys, tokens; also `sign=` inside URLs/order strings. */
export function redactSecrets(value: unknown, depth = 0): unknown {
  if (depth > 20) return REDACTED;
  if (typeof value === 'string') return redactSignInQuery(value);
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

function redactSignInQuery(text: string): string {
  if (!/(^|[?&])(sign|app_auth_token|auth_token)=/.test(text)) return text;
  return text.replace(/(^|[?&])(sign|app_auth_token|auth_token)=[^&]*/g, `$1$2=${REDACTED}`);
}

/**
 * Alipay connector (OpenAPI v2 `gateway.do`) over the official `alipay-sdk`, with response
 * signature validation on. Holds no state; every call is reported to the `audit` hook, redacted.
 *
 * Refunds (`alipay.trade.refund`) are synchronous at Alipay: `code 10000` with `fund_change: "Y"`
 * is a refund that happened. `fund_change: "N"` (a replay of the same out_request_no, or a refund
 * Alipay has not finished) is confirmed with `alipay.trade.fastpay.refund.query`, as Alipay's
 * documentation asks; until REFUND_SUCCESS the refund stays pending.
 */
import { createWriteStream } from 'node:fs';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { AlipaySdk, AlipayRequestError, type AlipaySdkCommonResult } from 'alipay-sdk';
import {
  ChannelError,
  type Acknowledgement,
  type ChannelConnector,
  type CreatePaymentInput,
  type CreatePaymentResult,
  type NextAction,
  type NotificationInput,
  type RefundRequest,
  type RefundSnapshot,
  type TradeSnapshot,
  type VerifyResult,
} from '../types.ts';
import { formatDecimal, normalizeCurrency, parseDecimal } from '../../domain/money.ts';
import { loadPrivateKey, loadPublicKey, verifyAlipayNotifySignature } from './sign.ts';
import { formatAlipayTime, mapRefundStatus, mapTradeStatus, parseFormBody, redactSecrets } from './transformers.ts';

export interface AlipayAuditEntry {
  operation: string;
  channelReference?: string;
  request: unknown;
  response: unknown;
  error?: string;
  durationMs: number;
}

export interface AlipayConfig {
  appId: string;
  /** Merchant application private key: PEM (PKCS#1 or PKCS#8) or Alipay's bare base64. */
  privateKey: string;
  /** Alipay's public key: PEM or bare base64 SPKI. */
  alipayPublicKey: string;
  /** e.g. https://openapi.alipay.com/gateway.do or http://127.0.0.1:4000/sandbox/alipay/gateway.do */
  gateway: string;
  timeoutMs?: number;
  audit?: (entry: AlipayAuditEntry) => void;
}

export const ALIPAY_METHODS = ['qr', 'page', 'wap', 'app'] as const;
const BILL_DOWNLOAD_TIMEOUT_MS = 120_000;
const BILL_MAX_BYTES = 1024 * 1024 * 1024;
type AlipayMethod = (typeof ALIPAY_METHODS)[number];

const PRODUCT: Record<AlipayMethod, { api: string; productCode: string }> = {
  qr: { api: 'alipay.trade.precreate', productCode: 'FACE_TO_FACE_PAYMENT' },
  page: { api: 'alipay.trade.page.pay', productCode: 'FAST_INSTANT_TRADE_PAY' },
  wap: { api: 'alipay.trade.wap.pay', productCode: 'QUICK_WAP_WAY' },
  app: { api: 'alipay.trade.app.pay', productCode: 'QUICK_MSECURITY_PAY' },
};

/** Alipay's single-trade bounds: 0.01 to 100,000,000.00 yuan. */
const MIN_AMOUNT_FEN = 1n;
const MAX_AMOUNT_FEN = 10_000_000_000n;
const MAX_SUBJECT_CHARS = 256;
const MAX_REFUND_REASON_CHARS = 256;
const MAX_OUT_TRADE_NO = 64;
const SUCCESS_CODE = '10000';
const NOTIFY_MAX_BYTES = 64 * 1024;

/** Business sub-codes after which trying the same call again may succeed. */
const RETRYABLE_SUB_CODES = new Set(['ACQ.SYSTEM_ERROR', 'aop.ACQ.SYSTEM_ERROR', 'isp.unknow-error', 'aop.unknow-error']);

/**
 * alipay.trade.refund's answers to "more than the trade has left", both mapped to
 * `refund_exceeds_remaining` (not retryable): ACQ.REASON_TRADE_REFUND_FEE_ERR (退款金额无效: the
 * refunds of the trade together would exceed its total — the remainder case) and
 * ACQ.REFUND_AMT_NOT_EQUAL_TOTAL (退款金额超限: this one refund exceeds the total, or a partial
 * refund came without out_request_no). Alipay's error table, alipay.trade.refund.
 */
const OVER_REFUND_SUB_CODES = new Set(['ACQ.REASON_TRADE_REFUND_FEE_ERR', 'ACQ.REFUND_AMT_NOT_EQUAL_TOTAL']);

type ExecParams = { bizContent: Record<string, string> } & Record<string, unknown>;

export function createAlipayConnector(config: AlipayConfig): ChannelConnector {
  assertConfig(config);
  const sdk = new AlipaySdk({
    appId: config.appId,
    // Normalised to PKCS#1 PEM, the SDK's default key type.
    privateKey: loadPrivateKey(config.privateKey).export({ type: 'pkcs1', format: 'pem' }).toString(),
    alipayPublicKey: loadPublicKey(config.alipayPublicKey).export({ type: 'spki', format: 'pem' }).toString(),
    gateway: config.gateway,
    timeout: config.timeoutMs ?? 10_000,
    camelcase: false,
    signType: 'RSA2',
  });
  const alipayPublicKey = loadPublicKey(config.alipayPublicKey);

  function audit(entry: AlipayAuditEntry): void {
    if (!config.audit) return;
    try {
      config.audit({ ...entry, request: redactSecrets(entry.request), response: redactSecrets(entry.response) });
    } catch {
      // An audit sink failure must never change the outcome of a payment call.
    }
  }

  /** One gateway call, signed response verified by the SDK, audited; a business error is returned, not thrown. */
  async function exec(operation: string, api: string, params: ExecParams, channelReference: string): Promise<AlipaySdkCommonResult> {
    const request = { method: api, ...params };
    const started = Date.now();
    try {
      const result = await sdk.exec(api, { ...params, timestamp: formatAlipayTime(new Date()) }, { validateSign: true });
      audit({ operation, channelReference, request, response: result, durationMs: Date.now() - started });
      return result;
    } catch (err) {
      const channelError = toChannelError(err);
      audit({ operation, channelReference, request, response: responseOf(err), error: `${channelError.code}: ${channelError.message}`, durationMs: Date.now() - started });
      throw channelError;
    }
  }

  /** page/wap/app calls are signed locally (no HTTP): the client takes the result to Alipay. */
  function signLocally(operation: string, channelReference: string, api: string, params: ExecParams, build: () => string): string {
    const started = Date.now();
    const result = build();
    audit({ operation, channelReference, request: { method: api, ...params }, response: result, durationMs: Date.now() - started });
    return result;
  }

  async function createPayment(input: CreatePaymentInput): Promise<CreatePaymentResult> {
    const method = checkMethod(input.method);
    const { api, productCode } = PRODUCT[method];
    const bizContent = compact({
      out_trade_no: checkReference(input.channelReference),
      total_amount: formatDecimal(checkAmount(input.amountMinor, input.currency), 'CNY'),
      subject: checkSubject(input.subject),
      product_code: productCode,
      time_expire: formatAlipayTime(input.expiresAt),
      quit_url: method === 'wap' ? input.returnUrl : undefined,
    });
    const common = compact({
      notify_url: input.notifyUrl,
      return_url: method === 'page' || method === 'wap' ? input.returnUrl : undefined,
    });
    const params: ExecParams = { ...common, bizContent };
    const timestamp = () => formatAlipayTime(new Date());

    if (method === 'qr') {
      const result = await exec('create_payment', api, params, input.channelReference);
      if (result.code !== SUCCESS_CODE) throw businessError(api, result);
      const qr = stringField(result, 'qr_code');
      if (!qr) throw new ChannelError('alipay.trade.precreate answered without qr_code', 'alipay', 'invalid_response', true);
      return { action: { type: 'qr_code', qr_code_url: qr } };
    }
    if (method === 'app') {
      const orderString = signLocally('create_payment', input.channelReference, api, params, () =>
        sdk.sdkExecute(api, { ...params, timestamp: timestamp() }),
      );
      return { action: { type: 'app', params: { order_string: orderString } } };
    }
    const url = signLocally('create_payment', input.channelReference, api, params, () =>
      sdk.pageExecute(api, 'GET', { ...params, timestamp: timestamp() }),
    );
    const action: NextAction = { type: 'redirect', url };
    return { action };
  }

  async function queryPayment(input: { channelReference: string; currency: string }): Promise<TradeSnapshot> {
    const currency = checkCurrency(input.currency);
    const api = 'alipay.trade.query';
    const result = await exec('query_payment', api, { bizContent: { out_trade_no: checkReference(input.channelReference) } }, input.channelReference);
    if (result.code !== SUCCESS_CODE) {
      if (result.sub_code === 'ACQ.TRADE_NOT_EXIST') return { state: 'not_found', channelReference: input.channelReference };
      throw businessError(api, result);
    }
    return snapshotFromQuery(result, input.channelReference, currency);
  }

  async function closePayment(input: { channelReference: string; currency: string }): Promise<TradeSnapshot> {
    checkCurrency(input.currency);
    const api = 'alipay.trade.close';
    const result = await exec('close_payment', api, { bizContent: { out_trade_no: checkReference(input.channelReference) } }, input.channelReference);
    if (result.code === SUCCESS_CODE) {
      const tradeNo = stringField(result, 'trade_no');
      return { state: 'closed', channelReference: input.channelReference, rawStatus: 'TRADE_CLOSED', ...(tradeNo ? { channelTransactionId: tradeNo } : {}) };
    }
    if (result.sub_code === 'ACQ.TRADE_NOT_EXIST') return { state: 'not_found', channelReference: input.channelReference };
    if (result.sub_code === 'ACQ.TRADE_STATUS_ERROR' || result.sub_code === 'ACQ.REASON_TRADE_STATUS_INVALID' || result.sub_code === 'ACQ.TRADE_HAS_SUCCESS') {
      // Not open any more: paid meanwhile, or already closed. The query says which.
      const snapshot = await queryPayment(input);
      if (snapshot.state === 'pending') throw new ChannelError(`alipay.trade.close refused (${result.sub_code}) while the trade is still open`, 'alipay', result.sub_code, true);
      return snapshot;
    }
    throw businessError(api, result);
  }

  /** `alipay.trade.fastpay.refund.query` for one out_request_no of one trade. */
  async function fetchRefund(operation: string, channelReference: string, refundReference: string): Promise<RefundSnapshot> {
    const api = 'alipay.trade.fastpay.refund.query';
    const result = await exec(operation, api, { bizContent: { out_trade_no: channelReference, out_request_no: refundReference } }, channelReference);
    if (result.code !== SUCCESS_CODE) throw businessError(api, result);
    const reference = stringField(result, 'out_trade_no') ?? channelReference;
    const requestNo = stringField(result, 'out_request_no') ?? refundReference;
    if (reference !== channelReference || requestNo !== refundReference) {
      throw new ChannelError(`${api} answered for ${reference}/${requestNo}, asked for ${channelReference}/${refundReference}`, 'alipay', 'invalid_response', false);
    }
    const rawStatus = stringField(result, 'refund_status');
    const refundAmount = stringField(result, 'refund_amount');
    const amountMinor = refundAmount === undefined ? undefined : parseDecimal(refundAmount, 'CNY');
    if (amountMinor === null || (amountMinor !== undefined && amountMinor <= 0n)) {
      throw new ChannelError(`${api} answered an unparsable refund_amount ${refundAmount}`, 'alipay', 'invalid_response', false);
    }
    // REFUND_SUCCESS, or nothing: "not received, or failed" cannot be told from "not finished" — pending.
    return {
      state: mapRefundStatus(rawStatus),
      refundReference,
      channelReference,
      ...(amountMinor !== undefined ? { amountMinor, currency: 'CNY' } : {}),
      ...(rawStatus ? { rawStatus } : {}),
    };
  }

  async function refundPayment(input: RefundRequest): Promise<RefundSnapshot> {
    checkCurrency(input.currency);
    const channelReference = checkReference(input.channelReference);
    const refundReference = checkRefundReference(input.refundReference);
    const amountMinor = checkRefundAmount(input.amountMinor);
    const api = 'alipay.trade.refund';
    const reason = input.reason?.trim() ? Array.from(input.reason.trim()).slice(0, MAX_REFUND_REASON_CHARS).join('') : undefined;
    // Refund notifications go to the payment's notify_url at Alipay: this API takes none.
    const bizContent = compact({
      out_trade_no: channelReference,
      refund_amount: formatDecimal(amountMinor, 'CNY'),
      out_request_no: refundReference,
      refund_reason: reason,
    });
    let result: AlipaySdkCommonResult;
    try {
      result = await exec('refund_payment', api, { bizContent }, channelReference);
    } catch (err) {
      throw outcomeUnknown(err);
    }
    if (result.code !== SUCCESS_CODE) throw refundError(api, result);
    const reference = stringField(result, 'out_trade_no') ?? channelReference;
    if (reference !== channelReference) {
      // Accepted, but about another trade: what happened to ours is unknown, so retryable (pending).
      throw new ChannelError(`${api} answered for ${reference}, asked for ${channelReference}`, 'alipay', 'invalid_response', true);
    }
    const fundChange = stringField(result, 'fund_change');
    if (fundChange === 'Y') {
      return { state: 'succeeded', refundReference, channelReference, amountMinor, currency: 'CNY', rawStatus: 'fund_change=Y' };
    }
    // Accepted (10000) without a change of funds now: a replay, or not finished. Alipay: confirm
    // with the refund query. The refund request itself succeeded, so a failed confirmation is
    // "pending", never an error (an error would make the caller give the refund up).
    const pending: RefundSnapshot = { state: 'pending', refundReference, channelReference, amountMinor, currency: 'CNY', rawStatus: `fund_change=${fundChange ?? 'absent'}` };
    try {
      const confirmed = await fetchRefund('refund_payment_confirm', channelReference, refundReference);
      return confirmed.state === 'succeeded' ? confirmed : pending;
    } catch {
      return pending;
    }
  }

  async function queryRefund(input: { channelReference: string; refundReference: string; currency: string }): Promise<RefundSnapshot> {
    checkCurrency(input.currency);
    return fetchRefund('query_refund', checkReference(input.channelReference), checkRefundReference(input.refundReference));
  }

  async function verifyNotification(input: NotificationInput, currencyOf: (ref: string) => Promise<string | null>): Promise<VerifyResult> {
    const parsed = parseNotification(input, alipayPublicKey);
    if (!parsed.ok) return parsed;
    const p = parsed.params;
    const reference = p['out_trade_no']!;
    const currency = normalizeCurrency((await currencyOf(reference)) ?? 'CNY');
    if (!currency) return { ok: false, reason: `unknown currency for ${reference}` };
    const amountMinor = parseDecimal(p['total_amount']!, currency);
    if (amountMinor === null || amountMinor <= 0n) return { ok: false, reason: `unparsable total_amount ${JSON.stringify(p['total_amount'])}` };
    if (isRefundNotification(p)) return translateRefundNotification(p, currency, amountMinor);
    return {
      ok: true,
      notification: {
        eventId: p['notify_id']!,
        kind: 'payment',
        appId: p['app_id']!,
        trade: {
          state: mapTradeStatus(p['trade_status']),
          channelReference: reference,
          channelTransactionId: p['trade_no']!,
          amountMinor,
          currency,
          rawStatus: p['trade_status']!,
        },
      },
    };
  }

  /**
   * alipay.data.dataservice.bill.downloadurl.query (bill_type "trade") answers a short-lived URL;
   * the zip is fetched from it into `destination`, bounded in time and size.
   */
  async function downloadBill(input: { billDate: string; destination: string }): Promise<void> {
    if (!/^\d{4}-\d{2}-\d{2}$/.test(input.billDate)) throw new ChannelError(`bill_date must be YYYY-MM-DD, got ${input.billDate}`, 'alipay', 'bill_date_invalid', false);
    const api = 'alipay.data.dataservice.bill.downloadurl.query';
    const result = await exec('download_bill', api, { bizContent: { bill_type: 'trade', bill_date: input.billDate } }, `bill:${input.billDate}`);
    if (result.code !== SUCCESS_CODE) throw businessError(api, result);
    const url = stringField(result, 'bill_download_url');
    if (!url) throw new ChannelError(`${api} answered without bill_download_url`, 'alipay', 'invalid_response', true);
    const res = await fetch(url, { signal: AbortSignal.timeout(BILL_DOWNLOAD_TIMEOUT_MS) });
    if (!res.ok || !res.body) throw new ChannelError(`bill download answered HTTP ${res.status}`, 'alipay', 'http_error', res.status >= 500);
    let bytes = 0;
    const limit = new Transform({
      transform(chunk: Buffer, _e, cb) {
        bytes += chunk.length;
        cb(bytes > BILL_MAX_BYTES ? new ChannelError('the bill is larger than allowed', 'alipay', 'bill_too_large', false) : null, chunk);
      },
    });
    await pipeline(Readable.fromWeb(res.body as import('node:stream/web').ReadableStream), limit, createWriteStream(input.destination));
  }

  return {
    channel: 'alipay',
    appId: config.appId,
    methods: ALIPAY_METHODS,
    createPayment,
    queryPayment,
    closePayment,
    refundPayment,
    queryRefund,
    downloadBill,
    verifyNotification,
    ackSuccess: (): Acknowledgement => ({ statusCode: 200, contentType: 'text/plain', body: 'success' }),
    ackFailure: (): Acknowledgement => ({ statusCode: 200, contentType: 'text/plain', body: 'fail' }),
  };
}

const NOTIFY_REQUIRED = ['notify_id', 'app_id', 'out_trade_no', 'trade_no', 'trade_status', 'total_amount'] as const;

/**
 * After a refund Alipay sends the trade's trade_status_sync again, with `out_biz_no` (the refund's
 * out_request_no), `refund_fee` and `gmt_refund`. Either of the first two makes it a refund
 * notification; a `refund_fee` of 0.00 alone does not.
 */
function isRefundNotification(p: Record<string, string>): boolean {
  if (p['out_biz_no']) return true;
  const fee = p['refund_fee'];
  return fee !== undefined && fee !== '' && !/^0+(\.0+)?$/.test(fee);
}

/**
 * The refund notification in our words. Alipay sends one only for a refund that succeeded. Its
 * `refund_fee` is the trade's refunded TOTAL (all refunds so far), not this refund's amount, and
 * no field carries this refund's amount: amountMinor stays undefined (the caller knows the amount
 * of its refund by refundReference; the refund query answers it too). `refund_fee` is still
 * checked (a positive amount, at most the trade's total).
 */
function translateRefundNotification(p: Record<string, string>, currency: string, totalMinor: bigint): VerifyResult {
  const refundedMinor = p['refund_fee'] ? parseDecimal(p['refund_fee'], currency) : undefined;
  if (refundedMinor === null || (refundedMinor !== undefined && (refundedMinor <= 0n || refundedMinor > totalMinor))) {
    return { ok: false, reason: `invalid refund_fee ${JSON.stringify(p['refund_fee'])} for total_amount ${p['total_amount']}` };
  }
  const refundReference = p['out_biz_no'];
  return {
    ok: true,
    notification: {
      eventId: p['notify_id']!,
      kind: 'refund',
      appId: p['app_id']!,
      refund: {
        state: 'succeeded',
        channelReference: p['out_trade_no']!,
        ...(refundReference ? { refundReference } : {}),
        currency,
        rawStatus: p['trade_status']!,
      },
    },
  };
}

/** Content type, form parsing, signature and required fields; the amount is checked by the caller of this. */
function parseNotification(input: NotificationInput, alipayPublicKey: ReturnType<typeof loadPublicKey>): { ok: true; params: Record<string, string> } | { ok: false; reason: string } {
  const contentType = (input.contentType ?? headerValue(input.headers, 'content-type') ?? '').toLowerCase();
  if (contentType && !contentType.startsWith('application/x-www-form-urlencoded')) return { ok: false, reason: `unexpected content type ${contentType}` };
  const form = parseFormBody(input.rawBody, NOTIFY_MAX_BYTES);
  if (!form.ok) return form;
  const p = form.params;
  if (!p['sign']) return { ok: false, reason: 'missing sign' };
  if (p['sign_type'] !== undefined && p['sign_type'] !== 'RSA2') return { ok: false, reason: `unsupported sign_type ${p['sign_type']}` };
  if (p['charset'] !== undefined && p['charset'].toLowerCase() !== 'utf-8') return { ok: false, reason: `unsupported charset ${p['charset']}` };
  if (!verifyAlipayNotifySignature(p, alipayPublicKey)) return { ok: false, reason: 'invalid signature' };
  const missing = NOTIFY_REQUIRED.filter((k) => !p[k]);
  if (missing.length > 0) return { ok: false, reason: `missing fields: ${missing.join(', ')}` };
  if (p['notify_type'] !== undefined && p['notify_type'] !== 'trade_status_sync') return { ok: false, reason: `unsupported notify_type ${p['notify_type']}` };
  return { ok: true, params: p };
}

function headerValue(headers: NotificationInput['headers'], name: string): string | undefined {
  const v = headers[name] ?? headers[name.toLowerCase()];
  return Array.isArray(v) ? v[0] : v;
}

function snapshotFromQuery(result: AlipaySdkCommonResult, requested: string, currency: string): TradeSnapshot {
  const reference = stringField(result, 'out_trade_no') ?? requested;
  if (reference !== requested) {
    throw new ChannelError(`alipay.trade.query answered for ${reference}, asked for ${requested}`, 'alipay', 'invalid_response', false);
  }
  const rawStatus = stringField(result, 'trade_status');
  const totalAmount = stringField(result, 'total_amount');
  const amountMinor = totalAmount === undefined ? undefined : parseDecimal(totalAmount, currency);
  if (amountMinor === null) throw new ChannelError(`alipay.trade.query answered an unparsable total_amount ${totalAmount}`, 'alipay', 'invalid_response', false);
  const tradeNo = stringField(result, 'trade_no');
  return {
    state: mapTradeStatus(rawStatus),
    channelReference: reference,
    ...(tradeNo ? { channelTransactionId: tradeNo } : {}),
    ...(amountMinor !== undefined ? { amountMinor, currency } : {}),
    ...(rawStatus ? { rawStatus } : {}),
  };
}

function stringField(result: AlipaySdkCommonResult, key: string): string | undefined {
  const v = result[key];
  return typeof v === 'string' && v !== '' ? v : undefined;
}

/** Drop undefined and empty values: Alipay leaves empty values out of the signed string, the SDK does not. */
function compact(obj: Record<string, string | undefined>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(obj)) if (v !== undefined && v !== '') out[k] = v;
  return out;
}

function assertConfig(config: AlipayConfig): void {
  for (const key of ['appId', 'privateKey', 'alipayPublicKey', 'gateway'] as const) {
    if (typeof config[key] !== 'string' || config[key].trim() === '') throw new TypeError(`AlipayConfig.${key} is required`);
  }
  new URL(config.gateway); // throws on a malformed gateway
}

function checkMethod(method: string): AlipayMethod {
  if ((ALIPAY_METHODS as readonly string[]).includes(method)) return method as AlipayMethod;
  throw new ChannelError(`alipay does not support method ${method}`, 'alipay', 'method_not_supported', false);
}

function checkCurrency(currency: string): 'CNY' {
  if (normalizeCurrency(currency) === 'CNY') return 'CNY';
  throw new ChannelError(`alipay domestic trades are CNY only, got ${currency}`, 'alipay', 'currency_not_supported', false);
}

function checkAmount(amountMinor: bigint, currency: string): bigint {
  checkCurrency(currency);
  if (amountMinor < MIN_AMOUNT_FEN || amountMinor > MAX_AMOUNT_FEN) {
    throw new ChannelError(`alipay amount must be between 0.01 and 100000000.00 CNY, got ${amountMinor} fen`, 'alipay', 'amount_invalid', false);
  }
  return amountMinor;
}

function checkReference(reference: string): string {
  if (typeof reference !== 'string' || !/^[A-Za-z0-9_-]{1,64}$/.test(reference)) {
    throw new ChannelError(`out_trade_no must be 1-${MAX_OUT_TRADE_NO} letters, digits, _ or -`, 'alipay', 'reference_invalid', false);
  }
  return reference;
}

function checkRefundReference(reference: string): string {
  if (typeof reference !== 'string' || !/^[A-Za-z0-9_-]{1,64}$/.test(reference)) {
    throw new ChannelError('out_request_no must be 1-64 letters, digits, _ or -', 'alipay', 'refund_reference_invalid', false);
  }
  return reference;
}

/**
 * A positive amount within Alipay's bounds. Whether the trade has that much left is Alipay's to
 * say (it knows every refund of the trade, ours or made in its merchant portal).
 */
function checkRefundAmount(amountMinor: bigint): bigint {
  if (typeof amountMinor !== 'bigint' || amountMinor < MIN_AMOUNT_FEN || amountMinor > MAX_AMOUNT_FEN) {
    throw new ChannelError(`alipay refund amount must be between 0.01 and 100000000.00 CNY, got ${amountMinor} fen`, 'alipay', 'amount_invalid', false);
  }
  return amountMinor;
}

function checkSubject(subject: string): string {
  const chars = Array.from((subject ?? '').trim());
  if (chars.length === 0) throw new ChannelError('alipay requires a non-empty subject', 'alipay', 'subject_invalid', false);
  return chars.slice(0, MAX_SUBJECT_CHARS).join('');
}

function businessError(api: string, result: AlipaySdkCommonResult): ChannelError {
  const code = typeof result.sub_code === 'string' && result.sub_code ? result.sub_code : `alipay_${result.code}`;
  const retryable = result.code === '20000' || RETRYABLE_SUB_CODES.has(code);
  const detail = [result.code, result.msg, result.sub_code, result.sub_msg].filter(Boolean).join(' / ');
  return new ChannelError(`${api} failed: ${detail}`, 'alipay', code, retryable);
}

/**
 * A refund request that reached Alipay but whose answer we cannot trust or read (a bad signature,
 * an SDK failure) may have refunded: retryable, so the caller keeps the refund pending and asks
 * the refund query, instead of calling it failed.
 */
function outcomeUnknown(err: unknown): unknown {
  if (err instanceof ChannelError && !err.retryable && ['invalid_response_signature', 'channel_error', 'unexpected_error'].includes(err.code)) {
    return new ChannelError(`refund outcome unknown: ${err.message}`, 'alipay', err.code, true);
  }
  return err;
}

/** alipay.trade.refund refusals: over-refunds get one clear code, the rest keep Alipay's sub-code. */
function refundError(api: string, result: AlipaySdkCommonResult): ChannelError {
  const error = businessError(api, result);
  if (typeof result.sub_code === 'string' && OVER_REFUND_SUB_CODES.has(result.sub_code)) {
    return new ChannelError(`refund exceeds what the trade has left: ${error.message}`, 'alipay', 'refund_exceeds_remaining', false);
  }
  return error;
}

/**
 * Map alipay-sdk 4.x failures to ChannelError. The SDK gives no error codes on the v2 path, only
 * messages; connector.test.ts pins each case so an SDK upgrade that changes them fails loudly.
 */
export function toChannelError(err: unknown): ChannelError {
  if (err instanceof ChannelError) return err;
  const message = err instanceof Error ? err.message : String(err);
  if (err instanceof AlipayRequestError) {
    if (message.startsWith('HttpClient Request error')) return new ChannelError(message, 'alipay', 'transport_error', true);
    if (message.startsWith('HTTP 请求错误')) {
      const status = Number(/status: (\d+)/.exec(message)?.[1] ?? 0);
      return new ChannelError(message, 'alipay', 'http_error', status >= 500 || status === 429 || status === 0);
    }
    if (message.startsWith('验签失败')) return new ChannelError(`response signature invalid: ${message}`, 'alipay', 'invalid_response_signature', false);
    if (message.startsWith('Response 格式错误')) return new ChannelError(message, 'alipay', 'invalid_response', true);
    return new ChannelError(message, 'alipay', 'channel_error', false);
  }
  // The SDK hands a missing `sign` straight to crypto, which throws a TypeError.
  if ((err as { code?: string })?.code === 'ERR_INVALID_ARG_TYPE') {
    return new ChannelError(`response signature missing: ${message}`, 'alipay', 'invalid_response_signature', false);
  }
  return new ChannelError(message, 'alipay', 'unexpected_error', false);
}

function responseOf(err: unknown): unknown {
  return err instanceof AlipayRequestError ? (err.responseDataRaw ?? null) : null;
}

/**
 * WeChat Pay API v3 connector over `wechatpay-axios-plugin`: the SDK signs every request
 * (WECHATPAY2-SHA256-RSA2048) and verifies every 2xx response (Wechatpay-* headers, ±300 s,
 * platform certificate serial or PUB_KEY_ID_ key). Callbacks are verified here (same rule, our
 * clock), then decrypted (AEAD_AES_256_GCM, APIv3 key), then translated. Holds no state; every
 * call is reported to the `audit` hook, redacted.
 *
 * Refunds (`POST /v3/refund/domestic/refunds`, `GET /v3/refund/domestic/refunds/{out_refund_no}`)
 * are asynchronous at WeChat Pay: the refund call usually answers PROCESSING (→ 'pending'), and the
 * outcome comes as a REFUND.SUCCESS / REFUND.ABNORMAL / REFUND.CLOSED callback or by query.
 * out_refund_no is our refundReference, so asking twice refunds once. More than the trade's
 * refundable remainder is refused by WeChat Pay with 400 INVALID_REQUEST 申请退款金额超过订单可退金额,
 * raised here as the non-retryable ChannelError code `refund_exceeds_remaining`.
 */
import { isIP } from 'node:net';
import { createHash, type KeyObject } from 'node:crypto';
import fs from 'node:fs';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Wechatpay } from 'wechatpay-axios-plugin';
import { normalizeCurrency } from '../../domain/money.ts';
import {
  ChannelError,
  type Acknowledgement,
  type ChannelConnector,
  type CreatePaymentInput,
  type CreatePaymentResult,
  type NotificationInput,
  type RefundRequest,
  type RefundSnapshot,
  type TradeSnapshot,
  type VerifyResult,
} from '../types.ts';
import {
  buildAppPayParams, buildJsapiPayParams, decryptResource, loadPlatformKey, loadPrivateKey, readSignatureHeaders,
  verifyWechatpaySignature, headerValue, signRequest, type PlatformKeys,
} from './sign.ts';
import { WECHATPAY_BILL_COLUMNS, WECHATPAY_BILL_SUMMARY_COLUMNS } from './bill.ts';
import {
  MAX_REFUND_REASON_BYTES, MAX_TOTAL_FEN, OUT_REFUND_NO, WECHATPAY_METHODS, asCallbackEnvelope, fenFromJson, formatRfc3339,
  mapRefundStatus, mapTradeState, redactSecrets, truncateUtf8, type WechatpayMethod, type WireError, type WireRefund,
  type WireRefundNotice, type WireTransaction,
} from './transformers.ts';

export interface WechatpayAuditEntry {
  operation: string;
  channelReference?: string;
  request: unknown;
  response: unknown;
  error?: string;
  durationMs: number;
}

export interface WechatpayConfig {
  /** 商户号: also the connector's `appId`, the id a genuine callback carries. */
  mchid: string;
  /** The WeChat AppID the payments are made under (official account / mini program / mobile app). */
  appid: string;
  /** Per-method AppIDs when they differ (a mini program's for jsapi, the mobile app's for app). */
  appids?: Partial<Record<WechatpayMethod, string>>;
  /** Serial number of the merchant API certificate (serial_no in Authorization). */
  merchantSerial: string;
  /** Merchant API private key (apiclient_key.pem): PEM, or bare base64 PKCS#8. */
  privateKey: string;
  /** WeChat Pay's keys by Wechatpay-Serial: `PUB_KEY_ID_…` → public key PEM, or certificate serial → certificate PEM. */
  platformKeys: Readonly<Record<string, string>>;
  /** APIv3 key: exactly 32 ASCII bytes. */
  apiV3Key: string;
  /** e.g. https://api.mch.weixin.qq.com/ or http://127.0.0.1:4000/sandbox/wechatpay/ */
  baseURL: string;
  timeoutMs?: number;
  audit?: (entry: WechatpayAuditEntry) => void;
  /** Clock for the callback timestamp window (tests pin it). */
  now?: () => Date;
}

const NOTIFY_MAX_BYTES = 64 * 1024;
const MAX_DESCRIPTION_BYTES = 127;
const MAX_ATTACH_BYTES = 128;
const OUT_TRADE_NO = /^[A-Za-z0-9_\-|*]{6,32}$/;
const RETRYABLE_CODES = new Set(['SYSTEM_ERROR', 'SYSTEMERROR', 'BANK_ERROR', 'BANKERROR', 'FREQUENCY_LIMITED', 'RESOURCE_ALREADY_EXISTS']);
/** Each refund event and the refund_status its resource must carry. */
const REFUND_EVENTS: ReadonlyMap<string, string> = new Map([['REFUND.SUCCESS', 'SUCCESS'], ['REFUND.ABNORMAL', 'ABNORMAL'], ['REFUND.CLOSED', 'CLOSED']]);
const MAX_NOTIFY_URL_CHARS = 256;
const BILL_DOWNLOAD_TIMEOUT_MS = 120_000;
const BILL_MAX_BYTES = 1024 * 1024 * 1024;

type HttpVerb = 'get' | 'post';
interface SdkResponse { status: number; data: unknown }

export function createWechatpayConnector(config: WechatpayConfig): ChannelConnector {
  const checked = checkConfig(config);
  const sdk = new Wechatpay({
    mchid: config.mchid,
    serial: config.merchantSerial,
    privateKey: checked.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    certs: Object.fromEntries(checked.platformKeys),
    baseURL: checked.baseURL,
    timeout: config.timeoutMs ?? 10_000,
    // Bodies are bounded: WeChat Pay's answers here are a few hundred bytes.
    maxContentLength: 1024 * 1024,
    maxRedirects: 0,
  });
  const now = config.now ?? (() => new Date());
  const appidFor = (m: WechatpayMethod) => config.appids?.[m] ?? config.appid;
  const knownAppids = new Set([config.appid, ...Object.values(config.appids ?? {})]);

  function audit(entry: WechatpayAuditEntry): void {
    if (!config.audit) return;
    try {
      config.audit({ ...entry, request: redactSecrets(entry.request), response: redactSecrets(entry.response) });
    } catch {
      // An audit sink failure must never change the outcome of a payment call.
    }
  }

  /** One signed call through the SDK (response signature verified by it), audited. */
  async function call(operation: string, channelReference: string, verb: HttpVerb, path: string, body?: Record<string, unknown>, params?: Record<string, string>): Promise<SdkResponse> {
    const request = { method: verb.toUpperCase(), path, ...(params ? { params } : {}), ...(body ? { body } : {}) };
    const started = Date.now();
    const endpoint = sdk.chain(path);
    try {
      const res = verb === 'get' ? await endpoint.get({ ...(params ? { params } : {}) }) : await endpoint.post(body ?? {}, { ...(params ? { params } : {}) });
      const out = { status: res.status, data: res.data as unknown };
      audit({ operation, channelReference, request, response: out, durationMs: Date.now() - started });
      return out;
    } catch (err) {
      const channelError = toChannelError(err);
      audit({ operation, channelReference, request, response: responseOf(err), error: `${channelError.code}: ${channelError.message}`, durationMs: Date.now() - started });
      throw channelError;
    }
  }

  async function createPayment(input: CreatePaymentInput): Promise<CreatePaymentResult> {
    const method = checkMethod(input.method);
    const amountFen = checkAmount(input.amountMinor, input.currency);
    const reference = checkReference(input.channelReference);
    const appid = appidFor(method);
    const body: Record<string, unknown> = {
      appid,
      mchid: config.mchid,
      description: checkDescription(input.subject),
      out_trade_no: reference,
      time_expire: formatRfc3339(input.expiresAt),
      ...(input.paymentId ? { attach: truncateUtf8(input.paymentId, MAX_ATTACH_BYTES) } : {}),
      notify_url: input.notifyUrl,
      amount: { total: Number(amountFen), currency: 'CNY' },
    };
    if (method === 'jsapi') body['payer'] = { openid: checkOpenid(input.payer) };
    if (method === 'h5') body['scene_info'] = { payer_client_ip: checkClientIp(input.payer), h5_info: { type: 'Wap' } };

    const res = await call('create_payment', reference, 'post', `v3/pay/transactions/${method}`, body);
    const data = objectOf(res.data, 'create_payment');
    if (method === 'native') {
      const codeUrl = stringField(data, 'code_url');
      if (!codeUrl) throw invalidResponse('native order answered without code_url');
      return { action: { type: 'qr_code', qr_code_url: codeUrl } };
    }
    if (method === 'h5') {
      const h5Url = stringField(data, 'h5_url');
      if (!h5Url) throw invalidResponse('h5 order answered without h5_url');
      // WeChat Pay's H5 rule: the merchant appends its (URL-encoded) redirect_url to h5_url.
      const url = input.returnUrl ? `${h5Url}${h5Url.includes('?') ? '&' : '?'}redirect_url=${encodeURIComponent(input.returnUrl)}` : h5Url;
      return { action: { type: 'redirect', url } };
    }
    const prepayId = stringField(data, 'prepay_id');
    if (!prepayId) throw invalidResponse(`${method} order answered without prepay_id`);
    const params = method === 'jsapi'
      ? buildJsapiPayParams(appid, prepayId, checked.privateKey, now())
      : buildAppPayParams(appid, config.mchid, prepayId, checked.privateKey, now());
    return { action: { type: 'app', params: { ...params } } };
  }

  async function queryPayment(input: { channelReference: string; currency: string }): Promise<TradeSnapshot> {
    checkCurrency(input.currency);
    const reference = checkReference(input.channelReference);
    let res: SdkResponse;
    try {
      res = await call('query_payment', reference, 'get', `v3/pay/transactions/out-trade-no/${reference}`, undefined, { mchid: config.mchid });
    } catch (err) {
      if (err instanceof ChannelError && err.code === 'ORDER_NOT_EXIST') return { state: 'not_found', channelReference: reference };
      throw err;
    }
    return snapshotOf(objectOf(res.data, 'query_payment') as WireTransaction, reference, config.mchid);
  }

  async function closePayment(input: { channelReference: string; currency: string }): Promise<TradeSnapshot> {
    checkCurrency(input.currency);
    const reference = checkReference(input.channelReference);
    try {
      const res = await call('close_payment', reference, 'post', `v3/pay/transactions/out-trade-no/${reference}/close`, { mchid: config.mchid });
      if (res.status !== 204 && res.status !== 200) throw invalidResponse(`close answered HTTP ${res.status}`);
      return { state: 'closed', channelReference: reference, rawStatus: 'CLOSED' };
    } catch (err) {
      if (!(err instanceof ChannelError)) throw err;
      if (err.code === 'ORDER_NOT_EXIST') return { state: 'not_found', channelReference: reference };
      if (err.code !== 'ORDERPAID' && err.code !== 'ORDER_CLOSED') throw err;
      // Not open any more: paid meanwhile, or closed already. The (signed) query says which.
      const snapshot = await queryPayment(input);
      if (snapshot.state === 'pending') throw new ChannelError(`close refused (${err.code}) while the trade is still open`, 'wechatpay', err.code, true);
      return snapshot;
    }
  }

  async function refundPayment(input: RefundRequest): Promise<RefundSnapshot> {
    checkCurrency(input.currency);
    const reference = checkReference(input.channelReference);
    const refundNo = checkRefundReference(input.refundReference);
    const refundFen = checkRefundAmount(input.amountMinor, 'amount_invalid', 'refund amount');
    const totalFen = checkRefundAmount(input.paymentAmountMinor, 'payment_amount_invalid', 'payment amount (amount.total)');
    const reason = truncateUtf8((input.reason ?? '').trim(), MAX_REFUND_REASON_BYTES);
    const notifyUrl = checkNotifyUrl(input.notifyUrl);
    const body: Record<string, unknown> = {
      out_trade_no: reference,
      out_refund_no: refundNo,
      ...(reason ? { reason } : {}),
      ...(notifyUrl ? { notify_url: notifyUrl } : {}),
      amount: { refund: Number(refundFen), total: Number(totalFen), currency: 'CNY' },
    };
    let res: SdkResponse;
    try {
      res = await call('refund_payment', reference, 'post', 'v3/refund/domestic/refunds', body);
    } catch (err) {
      throw refundError(err);
    }
    return refundSnapshotOf(objectOf(res.data, 'refund_payment') as WireRefund, reference, refundNo, refundFen);
  }

  async function queryRefund(input: { channelReference: string; refundReference: string; currency: string }): Promise<RefundSnapshot> {
    checkCurrency(input.currency);
    const reference = checkReference(input.channelReference);
    const refundNo = checkRefundReference(input.refundReference);
    let res: SdkResponse;
    try {
      res = await call('query_refund', reference, 'get', `v3/refund/domestic/refunds/${refundNo}`);
    } catch (err) {
      if (err instanceof ChannelError && err.code === 'RESOURCE_NOT_EXISTS') {
        // Never reached WeChat Pay, or not yet: asking again (or refunding again with the same
        // refundReference, which is idempotent) may help.
        throw new ChannelError(`WeChat Pay knows no refund ${refundNo}: ${err.message}`, 'wechatpay', 'refund_not_found', true);
      }
      throw err;
    }
    return refundSnapshotOf(objectOf(res.data, 'query_refund') as WireRefund, reference, refundNo);
  }

  /**
   * The day's trade bill (bill_type ALL) into `destination`: the signed tradebill call (answer
   * verified by the SDK), then a signed GET of download_url (same origin as baseURL only; WeChat
   * Pay does not sign the file), streamed with a time and size bound, its SHA1 checked against
   * hash_value. NO_STATEMENT_EXIST (no trade that day) writes an empty bill (header and a zero
   * summary), so the day still reconciles.
   */
  async function downloadBill(input: { billDate: string; destination: string }): Promise<void> {
    if (!/^\d{4}-\d{2}-\d{2}$/.test(input.billDate) || Number.isNaN(Date.parse(input.billDate))) {
      throw new ChannelError(`bill_date must be YYYY-MM-DD, got ${input.billDate}`, 'wechatpay', 'bill_date_invalid', false);
    }
    const ref = `bill:${input.billDate}`;
    let res: SdkResponse;
    try {
      res = await call('download_bill', ref, 'get', 'v3/bill/tradebill', undefined, { bill_date: input.billDate, bill_type: 'ALL' });
    } catch (err) {
      if (err instanceof ChannelError && err.code === 'NO_STATEMENT_EXIST') {
        const empty = `${WECHATPAY_BILL_COLUMNS.join(',')}\r\n${WECHATPAY_BILL_SUMMARY_COLUMNS.join(',')}\r\n\`0,\`0.00,\`0.00,\`0.00,\`0.00000,\`0.00,\`0.00\r\n`;
        await fs.promises.writeFile(input.destination, empty, 'utf8');
        return;
      }
      throw err;
    }
    const data = objectOf(res.data, 'download_bill');
    const hashType = stringField(data, 'hash_type');
    const hashValue = stringField(data, 'hash_value');
    const downloadUrl = stringField(data, 'download_url');
    if (hashType !== 'SHA1' || !hashValue || !/^[0-9a-fA-F]{40}$/.test(hashValue)) throw invalidResponse(`tradebill answered hash_type ${String(hashType)}, hash_value ${String(hashValue)}`);
    let url: URL;
    try {
      url = new URL(downloadUrl ?? '');
    } catch {
      throw invalidResponse('tradebill answered without a valid download_url');
    }
    // The signed GET goes to WeChat Pay only: never to another host named in an answer.
    if (url.origin !== new URL(checked.baseURL).origin) {
      throw new ChannelError(`download_url ${url.origin} is not on ${new URL(checked.baseURL).origin}`, 'wechatpay', 'invalid_response', false);
    }
    const started = Date.now();
    const auditRequest = { method: 'GET', path: url.pathname };
    const hash = createHash('sha1');
    let bytes = 0;
    try {
      const answer = await fetch(url, {
        headers: {
          authorization: signRequest({ method: 'GET', url: url.pathname + url.search, mchid: config.mchid, serialNo: config.merchantSerial, privateKey: checked.privateKey }),
          accept: 'application/octet-stream, text/plain, */*',
          'user-agent': 'knowpay',
        },
        redirect: 'error',
        signal: AbortSignal.timeout(BILL_DOWNLOAD_TIMEOUT_MS),
      });
      if (!answer.ok || !answer.body) {
        const text = (await answer.text().catch(() => '')).slice(0, 2000);
        let wire: WireError | null = null;
        try { wire = JSON.parse(text) as WireError; } catch { /* not JSON */ }
        const code = typeof wire?.code === 'string' ? wire.code : `http_${answer.status}`;
        throw new ChannelError(`bill download answered HTTP ${answer.status} ${code}: ${wire?.message ?? text.slice(0, 200)}`, 'wechatpay', code,
          answer.status >= 500 || answer.status === 429 || RETRYABLE_CODES.has(code));
      }
      const meter = new Transform({
        transform(chunk: Buffer, _e, cb) {
          bytes += chunk.length;
          if (bytes > BILL_MAX_BYTES) return cb(new ChannelError('the bill is larger than allowed', 'wechatpay', 'bill_too_large', false));
          hash.update(chunk);
          cb(null, chunk);
        },
      });
      await pipeline(Readable.fromWeb(answer.body as import('node:stream/web').ReadableStream), meter, fs.createWriteStream(input.destination));
      const digest = hash.digest('hex');
      if (digest !== hashValue.toLowerCase()) {
        throw new ChannelError(`the downloaded bill's SHA1 ${digest} is not the announced ${hashValue.toLowerCase()}`, 'wechatpay', 'bill_hash_mismatch', true);
      }
      audit({ operation: 'download_bill_file', channelReference: ref, request: auditRequest, response: { bytes, sha1: digest }, durationMs: Date.now() - started });
    } catch (err) {
      await fs.promises.rm(input.destination, { force: true }).catch(() => {});
      const e = err instanceof ChannelError ? err
        : new ChannelError(`bill download failed: ${(err as Error).message}`, 'wechatpay', 'transport_error', true);
      audit({ operation: 'download_bill_file', channelReference: ref, request: auditRequest, response: { bytes }, error: `${e.code}: ${e.message}`, durationMs: Date.now() - started });
      throw e;
    }
  }

  async function verifyNotification(input: NotificationInput): Promise<VerifyResult> {
    const contentType = (input.contentType ?? headerValue(input.headers, 'content-type') ?? '').toLowerCase();
    if (contentType && !contentType.startsWith('application/json')) return { ok: false, reason: `unexpected content type ${contentType}` };
    if (!Buffer.isBuffer(input.rawBody) || input.rawBody.length === 0) return { ok: false, reason: 'empty body' };
    if (input.rawBody.length > NOTIFY_MAX_BYTES) return { ok: false, reason: `body larger than ${NOTIFY_MAX_BYTES} bytes` };
    const headers = readSignatureHeaders(input.headers);
    if (!headers) return { ok: false, reason: 'missing Wechatpay-Timestamp/Nonce/Signature/Serial headers' };
    const signature = verifyWechatpaySignature(headers, input.rawBody, checked.platformKeys, Math.floor(now().getTime() / 1000));
    if (!signature.ok) return signature;
    // Verified: now translate.
    let parsed: unknown;
    try {
      parsed = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(input.rawBody));
    } catch {
      return { ok: false, reason: 'body is not UTF-8 JSON' };
    }
    const envelope = asCallbackEnvelope(parsed);
    if (!envelope.ok) return envelope;
    const e = envelope.envelope;
    if (REFUND_EVENTS.has(e.event_type) && e.resource.original_type !== undefined && e.resource.original_type !== 'refund') {
      return { ok: false, reason: `${e.event_type} with a resource of original_type ${JSON.stringify(e.resource.original_type)}` };
    }
    const plaintext = decryptResource(e.resource, checked.apiV3Key);
    if (!plaintext) return { ok: false, reason: 'resource decryption failed' };
    let resource: unknown;
    try {
      resource = JSON.parse(plaintext.toString('utf8'));
    } catch {
      return { ok: false, reason: 'decrypted resource is not JSON' };
    }
    if (resource === null || typeof resource !== 'object' || Array.isArray(resource)) return { ok: false, reason: 'decrypted resource is not an object' };
    return translateCallback(e.id, e.event_type, resource as Record<string, unknown>, knownAppids);
  }

  return {
    channel: 'wechatpay',
    appId: config.mchid,
    methods: WECHATPAY_METHODS,
    createPayment,
    queryPayment,
    closePayment,
    refundPayment,
    queryRefund,
    downloadBill,
    verifyNotification,
    ackSuccess: (): Acknowledgement => ({ statusCode: 204, contentType: 'application/json', body: '' }),
    ackFailure: (reason: string): Acknowledgement => ({
      // 4xx/5xx asks WeChat Pay to retry; the message stays short and free of secrets.
      statusCode: 400,
      contentType: 'application/json; charset=utf-8',
      body: JSON.stringify({ code: 'FAIL', message: truncateUtf8(String(reason || '失败'), 256) }),
    }),
  };
}

/** Pure translation of a verified, decrypted callback. */
export function translateCallback(eventId: string, eventType: string, r: Record<string, unknown>, knownAppids: ReadonlySet<string>): VerifyResult {
  const mchid = typeof r['mchid'] === 'string' ? r['mchid'] : undefined;
  const reference = typeof r['out_trade_no'] === 'string' && r['out_trade_no'] !== '' ? r['out_trade_no'] : undefined;
  const refundStatus = REFUND_EVENTS.get(eventType);
  if (refundStatus) return translateRefundCallback(eventId, eventType, refundStatus, r as WireRefundNotice);
  if (eventType !== 'TRANSACTION.SUCCESS') {
    return { ok: true, notification: { eventId, kind: 'ignored', reason: `event_type ${eventType} is not used`, ...(reference ? { channelReference: reference } : {}), ...(mchid ? { appId: mchid } : {}) } };
  }
  const t = r as WireTransaction;
  const missing = (['mchid', 'appid', 'out_trade_no', 'transaction_id', 'trade_state'] as const).filter((k) => typeof t[k] !== 'string' || t[k] === '');
  if (missing.length > 0) return { ok: false, reason: `missing fields: ${missing.join(', ')}` };
  if (!knownAppids.has(t.appid!)) return { ok: false, reason: `appid_mismatch: ${t.appid}` };
  const amountMinor = fenFromJson(t.amount?.total);
  if (amountMinor === null || amountMinor <= 0n) return { ok: false, reason: `unparsable amount.total ${JSON.stringify(t.amount?.total)}` };
  const currency = normalizeCurrency(t.amount?.currency ?? 'CNY');
  if (currency !== 'CNY') return { ok: false, reason: `unsupported amount.currency ${JSON.stringify(t.amount?.currency)}` };
  return {
    ok: true,
    notification: {
      eventId,
      kind: 'payment',
      appId: t.mchid!,
      trade: {
        state: mapTradeState(t.trade_state),
        channelReference: t.out_trade_no!,
        channelTransactionId: t.transaction_id!,
        amountMinor,
        currency,
        rawStatus: t.trade_state!,
      },
    },
  };
}

function snapshotOf(t: WireTransaction, requested: string, mchid: string): TradeSnapshot {
  if (t.out_trade_no !== undefined && t.out_trade_no !== requested) {
    throw new ChannelError(`query answered for ${t.out_trade_no}, asked for ${requested}`, 'wechatpay', 'invalid_response', false);
  }
  if (t.mchid !== undefined && t.mchid !== mchid) throw new ChannelError(`query answered for merchant ${t.mchid}`, 'wechatpay', 'invalid_response', false);
  if (typeof t.trade_state !== 'string' || t.trade_state === '') throw invalidResponse('query answered without trade_state');
  let amount: { amountMinor: bigint; currency: string } | undefined;
  if (t.amount?.total !== undefined) {
    const fen = fenFromJson(t.amount.total);
    const currency = normalizeCurrency(t.amount.currency ?? 'CNY');
    if (fen === null || currency !== 'CNY') throw new ChannelError(`query answered an unusable amount ${JSON.stringify(t.amount)}`, 'wechatpay', 'invalid_response', false);
    amount = { amountMinor: fen, currency };
  }
  return {
    state: mapTradeState(t.trade_state),
    channelReference: requested,
    ...(t.transaction_id ? { channelTransactionId: t.transaction_id } : {}),
    ...(amount ?? {}),
    rawStatus: t.trade_state,
  };
}

/**
 * A verified, decrypted REFUND.* resource → our words. Its refund_status must be the event's; the
 * amount is the refund's (integer fen; WeChat Pay's refund resource carries no currency: CNY).
 */
export function translateRefundCallback(eventId: string, eventType: string, expectedStatus: string, r: WireRefundNotice): VerifyResult {
  const missing = (['mchid', 'out_trade_no', 'out_refund_no', 'refund_id', 'refund_status'] as const).filter((k) => typeof r[k] !== 'string' || r[k] === '');
  if (missing.length > 0) return { ok: false, reason: `missing fields: ${missing.join(', ')}` };
  if (r.refund_status !== expectedStatus) return { ok: false, reason: `refund_status ${r.refund_status} contradicts event_type ${eventType}` };
  const refundFen = fenFromJson(r.amount?.refund);
  const totalFen = fenFromJson(r.amount?.total);
  if (refundFen === null || refundFen <= 0n) return { ok: false, reason: `unparsable amount.refund ${JSON.stringify(r.amount?.refund)}` };
  if (totalFen === null || totalFen < refundFen) return { ok: false, reason: `unusable amount.total ${JSON.stringify(r.amount?.total)}` };
  const refund: RefundSnapshot = {
    state: mapRefundStatus(r.refund_status),
    refundReference: r.out_refund_no!,
    channelRefundId: r.refund_id!,
    channelReference: r.out_trade_no!,
    amountMinor: refundFen,
    currency: 'CNY',
    rawStatus: r.refund_status!,
  };
  return { ok: true, notification: { eventId, kind: 'refund', appId: r.mchid!, refund } };
}

/** A refund answer (refund call or query), checked against what we asked. */
function refundSnapshotOf(r: WireRefund, reference: string, refundNo: string, expectedFen?: bigint): RefundSnapshot {
  if (r.out_refund_no !== refundNo) throw new ChannelError(`refund answered for out_refund_no ${String(r.out_refund_no)}, asked for ${refundNo}`, 'wechatpay', 'invalid_response', false);
  if (r.out_trade_no !== undefined && r.out_trade_no !== reference) {
    throw new ChannelError(`refund ${refundNo} belongs to ${r.out_trade_no}, not ${reference}`, 'wechatpay', 'invalid_response', false);
  }
  if (typeof r.status !== 'string' || r.status === '') throw invalidResponse('refund answered without status');
  const fen = fenFromJson(r.amount?.refund);
  const currency = normalizeCurrency(r.amount?.currency ?? 'CNY');
  if (fen === null || fen <= 0n || currency !== 'CNY') throw new ChannelError(`refund answered an unusable amount ${JSON.stringify(r.amount)}`, 'wechatpay', 'invalid_response', false);
  if (expectedFen !== undefined && fen !== expectedFen) {
    throw new ChannelError(`refund ${refundNo} is for ${fen} fen, asked for ${expectedFen}`, 'wechatpay', 'invalid_response', false);
  }
  return {
    state: mapRefundStatus(r.status),
    refundReference: refundNo,
    ...(typeof r.refund_id === 'string' && r.refund_id !== '' ? { channelRefundId: r.refund_id } : {}),
    channelReference: reference,
    amountMinor: fen,
    currency,
    rawStatus: r.status,
  };
}

/** WeChat Pay's refund refusals in our words: more than the refundable remainder gets its own code. */
function refundError(err: unknown): ChannelError {
  const e = toChannelError(err);
  if (e.code === 'INVALID_REQUEST' && /可退金额|exceeds? (the )?refundable/i.test(e.message)) {
    return new ChannelError(`WeChat Pay refused the refund: ${e.message}`, 'wechatpay', 'refund_exceeds_remaining', false);
  }
  return e;
}

// ---- Configuration and input checks ---------------------------------------------------------------

interface CheckedConfig {
  privateKey: KeyObject;
  platformKeys: PlatformKeys;
  apiV3Key: Buffer;
  baseURL: string;
}

function checkConfig(config: WechatpayConfig): CheckedConfig {
  for (const key of ['mchid', 'appid', 'merchantSerial', 'privateKey', 'apiV3Key', 'baseURL'] as const) {
    if (typeof config[key] !== 'string' || config[key].trim() === '') throw new TypeError(`WechatpayConfig.${key} is required`);
  }
  if (!/^\d{1,32}$/.test(config.mchid)) throw new TypeError('WechatpayConfig.mchid must be digits');
  const apiV3Key = Buffer.from(config.apiV3Key, 'utf8');
  if (apiV3Key.length !== 32 || !/^[\x21-\x7e]+$/.test(config.apiV3Key)) throw new TypeError('WechatpayConfig.apiV3Key must be 32 ASCII characters');
  const entries = Object.entries(config.platformKeys ?? {});
  if (entries.length === 0 || entries.length > 16) throw new TypeError('WechatpayConfig.platformKeys needs 1 to 16 keys');
  if (entries.some(([id]) => id === config.merchantSerial)) throw new TypeError('WechatpayConfig.platformKeys must not contain the merchant serial');
  const platformKeys = new Map(entries.map(([id, pem]) => [id, loadPlatformKey(id, pem)] as const));
  const url = new URL(config.baseURL); // throws on a malformed base URL
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new TypeError('WechatpayConfig.baseURL must be http(s)');
  return { privateKey: loadPrivateKey(config.privateKey), platformKeys, apiV3Key, baseURL: url.toString().replace(/\/*$/, '/') };
}

function checkMethod(method: string): WechatpayMethod {
  if ((WECHATPAY_METHODS as readonly string[]).includes(method)) return method as WechatpayMethod;
  throw new ChannelError(`wechatpay does not support method ${method}`, 'wechatpay', 'method_not_supported', false);
}

function checkCurrency(currency: string): 'CNY' {
  if (normalizeCurrency(currency) === 'CNY') return 'CNY';
  throw new ChannelError(`wechatpay basic payments are CNY only, got ${currency}`, 'wechatpay', 'currency_not_supported', false);
}

function checkAmount(amountMinor: bigint, currency: string): bigint {
  checkCurrency(currency);
  if (typeof amountMinor !== 'bigint' || amountMinor < 1n || amountMinor > MAX_TOTAL_FEN) {
    throw new ChannelError(`wechatpay amount.total must be 1 to ${MAX_TOTAL_FEN} fen, got ${amountMinor}`, 'wechatpay', 'amount_invalid', false);
  }
  return amountMinor;
}

function checkReference(reference: string): string {
  if (typeof reference !== 'string' || !OUT_TRADE_NO.test(reference)) {
    throw new ChannelError('out_trade_no must be 6-32 letters, digits, _ - | or *', 'wechatpay', 'reference_invalid', false);
  }
  return reference;
}

function checkRefundReference(reference: string): string {
  if (typeof reference !== 'string' || !OUT_REFUND_NO.test(reference)) {
    throw new ChannelError('out_refund_no must be 1-64 letters, digits, _ - | * or @', 'wechatpay', 'refund_reference_invalid', false);
  }
  return reference;
}

function checkRefundAmount(amountMinor: bigint, code: string, what: string): bigint {
  if (typeof amountMinor !== 'bigint' || amountMinor < 1n || amountMinor > MAX_TOTAL_FEN) {
    throw new ChannelError(`wechatpay ${what} must be 1 to ${MAX_TOTAL_FEN} fen, got ${amountMinor}`, 'wechatpay', code, false);
  }
  return amountMinor;
}

/** Optional at WeChat Pay (the merchant platform's URL applies then); when given: http(s), no query, ≤ 256 characters. */
function checkNotifyUrl(url: string | undefined): string | null {
  if (url === undefined || url === '') return null;
  if (typeof url !== 'string' || url.length > MAX_NOTIFY_URL_CHARS || !/^https?:\/\/[^\s?#]+$/.test(url)) {
    throw new ChannelError('notify_url must be an http(s) URL without query, at most 256 characters', 'wechatpay', 'notify_url_invalid', false);
  }
  return url;
}

function checkDescription(subject: string): string {
  const text = truncateUtf8((subject ?? '').trim(), MAX_DESCRIPTION_BYTES);
  if (text === '') throw new ChannelError('wechatpay requires a non-empty description', 'wechatpay', 'subject_invalid', false);
  return text;
}

function checkOpenid(payer: Record<string, string> | undefined): string {
  const openid = payer?.['openid'];
  if (typeof openid !== 'string' || !/^[A-Za-z0-9_-]{1,128}$/.test(openid)) {
    throw new ChannelError('jsapi payments need payer.openid (the buyer\'s openid under the AppID)', 'wechatpay', 'payer_openid_required', false);
  }
  return openid;
}

function checkClientIp(payer: Record<string, string> | undefined): string {
  const ip = payer?.['client_ip'] ?? payer?.['payer_client_ip'];
  if (typeof ip !== 'string' || isIP(ip) === 0) {
    throw new ChannelError('h5 payments need payer.client_ip (the buyer\'s IPv4/IPv6 address; WeChat Pay checks it)', 'wechatpay', 'payer_client_ip_required', false);
  }
  return ip;
}

// ---- Responses and errors -------------------------------------------------------------------------

function objectOf(data: unknown, operation: string): Record<string, unknown> {
  if (data !== null && typeof data === 'object' && !Array.isArray(data)) return data as Record<string, unknown>;
  throw invalidResponse(`${operation} answered a body that is not a JSON object`);
}

function stringField(o: Record<string, unknown>, key: string): string | undefined {
  const v = o[key];
  return typeof v === 'string' && v !== '' ? v : undefined;
}

function invalidResponse(message: string): ChannelError {
  return new ChannelError(message, 'wechatpay', 'invalid_response', true);
}

interface AxiosLikeError {
  isAxiosError?: boolean;
  code?: string;
  message?: string;
  response?: { status?: number; data?: unknown };
}

/**
 * Map the SDK's (axios) failures to ChannelError: the SDK's own EV3_RES_* codes for a response
 * that fails verification, WeChat Pay's `{code, message}` for an HTTP error, transport otherwise.
 */
export function toChannelError(err: unknown): ChannelError {
  if (err instanceof ChannelError) return err;
  const e = (err ?? {}) as AxiosLikeError;
  const message = typeof e.message === 'string' ? e.message : String(err);
  if (typeof e.code === 'string' && e.code.startsWith('EV3_RES_')) {
    return new ChannelError(`response verification failed (${e.code}): ${message}`, 'wechatpay', 'invalid_response_signature', false);
  }
  const status = e.response?.status;
  if (e.isAxiosError && typeof status === 'number') {
    const data = e.response?.data;
    const wire = data !== null && typeof data === 'object' && typeof (data as WireError).code === 'string' ? (data as WireError) : null;
    const code = wire ? wire.code : `http_${status}`;
    const retryable = status >= 500 || status === 429 || RETRYABLE_CODES.has(code);
    return new ChannelError(`HTTP ${status} ${code}: ${wire ? wire.message : message}`, 'wechatpay', code, retryable);
  }
  if (e.isAxiosError) return new ChannelError(`${e.code ?? 'network'}: ${message}`, 'wechatpay', 'transport_error', true);
  return new ChannelError(message, 'wechatpay', 'unexpected_error', false);
}

function responseOf(err: unknown): unknown {
  const r = (err as AxiosLikeError | null)?.response;
  return r ? { status: r.status ?? null, data: r.data ?? null } : null;
}

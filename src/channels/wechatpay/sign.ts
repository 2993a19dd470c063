/**
 * WeChat Pay API v3 signatures and callback encryption, as pure functions.
 *
 * - Requests (merchant → WeChat): SHA256withRSA over `METHOD\nPATH?QUERY\nTIMESTAMP\nNONCE\nBODY\n`
 *   with the merchant API key, sent as `Authorization: WECHATPAY2-SHA256-RSA2048 mchid="…",
 *   nonce_str="…",signature="…",timestamp="…",serial_no="…"`.
 * - Responses and callbacks (WeChat → merchant): SHA256withRSA over `TIMESTAMP\nNONCE\nBODY\n`, the
 *   values from the `Wechatpay-Timestamp` / `Wechatpay-Nonce` headers, the key chosen by
 *   `Wechatpay-Serial` (a platform certificate serial or a `PUB_KEY_ID_…`).
 * - Client payment parameters: JSAPI / mini program `paySign` over `appId\ntimeStamp\nnonceStr\npackage\n`,
 *   APP `sign` over `appid\ntimestamp\nnoncestr\nprepayid\n`.
 * - Callback resources: AEAD_AES_256_GCM with the APIv3 key, ciphertext = base64(ct ‖ 16-byte tag).
 * Signatures cover bytes: bodies are handled as the exact bytes sent or received.
 */
import {
  createCipheriv, createDecipheriv, createPrivateKey, createPublicKey, createSign, createVerify, randomBytes, randomInt,
  X509Certificate, type KeyObject,
} from 'node:crypto';

export const AUTH_SCHEME = 'WECHATPAY2-SHA256-RSA2048';
const RSA_SHA256 = 'RSA-SHA256';
/** WeChat Pay rejects (and we reject) timestamps more than 5 minutes away from the clock. */
export const MAX_CLOCK_SKEW_SECONDS = 300;
const GCM_TAG_BYTES = 16;
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

type Bytes = string | Buffer;

const asBuffer = (b: Bytes) => (typeof b === 'string' ? Buffer.from(b, 'utf8') : b);

/** Lines joined and terminated by `\n`, as bytes (a body is never re-encoded). */
function lines(...pieces: Bytes[]): Buffer {
  const parts: Buffer[] = [];
  for (const p of pieces) parts.push(asBuffer(p), Buffer.from('\n'));
  return Buffer.concat(parts);
}

/** `METHOD\nURL\nTIMESTAMP\nNONCE\nBODY\n`; URL is the path plus the query string exactly as sent. */
export function requestMessage(method: string, url: string, timestamp: string | number, nonce: string, body: Bytes = ''): Buffer {
  return lines(method.toUpperCase(), url, String(timestamp), nonce, body);
}

/** `TIMESTAMP\nNONCE\nBODY\n` (responses and callbacks; a 204 has an empty body). */
export function responseMessage(timestamp: string | number, nonce: string, body: Bytes = ''): Buffer {
  return lines(String(timestamp), nonce, body);
}

/** JSAPI / mini program `paySign` input; `pkg` is `prepay_id=…`. signType is not signed. */
export function jsapiPayMessage(appId: string, timeStamp: string, nonceStr: string, pkg: string): Buffer {
  return lines(appId, timeStamp, nonceStr, pkg);
}

/** APP `sign` input: the 4th line is the bare prepay id. */
export function appPayMessage(appid: string, timestamp: string, noncestr: string, prepayid: string): Buffer {
  return lines(appid, timestamp, noncestr, prepayid);
}

export function rsaSign(message: Bytes, privateKey: KeyObject | string): string {
  return createSign(RSA_SHA256).update(asBuffer(message)).sign(privateKey, 'base64');
}

/** False (never an exception) for a malformed key, signature or message. */
export function rsaVerify(message: Bytes, signature: string, publicKey: KeyObject | string): boolean {
  if (typeof signature !== 'string' || signature.length === 0 || signature.length > 2048 || !BASE64.test(signature)) return false;
  try {
    return createVerify(RSA_SHA256).update(asBuffer(message)).verify(publicKey, signature, 'base64');
  } catch {
    return false;
  }
}

// ---- Authorization header ------------------------------------------------------------------------

export interface AuthorizationFields {
  mchid: string;
  serial_no: string;
  timestamp: string;
  nonce_str: string;
  signature: string;
}

const AUTH_FIELDS: readonly (keyof AuthorizationFields)[] = ['mchid', 'serial_no', 'timestamp', 'nonce_str', 'signature'];

export function formatAuthorization(f: AuthorizationFields): string {
  return `${AUTH_SCHEME} mchid="${f.mchid}",nonce_str="${f.nonce_str}",signature="${f.signature}",timestamp="${f.timestamp}",serial_no="${f.serial_no}"`;
}

/**
 * Parse `WECHATPAY2-SHA256-RSA2048 k="v",…` (any field order). Null when the scheme is wrong, a
 * field is missing, repeated or unknown, or the header is oversized.
 */
export function parseAuthorization(header: string | undefined): AuthorizationFields | null {
  if (typeof header !== 'string' || header.length > 4096) return null;
  const prefix = `${AUTH_SCHEME} `;
  if (!header.startsWith(prefix)) return null;
  const out: Partial<Record<keyof AuthorizationFields, string>> = {};
  const re = /\s*([a-z_]+)="([^"]*)"\s*(,|$)/gy;
  const rest = header.slice(prefix.length);
  let consumed = 0;
  for (let i = 0; i < 10 && consumed < rest.length; i++) {
    re.lastIndex = consumed;
    const m = re.exec(rest);
    if (!m) return null;
    const key = m[1] as keyof AuthorizationFields;
    if (!AUTH_FIELDS.includes(key) || out[key] !== undefined) return null;
    out[key] = m[2]!;
    consumed = re.lastIndex;
    if (m[3] === '') break;
  }
  if (consumed !== rest.length) return null;
  for (const key of AUTH_FIELDS) if (!out[key]) return null;
  return out as AuthorizationFields;
}

/** Sign a request the way WeChat Pay verifies it; answers the Authorization header value. */
export function signRequest(input: {
  method: string; url: string; body?: Bytes; mchid: string; serialNo: string; privateKey: KeyObject | string;
  timestamp?: string | number; nonce?: string;
}): string {
  const timestamp = String(input.timestamp ?? Math.floor(Date.now() / 1000));
  const nonce = input.nonce ?? newNonce();
  const signature = rsaSign(requestMessage(input.method, input.url, timestamp, nonce, input.body ?? ''), input.privateKey);
  return formatAuthorization({ mchid: input.mchid, serial_no: input.serialNo, timestamp, nonce_str: nonce, signature });
}

// ---- Wechatpay-* signature headers (responses, callbacks) ---------------------------------------

export interface WechatpaySignatureHeaders {
  timestamp: string;
  nonce: string;
  signature: string;
  serial: string;
  signatureType?: string;
}

export type HeaderBag = Record<string, string | string[] | undefined>;

/** A header by case-insensitive name; a repeated header counts as missing (ambiguous). */
export function headerValue(headers: HeaderBag, name: string): string | undefined {
  const wanted = name.toLowerCase();
  let found: string | undefined;
  for (const [k, v] of Object.entries(headers)) {
    if (k.toLowerCase() !== wanted || v === undefined) continue;
    if (Array.isArray(v) || found !== undefined) return undefined;
    found = v;
  }
  return found;
}

export function readSignatureHeaders(headers: HeaderBag): WechatpaySignatureHeaders | null {
  const timestamp = headerValue(headers, 'Wechatpay-Timestamp');
  const nonce = headerValue(headers, 'Wechatpay-Nonce');
  const signature = headerValue(headers, 'Wechatpay-Signature');
  const serial = headerValue(headers, 'Wechatpay-Serial');
  if (!timestamp || !nonce || !signature || !serial) return null;
  const signatureType = headerValue(headers, 'Wechatpay-Signature-Type');
  return { timestamp, nonce, signature, serial, ...(signatureType ? { signatureType } : {}) };
}

/** The platform keys we trust, by `Wechatpay-Serial` (certificate serial or PUB_KEY_ID_…). */
export type PlatformKeys = ReadonlyMap<string, KeyObject>;

export type SignatureCheck = { ok: true } | { ok: false; reason: string };

/**
 * Verify WeChat Pay's signature on a response or callback: the timestamp within ±300 s of
 * `nowSeconds`, a known serial, and the signature over the exact body bytes.
 */
export function verifyWechatpaySignature(h: WechatpaySignatureHeaders, body: Bytes, keys: PlatformKeys, nowSeconds: number): SignatureCheck {
  if (h.signatureType !== undefined && h.signatureType !== AUTH_SCHEME) return { ok: false, reason: `unsupported signature type ${h.signatureType}` };
  if (!/^\d{1,12}$/.test(h.timestamp)) return { ok: false, reason: 'malformed Wechatpay-Timestamp' };
  const skew = Math.abs(nowSeconds - Number(h.timestamp));
  if (!(skew <= MAX_CLOCK_SKEW_SECONDS)) return { ok: false, reason: `Wechatpay-Timestamp ${h.timestamp} is ${skew} s away from now` };
  if (h.nonce.length > 64) return { ok: false, reason: 'malformed Wechatpay-Nonce' };
  const key = keys.get(h.serial);
  if (!key) return { ok: false, reason: `unknown Wechatpay-Serial ${h.serial.slice(0, 64)}` };
  if (!rsaVerify(responseMessage(h.timestamp, h.nonce, body), h.signature, key)) return { ok: false, reason: 'invalid signature' };
  return { ok: true };
}

/** The headers WeChat Pay puts on a signed response or callback. */
export function signatureHeaders(body: Bytes, serial: string, privateKey: KeyObject | string, timestamp?: number, nonce?: string): Record<string, string> {
  const ts = String(timestamp ?? Math.floor(Date.now() / 1000));
  const n = nonce ?? newNonce();
  return {
    'Wechatpay-Nonce': n,
    'Wechatpay-Signature': rsaSign(responseMessage(ts, n, body), privateKey),
    'Wechatpay-Timestamp': ts,
    'Wechatpay-Serial': serial,
    'Wechatpay-Signature-Type': AUTH_SCHEME,
  };
}

// ---- Client payment parameters -------------------------------------------------------------------

export interface JsapiPayParams {
  appId: string;
  timeStamp: string;
  nonceStr: string;
  package: string;
  signType: 'RSA';
  paySign: string;
}

export function buildJsapiPayParams(appId: string, prepayId: string, privateKey: KeyObject | string, now = new Date(), nonce = newNonce()): JsapiPayParams {
  const timeStamp = String(Math.floor(now.getTime() / 1000));
  const pkg = `prepay_id=${prepayId}`;
  return { appId, timeStamp, nonceStr: nonce, package: pkg, signType: 'RSA', paySign: rsaSign(jsapiPayMessage(appId, timeStamp, nonce, pkg), privateKey) };
}

export function verifyJsapiPayParams(p: Record<string, unknown>, publicKey: KeyObject): boolean {
  const { appId, timeStamp, nonceStr, package: pkg, signType, paySign } = p;
  if (![appId, timeStamp, nonceStr, pkg, paySign].every((v) => typeof v === 'string' && v !== '') || signType !== 'RSA') return false;
  return rsaVerify(jsapiPayMessage(appId as string, timeStamp as string, nonceStr as string, pkg as string), paySign as string, publicKey);
}

export interface AppPayParams {
  appid: string;
  partnerid: string;
  prepayid: string;
  package: 'Sign=WXPay';
  noncestr: string;
  timestamp: string;
  sign: string;
}

export function buildAppPayParams(appid: string, mchid: string, prepayId: string, privateKey: KeyObject | string, now = new Date(), nonce = newNonce()): AppPayParams {
  const timestamp = String(Math.floor(now.getTime() / 1000));
  return {
    appid, partnerid: mchid, prepayid: prepayId, package: 'Sign=WXPay', noncestr: nonce, timestamp,
    sign: rsaSign(appPayMessage(appid, timestamp, nonce, prepayId), privateKey),
  };
}

export function verifyAppPayParams(p: Record<string, unknown>, publicKey: KeyObject): boolean {
  const { appid, timestamp, noncestr, prepayid, sign } = p;
  if (![appid, timestamp, noncestr, prepayid, sign].every((v) => typeof v === 'string' && v !== '') || p['package'] !== 'Sign=WXPay') return false;
  return rsaVerify(appPayMessage(appid as string, timestamp as string, noncestr as string, prepayid as string), sign as string, publicKey);
}

// ---- AEAD_AES_256_GCM (callback resources) -------------------------------------------------------

export interface EncryptedResource {
  algorithm: string;
  ciphertext: string;
  nonce: string;
  associated_data?: string;
  original_type?: string;
}

function gcmCipherFor(key: Buffer): 'aes-128-gcm' | 'aes-256-gcm' {
  if (key.length === 32) return 'aes-256-gcm';
  // WeChat Pay's own Go SDK tests use 16-byte keys; real APIv3 keys are 32 bytes (connector.ts insists).
  if (key.length === 16) return 'aes-128-gcm';
  throw new RangeError(`an AEAD key must be 32 (or 16) bytes, got ${key.length}`);
}

/** Null (never an exception) when the tag, key, nonce or AAD do not match. */
export function decryptAead(key: Buffer, nonce: string, associatedData: string, ciphertextB64: string): Buffer | null {
  if (!BASE64.test(ciphertextB64) || nonce.length === 0 || nonce.length > 64) return null;
  const buf = Buffer.from(ciphertextB64, 'base64');
  if (buf.length < GCM_TAG_BYTES) return null;
  try {
    const decipher = createDecipheriv(gcmCipherFor(key), key, Buffer.from(nonce, 'utf8'), { authTagLength: GCM_TAG_BYTES });
    decipher.setAuthTag(buf.subarray(buf.length - GCM_TAG_BYTES));
    decipher.setAAD(Buffer.from(associatedData, 'utf8'));
    return Buffer.concat([decipher.update(buf.subarray(0, buf.length - GCM_TAG_BYTES)), decipher.final()]);
  } catch {
    return null;
  }
}

export function encryptAead(key: Buffer, nonce: string, associatedData: string, plaintext: Bytes): string {
  const cipher = createCipheriv(gcmCipherFor(key), key, Buffer.from(nonce, 'utf8'), { authTagLength: GCM_TAG_BYTES });
  cipher.setAAD(Buffer.from(associatedData, 'utf8'));
  return Buffer.concat([cipher.update(asBuffer(plaintext)), cipher.final(), cipher.getAuthTag()]).toString('base64');
}

/** Decrypt a callback `resource` (AEAD_AES_256_GCM only); null on any mismatch. */
export function decryptResource(resource: EncryptedResource, apiV3Key: Buffer): Buffer | null {
  if (resource.algorithm !== 'AEAD_AES_256_GCM') return null;
  return decryptAead(apiV3Key, resource.nonce, resource.associated_data ?? '', resource.ciphertext);
}

export function encryptResource(plaintext: string, apiV3Key: Buffer, originalType: string, associatedData: string): Required<EncryptedResource> {
  const nonce = newNonce(12);
  return { original_type: originalType, algorithm: 'AEAD_AES_256_GCM', ciphertext: encryptAead(apiV3Key, nonce, associatedData, plaintext), associated_data: associatedData, nonce };
}

// ---- Keys and random strings ---------------------------------------------------------------------

const ALNUM = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';

/** Random letters and digits (32 by default, as WeChat Pay's nonces). */
export function newNonce(length = 32): string {
  let out = '';
  for (let i = 0; i < length; i++) out += ALNUM[randomInt(ALNUM.length)];
  return out;
}

export function newHex(bytes: number): string {
  return randomBytes(bytes).toString('hex').toUpperCase();
}

/** A merchant private key: PEM (PKCS#1 or PKCS#8) or bare base64 PKCS#8 DER. */
export function loadPrivateKey(text: string): KeyObject {
  const trimmed = text.trim();
  if (trimmed.includes('-----BEGIN')) return createPrivateKey(trimmed);
  return createPrivateKey({ key: Buffer.from(trimmed.replace(/\s+/g, ''), 'base64'), format: 'der', type: 'pkcs8' });
}

/**
 * A platform key: a WeChat Pay public key (SPKI PEM, "PUB_KEY_ID_…" mode) or a platform
 * certificate (PEM). A certificate must carry the serial it is registered under and be in date.
 */
export function loadPlatformKey(serial: string, pem: string, now = new Date()): KeyObject {
  const trimmed = pem.trim();
  if (trimmed.includes('-----BEGIN CERTIFICATE-----')) {
    const cert = new X509Certificate(trimmed);
    if (cert.serialNumber.toUpperCase() !== serial.toUpperCase()) {
      throw new Error(`platform certificate serial ${cert.serialNumber} does not match its key id ${serial}`);
    }
    if (new Date(cert.validTo).getTime() < now.getTime() || new Date(cert.validFrom).getTime() > now.getTime()) {
      throw new Error(`platform certificate ${serial} is not valid now (${cert.validFrom} .. ${cert.validTo})`);
    }
    return cert.publicKey;
  }
  if (trimmed.includes('-----BEGIN')) return createPublicKey(trimmed);
  return createPublicKey({ key: Buffer.from(trimmed.replace(/\s+/g, ''), 'base64'), format: 'der', type: 'spki' });
}

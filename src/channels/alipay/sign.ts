/**
 * Alipay OpenAPI v2 signatures (RSA2 = SHA256withRSA, PKCS#1 v1.5, base64), as pure functions.
 *
 * - Requests: every parameter except `sign` (so `sign_type` IS included), empty values dropped,
 *   keys sorted by ASCII, raw (not URL-encoded) `k=v` joined with `&`.
 * - Async notifications: the same, but with BOTH `sign` and `sign_type` removed (Alipay's
 *   "rsaCheckV1" rule). Some gateway-style notifications are signed with `sign_type` kept
 *   ("rsaCheckV2"); `verifyAlipayNotifySignature` accepts either, as the SDK's checkNotifySign does.
 * - Synchronous responses: the exact raw bytes of the `<method>_response` JSON value.
 */
import { createPrivateKey, createPublicKey, createSign, createVerify, type KeyObject } from 'node:crypto';

export type AlipayParams = Readonly<Record<string, string>>;

const RSA2 = 'RSA-SHA256';

/** Sorted `k=v&k=v` over the non-empty values, leaving out the keys in `exclude`. */
export function alipaySigningString(params: AlipayParams, exclude: readonly string[]): string {
  return Object.keys(params)
    .filter((key) => key !== '' && !exclude.includes(key))
    .filter((key) => typeof params[key] === 'string' && params[key] !== '')
    .sort(compareAscii)
    .map((key) => `${key}=${params[key]}`)
    .join('&');
}

/** ASCII (code unit) order, as Alipay's Java `TreeMap` sorts keys; independent of locale. */
function compareAscii(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** The string Alipay's gateway verifies a request against: all but `sign`, `sign_type` kept. */
export function requestSigningString(params: AlipayParams): string {
  return alipaySigningString(params, ['sign']);
}

/** The string of an async notification under the V1 rule (`sign` and `sign_type` removed). */
export function notifySigningStringV1(params: AlipayParams): string {
  return alipaySigningString(params, ['sign', 'sign_type']);
}

/** The string of a notification under the V2 rule (`sign` removed, `sign_type` kept). */
export function notifySigningStringV2(params: AlipayParams): string {
  return alipaySigningString(params, ['sign']);
}

export function rsa2Sign(content: string, privateKey: string | KeyObject): string {
  return createSign(RSA2).update(content, 'utf8').sign(privateKey, 'base64');
}

/** False (never an exception) for a malformed key, signature or content. */
export function rsa2Verify(content: string, signature: string, publicKey: string | KeyObject): boolean {
  if (typeof signature !== 'string' || signature === '' || !/^[A-Za-z0-9+/]+={0,2}$/.test(signature)) return false;
  try {
    return createVerify(RSA2).update(content, 'utf8').verify(publicKey, signature, 'base64');
  } catch {
    return false;
  }
}

/** Sign request parameters the way Alipay's gateway expects; returns a copy with `sign` set. */
export function signAlipayRequest(params: AlipayParams, privateKey: string | KeyObject): Record<string, string> {
  const withType = { ...params, sign_type: params['sign_type'] ?? 'RSA2' };
  const sign = rsa2Sign(requestSigningString(withType), privateKey);
  return { ...withType, sign };
}

export function verifyAlipayRequestSignature(params: AlipayParams, publicKey: string | KeyObject): boolean {
  const sign = params['sign'];
  if (!sign) return false;
  return rsa2Verify(requestSigningString(params), sign, publicKey);
}

/** Sign a notification the way Alipay does (V1 rule); returns a copy with `sign` and `sign_type`. */
export function signAlipayNotification(params: AlipayParams, privateKey: string | KeyObject): Record<string, string> {
  const { sign: _ignored, ...rest } = params;
  const sign = rsa2Sign(notifySigningStringV1(rest), privateKey);
  return { ...rest, sign_type: 'RSA2', sign };
}

/**
 * Verify an async notification: first the V1 rule (payment notifications), then, when the message
 * carries `sign_type`, the V2 rule. Only RSA2 is accepted.
 */
export function verifyAlipayNotifySignature(params: AlipayParams, publicKeyPem: string | KeyObject): boolean {
  const sign = params['sign'];
  if (!sign) return false;
  const signType = params['sign_type'];
  if (signType !== undefined && signType !== 'RSA2') return false;
  if (rsa2Verify(notifySigningStringV1(params), sign, publicKeyPem)) return true;
  return signType !== undefined && rsa2Verify(notifySigningStringV2(params), sign, publicKeyPem);
}

/** `alipay.trade.precreate` → `alipay_trade_precreate_response`. */
export function responseKeyOf(method: string): string {
  return `${method.replaceAll('.', '_')}_response`;
}

/**
 * The signed part of a synchronous response: the raw text of the `responseKey` value, taken from
 * the raw body (never re-serialised). Null when the body does not have the expected shape.
 */
export function extractSignedResponseContent(rawBody: string, responseKey: string): string | null {
  const marker = `"${responseKey}":`;
  const start = rawBody.indexOf(marker);
  if (start < 0) return null;
  const valueStart = skipWhitespace(rawBody, start + marker.length);
  if (rawBody[valueStart] !== '{') return null;
  const valueEnd = endOfJsonObject(rawBody, valueStart);
  return valueEnd === null ? null : rawBody.slice(valueStart, valueEnd);
}

function skipWhitespace(text: string, from: number): number {
  let i = from;
  while (i < text.length && /\s/.test(text[i]!)) i++;
  return i;
}

/** Index just past the JSON object starting at `start` (string- and escape-aware), or null. */
function endOfJsonObject(text: string, start: number): number | null {
  let depth = 0;
  let inString = false;
  for (let i = start; i < text.length; i++) {
    const ch = text[i];
    if (inString) {
      if (ch === '\\') i++;
      else if (ch === '"') inString = false;
      continue;
    }
    if (ch === '"') inString = true;
    else if (ch === '{') depth++;
    else if (ch === '}' && --depth === 0) return i + 1;
  }
  return null;
}

/** Verify a synchronous response body: the `sign` field over the raw `responseKey` value. */
export function verifyAlipayResponseSignature(rawBody: string, responseKey: string, publicKey: string | KeyObject): boolean {
  const content = extractSignedResponseContent(rawBody, responseKey);
  if (content === null) return false;
  let sign: unknown;
  try {
    sign = (JSON.parse(rawBody) as { sign?: unknown }).sign;
  } catch {
    return false;
  }
  return typeof sign === 'string' && rsa2Verify(content, sign, publicKey);
}

/** Build a signed response body: `{"<key>":<content>,"sign":"..."}` with the signature over `<content>`. */
export function signAlipayResponse(responseKey: string, content: Record<string, unknown>, privateKey: string | KeyObject): string {
  const contentJson = JSON.stringify(content);
  const sign = rsa2Sign(contentJson, privateKey);
  return `{"${responseKey}":${contentJson},"sign":${JSON.stringify(sign)}}`;
}

/** Accept a PEM (any RSA private key format) or Alipay's bare base64 (PKCS#8 or PKCS#1 DER). */
export function loadPrivateKey(text: string): KeyObject {
  const trimmed = text.trim();
  if (trimmed.includes('-----BEGIN')) return createPrivateKey(trimmed);
  const der = Buffer.from(trimmed.replace(/\s+/g, ''), 'base64');
  try {
    return createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
  } catch {
    return createPrivateKey({ key: der, format: 'der', type: 'pkcs1' });
  }
}

/** Accept a PEM public key or Alipay's bare base64 SPKI. */
export function loadPublicKey(text: string): KeyObject {
  const trimmed = text.trim();
  if (trimmed.includes('-----BEGIN')) return createPublicKey(trimmed);
  return createPublicKey({ key: Buffer.from(trimmed.replace(/\s+/g, ''), 'base64'), format: 'der', type: 'spki' });
}

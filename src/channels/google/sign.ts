/**
 * Google-side cryptography as pure functions: RS256 JSON Web Tokens (the service account's
 * JWT-bearer assertion, and the OIDC token Pub/Sub puts on every push), key handling, and the
 * purchase binding tag Knowpay hands to the app.
 *
 * The purchase binding: Google Play's ProductPurchase reports no price, and the app (untrusted)
 * chooses which product it buys and which obfuscatedExternalAccountId it attaches. So the action
 * we return carries `obfuscated_profile_id` = HMAC-SHA256(binding secret, package | reference |
 * product | quantity), which the app passes to BillingFlowParams.setObfuscatedProfileId and Google
 * stores on the purchase. A purchase is ours only when its profile id is the tag of exactly our
 * reference and of the product and quantity Google says were bought: a cheap product bought
 * under an expensive order's reference does not carry the right tag.
 */
import {
  createHash, createHmac, createPrivateKey, createPublicKey, generateKeyPair, randomBytes, sign, timingSafeEqual, verify,
  type KeyObject,
} from 'node:crypto';
import { promisify } from 'node:util';

/** Longest JWT we look at (Google's OIDC tokens are about 1 KB). */
export const MAX_JWT_CHARS = 8192;
const BASE64URL = /^[A-Za-z0-9_-]+$/;

export function base64url(input: Buffer | string): string {
  return (typeof input === 'string' ? Buffer.from(input, 'utf8') : input).toString('base64url');
}

export interface DecodedJwt {
  header: Record<string, unknown>;
  payload: Record<string, unknown>;
  /** `base64url(header).base64url(payload)`, the bytes the signature covers. */
  signingInput: string;
  signature: Buffer;
}

/** Split and parse a compact JWS; null for anything malformed (never throws). */
export function decodeJwt(token: string): DecodedJwt | null {
  if (typeof token !== 'string' || token.length === 0 || token.length > MAX_JWT_CHARS) return null;
  const parts = token.split('.');
  if (parts.length !== 3 || parts.some((p) => p === '' || !BASE64URL.test(p))) return null;
  const [h, p, s] = parts as [string, string, string];
  const header = parseJsonObject(Buffer.from(h, 'base64url'));
  const payload = parseJsonObject(Buffer.from(p, 'base64url'));
  if (!header || !payload) return null;
  return { header, payload, signingInput: `${h}.${p}`, signature: Buffer.from(s, 'base64url') };
}

function parseJsonObject(bytes: Buffer): Record<string, unknown> | null {
  try {
    const text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    const value: unknown = JSON.parse(text);
    return value !== null && typeof value === 'object' && !Array.isArray(value) ? (value as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

/** RS256 (RSASSA-PKCS1-v1_5 with SHA-256) compact JWS with `{alg, typ, kid}` header. */
export function signJwtRs256(payload: Record<string, unknown>, privateKey: KeyObject, kid: string): string {
  const signingInput = `${base64url(JSON.stringify({ alg: 'RS256', kid, typ: 'JWT' }))}.${base64url(JSON.stringify(payload))}`;
  return `${signingInput}.${sign('sha256', Buffer.from(signingInput, 'ascii'), privateKey).toString('base64url')}`;
}

/** True only for an RS256 token whose signature verifies with `publicKey`; false, never throws. */
export function verifyJwtRs256(jwt: DecodedJwt, publicKey: KeyObject): boolean {
  if (jwt.header['alg'] !== 'RS256') return false;
  try {
    return verify('sha256', Buffer.from(jwt.signingInput, 'ascii'), publicKey, jwt.signature);
  } catch {
    return false;
  }
}

/** A PEM private key (PKCS#8 or PKCS#1), as in a service account's JSON key `private_key`. */
export function loadPrivateKey(pem: string): KeyObject {
  const key = createPrivateKey(pem);
  if (key.asymmetricKeyType !== 'rsa') throw new TypeError(`expected an RSA private key, got ${key.asymmetricKeyType}`);
  return key;
}

/** A PEM public key or certificate, or the public half of a private KeyObject. */
export function loadPublicKey(pem: string | KeyObject): KeyObject {
  const key = createPublicKey(pem);
  if (key.asymmetricKeyType !== 'rsa') throw new TypeError(`expected an RSA public key, got ${key.asymmetricKeyType}`);
  return key;
}

/** A key id shaped like Google's (40 hex digits): SHA-1 of the SubjectPublicKeyInfo. */
export function keyIdOf(publicKey: KeyObject): string {
  return createHash('sha1').update(publicKey.export({ type: 'spki', format: 'der' })).digest('hex');
}

/** A public key as a JWK with Google's certs-endpoint fields (kty, alg, use, kid, n, e). */
export function publicJwk(publicKey: KeyObject, kid: string): Record<string, string> {
  const jwk = publicKey.export({ format: 'jwk' }) as { kty: string; n: string; e: string };
  return { kty: jwk.kty, alg: 'RS256', use: 'sig', kid, n: jwk.n, e: jwk.e };
}

const generateRsa = promisify(generateKeyPair);

/** An RSA-2048 pair as PEM (PKCS#8 private, SPKI public), like a service account JSON key. */
export async function generateRsaPemPair(): Promise<{ privateKey: string; publicKey: string }> {
  return generateRsa('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
}

export function randomSecret(bytes = 32): string {
  return randomBytes(bytes).toString('base64url');
}

// ---- Purchase binding ---------------------------------------------------------------------------

export interface PurchaseBinding {
  packageName: string;
  /** Our reference: the obfuscatedExternalAccountId. */
  reference: string;
  productId: string;
  quantity: number;
}

const BINDING_LABEL = 'knowpay.google_play.purchase_binding.v1';
/** Google's limit for obfuscatedExternalProfileId; a base64url SHA-256 tag is 43. */
export const MAX_OBFUSCATED_ID_CHARS = 64;

export function purchaseBindingTag(secret: string, b: PurchaseBinding): string {
  if (typeof secret !== 'string' || secret.length < 16) throw new TypeError('binding secret must be at least 16 characters');
  if (!Number.isInteger(b.quantity) || b.quantity < 1) throw new TypeError('binding quantity must be a positive integer');
  const message = [BINDING_LABEL, b.packageName, b.reference, b.productId, String(b.quantity)].join('\n');
  return createHmac('sha256', secret).update(message, 'utf8').digest('base64url');
}

/** Constant-time comparison of a purchase's obfuscatedExternalProfileId with the expected tag. */
export function bindingMatches(secret: string, b: PurchaseBinding, tag: unknown): boolean {
  if (typeof tag !== 'string' || tag.length === 0 || tag.length > MAX_OBFUSCATED_ID_CHARS) return false;
  const expected = Buffer.from(purchaseBindingTag(secret, b), 'utf8');
  const given = Buffer.from(tag, 'utf8');
  return given.length === expected.length && timingSafeEqual(given, expected);
}

/**
 * The binding secret used when none is configured: derived from the service account's private
 * key, so one secret (the JSON key) configures everything. Rotating that key changes the tag:
 * purchases started before the rotation no longer verify, so set GOOGLE_PLAY_BINDING_SECRET
 * explicitly when keys rotate.
 */
export function deriveBindingSecret(privateKeyPem: string): string {
  const der = loadPrivateKey(privateKeyPem).export({ type: 'pkcs8', format: 'der' });
  return createHmac('sha256', BINDING_LABEL).update(der).digest('base64url');
}

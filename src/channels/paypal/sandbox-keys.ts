/**
 * The PayPal sandbox's credentials: a REST app (client id/secret), the webhook registration id,
 * the merchant, the secret behind its access tokens, and a message-verification certificate.
 *
 * The certificate is issued by a sandbox root CA (root → leaf, like PayPal's DigiCert chain), so
 * the connector runs the same chain check as against PayPal, with the sandbox root as its only
 * anchor, issued by the shared sandbox certificate issuer (sandbox/x509.ts). Only the leaf key is kept: the root key is dropped once the leaf is signed.
 */
import { createHmac, generateKeyPair, randomBytes, randomInt, timingSafeEqual } from 'node:crypto';
import { promisify } from 'node:util';
import { issueCertificate, type CertificateSpec } from '../sandbox/x509.ts';

/** The name the sandbox's leaf certificate carries (the connector's `certSubjects` in sandbox mode). */
export const SANDBOX_CERT_SUBJECT = 'messageverificationcerts.sandbox.knowpay.test';

export interface PayPalSandboxKeys {
  clientId: string;
  clientSecret: string;
  /** The id of "our" webhook registration: part of every signed string. */
  webhookId: string;
  /** The sandbox merchant (payee.merchant_id in every resource). */
  merchantId: string;
  merchantEmail: string;
  /** HMAC key behind the access tokens (stateless, so every process sharing the DB accepts them). */
  tokenSecret: string;
  /** The certificate URL's last segment is `CERT-${certId}`. */
  certId: string;
  /** Trust anchor given to the connector. */
  caCertPem: string;
  /** Served at the certificate URL. */
  signingCertPem: string;
  /** PKCS#8 PEM: signs every webhook transmission. */
  signingKeyPem: string;
}

const generateRsa = promisify(generateKeyPair);
const DAY_MS = 86_400_000;
const UPPER_ALNUM = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ';

export function randomUpperAlnum(length: number): string {
  let out = '';
  for (let i = 0; i < length; i++) out += UPPER_ALNUM[randomInt(UPPER_ALNUM.length)];
  return out;
}

/** A PayPal-style RSA certificate, as PEM. */
function issue(spec: Omit<CertificateSpec, 'sigalg'>): string {
  return issueCertificate({ ...spec, sigalg: 'SHA256withRSA' }).pem;
}

/** Root CA (10 y) → leaf for SANDBOX_CERT_SUBJECT (5 y), both valid from a day ago. */
export async function generateSandboxCertificates(now = new Date()): Promise<Pick<PayPalSandboxKeys, 'caCertPem' | 'signingCertPem' | 'signingKeyPem'>> {
  const pair = () => generateRsa('rsa', { modulusLength: 2048, publicKeyEncoding: { type: 'spki', format: 'pem' }, privateKeyEncoding: { type: 'pkcs8', format: 'pem' } });
  const [root, leaf] = await Promise.all([pair(), pair()]);
  const notBefore = new Date(now.getTime() - DAY_MS);
  const rootName = '/C=US/O=Knowpay Sandbox/OU=www.knowpay.test/CN=Knowpay Sandbox PayPal Root CA';
  const caCertPem = issue({
    issuer: rootName, subject: rootName, subjectPublicKeyPem: root.publicKey, issuerPrivateKeyPem: root.privateKey,
    notBefore, notAfter: new Date(now.getTime() + 10 * 365 * DAY_MS),
    ext: [{ extname: 'basicConstraints', cA: true, critical: true }, { extname: 'keyUsage', critical: true, names: ['keyCertSign', 'cRLSign'] }],
  });
  const signingCertPem = issue({
    issuer: rootName, subject: `/C=US/ST=California/L=San Jose/O=Knowpay Sandbox/OU=Partner Support/CN=${SANDBOX_CERT_SUBJECT}`,
    subjectPublicKeyPem: leaf.publicKey, issuerPrivateKeyPem: root.privateKey,
    notBefore, notAfter: new Date(now.getTime() + 5 * 365 * DAY_MS),
    ext: [
      { extname: 'basicConstraints', cA: false },
      { extname: 'keyUsage', critical: true, names: ['digitalSignature', 'keyEncipherment'] },
      { extname: 'extKeyUsage', array: [{ name: 'serverAuth' }, { name: 'clientAuth' }] },
      { extname: 'subjectAltName', array: [{ dns: SANDBOX_CERT_SUBJECT }] },
    ],
  });
  return { caCertPem, signingCertPem, signingKeyPem: leaf.privateKey };
}

export async function generatePayPalSandboxKeys(now = new Date()): Promise<PayPalSandboxKeys> {
  const certs = await generateSandboxCertificates(now);
  const merchantId = randomUpperAlnum(13);
  return {
    clientId: 'A' + randomBytes(60).toString('base64url'),
    clientSecret: 'E' + randomBytes(60).toString('base64url'),
    webhookId: randomUpperAlnum(17),
    merchantId,
    merchantEmail: `sb-${merchantId.toLowerCase()}@business.example.com`,
    tokenSecret: randomBytes(32).toString('base64url'),
    certId: `${randomBytes(4).toString('hex')}-${randomBytes(4).toString('hex')}-${randomBytes(4).toString('hex')}-${randomBytes(4).toString('hex')}`,
    ...certs,
  };
}

// ---- Access tokens ----------------------------------------------------------------------------------

interface TokenClaims {
  cid: string;
  /** Expiry, unix seconds. */
  exp: number;
  jti: string;
}

/** `A21AA` + base64url(claims) + '.' + base64url(HMAC-SHA256): opaque to the client, like PayPal's. */
export function mintAccessToken(secret: string, clientId: string, ttlSeconds: number, now = Date.now()): string {
  const claims: TokenClaims = { cid: clientId, exp: Math.floor(now / 1000) + ttlSeconds, jti: randomBytes(9).toString('base64url') };
  const payload = Buffer.from(JSON.stringify(claims), 'utf8').toString('base64url');
  return `A21AA${payload}.${createHmac('sha256', secret).update(payload).digest('base64url')}`;
}

export type TokenCheck = { ok: true } | { ok: false; expired: boolean };

export function checkAccessToken(secret: string, clientId: string, token: string, now = Date.now()): TokenCheck {
  const m = /^A21AA([A-Za-z0-9_-]{1,512})\.([A-Za-z0-9_-]{43})$/.exec(token);
  if (!m) return { ok: false, expired: false };
  const expected = createHmac('sha256', secret).update(m[1]!).digest();
  const given = Buffer.from(m[2]!, 'base64url');
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return { ok: false, expired: false };
  let claims: Partial<TokenClaims>;
  try {
    claims = JSON.parse(Buffer.from(m[1]!, 'base64url').toString('utf8')) as Partial<TokenClaims>;
  } catch {
    return { ok: false, expired: false };
  }
  if (claims.cid !== clientId || typeof claims.exp !== 'number') return { ok: false, expired: false };
  if (claims.exp * 1000 <= now) return { ok: false, expired: true };
  return { ok: true };
}

/** Constant-time comparison of a presented credential with the expected one. */
export function sameSecret(given: string, expected: string): boolean {
  const a = createHmac('sha256', 'cmp').update(given).digest();
  const b = createHmac('sha256', 'cmp').update(expected).digest();
  return timingSafeEqual(a, b);
}

/**
 * App Store signed data: verification through Apple's official `SignedDataVerifier`, and the
 * App Store's side (the sandbox's) of the same format.
 *
 * - Verification (connector): `createVerifier` builds the library's `SignedDataVerifier` for
 *   Production or Sandbox only. `Environment.LOCAL_TESTING` and `XCODE` make the library skip
 *   every signature check, so they are refused here, whatever the caller asks.
 * - Signing (sandbox): compact JWS, header `{"alg":"ES256","x5c":[leaf, intermediate, root]}`,
 *   ES256 over `base64url(header).base64url(payload)` with the raw r‖s signature (RFC 7518 §3.4).
 * - Certificates (sandbox): a root → intermediate → leaf chain shaped like Apple's (intermediate
 *   CA:true with marker OID 1.2.840.113635.100.6.2.1, leaf with 1.2.840.113635.100.6.11.1),
 *   made with the shared sandbox certificate issuer (sandbox/x509.ts).
 * - Server API tokens (sandbox): the ES256 bearer JWT the library signs ({iss, iat, exp,
 *   aud:"appstoreconnect-v1", bid}, header kid), checked as Apple documents it.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, randomUUID, sign, verify, X509Certificate, type KeyObject } from 'node:crypto';
import { issueCertificate, type CertificateSpec } from '../sandbox/x509.ts';
import { Environment, SignedDataVerifier, VerificationException, VerificationStatus } from '@apple/app-store-server-library';

export const LEAF_MARKER_OID = '1.2.840.113635.100.6.11.1';
export const INTERMEDIATE_MARKER_OID = '1.2.840.113635.100.6.2.1';
/** ASN.1 NULL: the value of both marker extensions in Apple's certificates. */
const ASN1_NULL_HEX = '0500';

/** The two environments whose data the library really verifies. */
export type AppleEnvironment = 'Production' | 'Sandbox';

export interface VerifierConfig {
  /** DER certificates of the trusted roots (Apple's in real mode; the sandbox's own root in sandbox mode). */
  rootCertificates: readonly Buffer[];
  /** OCSP revocation checks and certificate dates at "now" (true), or dates at the payload's signedDate (false). */
  enableOnlineChecks: boolean;
  environment: AppleEnvironment;
  bundleId: string;
  /** Required in Production (the library compares it there only). */
  appAppleId?: number;
}

export function createVerifier(config: VerifierConfig): SignedDataVerifier {
  const environment = config.environment === 'Production' ? Environment.PRODUCTION : config.environment === 'Sandbox' ? Environment.SANDBOX : null;
  // Never LOCAL_TESTING or XCODE: the library returns their payloads without any signature check.
  if (environment === null) throw new TypeError(`Apple environment must be Production or Sandbox, got ${String(config.environment)}`);
  if (config.rootCertificates.length === 0) throw new TypeError('at least one trusted root certificate is required');
  for (const der of config.rootCertificates) {
    const cert = new X509Certificate(der);
    if (!cert.ca) throw new TypeError(`trusted root ${cert.subject.replace(/\n/g, ', ')} is not a CA certificate`);
  }
  if (!config.bundleId) throw new TypeError('bundleId is required');
  if (environment === Environment.PRODUCTION && !(Number.isSafeInteger(config.appAppleId) && config.appAppleId! > 0)) {
    throw new TypeError('appAppleId (a positive integer) is required in Production');
  }
  return new SignedDataVerifier([...config.rootCertificates], config.enableOnlineChecks, environment, config.bundleId, config.appAppleId);
}

const STATUS_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(VerificationStatus).filter(([, v]) => typeof v === 'number').map(([k, v]) => [v as number, k]),
);

export function verificationStatusName(status: VerificationStatus): string {
  return STATUS_NAMES[status] ?? `STATUS_${status}`;
}

/** `VERIFICATION_FAILURE` and the like for a library exception; null for anything else. */
export function verificationFailure(err: unknown): { status: VerificationStatus; name: string; retryable: boolean } | null {
  if (!(err instanceof VerificationException)) return null;
  return { status: err.status, name: verificationStatusName(err.status), retryable: err.status === VerificationStatus.RETRYABLE_VERIFICATION_FAILURE };
}

// ---- Compact JWS -----------------------------------------------------------------------------------

export const MAX_JWS_CHARS = 64 * 1024;

const b64url = (data: Buffer | string) => Buffer.from(data).toString('base64url');

export interface DecodedJws {
  header: Record<string, unknown>;
  payload: Record<string, unknown>;
}

/** Header and payload WITHOUT any verification (the sandbox reading its own data; tests). Null when malformed. */
export function decodeJwsUnverified(jws: unknown): DecodedJws | null {
  if (typeof jws !== 'string' || jws.length > MAX_JWS_CHARS) return null;
  const parts = jws.split('.');
  if (parts.length !== 3 || parts.some((p) => !/^[A-Za-z0-9_-]*$/.test(p))) return null;
  try {
    const header: unknown = JSON.parse(Buffer.from(parts[0]!, 'base64url').toString('utf8'));
    const payload: unknown = JSON.parse(Buffer.from(parts[1]!, 'base64url').toString('utf8'));
    if (!isObject(header) || !isObject(payload)) return null;
    return { header, payload };
  } catch {
    return null;
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** The App Store's signing: ES256 with the certificate chain in `x5c` (standard base64 DER, leaf first). */
export function signAppStoreJws(payload: Record<string, unknown>, leafPrivateKey: KeyObject | string, chainDer: readonly Buffer[]): string {
  if (chainDer.length !== 3) throw new TypeError('the x5c chain must be leaf, intermediate, root');
  const header = { alg: 'ES256', x5c: chainDer.map((d) => d.toString('base64')) };
  const signingInput = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(payload))}`;
  const key = typeof leafPrivateKey === 'string' ? createPrivateKey(leafPrivateKey) : leafPrivateKey;
  const signature = sign('sha256', Buffer.from(signingInput), { key, dsaEncoding: 'ieee-p1363' });
  return `${signingInput}.${b64url(signature)}`;
}

// ---- The sandbox's certificate chain -----------------------------------------------------------------

export interface SandboxChain {
  rootDer: Buffer;
  intermediateDer: Buffer;
  leafDer: Buffer;
  /** PKCS#8 PEM of the leaf key (P-256), which signs every JWS. */
  leafPrivateKeyPem: string;
}

function ecPair(namedCurve: 'P-256' | 'P-384') {
  return generateKeyPairSync('ec', { namedCurve, publicKeyEncoding: { type: 'spki', format: 'pem' }, privateKeyEncoding: { type: 'pkcs8', format: 'pem' } });
}

/** One certificate of the chain, as DER (the x5c form). */
function issueDer(spec: Omit<CertificateSpec, 'subjectPublicKeyPem'> & { publicKeyPem: string }): Buffer {
  const { publicKeyPem, ...rest } = spec;
  return issueCertificate({ ...rest, subjectPublicKeyPem: publicKeyPem }).der;
}

const DAY_MS = 86_400_000;

/**
 * A fresh chain shaped like Apple's: root (P-384, self-signed) → intermediate (P-384, CA:true,
 * pathlen 0, OID …6.2.1) → leaf (P-256, CA:false, OID …6.11.1). Only the leaf key is kept.
 */
export function generateSandboxChain(now = new Date(), label = 'Knowpay App Store Sandbox'): SandboxChain {
  const root = ecPair('P-384');
  const intermediate = ecPair('P-384');
  const leaf = ecPair('P-256');
  const notBefore = new Date(now.getTime() - DAY_MS);
  const rootName = `/C=US/O=${label}/OU=Certification Authority/CN=${label} Root CA`;
  const intermediateName = `/C=US/O=${label}/OU=G1/CN=${label} Worldwide Developer Relations CA`;
  const leafName = `/C=US/O=${label}/OU=Worldwide Developer Relations/CN=${label} Signing`;
  const rootDer = issueDer({
    issuer: rootName, subject: rootName, publicKeyPem: root.publicKey, issuerPrivateKeyPem: root.privateKey, sigalg: 'SHA384withECDSA',
    notBefore, notAfter: new Date(now.getTime() + 25 * 365 * DAY_MS),
    ext: [{ extname: 'basicConstraints', cA: true, critical: true }, { extname: 'keyUsage', critical: true, names: ['keyCertSign', 'cRLSign'] }],
  });
  const intermediateDer = issueDer({
    issuer: rootName, subject: intermediateName, publicKeyPem: intermediate.publicKey, issuerPrivateKeyPem: root.privateKey, sigalg: 'SHA384withECDSA',
    notBefore, notAfter: new Date(now.getTime() + 15 * 365 * DAY_MS),
    ext: [
      { extname: 'basicConstraints', cA: true, pathLen: 0, critical: true },
      { extname: 'keyUsage', critical: true, names: ['keyCertSign', 'cRLSign'] },
      { extname: INTERMEDIATE_MARKER_OID, extn: ASN1_NULL_HEX },
    ],
  });
  const leafDer = issueDer({
    issuer: intermediateName, subject: leafName, publicKeyPem: leaf.publicKey, issuerPrivateKeyPem: intermediate.privateKey, sigalg: 'SHA384withECDSA',
    notBefore, notAfter: new Date(now.getTime() + 10 * 365 * DAY_MS),
    ext: [
      { extname: 'basicConstraints', cA: false, critical: true },
      { extname: 'keyUsage', critical: true, names: ['digitalSignature'] },
      { extname: LEAF_MARKER_OID, extn: ASN1_NULL_HEX },
    ],
  });
  return { rootDer, intermediateDer, leafDer, leafPrivateKeyPem: leaf.privateKey };
}

// ---- App Store Server API credentials and bearer tokens ------------------------------------------------

export interface ApiKeyMaterial {
  /** PKCS#8 PEM, the format of the .p8 file App Store Connect hands out. */
  privateKeyPem: string;
  publicKeyPem: string;
  /** 10 characters, like App Store Connect key ids. */
  keyId: string;
  /** A UUID, like App Store Connect issuer ids. */
  issuerId: string;
}

export function generateApiKey(): ApiKeyMaterial {
  const pair = ecPair('P-256');
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789';
  const keyId = Array.from(randomBytes(10), (b) => alphabet[b % alphabet.length]).join('');
  return { privateKeyPem: pair.privateKey, publicKeyPem: pair.publicKey, keyId, issuerId: randomUUID() };
}

export const API_TOKEN_AUDIENCE = 'appstoreconnect-v1';
/** Apple refuses tokens whose exp is more than 60 minutes after iat. */
export const MAX_API_TOKEN_LIFETIME_S = 3600;
const CLOCK_SKEW_S = 60;

export type TokenCheck = { ok: true; claims: Record<string, unknown> } | { ok: false; reason: string };

/**
 * The App Store Server API's check of `Authorization: Bearer <JWT>`: ES256 under the key named by
 * `kid`, `iss` = issuer id, `aud` = appstoreconnect-v1, `bid` = the app, unexpired, ≤ 60 min.
 */
export function verifyApiToken(
  authorization: string | undefined,
  expected: { keyId: string; issuerId: string; bundleId: string; publicKeyPem: string },
  now = new Date(),
): TokenCheck {
  const match = /^Bearer ([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)$/.exec(authorization ?? '');
  if (!match) return { ok: false, reason: 'missing or malformed bearer token' };
  const token = match[1]!;
  const decoded = decodeJwsUnverified(token);
  if (!decoded) return { ok: false, reason: 'malformed token' };
  const { header, payload: claims } = decoded;
  if (header['alg'] !== 'ES256') return { ok: false, reason: `alg ${String(header['alg'])} is not ES256` };
  if (header['kid'] !== expected.keyId) return { ok: false, reason: 'unknown kid' };
  const [h, p, s] = token.split('.') as [string, string, string];
  const signature = Buffer.from(s, 'base64url');
  let valid = false;
  try {
    valid = signature.length === 64 && verify('sha256', Buffer.from(`${h}.${p}`), { key: createPublicKey(expected.publicKeyPem), dsaEncoding: 'ieee-p1363' }, signature);
  } catch {
    valid = false;
  }
  if (!valid) return { ok: false, reason: 'bad signature' };
  if (claims['iss'] !== expected.issuerId) return { ok: false, reason: 'wrong iss' };
  if (claims['aud'] !== API_TOKEN_AUDIENCE) return { ok: false, reason: 'wrong aud' };
  if (claims['bid'] !== expected.bundleId) return { ok: false, reason: 'wrong bid' };
  const iat = claims['iat'];
  const exp = claims['exp'];
  if (typeof iat !== 'number' || typeof exp !== 'number' || !Number.isInteger(iat) || !Number.isInteger(exp)) return { ok: false, reason: 'iat/exp missing' };
  const nowS = Math.floor(now.getTime() / 1000);
  if (iat > nowS + CLOCK_SKEW_S) return { ok: false, reason: 'iat in the future' };
  if (exp <= nowS - CLOCK_SKEW_S) return { ok: false, reason: 'expired' };
  if (exp - iat > MAX_API_TOKEN_LIFETIME_S || exp <= iat) return { ok: false, reason: 'lifetime over 60 minutes' };
  return { ok: true, claims };
}

/**
 * PayPal webhook signatures, verified offline (the algorithm PayPal's own SDKs used):
 *
 *   signed string = `${PAYPAL-TRANSMISSION-ID}|${PAYPAL-TRANSMISSION-TIME}|${webhook_id}|${crc32(rawBody)}`
 *
 * with the CRC-32 (IEEE, as zlib) of the exact body bytes written as an unsigned decimal, verified
 * with SHA256withRSA (PKCS#1 v1.5) against the public key of the certificate at PAYPAL-CERT-URL.
 *
 * What is checked, in order, before any byte of the body is believed:
 * 1. headers present, `PAYPAL-AUTH-ALGO` is SHA256withRSA;
 * 2. the transmission time is within the tolerance window (default: at most 15 minutes old and
 *    5 minutes in the future — PayPal signs every delivery attempt afresh, so retries pass);
 * 3. the certificate URL is on the allow-list (https on api.paypal.com / api.sandbox.paypal.com, or
 *    the configured sandbox prefix) — a foreign URL is refused without being fetched;
 * 4. the certificate chain: the leaf names a PayPal message-verification host, every certificate is
 *    inside its validity dates, and the chain reaches a configured trust anchor;
 * 5. the signature.
 */
import { createVerify, X509Certificate } from 'node:crypto';
import tls from 'node:tls';
import type { NotificationInput } from '../types.ts';

export const PAYPAL_AUTH_ALGO = 'SHA256withRSA';

/** Hosts PayPal serves its message-verification certificates from (https only). */
export const PAYPAL_CERT_HOSTS: readonly string[] = Object.freeze(['api.paypal.com', 'api.sandbox.paypal.com']);
/** Names PayPal's message-verification leaf certificates carry. */
export const PAYPAL_CERT_SUBJECTS: readonly string[] = Object.freeze(['messageverificationcerts.paypal.com', 'messageverificationcerts.sandbox.paypal.com']);

export const DEFAULT_MAX_AGE_MS = 15 * 60_000;
export const DEFAULT_MAX_FUTURE_MS = 5 * 60_000;
export const MAX_WEBHOOK_BODY_BYTES = 256 * 1024;
const MAX_CHAIN_LENGTH = 5;
const MAX_SIGNATURE_CHARS = 2048;

// ---- CRC-32 ----------------------------------------------------------------------------------------

const CRC_TABLE: Uint32Array = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** CRC-32 (IEEE 802.3, reflected, as zlib's crc32) as an unsigned 32-bit integer. */
export function crc32(bytes: Uint8Array): number {
  let crc = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) crc = CRC_TABLE[(crc ^ bytes[i]!) & 0xff]! ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

export interface Transmission {
  transmissionId: string;
  transmissionTime: string;
  transmissionSig: string;
  certUrl: string;
  authAlgo: string;
}

/** The exact string PayPal signs for one delivery. */
export function transmissionSigningInput(t: Pick<Transmission, 'transmissionId' | 'transmissionTime'>, webhookId: string, rawBody: Uint8Array): string {
  return `${t.transmissionId}|${t.transmissionTime}|${webhookId}|${crc32(rawBody)}`;
}

const HEADER_NAMES = {
  transmissionId: 'paypal-transmission-id',
  transmissionTime: 'paypal-transmission-time',
  transmissionSig: 'paypal-transmission-sig',
  certUrl: 'paypal-cert-url',
  authAlgo: 'paypal-auth-algo',
} as const;

/** Header lookup, case-insensitive; a header given twice is ambiguous and refused. */
function header(headers: NotificationInput['headers'], name: string): string | null | 'repeated' {
  let found: string | null = null;
  for (const [k, v] of Object.entries(headers)) {
    if (k.toLowerCase() !== name || v === undefined) continue;
    if (Array.isArray(v)) {
      if (v.length !== 1) return 'repeated';
      if (found !== null) return 'repeated';
      found = v[0]!;
    } else {
      if (found !== null) return 'repeated';
      found = v;
    }
  }
  return found;
}

export function readTransmission(headers: NotificationInput['headers']): { ok: true; value: Transmission } | { ok: false; reason: string } {
  const out: Partial<Transmission> = {};
  for (const [key, name] of Object.entries(HEADER_NAMES) as Array<[keyof Transmission, string]>) {
    const v = header(headers, name);
    if (v === 'repeated') return { ok: false, reason: `header ${name} repeated` };
    if (v === null || v.trim() === '') return { ok: false, reason: `missing header ${name}` };
    if (v.length > (key === 'transmissionSig' ? MAX_SIGNATURE_CHARS : 1024)) return { ok: false, reason: `header ${name} too long` };
    out[key] = v.trim();
  }
  return { ok: true, value: out as Transmission };
}

/** ISO 8601 UTC with optional fraction (`2017-03-30T20:04:05Z`); null otherwise. */
export function parseTransmissionTime(text: string): Date | null {
  if (!/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$/.test(text)) return null;
  const ms = Date.parse(text);
  return Number.isFinite(ms) ? new Date(ms) : null;
}

// ---- Certificate URL policy -------------------------------------------------------------------------

export interface CertUrlPolicy {
  /** https hosts (default PAYPAL_CERT_HOSTS). */
  hosts: readonly string[];
  /** Sandbox mode only: an absolute URL prefix (the sandbox's own cert path), http allowed. */
  sandboxPrefix?: string;
}

export function checkCertUrl(text: string, policy: CertUrlPolicy): { ok: true; url: string } | { ok: false; reason: string } {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return { ok: false, reason: 'certificate URL is not a URL' };
  }
  if (url.username || url.password) return { ok: false, reason: 'certificate URL carries credentials' };
  if (policy.sandboxPrefix) {
    const prefix = new URL(policy.sandboxPrefix);
    if (url.origin === prefix.origin && url.pathname.startsWith(prefix.pathname) && !url.pathname.includes('..') && url.search === '') {
      return { ok: true, url: url.toString() };
    }
  }
  if (url.protocol !== 'https:') return { ok: false, reason: `certificate URL must be https, got ${url.protocol}` };
  if (url.port !== '') return { ok: false, reason: 'certificate URL must use the default port' };
  if (!policy.hosts.includes(url.hostname)) return { ok: false, reason: `certificate host ${url.hostname} is not PayPal's` };
  if (!url.pathname.startsWith('/v1/notifications/')) return { ok: false, reason: 'certificate URL path is not under /v1/notifications/' };
  return { ok: true, url: url.toString() };
}

// ---- Certificates ------------------------------------------------------------------------------------

/** Every PEM certificate in the text (at most MAX_CHAIN_LENGTH), or one DER certificate. */
export function parseCertificates(data: Buffer | string): X509Certificate[] {
  const text = typeof data === 'string' ? data : data.toString('latin1');
  const blocks = text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g);
  if (!blocks) return [new X509Certificate(typeof data === 'string' ? Buffer.from(data, 'latin1') : data)];
  if (blocks.length > MAX_CHAIN_LENGTH) throw new Error(`more than ${MAX_CHAIN_LENGTH} certificates`);
  return blocks.map((b) => new X509Certificate(b));
}

function validAt(cert: X509Certificate, now: Date): boolean {
  const from = Date.parse(cert.validFrom);
  const to = Date.parse(cert.validTo);
  return Number.isFinite(from) && Number.isFinite(to) && from <= now.getTime() && now.getTime() <= to;
}

function issuedBy(child: X509Certificate, issuer: X509Certificate): boolean {
  try {
    return child.checkIssued(issuer) && child.verify(issuer.publicKey);
  } catch {
    return false;
  }
}

export interface ChainPolicy {
  anchors: readonly X509Certificate[];
  subjectNames: readonly string[];
}

/**
 * Leaf first. The leaf must name one of `subjectNames`; every certificate used must be valid at
 * `now`; each link must be issued and signed by the next (a CA); the last must be issued by an
 * anchor (or be one). Intermediates may be served with the leaf or configured as anchors.
 */
export function checkChain(chain: readonly X509Certificate[], policy: ChainPolicy, now: Date): { ok: true } | { ok: false; reason: string } {
  const leaf = chain[0];
  if (!leaf) return { ok: false, reason: 'no certificate' };
  if (!policy.subjectNames.some((name) => leaf.checkHost(name, { wildcards: false }) !== undefined)) {
    return { ok: false, reason: `certificate is not for ${policy.subjectNames.join(' or ')}` };
  }
  let current = leaf;
  for (let depth = 0; depth < MAX_CHAIN_LENGTH; depth++) {
    if (!validAt(current, now)) return { ok: false, reason: `certificate ${current.subject.replace(/\n/g, ', ')} not valid at ${now.toISOString()} (valid ${current.validFrom} to ${current.validTo})` };
    const anchored = policy.anchors.some((a) => a.fingerprint256 === current.fingerprint256 || (a.ca && validAt(a, now) && issuedBy(current, a)));
    if (anchored) return { ok: true };
    const next = chain[depth + 1];
    if (!next || !next.ca || !issuedBy(current, next)) return { ok: false, reason: 'certificate chain does not reach a trusted anchor' };
    current = next;
  }
  return { ok: false, reason: 'certificate chain too long' };
}

let systemAnchors: X509Certificate[] | null = null;

/** Node's bundled Mozilla root store, parsed once: the default anchors for real PayPal. */
export function systemTrustAnchors(): readonly X509Certificate[] {
  systemAnchors ??= tls.rootCertificates.map((pem) => new X509Certificate(pem));
  return systemAnchors;
}

// ---- Fetching and caching certificates -----------------------------------------------------------------

export type CertificateFetcher = (url: string) => Promise<Buffer>;

export interface CertificateSourceOptions {
  fetcher?: CertificateFetcher;
  timeoutMs?: number;
  maxBytes?: number;
  /** Entries kept (oldest evicted first). */
  cacheSize?: number;
  /** How long a downloaded chain is reused before fetching again. */
  ttlMs?: number;
}

export interface CertificateSource {
  get(url: string): Promise<X509Certificate[]>;
}

/** Download with a bounded time and size, no redirects. */
export function httpCertificateFetcher(timeoutMs: number, maxBytes: number): CertificateFetcher {
  return async (url) => {
    const res = await fetch(url, { method: 'GET', redirect: 'error', signal: AbortSignal.timeout(timeoutMs), headers: { accept: 'application/x-pem-file, */*' } });
    if (res.status !== 200) {
      await res.body?.cancel().catch(() => {});
      throw new Error(`certificate download answered HTTP ${res.status}`);
    }
    const declared = Number(res.headers.get('content-length') ?? '0');
    if (declared > maxBytes) {
      await res.body?.cancel().catch(() => {});
      throw new Error(`certificate larger than ${maxBytes} bytes`);
    }
    const chunks: Buffer[] = [];
    let total = 0;
    if (res.body) {
      const reader = res.body.getReader();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        total += value.length;
        if (total > maxBytes) {
          await reader.cancel().catch(() => {});
          throw new Error(`certificate larger than ${maxBytes} bytes`);
        }
        chunks.push(Buffer.from(value));
      }
    }
    return Buffer.concat(chunks);
  };
}

/** A bounded cache over a fetcher; concurrent requests for one URL share one download. */
export function createCertificateSource(opts: CertificateSourceOptions = {}): CertificateSource {
  const timeoutMs = opts.timeoutMs ?? 5_000;
  const maxBytes = opts.maxBytes ?? 64 * 1024;
  const cacheSize = opts.cacheSize ?? 16;
  const ttlMs = opts.ttlMs ?? 24 * 3600_000;
  const fetcher = opts.fetcher ?? httpCertificateFetcher(timeoutMs, maxBytes);
  const cache = new Map<string, { chain: X509Certificate[]; at: number }>();
  const inFlight = new Map<string, Promise<X509Certificate[]>>();

  async function load(url: string): Promise<X509Certificate[]> {
    const data = await fetcher(url);
    if (data.length === 0 || data.length > maxBytes) throw new Error(`certificate body of ${data.length} bytes`);
    const chain = parseCertificates(data);
    cache.delete(url);
    cache.set(url, { chain, at: Date.now() });
    while (cache.size > cacheSize) cache.delete(cache.keys().next().value!);
    return chain;
  }

  return {
    async get(url) {
      const hit = cache.get(url);
      if (hit && Date.now() - hit.at < ttlMs) return hit.chain;
      const pending = inFlight.get(url);
      if (pending) return pending;
      const p = load(url).finally(() => inFlight.delete(url));
      inFlight.set(url, p);
      return p;
    },
  };
}

// ---- The whole check ------------------------------------------------------------------------------------

export interface WebhookVerifierConfig {
  webhookId: string;
  urlPolicy: CertUrlPolicy;
  chainPolicy: ChainPolicy;
  certificates: CertificateSource;
  now: () => Date;
  maxAgeMs?: number;
  maxFutureMs?: number;
}

export type SignatureCheck = { ok: true; transmission: Transmission } | { ok: false; reason: string };

/** Steps 1–5 of the header comment. Never throws. */
export async function verifyWebhookSignature(input: Pick<NotificationInput, 'headers' | 'rawBody'>, cfg: WebhookVerifierConfig): Promise<SignatureCheck> {
  try {
    if (input.rawBody.length === 0) return { ok: false, reason: 'empty body' };
    if (input.rawBody.length > MAX_WEBHOOK_BODY_BYTES) return { ok: false, reason: `body larger than ${MAX_WEBHOOK_BODY_BYTES} bytes` };
    const read = readTransmission(input.headers);
    if (!read.ok) return read;
    const t = read.value;
    if (t.authAlgo !== PAYPAL_AUTH_ALGO) return { ok: false, reason: `unsupported auth algorithm ${t.authAlgo}` };
    const sentAt = parseTransmissionTime(t.transmissionTime);
    if (!sentAt) return { ok: false, reason: 'malformed transmission time' };
    const now = cfg.now();
    const ageMs = now.getTime() - sentAt.getTime();
    if (ageMs > (cfg.maxAgeMs ?? DEFAULT_MAX_AGE_MS)) return { ok: false, reason: `stale transmission (${Math.round(ageMs / 1000)} s old)` };
    if (-ageMs > (cfg.maxFutureMs ?? DEFAULT_MAX_FUTURE_MS)) return { ok: false, reason: 'transmission time in the future' };
    if (!/^[A-Za-z0-9+/]+={0,2}$/.test(t.transmissionSig)) return { ok: false, reason: 'malformed signature' };
    const url = checkCertUrl(t.certUrl, cfg.urlPolicy);
    if (!url.ok) return url;
    let chain: X509Certificate[];
    try {
      chain = await cfg.certificates.get(url.url);
    } catch (err) {
      return { ok: false, reason: `certificate unavailable: ${err instanceof Error ? err.message : String(err)}` };
    }
    const trusted = checkChain(chain, cfg.chainPolicy, now);
    if (!trusted.ok) return trusted;
    const signed = transmissionSigningInput(t, cfg.webhookId, input.rawBody);
    const good = createVerify('RSA-SHA256').update(signed, 'utf8').verify(chain[0]!.publicKey, t.transmissionSig, 'base64');
    return good ? { ok: true, transmission: t } : { ok: false, reason: 'invalid signature' };
  } catch (err) {
    return { ok: false, reason: `verification error: ${err instanceof Error ? err.message : String(err)}` };
  }
}

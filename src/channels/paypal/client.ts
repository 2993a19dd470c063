/**
 * PayPal REST over fetch (the official SDK has no base-URL option): OAuth2 client-credentials token
 * cached until shortly before `expires_in`, bounded timeouts, bounded retries of idempotent calls
 * (GET, and POSTs carrying PayPal-Request-Id) on transport errors, 429 and 5xx, one token refresh
 * on 401 invalid_token, bounded response size. Every HTTP exchange is audited, secrets redacted.
 */
import { randomInt } from 'node:crypto';
import { ChannelError } from '../types.ts';
import type { ChannelAuditEntry } from '../module.ts';
import { isObject, readError, redactSecrets } from './transformers.ts';

export interface PayPalClientConfig {
  /** e.g. https://api-m.paypal.com, https://api-m.sandbox.paypal.com, http://127.0.0.1:4000/sandbox/paypal */
  baseUrl: string;
  clientId: string;
  clientSecret: string;
  /** Per HTTP request. */
  timeoutMs?: number;
  /** Attempts per call, counting the first (retries only where safe). */
  maxAttempts?: number;
  /** First retry delay; doubles each time, with jitter. */
  retryBaseMs?: number;
  maxResponseBytes?: number;
  audit?: (entry: ChannelAuditEntry) => void;
}

export interface ApiRequest {
  operation: string;
  method: 'GET' | 'POST';
  path: string;
  body?: Record<string, unknown>;
  /** PayPal-Request-Id: makes a POST idempotent (and so retryable). */
  requestId?: string;
  prefer?: 'return=representation' | 'return=minimal';
  channelReference?: string;
}

export interface ApiResponse {
  status: number;
  body: unknown;
}

export interface PayPalClient {
  /** A response with any HTTP status (the caller decides what a 404 or 422 means); throws ChannelError on transport failure. */
  call(req: ApiRequest): Promise<ApiResponse>;
  /** Forget the cached token (tests, credential rotation). */
  resetToken(): void;
}

/** Refresh this long before PayPal's `expires_in` runs out (less for very short tokens). */
const TOKEN_MARGIN_MS = 5 * 60_000;
const MAX_RETRY_DELAY_MS = 5_000;

interface CachedToken {
  accessToken: string;
  expiresAtMs: number;
}

export function createPayPalClient(config: PayPalClientConfig): PayPalClient {
  const baseUrl = checkBaseUrl(config.baseUrl);
  if (!config.clientId || !config.clientSecret) throw new TypeError('PayPalClientConfig.clientId and clientSecret are required');
  const timeoutMs = config.timeoutMs ?? 10_000;
  const maxAttempts = Math.min(Math.max(config.maxAttempts ?? 3, 1), 5);
  const retryBaseMs = config.retryBaseMs ?? 200;
  const maxResponseBytes = config.maxResponseBytes ?? 1024 * 1024;
  const basic = 'Basic ' + Buffer.from(`${config.clientId}:${config.clientSecret}`, 'utf8').toString('base64');

  let token: CachedToken | null = null;
  let tokenRequest: Promise<CachedToken> | null = null;

  function audit(entry: ChannelAuditEntry): void {
    if (!config.audit) return;
    try {
      config.audit({ ...entry, request: redactSecrets(entry.request), response: redactSecrets(entry.response) });
    } catch {
      // An audit sink failure must never change the outcome of a payment call.
    }
  }

  interface Exchange { status: number; body: unknown; retryAfterMs: number | null }

  /** One HTTP exchange; transport failures throw ChannelError (retryable). */
  async function exchange(operation: string, url: string, init: { method: string; headers: Record<string, string>; body?: string }, channelReference?: string): Promise<Exchange> {
    const started = Date.now();
    const request = { method: init.method, url, headers: init.headers, body: init.body === undefined ? undefined : safeJson(init.body) };
    try {
      const res = await fetch(url, { ...init, redirect: 'error', signal: AbortSignal.timeout(timeoutMs) });
      const text = await readLimited(res, maxResponseBytes);
      const body = text === '' ? null : safeJson(text);
      audit({ operation, channelReference, request, response: { status: res.status, headers: { 'paypal-debug-id': res.headers.get('paypal-debug-id') }, body }, durationMs: Date.now() - started });
      const retryAfter = Number(res.headers.get('retry-after'));
      return { status: res.status, body, retryAfterMs: Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter * 1000 : null };
    } catch (err) {
      const e = toTransportError(err, timeoutMs);
      audit({ operation, channelReference, request, response: null, error: `${e.code}: ${e.message}`, durationMs: Date.now() - started });
      throw e;
    }
  }

  async function fetchToken(): Promise<CachedToken> {
    let last: ChannelError | null = null;
    for (let attempt = 1; attempt <= maxAttempts; attempt++) {
      if (attempt > 1) await sleep(backoff(attempt, retryBaseMs, last));
      try {
        const res = await exchange('oauth_token', `${baseUrl}/v1/oauth2/token`, {
          method: 'POST',
          headers: { authorization: basic, 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' },
          body: 'grant_type=client_credentials',
        });
        if (res.status === 200 && isObject(res.body) && typeof res.body['access_token'] === 'string' && res.body['access_token'] !== '') {
          const expiresInS = Number(res.body['expires_in']);
          if (!Number.isFinite(expiresInS) || expiresInS <= 0) throw new ChannelError('PayPal token without a valid expires_in', 'paypal', 'invalid_response', true);
          const margin = Math.min(TOKEN_MARGIN_MS, (expiresInS * 1000) / 2);
          return { accessToken: res.body['access_token'], expiresAtMs: Date.now() + expiresInS * 1000 - margin };
        }
        last = errorFromResponse('oauth token', res.status, res.body);
        if (!last.retryable) throw last;
      } catch (err) {
        if (!(err instanceof ChannelError) || !err.retryable) throw err;
        last = err;
      }
    }
    throw last ?? new ChannelError('PayPal token request failed', 'paypal', 'token_failed', true);
  }

  /** The cached token, or one new request shared by every caller waiting for it. */
  async function accessToken(): Promise<string> {
    if (token && Date.now() < token.expiresAtMs) return token.accessToken;
    tokenRequest ??= fetchToken()
      .then((t) => (token = t))
      .finally(() => (tokenRequest = null));
    return (await tokenRequest).accessToken;
  }

  async function call(req: ApiRequest): Promise<ApiResponse> {
    const idempotent = req.method === 'GET' || req.requestId !== undefined;
    let refreshed = false;
    let last: ChannelError | null = null;
    for (let attempt = 1; attempt <= maxAttempts; attempt++) {
      if (attempt > 1 && last) await sleep(backoff(attempt, retryBaseMs, last));
      const bearer = await accessToken();
      const headers: Record<string, string> = { authorization: `Bearer ${bearer}`, accept: 'application/json' };
      if (req.body !== undefined) headers['content-type'] = 'application/json';
      if (req.requestId !== undefined) headers['paypal-request-id'] = req.requestId;
      if (req.prefer !== undefined) headers['prefer'] = req.prefer;
      let res: Exchange;
      try {
        res = await exchange(req.operation, baseUrl + req.path, { method: req.method, headers, ...(req.body !== undefined ? { body: JSON.stringify(req.body) } : {}) }, req.channelReference);
      } catch (err) {
        if (!(err instanceof ChannelError) || !err.retryable || !idempotent) throw err;
        last = err;
        continue;
      }
      if (res.status === 401 && !refreshed) {
        // An expired or revoked token: get a new one once, without counting an attempt.
        refreshed = true;
        if (token?.accessToken === bearer) token = null;
        attempt--;
        last = null;
        continue;
      }
      if ((res.status === 429 || res.status >= 500) && idempotent && attempt < maxAttempts) {
        last = errorFromResponse(req.operation, res.status, res.body, res.retryAfterMs);
        continue;
      }
      return { status: res.status, body: res.body };
    }
    throw last ?? new ChannelError(`${req.operation} failed`, 'paypal', 'unexpected_error', true);
  }

  return {
    call,
    resetToken() {
      token = null;
    },
  };
}

/** A PayPal error answer as a ChannelError: 429/5xx retryable, 4xx not. */
export function errorFromResponse(what: string, status: number, body: unknown, retryAfterMs: number | null = null): ChannelError & { retryAfterMs?: number | null } {
  const info = readError(body);
  const code = info.issue ?? info.name ?? `http_${status}`;
  const retryable = status === 429 || status >= 500 || status === 409;
  const detail = [status, info.name, info.issue, info.message].filter(Boolean).join(' / ');
  const err = new ChannelError(`${what} failed: ${detail}`, 'paypal', code, retryable) as ChannelError & { retryAfterMs?: number | null };
  err.retryAfterMs = retryAfterMs;
  return err;
}

function toTransportError(err: unknown, timeoutMs: number): ChannelError {
  if (err instanceof ChannelError) return err;
  const e = err as Error & { cause?: { code?: string; message?: string } };
  if (e?.name === 'TimeoutError' || e?.name === 'AbortError') return new ChannelError(`PayPal did not answer within ${timeoutMs} ms`, 'paypal', 'timeout', true);
  const detail = e?.cause?.code ?? e?.cause?.message ?? e?.message ?? String(err);
  return new ChannelError(`PayPal unreachable: ${detail}`, 'paypal', 'transport_error', true);
}

function backoff(attempt: number, baseMs: number, last: (ChannelError & { retryAfterMs?: number | null }) | null): number {
  const exp = Math.min(baseMs * 2 ** (attempt - 2), MAX_RETRY_DELAY_MS);
  const jittered = Math.floor(exp / 2 + randomInt(Math.max(1, Math.floor(exp / 2) + 1)));
  return Math.min(Math.max(jittered, last?.retryAfterMs ?? 0), MAX_RETRY_DELAY_MS);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return text.slice(0, 2000);
  }
}

async function readLimited(res: Response, maxBytes: number): Promise<string> {
  if (!res.body) return '';
  const reader = res.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.length;
    if (total > maxBytes) {
      await reader.cancel().catch(() => {});
      throw new ChannelError(`PayPal response larger than ${maxBytes} bytes`, 'paypal', 'invalid_response', false);
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function checkBaseUrl(text: string): string {
  const url = new URL(text); // throws on a malformed base URL
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new TypeError(`PayPal base URL must be http(s): ${text}`);
  return url.toString().replace(/\/+$/, '');
}

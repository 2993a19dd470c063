/**
 * Credentials in both directions.
 *
 * Outbound (our calls to the Google Play Developer API, and the download of Play's earnings report
 * from the developer's Cloud Storage bucket): an OAuth 2.0 access token for a service account with
 * the androidpublisher and devstorage.read_only scopes. Against Google, `GoogleAuth` from the SDK's bundled
 * google-auth-library does the JWT-bearer grant itself (its token URL is fixed to
 * https://oauth2.googleapis.com/token). Against the sandbox, `serviceAccountTokenClient` makes the
 * same grant — an RS256 assertion signed with the service account's key, posted as
 * `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` — to the sandbox's token endpoint, and
 * hands the token to an OAuth2Client through its `refreshHandler`. The SDK's own `auth` export is
 * used for these clients because googleapis-common pins its own copy of google-auth-library and
 * only accepts clients of that copy.
 *
 * Inbound (Pub/Sub pushing a real-time developer notification): `Authorization: Bearer <OIDC ID
 * token>` signed by Google for the push subscription's service account. Verified with
 * google-auth-library's OAuth2Client: `verifyIdToken` against Google's published certificates,
 * or, in sandbox mode only, `verifySignedJwtWithCertsAsync` against the sandbox's own key. Then
 * the audience, the issuer and the service account's verified email must match.
 */
import { auth as sdkAuth, type androidpublisher_v3 } from '@googleapis/androidpublisher';
import { OAuth2Client } from 'google-auth-library';
import { ChannelError } from '../types.ts';
import { decodeJwt, loadPrivateKey, signJwtRs256 } from './sign.ts';

export const ANDROIDPUBLISHER_SCOPE = 'https://www.googleapis.com/auth/androidpublisher';
/** Reading Play's financial reports in the developer account's Cloud Storage bucket (downloadBill). */
export const DEVSTORAGE_READ_ONLY_SCOPE = 'https://www.googleapis.com/auth/devstorage.read_only';
/** The scopes the connector's access token carries: the Developer API and the reports bucket. */
export const GOOGLE_PLAY_SCOPES: readonly string[] = [ANDROIDPUBLISHER_SCOPE, DEVSTORAGE_READ_ONLY_SCOPE];
export const JWT_BEARER_GRANT = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
/** Issuers of Google-signed OIDC tokens (google-auth-library's defaults). */
export const GOOGLE_ISSUERS = ['accounts.google.com', 'https://accounts.google.com'];
/** Google's limit on a service account assertion's lifetime. */
export const MAX_ASSERTION_LIFETIME_S = 3600;

/** What the androidpublisher SDK accepts as `auth`. */
export type SdkAuth = NonNullable<androidpublisher_v3.Options['auth']>;

export interface ServiceAccountCredentials {
  client_email: string;
  private_key: string;
  private_key_id?: string;
  token_uri?: string;
}

/** Parse a service account JSON key (the file downloaded from Google Cloud). */
export function parseServiceAccountJson(json: string): ServiceAccountCredentials {
  let value: unknown;
  try {
    value = JSON.parse(json);
  } catch {
    throw new TypeError('the service account key is not JSON');
  }
  const v = value as Record<string, unknown>;
  if (!v || typeof v !== 'object' || v['type'] !== 'service_account') throw new TypeError('the service account key must have "type": "service_account"');
  if (typeof v['client_email'] !== 'string' || !v['client_email'].includes('@')) throw new TypeError('the service account key lacks client_email');
  if (typeof v['private_key'] !== 'string') throw new TypeError('the service account key lacks private_key');
  loadPrivateKey(v['private_key']);
  return {
    client_email: v['client_email'],
    private_key: v['private_key'],
    ...(typeof v['private_key_id'] === 'string' ? { private_key_id: v['private_key_id'] } : {}),
    ...(typeof v['token_uri'] === 'string' ? { token_uri: v['token_uri'] } : {}),
  };
}

/** Production: google-auth-library's service account flow with the androidpublisher and devstorage.read_only scopes. */
export function googleServiceAccountAuth(credentials: ServiceAccountCredentials): SdkAuth {
  return new sdkAuth.GoogleAuth({
    credentials: { client_email: credentials.client_email, private_key: credentials.private_key },
    scopes: [...GOOGLE_PLAY_SCOPES],
  });
}

export interface TokenClientOptions {
  clientEmail: string;
  privateKey: string;
  privateKeyId: string;
  /** The token endpoint: the sandbox's `/sandbox/google_play/token`. */
  tokenUrl: string;
  scope?: string;
  timeoutMs?: number;
  /** Reports each token request (assertion and token redacted). */
  onExchange?: (e: { request: unknown; response: unknown; error?: string; durationMs: number }) => void;
}

const MAX_TOKEN_RESPONSE_BYTES = 16 * 1024;

/**
 * An OAuth2Client whose access token comes from a JWT-bearer grant at `tokenUrl`. Refreshes
 * before expiry (the client's eager threshold) and once more after a 401/403 answer.
 */
export function serviceAccountTokenClient(opts: TokenClientOptions): SdkAuth {
  const privateKey = loadPrivateKey(opts.privateKey);
  const scope = opts.scope ?? GOOGLE_PLAY_SCOPES.join(' ');
  const timeoutMs = opts.timeoutMs ?? 10_000;
  new URL(opts.tokenUrl);
  const client = new sdkAuth.OAuth2({ forceRefreshOnFailure: true });
  let inFlight: Promise<{ access_token: string; expiry_date: number }> | null = null;

  async function exchange(): Promise<{ access_token: string; expiry_date: number }> {
    const iat = Math.floor(Date.now() / 1000);
    const assertion = signJwtRs256({ iss: opts.clientEmail, scope, aud: opts.tokenUrl, iat, exp: iat + MAX_ASSERTION_LIFETIME_S }, privateKey, opts.privateKeyId);
    const started = Date.now();
    const request = { url: opts.tokenUrl, grant_type: JWT_BEARER_GRANT, assertion: '[REDACTED]', iss: opts.clientEmail, scope };
    const report = (response: unknown, error?: string) => opts.onExchange?.({ request, response, durationMs: Date.now() - started, ...(error ? { error } : {}) });
    let res: Response;
    try {
      res = await fetch(opts.tokenUrl, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ grant_type: JWT_BEARER_GRANT, assertion }).toString(),
        signal: AbortSignal.timeout(timeoutMs),
        redirect: 'error',
      });
    } catch (err) {
      const message = `token endpoint unreachable: ${(err as Error).message}`;
      report(null, message);
      throw new ChannelError(message, 'google_play', 'transport_error', true);
    }
    const text = (await res.text()).slice(0, MAX_TOKEN_RESPONSE_BYTES);
    let body: Record<string, unknown> = {};
    try {
      body = JSON.parse(text) as Record<string, unknown>;
    } catch {
      // handled below
    }
    const token = body['access_token'];
    const expiresIn = body['expires_in'];
    if (!res.ok || typeof token !== 'string' || token === '' || typeof expiresIn !== 'number' || !(expiresIn > 0)) {
      const message = `token endpoint answered ${res.status}: ${String(body['error'] ?? 'no token')} ${String(body['error_description'] ?? '')}`.trim();
      report({ status: res.status, error: body['error'] ?? null, error_description: body['error_description'] ?? null }, message);
      throw new ChannelError(message, 'google_play', 'auth_failed', res.status >= 500 || res.status === 429);
    }
    report({ status: res.status, token_type: body['token_type'] ?? null, expires_in: expiresIn, access_token: '[REDACTED]' });
    return { access_token: token, expiry_date: Date.now() + expiresIn * 1000 };
  }

  client.refreshHandler = () => {
    inFlight ??= exchange().finally(() => {
      inFlight = null;
    });
    return inFlight;
  };
  return client;
}

// ---- Push authentication ----------------------------------------------------------------------

export interface PushAuthConfig {
  /** The audience configured on the push subscription (by default its endpoint URL). */
  audience: string;
  /** The service account the push subscription authenticates as. */
  serviceAccountEmail: string;
  /**
   * Sandbox mode only: the signing keys to trust, `{ kid: PEM }`, instead of Google's published
   * certificates. Never set this in production.
   */
  trustedKeys?: Readonly<Record<string, string>>;
}

export type PushAuthResult =
  | { ok: true; claims: { email: string; sub: string | null; aud: string } }
  | { ok: false; reason: string; retryable: boolean };

/** Build the verifier once: google-auth-library caches Google's certificates per client. */
export function createPushVerifier(config: PushAuthConfig): (token: string | null) => Promise<PushAuthResult> {
  if (!config.audience) throw new TypeError('push audience is required');
  if (!config.serviceAccountEmail?.includes('@')) throw new TypeError('push service account email is required');
  const client = new OAuth2Client();
  const trusted = config.trustedKeys ? { ...config.trustedKeys } : null;

  return async (token) => {
    if (!token) return fail('missing Authorization bearer token');
    const jwt = decodeJwt(token);
    if (!jwt) return fail('malformed bearer token');
    if (jwt.header['alg'] !== 'RS256') return fail(`unexpected token algorithm ${String(jwt.header['alg']).slice(0, 16)}`);
    if (typeof jwt.header['kid'] !== 'string') return fail('token without kid');
    let payload: Record<string, unknown> | undefined;
    try {
      const ticket = trusted
        ? await client.verifySignedJwtWithCertsAsync(token, trusted, config.audience, GOOGLE_ISSUERS)
        : await client.verifyIdToken({ idToken: token, audience: config.audience });
      payload = ticket.getPayload() as Record<string, unknown> | undefined;
    } catch (err) {
      return describeVerifyError(err);
    }
    if (!payload) return fail('token without payload');
    if (payload['email'] !== config.serviceAccountEmail) return fail(`token for another service account (${String(payload['email']).slice(0, 128)})`);
    if (payload['email_verified'] !== true) return fail('token email not verified');
    return { ok: true, claims: { email: config.serviceAccountEmail, sub: typeof payload['sub'] === 'string' ? payload['sub'] : null, aud: config.audience } };
  };
}

function fail(reason: string, retryable = false): PushAuthResult {
  return { ok: false, reason, retryable };
}

/** google-auth-library's messages quote the whole token: keep only what happened. */
function describeVerifyError(err: unknown): PushAuthResult {
  const message = err instanceof Error ? err.message : String(err);
  const known: Array<[RegExp, string]> = [
    [/^Wrong recipient/, 'wrong audience'],
    [/^Token used too late/, 'token expired'],
    [/^Token used too early/, 'token not yet valid'],
    [/^Invalid token signature/, 'invalid token signature'],
    [/^No pem found/, 'token signed by an unknown key'],
    [/^Invalid issuer/, 'wrong token issuer'],
    [/^Expiration time too far/, 'token lifetime too long'],
    [/^No (issue|expiration) time/, 'token without iat/exp'],
    [/field using invalid format/, 'token with malformed iat/exp'],
    [/^Wrong number of segments|^Can't parse token/, 'malformed bearer token'],
  ];
  for (const [pattern, reason] of known) if (pattern.test(message)) return fail(reason);
  // Anything else is fetching Google's certificates (network): worth a redelivery.
  return fail(`could not verify the token: ${message.replace(/[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]+/g, '[token]').slice(0, 200)}`, true);
}

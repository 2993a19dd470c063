/**
 * The official `AppStoreServerAPIClient`, pointed at a configurable base URL. The library keeps
 * `urlBase` private and offers no option, so this subclass overrides `makeFetchRequest` — the
 * same seam the library's own tests use. Everything else (the ES256 bearer token with kid, iss,
 * aud, bid; the paths; response validation; APIException) is the library's code.
 *
 * Added here: a request timeout and a bound on the response size.
 */
import { AppStoreServerAPIClient, Environment } from '@apple/app-store-server-library';

export const APPLE_API_PRODUCTION_URL = 'https://api.storekit.apple.com';
export const APPLE_API_SANDBOX_URL = 'https://api.storekit-sandbox.apple.com';

export interface ServerApiConfig {
  /** The .p8 key from App Store Connect (PKCS#8 PEM). */
  privateKeyPem: string;
  keyId: string;
  issuerId: string;
  bundleId: string;
  /** e.g. https://api.storekit.apple.com or http://127.0.0.1:4000/sandbox/apple_iap */
  baseUrl: string;
  /** Production or Sandbox: only changes the library's default URL, which baseUrl replaces. */
  environment: 'Production' | 'Sandbox';
  timeoutMs?: number;
  maxResponseBytes?: number;
}

type FetchResult = Awaited<ReturnType<typeof fetch>>;

export class AppStoreServerApi extends AppStoreServerAPIClient {
  readonly #baseUrl: string;
  readonly #timeoutMs: number;
  readonly #maxResponseBytes: number;

  constructor(config: ServerApiConfig) {
    super(...libraryArguments(config));
    this.#baseUrl = config.baseUrl.replace(/\/+$/, '');
    this.#timeoutMs = config.timeoutMs ?? 10_000;
    this.#maxResponseBytes = config.maxResponseBytes ?? 1024 * 1024;
  }

  protected override async makeFetchRequest(
    path: string,
    parsedQueryParameters: URLSearchParams,
    method: string,
    requestBody: string | Buffer | undefined,
    headers: { [key: string]: string },
  ): ReturnType<AppStoreServerAPIClient['makeFetchRequest']> {
    const query = parsedQueryParameters.toString();
    const res = await fetch(`${this.#baseUrl}${path}${query ? `?${query}` : ''}`, {
      method,
      headers,
      ...(requestBody !== undefined ? { body: requestBody } : {}),
      signal: AbortSignal.timeout(this.#timeoutMs),
      redirect: 'error',
    });
    const body = await readLimited(res, this.#maxResponseBytes);
    // The library reads only ok, status and json() from the response.
    const limited: FetchResult = new Response(body, { status: res.status, statusText: res.statusText, headers: res.headers });
    return limited as unknown as Awaited<ReturnType<AppStoreServerAPIClient['makeFetchRequest']>>;
  }
}

/** Validate the configuration and map it to the library constructor's arguments. */
function libraryArguments(config: ServerApiConfig): ConstructorParameters<typeof AppStoreServerAPIClient> {
  for (const key of ['privateKeyPem', 'keyId', 'issuerId', 'bundleId', 'baseUrl'] as const) {
    if (typeof config[key] !== 'string' || config[key].trim() === '') throw new TypeError(`ServerApiConfig.${key} is required`);
  }
  const url = new URL(config.baseUrl); // throws on a malformed base URL
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new TypeError('baseUrl must be http(s)');
  const environment = config.environment === 'Production' ? Environment.PRODUCTION : Environment.SANDBOX;
  return [config.privateKeyPem, config.keyId, config.issuerId, config.bundleId, environment];
}

async function readLimited(res: FetchResult, maxBytes: number): Promise<Buffer | null> {
  if (!res.body || res.status === 204) return null;
  const reader = res.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      total += value.length;
      if (total > maxBytes) throw new Error(`App Store Server API response larger than ${maxBytes} bytes`);
      chunks.push(value);
    }
  } finally {
    await reader.cancel().catch(() => {});
  }
  return Buffer.concat(chunks);
}

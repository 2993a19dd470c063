/**
 * Apple in-app purchase as a channel module.
 *
 * Real mode when APPLE_IAP_BUNDLE_ID is set:
 * - APPLE_IAP_BUNDLE_ID        the app's bundle id (also the connector's appId: every notification carries it)
 * - APPLE_IAP_ENVIRONMENT      `Production` (default) or `Sandbox` (Apple's own sandbox: TestFlight, sandbox testers)
 * - APPLE_IAP_APP_APPLE_ID     the app's numeric Apple ID; required in Production
 * - APPLE_IAP_ONLINE_CHECKS    `true` (default): OCSP revocation and certificate dates at "now";
 *                              `false`: no network, dates checked at the payload's signedDate
 * - APPLE_IAP_ISSUER_ID, APPLE_IAP_KEY_ID, APPLE_IAP_PRIVATE_KEY (the .p8 PEM; literal `\n` accepted)
 *                              optional App Store Server API key, for confirming and querying by
 *                              transaction id and for downloading the bill (Get Notification History)
 * - APPLE_IAP_API_BASE_URL     optional, defaults to Apple's host for the environment
 * Trusted roots: Apple Root CA - G3 and G2 (apple-roots.ts), nothing else.
 *
 * Otherwise the built-in sandbox at /sandbox/apple_iap, with its own certificate chain and API
 * key generated once (setting `sandbox.apple_iap.keys`); the connector then trusts the sandbox's
 * root only, with online checks off, and reaches the sandbox's Server API through the library.
 */
import type { ChannelModule } from '../module.ts';
import type { Pool } from '../../store/db.ts';
import { getOrCreateSetting } from '../../store/settings.ts';
import { appleRootCertificates } from './apple-roots.ts';
import { createAppleIapConnector, type ExpectedPurchase } from './connector.ts';
import { appleSandboxPlugin, generateAppleSandboxKeys, type AppleSandboxKeys } from './sandbox.ts';
import { APPLE_API_PRODUCTION_URL, APPLE_API_SANDBOX_URL } from './server-api.ts';
import { isAppStoreProductId } from './transformers.ts';

export const APPLE_SANDBOX_BUNDLE_ID = 'com.knowpay.sandbox';

/**
 * What a payment asked the app to buy: the `action.params` createPayment stored on our payment
 * (product_id, quantity). Read-only; the contract gives confirm and notify no item list, so the
 * connector looks it up to compare with Apple's transaction.
 */
export function expectedPurchaseFromPayments(pool: Pool): (channelReference: string) => Promise<ExpectedPurchase | null> {
  return async (channelReference) => {
    const { rows } = await pool.query<{ action: { type?: string; params?: Record<string, unknown> } | null }>(
      `SELECT action FROM payments WHERE channel = 'apple_iap' AND channel_reference = $1`,
      [channelReference],
    );
    const params = rows[0]?.action?.params;
    if (!params) return null;
    const productId = params['product_id'];
    const quantity = params['quantity'];
    if (!isAppStoreProductId(productId) || typeof quantity !== 'number') return null;
    return { productId, quantity };
  };
}

function parseBoolean(value: string | undefined, fallback: boolean, name: string): boolean {
  if (value === undefined || value === '') return fallback;
  if (/^(true|1|yes)$/i.test(value)) return true;
  if (/^(false|0|no)$/i.test(value)) return false;
  throw new TypeError(`${name} must be true or false, got ${value}`);
}

export const appleIapModule: ChannelModule = {
  channel: 'apple_iap',
  async create(deps) {
    const { env } = deps;
    const expectedPurchase = expectedPurchaseFromPayments(deps.pool);
    if (env.APPLE_IAP_BUNDLE_ID) {
      const environment = env.APPLE_IAP_ENVIRONMENT || 'Production';
      if (environment !== 'Production' && environment !== 'Sandbox') throw new TypeError(`APPLE_IAP_ENVIRONMENT must be Production or Sandbox, got ${environment}`);
      const appAppleId = env.APPLE_IAP_APP_APPLE_ID ? Number(env.APPLE_IAP_APP_APPLE_ID) : undefined;
      if (appAppleId !== undefined && !(Number.isSafeInteger(appAppleId) && appAppleId > 0)) throw new TypeError('APPLE_IAP_APP_APPLE_ID must be a positive integer');
      const hasApiKey = Boolean(env.APPLE_IAP_ISSUER_ID && env.APPLE_IAP_KEY_ID && env.APPLE_IAP_PRIVATE_KEY);
      return {
        connector: createAppleIapConnector({
          bundleId: env.APPLE_IAP_BUNDLE_ID,
          environment,
          ...(appAppleId !== undefined ? { appAppleId } : {}),
          rootCertificates: appleRootCertificates(),
          enableOnlineChecks: parseBoolean(env.APPLE_IAP_ONLINE_CHECKS, true, 'APPLE_IAP_ONLINE_CHECKS'),
          ...(hasApiKey
            ? {
                serverApi: {
                  privateKeyPem: env.APPLE_IAP_PRIVATE_KEY!.replace(/\\n/g, '\n'),
                  keyId: env.APPLE_IAP_KEY_ID!,
                  issuerId: env.APPLE_IAP_ISSUER_ID!,
                  baseUrl: env.APPLE_IAP_API_BASE_URL || (environment === 'Production' ? APPLE_API_PRODUCTION_URL : APPLE_API_SANDBOX_URL),
                },
              }
            : {}),
          expectedPurchase,
          audit: deps.audit,
        }),
      };
    }
    const { value: keys } = await getOrCreateSetting<AppleSandboxKeys>(deps.pool, 'sandbox.apple_iap.keys', () => generateAppleSandboxKeys());
    const sandboxBase = `${deps.publicBaseUrl}/sandbox/apple_iap`;
    return {
      connector: createAppleIapConnector({
        bundleId: APPLE_SANDBOX_BUNDLE_ID,
        environment: 'Sandbox',
        rootCertificates: [Buffer.from(keys.rootCertificate, 'base64')],
        enableOnlineChecks: false,
        serverApi: { privateKeyPem: keys.apiPrivateKey, keyId: keys.apiKeyId, issuerId: keys.apiIssuerId, baseUrl: sandboxBase },
        expectedPurchase,
        audit: deps.audit,
      }),
      async mountSandbox(app) {
        await app.register(appleSandboxPlugin, {
          prefix: '/sandbox/apple_iap', pool: deps.pool, bundleId: APPLE_SANDBOX_BUNDLE_ID, keys,
          notifyUrl: `${deps.publicBaseUrl}/v1/notify/apple_iap`, timeScale: deps.sandboxTimeScale,
        });
      },
    };
  },
};

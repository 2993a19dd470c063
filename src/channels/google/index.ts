/**
 * Google Play (one-time in-app products) as a channel module.
 *
 * Real credentials, from the environment (all four required together):
 * - GOOGLE_PLAY_PACKAGE_NAME            the app's package name (the appId of notifications)
 * - GOOGLE_PLAY_SERVICE_ACCOUNT_JSON    the service account's JSON key (its content), an account
 *                                       with access to the app in Play Console
 * - GOOGLE_PLAY_PUSH_AUDIENCE           the audience set on the Pub/Sub push subscription's
 *                                       authentication (by default its endpoint URL,
 *                                       e.g. https://pay.example.com/v1/notify/google_play)
 * - GOOGLE_PLAY_PUSH_SERVICE_ACCOUNT    the e-mail of the service account the push subscription
 *                                       authenticates as
 * Optional:
 * - GOOGLE_PLAY_PUSH_SUBSCRIPTION       projects/<p>/subscriptions/<s>: refuse pushes from others
 * - GOOGLE_PLAY_BINDING_SECRET          purchase binding secret (sign.ts); default derived from
 *                                       the service account's private key
 * - GOOGLE_PLAY_ACCEPT_TEST_PURCHASES   "true" to accept license-tester purchases (no money)
 * - GOOGLE_PLAY_REPORTS_BUCKET          pubsite_prod_rev_<developer id> (Play Console → Download
 *                                       reports → Copy Cloud Storage URI): enables downloadBill
 *                                       (the earnings report); unset, the connector has none
 * Otherwise the built-in sandbox at /sandbox/google_play, with keys generated once and stored; its
 * reporting bucket is sandboxReportsBucket(package name), served by the sandbox's Cloud Storage.
 */
import type { ChannelModule } from '../module.ts';
import { getOrCreateSetting } from '../../store/settings.ts';
import { googleServiceAccountAuth, parseServiceAccountJson, serviceAccountTokenClient } from './auth.ts';
import { createGooglePlayConnector } from './connector.ts';
import { deriveBindingSecret } from './sign.ts';
import { generateGooglePlaySandboxKeys, googlePlaySandboxPlugin, type GooglePlaySandboxKeys } from './sandbox.ts';
import { sandboxReportsBucket } from './sandbox-reports.ts';

export const GOOGLE_PLAY_SANDBOX_PACKAGE = 'com.knowpay.sandbox';
export const GOOGLE_PLAY_SANDBOX_SERVICE_ACCOUNT = 'knowpay-api@knowpay-sandbox.iam.gserviceaccount.com';
export const GOOGLE_PLAY_SANDBOX_PUSH_ACCOUNT = 'play-rtdn-push@knowpay-sandbox.iam.gserviceaccount.com';
export const GOOGLE_PLAY_SANDBOX_SUBSCRIPTION = 'projects/knowpay-sandbox/subscriptions/play-rtdn-push';
const PREFIX = '/sandbox/google_play';

export const googlePlayModule: ChannelModule = {
  channel: 'google_play',
  async create(deps) {
    const { env } = deps;
    if (env.GOOGLE_PLAY_PACKAGE_NAME && env.GOOGLE_PLAY_SERVICE_ACCOUNT_JSON && env.GOOGLE_PLAY_PUSH_AUDIENCE && env.GOOGLE_PLAY_PUSH_SERVICE_ACCOUNT) {
      const credentials = parseServiceAccountJson(env.GOOGLE_PLAY_SERVICE_ACCOUNT_JSON);
      return {
        connector: createGooglePlayConnector({
          packageName: env.GOOGLE_PLAY_PACKAGE_NAME,
          auth: googleServiceAccountAuth(credentials),
          bindingSecret: env.GOOGLE_PLAY_BINDING_SECRET || deriveBindingSecret(credentials.private_key),
          push: {
            audience: env.GOOGLE_PLAY_PUSH_AUDIENCE,
            serviceAccountEmail: env.GOOGLE_PLAY_PUSH_SERVICE_ACCOUNT,
            ...(env.GOOGLE_PLAY_PUSH_SUBSCRIPTION ? { subscription: env.GOOGLE_PLAY_PUSH_SUBSCRIPTION } : {}),
          },
          acceptTestPurchases: env.GOOGLE_PLAY_ACCEPT_TEST_PURCHASES === 'true',
          ...(env.GOOGLE_PLAY_REPORTS_BUCKET ? { reportsBucket: env.GOOGLE_PLAY_REPORTS_BUCKET } : {}),
          audit: deps.audit,
        }),
      };
    }

    const { value: keys } = await getOrCreateSetting<GooglePlaySandboxKeys>(deps.pool, 'sandbox.google_play.keys', () => generateGooglePlaySandboxKeys());
    const base = deps.publicBaseUrl.replace(/\/+$/, '');
    const pushEndpoint = `${base}/v1/notify/google_play`;
    const reportsBucket = sandboxReportsBucket(GOOGLE_PLAY_SANDBOX_PACKAGE);
    return {
      connector: createGooglePlayConnector({
        packageName: GOOGLE_PLAY_SANDBOX_PACKAGE,
        auth: serviceAccountTokenClient({
          clientEmail: GOOGLE_PLAY_SANDBOX_SERVICE_ACCOUNT,
          privateKey: keys.serviceAccountPrivateKey,
          privateKeyId: keys.serviceAccountKeyId,
          tokenUrl: `${base}${PREFIX}/token`,
          onExchange: (e) => deps.audit({ operation: 'oauth_token', ...e }),
        }),
        rootUrl: `${base}${PREFIX}/`,
        reportsBucket,
        storageRootUrl: `${base}${PREFIX}/`,
        bindingSecret: keys.bindingSecret,
        push: {
          audience: pushEndpoint,
          serviceAccountEmail: GOOGLE_PLAY_SANDBOX_PUSH_ACCOUNT,
          subscription: GOOGLE_PLAY_SANDBOX_SUBSCRIPTION,
          // Sandbox mode only: trust the sandbox's own signing key instead of Google's certificates.
          trustedKeys: { [keys.googleKeyId]: keys.googlePublicKey },
        },
        acceptTestPurchases: true,
        audit: deps.audit,
      }),
      async mountSandbox(app) {
        await app.register(googlePlaySandboxPlugin, {
          prefix: PREFIX,
          pool: deps.pool,
          packageName: GOOGLE_PLAY_SANDBOX_PACKAGE,
          serviceAccount: { clientEmail: GOOGLE_PLAY_SANDBOX_SERVICE_ACCOUNT, publicKey: keys.serviceAccountPublicKey, privateKeyId: keys.serviceAccountKeyId },
          googleSigningKey: { privateKey: keys.googlePrivateKey, kid: keys.googleKeyId },
          push: {
            endpoint: pushEndpoint,
            audience: pushEndpoint,
            serviceAccountEmail: GOOGLE_PLAY_SANDBOX_PUSH_ACCOUNT,
            serviceAccountId: keys.pushServiceAccountId,
            subscription: GOOGLE_PLAY_SANDBOX_SUBSCRIPTION,
          },
          publicBaseUrl: base,
          timeScale: deps.sandboxTimeScale,
          reportsBucket,
        });
      },
    };
  },
};

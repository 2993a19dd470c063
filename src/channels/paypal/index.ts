/**
 * PayPal as a channel module (REST Orders v2 over fetch).
 *
 * Real PayPal when PAYPAL_CLIENT_ID, PAYPAL_CLIENT_SECRET and PAYPAL_WEBHOOK_ID are all set:
 * - PAYPAL_ENV            `live` (default, https://api-m.paypal.com) or `sandbox` (https://api-m.sandbox.paypal.com)
 * - PAYPAL_API_BASE       overrides the REST base URL
 * - PAYPAL_MERCHANT_ID    optional: our merchant id; resources naming another payee are refused
 * - PAYPAL_RETURN_URL     optional: where the buyer returns when a payment has no return_url (default: public base URL)
 * - PAYPAL_BRAND_NAME     optional: shown on PayPal's approval page
 * - PAYPAL_WEBHOOK_CA_PEM optional: extra trust anchors (PEM) for webhook certificates, e.g. the issuing
 *                         intermediate if PayPal's certificate URL serves the leaf alone; Node's root store is always used
 * Otherwise the built-in sandbox at /sandbox/paypal, with credentials, webhook id, merchant and a
 * certificate chain generated once and stored (setting `sandbox.paypal.keys`).
 */
import { X509Certificate } from 'node:crypto';
import type { ChannelModule } from '../module.ts';
import { getOrCreateSetting } from '../../store/settings.ts';
import { createPayPalConnector } from './connector.ts';
import { pgOrderRefStore } from './order-refs.ts';
import { pgRefundRefStore } from './refund-refs.ts';
import { paypalSandboxPlugin } from './sandbox.ts';
import { SANDBOX_CERT_SUBJECT, generatePayPalSandboxKeys } from './sandbox-keys.ts';
import { parseCertificates, systemTrustAnchors } from './webhook.ts';

const API_BASES = { live: 'https://api-m.paypal.com', sandbox: 'https://api-m.sandbox.paypal.com' } as const;

export const paypalModule: ChannelModule = {
  channel: 'paypal',
  async create(deps) {
    const { env } = deps;
    const store = pgOrderRefStore(deps.pool);
    const refunds = pgRefundRefStore(deps.pool);
    if (env.PAYPAL_CLIENT_ID && env.PAYPAL_CLIENT_SECRET && env.PAYPAL_WEBHOOK_ID) {
      const mode = env.PAYPAL_ENV === 'sandbox' ? 'sandbox' : 'live';
      const extraAnchors = env.PAYPAL_WEBHOOK_CA_PEM ? parseCertificates(env.PAYPAL_WEBHOOK_CA_PEM) : [];
      return {
        connector: createPayPalConnector({
          baseUrl: env.PAYPAL_API_BASE || API_BASES[mode],
          clientId: env.PAYPAL_CLIENT_ID,
          clientSecret: env.PAYPAL_CLIENT_SECRET,
          webhookId: env.PAYPAL_WEBHOOK_ID,
          ...(env.PAYPAL_MERCHANT_ID ? { merchantId: env.PAYPAL_MERCHANT_ID } : {}),
          ...(env.PAYPAL_BRAND_NAME ? { brandName: env.PAYPAL_BRAND_NAME } : {}),
          defaultReturnUrl: env.PAYPAL_RETURN_URL || `${deps.publicBaseUrl}/`,
          store,
          refunds,
          trustAnchors: [...systemTrustAnchors(), ...extraAnchors],
          audit: deps.audit,
        }),
      };
    }
    const { value: keys } = await getOrCreateSetting(deps.pool, 'sandbox.paypal.keys', () => generatePayPalSandboxKeys());
    const apiBase = `${deps.publicBaseUrl}/sandbox/paypal`;
    return {
      connector: createPayPalConnector({
        baseUrl: apiBase,
        clientId: keys.clientId,
        clientSecret: keys.clientSecret,
        webhookId: keys.webhookId,
        merchantId: keys.merchantId,
        defaultReturnUrl: `${deps.publicBaseUrl}/`,
        store,
        refunds,
        trustAnchors: [new X509Certificate(keys.caCertPem)],
        certSubjects: [SANDBOX_CERT_SUBJECT],
        sandboxCertPrefix: `${apiBase}/v1/notifications/certs/`,
        audit: deps.audit,
      }),
      async mountSandbox(app) {
        await app.register(paypalSandboxPlugin, {
          prefix: '/sandbox/paypal', pool: deps.pool, ...keys,
          publicBaseUrl: deps.publicBaseUrl, webhookUrl: `${deps.publicBaseUrl}/v1/notify/paypal`, timeScale: deps.sandboxTimeScale,
        });
      },
    };
  },
};

/**
 * Stripe as a channel module.
 *
 * Real credentials (all from the environment):
 * - STRIPE_SECRET_KEY      sk_live_… / sk_test_… / rk_… (required)
 * - STRIPE_WEBHOOK_SECRET  whsec_… of the endpoint pointed at `${publicBaseUrl}/v1/notify/stripe` (required)
 * - STRIPE_ACCOUNT_ID      acct_… (optional: compared with the `account` of Connect events)
 * - STRIPE_API_BASE        (optional, default https://api.stripe.com; e.g. a stripe-mock or proxy)
 * The endpoint must be subscribed to payment_intent.succeeded, payment_intent.payment_failed,
 * payment_intent.canceled, refund.created, refund.updated and refund.failed (KNOWPAY_ENABLED_EVENTS).
 * Without both required variables: the built-in sandbox at /sandbox/stripe, with keys generated
 * once and stored (setting `sandbox.stripe.keys`), and a webhook endpoint for /v1/notify/stripe.
 * - STRIPE_SANDBOX_REFUND_SETTLE_MS  (sandbox only, optional) real-time ms (× the sandbox time
 *   scale) before a pending refund finishes by itself; default 30000; `off` = only through
 *   POST /sandbox/stripe/refunds/simulate.
 */
import type { ChannelModule } from '../module.ts';
import { getOrCreateSetting } from '../../store/settings.ts';
import { createStripeConnector, STRIPE_DEFAULT_API_BASE } from './connector.ts';
import { KNOWPAY_ENABLED_EVENTS, STRIPE_REFUND_SETTLE_MS, generateStripeSandboxKeys, stripeSandboxPlugin } from './sandbox.ts';

export const STRIPE_SANDBOX_PREFIX = '/sandbox/stripe';

export const stripeModule: ChannelModule = {
  channel: 'stripe',
  async create(deps) {
    const { env } = deps;
    if (env.STRIPE_SECRET_KEY && env.STRIPE_WEBHOOK_SECRET) {
      return {
        connector: createStripeConnector({
          secretKey: env.STRIPE_SECRET_KEY,
          webhookSecret: env.STRIPE_WEBHOOK_SECRET,
          accountId: env.STRIPE_ACCOUNT_ID || 'acct_unset',
          apiBase: env.STRIPE_API_BASE || STRIPE_DEFAULT_API_BASE,
          audit: deps.audit,
        }),
      };
    }
    const refundSettleMs = refundSettleFrom(env.STRIPE_SANDBOX_REFUND_SETTLE_MS);
    const { value: keys } = await getOrCreateSetting(deps.pool, 'sandbox.stripe.keys', () => generateStripeSandboxKeys());
    const base = deps.publicBaseUrl.replace(/\/+$/, '');
    return {
      connector: createStripeConnector({
        secretKey: keys.secretKey,
        webhookSecret: keys.webhookSecret,
        accountId: keys.accountId,
        apiBase: `${base}${STRIPE_SANDBOX_PREFIX}`,
        audit: deps.audit,
      }),
      async mountSandbox(app) {
        await app.register(stripeSandboxPlugin, {
          prefix: STRIPE_SANDBOX_PREFIX,
          pool: deps.pool,
          accountId: keys.accountId,
          secretKey: keys.secretKey,
          webhookEndpoints: [{ id: keys.webhookEndpointId, url: `${base}/v1/notify/stripe`, secret: keys.webhookSecret, enabledEvents: KNOWPAY_ENABLED_EVENTS }],
          timeScale: deps.sandboxTimeScale,
          refundSettleMs,
        });
      },
    };
  },
};

/** STRIPE_SANDBOX_REFUND_SETTLE_MS: unset → the default, `off` → never by itself, else whole milliseconds. */
function refundSettleFrom(value: string | undefined): number | null {
  if (value === undefined || value.trim() === '') return STRIPE_REFUND_SETTLE_MS;
  if (value.trim().toLowerCase() === 'off') return null;
  if (!/^\d{1,10}$/.test(value.trim())) throw new TypeError(`STRIPE_SANDBOX_REFUND_SETTLE_MS must be a number of milliseconds or off, got ${JSON.stringify(value)}`);
  return Number(value.trim());
}

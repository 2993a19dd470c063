/**
 * Alipay as a channel module: real credentials from ALIPAY_APP_ID / ALIPAY_PRIVATE_KEY /
 * ALIPAY_PUBLIC_KEY (/ ALIPAY_GATEWAY), else the built-in sandbox at /sandbox/alipay.
 */
import type { ChannelModule } from '../module.ts';
import { getOrCreateSetting } from '../../store/settings.ts';
import { createAlipayConnector } from './connector.ts';
import { alipaySandboxPlugin, generateAlipaySandboxKeys } from './sandbox.ts';

export const ALIPAY_SANDBOX_APP_ID = '2021000000000001';

export const alipayModule: ChannelModule = {
  channel: 'alipay',
  async create(deps) {
    const { env } = deps;
    if (env.ALIPAY_APP_ID && env.ALIPAY_PRIVATE_KEY && env.ALIPAY_PUBLIC_KEY) {
      return {
        connector: createAlipayConnector({
          appId: env.ALIPAY_APP_ID,
          privateKey: env.ALIPAY_PRIVATE_KEY,
          alipayPublicKey: env.ALIPAY_PUBLIC_KEY,
          gateway: env.ALIPAY_GATEWAY || 'https://openapi.alipay.com/gateway.do',
          audit: deps.audit,
        }),
      };
    }
    const { value: keys } = await getOrCreateSetting(deps.pool, 'sandbox.alipay.keys', () => generateAlipaySandboxKeys());
    return {
      connector: createAlipayConnector({
        appId: ALIPAY_SANDBOX_APP_ID,
        privateKey: keys.appPrivateKey,
        alipayPublicKey: keys.alipayPublicKey,
        gateway: `${deps.publicBaseUrl}/sandbox/alipay/gateway.do`,
        audit: deps.audit,
      }),
      async mountSandbox(app) {
        await app.register(alipaySandboxPlugin, {
          prefix: '/sandbox/alipay', pool: deps.pool, appId: ALIPAY_SANDBOX_APP_ID, appPublicKey: keys.appPublicKey,
          alipayPrivateKey: keys.alipayPrivateKey, publicBaseUrl: deps.publicBaseUrl, timeScale: deps.sandboxTimeScale,
        });
      },
    };
  },
};

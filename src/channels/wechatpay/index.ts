/**
 * WeChat Pay (API v3) as a channel module. Real credentials from the environment:
 *   WECHATPAY_MCHID            商户号 (digits)
 *   WECHATPAY_APPID            the AppID payments are made under
 *   WECHATPAY_JSAPI_APPID      optional: the mini program / official account AppID for jsapi
 *   WECHATPAY_APP_APPID        optional: the mobile app's AppID for app payments
 *   WECHATPAY_MERCHANT_SERIAL  merchant API certificate serial number
 *   WECHATPAY_PRIVATE_KEY      merchant API private key (apiclient_key.pem, PEM)
 *   WECHATPAY_PLATFORM_KEY_ID  PUB_KEY_ID_… (WeChat Pay public key mode) or a platform certificate serial
 *   WECHATPAY_PLATFORM_KEY     the matching WeChat Pay public key or platform certificate (PEM)
 *   WECHATPAY_PLATFORM_KEYS    optional JSON {"<id>": "<PEM>", …} for more keys (rotation)
 *   WECHATPAY_APIV3_KEY        APIv3 key (32 characters)
 *   WECHATPAY_BASE_URL         optional, default https://api.mch.weixin.qq.com/
 * Without them: the built-in sandbox at /sandbox/wechatpay, keys generated once and stored.
 *   WECHATPAY_SANDBOX_REFUND_SETTLE_MS  optional: how long the sandbox takes to finish a refund by
 *                              itself, in real ms before the sandbox time scale (default 60000);
 *                              `never` keeps refunds PROCESSING until /sandbox/wechatpay/refunds/simulate.
 */
import type { ChannelModule } from '../module.ts';
import { getOrCreateSetting } from '../../store/settings.ts';
import { createWechatpayConnector } from './connector.ts';
import { generateWechatpaySandboxKeys, wechatpaySandboxPlugin } from './sandbox.ts';

export const WECHATPAY_SANDBOX_MCHID = '1900000109';
export const WECHATPAY_SANDBOX_APPID = 'wx8888888888888888';

function platformKeysFromEnv(env: NodeJS.ProcessEnv): Record<string, string> | null {
  const keys: Record<string, string> = {};
  if (env.WECHATPAY_PLATFORM_KEYS) {
    const parsed: unknown = JSON.parse(env.WECHATPAY_PLATFORM_KEYS);
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new TypeError('WECHATPAY_PLATFORM_KEYS must be a JSON object');
    for (const [id, pem] of Object.entries(parsed)) {
      if (typeof pem !== 'string') throw new TypeError(`WECHATPAY_PLATFORM_KEYS.${id} must be a PEM string`);
      keys[id] = pem;
    }
  }
  if (env.WECHATPAY_PLATFORM_KEY_ID && env.WECHATPAY_PLATFORM_KEY) keys[env.WECHATPAY_PLATFORM_KEY_ID] = env.WECHATPAY_PLATFORM_KEY;
  return Object.keys(keys).length > 0 ? keys : null;
}

/** WECHATPAY_SANDBOX_REFUND_SETTLE_MS → the sandbox's refundSettleMs (undefined: its default). */
export function refundSettleMsFromEnv(env: NodeJS.ProcessEnv): number | null | undefined {
  const raw = env.WECHATPAY_SANDBOX_REFUND_SETTLE_MS?.trim();
  if (raw === undefined || raw === '') return undefined;
  if (raw.toLowerCase() === 'never') return null;
  if (!/^\d{1,12}$/.test(raw)) throw new TypeError('WECHATPAY_SANDBOX_REFUND_SETTLE_MS must be a number of milliseconds or "never"');
  return Number(raw);
}

export const wechatpayModule: ChannelModule = {
  channel: 'wechatpay',
  async create(deps) {
    const { env } = deps;
    const platformKeys = platformKeysFromEnv(env);
    if (env.WECHATPAY_MCHID && env.WECHATPAY_APPID && env.WECHATPAY_MERCHANT_SERIAL && env.WECHATPAY_PRIVATE_KEY && env.WECHATPAY_APIV3_KEY && platformKeys) {
      return {
        connector: createWechatpayConnector({
          mchid: env.WECHATPAY_MCHID,
          appid: env.WECHATPAY_APPID,
          appids: {
            ...(env.WECHATPAY_JSAPI_APPID ? { jsapi: env.WECHATPAY_JSAPI_APPID } : {}),
            ...(env.WECHATPAY_APP_APPID ? { app: env.WECHATPAY_APP_APPID } : {}),
          },
          merchantSerial: env.WECHATPAY_MERCHANT_SERIAL,
          privateKey: env.WECHATPAY_PRIVATE_KEY,
          platformKeys,
          apiV3Key: env.WECHATPAY_APIV3_KEY,
          baseURL: env.WECHATPAY_BASE_URL || 'https://api.mch.weixin.qq.com/',
          audit: deps.audit,
        }),
      };
    }
    const refundSettleMs = refundSettleMsFromEnv(env);
    const { value: keys } = await getOrCreateSetting(deps.pool, 'sandbox.wechatpay.keys', () => generateWechatpaySandboxKeys());
    return {
      connector: createWechatpayConnector({
        mchid: WECHATPAY_SANDBOX_MCHID,
        appid: WECHATPAY_SANDBOX_APPID,
        merchantSerial: keys.merchantSerial,
        privateKey: keys.merchantPrivateKey,
        platformKeys: { [keys.platformPublicKeyId]: keys.platformPublicKey },
        apiV3Key: keys.apiV3Key,
        baseURL: `${deps.publicBaseUrl.replace(/\/+$/, '')}/sandbox/wechatpay/`,
        audit: deps.audit,
      }),
      async mountSandbox(app) {
        await app.register(wechatpaySandboxPlugin, {
          prefix: '/sandbox/wechatpay', pool: deps.pool, mchid: WECHATPAY_SANDBOX_MCHID, appids: [WECHATPAY_SANDBOX_APPID],
          merchantSerial: keys.merchantSerial, merchantPublicKey: keys.merchantPublicKey, platformPrivateKey: keys.platformPrivateKey,
          platformPublicKeyId: keys.platformPublicKeyId, apiV3Key: keys.apiV3Key, publicBaseUrl: deps.publicBaseUrl,
          timeScale: deps.sandboxTimeScale, ...(refundSettleMs !== undefined ? { refundSettleMs } : {}),
        });
      },
    };
  },
};

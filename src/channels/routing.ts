/**
 * Which channel methods an order may use, by client platform and currency, best first.
 * A pure table; only channels with a configured connector are offered.
 */
import type { ChannelName, ClientPlatform } from './types.ts';

export interface MethodOption { channel: ChannelName; method: string }

/** Per platform, in priority order (design.md step 3; App Store rules put Apple first on iOS). */
export const PLATFORM_METHODS: Readonly<Record<ClientPlatform, readonly MethodOption[]>> = {
  web: [
    { channel: 'alipay', method: 'page' }, { channel: 'alipay', method: 'qr' }, { channel: 'wechatpay', method: 'native' },
    { channel: 'stripe', method: 'card' }, { channel: 'paypal', method: 'paypal' }, { channel: 'wallet', method: 'wallet' },
  ],
  h5: [
    { channel: 'alipay', method: 'wap' }, { channel: 'wechatpay', method: 'h5' }, { channel: 'stripe', method: 'card' },
    { channel: 'paypal', method: 'paypal' }, { channel: 'wallet', method: 'wallet' },
  ],
  ios: [{ channel: 'apple_iap', method: 'in_app' }, { channel: 'wallet', method: 'wallet' }],
  android: [
    { channel: 'alipay', method: 'app' }, { channel: 'wechatpay', method: 'app' }, { channel: 'google_play', method: 'in_app' },
    { channel: 'wallet', method: 'wallet' },
  ],
  wechat_mini: [{ channel: 'wechatpay', method: 'jsapi' }, { channel: 'wallet', method: 'wallet' }],
};

/** Currencies each channel accepts (null = any currency we know). */
export const CHANNEL_CURRENCIES: Readonly<Record<ChannelName, readonly string[] | null>> = {
  alipay: ['CNY'],
  wechatpay: ['CNY'],
  stripe: null,
  paypal: ['USD', 'EUR', 'GBP', 'AUD', 'CAD', 'JPY', 'HKD', 'SGD', 'CHF', 'SEK', 'NOK', 'DKK', 'PLN', 'CZK', 'NZD', 'MXN', 'ILS', 'PHP', 'THB', 'TWD', 'HUF', 'BRL', 'MYR'],
  apple_iap: null,
  google_play: null,
  wallet: null,
};

export function paymentMethodsFor(
  platform: ClientPlatform,
  currency: string,
  available: ReadonlySet<ChannelName>,
): MethodOption[] {
  return PLATFORM_METHODS[platform].filter((m) => {
    if (!available.has(m.channel)) return false;
    const currencies = CHANNEL_CURRENCIES[m.channel];
    return currencies === null || currencies.includes(currency);
  });
}

/**
 * Default configured priority: App Store rules put Apple's in-app purchase first on iOS; the
 * wallet comes after the external channels; the rest compete on recent success rate.
 * KNOWPAY_CHANNEL_PRIORITY (JSON, e.g. {"wechatpay":90}) overrides entries.
 */
export const DEFAULT_PRIORITY: Readonly<Record<ChannelName, number>> = {
  apple_iap: 50, alipay: 100, wechatpay: 100, stripe: 100, paypal: 100, google_play: 100, wallet: 200,
};

export function loadPriority(raw = process.env.KNOWPAY_CHANNEL_PRIORITY): Record<ChannelName, number> {
  const out = { ...DEFAULT_PRIORITY };
  if (!raw) return out;
  for (const [k, v] of Object.entries(JSON.parse(raw) as Record<string, unknown>)) {
    if (!(k in out) || !Number.isInteger(v)) throw new Error(`KNOWPAY_CHANNEL_PRIORITY: '${k}' must be a channel with an integer priority`);
    out[k as ChannelName] = v as number;
  }
  return out;
}

export interface RankingInput {
  /** Configured priority per channel: lower comes first; absent = the platform table's order. */
  priority?: Partial<Record<ChannelName, number>>;
  /** Recent success rate per channel (0..1), null when unknown. */
  successRate: (channel: ChannelName) => number | null;
  /** Channels taken out because their recent calls fail. */
  unhealthy: ReadonlySet<ChannelName>;
}

/**
 * Best first: configured priority, then recent success rate (unknown counts as neither good nor
 * bad: 0.5), then the platform table's order. Unhealthy channels are left out, unless every
 * channel is unhealthy (then nothing is left out: a failing channel beats no channel).
 */
export function rankMethods(options: readonly MethodOption[], r: RankingInput): MethodOption[] {
  const healthy = options.filter((o) => !r.unhealthy.has(o.channel));
  const pool = healthy.length > 0 ? healthy : [...options];
  const index = new Map(options.map((o, i) => [o, i]));
  const prio = (o: MethodOption) => r.priority?.[o.channel] ?? 1000;
  const rate = (o: MethodOption) => r.successRate(o.channel) ?? 0.5;
  return pool.sort((a, b) => prio(a) - prio(b) || rate(b) - rate(a) || index.get(a)! - index.get(b)!);
}

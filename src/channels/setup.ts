/**
 * Builds every channel module's connector. A channel without real credentials runs against its
 * built-in sandbox, mounted under /sandbox/<channel>, with keys generated once and stored.
 */
import type { FastifyInstance } from 'fastify';
import type { Pool } from '../store/db.ts';
import type { ChannelConnector, ChannelName } from './types.ts';
import type { ChannelAuditEntry, ChannelModule } from './module.ts';
import { faultsPlugin } from './sandbox/faults.ts';

export { ALIPAY_SANDBOX_APP_ID as SANDBOX_APP_ID } from './alipay/index.ts';

/**
 * Every channel Knowpay speaks, loaded on demand (their SDKs are large: a process that needs one
 * channel loads one). The order is irrelevant (routing.ts decides priority).
 */
export const CHANNEL_MODULES: Readonly<Record<Exclude<ChannelName, 'wallet'>, () => Promise<ChannelModule>>> = {
  alipay: async () => (await import('./alipay/index.ts')).alipayModule,
  wechatpay: async () => (await import('./wechatpay/index.ts')).wechatpayModule,
  stripe: async () => (await import('./stripe/index.ts')).stripeModule,
  paypal: async () => (await import('./paypal/index.ts')).paypalModule,
  apple_iap: async () => (await import('./apple/index.ts')).appleIapModule,
  google_play: async () => (await import('./google/index.ts')).googlePlayModule,
};

export interface ChannelSetup {
  channels: Map<ChannelName, ChannelConnector>;
  /** Mounts the sandboxes of channels that run on one, and the shared fault injection. */
  mountSandboxes(app: FastifyInstance): Promise<void>;
  sandboxed: ChannelName[];
}

function auditTo(pool: Pool, channel: ChannelName) {
  return (e: ChannelAuditEntry) => {
    pool.query(
      `INSERT INTO channel_calls (channel, operation, channel_reference, request, response, error, duration_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
      [channel, e.operation, e.channelReference ?? null, JSON.stringify(e.request ?? null), JSON.stringify(e.response ?? null), e.error ?? null, Math.round(e.durationMs)],
    ).catch(() => {});
  };
}

export async function setupChannels(pool: Pool, opts: { publicBaseUrl: string; sandboxTimeScale: number; env?: NodeJS.ProcessEnv; only?: readonly ChannelName[] }): Promise<ChannelSetup> {
  const channels = new Map<ChannelName, ChannelConnector>();
  const mounts: ((app: FastifyInstance) => Promise<void>)[] = [];
  const sandboxed: ChannelName[] = [];
  for (const [name, load] of Object.entries(CHANNEL_MODULES)) {
    if (opts.only && !opts.only.includes(name as ChannelName)) continue;
    const module = await load();
    const instance = await module.create({
      pool, publicBaseUrl: opts.publicBaseUrl, sandboxTimeScale: opts.sandboxTimeScale,
      audit: auditTo(pool, module.channel), env: opts.env ?? process.env,
    });
    if (instance.connector.channel !== module.channel) throw new Error(`module ${module.channel} built a ${instance.connector.channel} connector`);
    channels.set(module.channel, instance.connector);
    if (instance.mountSandbox) {
      sandboxed.push(module.channel);
      mounts.push(instance.mountSandbox);
    }
  }
  return {
    channels,
    sandboxed,
    async mountSandboxes(app) {
      if (mounts.length === 0) return;
      await app.register(faultsPlugin, { pool });
      for (const mount of mounts) await mount(app);
    },
  };
}

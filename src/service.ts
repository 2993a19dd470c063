/**
 * Starting and stopping the whole service: database (embedded or DATABASE_URL), migrations, API
 * key, channels and their sandboxes, HTTP server, and (unless disabled) the background worker.
 */
import pino, { type Logger } from 'pino';
import type { FastifyInstance } from 'fastify';
import type { Runner } from 'graphile-worker';
import type { Config } from './config.ts';
import { createPool, migrate, type Pool } from './store/db.ts';
import { startEmbeddedPostgres, type EmbeddedServer } from './store/embedded.ts';
import { ensureApiKey } from './http/auth.ts';
import { buildApp, LOG_REDACT } from './http/app.ts';
import { setupChannels } from './channels/setup.ts';
import { loadPriority } from './channels/routing.ts';
import type { ChannelConnector, ChannelName } from './channels/types.ts';
import { startWorker } from './jobs/worker.ts';
import type { AppContext } from './http/context.ts';

export interface RunningService {
  url: string;
  app: FastifyInstance;
  pool: Pool;
  databaseUrl: string;
  generatedApiKey: string | null;
  /** The configured channel connectors (real or sandboxed), for the CLI and tests. */
  channels: ReadonlyMap<ChannelName, ChannelConnector>;
  close(): Promise<void>;
}

export function createLogger(level: string): Logger {
  return pino({ level, redact: { paths: LOG_REDACT, censor: '[redacted]' } });
}

export async function startService(config: Config, log: Logger = createLogger(config.logLevel)): Promise<RunningService> {
  let embedded: EmbeddedServer | null = null;
  let databaseUrl = config.databaseUrl;
  if (!databaseUrl) {
    const t0 = Date.now();
    embedded = await startEmbeddedPostgres({ dataDir: config.dataDir });
    databaseUrl = embedded.url;
    log.info({ data_dir: config.dataDir, ms: Date.now() - t0 }, 'embedded PostgreSQL started');
  }
  const pool = createPool(databaseUrl);
  let worker: Runner | null = null;
  let app: FastifyInstance | null = null;
  try {
    await migrate(databaseUrl);
    const { generated } = await ensureApiKey(pool, config.apiKey);
    const setup = await setupChannels(pool, config);
    const sync = { db: pool, channels: setup.channels, pollInitialDelayMs: config.pollInitialDelayMs, pollMaxDelayMs: config.pollMaxDelayMs, publicBaseUrl: config.publicBaseUrl };
    const ctx: AppContext = {
      db: pool,
      channels: setup.channels,
      payments: { db: pool, channels: setup.channels, publicBaseUrl: config.publicBaseUrl, pollInitialDelayMs: config.pollInitialDelayMs, priority: loadPriority() },
      sync,
      orderTtlMs: config.orderTtlMs,
    };
    app = await buildApp({
      ctx,
      loggerInstance: log,
      bodyLimitBytes: config.bodyLimitBytes,
      extra: (a) => setup.mountSandboxes(a),
    });
    await app.listen({ port: config.port, host: config.host });
    if (config.runWorker) worker = await startWorker({ pool, ctx: sync, log, concurrency: config.workerConcurrency });
    log.info({ url: config.publicBaseUrl, sandboxes: setup.sandboxed, worker: config.runWorker }, 'knowpay listening');
    const started = app;
    let closing: Promise<void> | null = null;
    return {
      url: config.publicBaseUrl,
      app: started,
      pool,
      databaseUrl,
      generatedApiKey: generated,
      channels: setup.channels,
      close() {
        closing ??= (async () => {
          await started.close(); // stop taking requests, finish in-flight ones
          if (worker) {
            await worker.stop();
            await worker.promise.catch(() => {}); // fully stopped: its LISTEN connection released
          }
          await pool.end();
          if (embedded) await embedded.stop();
        })();
        return closing;
      },
    };
  } catch (err) {
    await app?.close().catch(() => {});
    await worker?.stop().catch(() => {});
    await pool.end().catch(() => {});
    await embedded?.stop().catch(() => {});
    throw err;
  }
}

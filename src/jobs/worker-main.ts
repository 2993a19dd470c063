/** `npm run worker`: a worker-only process (no HTTP), sharing the database with any others. */
import { loadConfig } from '../config.ts';
import { createLogger } from '../service.ts';
import { createPool, migrate } from '../store/db.ts';
import { setupChannels } from '../channels/setup.ts';
import { startWorker } from './worker.ts';

const config = loadConfig();
const log = createLogger(config.logLevel);
if (!config.databaseUrl) {
  log.fatal('a worker process needs DATABASE_URL (the database the API uses)');
  process.exit(1);
}
await migrate(config.databaseUrl);
const pool = createPool(config.databaseUrl);
const setup = await setupChannels(pool, config);
const runner = await startWorker({
  pool,
  ctx: { db: pool, channels: setup.channels, pollInitialDelayMs: config.pollInitialDelayMs, pollMaxDelayMs: config.pollMaxDelayMs, publicBaseUrl: config.publicBaseUrl },
  log,
  concurrency: config.workerConcurrency,
  pollIntervalMs: Number(process.env.KNOWPAY_WORKER_POLL_MS ?? 1000),
});
log.info({ pid: process.pid }, 'worker started');
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.on(signal, () => {
    runner.stop().then(() => pool.end()).then(() => process.exit(0), () => process.exit(1));
  });
}

/** Configuration from the environment, read once at start. Secrets are never logged. */
import path from 'node:path';

export interface Config {
  port: number;
  host: string;
  databaseUrl: string | undefined;
  dataDir: string;
  apiKey: string | undefined;
  /** Public base URL the channels use to reach us (notify URLs, sandbox links). */
  publicBaseUrl: string;
  orderTtlMs: number;
  /** First active query of a pending payment, then backoff doubling up to pollMaxDelayMs. */
  pollInitialDelayMs: number;
  pollMaxDelayMs: number;
  /** Multiplier on the sandboxes' notification retry schedules (1 = the channel's real timing). */
  sandboxTimeScale: number;
  runWorker: boolean;
  workerConcurrency: number;
  bodyLimitBytes: number;
  logLevel: string;
}

function int(name: string, fallback: number, min: number, max: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`${name} must be an integer in [${min}, ${max}]`);
  return n;
}

function num(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`${name} must be a positive number`);
  return n;
}

export function loadConfig(env = process.env): Config {
  const port = int('PORT', 4000, 0, 65535);
  const host = env.HOST || '127.0.0.1';
  return {
    port,
    host,
    databaseUrl: env.DATABASE_URL || undefined,
    dataDir: path.resolve(env.KNOWPAY_DATA_DIR || './.knowpay'),
    apiKey: env.KNOWPAY_API_KEY || undefined,
    publicBaseUrl: (env.KNOWPAY_PUBLIC_URL || `http://${host}:${port}`).replace(/\/$/, ''),
    orderTtlMs: int('KNOWPAY_ORDER_TTL_SECONDS', 1800, 10, 7 * 86400) * 1000,
    pollInitialDelayMs: int('KNOWPAY_POLL_INITIAL_MS', 5000, 10, 3_600_000),
    pollMaxDelayMs: int('KNOWPAY_POLL_MAX_MS', 30_000, 10, 86_400_000),
    sandboxTimeScale: num('KNOWPAY_SANDBOX_TIME_SCALE', 1),
    runWorker: env.KNOWPAY_WORKER !== 'off',
    workerConcurrency: int('KNOWPAY_WORKER_CONCURRENCY', 10, 1, 100),
    bodyLimitBytes: int('KNOWPAY_BODY_LIMIT_BYTES', 1_048_576, 1024, 64 * 1_048_576),
    logLevel: env.LOG_LEVEL || 'info',
  };
}

/**
 * An in-process Knowpay on a fresh database and a free port, plus a small HTTP client.
 */
import { randomBytes } from 'node:crypto';
import pino from 'pino';
import { startService, type RunningService } from '../../src/service.ts';
import type { Config } from '../../src/config.ts';
import { freshDatabase, type TestDatabase } from './db.ts';
import { freePort } from '../../src/store/embedded.ts';

export { freePort };

export interface ApiResponse<T = any> { status: number; body: T; headers: Headers; text: string }

export interface TestService {
  svc: RunningService;
  db: TestDatabase;
  config: Config;
  apiKey: string;
  url: string;
  api<T = any>(method: string, path: string, body?: unknown, headers?: Record<string, string>): Promise<ApiResponse<T>>;
  raw(method: string, path: string, body: string | Buffer | undefined, headers?: Record<string, string>): Promise<ApiResponse>;
  stop(): Promise<void>;
}

export async function testConfig(databaseUrl: string, overrides: Partial<Config> = {}): Promise<Config> {
  const port = overrides.port ?? (await freePort());
  return {
    port,
    host: '127.0.0.1',
    databaseUrl,
    dataDir: '/nonexistent',
    apiKey: 'sk_test_' + randomBytes(12).toString('hex'),
    publicBaseUrl: `http://127.0.0.1:${port}`,
    orderTtlMs: 30 * 60_000,
    pollInitialDelayMs: 60_000,
    pollMaxDelayMs: 60_000,
    sandboxTimeScale: 0.0005,
    runWorker: true,
    workerConcurrency: 5,
    bodyLimitBytes: 1_048_576,
    logLevel: 'silent',
    ...overrides,
  };
}

export async function startTestService(overrides: Partial<Config> = {}): Promise<TestService> {
  const db = await freshDatabase();
  const config = await testConfig(db.url, overrides);
  const svc = await startService(config, pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' }));
  const apiKey = config.apiKey!;
  const raw = async (method: string, path: string, body: string | Buffer | undefined, headers: Record<string, string> = {}) => {
    const res = await fetch(config.publicBaseUrl + path, { method, body, headers });
    const text = await res.text();
    let parsed: unknown = text;
    try { parsed = JSON.parse(text); } catch { /* not JSON */ }
    return { status: res.status, body: parsed as any, headers: res.headers, text };
  };
  return {
    svc, db, config, apiKey, url: config.publicBaseUrl, raw,
    api(method, path, body, headers = {}) {
      const h: Record<string, string> = { authorization: `Bearer ${apiKey}`, ...headers };
      if (body !== undefined) h['content-type'] = 'application/json';
      return raw(method, path, body === undefined ? undefined : JSON.stringify(body), h);
    },
    async stop() {
      await svc.close();
      await db.drop();
    },
  };
}

/** Poll `fn` until it returns a truthy value or the time runs out. */
export async function eventually<T>(fn: () => Promise<T>, opts: { timeoutMs?: number; intervalMs?: number; what?: string } = {}): Promise<T> {
  const deadline = Date.now() + (opts.timeoutMs ?? 10_000);
  let last: T;
  do {
    last = await fn();
    if (last) return last;
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 50));
  } while (Date.now() < deadline);
  throw new Error(`timed out waiting for ${opts.what ?? 'condition'}`);
}

/** Creator + course priced ¥100 (10000 fen) + optional coupon: the walk-through's catalog. */
export async function seedCourse(t: TestService, opts: { unitAmount?: number; accessDays?: number; type?: string } = {}) {
  const creator = await t.api('POST', '/v1/creators', { name: 'Ada', revenue_share_bps: 7000 });
  const product = await t.api('POST', '/v1/products', {
    title: 'Course 课程', type: opts.type ?? 'course', creator_id: creator.body.id,
    prices: [{ currency: 'CNY', unit_amount: opts.unitAmount ?? 10000 }, { currency: 'USD', unit_amount: 1500 }],
    ...(opts.accessDays ? { access_days: opts.accessDays } : {}),
  });
  if (product.status !== 200) throw new Error('seed failed: ' + product.text);
  return { creator: creator.body, product: product.body };
}

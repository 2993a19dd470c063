/**
 * `npm run bench`: Knowpay's figures beside PostgreSQL's own (pgbench tpcb-like) measured in the
 * same run on the same server, reported as ratios because these machines are noisy.
 *   - order creation latency (p50/p99) and throughput over HTTP (autocannon, 16 connections)
 *   - paid orders per second end to end: order → payment → sandbox pays → signed notification →
 *     paid + access, many in flight
 * Uses DATABASE_URL when set, else an embedded PostgreSQL in a temporary directory.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import pino from 'pino';
import autocannon from 'autocannon';
import { startEmbeddedPostgres, type EmbeddedServer } from '../src/store/embedded.ts';
import { startService } from '../src/service.ts';
import { testConfig } from '../test/support/service.ts';
import { ledgerBench } from './ledger.ts';
import { reconciliationBench } from './reconciliation.ts';
import { DRIVERS, simulate } from '../test/support/drivers.ts';

const E2E_ORDERS = Number(process.env.BENCH_E2E_ORDERS ?? 400);
const E2E_CONCURRENCY = Number(process.env.BENCH_E2E_CONCURRENCY ?? 32);
const CREATE_SECONDS = Number(process.env.BENCH_CREATE_SECONDS ?? 10);
const PGBENCH_SECONDS = Number(process.env.BENCH_PGBENCH_SECONDS ?? 10);

const progress = (msg: string) => process.stderr.write(`[bench] ${msg}\n`);

function withDb(url: string, db: string) { const u = new URL(url); u.pathname = '/' + db; return u.toString(); }

async function recreateDb(adminUrl: string, name: string) {
  const c = new pg.Client({ connectionString: adminUrl });
  await c.connect();
  await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  await c.query(`CREATE DATABASE ${name}`);
  await c.end();
  return withDb(adminUrl, name);
}

const tpsOf = (out: string) => Number(/tps = ([\d.]+)/.exec(out)?.[1] ?? NaN);

/** One more pgbench tpcb-like c=16 measurement on an initialised database (for interleaved rounds). */
function pgbenchC16(url: string, seconds: number): number {
  return tpsOf(execFileSync('pgbench', ['-c', '16', '-j', '2', '-T', String(seconds), '-n', url], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }));
}

function pgbench(url: string): { c1: number; c16: number } {
  const run = (args: string[]) => execFileSync('pgbench', [...args, url], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  progress('pgbench -i -s 10');
  run(['-i', '-s', '10', '-q']);
  const tps = tpsOf;
  progress(`pgbench tpcb-like c=1 for ${PGBENCH_SECONDS}s`);
  const c1 = tps(run(['-c', '1', '-j', '1', '-T', String(PGBENCH_SECONDS)]));
  progress(`pgbench tpcb-like c=16 for ${PGBENCH_SECONDS}s`);
  const c16 = tps(run(['-c', '16', '-j', '2', '-T', String(PGBENCH_SECONDS)]));
  return { c1, c16 };
}

async function main() {
  let embedded: EmbeddedServer | null = null;
  let tmp: string | null = null;
  let adminUrl = process.env.DATABASE_URL;
  if (!adminUrl) {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'knowpay-bench-'));
    progress('starting embedded PostgreSQL');
    embedded = await startEmbeddedPostgres({ dataDir: tmp });
    adminUrl = embedded.url;
  }
  try {
    const pgbenchUrl = await recreateDb(adminUrl, 'kp_bench_pgbench');
    const ref = pgbench(pgbenchUrl);
    if (process.env.BENCH_ONLY === 'recon') {
      const recon = await reconciliationBench(await recreateDb(adminUrl, 'kp_bench_recon'), { lines: Number(process.env.BENCH_RECON_LINES ?? 1_000_000) });
      console.log(JSON.stringify({ pgbench_tpcb_like_tps: { c1: Math.round(ref.c1), c16: Math.round(ref.c16) }, reconciliation: recon }, null, 2));
      return;
    }
    if (process.env.BENCH_ONLY === 'ledger') {
      const ledger = await ledgerBench(await recreateDb(adminUrl, 'kp_bench_ledger'), (seconds) => {
        progress(`pgbench tpcb-like c=16 for ${seconds}s (interleaved)`);
        return pgbenchC16(pgbenchUrl, seconds);
      }, {
        seconds: Number(process.env.BENCH_LEDGER_SECONDS ?? 10),
        rounds: Number(process.env.BENCH_LEDGER_ROUNDS ?? 3),
        settlementOrders: Number(process.env.BENCH_SETTLEMENT_ORDERS ?? 1_000_000),
        settlementCreators: Number(process.env.BENCH_SETTLEMENT_CREATORS ?? 10_000),
      });
      console.log(JSON.stringify({ pgbench_tpcb_like_tps: { c1: Math.round(ref.c1), c16: Math.round(ref.c16) }, ledger }, null, 2));
      return;
    }
    const dbUrl = await recreateDb(adminUrl, 'kp_bench');
    const config = await testConfig(dbUrl, { sandboxTimeScale: 0.001, pollInitialDelayMs: 30_000, pollMaxDelayMs: 60_000, workerConcurrency: 4 });
    const svc = await startService(config, pino({ level: 'warn' }));
    const auth = { authorization: `Bearer ${config.apiKey}`, 'content-type': 'application/json' };
    const post = async (p: string, body: unknown) => {
      const r = await fetch(config.publicBaseUrl + p, { method: 'POST', headers: auth, body: JSON.stringify(body) });
      if (r.status !== 200) throw new Error(`${p}: ${r.status} ${await r.text()}`);
      return r.json() as Promise<any>;
    };
    try {
      const creator = await post('/v1/creators', { name: 'Bench', revenue_share_bps: 7000 });
      const product = await post('/v1/products', { title: 'Bench course', type: 'course', creator_id: creator.id, prices: [{ currency: 'CNY', unit_amount: 10000 }] });

      progress(`order creation: autocannon, 16 connections, ${CREATE_SECONDS}s`);
      const create = await autocannon({
        url: `${config.publicBaseUrl}/v1/orders`, method: 'POST', headers: auth, connections: 16, duration: CREATE_SECONDS,
        body: JSON.stringify({ customer_id: 'bench', currency: 'CNY', client_platform: 'web', items: [{ product_id: product.id }] }),
      });
      if (create.non2xx > 0) throw new Error(`order creation: ${create.non2xx} non-2xx answers`);

      progress(`end to end: ${E2E_ORDERS} paid orders, ${E2E_CONCURRENCY} in flight`);
      let next = 0;
      let done = 0;
      const t0 = performance.now();
      const one = async (i: number) => {
        const order = await post('/v1/orders', { customer_id: `e2e_${i}`, currency: 'CNY', client_platform: 'web', items: [{ product_id: product.id }] });
        const payment = await post(`/v1/orders/${order.id}/payments`, { channel: 'alipay', method: 'qr' });
        const sim = await fetch(`${config.publicBaseUrl}/sandbox/alipay/simulate`, {
          method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ channel_reference: payment.channel_reference, outcome: 'succeeded' }),
        });
        if (sim.status !== 200) throw new Error(`simulate: ${sim.status}`);
        for (let k = 0; k < 2000; k++) {
          const r = await fetch(`${config.publicBaseUrl}/v1/customers/e2e_${i}/access/${product.id}`, { headers: auth });
          if (((await r.json()) as any).has_access) return;
          await new Promise((r) => setTimeout(r, 10));
        }
        throw new Error(`order ${order.id} not paid in time`);
      };
      await Promise.all(Array.from({ length: E2E_CONCURRENCY }, async () => {
        while (next < E2E_ORDERS) {
          const i = next++;
          await one(i);
          if (++done % 100 === 0) progress(`  ${done}/${E2E_ORDERS} paid`);
        }
      }));
      const e2eSeconds = (performance.now() - t0) / 1000;
      const paidPerSecond = E2E_ORDERS / e2eSeconds;

      // Each channel and method end to end: order → payment → the buyer pays in the sandbox →
      // the channel's signed notification (or the app's proof) → paid + access.
      const PER_CHANNEL = Number(process.env.BENCH_CHANNEL_ORDERS ?? 100);
      const channelProduct = await post('/v1/products', {
        title: 'Bench course', type: 'course', creator_id: creator.id,
        store_product_ids: { apple_iap: 'com.knowpay.sandbox.bench', google_play: 'bench_course' },
        prices: [{ currency: 'CNY', unit_amount: 10000 }, { currency: 'USD', unit_amount: 1500 }, { currency: 'EUR', unit_amount: 1400 }, { currency: 'JPY', unit_amount: 2000 }],
      });
      const ids = { apple_iap: 'com.knowpay.sandbox.bench', google_play: 'bench_course' };
      const harness = { url: config.publicBaseUrl } as unknown as Parameters<(typeof DRIVERS)[number]['open']>[0];
      const perChannel: Record<string, { per_second: number; ratio_to_pgbench_c16: number }> = {};
      const seen = new Set<string>();
      for (const d of DRIVERS) {
        const key = `${d.channel}:${d.method}`;
        if (seen.has(key)) continue;
        seen.add(key);
        progress(`end to end ${key}: ${PER_CHANNEL} orders, 16 in flight`);
        let k = 0;
        const c0 = performance.now();
        await Promise.all(Array.from({ length: 16 }, async () => {
          while (k < PER_CHANNEL) {
            const i = k++;
            const customer = `ch_${d.channel}_${d.method}_${i}`;
            const order = await post('/v1/orders', { customer_id: customer, currency: d.currency, client_platform: d.platform, items: [{ product_id: channelProduct.id }] });
            const payment = await post(`/v1/orders/${order.id}/payments`, { channel: d.channel, method: d.method, ...(d.payer ? { payer: d.payer } : {}) });
            await d.open(harness, payment, ids);
            const sim = await simulate(harness, d, payment, ids);
            if (sim.status !== 200) throw new Error(`${key} simulate: ${sim.status} ${JSON.stringify(sim.body)}`);
            for (let w = 0; w < 3000; w++) {
              const r = await fetch(`${config.publicBaseUrl}/v1/customers/${customer}/access/${channelProduct.id}`, { headers: auth });
              if (((await r.json()) as any).has_access) break;
              if (w === 2999) throw new Error(`${key}: order ${order.id} not paid in time`);
              await new Promise((r) => setTimeout(r, 10));
            }
          }
        }));
        const rate = PER_CHANNEL / ((performance.now() - c0) / 1000);
        perChannel[key] = { per_second: +rate.toFixed(1), ratio_to_pgbench_c16: +(rate / ref.c16).toFixed(3) };
      }

      const report = {
        database: embedded ? 'embedded PostgreSQL (npm)' : 'DATABASE_URL',
        pgbench_tpcb_like_tps: { c1: Math.round(ref.c1), c16: Math.round(ref.c16) },
        order_create: {
          requests_per_second: Math.round(create.requests.average),
          latency_ms: { p50: create.latency.p50, p99: create.latency.p99 },
          ratio_to_pgbench_c16: +(create.requests.average / ref.c16).toFixed(3),
        },
        paid_orders_end_to_end: {
          orders: E2E_ORDERS, in_flight: E2E_CONCURRENCY, seconds: +e2eSeconds.toFixed(2),
          per_second: +paidPerSecond.toFixed(1), ratio_to_pgbench_c16: +(paidPerSecond / ref.c16).toFixed(3),
        },
        paid_orders_per_channel: perChannel,
      };
      await svc.close();
      const ledger = await ledgerBench(await recreateDb(adminUrl, 'kp_bench_ledger'), (seconds) => {
        progress(`pgbench tpcb-like c=16 for ${seconds}s (interleaved)`);
        return pgbenchC16(pgbenchUrl, seconds);
      }, {
        seconds: Number(process.env.BENCH_LEDGER_SECONDS ?? 10),
        rounds: Number(process.env.BENCH_LEDGER_ROUNDS ?? 3),
        settlementOrders: Number(process.env.BENCH_SETTLEMENT_ORDERS ?? 1_000_000),
        settlementCreators: Number(process.env.BENCH_SETTLEMENT_CREATORS ?? 10_000),
      });
      const reconciliation = await reconciliationBench(await recreateDb(adminUrl, 'kp_bench_recon'), { lines: Number(process.env.BENCH_RECON_LINES ?? 1_000_000) });
      console.log(JSON.stringify({ ...report, ledger, reconciliation }, null, 2));
    } finally {
      await svc.close();
    }
  } finally {
    if (embedded) await embedded.stop();
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  }
}

await main();

/**
 * Two worker processes against one database: every pending payment whose notification was lost
 * is completed exactly once by active query.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { eventually, seedCourse, startTestService, type TestService } from '../support/service.ts';

let t: TestService;
const workers: ChildProcess[] = [];

before(async () => {
  t = await startTestService({ runWorker: false, pollInitialDelayMs: 300, pollMaxDelayMs: 600 });
});
after(async () => {
  for (const w of workers) w.kill('SIGTERM');
  await Promise.all(workers.map((w) => new Promise((r) => (w.exitCode !== null ? r(null) : w.once('exit', r)))));
  await t.raw('DELETE', '/sandbox/faults', undefined);
  await t.stop();
});

function startWorkerProcess(): ChildProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/jobs/worker-main.ts'], {
    env: {
      ...process.env, DATABASE_URL: t.db.url, PORT: String(t.config.port), HOST: '127.0.0.1', LOG_LEVEL: 'warn',
      KNOWPAY_POLL_INITIAL_MS: '300', KNOWPAY_POLL_MAX_MS: '600', KNOWPAY_WORKER_POLL_MS: '100', KNOWPAY_WORKER_CONCURRENCY: '4',
    },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  workers.push(child);
  return child;
}

test('two workers complete each pending payment once', async () => {
  const { product } = await seedCourse(t);
  await t.raw('POST', '/sandbox/faults', JSON.stringify({ channel: 'alipay', drop_rate: 1 }), { 'content-type': 'application/json' });
  const N = 20;
  const payments = [];
  for (let i = 0; i < N; i++) {
    const o = (await t.api('POST', '/v1/orders', { customer_id: `w${i}`, currency: 'CNY', client_platform: 'web', items: [{ product_id: product.id }] })).body;
    const p = (await t.api('POST', `/v1/orders/${o.id}/payments`, { channel: 'alipay', method: 'qr' })).body;
    const sim = await t.raw('POST', '/sandbox/alipay/simulate', JSON.stringify({ channel_reference: p.channel_reference, outcome: 'succeeded' }), { 'content-type': 'application/json' });
    assert.equal(sim.status, 200, sim.text);
    payments.push(p);
  }
  startWorkerProcess();
  startWorkerProcess();
  await eventually(async () => {
    const { rows } = await t.svc.pool.query(`SELECT count(*) FROM orders WHERE status = 'paid'`);
    return Number(rows[0].count) === N;
  }, { what: 'all paid', timeoutMs: 60_000, intervalMs: 200 });
  const { rows } = await t.svc.pool.query(
    `SELECT payment_id, count(*) AS n FROM payment_transitions WHERE to_status = 'succeeded' GROUP BY payment_id`);
  assert.equal(rows.length, N);
  assert.ok(rows.every((r) => Number(r.n) === 1));
  const orders = await t.svc.pool.query(`SELECT order_id, count(*) AS n FROM order_transitions WHERE to_status = 'paid' GROUP BY order_id`);
  assert.ok(orders.rows.length === N && orders.rows.every((r) => Number(r.n) === 1));
  const grants = await t.svc.pool.query('SELECT count(*) FROM entitlement_grants');
  assert.equal(Number(grants.rows[0].count), N);
  assert.ok(workers.every((w) => w.exitCode === null), 'workers still running');
});

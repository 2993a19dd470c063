/**
 * The generic notification dispatcher and the faults, against a real PostgreSQL and a real HTTP
 * receiver: schedule, acknowledgement, bounded attempts, timeouts, two processes, every fault.
 */
import { after, before, beforeEach, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import Fastify from 'fastify';
import { freshDatabase, type TestDatabase } from '../../../test/support/db.ts';
import { createPool } from '../../store/db.ts';
import {
  createNotificationDispatcher, listSandboxNotificationAttempts, listSandboxNotifications, waitForSandboxNotifications,
  type NotificationChannelSpec, type NotificationDispatcher,
} from './dispatcher.ts';
import { clearFaults, faultsPlugin, readFaults, setFaults } from './faults.ts';

type Payload = { n: number; text: string };

interface Received { path: string; body: string; at: number }

/** A notify endpoint whose answer per request is programmable. */
class Receiver {
  received: Received[] = [];
  respond: (r: Received, index: number) => { status: number; body: string } | 'hang' = () => ({ status: 200, body: 'ok' });
  private server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const r = { path: req.url ?? '', body: Buffer.concat(chunks).toString('utf8'), at: Date.now() };
      this.received.push(r);
      const answer = this.respond(r, this.received.length - 1);
      if (answer === 'hang') return; // never answers: the dispatcher's timeout must fire
      res.writeHead(answer.status, { 'content-type': 'text/plain' }).end(answer.body);
    });
  });
  url = '';
  async start() {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }
  async stop() {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
  reset() {
    this.received = [];
    this.respond = () => ({ status: 200, body: 'ok' });
  }
}

/** A port nothing listens on. */
async function closedPort(): Promise<number> {
  const srv = http.createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const port = (srv.address() as AddressInfo).port;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

let db: TestDatabase;
const receiver = new Receiver();
const running: NotificationDispatcher<Payload>[] = [];

function spec(channel: string, scheduleMs: number[]): NotificationChannelSpec<Payload> {
  return {
    channel,
    scheduleMs,
    buildRequest: (payload, ctx) => ({
      url: ctx.url,
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ ...payload, event: ctx.eventId, attempt: ctx.attempt }),
    }),
    isAcknowledged: ({ status, body }) => status === 200 && body === 'ok',
  };
}

function dispatcher(channel: string, scheduleMs: number[], extra: Partial<Parameters<typeof createNotificationDispatcher<Payload>>[0]> = {}) {
  const d = createNotificationDispatcher<Payload>({ pool: db.pool, spec: spec(channel, scheduleMs), timeScale: 1, pollIntervalMs: 20, requestTimeoutMs: 2000, ...extra });
  running.push(d);
  return d;
}

async function enqueue(d: NotificationDispatcher<Payload>, ref: string, n: number) {
  return d.enqueue(db.pool, { channelReference: ref, eventId: `evt_${ref}_${n}`, url: `${receiver.url}/hook/${ref}`, payload: { n, text: `payload ${n}` } });
}

before(async () => {
  db = await freshDatabase();
  await receiver.start();
});
after(async () => {
  await Promise.all(running.map((d) => d.stop()));
  await receiver.stop();
  await db.drop();
});
beforeEach(async () => {
  await Promise.all(running.splice(0).map((d) => d.stop()));
  receiver.reset();
  await clearFaults(db.pool);
});

test('delivers at once and stops after the acknowledgement', async () => {
  const d = dispatcher('chan_a', [0, 50, 50]);
  d.start();
  await enqueue(d, 'r1', 1);
  d.kick();
  const [row] = await waitForSandboxNotifications(db.pool, { channel: 'chan_a', channelReference: 'r1', timeoutMs: 5000 });
  assert.equal(row!.status, 'delivered');
  assert.equal(row!.attempts, 1);
  assert.equal(receiver.received.length, 1);
  assert.deepEqual(JSON.parse(receiver.received[0]!.body), { n: 1, text: 'payload 1', event: 'evt_r1_1', attempt: 1 });
  await new Promise((r) => setTimeout(r, 150));
  assert.equal(receiver.received.length, 1, 'no attempt after the acknowledgement');
});

test('retries on the schedule until acknowledged; only the exact acknowledgement counts', async () => {
  const answers = [{ status: 200, body: 'ok ' }, { status: 500, body: 'ok' }, { status: 200, body: 'fail' }, { status: 200, body: 'ok' }];
  receiver.respond = (_r, i) => answers[i] ?? { status: 200, body: 'ok' };
  const d = dispatcher('chan_b', [0, 100, 200, 300, 400]);
  d.start();
  await enqueue(d, 'r2', 1);
  const [row] = await waitForSandboxNotifications(db.pool, { channel: 'chan_b', timeoutMs: 5000 });
  assert.equal(row!.status, 'delivered');
  assert.equal(row!.attempts, 4);
  const at = receiver.received.map((r) => r.at);
  const gaps = at.slice(1).map((t, i) => t - at[i]!);
  for (const [i, expected] of [100, 200, 300].entries()) {
    assert.ok(gaps[i]! >= expected - 5, `gap ${i} = ${gaps[i]} >= ${expected}`);
    assert.ok(gaps[i]! < expected + 400, `gap ${i} = ${gaps[i]} not far beyond ${expected}`);
  }
  const attempts = await listSandboxNotificationAttempts(db.pool, row!.id);
  assert.deepEqual(attempts.map((a) => a.acknowledged), [false, false, false, true]);
  assert.deepEqual(attempts.map((a) => a.statusCode), [200, 500, 200, 200]);
  assert.deepEqual(receiver.received.map((r) => JSON.parse(r.body).event), Array(4).fill('evt_r2_1'), 'same event id on every attempt');
});

test('gives up after the schedule is exhausted (bounded attempts)', async () => {
  receiver.respond = () => ({ status: 503, body: 'busy' });
  const d = dispatcher('chan_c', [0, 20, 20]);
  d.start();
  await enqueue(d, 'r3', 1);
  const [row] = await waitForSandboxNotifications(db.pool, { channel: 'chan_c', timeoutMs: 5000 });
  assert.equal(row!.status, 'failed');
  assert.equal(row!.attempts, 3);
  assert.equal(row!.lastStatusCode, 503);
  await new Promise((r) => setTimeout(r, 150));
  assert.equal(receiver.received.length, 3);
});

test('an unreachable or silent receiver counts as a failed attempt (per-request timeout)', async () => {
  receiver.respond = (_r, i) => (i === 0 ? 'hang' : { status: 200, body: 'ok' });
  const d = dispatcher('chan_d', [0, 10], { requestTimeoutMs: 200 });
  d.start();
  await enqueue(d, 'r4', 1);
  const [row] = await waitForSandboxNotifications(db.pool, { channel: 'chan_d', timeoutMs: 5000 });
  assert.equal(row!.status, 'delivered');
  const attempts = await listSandboxNotificationAttempts(db.pool, row!.id);
  assert.match(attempts[0]!.error ?? '', /timed out after 200 ms/);

  const d2 = dispatcher('chan_d2', [0]);
  d2.start();
  await d2.enqueue(db.pool, { channelReference: 'r4b', eventId: 'e', url: `http://127.0.0.1:${await closedPort()}/nothing`, payload: { n: 0, text: '' } });
  const [row2] = await waitForSandboxNotifications(db.pool, { channel: 'chan_d2', timeoutMs: 5000 });
  assert.equal(row2!.status, 'failed');
  assert.match(row2!.lastError ?? '', /ECONNREFUSED/);
});

test('two processes sharing the database never deliver one attempt twice', async () => {
  const slow = (_r: Received) => ({ status: 200, body: 'ok' });
  receiver.respond = slow;
  const otherPool = createPool(db.url, 5); // the second "process" has its own connections
  const a = dispatcher('chan_e', [0, 50], { batchSize: 3 });
  const b = dispatcher('chan_e', [0, 50], { batchSize: 3, pool: otherPool });
  const total = 40;
  for (let i = 0; i < total; i++) await enqueue(a, 'r5', i);
  a.start();
  b.start();
  const rows = await waitForSandboxNotifications(db.pool, { channel: 'chan_e', timeoutMs: 10000 });
  assert.equal(rows.length, total);
  assert.ok(rows.every((r) => r.status === 'delivered' && r.attempts === 1));
  const seen = receiver.received.map((r) => JSON.parse(r.body).n as number).sort((x, y) => x - y);
  assert.deepEqual(seen, Array.from({ length: total }, (_, i) => i));
  await b.stop();
  await otherPool.end();
});

test('stop() aborts waits and gives the attempt back uncounted', async () => {
  await setFaults(db.pool, { channel: 'chan_f', delayMs: 5000 });
  const d = dispatcher('chan_f', [0, 10]);
  d.start();
  await enqueue(d, 'r6', 1);
  await waitForSandboxNotifications(db.pool, { channel: 'chan_f', timeoutMs: 3000, until: (rows) => rows[0]?.attempts === 1 });
  await d.stop();
  const [row] = await listSandboxNotifications(db.pool, { channel: 'chan_f' });
  assert.equal(row!.status, 'pending');
  assert.equal(row!.attempts, 0);
  assert.equal(receiver.received.length, 0);
});

test('fault drop: the notification is lost on every attempt', async () => {
  await setFaults(db.pool, { channel: 'chan_g', dropRate: 1 });
  const d = dispatcher('chan_g', [0, 10]);
  d.start();
  const result = await enqueue(d, 'r7', 1);
  assert.equal(result.dropped, true);
  const [row] = await waitForSandboxNotifications(db.pool, { channel: 'chan_g', timeoutMs: 2000 });
  assert.equal(row!.status, 'dropped');
  await new Promise((r) => setTimeout(r, 150));
  assert.equal(receiver.received.length, 0);
});

test('fault duplicate: delivered twice with the same event', async () => {
  await setFaults(db.pool, { channel: '*', duplicateRate: 1 });
  const d = dispatcher('chan_h', [0, 10]);
  d.start();
  const result = await enqueue(d, 'r8', 1);
  assert.equal(result.duplicated, true);
  const rows = await waitForSandboxNotifications(db.pool, { channel: 'chan_h', timeoutMs: 3000, until: (r) => r.length === 2 && r.every((x) => x.status === 'delivered') });
  assert.equal(rows[1]!.duplicateOf, rows[0]!.id);
  assert.equal(receiver.received.length, 2);
  assert.equal(receiver.received[0]!.body, receiver.received[1]!.body);
});

test('fault delay: every delivery waits delay_ms', async () => {
  await setFaults(db.pool, { channel: 'chan_i', delayMs: 300 });
  receiver.respond = (_r, i) => (i === 0 ? { status: 500, body: '' } : { status: 200, body: 'ok' });
  const d = dispatcher('chan_i', [0, 10]);
  d.start();
  const t0 = Date.now();
  await enqueue(d, 'r9', 1);
  await waitForSandboxNotifications(db.pool, { channel: 'chan_i', timeoutMs: 5000 });
  assert.equal(receiver.received.length, 2);
  assert.ok(receiver.received[0]!.at - t0 >= 295, 'first attempt delayed');
  assert.ok(receiver.received[1]!.at - receiver.received[0]!.at >= 295, 'retry delayed too');
});

test('fault reorder: later notifications overtake held-back ones', async () => {
  await setFaults(db.pool, { channel: 'chan_j', reorder: true });
  // A fixed sequence instead of Math.random: holds roughly every other delivery for up to 400 ms.
  let i = 0;
  const seq = [0.1, 0.9, 0.9, 0.2, 0.3, 0.6, 0.7, 0.05, 0.4, 0.95];
  const d = dispatcher('chan_j', [0, 10], { reorderMaxHoldMs: 400, random: () => seq[i++ % seq.length]! });
  for (let n = 0; n < 8; n++) await enqueue(d, 'r10', n);
  d.start();
  await waitForSandboxNotifications(db.pool, { channel: 'chan_j', timeoutMs: 5000 });
  const order = receiver.received.map((r) => JSON.parse(r.body).n as number);
  assert.equal(order.length, 8);
  assert.deepEqual([...order].sort((a, b) => a - b), [0, 1, 2, 3, 4, 5, 6, 7]);
  assert.notDeepEqual(order, [0, 1, 2, 3, 4, 5, 6, 7], 'delivery order differs from enqueue order');
});

test('faults are per channel with a "*" fallback, stored in the database', async () => {
  assert.equal((await readFaults(db.pool, 'x')).dropRate, 0);
  await setFaults(db.pool, { channel: '*', dropRate: 0.5 });
  await setFaults(db.pool, { channel: 'x', delayMs: 10 });
  assert.deepEqual(await readFaults(db.pool, 'x'), { channel: 'x', dropRate: 0, duplicateRate: 0, delayMs: 10, reorder: false });
  assert.equal((await readFaults(db.pool, 'y')).dropRate, 0.5);
  await setFaults(db.pool, { channel: 'x', reorder: true });
  assert.deepEqual(await readFaults(db.pool, 'x'), { channel: 'x', dropRate: 0, duplicateRate: 0, delayMs: 10, reorder: true }, 'a patch keeps other fields');
  await clearFaults(db.pool, 'x');
  assert.equal((await readFaults(db.pool, 'x')).dropRate, 0.5);
});

test('faults HTTP routes validate input with the Knowpay error shape', async () => {
  const app = Fastify();
  await app.register(faultsPlugin, { pool: db.pool });
  try {
    const post = (payload: unknown) => app.inject({ method: 'POST', url: '/sandbox/faults', payload: payload as object });
    const okRes = await post({ channel: 'alipay', drop_rate: 0.25, duplicate_rate: 1, delay_ms: 5, reorder: true });
    assert.equal(okRes.statusCode, 200);
    assert.deepEqual(okRes.json(), { object: 'sandbox_faults', channel: 'alipay', drop_rate: 0.25, duplicate_rate: 1, delay_ms: 5, reorder: true });
    const bad: Array<[unknown, string]> = [
      [{ drop_rate: 1.5 }, 'drop_rate'],
      [{ drop_rate: -0.1 }, 'drop_rate'],
      [{ duplicate_rate: '0.5' }, 'duplicate_rate'],
      [{ delay_ms: 1.5 }, 'delay_ms'],
      [{ delay_ms: -1 }, 'delay_ms'],
      [{ delay_ms: 10_000_000 }, 'delay_ms'],
      [{ reorder: 'yes' }, 'reorder'],
      [{ channel: 'Ali Pay' }, 'channel'],
      [{ surprise: 1 }, 'surprise'],
    ];
    for (const [payload, param] of bad) {
      const res = await post(payload);
      assert.equal(res.statusCode, 400, JSON.stringify(payload));
      const body = res.json() as { error: { type: string; code: string; param: string; message: string } };
      assert.equal(body.error.type, 'invalid_request_error');
      assert.equal(body.error.code, 'parameter_invalid');
      assert.equal(body.error.param, param);
    }
    const notObject = await app.inject({ method: 'POST', url: '/sandbox/faults', payload: '[1]', headers: { 'content-type': 'application/json' } });
    assert.equal(notObject.statusCode, 400);
    assert.equal((await app.inject({ method: 'GET', url: '/sandbox/faults?channel=alipay' })).json().drop_rate, 0.25);
    const del = await app.inject({ method: 'DELETE', url: '/sandbox/faults' });
    assert.equal(del.statusCode, 200);
    assert.equal((await readFaults(db.pool, 'alipay')).dropRate, 0);
  } finally {
    await app.close();
  }
});

test('rejects an invalid channel spec', () => {
  assert.throws(() => dispatcher('Bad Name', [0]), /invalid channel/);
  assert.throws(() => dispatcher('ok', []), /scheduleMs/);
  assert.throws(() => dispatcher('ok', [0, -1]), /scheduleMs/);
  assert.throws(() => createNotificationDispatcher({ pool: db.pool, spec: spec('ok', [0]), timeScale: -1 }), /timeScale/);
});

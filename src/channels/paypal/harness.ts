/**
 * Test harness (used by connector.test.ts and sandbox.test.ts only): a fresh database, the PayPal
 * module built the way setup.ts builds it (sandbox mode), its sandbox and the fault routes on a
 * real 127.0.0.1 port, a webhook receiver at /v1/notify/paypal that records raw bodies and headers,
 * and a man-in-the-middle route `/mitm/:mode/sandbox/paypal/*` for transport failures.
 */
import { X509Certificate } from 'node:crypto';
import Fastify, { type FastifyInstance } from 'fastify';
import formbody from '@fastify/formbody';
import { freshDatabase, type TestDatabase } from '../../../test/support/db.ts';
import type { ChannelAuditEntry } from '../module.ts';
import type { ChannelConnector, CreatePaymentInput } from '../types.ts';
import { faultsPlugin } from '../sandbox/faults.ts';
import { getSetting } from '../../store/settings.ts';
import { createPayPalConnector, type PayPalConfig } from './connector.ts';
import { paypalModule } from './index.ts';
import { pgOrderRefStore } from './order-refs.ts';
import { pgRefundRefStore } from './refund-refs.ts';
import { SANDBOX_CERT_SUBJECT, type PayPalSandboxKeys } from './sandbox-keys.ts';
import { freePort } from '../../store/embedded.ts';

export { freePort };

export interface Received {
  n: number;
  rawBody: Buffer;
  headers: Record<string, string | string[] | undefined>;
  at: number;
}

export interface MitmRule {
  /** Answer this instead of forwarding (status, body), or undefined to forward. */
  intercept?: (n: number, path: string) => { status: number; body: string; delayMs?: number } | undefined;
  /** Hold the request this long before forwarding. */
  delayMs?: number;
  /** After forwarding: answer this instead of the sandbox's answer (PayPal acted, the answer was lost). */
  replace?: (n: number, path: string, status: number) => { status: number; body: string } | undefined;
}

export interface Harness {
  db: TestDatabase;
  app: FastifyInstance;
  base: string;
  keys: PayPalSandboxKeys;
  connector: ChannelConnector;
  audits: ChannelAuditEntry[];
  received: Received[];
  /** The HTTP status the webhook receiver answers to the n-th (1-based) delivery of all. */
  answer: (n: number, rawBody: Buffer) => number;
  mitm: Map<string, MitmRule>;
  mitmCounts: Map<string, number>;
  makeConnector(over?: Partial<PayPalConfig>): ChannelConnector;
  input(ref: string, over?: Partial<CreatePaymentInput>): CreatePaymentInput;
  newRef(tag: string): string;
  simulate(ref: string, outcome: string): Promise<{ status: number; body: Record<string, any> }>;
  /** Create, approve and capture a payment through the connector; answers the capture id. */
  pay(ref: string, over?: Partial<CreatePaymentInput>): Promise<string>;
  /** POST a JSON body to a sandbox helper route (`/refunds/simulate`, …). */
  sandboxPost(path: string, body: unknown): Promise<{ status: number; body: Record<string, any> }>;
  waitReceived(pred: (r: Received, body: Record<string, any>) => boolean, count?: number, timeoutMs?: number): Promise<Received[]>;
  close(): Promise<void>;
}

export async function startHarness(opts: { timeScale?: number } = {}): Promise<Harness> {
  const db = await freshDatabase();
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const audits: ChannelAuditEntry[] = [];
  const instance = await paypalModule.create({
    pool: db.pool, publicBaseUrl: base, sandboxTimeScale: opts.timeScale ?? 0.001, audit: (e) => audits.push(e), env: {},
  });
  const keys = (await getSetting<PayPalSandboxKeys>(db.pool, 'sandbox.paypal.keys'))!;
  const received: Received[] = [];
  const mitm = new Map<string, MitmRule>();
  const mitmCounts = new Map<string, number>();
  let refCounter = 0;

  const app = Fastify();
  await app.register(formbody);
  await app.register(faultsPlugin, { pool: db.pool });
  await instance.mountSandbox!(app);
  const h: Harness = {
    db, app, base, keys, connector: instance.connector, audits, received, answer: () => 200, mitm, mitmCounts,
    makeConnector(over = {}) {
      return createPayPalConnector({
        baseUrl: `${base}/sandbox/paypal`, clientId: keys.clientId, clientSecret: keys.clientSecret, webhookId: keys.webhookId,
        merchantId: keys.merchantId, defaultReturnUrl: `${base}/`, store: pgOrderRefStore(db.pool), refunds: pgRefundRefStore(db.pool),
        trustAnchors: [new X509Certificate(keys.caCertPem)], certSubjects: [SANDBOX_CERT_SUBJECT],
        sandboxCertPrefix: `${base}/sandbox/paypal/v1/notifications/certs/`, timeoutMs: 2000, retryBaseMs: 20,
        audit: (e) => audits.push(e), ...over,
      });
    },
    input(ref, over = {}) {
      return {
        channelReference: ref, paymentId: 'pay_' + ref, orderId: 'ord_' + ref, customerId: 'cus_test', items: [],
        method: 'paypal', amountMinor: 1234n, currency: 'USD', subject: 'Course: Advanced TypeScript',
        notifyUrl: `${base}/v1/notify/paypal`, returnUrl: `${base}/return/${ref}`, expiresAt: new Date(Date.now() + 30 * 60_000), ...over,
      };
    },
    newRef(tag) {
      return `KP${tag}${process.pid}x${++refCounter}`;
    },
    async simulate(ref, outcome) {
      const res = await fetch(`${base}/sandbox/paypal/simulate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ channel_reference: ref, outcome }) });
      return { status: res.status, body: (await res.json()) as Record<string, any> };
    },
    async pay(ref, over = {}) {
      const input = h.input(ref, over);
      await h.connector.createPayment(input);
      const sim = await h.simulate(ref, 'succeeded');
      if (sim.status !== 200) throw new Error(`simulate answered ${sim.status}: ${JSON.stringify(sim.body)}`);
      const paid = await h.connector.queryPayment({ channelReference: ref, currency: input.currency });
      if (paid.state !== 'succeeded' || !paid.channelTransactionId) throw new Error(`payment ${ref} is ${paid.state}`);
      return paid.channelTransactionId;
    },
    async sandboxPost(path, body) {
      const res = await fetch(`${base}/sandbox/paypal${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      return { status: res.status, body: (await res.json()) as Record<string, any> };
    },
    async waitReceived(pred, count = 1, timeoutMs = 5000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const got = received.filter((r) => pred(r, JSON.parse(r.rawBody.toString('utf8')) as Record<string, any>));
        if (got.length >= count) return got;
        if (Date.now() > deadline) throw new Error(`${got.length} of ${count} matching webhooks after ${timeoutMs} ms (received ${received.length} in all)`);
        await new Promise((r) => setTimeout(r, 15));
      }
    },
    async close() {
      await app.close();
      await db.drop();
    },
  };

  await app.register(async (r) => {
    r.removeAllContentTypeParsers();
    r.addContentTypeParser('*', { parseAs: 'buffer' }, (_q, body, done) => done(null, body));
    r.post('/v1/notify/paypal', async (req, reply) => {
      const n = received.length + 1;
      received.push({ n, rawBody: req.body as Buffer, headers: { ...req.headers }, at: Date.now() });
      const status = h.answer(n, req.body as Buffer);
      return reply.code(status).type('application/json').send(status < 300 ? '{}' : '{"error":"try again"}');
    });
    // Forwards to the sandbox through app.inject, unless the mode's rule intercepts.
    r.all<{ Params: { mode: string; '*': string } }>('/mitm/:mode/sandbox/paypal/*', async (req, reply) => {
      const mode = req.params.mode;
      const n = (mitmCounts.get(mode) ?? 0) + 1;
      mitmCounts.set(mode, n);
      const rule = mitm.get(mode) ?? {};
      const path = '/' + req.params['*'];
      const hit = rule.intercept?.(n, path);
      const delay = hit?.delayMs ?? rule.delayMs ?? 0;
      if (delay > 0) await new Promise((res) => setTimeout(res, delay));
      if (hit) return reply.code(hit.status).type('application/json').send(hit.body);
      const query = (req.raw.url ?? '').includes('?') ? (req.raw.url ?? '').slice((req.raw.url ?? '').indexOf('?')) : '';
      const headers: Record<string, string> = {};
      for (const [k, v] of Object.entries(req.headers)) if (typeof v === 'string' && !['host', 'content-length', 'connection'].includes(k)) headers[k] = v;
      const res = await app.inject({ method: req.method as 'GET' | 'POST', url: `/sandbox/paypal${path}${query}`, headers, ...(req.body && (req.body as Buffer).length > 0 ? { payload: req.body as Buffer } : {}) });
      const replaced = rule.replace?.(n, path, res.statusCode);
      if (replaced) return reply.code(replaced.status).type('application/json').send(replaced.body);
      return reply.code(res.statusCode).type(String(res.headers['content-type'] ?? 'application/json')).send(res.body);
    });
  });
  await app.listen({ host: '127.0.0.1', port });
  return h;
}

/** The parsed body of a received webhook. */
export function eventOf(r: Received): Record<string, any> {
  return JSON.parse(r.rawBody.toString('utf8')) as Record<string, any>;
}

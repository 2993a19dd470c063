/**
 * Known-answer tests of the offline webhook verification against a real PayPal sandbox webhook
 * (test/fixtures/paypal, from PayPal's Java SDK), plus the refusals around it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { createPayPalConnector } from './connector.ts';
import type { OrderRefStore } from './order-refs.ts';
import type { RefundRefStore } from './refund-refs.ts';
import { SANDBOX_CERT_SUBJECT, generateSandboxCertificates } from './sandbox-keys.ts';
import { signTransmission } from './sandbox.ts';
import {
  PAYPAL_CERT_HOSTS, PAYPAL_CERT_SUBJECTS, checkCertUrl, checkChain, crc32, createCertificateSource, parseCertificates,
  readTransmission, systemTrustAnchors, transmissionSigningInput, verifyWebhookSignature, type WebhookVerifierConfig,
} from './webhook.ts';

const fixtures = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../test/fixtures/paypal');
const meta = JSON.parse(fs.readFileSync(path.join(fixtures, 'webhook.json'), 'utf8')) as {
  headers: Record<string, string>; webhookId: string; crc32: number; signingInput: string; bodySha256: string;
};
const body = fs.readFileSync(path.join(fixtures, 'webhook-body.txt'));
const leafPem = fs.readFileSync(path.join(fixtures, 'messageverificationcerts.sandbox.paypal.com.crt'));
const intermediateDer = fs.readFileSync(path.join(fixtures, 'DigiCertSHA2ExtendedValidationServerCA.crt'));
const intermediate = new X509Certificate(intermediateDer);
const intermediatePem = intermediate.toString();
/** The transmission time of the fixture, plus 30 s of network. */
const PINNED = new Date(Date.parse('2017-03-30T20:04:05Z') + 30_000);
const headers = Object.fromEntries(Object.entries(meta.headers).map(([k, v]) => [k.toLowerCase(), v]));

/** A fetcher that serves `data` for any URL and counts calls. */
function recordingFetcher(data: Buffer | string) {
  const calls: string[] = [];
  return { calls, fetcher: async (url: string) => { calls.push(url); return Buffer.from(data); } };
}

function config(over: Partial<WebhookVerifierConfig> & { served?: Buffer | string } = {}): WebhookVerifierConfig & { calls: string[] } {
  const fetcher = recordingFetcher(over.served ?? leafPem);
  return {
    webhookId: meta.webhookId,
    urlPolicy: { hosts: PAYPAL_CERT_HOSTS },
    chainPolicy: { anchors: [intermediate], subjectNames: PAYPAL_CERT_SUBJECTS },
    certificates: createCertificateSource({ fetcher: fetcher.fetcher }),
    now: () => PINNED,
    ...over,
    calls: fetcher.calls,
  };
}

test('fixture: body bytes, CRC-32 and signing input are exactly the published ones', () => {
  assert.equal(body.length, 1636);
  assert.equal(crc32(body), meta.crc32);
  assert.equal(crc32(body), zlib.crc32(body) >>> 0);
  const t = readTransmission(headers);
  assert.ok(t.ok);
  assert.equal(transmissionSigningInput(t.value, meta.webhookId, body), meta.signingInput);
});

test('crc32 equals zlib.crc32 on arbitrary bytes (fast-check), and the IEEE check value', () => {
  assert.equal(crc32(Buffer.from('123456789')), 0xcbf43926);
  assert.equal(crc32(Buffer.alloc(0)), 0);
  fc.assert(fc.property(fc.uint8Array({ maxLength: 2048 }), (bytes) => crc32(bytes) === zlib.crc32(bytes) >>> 0), { numRuns: 300 });
});

test('KAT: the real PayPal webhook verifies offline, clock pinned, DigiCert intermediate as anchor (as the Java SDK did)', async () => {
  const cfg = config();
  const result = await verifyWebhookSignature({ headers, rawBody: body }, cfg);
  assert.deepEqual(result.ok ? 'ok' : result.reason, 'ok');
  assert.deepEqual(cfg.calls, ['https://api.sandbox.paypal.com/v1/notifications/test']);
});

test('KAT: served leaf + intermediate chains to the DigiCert root in Node\'s bundled store', async () => {
  const cfg = config({ served: `${leafPem.toString()}\n${intermediatePem}`, chainPolicy: { anchors: systemTrustAnchors(), subjectNames: PAYPAL_CERT_SUBJECTS } });
  const result = await verifyWebhookSignature({ headers, rawBody: body }, cfg);
  assert.equal(result.ok ? 'ok' : result.reason, 'ok');
  // The leaf alone does not reach a root: PayPal's intermediate must be served or configured.
  const alone = await verifyWebhookSignature({ headers, rawBody: body }, config({ chainPolicy: { anchors: systemTrustAnchors(), subjectNames: PAYPAL_CERT_SUBJECTS } }));
  assert.deepEqual(alone, { ok: false, reason: 'certificate chain does not reach a trusted anchor' });
});

test('KAT through the connector: verified, then ignored (BILLING.PLAN.CREATED is not a payment event)', async () => {
  const fetcher = recordingFetcher(leafPem);
  const connector = createPayPalConnector({
    baseUrl: 'https://api-m.sandbox.paypal.com', clientId: 'id', clientSecret: 'secret', webhookId: meta.webhookId,
    defaultReturnUrl: 'https://shop.example/', store: unusedStore(), refunds: unusedRefundStore(), trustAnchors: [intermediate],
    certificates: createCertificateSource({ fetcher: fetcher.fetcher }), now: () => PINNED,
  });
  const result = await connector.verifyNotification({ headers, rawBody: body, contentType: 'application/json' }, async () => null);
  assert.deepEqual(result, {
    ok: true,
    notification: { eventId: 'WH-2MW4820926242972J-6SG447389E205703U', kind: 'ignored', reason: 'event type BILLING.PLAN.CREATED is not used' },
  });
  const tampered = Buffer.from(body);
  tampered[tampered.indexOf('"100"') + 3] = 0x31; // "100" → "101"
  assert.deepEqual(await connector.verifyNotification({ headers, rawBody: tampered }, async () => null), { ok: false, reason: 'invalid signature' });
});

test('KAT negatives: any one changed body byte, another webhook id, a changed signature', async () => {
  const cfg = config();
  for (const at of [0, 1, 500, body.indexOf('"100"') + 3, body.length - 1]) {
    const tampered = Buffer.from(body);
    tampered[at] = tampered[at]! ^ 0x01;
    assert.deepEqual(await verifyWebhookSignature({ headers, rawBody: tampered }, cfg), { ok: false, reason: 'invalid signature' }, `byte ${at}`);
  }
  assert.deepEqual(await verifyWebhookSignature({ headers, rawBody: body }, { ...cfg, webhookId: '96605875FF6516634' }), { ok: false, reason: 'invalid signature' });
  const sig = headers['paypal-transmission-sig']!;
  const flipped = sig.slice(0, 20) + (sig[20] === 'A' ? 'B' : 'A') + sig.slice(21);
  assert.deepEqual(await verifyWebhookSignature({ headers: { ...headers, 'paypal-transmission-sig': flipped }, rawBody: body }, cfg), { ok: false, reason: 'invalid signature' });
  const otherTime = { ...headers, 'paypal-transmission-time': '2017-03-30T20:04:06Z' };
  assert.deepEqual(await verifyWebhookSignature({ headers: otherTime, rawBody: body }, cfg), { ok: false, reason: 'invalid signature' });
});

test('KAT at today\'s clock: refused (stale transmission; and, with the window opened, the expired certificate)', async () => {
  const stale = await verifyWebhookSignature({ headers, rawBody: body }, config({ now: () => new Date() }));
  assert.equal(stale.ok, false);
  assert.match(!stale.ok ? stale.reason : '', /^stale transmission/);
  const expired = await verifyWebhookSignature({ headers, rawBody: body }, config({ now: () => new Date(), maxAgeMs: 100 * 365 * 86_400_000 }));
  assert.equal(expired.ok, false);
  assert.match(!expired.ok ? expired.reason : '', /messageverificationcerts\.sandbox\.paypal\.com not valid at .* to Apr 26 12:00:00 2019 GMT/);
});

test('a foreign certificate URL is refused without being fetched', async () => {
  const foreign = [
    'https://evil.example/v1/notifications/certs/CERT-1',
    'http://api.sandbox.paypal.com/v1/notifications/test',
    'https://api.sandbox.paypal.com.evil.example/v1/notifications/test',
    'https://api.sandbox.paypal.com:8443/v1/notifications/test',
    'https://user:pw@api.sandbox.paypal.com/v1/notifications/test',
    'https://api-m.paypal.com/v1/notifications/certs/CERT-1',
    'https://api.paypal.com/v2/other',
    'http://127.0.0.1:4000/sandbox/paypal/v1/notifications/certs/CERT-1',
    'file:///etc/passwd',
    'not a url',
  ];
  for (const url of foreign) {
    const cfg = config();
    const result = await verifyWebhookSignature({ headers: { ...headers, 'paypal-cert-url': url }, rawBody: body }, cfg);
    assert.equal(result.ok, false, url);
    assert.match(!result.ok ? result.reason : '', /certificate (URL|host)/, url);
    assert.deepEqual(cfg.calls, [], `${url} must not be fetched`);
  }
});

test('checkCertUrl: PayPal hosts over https; the sandbox prefix only when configured (fast-check on hosts)', () => {
  assert.ok(checkCertUrl('https://api.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-a5cafa77', { hosts: PAYPAL_CERT_HOSTS }).ok);
  const sandbox = { hosts: PAYPAL_CERT_HOSTS, sandboxPrefix: 'http://127.0.0.1:4000/sandbox/paypal/v1/notifications/certs/' };
  assert.ok(checkCertUrl('http://127.0.0.1:4000/sandbox/paypal/v1/notifications/certs/CERT-x', sandbox).ok);
  for (const bad of [
    'http://127.0.0.1:4001/sandbox/paypal/v1/notifications/certs/CERT-x',
    'http://127.0.0.1:4000/sandbox/stripe/v1/notifications/certs/CERT-x',
    'http://127.0.0.1:4000/sandbox/paypal/v1/notifications/certs/CERT-x?x=1',
    'http://localhost:4000/sandbox/paypal/v1/notifications/certs/CERT-x',
  ]) assert.equal(checkCertUrl(bad, sandbox).ok, false, bad);
  fc.assert(fc.property(fc.domain(), (host) => {
    const r = checkCertUrl(`https://${host}/v1/notifications/certs/CERT-1`, { hosts: PAYPAL_CERT_HOSTS });
    return r.ok === PAYPAL_CERT_HOSTS.includes(host);
  }), { numRuns: 300 });
});

test('malformed transmissions are refused before any download', async () => {
  const cases: Array<[string, Record<string, string | string[]>, Buffer, RegExp]> = [
    ['no signature header', { ...headers, 'paypal-transmission-sig': '' }, body, /missing header paypal-transmission-sig/],
    ['no cert url', omit(headers, 'paypal-cert-url'), body, /missing header paypal-cert-url/],
    ['repeated header', { ...headers, 'paypal-transmission-id': ['a', 'b'] }, body, /repeated/],
    ['SHA1withRSA', { ...headers, 'paypal-auth-algo': 'SHA1withRSA' }, body, /unsupported auth algorithm/],
    ['time not ISO', { ...headers, 'paypal-transmission-time': 'Thu, 30 Mar 2017 20:04:05 GMT' }, body, /malformed transmission time/],
    ['time in the future', { ...headers, 'paypal-transmission-time': '2017-03-30T20:20:05Z' }, body, /future/],
    ['signature not base64', { ...headers, 'paypal-transmission-sig': 'not*base64' }, body, /malformed signature/],
    ['empty body', headers, Buffer.alloc(0), /empty body/],
    ['huge body', headers, Buffer.alloc(300 * 1024, 0x20), /larger than/],
  ];
  for (const [name, h, raw, reason] of cases) {
    const cfg = config();
    const result = await verifyWebhookSignature({ headers: h, rawBody: raw }, cfg);
    assert.equal(result.ok, false, name);
    assert.match(!result.ok ? result.reason : '', reason, name);
    assert.deepEqual(cfg.calls, [], name);
  }
});

test('certificate trust: another anchor, a non-PayPal name, garbage and failed downloads are refused', async () => {
  const own = await generateSandboxCertificates();
  const foreignAnchor = await verifyWebhookSignature({ headers, rawBody: body }, config({ chainPolicy: { anchors: [new X509Certificate(own.caCertPem)], subjectNames: PAYPAL_CERT_SUBJECTS } }));
  assert.deepEqual(foreignAnchor, { ok: false, reason: 'certificate chain does not reach a trusted anchor' });
  const liveOnly = await verifyWebhookSignature({ headers, rawBody: body }, config({ chainPolicy: { anchors: [intermediate], subjectNames: ['messageverificationcerts.paypal.com'] } }));
  assert.deepEqual(liveOnly, { ok: false, reason: 'certificate is not for messageverificationcerts.paypal.com' });
  const garbage = await verifyWebhookSignature({ headers, rawBody: body }, config({ served: 'hello' }));
  assert.equal(garbage.ok, false);
  assert.match(!garbage.ok ? garbage.reason : '', /certificate unavailable/);
  const failing: WebhookVerifierConfig = { ...config(), certificates: createCertificateSource({ fetcher: async () => { throw new Error('ECONNRESET'); } }) };
  assert.deepEqual(await verifyWebhookSignature({ headers, rawBody: body }, failing), { ok: false, reason: 'certificate unavailable: ECONNRESET' });
  // A leaf served with an "intermediate" that did not issue it.
  const wrongChain = checkChain(parseCertificates(`${leafPem}\n${own.caCertPem}`), { anchors: [new X509Certificate(own.caCertPem)], subjectNames: PAYPAL_CERT_SUBJECTS }, PINNED);
  assert.deepEqual(wrongChain, { ok: false, reason: 'certificate chain does not reach a trusted anchor' });
});

test('the sandbox chain: its signer verifies with its root as the only anchor; a second sandbox\'s does not', async () => {
  const a = await generateSandboxCertificates();
  const b = await generateSandboxCertificates();
  const prefix = 'http://127.0.0.1:4000/sandbox/paypal/v1/notifications/certs/';
  const raw = Buffer.from('{"id":"WH-1","event_type":"X","resource":{}}');
  const now = new Date();
  const identity = { webhookId: 'WEBHOOK1', certUrl: `${prefix}CERT-a`, key: createPrivateKey(a.signingKeyPem) };
  const sandboxCfg = (anchor: string, served: string): WebhookVerifierConfig => ({
    webhookId: 'WEBHOOK1', urlPolicy: { hosts: PAYPAL_CERT_HOSTS, sandboxPrefix: prefix },
    chainPolicy: { anchors: [new X509Certificate(anchor)], subjectNames: [SANDBOX_CERT_SUBJECT] },
    certificates: createCertificateSource({ fetcher: async () => Buffer.from(served) }), now: () => now,
  });
  const h = signTransmission(raw.toString(), identity, now);
  const good = await verifyWebhookSignature({ headers: h, rawBody: raw }, sandboxCfg(a.caCertPem, a.signingCertPem));
  assert.equal(good.ok ? good.transmission.certUrl : good.reason, `${prefix}CERT-a`);
  assert.deepEqual(await verifyWebhookSignature({ headers: h, rawBody: raw }, sandboxCfg(b.caCertPem, a.signingCertPem)), { ok: false, reason: 'certificate chain does not reach a trusted anchor' });
  assert.deepEqual(await verifyWebhookSignature({ headers: h, rawBody: raw }, sandboxCfg(b.caCertPem, b.signingCertPem)), { ok: false, reason: 'invalid signature' });
  // Real PayPal names are not accepted for the sandbox certificate, and vice versa.
  assert.equal(checkChain([new X509Certificate(a.signingCertPem)], { anchors: [new X509Certificate(a.caCertPem)], subjectNames: PAYPAL_CERT_SUBJECTS }, now).ok, false);
});

test('certificate source: cached per URL, one download for concurrent requests, bounded size', async () => {
  let downloads = 0;
  const source = createCertificateSource({ fetcher: async () => { downloads++; await new Promise((r) => setTimeout(r, 10)); return leafPem; }, cacheSize: 2 });
  await Promise.all([source.get('u1'), source.get('u1'), source.get('u1')]);
  assert.equal(downloads, 1);
  await source.get('u1');
  assert.equal(downloads, 1);
  await source.get('u2');
  await source.get('u3'); // evicts u1
  await source.get('u1');
  assert.equal(downloads, 4);
  const big = createCertificateSource({ fetcher: async () => Buffer.alloc(100 * 1024, 0x41), maxBytes: 64 * 1024 });
  await assert.rejects(big.get('x'), /certificate body of 102400 bytes/);
  const many = createCertificateSource({ fetcher: async () => Buffer.from(Array.from({ length: 6 }, () => leafPem.toString()).join('\n')) });
  await assert.rejects(many.get('x'), /more than 5 certificates/);
});

function omit(h: Record<string, string>, key: string): Record<string, string> {
  const { [key]: _dropped, ...rest } = h;
  return rest;
}

function unusedStore(): OrderRefStore {
  const fail = async (): Promise<never> => { throw new Error('the order store must not be used to verify a webhook'); };
  return { save: fail, get: fail, decide: fail, abandonCapture: fail };
}

function unusedRefundStore(): RefundRefStore {
  const fail = async (): Promise<never> => { throw new Error('the refund store must not be used to verify this webhook'); };
  return { save: fail, get: fail, findByCapture: fail, record: fail };
}

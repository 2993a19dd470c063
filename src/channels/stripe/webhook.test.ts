/**
 * Known-answer tests for Stripe webhook signatures: the stripe-dotnet vector (fixed payload,
 * secret, header) verified at its pinned time and refused when anything changes; signatures made
 * by the official SDK's generateTestHeaderString verify, and fail when tampered.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import Stripe from 'stripe';
import fc from 'fast-check';
import { createStripeConnector } from './connector.ts';
import { headerTimestamp, signStripeWebhook, verifyStripeWebhook } from './webhook.ts';

const fixtures = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../test/fixtures/stripe');
const vector = JSON.parse(fs.readFileSync(path.join(fixtures, 'vector.json'), 'utf8')) as {
  secret: string; timestamp: number; header: string; checkedHere: { v1Recomputed: string; payloadBytes: number };
};
const body = fs.readFileSync(path.join(fixtures, 'event_test_signature.json'));
const T = vector.timestamp;
const at = (seconds: number) => ({ nowMs: seconds * 1000 });

function flip(buf: Buffer, index: number): Buffer {
  const copy = Buffer.from(buf);
  copy[index] = copy[index] === 0x61 ? 0x62 : 0x61;
  return copy;
}

test('the fixture is the exact bytes the vector signs', () => {
  assert.equal(body.length, 484);
  assert.equal(body.length, vector.checkedHere.payloadBytes);
  assert.equal(body[body.length - 1], 0x0a, 'ends with a newline');
  assert.equal(body.includes(0x0d), false, 'LF line endings');
});

test('v1 = hex(HMAC-SHA256(secret, `${t}.${body}`)) recomputed with node crypto equals the vector', () => {
  const v1 = createHmac('sha256', vector.secret).update(`${T}.`).update(body).digest('hex');
  assert.equal(v1, vector.checkedHere.v1Recomputed);
  assert.ok(vector.header.includes(`v1=${v1}`));
  // The newline is signed: without it the signature is another one (SOURCE.md: 8c506d7d…).
  const withoutNewline = createHmac('sha256', vector.secret).update(`${T}.`).update(body.subarray(0, -1)).digest('hex');
  assert.ok(withoutNewline.startsWith('8c506d7d'), withoutNewline);
});

test('the official SDK: constructEvent accepts the vector at t+100, and generateTestHeaderString reproduces its v1', () => {
  const event = Stripe.webhooks.constructEvent(body, vector.header, vector.secret, 300, undefined, (T + 100) * 1000) as unknown as Record<string, unknown>;
  assert.equal(event['id'], 'evt_123');
  assert.equal(event['type'], 'customer.created');
  const header = Stripe.webhooks.generateTestHeaderString({ payload: body.toString('utf8'), secret: vector.secret, timestamp: T });
  assert.equal(header, vector.header.split(',v0=')[0]);
  assert.equal(signStripeWebhook(body.toString('utf8'), vector.secret, T), header);
});

test('verifyStripeWebhook accepts the vector within the tolerance, up to exactly 300 s either way', () => {
  for (const now of [T + 100, T, T + 300, T - 300]) {
    const r = verifyStripeWebhook(body, vector.header, vector.secret, at(now));
    assert.ok(r.ok, `now = t${now - T >= 0 ? '+' : ''}${now - T}: ${!r.ok ? r.reason : ''}`);
    assert.equal(r.event['id'], 'evt_123');
    assert.equal(r.event['account'], 'acct_123');
  }
});

test('the vector is refused when stale (t+400, t+301) or from the future (t-301)', () => {
  const stale = verifyStripeWebhook(body, vector.header, vector.secret, at(T + 400));
  assert.deepEqual(stale, { ok: false, reason: 'invalid signature: Timestamp outside the tolerance zone' });
  assert.equal(verifyStripeWebhook(body, vector.header, vector.secret, at(T + 301)).ok, false);
  assert.deepEqual(verifyStripeWebhook(body, vector.header, vector.secret, at(T - 301)), { ok: false, reason: 'timestamp too far in the future' });
  assert.throws(() => Stripe.webhooks.constructEvent(body, vector.header, vector.secret, 300, undefined, (T + 400) * 1000), /tolerance/);
});

test('one byte changed anywhere in the body, or appended text, fails the signature', () => {
  for (let i = 0; i < body.length; i += 11) {
    const r = verifyStripeWebhook(flip(body, i), vector.header, vector.secret, at(T + 100));
    assert.equal(r.ok, false, `byte ${i}`);
    assert.match(!r.ok ? r.reason : '', /No signatures found matching|not valid UTF-8/, `byte ${i}`);
  }
  const last = verifyStripeWebhook(flip(body, body.length - 1), vector.header, vector.secret, at(T + 100));
  assert.equal(last.ok, false, 'the trailing newline is signed');
  const appended = Buffer.concat([body, Buffer.from('this_changes_the_json')]);
  assert.equal(verifyStripeWebhook(appended, vector.header, vector.secret, at(T + 100)).ok, false);
  assert.equal(verifyStripeWebhook(body.subarray(0, -1), vector.header, vector.secret, at(T + 100)).ok, false);
});

test('a wrong secret, or a changed signature or timestamp in the header, fails', () => {
  for (const secret of ['webhook_secreT', 'webhook_secret ', 'whsec_webhook_secret', 'other']) {
    assert.equal(verifyStripeWebhook(body, vector.header, secret, at(T + 100)).ok, false, secret);
  }
  const v1 = vector.checkedHere.v1Recomputed;
  const headers = [
    vector.header.replace(`v1=${v1}`, `v1=${v1.slice(0, -1)}${v1.endsWith('7') ? '8' : '7'}`),
    vector.header.replace(`v1=${v1}`, `v1=${v1.toUpperCase()}`),
    vector.header.replace(`t=${T}`, `t=${T + 1}`),
    `t=${T},v0=${v1}`,
  ];
  for (const h of headers) assert.equal(verifyStripeWebhook(body, h, vector.secret, at(T + 100)).ok, false, h);
});

test('malformed or missing headers are refused with a reason, never thrown', () => {
  const v1 = vector.checkedHere.v1Recomputed;
  const cases: Array<[string | string[] | undefined, RegExp]> = [
    [`t=,v1=${v1},v0=63f3a7`, /no usable timestamp/],
    [`v1=${v1}`, /no usable timestamp/],
    [`t=12x,v1=${v1}`, /no usable timestamp/],
    [`t=${T}`, /No signatures found with expected scheme/],
    ['', /missing/],
    [undefined, /missing/],
    [[vector.header, vector.header], /more than one/],
    ['t=' + '1'.repeat(5000), /too long/],
    ['garbage', /no usable timestamp/],
  ];
  for (const [header, reason] of cases) {
    const r = verifyStripeWebhook(body, header, vector.secret, at(T + 100));
    assert.equal(r.ok, false, String(header).slice(0, 40));
    assert.match(!r.ok ? r.reason : '', reason, String(header).slice(0, 40));
  }
  assert.equal(headerTimestamp(`t=1,t=${T},v1=x`), T, 'the last t= wins, as in the SDK');
  assert.equal(headerTimestamp('v1=x'), null);
});

test('bodies that are empty, too large, not UTF-8 or not JSON are refused even with a valid signature', () => {
  const sign = (b: Buffer) => signStripeWebhook(b.toString('latin1'), vector.secret, T);
  const notUtf8 = Buffer.from([0x7b, 0xff, 0xfe, 0x7d]);
  assert.deepEqual(verifyStripeWebhook(notUtf8, sign(notUtf8), vector.secret, at(T)), { ok: false, reason: 'body is not valid UTF-8' });
  assert.deepEqual(verifyStripeWebhook(Buffer.alloc(0), vector.header, vector.secret, at(T)), { ok: false, reason: 'empty body' });
  const huge = Buffer.alloc(600 * 1024, 0x20);
  assert.match((verifyStripeWebhook(huge, vector.header, vector.secret, at(T)) as { reason: string }).reason, /larger than/);
  const text = Buffer.from('not json');
  const signed = signStripeWebhook('not json', vector.secret, T);
  assert.deepEqual(verifyStripeWebhook(text, signed, vector.secret, at(T)), { ok: false, reason: 'body is not JSON' });
  const array = Buffer.from('[1,2]');
  assert.deepEqual(verifyStripeWebhook(array, signStripeWebhook('[1,2]', vector.secret, T), vector.secret, at(T)), { ok: false, reason: 'body is not a JSON object' });
  assert.throws(() => verifyStripeWebhook(body, vector.header, '', at(T)), /secret/);
  assert.throws(() => verifyStripeWebhook(body, vector.header, vector.secret, { nowMs: T * 1000, toleranceS: 0 }), /tolerance/);
});

test('the connector verifies the vector with the clock pinned, and translates customer.created as ignored', async () => {
  const connector = createStripeConnector({
    secretKey: 'sk_test_abc123', webhookSecret: vector.secret, accountId: 'acct_123', apiBase: 'http://127.0.0.1:9', now: () => (T + 100) * 1000,
  });
  const result = await connector.verifyNotification({ headers: { 'stripe-signature': vector.header }, rawBody: body, contentType: 'application/json; charset=utf-8' }, async () => null);
  assert.deepEqual(result, {
    ok: true,
    notification: { eventId: 'evt_123', kind: 'ignored', reason: 'event type customer.created is not used', appId: 'acct_123' },
  });
  const late = createStripeConnector({ secretKey: 'sk_test_abc123', webhookSecret: vector.secret, accountId: 'acct_123', now: () => (T + 400) * 1000 });
  const stale = await late.verifyNotification({ headers: { 'stripe-signature': vector.header }, rawBody: body }, async () => null);
  assert.equal(stale.ok, false);
  const wrongType = await connector.verifyNotification({ headers: { 'stripe-signature': vector.header }, rawBody: body, contentType: 'text/plain' }, async () => null);
  assert.deepEqual(wrongType, { ok: false, reason: 'unexpected content type text/plain' });
  const tampered = await connector.verifyNotification({ headers: { 'stripe-signature': vector.header }, rawBody: flip(body, 20) }, async () => null);
  assert.equal(tampered.ok, false);
});

// ---- Properties over SDK-made signatures ------------------------------------------------------------

const secretArb = fc.stringMatching(/^whsec_[A-Za-z0-9]{8,40}$/);
const payloadArb = fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify({ id: 'evt_x', object: 'event', data: v }, null, 2));

test('property: generateTestHeaderString signatures verify; any flipped byte, other secret or stale time fails', () => {
  fc.assert(
    fc.property(payloadArb, secretArb, secretArb, fc.integer({ min: 1_600_000_000, max: 2_000_000_000 }), fc.nat(), (payload, secret, other, t, pick) => {
      const raw = Buffer.from(payload, 'utf8');
      const header = Stripe.webhooks.generateTestHeaderString({ payload, secret, timestamp: t });
      const good = verifyStripeWebhook(raw, header, secret, at(t + 5));
      assert.ok(good.ok, !good.ok ? good.reason : '');
      // Our own HMAC agrees with the SDK's.
      assert.equal(header, `t=${t},v1=${createHmac('sha256', secret).update(`${t}.${payload}`).digest('hex')}`);
      const i = pick % raw.length;
      const tampered = Buffer.from(raw);
      tampered[i] = tampered[i] === 0x20 ? 0x21 : 0x20;
      assert.equal(verifyStripeWebhook(tampered, header, secret, at(t + 5)).ok, false, 'tampered');
      if (other !== secret) assert.equal(verifyStripeWebhook(raw, header, other, at(t + 5)).ok, false, 'other secret');
      assert.equal(verifyStripeWebhook(raw, header, secret, at(t + 301)).ok, false, 'stale');
    }),
    { numRuns: 200 },
  );
});

test('property: with several v1 signatures (secret rotation) one match is enough, none is not', () => {
  fc.assert(
    fc.property(payloadArb, secretArb, secretArb, (payload, current, previous) => {
      fc.pre(current !== previous);
      const t = 1_700_000_000;
      const sig = (s: string) => createHmac('sha256', s).update(`${t}.${payload}`).digest('hex');
      const raw = Buffer.from(payload);
      assert.ok(verifyStripeWebhook(raw, `t=${t},v1=${sig(previous)},v1=${sig(current)}`, current, at(t)).ok);
      assert.ok(verifyStripeWebhook(raw, `t=${t},v1=${sig(current)},v1=${sig(previous)}`, current, at(t)).ok);
      assert.equal(verifyStripeWebhook(raw, `t=${t},v1=${sig(previous)},v1=${'0'.repeat(64)}`, current, at(t)).ok, false);
    }),
    { numRuns: 100 },
  );
});

/**
 * Pure Stripe wire rules: amounts in Stripe's units, PaymentIntent states, redaction; and the
 * sandbox's parsers (Stripe form encoding checked against the official SDK's, search queries).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import Stripe from 'stripe';
import fc from 'fast-check';
import { CURRENCY_EXPONENTS, MAX_AMOUNT_MINOR } from '../../domain/money.ts';
import {
  STRIPE_MAX_AMOUNT, decisiveIntent, fromStripeAmount, mapIntentStatus, readIntent, redactSecrets, referenceSearchQuery,
  stripeCurrency, stripeExponent, toStripeAmount, type IntentView,
} from './transformers.ts';
import { canonicalJson, parseStripeForm, splitKey, type FormValue } from './sandbox-form.ts';
import { compileSearch, parseSearchQuery } from './sandbox-search.ts';
import { STRIPE_CURRENCIES } from './sandbox-intents.ts';
import { prefixedHttpClient } from './connector.ts';

// ---- Amounts -------------------------------------------------------------------------------------

test('minor units convert to Stripe amounts per Stripe\'s currency rules', () => {
  const ok = (minor: bigint, currency: string) => {
    const r = toStripeAmount(minor, currency);
    assert.ok(r.ok, !r.ok ? r.message : '');
    return [r.value.amount, r.value.currency];
  };
  assert.deepEqual(ok(1234n, 'USD'), [1234, 'usd']);
  assert.deepEqual(ok(1234n, 'usd'), [1234, 'usd']);
  assert.deepEqual(ok(500n, 'JPY'), [500, 'jpy'], 'zero-decimal: minor units already');
  assert.deepEqual(ok(500n, 'KRW'), [500, 'krw']);
  assert.deepEqual(ok(3000n, 'UGX'), [3000, 'ugx']);
  assert.deepEqual(ok(1230n, 'KWD'), [1230, 'kwd'], 'three-decimal, last digit 0');
  assert.deepEqual(ok(5n, 'ISK'), [500, 'isk'], 'ISK stays two-decimal at Stripe');
  assert.deepEqual(ok(1n, 'HUF'), [1, 'huf']);
  assert.deepEqual(ok(99_999_999n, 'USD'), [99_999_999, 'usd']);
  assert.equal(stripeExponent('ISK'), 2);
  assert.equal(stripeExponent('JPY'), 0);
  assert.equal(stripeExponent('BHD'), 3);
  assert.equal(stripeExponent('CNY'), 2);
});

test('amounts Stripe cannot take exactly are refused, never rounded', () => {
  const refused = (minor: bigint, currency: string, code: string) => {
    const r = toStripeAmount(minor, currency);
    assert.equal(r.ok, false, `${minor} ${currency}`);
    assert.equal(!r.ok && r.code, code, `${minor} ${currency}`);
    return !r.ok ? r.message : '';
  };
  assert.match(refused(1231n, 'KWD', 'amount_invalid'), /multiples of 10/);
  refused(1005n, 'BHD', 'amount_invalid');
  refused(1001n, 'JOD', 'amount_invalid');
  refused(1000n, 'LYD', 'currency_not_supported');
  refused(1000n, 'IQD', 'currency_not_supported');
  refused(1000n, 'XXX', 'currency_not_supported');
  refused(1000n, '', 'currency_not_supported');
  refused(0n, 'USD', 'amount_invalid');
  refused(-5n, 'USD', 'amount_invalid');
  refused(100_000_000n, 'USD', 'amount_invalid');
  refused(1_000_000n, 'ISK', 'amount_invalid'); // 100,000,000 at Stripe: nine digits
  refused(MAX_AMOUNT_MINOR + 1n, 'JPY', 'amount_invalid');
});

const supported = Object.keys(CURRENCY_EXPONENTS).filter((c) => stripeCurrency(c) !== null);

test('every currency money.ts knows is either supported by Stripe with an exponent >= ISO, or refused', () => {
  for (const c of Object.keys(CURRENCY_EXPONENTS)) {
    if (stripeCurrency(c) === null) {
      assert.ok(['IQD', 'LYD'].includes(c), c);
    } else {
      assert.ok(stripeExponent(c) >= CURRENCY_EXPONENTS[c]!, c);
      assert.ok(STRIPE_CURRENCIES.has(c.toLowerCase()), `${c} is a Stripe presentment currency`);
    }
  }
});

test('property: fromStripeAmount(toStripeAmount(x)) = x for every supported currency', () => {
  fc.assert(
    fc.property(fc.constantFrom(...supported), fc.bigInt({ min: 1n, max: 99_999_999n }), (currency, minor) => {
      const r = toStripeAmount(minor, currency);
      if (!r.ok) {
        // Only the documented refusals.
        assert.ok(r.code === 'amount_invalid' && ((['BHD', 'JOD', 'KWD', 'OMR', 'TND'].includes(currency) && minor % 10n !== 0n) || (currency === 'ISK' && minor > 999_999n)), `${minor} ${currency}: ${r.message}`);
        return;
      }
      assert.ok(Number.isSafeInteger(r.value.amount) && r.value.amount >= 1 && r.value.amount <= STRIPE_MAX_AMOUNT);
      assert.equal(r.value.currency, currency.toLowerCase());
      assert.deepEqual(fromStripeAmount(r.value.amount, r.value.currency), { amountMinor: minor, currency });
    }),
    { numRuns: 500 },
  );
});

test('fromStripeAmount refuses what is not a whole number of our units', () => {
  assert.equal(fromStripeAmount(150, 'isk'), null);
  assert.equal(fromStripeAmount(12.5, 'usd'), null);
  assert.equal(fromStripeAmount(-1, 'usd'), null);
  assert.equal(fromStripeAmount('100', 'usd'), null);
  assert.equal(fromStripeAmount(100, 'USD'), null, "Stripe's currencies are lower case");
  assert.equal(fromStripeAmount(100, 'lyd'), null);
  assert.equal(fromStripeAmount(Number.MAX_SAFE_INTEGER + 1, 'usd'), null);
  assert.deepEqual(fromStripeAmount(0, 'usd'), { amountMinor: 0n, currency: 'USD' });
});

// ---- States ----------------------------------------------------------------------------------------

test('PaymentIntent statuses map to our words; only explicit outcomes end a payment', () => {
  assert.equal(mapIntentStatus('succeeded', null), 'succeeded');
  assert.equal(mapIntentStatus('canceled', null), 'closed');
  assert.equal(mapIntentStatus('requires_payment_method', { code: 'card_declined' }), 'failed');
  assert.equal(mapIntentStatus('requires_payment_method', null), 'pending');
  assert.equal(mapIntentStatus('requires_payment_method', undefined), 'pending');
  for (const s of ['requires_confirmation', 'requires_action', 'processing', 'requires_capture']) {
    assert.equal(mapIntentStatus(s, { code: 'x' }), 'pending', s);
  }
  fc.assert(
    fc.property(fc.oneof(fc.string(), fc.constant(undefined), fc.integer()), fc.oneof(fc.constant(null), fc.object()), (status, error) => {
      const state = mapIntentStatus(status, error);
      if (status === 'succeeded') assert.equal(state, 'succeeded');
      else if (status === 'canceled') assert.equal(state, 'closed');
      else if (status === 'requires_payment_method' && error !== null) assert.equal(state, 'failed');
      else assert.equal(state, 'pending');
    }),
  );
});

test('readIntent keeps only well-formed PaymentIntents', () => {
  const good = { object: 'payment_intent', id: 'pi_1', status: 'succeeded', amount: 5, amount_received: 5, currency: 'usd', metadata: { a: 'b' } };
  assert.ok(readIntent(good));
  for (const bad of [null, [], 'pi', { ...good, object: 'charge' }, { ...good, id: 'ch_1' }, { ...good, id: 'pi_1 x' }, { ...good, amount: 1.5 }, { ...good, status: '' }, { ...good, metadata: null }, { ...good, metadata: { a: 1 } }, { ...good, currency: 5 }, { ...good, amount_received: '5' }]) {
    assert.equal(readIntent(bad), null, JSON.stringify(bad));
  }
});

test('decisiveIntent prefers a paid PaymentIntent, then the newest', () => {
  const pi = (id: string, status: string, created: number) => ({ id, status, created }) as IntentView;
  assert.equal(decisiveIntent([]), null);
  assert.equal(decisiveIntent([pi('pi_a', 'canceled', 1), pi('pi_b', 'requires_payment_method', 2)])!.id, 'pi_b');
  assert.equal(decisiveIntent([pi('pi_a', 'succeeded', 1), pi('pi_b', 'requires_payment_method', 2)])!.id, 'pi_a');
});

// ---- Redaction and search strings ----------------------------------------------------------------

test('redactSecrets removes keys, client secrets and signatures, deeply, and keeps the rest', () => {
  const input = {
    client_secret: 'pi_3A_secret_B', nested: [{ authorization: 'Bearer sk_test_abc' }], note: 'key sk_live_XYZ and whsec_abc and pi_1_secret_2 here',
    amount: 10n, id: 'pi_3A', metadata: { knowpay_reference: 'KP1' }, empty: null,
  };
  const out = redactSecrets(input) as Record<string, any>;
  assert.equal(out['client_secret'], '[REDACTED]');
  assert.equal(out['nested'][0].authorization, '[REDACTED]');
  assert.equal(out['note'], 'key sk_[REDACTED] and whsec_[REDACTED] and pi_[REDACTED] here');
  assert.equal(out['amount'], '10');
  assert.equal(out['id'], 'pi_3A');
  assert.deepEqual(out['metadata'], { knowpay_reference: 'KP1' });
  assert.equal(out['empty'], null);
  let deep: unknown = 'x';
  for (let i = 0; i < 30; i++) deep = { d: deep };
  assert.match(JSON.stringify(redactSecrets(deep)), /REDACTED/);
});

test('property: our reference always makes a one-clause search that matches it exactly', () => {
  fc.assert(
    fc.property(fc.stringMatching(/^[A-Za-z0-9_-]{1,64}$/), (ref) => {
      const parsed = parseSearchQuery(referenceSearchQuery(ref));
      assert.ok(parsed.ok);
      assert.deepEqual(parsed.query, { join: 'AND', clauses: [{ negated: false, field: { kind: 'metadata', key: 'knowpay_reference' }, op: ':', value: ref }] });
    }),
  );
  for (const bad of ["a'b", '', 'x'.repeat(65), 'a b', "x' OR status:'succeeded"]) assert.throws(() => referenceSearchQuery(bad), /not searchable/, bad);
});

// ---- Search query language -------------------------------------------------------------------------

test('search queries parse into clauses and compile to parameterised SQL', () => {
  const q = parseSearchQuery(`metadata["order id"]:"o\\"1" AND -status:'canceled' AND amount>=100 AND created<1700000000 AND currency:'USD'`);
  assert.ok(q.ok, !q.ok ? q.message : '');
  assert.equal(q.query.clauses.length, 5);
  assert.deepEqual(q.query.clauses[0], { negated: false, field: { kind: 'metadata', key: 'order id' }, op: ':', value: 'o"1' });
  assert.deepEqual(q.query.clauses[1], { negated: true, field: { kind: 'status' }, op: ':', value: 'canceled' });
  const sql = compileSearch(q.query, 5);
  assert.equal(sql.sql, "(((object->'metadata') @> jsonb_build_object($5::text, $6::text)) AND NOT (status = $7) AND (amount >= $8::bigint) AND (created < $9::bigint) AND (currency = lower($10)))");
  assert.deepEqual(sql.params, ['order id', 'o"1', 'canceled', 100, 1700000000, 'USD']);
  const or = parseSearchQuery(`status:'succeeded' OR status:'canceled'`);
  assert.ok(or.ok && or.query.join === 'OR');
});

test('malformed or unsupported search queries are refused with a message', () => {
  const bad = [
    '', '   ', `status:'a' AND status:'b' OR status:'c'`, `colour:'red'`, `status>'x'`, `amount:'ten'`, `status:succeeded`,
    `metadata['k':'v'`, `metadata['']:'v'`, `metadata['${'k'.repeat(41)}']:'v'`, `status:'a' status:'b'`, `status:'unterminated`,
    `status:'a' AND`, Array.from({ length: 11 }, () => `status:'a'`).join(' AND '), 'x'.repeat(1001),
  ];
  for (const text of bad) {
    const r = parseSearchQuery(text);
    assert.equal(r.ok, false, text.slice(0, 60));
  }
});

// ---- Stripe form encoding ------------------------------------------------------------------------

test('Stripe form bodies parse into nested parameters', () => {
  const r = parseStripeForm('amount=100&currency=usd&metadata[order]=o%201&metadata[empty]=&allowed_payment_method_types[0]=card&expand[]=a&expand[]=b&automatic_payment_methods[enabled]=true&items[0][price]=p1&items[1][price]=p2');
  assert.ok(r.ok);
  assert.deepEqual(r.params, {
    amount: '100', currency: 'usd', metadata: { order: 'o 1', empty: '' }, allowed_payment_method_types: ['card'], expand: ['a', 'b'],
    automatic_payment_methods: { enabled: 'true' }, items: [{ price: 'p1' }, { price: 'p2' }],
  });
  assert.ok(parseStripeForm('').ok);
  assert.deepEqual(splitKey('a[b][]'), ['a', 'b', '']);
  assert.equal(splitKey('a[b'), null);
  assert.equal(splitKey('[a]'), null);
  assert.equal(splitKey('a]b'), null);
});

test('ambiguous or oversized Stripe form bodies are refused', () => {
  const bad = [
    'a=1&a=2', 'a=1&a[b]=2', 'a[b]=2&a=1', 'a[b=1', 'a]=1', '[a]=1', 'a[b][c][d][e][f][g]=1', '__proto__[x]=1', 'a[constructor]=1',
    'a=%zz', 'a=%ff', Array.from({ length: 1001 }, (_, i) => `k${i}=1`).join('&'), `${'k'.repeat(501)}=1`, 'a[x]=1&a[]=2',
  ];
  for (const text of bad) assert.equal(parseStripeForm(text).ok, false, text.slice(0, 60));
});

test('canonicalJson sorts keys at every depth', () => {
  assert.equal(canonicalJson({ b: 1, a: { d: [2, { f: 1, e: 2 }], c: null } }), '{"a":{"c":null,"d":[2,{"e":2,"f":1}]},"b":1}');
  assert.equal(canonicalJson({ a: 1, b: 2 }), canonicalJson({ b: 2, a: 1 }));
});

let server: http.Server;
let lastBody = '';
let s: Stripe;
before(async () => {
  server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      lastBody = body;
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"id":"pi_1","object":"payment_intent"}');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  s = new Stripe('sk_test_x', { host: '127.0.0.1', port, protocol: 'http', maxNetworkRetries: 0, httpClient: prefixedHttpClient(Stripe.createNodeHttpClient(), '/p') });
});
after(async () => {
  server.closeAllConnections();
  await new Promise<void>((r) => server.close(() => r()));
});

const keyArb = fc.stringMatching(/^[a-z_]{1,8}$/).filter((k) => !['__proto__', 'constructor', 'prototype'].includes(k));
const leafArb = fc.string({ unit: 'binary', maxLength: 12 }).filter((v) => !v.includes('\uFFFD'));
const valueArb: fc.Arbitrary<FormValue> = fc.letrec<{ v: FormValue }>((tie) => ({
  v: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    leafArb,
    fc.array(tie('v'), { minLength: 1, maxLength: 3 }),
    fc.dictionary(keyArb, tie('v'), { minKeys: 1, maxKeys: 3 }),
  ),
})).v;

test('property: what the official SDK encodes, the sandbox parses back exactly', async () => {
  await fc.assert(
    fc.asyncProperty(fc.dictionary(keyArb, valueArb, { minKeys: 1, maxKeys: 4 }), async (params) => {
      // Within the parser's bounds (nesting and size); deeper bodies are refused by design.
      const depth = (v: unknown): number => (v && typeof v === 'object' ? 1 + Math.max(0, ...Object.values(v).map(depth)) : 0);
      fc.pre(JSON.stringify(params).length < 2000 && depth(params) <= 6);
      await s.paymentIntents.create(params as never);
      const parsed = parseStripeForm(lastBody);
      assert.ok(parsed.ok, !parsed.ok ? `${parsed.message} in ${lastBody}` : '');
      assert.deepEqual(parsed.params, JSON.parse(JSON.stringify(params)));
    }),
    { numRuns: 150 },
  );
});
